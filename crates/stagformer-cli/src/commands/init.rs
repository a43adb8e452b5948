//! `stagformer init`: a random checkpoint for a config file or a preset.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use stagformer_ref::{init, Config, StorageDtype};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A config.json describing the model.
    #[arg(long, conflicts_with = "preset")]
    config: Option<PathBuf>,
    /// A built-in shape instead of a config file (tiny, small, 125m, 350m, 1.3b).
    #[arg(long)]
    preset: Option<String>,
    #[arg(long)]
    seed: u64,
    /// Storage dtype of the tensors.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
    /// Split the weights over this many safetensors files (plus an index).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum Dtype {
    F32,
    Bf16,
    F16,
}

impl Args {
    /// The checks that need no file: a model is named, the preset is known, --shards >= 1.
    pub(crate) fn check(&self) -> Result<()> {
        match (&self.config, &self.preset) {
            (Some(_), _) => {}
            (None, Some(name)) => {
                preset(name)?;
            }
            (None, None) => bail!("give --config FILE or --preset NAME"),
        }
        if self.shards == 0 {
            bail!("--shards must be at least 1");
        }
        Ok(())
    }
}

fn preset(name: &str) -> Result<Config> {
    init::preset(name).with_context(|| {
        format!(
            "unknown preset {name:?}; known: {}",
            init::PRESETS.join(", ")
        )
    })
}

pub fn run(args: Args) -> Result<()> {
    args.check()?;
    let config = match (&args.config, &args.preset) {
        (Some(path), _) => Config::from_file(path)?,
        (None, Some(name)) => preset(name)?,
        (None, None) => bail!("give --config FILE or --preset NAME"),
    };
    let dtype = match args.dtype {
        Dtype::F32 => StorageDtype::F32,
        Dtype::Bf16 => StorageDtype::Bf16,
        Dtype::F16 => StorageDtype::F16,
    };
    init::write_random_checkpoint(&config, args.seed, dtype, args.shards, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let params = init::ParamCounts::of(&config).total();
    note!(
        "wrote {} ({:.1}M parameters, {:?})",
        args.out.display(),
        params as f64 / 1e6,
        args.dtype
    );
    Ok(())
}
