//! Where `generate`'s prompts and their seeds come from: `--prompt` or `--tokens` (each
//! repeatable) or `--prompts-file`, and one `--seed` for all or one per prompt.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The largest `--prompts-file` read: far beyond any batch of prompts a model's positions can
/// hold, small enough that a wrong path (a disk image, a log) is refused before it is read.
const MAX_PROMPTS_FILE_BYTES: u64 = 64 << 20;

/// The prompts of `--prompts-file`: one per line (a `\r\n` ending counts as `\n`), lines that
/// are empty or only whitespace skipped. No prompt at all is an error.
pub fn read_prompts_file(path: &Path) -> Result<Vec<String>> {
    let shown = path.display();
    // Checked first: reading a directory or a FIFO would fail late or block.
    let meta =
        std::fs::metadata(path).with_context(|| format!("--prompts-file {shown}: cannot read"))?;
    if !meta.is_file() {
        bail!("--prompts-file {shown}: not a regular file");
    }
    if meta.len() > MAX_PROMPTS_FILE_BYTES {
        bail!(
            "--prompts-file {shown}: {} bytes, more than the {MAX_PROMPTS_FILE_BYTES} read",
            meta.len()
        );
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PROMPTS_FILE_BYTES).read_to_string(&mut text))
        .with_context(|| format!("--prompts-file {shown}: cannot read as UTF-8 text"))?;
    let prompts = split_prompts(&text);
    if prompts.is_empty() {
        bail!("--prompts-file {shown}: no prompt in it (every line is empty)");
    }
    Ok(prompts)
}

fn split_prompts(text: &str) -> Vec<String> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Each of `prompts` prompts' sampler seed: one `--seed S` gives prompt k (counting from 0)
/// S + k, so that the prompts draw differently and a prompt run alone with S + k draws as it
/// did in the batch; otherwise exactly one seed per prompt, in order.
pub fn seeds(given: &[u64], prompts: usize) -> Result<Vec<u64>> {
    match given {
        [seed] => (0..prompts)
            .map(|k| {
                u64::try_from(k)
                    .ok()
                    .and_then(|k| seed.checked_add(k))
                    .with_context(|| format!("--seed {seed} + prompt index {k} passes 2^64 - 1"))
            })
            .collect(),
        _ if given.len() == prompts => Ok(given.to_vec()),
        _ => bail!(
            "--seed given {} times for {prompts} prompts: give one seed (prompt k gets seed + \
             k) or exactly one per prompt",
            given.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_prompts_and_blank_lines_are_skipped() {
        assert_eq!(
            split_prompts("a b\n\n  \r\nc\r\n d \n"),
            ["a b", "c", " d "]
        );
        assert!(split_prompts("\n\n").is_empty());
    }

    #[test]
    fn one_seed_counts_up_and_a_list_must_match() {
        assert_eq!(seeds(&[7], 3).unwrap(), [7, 8, 9]);
        assert_eq!(seeds(&[7], 1).unwrap(), [7]);
        assert_eq!(seeds(&[4, 1, 9], 3).unwrap(), [4, 1, 9]);
        let e = seeds(&[4, 1], 3).unwrap_err().to_string();
        assert!(e.contains("2 times for 3 prompts"), "{e}");
        assert!(seeds(&[u64::MAX], 2).is_err());
        assert_eq!(seeds(&[u64::MAX], 1).unwrap(), [u64::MAX]);
    }
}
