//! `stagformer`: create, inspect, score and run StagFormer checkpoints.

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
        note!("error: {err:#}");
        std::process::exit(1);
    }
}
