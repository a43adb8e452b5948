//! `stagformer`: create, inspect, score and run StagFormer checkpoints.

use clap::Parser;
use stagformer_cli::Cli;

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
    if let Err(err) = cli.run() {
        // Best effort, as every note (see `note!` in the library): a failing stderr must not
        // turn the error into a panic.
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "error: {err:#}");
        std::process::exit(1);
    }
}
