//! The decode GEMV (`ops::gemv`) beside cuBLAS `linear` on the same shapes, in group `gemv`.
//!
//! Shapes (N W rows, K): the 1.3b preset's decode projections (qkv 4096 × 2048, wo 2048 × 2048,
//! gate_up 11264 × 2048, down 2048 × 5632, lm_head 32000 × 2048, the 12 cross layers' memory
//! K/V 24576 × 2048) and Llama-like widths (4096, 8192, 11008, 14336, vocab 128256), at
//! M = 1 and 16. Bytes: the weight once, x read, y written (bf16); FLOPs 2·M·N·K. The fused
//! variants (`rmsnorm.rope_kv`, `swiglu`, `residual`, `cross_kv`) run at the 1.3b shapes; their
//! unfused chains are `linear` plus the `rmsnorm` / `rope_append` / `swiglu` /
//! `memory_kv_append` benches of the same widths.

use half::bf16;
use stagformer_kernels::device::{DeviceBuffer, Stream};
use stagformer_kernels::ops::gemm::{linear, GemmShape};
use stagformer_kernels::ops::gemv::{gemv, GemvEpilogue, GemvPrologue, GemvShape};
use stagformer_kernels::ops::memory_kv_append::CrossCaches;
use stagformer_kernels::ops::rope_append::{KvCacheLayout, KvCacheMut, RopeTable};
use stagformer_kernels::ops::HeadShape;

use super::{copies_for, output_copies, random_copies, KernelBench, Launcher, Result, EPS};

const ROWS: [u64; 2] = [1, 16];
const BF16: u64 = 2;

/// (projection, N, K).
const SHAPES: &[(&str, u64, u64)] = &[
    ("qkv_1.3b", 4096, 2048),
    ("wo_1.3b", 2048, 2048),
    ("gate_up_1.3b", 11264, 2048),
    ("down_1.3b", 2048, 5632),
    ("lm_head_1.3b", 32000, 2048),
    ("cross_kv_1.3b", 24576, 2048),
    ("sq_4096", 4096, 4096),
    ("sq_8192", 8192, 8192),
    ("up_11008", 11008, 4096),
    ("down_11008", 4096, 11008),
    ("up_14336", 14336, 4096),
    ("down_14336", 4096, 14336),
    ("lm_head_128256", 128256, 4096),
];

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Linear,
    Store,
    RmsNormStore,
    Residual,
    SwiGlu,
    RopeKv,
    CrossKv,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Linear => "cublas_linear",
            Variant::Store => "store",
            Variant::RmsNormStore => "rmsnorm.store",
            Variant::Residual => "residual",
            Variant::SwiGlu => "swiglu",
            Variant::RopeKv => "rmsnorm.rope_kv",
            Variant::CrossKv => "cross_kv",
        }
    }
}

pub fn gemv_benches() -> Vec<KernelBench> {
    let mut benches = Vec::new();
    for &(proj, n, k) in SHAPES {
        for m in ROWS {
            for v in [Variant::Linear, Variant::Store] {
                benches.push(bench(proj, v, m, n, k));
            }
        }
    }
    for m in ROWS {
        benches.push(bench("lm_head_1.3b", Variant::RmsNormStore, m, 32000, 2048));
        benches.push(bench("wo_1.3b", Variant::Residual, m, 2048, 2048));
        benches.push(bench("down_1.3b", Variant::Residual, m, 2048, 5632));
        benches.push(bench("gate_up_1.3b", Variant::SwiGlu, m, 11264, 2048));
        benches.push(bench("qkv_1.3b", Variant::RopeKv, m, 4096, 2048));
        benches.push(bench("cross_kv_1.3b", Variant::CrossKv, m, 24576, 2048));
    }
    benches
}

fn bench(proj: &str, v: Variant, m: u64, n: u64, k: u64) -> KernelBench {
    let out_cols = if v == Variant::SwiGlu { n / 2 } else { n };
    let bytes = (n * k + m * k + m * out_cols) * BF16;
    let flops = 2 * m * n * k;
    let shape = [("m", m), ("n", n), ("k", k)];
    let variant = format!("bf16.{}.{proj}", v.name());
    KernelBench::new("gemv", variant, &shape, bytes, flops, move |stream| {
        setup(stream, v, bytes, m as usize, n as usize, k as usize)
    })
}

