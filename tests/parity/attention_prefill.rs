//! Rows for `attention_prefill` (cuda/attention_prefill.cu): causal self-attention and the
//! staggered cross mask over ragged batches, against `stagformer_ref::ops::attention_row`
//! evaluated per query row over that row's visible keys (causal `0..=i`, sliding-window causal
//! `max(0, i − W + 1)..=i`, cross `max(0, i − W)..i`).
//!
//! Coverage: single sequences of 1, 7, 64 and 130 rows (130: a partial last query tile and
//! several key tiles); a ragged batch of three prompts; cross windows none/1/3 with P > W and
//! the empty first row (checked to be exactly zero); GQA groups 1/2/4/8 (a block then holds
//! several heads of a row); head dims 64 and 128 (dedicated kernels), 24 and 10 (the generic
//! kernel, 10 also with partial 4-wide output chunks); q/k/v as views into one fused projection
//! buffer starting one element in, with a padded output stride (the scalar load and store
//! paths; the output's pad columns must stay untouched); continued chunks (queries starting at
//! a later position, over earlier keys too); an empty sequence; one long sequence with a single
//! head (key tiles skipped outside the window).
//!
//! Tolerances: f32 1e-10. The kernel forms q·k in f32 (relative error ~1e-7 per score, scores
//! O(1)), exponentiates in base 2 and accumulates P·V in f32 against the reference's f64: NMSE
//! ~1e-13. bf16 2e-5: inputs are the same bf16 values on both sides, so besides the f32 math the
//! only error is rounding the output to bf16, at most 2⁻⁸ relative per element, NMSE ≤ 2⁻¹⁶ ≈
//! 1.53e-5.

use stagformer_kernels::device::{DeviceBuffer, Stream};
use stagformer_kernels::ops::attention_prefill::{
    attention_prefill, HeadShape, PrefillBatch, PrefillConfig, PrefillElem, PrefillMask, RowStrides,
};
use stagformer_ref::ops::{self as reference, HeadLayout};

use crate::table::{poisoned, stored, widen, widen_f32, Case, Compared, Float, Inputs};

const F32_TOL: f64 = 1e-10;
/// Output rounding to bf16 alone can reach 2⁻¹⁶ (see above).
const BF16_TOL: f64 = 2e-5;

#[derive(Clone, Debug)]
struct Spec {
    q_lens: Vec<usize>,
    k_lens: Vec<usize>,
    positions0: Vec<usize>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    mask: PrefillMask,
    /// q, k, v as one fused row [q | k | v] starting one element into its buffer, and an output
    /// stride with 3 pad elements.
    fused: bool,
}

impl Spec {
    /// Prompts of `lens` rows, queries over their own rows from position 0.
    fn prompts(lens: &[usize], heads: usize, kv_heads: usize, head_dim: usize) -> Self {
        Spec {
            q_lens: lens.to_vec(),
            k_lens: lens.to_vec(),
            positions0: vec![0; lens.len()],
            heads,
            kv_heads,
            head_dim,
            mask: PrefillMask::Causal,
            fused: false,
        }
    }

    fn cross(mut self, window: Option<usize>) -> Self {
        self.mask = PrefillMask::StaggeredCross { window };
        self
    }

    fn sliding(mut self, window: usize) -> Self {
        self.mask = PrefillMask::SlidingCausal { window };
        self
    }

    fn fused(mut self) -> Self {
        self.fused = true;
        self
    }

    fn label(&self, dtype: &str) -> String {
        let mask = match self.mask {
            PrefillMask::Causal => "causal".to_string(),
            PrefillMask::SlidingCausal { window } => format!("sliding W={window}"),
            PrefillMask::StaggeredCross { window: None } => "cross W=none".to_string(),
            PrefillMask::StaggeredCross { window: Some(w) } => format!("cross W={w}"),
        };
        let mut name = format!(
            "attention_prefill {dtype} {mask} hd={} h={}/{} q={:?}",
            self.head_dim, self.heads, self.kv_heads, self.q_lens
        );
        if self.k_lens != self.q_lens || self.positions0.iter().any(|&p| p != 0) {
            name.push_str(&format!(" k={:?} p0={:?}", self.k_lens, self.positions0));
        }
        if self.fused {
            name.push_str(" fused");
        }
        name
    }

