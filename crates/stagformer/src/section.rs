//! One section's pass over `n` token rows: the layers of the model contract expressed as kernel
//! launches on one stream. Decode steps and prefills share it; they differ only in where the
//! cross-attention's keys come from (the cross caches, or the whole prompt's memory).

use std::ops::Range;

use stagformer_kernels::device::{DeviceBuffer, DeviceView, DeviceViewMut, Stream};
use stagformer_kernels::dtype::DType;
use stagformer_kernels::ops::attention_decode::{
    attention_decode, attention_decode_paged, DecodeLayout, DecodeMask, DecodePages,
};
use stagformer_kernels::ops::attention_prefill::{
    attention_prefill, attention_prefill_cached, CacheKeys, PrefillBatch, PrefillConfig,
    PrefillMask, RowStrides,
};
use stagformer_kernels::ops::embedding::{embedding, EmbeddingShape};
use stagformer_kernels::ops::gemm::{linear, GemmShape};
use stagformer_kernels::ops::kv_pages::PagePool;
use stagformer_kernels::ops::memory_kv_append::{memory_kv_append, CrossCaches};
use stagformer_kernels::ops::rmsnorm::{add_rmsnorm, rmsnorm, Rows};
use stagformer_kernels::ops::rope_append::{
    rope_append, KvCacheLayout, KvCacheMut, QkvRows, RopeTable,
};
use stagformer_kernels::ops::swiglu::{swiglu, SwigluShape};
use stagformer_kernels::ops::HeadShape;
use stagformer_ref::Config;

use crate::error::Result;
use crate::kv_store::PagedRows;
use crate::row_inputs::RowIndex;
use crate::scratch::Scratch;
use crate::weights::DeviceWeights;
use crate::Activation;

/// What every section pass reads: config, weights, RoPE table, cache geometry.
pub(crate) struct Shared<T: Activation> {
    pub cfg: Config,
    pub weights: DeviceWeights<T>,
    pub rope: RopeTable,
    pub max_batch: usize,
    /// Positions per sequence.
    pub capacity: usize,
    /// Slots of a cross cache: capacity when unbounded, else a ring of W + min(W, 256) slots
    /// (`plan::cross_ring`: longer than the window, so the slot the prior section writes at
    /// step i is never one read at step i, and a continuation chunk of min(W, 256) rows fits).
    pub ring: usize,
    /// The cross window, `None` when unbounded (or at least the capacity).
    pub window: Option<usize>,
    /// The self-attention geometry (sliding window, ring, prefill chunk).
    pub self_cache: SelfCache,
    /// Prefill self-attention of bf16 models on the tensor-core prefill kernel over the self
    /// cache (true), or on the decode kernel, one query row per split group (false; always
    /// for f32).
    pub prefill_self_mma: bool,
    /// The self caches' page pool (`None`: dense).
    pub self_pool: Option<PagePool>,
    /// The cross caches' page pool (`None`: dense; windowed cross caches always are).
    pub cross_pool: Option<PagePool>,
}

/// Geometry of the self-attention caches. Without a sliding window (or one at least the
/// capacity) a cache holds position k in slot k. With a window W it is a ring of
/// `slots = W + chunk − 1` slots: a prefill appends and attends in chunks of `chunk` rows, and
/// appending positions a..a + chunk overwrites only positions before a − W + 1, which no row of
/// the chunk sees; a decode step has one row per sequence. So memory grows with W, not with the
/// capacity, and no row ever reads a slot overwritten before it ran.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SelfCache {
    pub window: Option<usize>,
    pub slots: usize,
    /// Rows of one sequence appended and attended per launch pair (the whole prefill when
    /// the cache is not a ring).
    pub chunk: usize,
}

/// Rows per self-attention chunk of a windowed prefill (smaller for small windows, so the ring
/// stays within 2·W slots).
const SLIDING_CHUNK: usize = 256;

impl SelfCache {
    pub fn new(sliding_window: Option<usize>, capacity: usize) -> Self {
        match sliding_window.filter(|&w| w < capacity) {
            None => SelfCache {
                window: None,
                slots: capacity,
                chunk: capacity,
            },
            Some(w) => {
                let chunk = w.min(SLIDING_CHUNK);
                let slots = (w + chunk - 1).min(capacity);
                SelfCache {
                    window: Some(w),
                    slots,
                    // A ring as long as the capacity never wraps: no chunking needed.
                    chunk: if slots == capacity { capacity } else { chunk },
                }
            }
        }
    }

