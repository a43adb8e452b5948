//! Where a command's model comes from (`--model DIR` or `--preset NAME`) and where it runs.

use std::path::PathBuf;

use crate::progress;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::ProgressBar;
use stagformer_ref::init::RandomWeights;
use stagformer_ref::{
    init, Checkpoint, Config, Element, LoadError, LoadWarning, Model, StorageDtype, TensorSource,
};

/// Checkpoints above this size show a progress bar while loading.
const PROGRESS_BAR_BYTES: u64 = 64 << 20;

/// The help line of `--preset` (and `init --preset`): the names and the aliases.
pub const PRESET_HELP: &str = "A built-in model shape: tiny, small, 110m, 390m or 1.4b (named \
     by parameter count; the former names 125m, 350m and 1.3b are accepted)";

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Checkpoint directory (config.json + safetensors; a Hugging Face Llama or Mistral
    /// directory loads as it is).
    #[arg(short, long, value_name = "DIR", conflicts_with = "preset")]
    pub model: Option<PathBuf>,
    #[arg(long, value_name = "NAME", help = PRESET_HELP, long_help = PRESET_LONG_HELP)]
    pub preset: Option<String>,
    /// Seed of the preset's random weights (`init --preset NAME --seed S` writes the same
    /// weights as a checkpoint).
    #[arg(long, value_name = "SEED", default_value_t = 0)]
    pub preset_seed: u64,
    /// With --preset: run the same layers as this many sections (1 = a plain Llama).
    #[arg(long, value_name = "P", requires = "preset")]
    pub sections: Option<usize>,
    /// With --preset: one shared stack of half the layers, run by both sections.
    #[arg(long, requires = "preset")]
    pub shared_weights: bool,
    /// With --preset: bound the cross-attention to the last W memory positions.
    #[arg(long, value_name = "W", requires = "preset")]
    pub cross_window: Option<usize>,
    /// Where to run: the CPU reference, the CUDA kernels emulated on the CPU, or a GPU.
    #[arg(short, long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// The CUDA device ordinal --device cuda (and auto) opens.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub gpu: usize,
}

/// `--preset`'s `--help` text.
const PRESET_LONG_HELP: &str = "A built-in model shape with seeded random weights \
     (--preset-seed) instead of a checkpoint, all StagFormer p = 2 with separate weights: \
     tiny (0.28 M parameters), small (35 M), 110m, 390m and 1.4b, the last three named by \
     their parameter count. The former names 125m, 350m and 1.3b are accepted for 110m, 390m \
     and 1.4b. The weights are random: text generated from them is noise.";

/// The device a command runs on.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The CPU reference implementation.
    Cpu,
    /// The CUDA kernels run on the CPU by host emulation.
    Emu,
    /// The CUDA kernels on an NVIDIA GPU.
    Cuda,
    /// CUDA when a driver and GPU exist, else the CPU (with a note).
    Auto,
}

/// The weights the kernel devices upload, tensor by tensor: a memory-mapped checkpoint or a
/// preset's seeded random weights. Never a whole host f32 model.
pub enum Source {
    Checkpoint(Checkpoint),
    Random(RandomWeights),
}

impl TensorSource for Source {
    fn config(&self) -> &Config {
        match self {
            Source::Checkpoint(c) => c.config(),
            Source::Random(r) => r.config(),
        }
    }

    fn read<E: Element>(&self, name: &str) -> Result<Vec<E>, LoadError> {
        match self {
            Source::Checkpoint(c) => c.read(name),
            Source::Random(r) => r.read(name),
        }
    }
}

impl ModelArgs {
    /// Checks the preset and its options (nothing is read): what [`ModelArgs::load`] and
    /// [`ModelArgs::open`] check first.
    pub fn check(&self) -> Result<()> {
        if self.model.is_some() || self.preset.is_some() {
            self.preset()?;
        }
        Ok(())
    }

    /// The name of the preset whose random weights run, `None` for `--model`.
    pub fn random_preset(&self) -> Option<&str> {
        match (&self.model, &self.preset) {
            (None, Some(name)) => Some(name),
            _ => None,
        }
    }

