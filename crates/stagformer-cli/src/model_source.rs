//! Where a command's model comes from (`--model DIR` or `--preset NAME`) and where it runs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use stagformer_ref::init::RandomWeights;
use stagformer_ref::{
    init, Checkpoint, Config, Element, LoadError, LoadWarning, Model, StorageDtype, TensorSource,
};

/// Checkpoints above this size show a progress bar while loading.
const PROGRESS_BAR_BYTES: u64 = 64 << 20;

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Checkpoint directory (config.json + safetensors).
    #[arg(long, conflicts_with = "preset")]
    pub model: Option<PathBuf>,
    /// A built-in model shape with seeded random weights instead of a checkpoint
    /// (tiny, small, 125m, 350m, 1.3b).
    #[arg(long)]
    pub preset: Option<String>,
    /// Seed of the preset's random weights.
    #[arg(long, default_value_t = 0)]
    pub preset_seed: u64,
    /// With --preset: run the same layers as this many sections (1 = a plain Llama).
    #[arg(long, requires = "preset")]
    pub sections: Option<usize>,
    /// With --preset: one shared stack of half the layers, run by both sections.
    #[arg(long, requires = "preset")]
    pub shared_weights: bool,
    /// With --preset: bound the cross-attention to the last W memory positions.
    #[arg(long, requires = "preset")]
    pub cross_window: Option<usize>,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
}

/// The device a command runs on.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The CPU reference implementation.
    Cpu,
    /// The CUDA kernels run on the CPU by host emulation.
    Emu,
    /// The CUDA kernels on an NVIDIA GPU.
    Cuda,
    /// CUDA when a driver and GPU exist, else the CPU.
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
            (Some(config), _) => Ok(Model::random(config, self.preset_seed, StorageDtype::F32)?),
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
fn preset_config(name: &str) -> Result<Config> {
    init::preset(name).with_context(|| {
        format!(
            "unknown preset {name:?}; known: {}",
            init::PRESETS.join(", ")
        )
    })
}

fn load_dir(dir: &std::path::Path) -> Result<Model> {
    let bar = ProgressBar::hidden();
    let model = Model::load_with_progress(dir, |done, total| {
        if total >= PROGRESS_BAR_BYTES && bar.is_hidden() {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_length(total);
            bar.set_style(
                ProgressStyle::with_template("loading {bytes}/{total_bytes} {wide_bar} {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        bar.set_position(done);
    })
    .with_context(|| format!("loading {}", dir.display()))?;
    bar.finish_and_clear();
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
