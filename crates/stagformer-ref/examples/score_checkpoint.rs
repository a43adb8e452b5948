//! Scores a checkpoint on the CPU with the reference implementation: the logits after every
//! token of a sequence, computed by the definition (`ScoreMode::Forward`, each section over the
//! whole sequence) and by inference (`ScoreMode::Decode`: a prefill, then one decode step per
//! token), which must agree. Prints the mean next-token loss.
//!
//! ```sh
//! cargo run --release -p stagformer-ref --example score_checkpoint [-- MODEL_DIR]
//! ```
//!
//! `MODEL_DIR` holds `config.json` and safetensors (a `stagformer init` output or a Hugging Face
//! Llama/Mistral checkpoint); without it a random `tiny` checkpoint is written to a temporary
//! directory first. Exits non-zero when the two computations differ by more than 1e-4 of the
//! largest logit (the reference's own tests hold them to 1e-5 on small models).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use stagformer_ref::{init, score, Model, ScoreMode, StorageDtype};

const TOKENS: usize = 12;
const PROMPT: usize = 4;
const TOL: f64 = 1e-4;

fn main() -> Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = match std::env::args_os().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let config = init::preset("tiny").context("the tiny preset")?;
            init::write_random_checkpoint(&config, 7, StorageDtype::F32, 1, temp.path())?;
            eprintln!(
                "no MODEL_DIR: wrote a random tiny checkpoint to {}",
                temp.path().display()
            );
            temp.path().to_path_buf()
        }
    };
    let model = Model::load(&dir).with_context(|| format!("loading {}", dir.display()))?;
    let vocab = u32::try_from(model.config.vocab_size).context("vocabulary size")?;
    let tokens: Vec<u32> = (0..TOKENS as u32).map(|i| (i * 37 + 5) % vocab).collect();

    let forward = score(&model, &tokens, ScoreMode::Forward)?;
    let decoded = score(&model, &tokens, ScoreMode::Decode { prompt_len: PROMPT })?;

    let scale = forward
        .data
        .iter()
        .fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let diff = decoded
        .data
        .iter()
        .zip(&forward.data)
        .fold(0f64, |m, (&a, &b)| {
            m.max((f64::from(a) - f64::from(b)).abs())
        });
    let err = diff / scale;

    // Mean cross-entropy of token i + 1 under the logits after token i.
    let loss = (0..TOKENS - 1)
        .map(|i| {
            let row = forward.row(i);
            let max = row
                .iter()
                .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
            let log_sum = row
                .iter()
                .map(|&v| (f64::from(v) - max).exp())
                .sum::<f64>()
                .ln();
            max + log_sum - f64::from(row[tokens[i + 1] as usize])
        })
        .sum::<f64>()
        / (TOKENS - 1) as f64;

    println!(
        "{TOKENS} tokens: mean next-token loss {loss:.4} nats (uniform: {:.4}); decode vs \
         forward: max difference {err:.2e} of the largest logit",
        f64::from(vocab).ln()
    );
    if err.is_nan() || err > TOL {
        bail!("decode and forward logits differ by {err:.2e} of the largest logit (> {TOL:e})");
    }
    Ok(())
}
