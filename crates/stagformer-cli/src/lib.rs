//! `stagformer`: create, inspect, score and run StagFormer checkpoints. The binary is
//! `src/main.rs`; the library exists so that the argument handling can be fuzzed and tested
//! without a process (`fuzz/`).

/// One line on stderr, best effort. stderr carries notes and the final error; when it cannot
/// be written there is nowhere left to say so, and `eprintln!` would panic (exit 101) over a
/// message nobody can read. Defined before the modules so that all of them can use it.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// One line on stdout; a failed write (a full disk, a closed descriptor) is returned as an
/// error with `?` instead of the panic of `println!`.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        anyhow::Context::context(writeln!(std::io::stdout(), $($arg)*), "cannot write to stdout")?
    }};
}

pub mod commands;
mod engine;
mod model_source;
mod progress;
pub mod text;

use clap::{Parser, Subcommand};

/// `--version`: this version, then what the kernels of this build hold (the host emulator
/// always; the CUDA kernels and their GPU targets with feature `cuda`). `-V` prints the first
/// line only.
fn long_version() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        format!(
            "{}\n{}",
            env!("CARGO_PKG_VERSION"),
            stagformer_kernels::build_info()
        )
    })
}

#[derive(Parser)]
#[command(
    name = "stagformer",
    version,
    long_version = long_version(),
    about = "StagFormer: staggered transformer decoding"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Write a checkpoint with random weights (test and benchmark models; no trained model).
    Init(commands::init::Args),
    /// Show a checkpoint's config, parameter counts, sizes and (--tensors) its tensors.
    Inspect(commands::inspect::Args),
    /// Write the logits after every token of a sequence to a safetensors file.
    Score(commands::score::Args),
    /// Generate text, streaming tokens as they are produced.
    Generate(commands::generate::Args),
    /// Prefill and decode speed of every execution mode, repeated, as mean ± std.
    Bench(commands::bench::Args),
}

impl Cli {
    /// Checks the arguments as far as that needs no file and no model (token lists, sizes,
    /// sampling values, preset options): what each command checks first when it runs.
    pub fn check(&self) -> anyhow::Result<()> {
        match &self.command {
            Command::Init(args) => args.check(),
            Command::Inspect(_) => Ok(()),
            Command::Score(args) => args.check(),
            Command::Generate(args) => args.check(),
            Command::Bench(args) => args.check(),
        }
    }

    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Init(args) => commands::init::run(args),
            Command::Inspect(args) => commands::inspect::run(args),
            Command::Score(args) => commands::score::run(args),
            Command::Generate(args) => commands::generate::run(args),
            Command::Bench(args) => commands::bench::run(args),
        }
    }
}
