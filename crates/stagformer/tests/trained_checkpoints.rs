//! The decoders on the trained checkpoints shipped under `models/` (bf16 weights, trained on
//! English text: the activations have the outlier features random weights lack) against the
//! CPU reference's forward logits on a held-out window of the text they were evaluated on.
//! Reference and decoders read the same bf16 weights, so the f32 decoder is held to the f32
//! tolerance and the bf16 decoder (every stored activation rounded to bf16) to an NMSE bound.

mod common;

use std::path::PathBuf;

use common::{devices, nmse, rel_err};
use stagformer::{Decoder, DecoderOptions, ExecMode, GemvPath};
use stagformer_ref::{Checkpoint, Model};

/// The shipped checkpoints (python/tests/test_shipped_models.py checks their perplexities).
const SHIPPED: [&str; 2] = ["baseline-L4-docs", "stagformer-p2-docs"];
const PROMPT: usize = 8;
const STEPS: usize = 24;
const F32_TOL: f64 = 1e-4;
const BF16_NMSE: f64 = 5e-4;

fn model_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(name)
}

/// The first `n` token ids of the model's first held-out window (heldout.json).
fn held_out_tokens(name: &str, n: usize) -> Vec<u32> {
    let path = model_dir(name).join("heldout.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (the shipped models are missing)", path.display()));
    let held: serde_json::Value = serde_json::from_str(&text).unwrap();
    let window = held["windows"][0].as_array().expect("windows[0]");
    assert!(
        window.len() >= n,
        "{name}: a held-out window shorter than {n}"
    );
    window[..n]
        .iter()
        .map(|t| u32::try_from(t.as_u64().unwrap()).unwrap())
        .collect()
}

/// Logits of every position: a prefill of `PROMPT` tokens, then one step per token.
fn decode<T: stagformer::Activation>(dec: &mut Decoder<T>, toks: &[u32]) -> Vec<f32> {
    let (id, mut got) = dec.prefill(&toks[..PROMPT]).unwrap();
    for &t in &toks[PROMPT..] {
        got.extend(dec.step(&[id], &[t]).unwrap());
    }
    got
}

fn options(mode: ExecMode, gemv: GemvPath) -> DecoderOptions {
    DecoderOptions {
        mode,
        graphs: true,
        gemv,
        ..DecoderOptions::new(1, PROMPT + STEPS)
    }
}

/// Largest |x| over the root mean square of x: how far the largest activation stands out.
fn peak_to_rms(x: &[f32]) -> f64 {
    let rms = (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
    x.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs())) / rms
}

#[test]
fn f32_decoders_match_the_reference_on_trained_weights() {
    for name in SHIPPED {
        let dir = model_dir(name);
        let ckpt = Checkpoint::open(&dir).unwrap();
        let model = Model::from_checkpoint(&ckpt).unwrap();
        let toks = held_out_tokens(name, PROMPT + STEPS);
        let want = model.forward(&toks).unwrap().data;
        let first = model.section_forward(0, &toks, None).unwrap();
        eprintln!(
            "{name}: section 0's output, peak / rms = {:.1}",
            peak_to_rms(&first.data)
        );
        for device in devices() {
            for mode in [ExecMode::Staggered, ExecMode::Sequential] {
                let opts = options(mode, GemvPath::Fused);
                let mut dec = Decoder::<f32>::from_checkpoint(&device, &ckpt, opts).unwrap();
                let got = decode(&mut dec, &toks);
                let e = rel_err(&got, &want);
                eprintln!("{name} {mode:?} f32: relative error {e:.2e}");
                assert!(e <= F32_TOL, "{name} {mode:?}: relative error {e:.2e}");
            }
        }
    }
}

#[test]
fn bf16_decoders_are_within_nmse_of_the_reference_on_trained_weights() {
    for name in SHIPPED {
        let ckpt = Checkpoint::open(&model_dir(name)).unwrap();
        let model = Model::from_checkpoint(&ckpt).unwrap();
        let toks = held_out_tokens(name, PROMPT + STEPS);
        let want = model.forward(&toks).unwrap().data;
        for (mode, gemv) in [
            (ExecMode::Staggered, GemvPath::Fused),
            (ExecMode::Sequential, GemvPath::Cublas),
        ] {
            let opts = options(mode, gemv);
            let mut dec =
                Decoder::<half::bf16>::from_checkpoint(&devices()[1], &ckpt, opts).unwrap();
            let got = decode(&mut dec, &toks);
            assert!(
                got.iter().all(|v| v.is_finite()),
                "{name}: non-finite logits"
            );
            let nmse = nmse(&got, &want);
            eprintln!("{name} {mode:?} {gemv:?} bf16: nmse {nmse:.2e}");
            assert!(
                nmse <= BF16_NMSE,
                "{name} {mode:?} {gemv:?}: nmse {nmse:.2e}"
            );
            assert!(
                nmse > 0.0,
                "{name}: bf16 run identical to f32: is it really bf16?"
            );
        }
    }
}
