//! The fused decode step: a section's layers as GEMV launches that carry the glue.
//!
//! With at most [`MAX_ROWS`] rows a step's projections run through `ops::gemv`, whose
//! prologue applies the RMSNorm of its input rows and whose epilogues add the residual, apply
//! SwiGLU, rope q|k and append k, v to the self cache, or append the projected memory to the
//! cross caches. The residual stream stays in `sc.x[0]` (added to in place) and a layer is
//!
//! ```text
//! gemv(x; ln1 | wqkv → rope + self-cache append) ; attention_decode (self)
//! gemv(attn; wo → x +=)
//! [s ≥ 1] gemv(x; cross_norm | cwq) ; attention_decode (cross) ; gemv(attn; cwo → x +=)
//! gemv(x; ln2 | w_gate_up → swiglu) ; gemv(act; w_down → x +=)
//! ```
//!
//! 5 launches (8 with cross-attention) instead of 10 (15). The unfused path (`section.rs`:
//! cuBLAS GEMMs and separate norm, RoPE, SwiGLU and append kernels) stays selectable with
//! [`GemvPath::Cublas`] and runs every step with more rows. Both round at the same points, so
//! they agree to the last few bits.

use std::ops::Range;

use stagformer_kernels::device::{DeviceBuffer, DeviceView, Stream};
use stagformer_kernels::ops::attention_decode::{attention_decode, DecodeLayout, DecodeMask};
use stagformer_kernels::ops::embedding::{embedding, EmbeddingShape};
use stagformer_kernels::ops::gemv::{gemv, GemvEpilogue, GemvPrologue, GemvShape};
use stagformer_kernels::ops::memory_kv_append::CrossCaches;
use stagformer_kernels::ops::rope_append::KvCacheMut;

pub use stagformer_kernels::ops::gemv::MAX_ROWS;

use crate::error::Result;
use crate::row_inputs::RowIndex;
use crate::scratch::Scratch;
use crate::section::{Caches, Shared};
use crate::weights::LayerWeights;
use crate::Activation;

/// Which kernels run a decode step's projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GemvPath {
    /// The fused GEMV family (norms, RoPE + cache appends, SwiGLU and residual adds in its
    /// prologue and epilogues) whenever a step's GEMMs have at most [`MAX_ROWS`] rows; cuBLAS
    /// beyond.
    #[default]
    Fused,
    /// cuBLAS GEMMs with separate glue kernels for every step (the path prefills use).
    Cublas,
}

impl<T: Activation> Shared<T> {
    /// The residual stream of `rows` after the embedding, in `sc.x[0]`.
    pub fn fused_embed(
        &self,
        sc: &mut Scratch<T>,
        stream: &Stream,
        ix: &RowIndex<'_>,
        rows: Range<usize>,
    ) -> Result<()> {
        let d = self.cfg.hidden_size;
        embedding(
            stream,
            &ix.ids.slice(rows.clone())?,
            &self.weights.embed,
            &mut sc.x[0].slice_mut(rows.start * d..rows.end * d)?,
            EmbeddingShape {
                vocab: self.cfg.vocab_size,
                dim: d,
            },
        )?;
        Ok(())
    }

    /// Section `s`'s layers over `n` decode rows whose embedding is in `sc.x[0]`; its output
    /// (not normed) is left there.
    pub fn run_section_fused(
        &self,
        caches: &mut Caches<T>,
        sc: &mut Scratch<T>,
        stream: &Stream,
        ix: &RowIndex<'_>,
        s: usize,
        n: usize,
    ) -> Result<()> {
        for j in 0..self.cfg.layers_per_section() {
            let layer = self.layer(s, j);
            self.fused_self_attention(caches, sc, stream, ix, layer, j, 0..n)?;
            if s >= 1 {
                self.fused_cross_attention(caches, sc, stream, ix, (s, j), 0..n)?;
            }
            self.fused_mlp(sc, stream, layer, 0..n)?;
        }
        Ok(())
    }

