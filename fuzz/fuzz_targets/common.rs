//! Shared by the fuzz targets: how one input is split into files, and a scratch directory.
//! (Not every target uses every item.)
#![allow(dead_code)]

use std::path::PathBuf;

/// Separates the files of one input (see each target for their order). `fuzz/seed-corpus`
/// writes seeds in this framing.
pub const SEP: &[u8] = b"\0--stagformer-fuzz--\0";

/// `data` split at every [`SEP`].
pub fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(SEP.len()).position(|w| w == SEP) {
        parts.push(&rest[..at]);
        rest = &rest[at + SEP.len()..];
    }
    parts.push(rest);
    parts
}

/// A directory of this process's own under the system temp dir, emptied for each input.
pub fn scratch(target: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("stagformer-fuzz-{target}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("cannot create the fuzz scratch directory");
    dir
}
