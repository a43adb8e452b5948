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
//! 5 launches (8 with cross-attention) instead of 9 (13). [`Shared::run_grouped_fused`] runs
//! the same launches for layer j of every section at once (`ops::gemv_grouped`: group s of the
//! rows uses section s's weights), the Grouped (and, with shared weights, Batched) step. The
//! unfused path (`section.rs`: cuBLAS GEMMs and separate norm, RoPE, SwiGLU and append kernels)
//! stays selectable with [`GemvPath::Cublas`] and runs every step with more rows. Both round at the same points, so
//! they agree to the last few bits.

use std::ops::Range;

use stagformer_kernels::device::{DeviceBuffer, DeviceView, Stream};
use stagformer_kernels::ops::embedding::{embedding, EmbeddingShape};
use stagformer_kernels::ops::gemv::{gemv_grouped, GemvEpilogue, GemvShape, GroupedPrologue};
use stagformer_kernels::ops::memory_kv_append::CrossCaches;
use stagformer_kernels::ops::rope_append::KvCacheMut;

pub use stagformer_kernels::ops::gemv::{MAX_GROUPS, MAX_ROWS};

use crate::error::Result;
use crate::kv_store::PagedRows;
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
            let layer = [self.layer(s, j)];
            self.fused_self_attention(caches, sc, stream, ix, &layer, j, 0..n)?;
            if s >= 1 {
                self.fused_cross_attention(caches, sc, stream, ix, (s..s + 1, j), 0..n)?;
            }
            self.fused_mlp(sc, stream, &layer, 0..n)?;
        }
        Ok(())
    }

    /// Every section's pass over `p · batch` rows at once (pass s in rows s·batch..(s + 1)·batch,
    /// embedding in `sc.x[0]`): layer j of all sections is one grouped GEMV per projection
    /// (group s: section s's weights and gains), one self-attention launch over all rows and
    /// one cross-attention launch over the rows of sections ≥ 1. With shared weights the groups
    /// collapse into one GEMV of p·batch rows (each weight read once). Outputs stay in `sc.x[0]`.
    pub fn run_grouped_fused(
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
            let layers: Vec<&LayerWeights<T>> = (0..p).map(|s| self.layer(s, j)).collect();
            self.fused_self_attention(caches, sc, stream, ix, &layers, j, all.clone())?;
            if p > 1 {
                let readers = batch..p * batch;
                self.fused_cross_attention(caches, sc, stream, ix, (1..p, j), readers)?;
            }
            self.fused_mlp(sc, stream, &layers, all.clone())?;
        }
        Ok(())
    }

    /// Projects the residual rows `x` of sections `writers` (`batch` rows each, normed with
    /// each writer's memory norm in the GEMV's prologue) with the memory k|v weights of the
    /// section after each straight into the cross caches, at the slots of the readers' rows
    /// `rows` of `ix` (reader s + 1's cross slots): one launch for every hand-over.
    #[allow(clippy::too_many_arguments)]
    pub fn fused_memory(
        &self,
        caches: &mut Caches<T>,
        x: DeviceView<'_, T>,
        stream: &Stream,
        ix: &RowIndex<'_>,
        norms: &[&DeviceBuffer<f32>],
        readers: Range<usize>,
        rows: Range<usize>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let layout = self.cross_layout();
        let ws: Vec<&DeviceBuffer<T>> = readers.map(|r| &self.weights.memory_kv[r - 1]).collect();
        let (ws, norms) = self.collapse(&ws, norms, rows.len());
        let ws: Vec<DeviceView<'_, T>> = ws.iter().map(|w| w.view()).collect();
        let gains: Vec<DeviceView<'_, f32>> = norms.iter().map(|g| g.view()).collect();
        gemv_grouped(
            stream,
            &x,
            &ws,
            GemvShape {
                m: rows.len(),
                n: self.memory_width(),
                k: cfg.hidden_size,
            },
            self.prologue(&gains),
            GemvEpilogue::CrossKvAppend {
                seq_slots: ix.cross_slots.slice(rows.clone())?,
                positions: ix.positions.slice(rows)?,
                cache: KvCacheMut {
                    k: caches.cross_k.view_mut(),
                    v: caches.cross_v.view_mut(),
                    layout,
                    block_table: caches.cross_pages.as_ref().map(PagedRows::block_table),
                },
                cross: CrossCaches {
                    layers: cfg.layers_per_section(),
                    layer_stride: layout.required_len()?,
                    // The kernel's ring modulus when windowed.
                    window: self.window.map(|_| self.ring),
                },
            },
        )?;
        Ok(())
    }

    /// The groups one launch needs: one per entry, or one for all when every entry is the same
    /// weight and gain (shared weights) and all `rows` fit one group.
    fn collapse<'w, W, G>(
        &self,
        ws: &[&'w W],
        gains: &[&'w G],
        rows: usize,
    ) -> (Vec<&'w W>, Vec<&'w G>) {
        let same = ws.iter().all(|w| std::ptr::eq(*w, ws[0]))
            && gains.iter().all(|g| std::ptr::eq(*g, gains[0]));
        if same && rows <= MAX_ROWS && !ws.is_empty() {
            (ws[..1].to_vec(), gains[..gains.len().min(1)].to_vec())
        } else {
            (ws.to_vec(), gains.to_vec())
        }
    }

    fn prologue<'a, 'b>(&self, gains: &'b [DeviceView<'a, f32>]) -> GroupedPrologue<'a, 'b> {
        GroupedPrologue::RmsNorm {
            weights: gains,
            eps: self.cfg.rms_norm_eps as f32,
        }
    }

    /// One grouped GEMV over `rows` (`rows.len() / ws.len()` a group) of `x` (width `k`): group
    /// g multiplies with `ws[g]` after the norm with `gains[g]` (no norm when `gains` is
    /// empty); collapsed to one group for shared weights.
    #[allow(clippy::too_many_arguments)]
    fn grouped(
        &self,
        stream: &Stream,
        x: DeviceView<'_, T>,
        ws: &[&DeviceBuffer<T>],
        gains: &[&DeviceBuffer<f32>],
        n: usize,
        k: usize,
        epilogue: GemvEpilogue<'_, T>,
    ) -> Result<()> {
        let m = x.len() / k;
        let (ws, gains) = self.collapse(ws, gains, m);
        let ws: Vec<DeviceView<'_, T>> = ws.iter().map(|w| w.view()).collect();
        let gains: Vec<DeviceView<'_, f32>> = gains.iter().map(|g| g.view()).collect();
        let prologue = match gains.is_empty() {
            true => GroupedPrologue::None,
            false => self.prologue(&gains),
        };
        gemv_grouped(stream, &x, &ws, GemvShape { m, n, k }, prologue, epilogue)?;
        Ok(())
    }

    /// qkv = rope(ln1(x) · wqkvᵀ) with k, v appended to the self caches; attention; x += o,
    /// over `rows`, split evenly among `layers` (one group each: the same layer j of several
    /// sections).
    #[allow(clippy::too_many_arguments)]
    fn fused_self_attention(
        &self,
        caches: &mut Caches<T>,
        sc: &mut Scratch<T>,
        stream: &Stream,
        ix: &RowIndex<'_>,
        layers: &[&LayerWeights<T>],
        j: usize,
        rows: Range<usize>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (d, qd, kvd) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim());
        let qkv_dim = qd + 2 * kvd;
        let span = |width: usize| rows.start * width..rows.end * width;
        let ws: Vec<&DeviceBuffer<T>> = layers.iter().map(|l| &l.wqkv).collect();
        let gains: Vec<&DeviceBuffer<f32>> = layers.iter().map(|l| &l.input_norm).collect();
        self.grouped(
            stream,
            sc.x[0].slice(span(d))?,
            &ws,
            &gains,
            qkv_dim,
            d,
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
                    block_table: caches.self_pages.as_ref().map(PagedRows::block_table),
                },
            },
        )?;
        // Every row is a different sequence's (or pass's) cache slot, so a decode step needs no
        // ring chunking: all rows attend in one launch.
        self.self_attend_decode(caches, sc, stream, ix, j, rows.clone())?;
        let wo: Vec<&DeviceBuffer<T>> = layers.iter().map(|l| &l.wo).collect();
        self.fused_attention_out(sc, stream, &wo, rows)
    }

    /// q = cross_norm(x) · cwqᵀ; the staggered cross-attention over the cross caches; x += o,
    /// for layer `j` of the reading sections `readers` (`at = (readers, j)`) over `rows`, split
    /// evenly among them (one group each); one attention launch for all of them.
    fn fused_cross_attention(
        &self,
        caches: &mut Caches<T>,
        sc: &mut Scratch<T>,
        stream: &Stream,
        ix: &RowIndex<'_>,
        at: (Range<usize>, usize),
        rows: Range<usize>,
    ) -> Result<()> {
        let (readers, j) = at;
        let cfg = &self.cfg;
        let (d, qd) = (cfg.hidden_size, cfg.q_dim());
        let cross: Vec<_> = readers.map(|s| &self.weights.cross[s - 1][j]).collect();
        let span = |width: usize| rows.start * width..rows.end * width;
        let wq: Vec<&DeviceBuffer<T>> = cross.iter().map(|c| &c.wq).collect();
        let gains: Vec<&DeviceBuffer<f32>> = cross.iter().map(|c| &c.norm).collect();
        // The cross query reuses `qkv` as a dense [rows, q_dim] tensor.
        self.grouped(
            stream,
            sc.x[0].slice(span(d))?,
            &wq,
            &gains,
            qd,
            d,
            GemvEpilogue::Store {
                y: sc.qkv.slice_mut(span(qd))?,
                row_stride: qd,
            },
        )?;
        self.cross_attend_cache(caches, sc, stream, ix, j, rows.clone())?;
        let wo: Vec<&DeviceBuffer<T>> = cross.iter().map(|c| &c.wo).collect();
        self.fused_attention_out(sc, stream, &wo, rows)
    }

    /// x += attn · woᵀ over `rows` (one group per `wo`).
    fn fused_attention_out(
        &self,
        sc: &mut Scratch<T>,
        stream: &Stream,
        wo: &[&DeviceBuffer<T>],
        rows: Range<usize>,
    ) -> Result<()> {
        let (d, qd) = (self.cfg.hidden_size, self.cfg.q_dim());
        self.grouped(
            stream,
            sc.attn.slice(rows.start * qd..rows.end * qd)?,
            wo,
            &[],
            d,
            qd,
            GemvEpilogue::ResidualAdd {
                y: sc.x[0].slice_mut(rows.start * d..rows.end * d)?,
                row_stride: d,
            },
        )
    }

    /// act = swiglu(ln2(x) · w_gate_upᵀ); x += act · w_downᵀ over `rows` (one group per layer).
    fn fused_mlp(
        &self,
        sc: &mut Scratch<T>,
        stream: &Stream,
        layers: &[&LayerWeights<T>],
        rows: Range<usize>,
    ) -> Result<()> {
        let (d, f) = (self.cfg.hidden_size, self.cfg.intermediate_size);
        let span = |width: usize| rows.start * width..rows.end * width;
        let gate_up: Vec<&DeviceBuffer<T>> = layers.iter().map(|l| &l.w_gate_up).collect();
        let gains: Vec<&DeviceBuffer<f32>> =
            layers.iter().map(|l| &l.post_attention_norm).collect();
        self.grouped(
            stream,
            sc.x[0].slice(span(d))?,
            &gate_up,
            &gains,
            2 * f,
            d,
            GemvEpilogue::SwiGlu {
                y: sc.act.slice_mut(span(f))?,
                row_stride: f,
            },
        )?;
        let down: Vec<&DeviceBuffer<T>> = layers.iter().map(|l| &l.w_down).collect();
        self.grouped(
            stream,
            sc.act.slice(span(f))?,
            &down,
            &[],
            d,
            f,
            GemvEpilogue::ResidualAdd {
                y: sc.x[0].slice_mut(span(d))?,
                row_stride: d,
            },
        )
    }
}