    /// Every pass of a shared-weight model over `p · batch` rows (pass s in rows
    /// s·batch..(s + 1)·batch), embedding in `sc.x[0]`: one GEMV per projection for all
    /// passes, the cross sublayer per pass ≥ 1 on its rows. Outputs stay in `sc.x[0]`.
    pub fn run_batched_fused(
        &self,
        caches: &mut Caches<T>,
        sc: &mut Scratch<T>,
        stream: &Stream,
        ix: &RowIndex<'_>,
        batch: usize,
    ) -> Result<()> {
        let p = self.cfg.sections();
        let all = 0..p * batch;
        for j in 0..self.cfg.layers_per_section() {
            let layer = self.layer(0, j);
            self.fused_self_attention(caches, sc, stream, ix, layer, j, all.clone())?;
            for s in 1..p {
                let pass = s * batch..(s + 1) * batch;
                self.fused_cross_attention(caches, sc, stream, ix, (s, j), pass)?;
            }
            self.fused_mlp(sc, stream, layer, all.clone())?;
        }
        Ok(())
    }

    /// Projects the residual rows `x` (normed with `norm` in the GEMV's prologue) with section
    /// `reader`'s memory k|v weights straight into its cross caches, at the slots of rows
    /// `rows` of `ix`.
    #[allow(clippy::too_many_arguments)]
    pub fn fused_memory(
        &self,
        caches: &mut Caches<T>,
        x: DeviceView<'_, T>,
        stream: &Stream,
        ix: &RowIndex<'_>,
        norm: &DeviceBuffer<f32>,
        reader: usize,
        rows: Range<usize>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let layout = self.cross_layout();
        gemv(
            stream,
            &x,
            &self.weights.memory_kv[reader - 1],
            GemvShape {
                m: rows.len(),
                n: self.memory_width(),
                k: cfg.hidden_size,
            },
            self.prologue(norm),
            GemvEpilogue::CrossKvAppend {
                seq_slots: ix.cross_slots.slice(rows.clone())?,
                positions: ix.positions.slice(rows)?,
                cache: KvCacheMut {
                    k: caches.cross_k[reader - 1].view_mut(),
                    v: caches.cross_v[reader - 1].view_mut(),
                    layout,
                },
                cross: CrossCaches {
                    layers: cfg.layers_per_section(),
                    layer_stride: layout.required_len()?,
                    // The kernel's ring modulus: W + 1 slots when windowed.
                    window: self.window.map(|_| self.ring),
                },
            },
        )?;
        Ok(())
    }

