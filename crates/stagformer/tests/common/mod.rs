//! What the decoder tests that feed sequences in pieces share: the variant matrix (sections,
//! shared weights, cross windows, a sliding window, the output mix, every execution mode),
//! deterministic tokens, emulated devices with in-order and shuffled schedules, and the error
//! measures against the CPU reference.

#![allow(dead_code)]

use stagformer::{Decoder, ExecMode, PrefillLogits, SeqId};
use stagformer_kernels::device::EmuOptions;
use stagformer_kernels::Device;
use stagformer_ref::{Config, Model};

/// Largest relative error of f32 logits against the reference.
pub const TOL: f64 = 1e-4;
/// The test models' vocabulary.
pub const VOCAB: usize = 41;

/// One model shape of the matrix, with the mode its decoder runs in.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    pub sections: usize,
    pub shared: bool,
    pub window: Option<usize>,
    pub sliding: Option<usize>,
    pub mix: bool,
    pub mode: ExecMode,
}

impl Variant {
    /// The variant of these fields, in their order.
    pub fn new(
        sections: usize,
        shared: bool,
        window: Option<usize>,
        sliding: Option<usize>,
        mix: bool,
        mode: ExecMode,
    ) -> Self {
        Variant {
            sections,
            shared,
            window,
            sliding,
            mix,
            mode,
        }
    }

    /// A small random-weight config of this shape.
    pub fn config(self) -> Config {
        Config {
            vocab_size: VOCAB,
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: if self.shared { 2 } else { 2 * self.sections },
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            rope_scaling: stagformer_ref::RopeScaling::Default,
            sliding_window: self.sliding,
            max_position_embeddings: 64,
            tie_word_embeddings: false,
            stag_sections: self.sections,
            stag_shared_weights: self.shared,
            stag_cross_window: self.window,
            stag_output_mix: self.mix,
        }
    }
}

/// p = 1 … 4, shared and separate weights, cross windows None / 1 / 3, sliding windows, the
/// output mix, and every execution mode (Batched where the weights are shared).
pub fn variants() -> Vec<Variant> {
    let v = Variant::new;
    vec![
        v(1, false, None, None, false, ExecMode::Staggered),
        v(2, false, None, None, true, ExecMode::Sequential),
        v(2, true, Some(1), None, false, ExecMode::Batched),
        v(3, false, Some(3), Some(5), true, ExecMode::Grouped),
        v(3, true, None, Some(4), false, ExecMode::Staggered),
        v(4, false, None, None, false, ExecMode::Grouped),
    ]
}

/// Deterministic tokens, different per `seed`.
pub fn tokens(n: usize, seed: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 7 + seed * 13 + 5) % VOCAB) as u32)
        .collect()
}

/// The emulator with blocks' threads in order, and with them shuffled.
pub fn devices() -> [Device; 2] {
    [
        Device::emulated(),
        Device::emulated_with(EmuOptions {
            shuffle_seed: 0x5EED,
            workers: 0,
        }),
    ]
}

/// Largest absolute difference over the largest reference magnitude; non-finite logits fail.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    assert!(got.iter().all(|v| v.is_finite()), "non-finite logits");
    let scale = want.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let diff = got.iter().zip(want).fold(0f64, |m, (&a, &b)| {
        m.max((f64::from(a) - f64::from(b)).abs())
    });
    diff / scale
}

/// Normalised mean squared error of `got` against `want`: Σ(got − want)² / Σ want².
pub fn nmse(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let err: f64 = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|&b| f64::from(b).powi(2)).sum();
    err / norm
}

/// A sequence of the scenario: every token it holds, and the logits returned for them (row t:
/// after token t), `None` where a call returned no row.
pub struct Held {
    pub id: SeqId,
    pub toks: Vec<u32>,
    pub logits: Vec<Option<Vec<f32>>>,
}

impl Held {
    /// A sequence holding nothing yet.
    pub fn new(id: SeqId) -> Self {
        Held {
            id,
            toks: Vec::new(),
            logits: Vec::new(),
        }
    }

    /// Records `toks` fed and the `logits` returned for them (`want`'s rows).
    pub fn take(&mut self, toks: &[u32], logits: &[f32], want: PrefillLogits) {
        let rows: Vec<Option<Vec<f32>>> = match want {
            PrefillLogits::All => logits.chunks(VOCAB).map(|r| Some(r.to_vec())).collect(),
            PrefillLogits::Last => {
                let mut rows = vec![None; toks.len()];
                rows[toks.len() - 1] = Some(logits.to_vec());
                rows
            }
            PrefillLogits::None => vec![None; toks.len()],
        };
        assert_eq!(rows.len(), toks.len());
        self.toks.extend_from_slice(toks);
        self.logits.extend(rows);
    }

    pub fn extend<T: stagformer::Activation>(
        &mut self,
        dec: &mut Decoder<T>,
        toks: &[u32],
        want: PrefillLogits,
    ) {
        let logits = dec.extend(self.id, toks, want).unwrap();
        assert_eq!(logits.len(), want.rows(toks.len()) * VOCAB);
        self.take(toks, &logits, want);
    }

    pub fn step<T: stagformer::Activation>(&mut self, dec: &mut Decoder<T>, tok: u32) {
        let logits = dec.step(&[self.id], &[tok]).unwrap();
        self.take(&[tok], &logits, PrefillLogits::All);
    }

    pub fn truncate<T: stagformer::Activation>(&mut self, dec: &mut Decoder<T>, len: usize) {
        dec.truncate(self.id, len).unwrap();
        self.toks.truncate(len);
        self.logits.truncate(len);
        assert_eq!(dec.len(self.id).unwrap(), len);
    }

    /// Every row returned against the reference's forward logits over the held tokens.
    pub fn check(&self, model: &Model, what: &str) {
        assert!(!self.toks.is_empty());
        let want = model.forward(&self.toks).unwrap().data;
        let mut rows = 0;
        for (t, row) in self.logits.iter().enumerate() {
            if let Some(row) = row {
                let e = rel_err(row, &want[t * VOCAB..(t + 1) * VOCAB]);
                assert!(e <= TOL, "{what}: position {t}: relative error {e:.2e}");
                rows += 1;
            }
        }
        assert!(rows > 0, "{what}: no logits checked");
    }
}
