//! Rows for `attention_prefill` (cuda/attention_prefill.cu, and bf16 also on tensor cores,
//! cuda/attention_prefill_mma.cu) and `attention_prefill_cached` (tensor cores over a
//! self-attention KV cache): causal self-attention and the
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
//!
//! Tensor cores (rows marked `mma`) 5e-5: the same output rounding (≤ 2⁻¹⁶), plus P rounded to
//! bf16 before P·V (the A operand of the mma; the row sum l uses the unrounded f32 P). Each P
//! element then carries a relative error |δ| ≤ 2⁻⁹, independent of v, so the output error
//! Σ p δ v / l has, relative to the output, a mean square of about E[δ²] = 2⁻¹⁸/3 ≈ 1.3e-6 for
//! zero-mean values; the f32 accumulation of the mma is as in the SIMT kernel. Observed NMSE
//! is about 3–4e-6; 5e-5 leaves room for unlucky draws without hiding a wrong key or mask (a
//! single misplaced key gives NMSE ~1e-2).
//!
//! Cached rows: a random KV cache [cache_seqs][kv_heads][slots][hd] (dense, or a ring: position
//! j in slot j mod slots), sequences in different cache slots, queries at an offset (a chunk
//! reading earlier positions from the cache), sliding windows, GQA 1/4/8, hd 64/128/40; the
//! reference gathers the visible positions from the same cache.

use stagformer_kernels::device::{DeviceBuffer, Stream};
use stagformer_kernels::ops::attention_prefill::{
    attention_prefill_cached, attention_prefill_with, CacheKeys, PrefillBatch, PrefillConfig,
    PrefillElem, PrefillKernel, PrefillMask, RowStrides,
};
use stagformer_kernels::ops::rope_append::KvCacheLayout;
use stagformer_kernels::ops::HeadShape;
use stagformer_ref::ops::{self as reference, HeadLayout};

use crate::table::{poisoned, stored, widen, widen_f32, Case, Compared, Float, Inputs};