    fn prologue<'a>(&self, gain: &'a DeviceBuffer<f32>) -> GemvPrologue<'a> {
        GemvPrologue::RmsNorm {
            weight: gain.view(),
            eps: self.cfg.rms_norm_eps as f32,
        }
    }

    /// qkv = rope(ln1(x) · wqkvᵀ) with k, v appended to the self caches; attention; x += o.
    #[allow(clippy::too_many_arguments)]
    fn fused_self_attention(
        &self,
        caches: &mut Caches<T>,
        sc: &mut Scratch<T>,
        stream: &Stream,
        ix: &RowIndex<'_>,
        layer: &LayerWeights<T>,
        j: usize,
        rows: Range<usize>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (d, qd, kvd) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim());
        let qkv_dim = qd + 2 * kvd;
        let span = |width: usize| rows.start * width..rows.end * width;
        gemv(
            stream,
            &sc.x[0].slice(span(d))?,
            &layer.wqkv,
            GemvShape {
                m: rows.len(),
                n: qkv_dim,
                k: d,
            },
            self.prologue(&layer.input_norm),
            GemvEpilogue::RopeKvAppend {
                qkv: sc.qkv.slice_mut(span(qkv_dim))?,
                row_stride: qkv_dim,
                heads: self.heads(),
                seq_slots: ix.self_slots.slice(rows.clone())?,
                positions: ix.positions.slice(rows.clone())?,
                table: &self.rope,
                cache: KvCacheMut {
                    k: caches.self_k[j].view_mut(),
                    v: caches.self_v[j].view_mut(),
                    layout: self.self_layout(),
                },
            },
        )?;
        // Every row is a different sequence's (or pass's) cache slot, so a decode step needs no
        // ring chunking: all rows attend in one launch.
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
        attention_decode(
            stream,
            &sc.qkv.slice(span(qkv_dim))?,
            &caches.self_k[j],
            &caches.self_v[j],
            &ix.self_slots.slice(rows.clone())?,
            &ix.positions.slice(rows.clone())?,
            &mut sc.attn.slice_mut(span(qd))?,
            &mut sc.workspace,
            layout,
            self_cache.mask(),
        )?;
        self.fused_attention_out(sc, stream, &layer.wo, rows)
    }

    /// q = cross_norm(x) · cwqᵀ; the staggered cross-attention over the cross caches; x += o,
    /// for section `s`'s layer `j` (`at = (s, j)`) over `rows`.
    fn fused_cross_attention(
        &self,
        caches: &mut Caches<T>,
        sc: &mut Scratch<T>,
        stream: &Stream,
        ix: &RowIndex<'_>,
        at: (usize, usize),
        rows: Range<usize>,
    ) -> Result<()> {
        let (s, j) = at;
        let cfg = &self.cfg;
        let (d, qd) = (cfg.hidden_size, cfg.q_dim());
        let cross = &self.weights.cross[s - 1][j];
        let span = |width: usize| rows.start * width..rows.end * width;
        // The cross query reuses `qkv` as a dense [rows, q_dim] tensor.
        gemv(
            stream,
            &sc.x[0].slice(span(d))?,
            &cross.wq,
            GemvShape {
                m: rows.len(),
                n: qd,
                k: d,
            },
            self.prologue(&cross.norm),
            GemvEpilogue::Store {
                y: sc.qkv.slice_mut(span(qd))?,
                row_stride: qd,
            },
        )?;
        let layer_len = self.cross_layout().required_len()?;
        let cache = j * layer_len..(j + 1) * layer_len;
        let layout = DecodeLayout::new(
            rows.len(),
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            self.max_batch,
            self.ring,
        )
        .with_max_keys(self.window.unwrap_or(self.capacity));
        attention_decode(
            stream,
            &sc.qkv.slice(span(qd))?,
            &caches.cross_k[s - 1].slice(cache.clone())?,
            &caches.cross_v[s - 1].slice(cache)?,
            &ix.cross_slots.slice(rows.clone())?,
            &ix.positions.slice(rows.clone())?,
            &mut sc.attn.slice_mut(span(qd))?,
            &mut sc.workspace,
            layout,
            DecodeMask::Cross {
                window: self.window,
            },
        )?;
        self.fused_attention_out(sc, stream, &cross.wo, rows)
    }

    /// x += attn · woᵀ over `rows`.
    fn fused_attention_out(
        &self,
        sc: &mut Scratch<T>,
        stream: &Stream,
        wo: &DeviceBuffer<T>,
        rows: Range<usize>,
    ) -> Result<()> {
        let (d, qd) = (self.cfg.hidden_size, self.cfg.q_dim());
        gemv(
            stream,
            &sc.attn.slice(rows.start * qd..rows.end * qd)?,
            wo,
            GemvShape {
                m: rows.len(),
                n: d,
                k: qd,
            },
            GemvPrologue::None,
            GemvEpilogue::ResidualAdd {
                y: sc.x[0].slice_mut(rows.start * d..rows.end * d)?,
                row_stride: d,
            },
        )?;
        Ok(())
    }

    /// act = swiglu(ln2(x) · w_gate_upᵀ); x += act · w_downᵀ over `rows`.
    fn fused_mlp(
        &self,
        sc: &mut Scratch<T>,
        stream: &Stream,
        layer: &LayerWeights<T>,
        rows: Range<usize>,
    ) -> Result<()> {
        let (d, f) = (self.cfg.hidden_size, self.cfg.intermediate_size);
        let span = |width: usize| rows.start * width..rows.end * width;
        gemv(
            stream,
            &sc.x[0].slice(span(d))?,
            &layer.w_gate_up,
            GemvShape {
                m: rows.len(),
                n: 2 * f,
                k: d,
            },
            self.prologue(&layer.post_attention_norm),
            GemvEpilogue::SwiGlu {
                y: sc.act.slice_mut(span(f))?,
                row_stride: f,
            },
        )?;
        gemv(
            stream,
            &sc.act.slice(span(f))?,
            &layer.w_down,
            GemvShape {
                m: rows.len(),
                n: d,
                k: f,
            },
            GemvPrologue::None,
            GemvEpilogue::ResidualAdd {
                y: sc.x[0].slice_mut(span(d))?,
                row_stride: d,
            },
        )?;
        Ok(())
    }
}
