//! One section's pass over `n` token rows: the layers of the model contract expressed as kernel
//! launches on one stream. Decode steps and prefills share it; they differ only in where the
//! cross-attention's keys come from (the cross caches, or the whole prompt's memory).

use stagformer_kernels::device::{DeviceBuffer, Stream};
use stagformer_kernels::ops::attention_decode::{attention_decode, DecodeLayout, DecodeMask};
use stagformer_kernels::ops::attention_prefill::{
    attention_prefill, PrefillBatch, PrefillConfig, PrefillMask, RowStrides,
};
use stagformer_kernels::ops::embedding::{embedding, EmbeddingShape};
use stagformer_kernels::ops::gemm::{linear, GemmShape};
use stagformer_kernels::ops::memory_kv_append::{memory_kv_append, CrossCaches};
use stagformer_kernels::ops::rmsnorm::{add_rmsnorm, rmsnorm, Rows};
use stagformer_kernels::ops::rope_append::{
    rope_append, HeadShape, KvCacheLayout, KvCacheMut, QkvRows, RopeTable,
};
use stagformer_kernels::ops::swiglu::{swiglu, SwigluShape};
use stagformer_ref::Config;

use crate::error::Result;
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
    /// Slots of a cross cache: capacity when unbounded, else W + 1 (a ring one longer than the
    /// window, so the slot the prior section writes at step i is never one read at step i).
    pub ring: usize,
    /// The cross window, `None` when unbounded (or at least the capacity).
    pub window: Option<usize>,
}

/// Self-attention caches per layer ([p·max_batch][Hkv][capacity][hd]: section s's sequence b
/// is slot s·max_batch + b) and cross caches per reading section ([Ls][max_batch][Hkv][ring][hd]).
pub(crate) struct Caches<T: Activation> {
    pub self_k: Vec<DeviceBuffer<T>>,
    pub self_v: Vec<DeviceBuffer<T>>,
    pub cross_k: Vec<DeviceBuffer<T>>,
    pub cross_v: Vec<DeviceBuffer<T>>,
}

/// Where a pass's cross-attention reads the prior section's memory.
pub(crate) enum CrossKeys<'a> {
    /// The cross caches (decode steps).
    Cache,
    /// The projected memory of the whole prompt in `scratch.memory_kv` (prefill).
    Prompt(&'a PrefillBatch),
}

/// One section pass: which section, over how many rows, reading which memory, ending with
/// which norm (the next section's memory norm, or the final norm).
pub(crate) struct Pass<'a> {
    pub section: usize,
    pub rows: usize,
    pub cross_keys: CrossKeys<'a>,
    pub end: &'a DeviceBuffer<f32>,
}

impl<T: Activation> Shared<T> {
    fn heads(&self) -> HeadShape {
        HeadShape {
            heads: self.cfg.num_attention_heads,
            kv_heads: self.cfg.num_key_value_heads,
            head_dim: self.cfg.head_dim,
        }
    }

    fn self_layout(&self) -> KvCacheLayout {
        let c = &self.cfg;
        KvCacheLayout::dense(
            c.sections() * self.max_batch,
            c.num_key_value_heads,
            self.capacity,
            c.head_dim,
        )
    }

    fn cross_layout(&self) -> KvCacheLayout {
        let c = &self.cfg;
        KvCacheLayout::dense(self.max_batch, c.num_key_value_heads, self.ring, c.head_dim)
    }

    fn eps(&self) -> f32 {
        self.cfg.rms_norm_eps as f32
    }

