//! `stagformer init`: a random checkpoint for a config file or a preset.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use stagformer_ref::{init, Config, StorageDtype};

use crate::model_source::{preset_config, PRESET_HELP};
use crate::progress;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A config.json describing the model.
    #[arg(long, value_name = "FILE", conflicts_with = "preset")]
    config: Option<PathBuf>,
    #[arg(long, value_name = "NAME", help = PRESET_HELP)]
    preset: Option<String>,
    /// Seed of the random weights: the same seed writes the same weights, the ones that
    /// `--preset NAME --preset-seed SEED` runs without a checkpoint (rounded to --dtype).
    #[arg(short, long, default_value_t = 0)]
    seed: u64,
    /// Storage dtype of the tensors.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
    /// Split the weights over this many safetensors files (plus an index).
    #[arg(long, value_name = "N", default_value_t = 1)]
    shards: usize,
    /// Output directory (created if missing; its config.json and safetensors files are
    /// replaced).
    #[arg(short, long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum Dtype {
    /// 4 bytes a parameter.
    F32,
    /// 2 bytes a parameter (bfloat16).
    Bf16,
    /// 2 bytes a parameter (IEEE half).
    F16,
}

impl Args {
    /// The checks that need no file: a model is named, the preset is known, --shards >= 1.
    pub(crate) fn check(&self) -> Result<()> {
        match (&self.config, &self.preset) {
            (Some(_), _) => {}
            (None, Some(name)) => {
                preset_config(name)?;
            }
            (None, None) => bail!("give --config FILE or --preset NAME"),
        }
        if self.shards == 0 {
            bail!("--shards must be at least 1");
        }
        Ok(())
    }
}

pub fn run(args: Args) -> Result<()> {
    args.check()?;
    let config = match (&args.config, &args.preset) {
        (Some(path), _) => Config::from_file(path)?,
        (None, Some(name)) => preset_config(name)?,
        (None, None) => bail!("give --config FILE or --preset NAME"),
    };
    let dtype = match args.dtype {
        Dtype::F32 => StorageDtype::F32,
        Dtype::Bf16 => StorageDtype::Bf16,
        Dtype::F16 => StorageDtype::F16,
    };
    let params = init::ParamCounts::of(&config).total() as u64;
    let bytes = params.saturating_mul(dtype.bytes() as u64);
    // Drawing is most of the time; the files are written after the last tensor is drawn, with
    // a spinner (their size is known, their write speed is not).
    let bar = progress::params(params, "drawing random weights");
    let spinner = std::sync::OnceLock::new();
    init::write_random_checkpoint_with_progress(
        &config,
        args.seed,
        dtype,
        args.shards,
        &args.out,
        |done, total| {
            bar.set_position(done);
            if done == total {
                bar.finish_and_clear();
                spinner.get_or_init(|| {
                    progress::spinner(
                        params,
                        format!(
                            "writing {} to {}",
                            indicatif::DecimalBytes(bytes),
                            args.out.display()
                        ),
                    )
                });
            }
        },
    )
    .with_context(|| format!("writing {}", args.out.display()))?;
    if let Some(spinner) = spinner.get() {
        spinner.finish_and_clear();
    }
    bar.finish_and_clear();
    note!(
        "wrote {} ({} parameters, {}, {})",
        args.out.display(),
        crate::commands::inspect::human_params(params),
        format!("{:?}", args.dtype).to_lowercase(),
        indicatif::DecimalBytes(bytes)
    );
    Ok(())
}