    pub fn layout(&self, seqs: usize, kv_heads: usize, head_dim: usize) -> KvCacheLayout {
        let dense = KvCacheLayout::dense(seqs, kv_heads, self.slots, head_dim);
        match self.window {
            Some(_) => dense.into_ring(),
            None => dense,
        }
    }

    pub(crate) fn mask(&self) -> DecodeMask {
        match self.window {
            Some(window) => DecodeMask::SelfSliding { window },
            None => DecodeMask::SelfCausal,
        }
    }

    fn prefill_mask(&self) -> PrefillMask {
        match self.window {
            Some(window) => PrefillMask::SlidingCausal { window },
            None => PrefillMask::Causal,
        }
    }
}

/// Self-attention caches per layer ([p·max_batch][Hkv][capacity][hd]: section s's sequence b
/// is slot s·max_batch + b) and the cross caches of every reading section in one buffer each
/// for k and v ([Ls][(p − 1)·max_batch][Hkv][ring][hd]: reading section s's sequence b is
/// sequence (s − 1)·max_batch + b of layer j's block), so that one attention launch serves the
/// cross layer j of every reading section and one GEMV writes every section's memory.
/// Paged, the same rows map through a block table onto a pool of pages per layer (each
/// layer's pool in place of its dense buffer; see `kv_store`).
pub(crate) struct Caches<T: Activation> {
    pub self_k: Vec<DeviceBuffer<T>>,
    pub self_v: Vec<DeviceBuffer<T>>,
    pub cross_k: DeviceBuffer<T>,
    pub cross_v: DeviceBuffer<T>,
    /// The self caches' tables when paged.
    pub self_pages: Option<PagedRows>,
    /// The cross caches' tables when paged.
    pub cross_pages: Option<PagedRows>,
}

/// Where a pass's cross-attention reads the prior section's memory.
pub(crate) enum CrossKeys<'a, T: Activation> {
    /// The cross caches (decode steps).
    Cache,
    /// The projected memory of the prompt so far (prefill): `memory` holds rows 0..k of the
    /// previous section's projected memory, `batch` says which query positions this pass's
    /// rows are (a chunk of the prompt) and that k keys precede or accompany them.
    Prompt {
        batch: &'a PrefillBatch,
        memory: &'a DeviceBuffer<T>,
    },
}

/// One section pass: which section, over which rows' inputs, reading which memory, ending with
/// which norm (the next section's memory norm, or the final norm).
pub(crate) struct Pass<'a, T: Activation> {
    pub section: usize,
    pub rows: usize,
    /// The pass's per-row inputs (`rows` of them).
    pub index: RowIndex<'a>,
    pub cross_keys: CrossKeys<'a, T>,
    /// The prefill chunk these rows are (`None` in a decode step).
    pub prompt: Option<&'a PrefillBatch>,
    /// A batch the self-attention refills for each sub-chunk of a ring cache (one is made per
    /// sub-chunk without it).
    pub sub_batch: Option<&'a mut PrefillBatch>,
    pub end: &'a DeviceBuffer<f32>,
}

impl<T: Activation> Shared<T> {
    pub(crate) fn heads(&self) -> HeadShape {
        HeadShape {
            heads: self.cfg.num_attention_heads,
            kv_heads: self.cfg.num_key_value_heads,
            head_dim: self.cfg.head_dim,
        }
    }

    pub(crate) fn self_layout(&self) -> KvCacheLayout {
        let c = &self.cfg;
        let dense = self.self_cache.layout(
            c.sections() * self.max_batch,
            c.num_key_value_heads,
            c.head_dim,
        );
        match self.self_pool {
            Some(pool) => dense.into_paged(pool.pages, pool.page_size),
            None => dense,
        }
    }

    /// One cross layer's block of the cross caches: every reading section's sequences.
    pub(crate) fn cross_layout(&self) -> KvCacheLayout {
        let c = &self.cfg;
        let readers = c.sections().saturating_sub(1);
        let dense = KvCacheLayout::dense(
            readers * self.max_batch,
            c.num_key_value_heads,
            self.ring,
            c.head_dim,
        );
        match self.cross_pool {
            Some(pool) => dense.into_paged(pool.pages, pool.page_size),
            None => dense,
        }
    }

    fn eps(&self) -> f32 {
        self.cfg.rms_norm_eps as f32
    }

