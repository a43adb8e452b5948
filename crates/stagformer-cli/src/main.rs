//! `stagformer`: create, inspect, score and run StagFormer checkpoints.

mod commands;
mod engine;
mod model_source;
mod text;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "stagformer",
    version,
    about = "StagFormer: staggered transformer decoding"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a checkpoint with random weights (test and benchmark models).
    Init(commands::init::Args),
    /// Show a checkpoint's config, parameter counts and size.
    Inspect(commands::inspect::Args),
    /// Write the logits after every token of a sequence to a safetensors file.
    Score(commands::score::Args),
    /// Generate text, streaming tokens as they are produced.
    Generate(commands::generate::Args),
    /// Decode speed per execution mode, prefill speed and speedups.
    Bench(commands::bench::Args),
}

fn main() {
    #[cfg(unix)]
    // SAFETY: the first thing `main` does, before any other thread exists; it only restores
    // the default action for SIGPIPE, which Rust's runtime sets to ignore. Without it, output
    // piped into a reader that exits early (`stagformer inspect … | head -1`) would make every
    // later print fail, and `println!` panic; with it the process ends quietly, like any Unix
    // tool.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(args) => commands::init::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Score(args) => commands::score::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Bench(args) => commands::bench::run(args),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