    /// The keys query `r` of sequence `b` sees, as key rows of that sequence.
    fn visible(&self, b: usize, r: usize) -> std::ops::Range<usize> {
        let i = self.positions0[b] + r;
        match self.mask {
            PrefillMask::Causal => 0..i + 1,
            PrefillMask::SlidingCausal { window } => (i + 1).saturating_sub(window)..i + 1,
            PrefillMask::StaggeredCross { window } => window.map_or(0, |w| i.saturating_sub(w))..i,
        }
    }
}

pub fn cases() -> Vec<Case> {
    let mut specs: Vec<(Spec, bool)> = Vec::new();
    let mut both = |spec: Spec| {
        specs.push((spec.clone(), false));
        specs.push((spec, true));
    };
    // Single prompts: one row, short, exactly one query tile, a partial last tile.
    for p in [1, 7, 64, 130] {
        both(Spec::prompts(&[p], 2, 1, 64));
    }
    // Ragged batch.
    both(Spec::prompts(&[5, 70, 33], 4, 2, 64));
    // Staggered cross mask: the empty first row, windows shorter than P, tile crossings.
    for w in [None, Some(1), Some(3)] {
        both(Spec::prompts(&[9], 2, 2, 64).cross(w));
    }
    both(Spec::prompts(&[70], 2, 1, 64).cross(Some(3)));
    both(Spec::prompts(&[37, 0, 9], 2, 1, 64).cross(None));
    // GQA groups 1, 2, 4, 8.
    for kv in [8, 4, 2, 1] {
        both(Spec::prompts(&[33], 8, kv, 64));
    }
    both(Spec::prompts(&[21], 8, 2, 64).cross(Some(3)));
    // Head dims: 128 (dedicated), 24 and 10 (generic).
    both(Spec::prompts(&[70], 2, 1, 128));
    both(Spec::prompts(&[20], 2, 2, 128).cross(Some(3)));
    both(Spec::prompts(&[40], 3, 1, 24));
    both(Spec::prompts(&[40], 3, 1, 24).cross(None));
    both(Spec::prompts(&[19, 6], 2, 1, 10).cross(Some(4)));
    // Fused q/k/v rows, unaligned start, padded output stride.
    both(Spec::prompts(&[50], 4, 2, 64).fused());
    both(Spec::prompts(&[23, 12], 4, 4, 24).cross(Some(3)).fused());
    both(Spec::prompts(&[17], 2, 1, 10).fused());
    // Continued chunks: queries from a later position over all earlier keys.
    let chunked = Spec {
        q_lens: vec![20, 7],
        k_lens: vec![50, 16],
        positions0: vec![30, 9],
        ..Spec::prompts(&[], 4, 2, 64)
    };
    both(chunked.clone());
    both(chunked.cross(Some(5)));
    // Sliding-window self-attention (Mistral): windows 1, 4 and one tile wide, GQA, generic
    // head dims, fused rows, continued chunks, a long prompt (tiles before the window skipped).
    both(Spec::prompts(&[9, 3], 2, 1, 64).sliding(1));
    both(Spec::prompts(&[70, 5], 4, 2, 64).sliding(4));
    both(Spec::prompts(&[130], 8, 2, 128).sliding(64));
    both(Spec::prompts(&[40], 3, 1, 24).sliding(7));
    both(Spec::prompts(&[23, 12], 4, 4, 24).sliding(5).fused());
    both(
        Spec {
            q_lens: vec![20, 7],
            k_lens: vec![50, 16],
            positions0: vec![30, 9],
            ..Spec::prompts(&[], 4, 2, 64)
        }
        .sliding(6),
    );
    specs.push((Spec::prompts(&[600], 1, 1, 64).sliding(40), false));
    // A long sequence with one head: most key tiles lie outside the window.
    specs.push((Spec::prompts(&[600], 1, 1, 64), false));
    specs.push((Spec::prompts(&[600], 1, 1, 64).cross(Some(40)), true));

    specs
        .into_iter()
        .map(|(spec, bf16)| {
            if bf16 {
                prefill_case::<half::bf16>(spec, BF16_TOL)
            } else {
                prefill_case::<f32>(spec, F32_TOL)
            }
        })
        .collect()
}

fn prefill_case<T: Float + PrefillElem>(spec: Spec, tol: f64) -> Case {
    Case::new(
        spec.label(T::NAME),
        tol,
        move |stream, inputs: &mut Inputs| run::<T>(stream, inputs, &spec),
    )
}