    /// Section `pass.section` over the first `pass.rows` rows of `sc`. Leaves the section's output in `sc.x[returned index]` and its RMSNorm
    /// with `pass.end` in `sc.h`.
    pub fn run_section(
        &self,
        caches: &mut Caches<T>,
        sc: &mut Scratch<T>,
        stream: &Stream,
        pass: Pass<'_, T>,
    ) -> Result<usize> {
        let Pass {
            section: s,
            rows: n,
            index: ix,
            cross_keys,
            prompt,
            mut sub_batch,
            end,
        } = pass;
        let cfg = &self.cfg;
        let all = 0..n;
        let gain = self.layer(s, 0).input_norm.view();
        let mut cur = self.embed(sc, stream, &ix, all.clone(), gain)?;
        for j in 0..cfg.layers_per_section() {
            let layer = self.layer(s, j);
            let rows = all.clone();
            let prompt = prompt.map(|b| (b, sub_batch.as_deref_mut()));
            self.self_attention(caches, sc, stream, &ix, layer, j, rows, prompt)?;
            if s >= 1 {
                let cross = &self.weights.cross[s - 1][j];
                cur = self.add_norm(sc, stream, cur, all.clone(), &cross.norm)?;
                let to = (s, j, all.clone());
                self.cross_attention(caches, sc, stream, &ix, to, &cross_keys)?;
            }
            cur = self.add_norm(
                sc,
                stream,
                cur,
                all.clone(),
                &self.layer(s, j).post_attention_norm,
            )?;
            self.mlp(sc, stream, self.layer(s, j), all.clone())?;
            let next = if j + 1 < cfg.layers_per_section() {
                &self.layer(s, j + 1).input_norm
            } else {
                end
            };
            cur = self.add_norm(sc, stream, cur, all.clone(), next)?;
        }
        Ok(cur)
    }

    /// Every pass of a shared-weight model at once: pass s owns rows s·B..(s + 1)·B of `sc` and
    /// of `ix`.
    /// Self-attention and MLP run as one GEMM over all p·B rows (each weight read once per
    /// step); the cross sublayer runs per pass ≥ 1 on its rows. Pass s's output ends normed by
    /// `ends[s]`. Returns the index of the residual buffer holding every pass's output.
    pub fn run_batched(
        &self,
        caches: &mut Caches<T>,
        sc: &mut Scratch<T>,
        stream: &Stream,
        ix: &RowIndex<'_>,
        batch: usize,
        ends: &[&DeviceBuffer<f32>],
    ) -> Result<usize> {
        let cfg = &self.cfg;
        let p = cfg.sections();
        let all = 0..p * batch;
        let pass_rows = |s: usize| s * batch..(s + 1) * batch;
        let gain = self.layer(0, 0).input_norm.view();
        let mut cur = self.embed(sc, stream, ix, all.clone(), gain)?;
        for j in 0..cfg.layers_per_section() {
            let layer = self.layer(0, j);
            self.self_attention(caches, sc, stream, ix, layer, j, all.clone(), None)?;
            if p > 1 {
                // Pass 0 goes straight to its MLP norm, later passes to their cross norm.
                self.add_norm_into(sc, stream, cur, pass_rows(0), &layer.post_attention_norm)?;
                for s in 1..p {
                    self.add_norm_into(
                        sc,
                        stream,
                        cur,
                        pass_rows(s),
                        &self.weights.cross[s - 1][j].norm,
                    )?;
                }
                cur = 1 - cur;
                for s in 1..p {
                    let to = (s, j, pass_rows(s));
                    self.cross_attention(caches, sc, stream, ix, to, &CrossKeys::Cache)?;
                    self.add_norm_into(sc, stream, cur, pass_rows(s), &layer.post_attention_norm)?;
                }
                // Pass 0 had no cross sublayer: carry its residual over unchanged.
                self.copy_rows(sc, stream, cur, pass_rows(0))?;
                cur = 1 - cur;
            } else {
                cur = self.add_norm(sc, stream, cur, all.clone(), &layer.post_attention_norm)?;
            }
            self.mlp(sc, stream, layer, all.clone())?;
            if j + 1 < cfg.layers_per_section() {
                cur = self.add_norm(
                    sc,
                    stream,
                    cur,
                    all.clone(),
                    &self.layer(0, j + 1).input_norm,
                )?;
            } else {
                for (s, end) in ends.iter().enumerate() {
                    self.add_norm_into(sc, stream, cur, pass_rows(s), end)?;
                }
                cur = 1 - cur;
            }
        }
        Ok(cur)
    }