    /// Section `pass.section` over the first `pass.rows` rows of `sc` (ids, slots and positions
    /// already there). Leaves the section's output in `sc.x[returned index]` and its RMSNorm
    /// with `pass.end` in `sc.h`.
    pub fn run_section(
        &self,
        caches: &mut Caches<T>,
        sc: &mut Scratch<T>,
        stream: &Stream,
        pass: Pass<'_>,
    ) -> Result<usize> {
        let Pass {
            section: s,
            rows: n,
            cross_keys,
            end,
        } = pass;
        let cfg = &self.cfg;
        let w = &self.weights;
        let (d, qd, kvd, f) = (
            cfg.hidden_size,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.intermediate_size,
        );
        let qkv_dim = qd + 2 * kvd;
        let ls = cfg.layers_per_section();
        let rows = Rows { rows: n, dim: d };
        let eps = self.eps();
        let Scratch {
            ids,
            self_slots,
            cross_slots,
            positions,
            x,
            h,
            qkv,
            attn,
            o,
            gate_up,
            act,
            memory_kv,
            workspace,
            ..
        } = sc;
        let ids = ids.slice(..n)?;
        let (self_slots, cross_slots, positions) = (
            self_slots.slice(..n)?,
            cross_slots.slice(..n)?,
            positions.slice(..n)?,
        );
        // `x[cur]` holds the residual stream.
        let mut cur = 0;
        embedding(
            stream,
            &ids,
            &w.embed,
            &mut x[cur].slice_mut(..n * d)?,
            EmbeddingShape {
                vocab: cfg.vocab_size,
                dim: d,
            },
        )?;
        let first = &w.layers[cfg.layer_index(s, 0)];
        rmsnorm(
            stream,
            &x[cur].slice(..n * d)?,
            &first.input_norm,
            &mut h.slice_mut(..n * d)?,
            rows,
            eps,
        )?;
        // The residual add of one sublayer fused with the norm of the next:
        // x[1 - cur] = x[cur] + o, h = rmsnorm(x[1 - cur]) · gain.
        let add_norm = |x: &mut [DeviceBuffer<T>; 2],
                        cur: &mut usize,
                        o: &DeviceBuffer<T>,
                        h: &mut DeviceBuffer<T>,
                        gain: &DeviceBuffer<f32>|
         -> Result<()> {
            let (first, second) = x.split_at_mut(1);
            let (from, to) = if *cur == 0 {
                (&first[0], &mut second[0])
            } else {
                (&second[0], &mut first[0])
            };
            add_rmsnorm(
                stream,
                &from.slice(..n * d)?,
                &o.slice(..n * d)?,
                gain,
                &mut to.slice_mut(..n * d)?,
                &mut h.slice_mut(..n * d)?,
                rows,
                eps,
            )?;
            *cur = 1 - *cur;
            Ok(())
        };
        for j in 0..ls {
            let layer = &w.layers[cfg.layer_index(s, j)];
            linear(
                stream,
                &h.slice(..n * d)?,
                &layer.wqkv,
                &mut qkv.slice_mut(..n * qkv_dim)?,
                GemmShape::new(n, qkv_dim, d),
            )?;
            rope_append(
                stream,
                QkvRows::Fused {
                    qkv: qkv.slice_mut(..n * qkv_dim)?,
                    row_stride: qkv_dim,
                },
                self.heads(),
                &self_slots,
                &positions,
                &self.rope,
                KvCacheMut {
                    k: caches.self_k[j].view_mut(),
                    v: caches.self_v[j].view_mut(),
                    layout: self.self_layout(),
                },
            )?;
            let layout = DecodeLayout::new(
                n,
                cfg.num_attention_heads,
                cfg.num_key_value_heads,
                cfg.head_dim,
                cfg.sections() * self.max_batch,
                self.capacity,
            )
            .with_row_strides(qkv_dim, qd)
            .with_max_keys(self.capacity);
            attention_decode(
                stream,
                &qkv.slice(..n * qkv_dim)?,
                &caches.self_k[j],
                &caches.self_v[j],
                &self_slots,
                &positions,
                &mut attn.slice_mut(..n * qd)?,
                workspace,
                layout,
                DecodeMask::SelfCausal,
            )?;
            linear(
                stream,
                &attn.slice(..n * qd)?,
                &layer.wo,
                &mut o.slice_mut(..n * d)?,
                GemmShape::new(n, d, qd),
            )?;
            if s >= 1 {
                let cross = &w.cross[s - 1][j];
                add_norm(x, &mut cur, o, h, &cross.norm)?;
                // The cross query reuses the front of `qkv` as a dense [n, q_dim] tensor.
                linear(
                    stream,
                    &h.slice(..n * d)?,
                    &cross.wq,
                    &mut qkv.slice_mut(..n * qd)?,
                    GemmShape::new(n, qd, d),
                )?;
                match cross_keys {
                    CrossKeys::Cache => {
                        let layer_len = self.cross_layout().required_len()?;
                        let span = j * layer_len..(j + 1) * layer_len;
                        let layout = DecodeLayout::new(
                            n,
                            cfg.num_attention_heads,
                            cfg.num_key_value_heads,
                            cfg.head_dim,
                            self.max_batch,
                            self.ring,
                        )
                        .with_max_keys(self.window.unwrap_or(self.capacity));
                        attention_decode(
                            stream,
                            &qkv.slice(..n * qd)?,
                            &caches.cross_k[s - 1].slice(span.clone())?,
                            &caches.cross_v[s - 1].slice(span)?,
                            &cross_slots,
                            &positions,
                            &mut attn.slice_mut(..n * qd)?,
                            workspace,
                            layout,
                            DecodeMask::Cross {
                                window: self.window,
                            },
                        )?;
                    }
                    CrossKeys::Prompt(batch) => {
                        let stride = ls * 2 * kvd;
                        let base = j * 2 * kvd;
                        let cfg_prefill = PrefillConfig {
                            shape: stagformer_kernels::ops::attention_prefill::HeadShape {
                                heads: cfg.num_attention_heads,
                                kv_heads: cfg.num_key_value_heads,
                                head_dim: cfg.head_dim,
                            },
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
                        let span =
                            |offset: usize| base + offset..base + offset + (n - 1) * stride + kvd;
                        attention_prefill(
                            stream,
                            batch,
                            &qkv.slice(..n * qd)?,
                            &memory_kv.slice(span(0))?,
                            &memory_kv.slice(span(kvd))?,
                            &mut attn.slice_mut(..n * qd)?,
                            &cfg_prefill,
                        )?;
                    }
                }
                linear(
                    stream,
                    &attn.slice(..n * qd)?,
                    &cross.wo,
                    &mut o.slice_mut(..n * d)?,
                    GemmShape::new(n, d, qd),
                )?;
            }
            add_norm(x, &mut cur, o, h, &layer.post_attention_norm)?;
            linear(
                stream,
                &h.slice(..n * d)?,
                &layer.w_gate_up,
                &mut gate_up.slice_mut(..n * 2 * f)?,
                GemmShape::new(n, 2 * f, d),
            )?;
            swiglu(
                stream,
                &gate_up.slice(..n * 2 * f)?,
                &mut act.slice_mut(..n * f)?,
                SwigluShape { rows: n, ffn: f },
            )?;
            linear(
                stream,
                &act.slice(..n * f)?,
                &layer.w_down,
                &mut o.slice_mut(..n * d)?,
                GemmShape::new(n, d, f),
            )?;
            let next = if j + 1 < ls {
                &w.layers[cfg.layer_index(s, j + 1)].input_norm
            } else {
                end
            };
            add_norm(x, &mut cur, o, h, next)?;
        }
        Ok(cur)
    }

    /// Projects the first `n` rows of `memory` (normed section output) with the k|v weights of
    /// section `reader`'s cross layers into `memory_kv`.
    pub fn project_memory(
        &self,
        stream: &Stream,
        memory: &DeviceBuffer<T>,
        memory_kv: &mut DeviceBuffer<T>,
        reader: usize,
        n: usize,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let width = cfg.layers_per_section() * 2 * cfg.kv_dim();
        let d = cfg.hidden_size;
        linear(
            stream,
            &memory.slice(..n * d)?,
            &self.weights.memory_kv[reader - 1],
            &mut memory_kv.slice_mut(..n * width)?,
            GemmShape::new(n, width, d),
        )?;
        Ok(())
    }

    /// Writes rows `rows` of the projected memory in `sc.memory_kv` into section `reader`'s cross
    /// caches, at the slots of those rows' positions.
    pub fn append_memory(
        &self,
        caches: &mut Caches<T>,
        sc: &Scratch<T>,
        stream: &Stream,
        reader: usize,
        rows: std::ops::Range<usize>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let width = cfg.layers_per_section() * 2 * cfg.kv_dim();
        let layout = self.cross_layout();
        memory_kv_append(
            stream,
            &sc.memory_kv.slice(rows.start * width..rows.end * width)?,
            &sc.cross_slots.slice(rows.clone())?,
            &sc.positions.slice(rows)?,
            KvCacheMut {
                k: caches.cross_k[reader - 1].view_mut(),
                v: caches.cross_v[reader - 1].view_mut(),
                layout,
            },
            CrossCaches {
                layers: cfg.layers_per_section(),
                layer_stride: layout.required_len()?,
                // The kernel's ring modulus: W + 1 slots when windowed.
                window: self.window.map(|_| self.ring),
            },
        )?;
        Ok(())
    }
}
