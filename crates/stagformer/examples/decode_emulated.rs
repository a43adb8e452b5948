//! Decodes on the emulated device: the kernel decoder ([`stagformer::Decoder`]) on
//! `Device::emulated()` (the CUDA kernels run on the CPU), a prompt prefilled and then greedy
//! steps, every step's logits checked against the CPU reference decoding the same tokens.
//!
//! ```sh
//! cargo run --release -p stagformer --example decode_emulated [-- MODEL_DIR]
//! ```
//!
//! Without `MODEL_DIR` it decodes a random `tiny` model. On a GPU the same code runs with
//! `Device::cuda(0)` in a build with the `cuda` feature. Exits non-zero when a step's logits
//! differ from the reference by more than 1e-4 of the largest logit (the decoder parity
//! tests' bound for f32).

use anyhow::{bail, Context, Result};
use stagformer::{Decoder, DecoderOptions};
use stagformer_kernels::Device;
use stagformer_ref::{init, DecodeBatch, Model, StepMode, StorageDtype};

const PROMPT: [u32; 5] = [1, 17, 42, 7, 99];
const STEPS: usize = 8;
const TOL: f64 = 1e-4;

fn main() -> Result<()> {
    let model = match std::env::args_os().nth(1) {
        Some(dir) => Model::load(dir.as_ref())
            .with_context(|| format!("loading {}", dir.to_string_lossy()))?,
        None => Model::random(
            init::preset("tiny").context("the tiny preset")?,
            3,
            StorageDtype::F32,
        )?,
    };
    let vocab = model.config.vocab_size;
    let prompt: Vec<u32> = PROMPT.iter().map(|&t| t % vocab as u32).collect();
    let capacity = prompt.len() + STEPS;

    let device = Device::emulated();
    let mut decoder = Decoder::<f32>::new(&device, &model, DecoderOptions::new(1, capacity))?;
    let mut reference = DecodeBatch::new(&model, StepMode::Staggered, 1, capacity)?;

    let (id, logits) = decoder.prefill(&prompt)?;
    let (ref_id, ref_logits) = reference.prefill(&prompt)?;
    let mut worst = check("prefill", &logits, &ref_logits.data)?;

    // Greedy: the next token is the decoder's argmax after the last position; both sides are fed
    // the same tokens, so their logits must agree at every step.
    let mut token = argmax(&logits[logits.len() - vocab..]);
    let mut generated = Vec::new();
    for step in 0..STEPS {
        generated.push(token);
        let logits = decoder.step(&[id], &[token])?;
        let ref_logits = reference.step(&[ref_id], &[token])?;
        worst = worst.max(check(&format!("step {step}"), &logits, &ref_logits.data)?);
        token = argmax(&logits);
    }
    println!(
        "{} sections on {}: prompt {prompt:?}, greedy tokens {generated:?}; largest difference \
         from the CPU reference {worst:.2e} of the largest logit",
        model.config.stag_sections,
        device.name()
    );
    Ok(())
}

/// The largest difference between `got` and `want`, relative to the largest `want`; an error
/// above [`TOL`].
fn check(what: &str, got: &[f32], want: &[f32]) -> Result<f64> {
    if got.len() != want.len() {
        bail!(
            "{what}: {} logits, the reference has {}",
            got.len(),
            want.len()
        );
    }
    let scale = want.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let diff = got.iter().zip(want).fold(0f64, |m, (&a, &b)| {
        m.max((f64::from(a) - f64::from(b)).abs())
    });
    let err = diff / scale;
    if err.is_nan() || err > TOL {
        bail!(
            "{what}: logits differ from the CPU reference by {err:.2e} of the largest (> {TOL:e})"
        );
    }
    Ok(err)
}

fn argmax(row: &[f32]) -> u32 {
    let best = row
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        });
    best.0 as u32
}