    pub(crate) fn layer(&self, s: usize, j: usize) -> &crate::weights::LayerWeights<T> {
        &self.weights.layers[self.cfg.layer_index(s, j)]
    }

    /// x[0] = embed(ids) and h = rmsnorm(x[0]) · gain over `rows`; returns the current index.
    fn embed(
        &self,
        sc: &mut Scratch<T>,
        stream: &Stream,
        ix: &RowIndex<'_>,
        rows: Range<usize>,
        gain: DeviceView<'_, f32>,
    ) -> Result<usize> {
        let cfg = &self.cfg;
        let d = cfg.hidden_size;
        let span = rows.start * d..rows.end * d;
        embedding(
            stream,
            &ix.ids.slice(rows.clone())?,
            &self.weights.embed,
            &mut sc.x[0].slice_mut(span.clone())?,
            EmbeddingShape {
                vocab: cfg.vocab_size,
                dim: d,
            },
        )?;
        rmsnorm(
            stream,
            &sc.x[0].slice(span.clone())?,
            &gain,
            &mut sc.h.slice_mut(span)?,
            Rows {
                rows: rows.len(),
                dim: d,
            },
            self.eps(),
        )?;
        Ok(0)
    }

    /// The residual add of one sublayer fused with the norm of the next, over `rows`:
    /// x[1 − cur] = x[cur] + o, h = rmsnorm(x[1 − cur]) · gain. The caller flips `cur` once
    /// every row has moved.
    fn add_norm_into(
        &self,
        sc: &mut Scratch<T>,
        stream: &Stream,
        cur: usize,
        rows: Range<usize>,
        gain: &DeviceBuffer<f32>,
    ) -> Result<()> {
        let d = self.cfg.hidden_size;
        let span = rows.start * d..rows.end * d;
        let (first, second) = sc.x.split_at_mut(1);
        let (from, to) = if cur == 0 {
            (&first[0], &mut second[0])
        } else {
            (&second[0], &mut first[0])
        };
        add_rmsnorm(
            stream,
            &from.slice(span.clone())?,
            &sc.o.slice(span.clone())?,
            gain,
            &mut to.slice_mut(span.clone())?,
            &mut sc.h.slice_mut(span)?,
            Rows {
                rows: rows.len(),
                dim: d,
            },
            self.eps(),
        )?;
        Ok(())
    }

    /// [`Self::add_norm_into`] over `rows`, returning the new current index.
    fn add_norm(
        &self,
        sc: &mut Scratch<T>,
        stream: &Stream,
        cur: usize,
        rows: Range<usize>,
        gain: &DeviceBuffer<f32>,
    ) -> Result<usize> {
        self.add_norm_into(sc, stream, cur, rows, gain)?;
        Ok(1 - cur)
    }

    /// x[1 − cur] = x[cur] over `rows`.
    fn copy_rows(
        &self,
        sc: &mut Scratch<T>,
        stream: &Stream,
        cur: usize,
        rows: Range<usize>,
    ) -> Result<()> {
        let d = self.cfg.hidden_size;
        let span = rows.start * d..rows.end * d;
        let (first, second) = sc.x.split_at_mut(1);
        let (from, to) = if cur == 0 {
            (&first[0], &mut second[0])
        } else {
            (&second[0], &mut first[0])
        };
        to.slice_mut(span.clone())?
            .copy_from(stream, &from.slice(span)?)?;
        Ok(())
    }