fn run<T: Float + PrefillElem>(
    stream: &Stream,
    inputs: &mut Inputs,
    spec: &Spec,
) -> anyhow::Result<Vec<Compared>> {
    let shape = HeadShape {
        heads: spec.heads,
        kv_heads: spec.kv_heads,
        head_dim: spec.head_dim,
    };
    let layout = HeadLayout {
        heads: spec.heads,
        kv_heads: spec.kv_heads,
        head_dim: spec.head_dim,
    };
    let (q_dim, kv_dim) = (layout.q_dim(), layout.kv_dim());
    let q_rows: usize = spec.q_lens.iter().sum();
    let k_rows: usize = spec.k_lens.iter().sum();

    // A wider q spread makes the softmax peaky, so the running max really moves between tiles.
    let (q, q_seen) = stored::<T>(&inputs.normal(q_rows * q_dim, 0.0, 1.5));
    let (k, k_seen) = stored::<T>(&inputs.normal(k_rows * kv_dim, 0.0, 1.0));
    let (v, v_seen) = stored::<T>(&inputs.normal(k_rows * kv_dim, 0.0, 1.0));

    let batch = PrefillBatch::with_positions(stream, &spec.q_lens, &spec.k_lens, &spec.positions0)?;
    let mut cfg = PrefillConfig::packed(shape, spec.mask);
    let got = if spec.fused {
        anyhow::ensure!(q_rows == k_rows, "fused rows need as many queries as keys");
        let row = q_dim + 2 * kv_dim;
        let mut host = vec![T::from_f32(0.25); 1 + q_rows * row];
        for r in 0..q_rows {
            let dst = &mut host[1 + r * row..1 + (r + 1) * row];
            dst[..q_dim].copy_from_slice(&q[r * q_dim..(r + 1) * q_dim]);
            dst[q_dim..q_dim + kv_dim].copy_from_slice(&k[r * kv_dim..(r + 1) * kv_dim]);
            dst[q_dim + kv_dim..].copy_from_slice(&v[r * kv_dim..(r + 1) * kv_dim]);
        }
        let qkv = DeviceBuffer::from_host(stream, &host)?;
        let out_stride = q_dim + 3;
        cfg.strides = RowStrides {
            q: row,
            k: row,
            v: row,
            out: out_stride,
        };
        let mut out = poisoned::<T>(stream, q_rows * out_stride)?;
        attention_prefill(
            stream,
            &batch,
            &qkv.slice(1..)?,
            &qkv.slice(1 + q_dim..)?,
            &qkv.slice(1 + q_dim + kv_dim..)?,
            &mut out,
            &cfg,
        )?;
        let all = out.to_host(stream)?;
        let mut got = Vec::with_capacity(q_rows * q_dim);
        for r in 0..q_rows {
            let row_out = &all[r * out_stride..(r + 1) * out_stride];
            let poison = T::POISON.to_f32().to_bits();
            if row_out[q_dim..]
                .iter()
                .any(|x| x.to_f32().to_bits() != poison)
            {
                anyhow::bail!("row {r}: the kernel wrote into the output stride's padding");
            }
            got.extend_from_slice(&row_out[..q_dim]);
        }
        got
    } else {
        let q_dev = DeviceBuffer::from_host(stream, &q)?;
        let k_dev = DeviceBuffer::from_host(stream, &k)?;
        let v_dev = DeviceBuffer::from_host(stream, &v)?;
        let mut out = poisoned::<T>(stream, q_rows * q_dim)?;
        attention_prefill(stream, &batch, &q_dev, &k_dev, &v_dev, &mut out, &cfg)?;
        out.to_host(stream)?
    };

    let mut want = vec![0f32; q_rows * q_dim];
    let (mut q_base, mut k_base) = (0, 0);
    for (b, (&nq, &nk)) in spec.q_lens.iter().zip(&spec.k_lens).enumerate() {
        let keys = &k_seen[k_base * kv_dim..(k_base + nk) * kv_dim];
        let values = &v_seen[k_base * kv_dim..(k_base + nk) * kv_dim];
        for r in 0..nq {
            let row = q_base + r;
            let visible = spec.visible(b, r);
            let span = row * q_dim..(row + 1) * q_dim;
            reference::attention_row(
                &q_seen[span.clone()],
                keys,
                values,
                visible.clone(),
                layout,
                &mut want[span.clone()],
            )?;
            if visible.is_empty() && got[span].iter().any(|x| x.to_f32() != 0.0) {
                anyhow::bail!("row {row} sees no key but its output is not exactly +0");
            }
        }
        q_base += nq;
        k_base += nk;
    }
    Ok(vec![Compared {
        output: "out",
        got: widen(&got),
        want: widen_f32(&want),
    }])
}
