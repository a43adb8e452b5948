//! The command line to request path: the input split at NUL bytes is an argument vector for
//! `stagformer`, parsed by clap and checked by `Cli::check` (token lists, sizes, sampling
//! values, preset options). Nothing is run: no file is read or written, whatever paths the
//! arguments name. Parse errors and check errors are fine; panics are not.

#![no_main]

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use stagformer_cli::Cli;

fuzz_target!(|data: &[u8]| {
    let argv = std::iter::once("stagformer".to_owned()).chain(
        data.split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned()),
    );
    if let Ok(cli) = Cli::try_parse_from(argv) {
        let _ = cli.check();
    }
});