    /// o = self-attention of h over `rows` (q, k roped; k, v appended to layer j's caches).
    /// With a ring cache the rows are appended and attended chunk by chunk (see [`SelfCache`]).
    /// `prompt`: the rows are one prefill's prompt (one sequence, row r at the batch's first
    /// position + r); a bf16 model then attends with the tensor-core prefill kernel over the
    /// cache (each chunk reads the cache, which holds the earlier chunks and itself), else with
    /// the decode kernel.
    #[allow(clippy::too_many_arguments)]
    fn self_attention(
        &self,
        caches: &mut Caches<T>,
        sc: &mut Scratch<T>,
        stream: &Stream,
        ix: &RowIndex<'_>,
        layer: &crate::weights::LayerWeights<T>,
        j: usize,
        rows: Range<usize>,
        prompt: Option<(&PrefillBatch, Option<&mut PrefillBatch>)>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (d, qd, kvd) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim());
        let qkv_dim = qd + 2 * kvd;
        let (prompt, mut sub_batch) = match prompt {
            Some((b, sub)) => (Some(b), sub),
            None => (None, None),
        };
        let n = rows.len();
        let span = |width: usize| rows.start * width..rows.end * width;
        linear(
            stream,
            &sc.h.slice(span(d))?,
            &layer.wqkv,
            &mut sc.qkv.slice_mut(span(qkv_dim))?,
            GemmShape::new(n, qkv_dim, d),
        )?;
        let sc_self = self.self_cache;
        // The prompt's first position, when its rows go to the tensor-core kernel.
        let mma_from = prompt
            .filter(|b| {
                self.prefill_self_mma
                    && T::DTYPE == DType::BF16
                    && b.sequences() == 1
                    && b.q_lens()[0] == n
            })
            .map(|b| b.q_positions0()[0]);
        let mut start = rows.start;
        while start < rows.end {
            let chunk = start..(start + sc_self.chunk).min(rows.end);
            let part = |width: usize| chunk.start * width..chunk.end * width;
            rope_append(
                stream,
                QkvRows::Fused {
                    qkv: sc.qkv.slice_mut(part(qkv_dim))?,
                    row_stride: qkv_dim,
                },
                self.heads(),
                &ix.self_slots.slice(chunk.clone())?,
                &ix.positions.slice(chunk.clone())?,
                &self.rope,
                KvCacheMut {
                    k: caches.self_k[j].view_mut(),
                    v: caches.self_v[j].view_mut(),
                    layout: self.self_layout(),
                    block_table: caches.self_pages.as_ref().map(PagedRows::block_table),
                },
            )?;
            if let Some(p0) = mma_from {
                let first = p0 + (chunk.start - rows.start);
                let whole = chunk.len() == n;
                let chunk_batch;
                let len = [chunk.len()];
                let batch = match (prompt, sub_batch.as_deref_mut()) {
                    (Some(b), _) if whole => b,
                    (_, Some(sub)) => {
                        sub.refill(stream, &len, &len, &[first])?;
                        &*sub
                    }
                    (_, None) => {
                        chunk_batch = PrefillBatch::with_positions(stream, &len, &len, &[first])?;
                        &chunk_batch
                    }
                };
                let config = PrefillConfig {
                    shape: self.heads(),
                    strides: RowStrides {
                        q: qkv_dim,
                        k: 0,
                        v: 0,
                        out: qd,
                    },
                    mask: sc_self.prefill_mask(),
                    scale: 1.0 / (cfg.head_dim as f32).sqrt(),
                };
                let keys = CacheKeys {
                    k: caches.self_k[j].view(),
                    v: caches.self_v[j].view(),
                    layout: self.self_layout(),
                    seq_slots: ix.self_slots.slice(chunk.clone())?,
                    block_table: caches.self_pages.as_ref().map(PagedRows::block_table),
                };
                attention_prefill_cached(
                    stream,
                    batch,
                    &sc.qkv.slice(part(qkv_dim))?,
                    &keys,
                    &mut sc.attn.slice_mut(part(qd))?,
                    &config,
                )?;
                start = chunk.end;
                continue;
            }
            self.self_attend_decode(caches, sc, stream, ix, j, chunk.clone())?;
            start = chunk.end;
        }
        self.attention_out(sc, stream, &layer.wo, rows)
    }

    /// o = the staggered cross-attention of h over `rows` for section `s`'s layer `j`
    /// (`at = (s, j, rows)`).
    fn cross_attention(
        &self,
        caches: &mut Caches<T>,
        sc: &mut Scratch<T>,
        stream: &Stream,
        ix: &RowIndex<'_>,
        at: (usize, usize, Range<usize>),
        cross_keys: &CrossKeys<'_, T>,
    ) -> Result<()> {
        let (s, j, rows) = at;
        let cfg = &self.cfg;
        let (d, qd, kvd) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim());
        let ls = cfg.layers_per_section();
        let cross = &self.weights.cross[s - 1][j];
        let n = rows.len();
        let span = |width: usize| rows.start * width..rows.end * width;
        // The cross query reuses `qkv` as a dense [rows, q_dim] tensor.
        linear(
            stream,
            &sc.h.slice(span(d))?,
            &cross.wq,
            &mut sc.qkv.slice_mut(span(qd))?,
            GemmShape::new(n, qd, d),
        )?;
        match cross_keys {
            CrossKeys::Cache => self.cross_attend_cache(caches, sc, stream, ix, j, rows.clone())?,
            CrossKeys::Prompt { batch, memory } => {
                // Layer j's k and v inside each projected memory row [k_0|v_0|k_1|v_1|...].
                let stride = ls * 2 * kvd;
                let base = j * 2 * kvd;
                let config = PrefillConfig {
                    shape: self.heads(),
                    strides: RowStrides {
                        q: qd,
                        k: stride,
                        v: stride,
                        out: qd,
                    },
                    mask: PrefillMask::StaggeredCross {
                        window: self.window,
                    },
                    scale: 1.0 / (cfg.head_dim as f32).sqrt(),
                };
                let keys = batch.k_rows();
                let part = |offset: usize| base + offset..base + offset + (keys - 1) * stride + kvd;
                attention_prefill(
                    stream,
                    batch,
                    &sc.qkv.slice(span(qd))?,
                    &memory.slice(part(0))?,
                    &memory.slice(part(kvd))?,
                    &mut sc.attn.slice_mut(span(qd))?,
                    &config,
                )?;
            }
        }
        self.attention_out(sc, stream, &cross.wo, rows)
    }

    /// Decode attention of rows `rows` (queries in `sc.qkv` at the q|k|v stride; each row its
    /// own sequence slot and position) over layer `j`'s self cache, into `sc.attn`.
    pub(crate) fn self_attend_decode(
        &self,
        caches: &Caches<T>,
        sc: &mut Scratch<T>,
        stream: &Stream,
        ix: &RowIndex<'_>,
        j: usize,
        rows: Range<usize>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let qd = cfg.q_dim();
        let qkv_dim = qd + 2 * cfg.kv_dim();
        let self_cache = self.self_cache;
        let layout = DecodeLayout::new(
            rows.len(),
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.sections() * self.max_batch,
            self_cache.slots,
        )
        .with_row_strides(qkv_dim, qd)
        .with_max_keys(self_cache.window.unwrap_or(self.capacity));
        let q = sc.qkv.slice(rows.start * qkv_dim..rows.end * qkv_dim)?;
        let slots = ix.self_slots.slice(rows.clone())?;
        let positions = ix.positions.slice(rows.clone())?;
        let out = &mut sc.attn.slice_mut(rows.start * qd..rows.end * qd)?;
        let (k, v) = (&caches.self_k[j], &caches.self_v[j]);
        let ws = &mut sc.workspace;
        let mask = self_cache.mask();
        match &caches.self_pages {
            None => attention_decode(stream, &q, k, v, &slots, &positions, out, ws, layout, mask)?,
            Some(pg) => {
                let pages = DecodePages {
                    pool: pg.pool,
                    block_table: pg.block_table(),
                };
                attention_decode_paged(
                    stream, &q, k, v, pages, &slots, &positions, out, ws, layout, mask,
                )?
            }
        }
        Ok(())
    }

    /// The staggered cross-attention of rows `rows` (dense queries in `sc.qkv`) over layer
    /// `j` of the cross caches (each row its reader's sequence slot), into `sc.attn`.
    pub(crate) fn cross_attend_cache(
        &self,
        caches: &Caches<T>,
        sc: &mut Scratch<T>,
        stream: &Stream,
        ix: &RowIndex<'_>,
        j: usize,
        rows: Range<usize>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let qd = cfg.q_dim();
        let cross_layout = self.cross_layout();
        let layer_len = cross_layout.required_len()?;
        let cache = j * layer_len..(j + 1) * layer_len;
        let layout = DecodeLayout::new(
            rows.len(),
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cross_layout.seqs,
            self.ring,
        )
        .with_max_keys(self.window.unwrap_or(self.capacity));
        let q = sc.qkv.slice(rows.start * qd..rows.end * qd)?;
        let (k, v) = (
            caches.cross_k.slice(cache.clone())?,
            caches.cross_v.slice(cache)?,
        );
        let slots = ix.cross_slots.slice(rows.clone())?;
        let positions = ix.positions.slice(rows.clone())?;
        let out = &mut sc.attn.slice_mut(rows.start * qd..rows.end * qd)?;
        let ws = &mut sc.workspace;
        let mask = DecodeMask::Cross {
            window: self.window,
        };
        match &caches.cross_pages {
            None => attention_decode(
                stream, &q, &k, &v, &slots, &positions, out, ws, layout, mask,
            )?,
            Some(pg) => {
                let pages = DecodePages {
                    pool: pg.pool,
                    block_table: pg.block_table(),
                };
                attention_decode_paged(
                    stream, &q, &k, &v, pages, &slots, &positions, out, ws, layout, mask,
                )?
            }
        }
        Ok(())
    }

    /// o = attn · woᵀ over `rows`: the output projection of either attention sublayer.
    fn attention_out(
        &self,
        sc: &mut Scratch<T>,
        stream: &Stream,
        wo: &DeviceBuffer<T>,
        rows: Range<usize>,
    ) -> Result<()> {
        let (d, qd) = (self.cfg.hidden_size, self.cfg.q_dim());
        linear(
            stream,
            &sc.attn.slice(rows.start * qd..rows.end * qd)?,
            wo,
            &mut sc.o.slice_mut(rows.start * d..rows.end * d)?,
            GemmShape::new(rows.len(), d, qd),
        )?;
        Ok(())
    }

    /// o = down(silu(gate(h)) ⊙ up(h)) over `rows`.
    fn mlp(
        &self,
        sc: &mut Scratch<T>,
        stream: &Stream,
        layer: &crate::weights::LayerWeights<T>,
        rows: Range<usize>,
    ) -> Result<()> {
        let (d, f) = (self.cfg.hidden_size, self.cfg.intermediate_size);
        let n = rows.len();
        let span = |width: usize| rows.start * width..rows.end * width;
        linear(
            stream,
            &sc.h.slice(span(d))?,
            &layer.w_gate_up,
            &mut sc.gate_up.slice_mut(span(2 * f))?,
            GemmShape::new(n, 2 * f, d),
        )?;
        swiglu(
            stream,
            &sc.gate_up.slice(span(2 * f))?,
            &mut sc.act.slice_mut(span(f))?,
            SwigluShape { rows: n, ffn: f },
        )?;
        linear(
            stream,
            &sc.act.slice(span(f))?,
            &layer.w_down,
            &mut sc.o.slice_mut(span(d))?,
            GemmShape::new(n, d, f),
        )?;
        Ok(())
    }

    /// Width of a projected memory row: k|v of every cross layer of the reading section.
    pub fn memory_width(&self) -> usize {
        self.cfg.layers_per_section() * 2 * self.cfg.kv_dim()
    }

    /// Projects `rows` rows of `memory` (normed section output) with the k|v weights of
    /// section `reader`'s cross layers into `memory_kv` (`rows` rows of
    /// [`Shared::memory_width`]).
    pub fn project_memory(
        &self,
        stream: &Stream,
        memory: DeviceView<'_, T>,
        mut memory_kv: DeviceViewMut<'_, T>,
        reader: usize,
        rows: usize,
    ) -> Result<()> {
        let width = self.memory_width();
        let d = self.cfg.hidden_size;
        linear(
            stream,
            &memory,
            &self.weights.memory_kv[reader - 1],
            &mut memory_kv,
            GemmShape::new(rows, width, d),
        )?;
        Ok(())
    }

    /// Writes the projected memory rows `memory_kv` (row r of them belongs to row
    /// `rows.start + r` of `ix`, rows of the reading section: their cross slots name its
    /// sequences) into the cross caches, at the slots of those rows' positions.
    pub fn append_memory(
        &self,
        caches: &mut Caches<T>,
        memory_kv: DeviceView<'_, T>,
        stream: &Stream,
        ix: &RowIndex<'_>,
        rows: std::ops::Range<usize>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let layout = self.cross_layout();
        memory_kv_append(
            stream,
            &memory_kv,
            &ix.cross_slots.slice(rows.clone())?,
            &ix.positions.slice(rows)?,
            KvCacheMut {
                k: caches.cross_k.view_mut(),
                v: caches.cross_v.view_mut(),
                layout,
                block_table: caches.cross_pages.as_ref().map(PagedRows::block_table),
            },
            CrossCaches {
                layers: cfg.layers_per_section(),
                layer_stride: layout.required_len()?,
                // The kernel's ring modulus when windowed.
                window: self.window.map(|_| self.ring),
            },
        )?;
        Ok(())
    }
}
