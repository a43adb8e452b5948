//! Shared helpers of the reference model's tests.
#![allow(dead_code)]

use stagformer_ref::{Config, Matrix, Model, StorageDtype};

/// One point of the variant matrix.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    pub sections: usize,
    pub shared: bool,
    pub window: Option<usize>,
    pub mix: bool,
    pub gqa: bool,
    pub tied: bool,
}

/// p ∈ {1..4} × shared/separate × window none/1/3 × mix (p ≥ 2) × GQA/MHA × tied/untied.
pub fn variant_matrix() -> Vec<Variant> {
    let mut out = Vec::new();
    for sections in 1..=4 {
        for shared in [false, true] {
            for window in [None, Some(1), Some(3)] {
                for mix in [false, true] {
                    if mix && sections < 2 {
                        continue;
                    }
                    for gqa in [false, true] {
                        for tied in [false, true] {
                            out.push(Variant {
                                sections,
                                shared,
                                window,
                                mix,
                                gqa,
                                tied,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

pub fn config(v: Variant) -> Config {
    let layers_per_section = 2;
    Config {
        vocab_size: 37,
        hidden_size: 16,
        intermediate_size: 24,
        num_hidden_layers: if v.shared {
            layers_per_section
        } else {
            layers_per_section * v.sections
        },
        num_attention_heads: 4,
        num_key_value_heads: if v.gqa { 2 } else { 4 },
        head_dim: 4,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_scaling: stagformer_ref::RopeScaling::Default,
        sliding_window: None,
        max_position_embeddings: 64,
        tie_word_embeddings: v.tied,
        stag_sections: v.sections,
        stag_shared_weights: v.shared,
        stag_cross_window: v.window,
        stag_output_mix: v.mix,
    }
}

pub fn model(v: Variant, seed: u64) -> Model {
    Model::random(config(v), seed, StorageDtype::F32).expect("valid variant")
}

/// Tokens longer than every window of the matrix.
pub fn tokens(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 7 + seed * 13 + 3) % 37)
        .collect()
}

/// max |a − b| / max |b|.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let diff = a.iter().zip(b).fold(0f64, |m, (&x, &y)| {
        m.max((f64::from(x) - f64::from(y)).abs())
    });
    assert!(scale > 0.0, "reference is all zeros");
    diff / scale
}

pub fn assert_close(what: &str, got: &Matrix, want: &Matrix, tol: f64) {
    assert_eq!(
        (got.rows, got.cols),
        (want.rows, want.cols),
        "{what}: shape"
    );
    assert!(
        got.data.iter().all(|v| v.is_finite()),
        "{what}: non-finite output"
    );
    let e = rel_err(&got.data, &want.data);
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.0e}");
}
