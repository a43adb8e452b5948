//! Prefill self-attention of bf16 models on the tensor-core kernel over the self cache against
//! the decode-kernel path it replaced and against the f32 reference forward: dense caches and
//! sliding-window rings (chunked prefills whose chunks read the earlier chunks from the cache),
//! a second sequence in another cache slot, then decode steps that read what the prefill left.

use stagformer::{Decoder, DecoderOptions, ExecMode, PrefillSelfAttention};
use stagformer_kernels::Device;
use stagformer_ref::{Config, Model, StorageDtype};

fn config(sections: usize, sliding: Option<usize>, kv_heads: usize) -> Config {
    Config {
        vocab_size: 41,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2 * sections,
        num_attention_heads: 4,
        num_key_value_heads: kv_heads,
        head_dim: 8,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_scaling: stagformer_ref::RopeScaling::Default,
        sliding_window: sliding,
        max_position_embeddings: 64,
        tie_word_embeddings: false,
        stag_sections: sections,
        stag_shared_weights: false,
        stag_cross_window: None,
        stag_output_mix: false,
    }
}

fn nmse(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    assert!(got.iter().all(|v| v.is_finite()), "non-finite logits");
    let err: f64 = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum();
    err / want.iter().map(|&b| f64::from(b).powi(2)).sum::<f64>()
}

/// Logits of a second sequence's prompt and steps, after a first sequence took slot 0.
/// The prompt runs in chunks of `prefill_rows` rows.
fn run(
    model: &Model,
    kernel: PrefillSelfAttention,
    toks: &[u32],
    prompt: usize,
    prefill_rows: usize,
) -> Vec<f32> {
    let device = Device::emulated();
    let opts = DecoderOptions {
        mode: ExecMode::Staggered,
        graphs: false,
        prefill_rows,
        ..DecoderOptions::new(2, 40)
    };
    let mut dec = Decoder::<half::bf16>::new(&device, model, opts).unwrap();
    dec.set_prefill_self_attention(kernel);
    let other: Vec<u32> = toks.iter().rev().copied().collect();
    dec.prefill(&other[..9]).unwrap();
    let (id, mut got) = dec.prefill(&toks[..prompt]).unwrap();
    for &t in &toks[prompt..] {
        got.extend(dec.step(&[id], &[t]).unwrap());
    }
    got
}

/// bf16 runs round every stored activation (see decoder_parity.rs: NMSE bound 5e-4 against
/// the f32 reference); the two kernels differ only in how they round inside attention, so
/// they agree with each other more closely.
#[test]
fn tensor_core_prefill_matches_the_decode_kernel_and_the_reference() {
    let cases = [(1, None, 2), (2, None, 4), (1, Some(4), 2), (2, Some(5), 1)];
    for (n, &(sections, sliding, kv_heads)) in cases.iter().enumerate() {
        let model = Model::random(
            config(sections, sliding, kv_heads),
            40 + n as u64,
            StorageDtype::Bf16,
        )
        .unwrap();
        let toks: Vec<u32> = (0..30)
            .map(|i| ((i * 7 + n * 11 + 3) % 41) as u32)
            .collect();
        let want = model.forward(&toks).unwrap().data;
        // Whole prompts, and chunks of 6 rows attending to the earlier chunks in the cache.
        let rows = if n % 2 == 0 { 512 } else { 6 };
        let mma = run(&model, PrefillSelfAttention::TensorCore, &toks, 23, rows);
        let old = run(&model, PrefillSelfAttention::DecodeKernel, &toks, 23, rows);
        let (e_mma, e_old, e_pair) = (nmse(&mma, &want), nmse(&old, &want), nmse(&mma, &old));
        assert!(
            e_mma <= 5e-4,
            "case {n}: tensor cores vs reference nmse {e_mma:.2e}"
        );
        assert!(
            e_old <= 5e-4,
            "case {n}: decode kernel vs reference nmse {e_old:.2e}"
        );
        assert!(
            e_pair <= 2e-4,
            "case {n}: the two kernels differ, nmse {e_pair:.2e}"
        );
        assert_ne!(mma, old, "case {n}: the tensor-core path did not run");
    }
}