fn setup(
    stream: &Stream,
    v: Variant,
    bytes: u64,
    m: usize,
    n: usize,
    k: usize,
) -> Result<Launcher> {
    let copies = copies_for(bytes);
    let x = random_copies::<bf16>(stream, m * k, copies, 21)?;
    let w = random_copies::<bf16>(stream, n * k, copies, 22)?;
    let gain = random_copies::<f32>(stream, k, 1, 23)?.remove(0);
    let out_cols = if v == Variant::SwiGlu { n / 2 } else { n };
    let mut y = output_copies::<bf16>(stream.device(), m * out_cols, copies)?;
    let shape = GemvShape { m, n, k };
    // Decode rows: sequence r at position 100 + r.
    let seqs: Vec<i32> = (0..m as i32).collect();
    let pos: Vec<i32> = (0..m as i32).map(|r| 100 + r).collect();
    let seq_dev = DeviceBuffer::from_host(stream, &seqs)?;
    let pos_dev = DeviceBuffer::from_host(stream, &pos)?;
    let heads = HeadShape {
        heads: 16,
        kv_heads: 8,
        head_dim: 128,
    };
    let slots = 4096;
    let (cross_layers, layout) = match v {
        Variant::CrossKv => (12, KvCacheLayout::dense(m, 8, slots, 128)),
        _ => (1, KvCacheLayout::dense(m, heads.kv_heads, slots, 128)),
    };
    let cache_len = layout.required_len()? * cross_layers;
    let (mut kc, mut vc) = match v {
        Variant::RopeKv | Variant::CrossKv => (
            output_copies::<bf16>(stream.device(), cache_len, 1)?.remove(0),
            output_copies::<bf16>(stream.device(), cache_len, 1)?.remove(0),
        ),
        _ => (
            output_copies::<bf16>(stream.device(), 1, 1)?.remove(0),
            output_copies::<bf16>(stream.device(), 1, 1)?.remove(0),
        ),
    };
    let table = RopeTable::new(stream, 128, 10_000.0, slots)?;
    Ok(Box::new(move |s: &Stream, call: u64| {
        let c = (call % copies) as usize;
        let norm = GemvPrologue::RmsNorm {
            weight: gain.view(),
            eps: EPS,
        };
        let mut out = y[c].view_mut();
        match v {
            Variant::Linear => linear(s, &x[c], &w[c], &mut out, GemmShape::new(m, n, k)),
            Variant::Store => gemv(
                s,
                &x[c],
                &w[c],
                shape,
                GemvPrologue::None,
                GemvEpilogue::Store {
                    y: out,
                    row_stride: out_cols,
                },
            ),
            Variant::RmsNormStore => gemv(
                s,
                &x[c],
                &w[c],
                shape,
                norm,
                GemvEpilogue::Store {
                    y: out,
                    row_stride: out_cols,
                },
            ),
            Variant::Residual => gemv(
                s,
                &x[c],
                &w[c],
                shape,
                GemvPrologue::None,
                GemvEpilogue::ResidualAdd {
                    y: out,
                    row_stride: out_cols,
                },
            ),
            Variant::SwiGlu => gemv(
                s,
                &x[c],
                &w[c],
                shape,
                norm,
                GemvEpilogue::SwiGlu {
                    y: out,
                    row_stride: out_cols,
                },
            ),
            Variant::RopeKv => gemv(
                s,
                &x[c],
                &w[c],
                shape,
                norm,
                GemvEpilogue::RopeKvAppend {
                    qkv: out,
                    row_stride: out_cols,
                    heads,
                    seq_slots: seq_dev.view(),
                    positions: pos_dev.view(),
                    table: &table,
                    cache: KvCacheMut {
                        k: kc.view_mut(),
                        v: vc.view_mut(),
                        layout,
                        block_table: None,
                    },
                },
            ),
            Variant::CrossKv => gemv(
                s,
                &x[c],
                &w[c],
                shape,
                norm,
                GemvEpilogue::CrossKvAppend {
                    seq_slots: seq_dev.view(),
                    positions: pos_dev.view(),
                    cache: KvCacheMut {
                        k: kc.view_mut(),
                        v: vc.view_mut(),
                        layout,
                        block_table: None,
                    },
                    cross: CrossCaches {
                        layers: cross_layers,
                        layer_stride: layout.required_len()?,
                        window: None,
                    },
                },
            ),
        }
    }))
}