    /// The preset's config with the overrides applied, `None` for `--model`.
    fn preset(&self) -> Result<Option<Config>> {
        let overrides =
            self.sections.is_some() || self.shared_weights || self.cross_window.is_some();
        match (&self.model, &self.preset) {
            (Some(_), _) if overrides => {
                bail!("--sections, --shared-weights and --cross-window apply to --preset only")
            }
            (Some(_), _) => Ok(None),
            (None, Some(name)) => {
                let mut config = preset_config(name)?;
                if let Some(p) = self.sections {
                    // Checked here, before the layer count is divided by it below.
                    if p == 0 {
                        bail!("--sections must be at least 1");
                    }
                    config.stag_sections = p;
                }
                if self.shared_weights {
                    let (layers, p) = (config.num_hidden_layers, config.stag_sections);
                    if layers < p {
                        bail!(
                            "--shared-weights: preset {name:?} has {layers} layers, fewer than \
                             the {p} sections that would share them"
                        );
                    }
                    config.num_hidden_layers = layers / p;
                    config.stag_shared_weights = true;
                }
                if self.cross_window.is_some() {
                    config.stag_cross_window = self.cross_window;
                }
                config
                    .validate()
                    .with_context(|| format!("preset {name:?} with the options given"))?;
                Ok(Some(config))
            }
            (None, None) => bail!("give --model DIR or --preset NAME"),
        }
    }

    /// Loads the whole model into host f32 (the CPU reference).
    pub fn load(&self) -> Result<Model> {
        match (self.preset()?, &self.model) {
            (Some(config), _) => {
                let total = init::ParamCounts::of(&config).total() as u64;
                let bar = progress::params(total, "drawing random weights");
                let weights = init::random_weights_with_progress(
                    &config,
                    self.preset_seed,
                    StorageDtype::F32,
                    |done, _| bar.set_position(done),
                );
                bar.finish_and_clear();
                Ok(Model::new(config, weights))
            }
            (None, Some(dir)) => {
                let model = load_dir(dir)?;
                print_warnings(model.warnings());
                Ok(model)
            }
            (None, None) => bail!("give --model DIR or --preset NAME"),
        }
    }

    /// Opens the weights for the kernel devices: a checkpoint is mapped and validated from its
    /// headers, and each tensor is converted when it is uploaded.
    pub fn open(&self) -> Result<Source> {
        match (self.preset()?, &self.model) {
            (Some(config), _) => Ok(Source::Random(RandomWeights::new(
                config,
                self.preset_seed,
                StorageDtype::F32,
            )?)),
            (None, Some(dir)) => {
                let ckpt =
                    Checkpoint::open(dir).with_context(|| format!("loading {}", dir.display()))?;
                print_warnings(ckpt.warnings());
                Ok(Source::Checkpoint(ckpt))
            }
            (None, None) => bail!("give --model DIR or --preset NAME"),
        }
    }
}

/// Shows what loading accepted but the user should know, one `warning:` line each on stderr.
pub fn print_warnings(warnings: &[LoadWarning]) {
    for w in warnings {
        note!("warning: {w}");
    }
}

/// A preset's config (its weights are drawn from `--preset-seed`).
pub fn preset_config(name: &str) -> Result<Config> {
    init::preset(name).with_context(|| {
        let aliases: Vec<String> = init::PRESET_ALIASES
            .iter()
            .map(|(old, new)| format!("{old} for {new}"))
            .collect();
        format!(
            "unknown preset {name:?}; known: {} (also accepted: {})",
            init::PRESETS.join(", "),
            aliases.join(", ")
        )
    })
}

fn load_dir(dir: &std::path::Path) -> Result<Model> {
    let mut bar: Option<ProgressBar> = None;
    let model = Model::load_with_progress(dir, |done, total| {
        let bar = bar.get_or_insert_with(|| {
            if total >= PROGRESS_BAR_BYTES {
                progress::bar(
                    total,
                    "loading [{wide_bar}] {bytes}/{total_bytes}, {elapsed} (ETA {eta})",
                )
            } else {
                ProgressBar::hidden()
            }
        });
        bar.set_position(done);
    })
    .with_context(|| format!("loading {}", dir.display()))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(model)
}

/// Parses `5,17,3` into token ids. Every entry must be decimal digits (spaces around it are
/// allowed): an empty entry (`1,,2`) or a sign (`+5`) is refused rather than guessed at.
pub fn parse_tokens(text: &str) -> Result<Vec<u32>> {
    text.split(',')
        .map(str::trim)
        .enumerate()
        .map(|(i, t)| {
            if t.is_empty() {
                bail!("--tokens: entry {i} is empty (give comma-separated ids, e.g. 5,17,3)");
            }
            if !t.bytes().all(|b| b.is_ascii_digit()) {
                bail!("--tokens: entry {i} ({t:?}) is not a token id (decimal digits only)");
            }
            t.parse::<u32>()
                .with_context(|| format!("--tokens: entry {i} ({t:?}) is not a token id"))
        })
        .collect()
}