const F32_TOL: f64 = 1e-10;
/// Output rounding to bf16 alone can reach 2⁻¹⁶ (see above).
const BF16_TOL: f64 = 2e-5;
/// The tensor-core kernel also rounds P to bf16 before P·V (see above).
const BF16_MMA_TOL: f64 = 5e-5;

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
    kernel: PrefillKernel,
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
            kernel: PrefillKernel::Simt,
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
        let kernel = match self.kernel {
            PrefillKernel::TensorCore => " mma",
            _ => "",
        };
        let mut name = format!(
            "attention_prefill {dtype}{kernel} {mask} hd={} h={}/{} q={:?}",
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
    // f32 and bf16 on the SIMT kernel, bf16 on tensor cores.
    let mut both = |spec: Spec| {
        specs.push((spec.clone(), false));
        specs.push((spec.clone(), true));
        specs.push((
            Spec {
                kernel: PrefillKernel::TensorCore,
                ..spec
            },
            true,
        ));
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
    // Tensor cores: several key tiles with the causal diagonal, GQA 4 and 8 at hd 128.
    let mma = |spec: Spec| Spec {
        kernel: PrefillKernel::TensorCore,
        ..spec
    };
    specs.push((mma(Spec::prompts(&[200], 8, 2, 128)), true));
    specs.push((mma(Spec::prompts(&[150, 20], 8, 1, 64).sliding(70)), true));
    specs.push((mma(Spec::prompts(&[600], 1, 1, 64).cross(Some(40))), true));

    let mut cases: Vec<Case> = specs
        .into_iter()
        .map(|(spec, bf16)| {
            if bf16 {
                let tol = if spec.kernel == PrefillKernel::TensorCore {
                    BF16_MMA_TOL
                } else {
                    BF16_TOL
                };
                prefill_case::<half::bf16>(spec, tol)
            } else {
                prefill_case::<f32>(spec, F32_TOL)
            }
        })
        .collect();
    cases.extend(cached_cases());
    cases
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
        attention_prefill_with(
            stream,
            &batch,
            &qkv.slice(1..)?,
            &qkv.slice(1 + q_dim..)?,
            &qkv.slice(1 + q_dim + kv_dim..)?,
            &mut out,
            &cfg,
            spec.kernel,
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
        attention_prefill_with(
            stream,
            &batch,
            &q_dev,
            &k_dev,
            &v_dev,
            &mut out,
            &cfg,
            spec.kernel,
        )?;
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

/// A prefill (chunk) reading its keys from a self-attention KV cache
/// (`attention_prefill_cached`, tensor cores, bf16).
#[derive(Clone, Debug)]
struct CachedSpec {
    /// Per sequence: (cache sequence, first query position, query rows).
    seqs: Vec<(usize, usize, usize)>,
    cache_seqs: usize,
    slots: usize,
    ring: bool,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Sliding window, or None for causal.
    window: Option<usize>,
}

fn cached_cases() -> Vec<Case> {
    let base = CachedSpec {
        seqs: vec![(1, 0, 40)],
        cache_seqs: 3,
        slots: 96,
        ring: false,
        heads: 4,
        kv_heads: 1,
        head_dim: 64,
        window: None,
    };
    let specs = [
        // A whole prompt, then a chunk at an offset over the earlier positions in the cache.
        base.clone(),
        CachedSpec {
            seqs: vec![(2, 30, 50)],
            ..base.clone()
        },
        // Ragged: two sequences in different cache slots, one chunked; GQA 8, hd 128.
        CachedSpec {
            seqs: vec![(0, 0, 70), (2, 17, 9)],
            heads: 8,
            kv_heads: 1,
            head_dim: 128,
            ..base.clone()
        },
        // Other head dims (zero-padded tiles), GQA 1.
        CachedSpec {
            seqs: vec![(1, 5, 33)],
            heads: 2,
            kv_heads: 2,
            head_dim: 40,
            ..base.clone()
        },
        // Ring caches: W = 24, chunks of 16 rows in 39 slots, positions far past the ring.
        CachedSpec {
            seqs: vec![(0, 200, 16), (1, 3, 16)],
            slots: 39,
            ring: true,
            window: Some(24),
            ..base.clone()
        },
        CachedSpec {
            seqs: vec![(2, 1000, 60)],
            slots: 64 + 70 - 1,
            ring: true,
            window: Some(70),
            heads: 8,
            kv_heads: 2,
            head_dim: 128,
            ..base.clone()
        },
        // A sliding window on a dense cache.
        CachedSpec {
            seqs: vec![(1, 20, 60)],
            window: Some(9),
            ..base
        },
    ];
    specs
        .into_iter()
        .map(|spec| {
            let name = format!(
                "attention_prefill_cached bf16 mma {} {} slots={} hd={} h={}/{} seqs={:?}",
                spec.window
                    .map_or("causal".to_string(), |w| format!("sliding W={w}")),
                if spec.ring { "ring" } else { "dense" },
                spec.slots,
                spec.head_dim,
                spec.heads,
                spec.kv_heads,
                spec.seqs
            );
            Case::new(name, BF16_MMA_TOL, move |stream, inputs: &mut Inputs| {
                run_cached(stream, inputs, &spec)
            })
        })
        .collect()
}

fn run_cached(
    stream: &Stream,
    inputs: &mut Inputs,
    spec: &CachedSpec,
) -> anyhow::Result<Vec<Compared>> {
    type T = half::bf16;
    let (hd, kvh) = (spec.head_dim, spec.kv_heads);
    let layout = HeadLayout {
        heads: spec.heads,
        kv_heads: kvh,
        head_dim: hd,
    };
    let q_dim = layout.q_dim();
    let cache = KvCacheLayout::dense(spec.cache_seqs, kvh, spec.slots, hd);
    let cache = if spec.ring { cache.into_ring() } else { cache };
    let cache_len = cache.required_len()?;
    // Random caches: whatever is in a slot no query sees must not matter.
    let (k_cache, k_seen) = stored::<T>(&inputs.normal(cache_len, 0.0, 1.0));
    let (v_cache, v_seen) = stored::<T>(&inputs.normal(cache_len, 0.0, 1.0));
    let q_lens: Vec<usize> = spec.seqs.iter().map(|s| s.2).collect();
    let p0s: Vec<usize> = spec.seqs.iter().map(|s| s.1).collect();
    let q_rows: usize = q_lens.iter().sum();
    let (q, q_seen) = stored::<T>(&inputs.normal(q_rows * q_dim, 0.0, 1.5));
    let slots: Vec<i32> = spec
        .seqs
        .iter()
        .flat_map(|&(slot, _, n)| std::iter::repeat_n(slot as i32, n))
        .collect();

    let batch = PrefillBatch::with_positions(stream, &q_lens, &q_lens, &p0s)?;
    let mask = match spec.window {
        Some(window) => PrefillMask::SlidingCausal { window },
        None => PrefillMask::Causal,
    };
    let shape = HeadShape {
        heads: spec.heads,
        kv_heads: kvh,
        head_dim: hd,
    };
    let cfg = PrefillConfig::packed(shape, mask);
    let q_dev = DeviceBuffer::from_host(stream, &q)?;
    let k_dev = DeviceBuffer::from_host(stream, &k_cache)?;
    let v_dev = DeviceBuffer::from_host(stream, &v_cache)?;
    let slots_dev = DeviceBuffer::from_host(stream, &slots)?;
    let mut out = poisoned::<T>(stream, q_rows * q_dim)?;
    let keys = CacheKeys {
        k: k_dev.view(),
        v: v_dev.view(),
        layout: cache,
        seq_slots: slots_dev.view(),
        block_table: None,
    };
    attention_prefill_cached(stream, &batch, &q_dev, &keys, &mut out, &cfg)?;
    let got = out.to_host(stream)?;

    // The reference gathers each sequence's positions 0..=last from the cache rows
    // (slot = position mod slots for a ring) into [position][kv_heads · hd] rows.
    let mut want = vec![0f32; q_rows * q_dim];
    let mut row = 0;
    for &(seq, p0, n) in &spec.seqs {
        let end = p0 + n;
        let (mut keys, mut values) = (vec![0f32; end * kvh * hd], vec![0f32; end * kvh * hd]);
        for pos in 0..end {
            let slot = cache.slot_of(pos);
            if slot >= spec.slots {
                continue; // never visible (checked by the op)
            }
            for h in 0..kvh {
                let src = seq * cache.seq_stride + h * cache.head_stride + slot * hd;
                let dst = (pos * kvh + h) * hd;
                keys[dst..dst + hd].copy_from_slice(&k_seen[src..src + hd]);
                values[dst..dst + hd].copy_from_slice(&v_seen[src..src + hd]);
            }
        }
        for r in 0..n {
            let i = p0 + r;
            let lo = spec.window.map_or(0, |w| (i + 1).saturating_sub(w));
            let span = row * q_dim..(row + 1) * q_dim;
            reference::attention_row(
                &q_seen[span.clone()],
                &keys,
                &values,
                lo..i + 1,
                layout,
                &mut want[span],
            )?;
            row += 1;
        }
    }
    Ok(vec![Compared {
        output: "out",
        got: widen(&got),
        want: widen_f32(&want),
    }])
}
