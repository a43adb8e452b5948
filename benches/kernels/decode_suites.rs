//! Suites of the decode-step kernels other than the norms and the projections: embedding,
//! RoPE + KV append, memory KV append, SwiGLU, decode and prefill attention, sampling and the
//! output mix. Bytes and FLOPs follow the rules of the parent module (each input read once,
//! each output written once); each suite's comment gives its formula.

use half::bf16;
use stagformer_kernels::device::{DeviceBuffer, Stream};
use stagformer_kernels::error::DeviceError;
use stagformer_kernels::ops::attention_decode::{
    attention_decode, plan_splits, AttentionWorkspace, DecodeCombine, DecodeLayout, DecodeMask,
    MIN_KEYS_PER_SPLIT, RECOMMENDED_MAX_SPLITS,
};
use stagformer_kernels::ops::attention_prefill::{
    attention_prefill_with, PrefillBatch, PrefillConfig, PrefillKernel, PrefillMask,
};
use stagformer_kernels::ops::axpby::axpby;
use stagformer_kernels::ops::embedding::{embedding, EmbeddingShape};
use stagformer_kernels::ops::memory_kv_append::{memory_kv_append, CrossCaches};
use stagformer_kernels::ops::rope_append::{
    rope_append, KvCacheLayout, KvCacheMut, QkvRows, RopeTable,
};
use stagformer_kernels::ops::sample::{
    pack_rows, sample, SampleKernel, SampleShape, SampleWorkspace, SamplingConfig,
};
use stagformer_kernels::ops::swiglu::{swiglu, SwigluShape};
use stagformer_kernels::ops::HeadShape;

use super::{copies_for, output_copies, random_copies, KernelBench, Launcher, Result};

/// Decode batch rows.
const DECODE_ROWS: [u64; 3] = [1, 8, 64];
/// Attention geometry of the 1.3b preset and of Llama-3-8B: 32 query heads of 128.
const HEADS: u64 = 32;
const KV_HEADS: u64 = 8;
const HEAD_DIM: u64 = 128;
/// The staggered cross-attention window measured next to the unbounded one.
const WINDOW: u64 = 128;
const VOCAB: u64 = 32_000;
const ROPE_THETA: f64 = 10_000.0;
/// Largest K + V cache (one operand copy) a decode attention bench allocates.
const MAX_CACHE_BYTES: u64 = 4_000_000_000;
const BF16: u64 = 2;

/// `len` pseudo-random integers in `[0, bound)` (xorshift), as device indices.
fn random_indices(len: usize, bound: u64, seed: u64) -> Vec<i32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) % bound) as i32
        })
        .collect()
}

/// A pseudo-random permutation of `0..n` (Fisher–Yates over the xorshift stream).
fn permutation(n: u64, seed: u64) -> Vec<i32> {
    let mut ids: Vec<i32> = (0..n as i32).collect();
    let draws = random_indices(ids.len(), u64::MAX >> 12, seed);
    for i in (1..ids.len()).rev() {
        let j = draws[i] as usize % (i + 1);
        ids.swap(i, j);
    }
    ids
}

/// `0, 1, ..., n − 1`: one sequence slot per row.
fn iota(n: u64) -> Vec<i32> {
    (0..n as i32).collect()
}

// ---------------------------------------------------------------------------------------------
// embedding
// ---------------------------------------------------------------------------------------------

/// Bytes: per row a 4-byte id read, a bf16 table row read and a bf16 output row written,
/// `rows · (4 + 2 · 2 · D)`. No FLOPs.
///
/// Rotation: the table is far larger than L2 and is not copied; instead the ids walk a random
/// permutation of the whole vocabulary, `rows` ids per call, so one pass reads every table row
/// once (131 MB at D = 2048, 262 MB at D = 4096) and a call never finds its rows in L2 from the
/// previous pass. Outputs rotate over [`copies_for`] copies.
pub(crate) fn embedding_benches() -> Vec<KernelBench> {
    let mut benches = Vec::new();
    for dim in [2048, 4096] {
        for rows in DECODE_ROWS {
            let bytes = rows * (4 + 2 * BF16 * dim);
            let shape = [("rows", rows), ("d", dim), ("vocab", VOCAB)];
            benches.push(KernelBench::new(
                "embedding",
                "bf16",
                &shape,
                bytes,
                0,
                move |stream| {
                    let copies = copies_for(bytes);
                    let table_shape = EmbeddingShape {
                        vocab: VOCAB as usize,
                        dim: dim as usize,
                    };
                    let table = random_copies::<bf16>(stream, (VOCAB * dim) as usize, 1, 21)?;
                    let ids = DeviceBuffer::from_host(stream, &permutation(VOCAB, 22))?;
                    let id_sets = VOCAB / rows;
                    let mut out =
                        output_copies::<bf16>(stream.device(), (rows * dim) as usize, copies)?;
                    Ok(Box::new(move |s: &Stream, call: u64| {
                        let first = ((call % id_sets) * rows) as usize;
                        let ids = ids.slice(first..first + rows as usize)?;
                        let c = (call % copies) as usize;
                        embedding(s, &ids, &table[0], &mut out[c], table_shape)
                    }) as Launcher)
                },
            ));
        }
    }
    benches
}

// ---------------------------------------------------------------------------------------------
// rope_append
// ---------------------------------------------------------------------------------------------

/// Bytes, per row of the fused `[q | k | v]` projection (H = 32, Hkv = 8, hd = 128, bf16):
/// q and k read and written back rotated, `2 · 2 · (H + Hkv) · hd`; v read, `2 · Hkv · hd`;
/// k and v written to the caches, `2 · 2 · Hkv · hd`; the row's cos and sin read (f32,
/// `hd / 2` each), `4 · hd`; its slot and position read, 8.
/// FLOPs: 3 per rotated element (a pair takes 4 multiplies and 2 adds).
///
/// Rotation: the projection rows rotate over [`copies_for`] copies, each with its own random
/// cache positions, so the cache lines written differ between copies; the caches (4096 slots,
/// up to 1 GB at 64 sequences) and the RoPE table are single.
pub(crate) fn rope_append_benches() -> Vec<KernelBench> {
    const SLOTS: u64 = 4096;
    let heads = HeadShape {
        heads: HEADS as usize,
        kv_heads: KV_HEADS as usize,
        head_dim: HEAD_DIM as usize,
    };
    let row_width = (HEADS + 2 * KV_HEADS) * HEAD_DIM;
    let mut benches = Vec::new();
    for rows in DECODE_ROWS {
        let per_row = 2 * BF16 * (HEADS + KV_HEADS) * HEAD_DIM
            + BF16 * KV_HEADS * HEAD_DIM
            + 2 * BF16 * KV_HEADS * HEAD_DIM
            + 4 * HEAD_DIM
            + 8;
        let bytes = rows * per_row;
        let flops = rows * (HEADS + KV_HEADS) * HEAD_DIM * 3;
        let shape = [
            ("rows", rows),
            ("heads", HEADS),
            ("kv_heads", KV_HEADS),
            ("head_dim", HEAD_DIM),
            ("slots", SLOTS),
        ];
        benches.push(KernelBench::new(
            "rope_append",
            "bf16",
            &shape,
            bytes,
            flops,
            move |stream| {
                let copies = copies_for(bytes);
                let n = rows as usize;
                let mut qkv = random_copies::<bf16>(stream, n * row_width as usize, copies, 31)?;
                let slots = DeviceBuffer::from_host(stream, &iota(rows))?;
                let positions = (0..copies)
                    .map(|c| DeviceBuffer::from_host(stream, &random_indices(n, SLOTS, 32 + c)))
                    .collect::<Result<Vec<_>>>()?;
                let table = RopeTable::new(stream, HEAD_DIM as usize, ROPE_THETA, SLOTS as usize)?;
                let layout =
                    KvCacheLayout::dense(n, heads.kv_heads, SLOTS as usize, heads.head_dim);
                let cache_len = layout.required_len()?;
                let mut k_cache = DeviceBuffer::<bf16>::alloc_zeroed(stream, cache_len)?;
                let mut v_cache = DeviceBuffer::<bf16>::alloc_zeroed(stream, cache_len)?;
                Ok(Box::new(move |s: &Stream, call: u64| {
                    let c = (call % copies) as usize;
                    let fused = QkvRows::Fused {
                        qkv: qkv[c].view_mut(),
                        row_stride: row_width as usize,
                    };
                    let cache = KvCacheMut {
                        k: k_cache.view_mut(),
                        v: v_cache.view_mut(),
                        layout,
                        block_table: None,
                    };
                    rope_append(s, fused, heads, &slots, &positions[c], &table, cache)
                }) as Launcher)
            },
        ));
    }
    benches
}

// ---------------------------------------------------------------------------------------------
// memory_kv_append
// ---------------------------------------------------------------------------------------------

/// Bytes: per row, the projected memory `layers · 2 · Hkv · hd` bf16 read and the same written
/// into the caches, plus its slot and position (8): `rows · (2 · 2 · L · 2 · Hkv · hd + 8)`
/// with L = 12 cross layers. No FLOPs.
///
/// Rotation: the projected rows rotate over [`copies_for`] copies, each with its own random
/// positions; the stacked caches are single (a ring of W + 1 slots for the windowed cache, 512
/// slots for the unbounded one: the kernel's work does not depend on the slot count).
pub(crate) fn memory_kv_append_benches() -> Vec<KernelBench> {
    const LAYERS: u64 = 12;
    const UNBOUNDED_SLOTS: u64 = 512;
    let row_width = LAYERS * 2 * KV_HEADS * HEAD_DIM;
    let mut benches = Vec::new();
    for window in [None, Some(WINDOW)] {
        for rows in DECODE_ROWS {
            let bytes = rows * (2 * BF16 * row_width + 8);
            let mut shape = vec![
                ("rows", rows),
                ("layers", LAYERS),
                ("kv_heads", KV_HEADS),
                ("head_dim", HEAD_DIM),
            ];
            let variant = match window {
                None => "bf16".to_owned(),
                Some(w) => {
                    shape.push(("window", w));
                    format!("bf16.w{w}")
                }
            };
            let (slots, position_bound) = match window {
                None => (UNBOUNDED_SLOTS, UNBOUNDED_SLOTS),
                // Ring slots are position mod W: any position is valid.
                Some(w) => (w + 1, 1 << 20),
            };
            benches.push(KernelBench::new(
                "memory_kv_append",
                variant,
                &shape,
                bytes,
                0,
                move |stream| {
                    let copies = copies_for(bytes);
                    let n = rows as usize;
                    let kv = random_copies::<bf16>(stream, n * row_width as usize, copies, 41)?;
                    let seq_slots = DeviceBuffer::from_host(stream, &iota(rows))?;
                    let positions = (0..copies)
                        .map(|c| {
                            let p = random_indices(n, position_bound, 42 + c);
                            DeviceBuffer::from_host(stream, &p)
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let layout = KvCacheLayout::dense(
                        n,
                        KV_HEADS as usize,
                        slots as usize,
                        HEAD_DIM as usize,
                    );
                    let layer_stride = layout.required_len()?;
                    let cross = CrossCaches {
                        layers: LAYERS as usize,
                        layer_stride,
                        window: window.map(|w| w as usize),
                    };
                    let cache_len = layer_stride * LAYERS as usize;
                    let mut k_cache = DeviceBuffer::<bf16>::alloc_zeroed(stream, cache_len)?;
                    let mut v_cache = DeviceBuffer::<bf16>::alloc_zeroed(stream, cache_len)?;
                    Ok(Box::new(move |s: &Stream, call: u64| {
                        let c = (call % copies) as usize;
                        let cache = KvCacheMut {
                            k: k_cache.view_mut(),
                            v: v_cache.view_mut(),
                            layout,
                            block_table: None,
                        };
                        memory_kv_append(s, &kv[c], &seq_slots, &positions[c], cache, cross)
                    }) as Launcher)
                },
            ));
        }
    }
    benches
}

// ---------------------------------------------------------------------------------------------
// swiglu
// ---------------------------------------------------------------------------------------------

/// Bytes: gate and up read, out written, all bf16: `rows · F · 2 · 3`.
/// FLOPs: 5 per output (negate, exp, add, divide, multiply).
pub(crate) fn swiglu_benches() -> Vec<KernelBench> {
    let mut benches = Vec::new();
    for ffn in [5632, 14336] {
        for rows in [1, 8, 64, 4096] {
            let bytes = rows * ffn * BF16 * 3;
            let flops = rows * ffn * 5;
            let shape = SwigluShape {
                rows: rows as usize,
                ffn: ffn as usize,
            };
            benches.push(KernelBench::new(
                "swiglu",
                "bf16",
                &[("rows", rows), ("f", ffn)],
                bytes,
                flops,
                move |stream| {
                    let copies = copies_for(bytes);
                    let n = shape.rows * shape.ffn;
                    let gate_up = random_copies::<bf16>(stream, 2 * n, copies, 51)?;
                    let mut out = output_copies::<bf16>(stream.device(), n, copies)?;
                    Ok(Box::new(move |s: &Stream, call: u64| {
                        let c = (call % copies) as usize;
                        swiglu(s, &gate_up[c], &mut out[c], shape)
                    }) as Launcher)
                },
            ));
        }
    }
    benches
}

// ---------------------------------------------------------------------------------------------
// attention_decode
// ---------------------------------------------------------------------------------------------

/// The grid's split count `plan_splits` picks for these sizes (a workspace of
/// [`RECOMMENDED_MAX_SPLITS`]), for rows of at most `max_keys` keys, and the splits the device
/// then gives a row of `keys` keys; only the partials' share of a bench's bytes depends on them.
/// Without a device there is no workspace to ask `plan_splits` with, so the grid is worked out
/// here the same way, and each bench's setup checks it against `plan_splits`; the row's count
/// follows `split_shape` in cuda/attention_decode.cu.
fn decode_splits(rows: u64, heads: u64, kv_heads: u64, max_keys: u64, keys: u64) -> (u64, u64) {
    // Split blocks aimed at (4 per SM of an H100), the split granule.
    const TARGET_BLOCKS: u64 = 4 * 132;
    const SPLIT_GRANULE: u64 = 32;
    let min_keys = MIN_KEYS_PER_SPLIT as u64;
    let group = heads / kv_heads;
    let heads_per_block = match group {
        1 => 1,
        2 => 2,
        3 | 4 => 4,
        _ => 8,
    };
    let blocks_per_split = rows * kv_heads * group.div_ceil(heads_per_block);
    let grid = TARGET_BLOCKS
        .div_ceil(blocks_per_split)
        .min(max_keys.div_ceil(min_keys))
        .min(RECOMMENDED_MAX_SPLITS as u64)
        .max(1);
    if keys == 0 {
        return (grid, 0);
    }
    let kps = min_keys
        .max(keys.div_ceil(grid))
        .next_multiple_of(SPLIT_GRANULE);
    (grid, keys.div_ceil(kps))
}

/// One decode attention bench: `batch` rows, every one at position `context − 1` of its own
/// sequence, in caches of `capacity` slots (`None`: the context, as in a cache sized to fit;
/// `Some(c)`: a decoder's cache of capacity c at a shorter real length, the grid sized for c).
///
/// Bytes: the K and V of the visible keys (bf16, `2 · 2 · B · Hkv · keys · hd`), q read and out
/// written (`2 · 2 · B · H · hd`), the positions and sequence slots (`8 · B`), and the f32
/// partials the split kernel writes and the combine reads (`2 · 4 · B · H · splits · (hd + 2)`:
/// a max, a sum and `hd` outputs per split used by the row; the separate combine path takes
/// even one split through them, the fused path then writes `out` directly). Visible keys: self,
/// `context`; sliding-window self, `min(context, W)`; unbounded cross, `context − 1`; windowed
/// cross, `min(context − 1, W)`.
/// FLOPs: `4 · B · H · keys · hd` (q·k and p·v).
///
/// Rotation: q, out and both caches rotate over [`copies_for`] copies (two for the large
/// caches); the workspace and the index arrays are single.
fn attention_decode_bench(
    batch: u64,
    kv_heads: u64,
    context: u64,
    capacity: Option<u64>,
    mask: DecodeMask,
    combine: DecodeCombine,
) -> KernelBench {
    let dense_slots = capacity.unwrap_or(context);
    let (base, keys, cache_slots) = match mask {
        DecodeMask::SelfCausal => ("bf16.self", context, dense_slots),
        DecodeMask::Cross { window: None } => ("bf16.cross", context - 1, dense_slots),
        // A ring of W + 1 slots, the least a staggered step needs (the decoder's is longer; the
        // kernel's work does not depend on the slot count).
        DecodeMask::Cross { window: Some(w) } => {
            let w = w as u64;
            ("bf16.cross_w128", (context - 1).min(w), w + 1)
        }
        // Mistral's sliding window in the decoder's ring of W + min(W, 256) − 1 slots.
        DecodeMask::SelfSliding { window } => {
            let w = window as u64;
            ("bf16.self_sliding_w128", context.min(w), sliding_ring(w))
        }
    };
    // The grid is sized for the most keys the caches can give a row.
    let max_keys = match (mask, capacity) {
        (DecodeMask::SelfCausal | DecodeMask::Cross { window: None }, Some(c)) => c,
        _ => keys,
    };
    let (splits, row_splits) = decode_splits(batch, HEADS, kv_heads, max_keys.max(1), keys);
    let variant = format!(
        "{base}{}{}",
        if capacity.is_some() { ".capacity" } else { "" },
        match combine {
            DecodeCombine::Fused => "",
            DecodeCombine::Separate => ".separate",
        }
    );
    let kv_bytes = 2 * BF16 * batch * kv_heads * keys * HEAD_DIM;
    let qo_bytes = 2 * BF16 * batch * HEADS * HEAD_DIM;
    let partial_splits = match combine {
        DecodeCombine::Fused if row_splits <= 1 => 0,
        _ => row_splits,
    };
    let partial_bytes = 2 * 4 * batch * HEADS * partial_splits * (HEAD_DIM + 2);
    let bytes = kv_bytes + qo_bytes + 8 * batch + partial_bytes;
    let flops = 4 * batch * HEADS * keys * HEAD_DIM;
    let mut shape = vec![
        ("batch", batch),
        ("heads", HEADS),
        ("kv_heads", kv_heads),
        ("head_dim", HEAD_DIM),
        ("context", context),
    ];
    if let DecodeMask::Cross { window: Some(w) } | DecodeMask::SelfSliding { window: w } = mask {
        shape.push(("window", w as u64));
    }
    if let Some(c) = capacity {
        shape.push(("capacity", c));
    }
    KernelBench::new(
        "attention_decode",
        &variant,
        &shape,
        bytes,
        flops,
        move |stream| {
            let copies = copies_for(bytes);
            let rows = batch as usize;
            let layout = DecodeLayout::new(
                rows,
                HEADS as usize,
                kv_heads as usize,
                HEAD_DIM as usize,
                rows,
                cache_slots as usize,
            )
            .with_max_keys(max_keys.max(1) as usize)
            .with_combine(combine);
            let cache_len = layout
                .cache_len()
                .ok_or_else(|| DeviceError::SizeOverflow {
                    arg: "cache",
                    what: "cache elements".into(),
                })?;
            let q_len = rows * (HEADS * HEAD_DIM) as usize;
            let q = random_copies::<bf16>(stream, q_len, copies, 61)?;
            let k = random_copies::<bf16>(stream, cache_len, copies, 62)?;
            let v = random_copies::<bf16>(stream, cache_len, copies, 63)?;
            let mut out = output_copies::<bf16>(stream.device(), q_len, copies)?;
            let seq_slots = DeviceBuffer::from_host(stream, &iota(batch))?;
            let positions = DeviceBuffer::from_host(stream, &vec![context as i32 - 1; rows])?;
            let mut workspace = AttentionWorkspace::new(
                stream.device(),
                rows,
                HEADS as usize,
                HEAD_DIM as usize,
                RECOMMENDED_MAX_SPLITS,
            )?;
            let plan = plan_splits(&layout, mask, &workspace)?;
            if plan.splits as u64 != splits {
                eprintln!(
                    "attention_decode: the bench counts the partials of {splits} splits, the \
                     kernel uses {}; update decode_splits",
                    plan.splits
                );
            }
            Ok(Box::new(move |s: &Stream, call: u64| {
                let c = (call % copies) as usize;
                attention_decode(
                    s,
                    &q[c],
                    &k[c],
                    &v[c],
                    &seq_slots,
                    &positions,
                    &mut out[c],
                    &mut workspace,
                    layout,
                    mask,
                )
            }) as Launcher)
        },
    )
}

/// Slots of the decoder's sliding-window self cache for window `w` (`SelfCache` in the
/// decoder: W + min(W, 256) − 1).
fn sliding_ring(w: u64) -> u64 {
    w + w.min(256) - 1
}

/// Self (full and sliding-window) and staggered cross decode attention at H = 32, hd = 128,
/// GQA 4 and 8, contexts 1K to 32K; shapes whose K + V cache would pass [`MAX_CACHE_BYTES`] are
/// left out.
pub(crate) fn attention_decode_benches() -> Vec<KernelBench> {
    let masks = [
        DecodeMask::SelfCausal,
        DecodeMask::SelfSliding {
            window: WINDOW as usize,
        },
        DecodeMask::Cross { window: None },
        DecodeMask::Cross {
            window: Some(WINDOW as usize),
        },
    ];
    let mut benches = Vec::new();
    for mask in masks {
        for kv_heads in [KV_HEADS, 4] {
            for context in [1024, 4096, 32_768] {
                for batch in DECODE_ROWS {
                    let slots = match mask {
                        DecodeMask::Cross { window: Some(w) } => w as u64 + 1,
                        DecodeMask::SelfSliding { window } => sliding_ring(window as u64),
                        _ => context,
                    };
                    let cache_bytes = 2 * BF16 * batch * kv_heads * slots * HEAD_DIM;
                    if cache_bytes <= MAX_CACHE_BYTES {
                        for combine in [DecodeCombine::Fused, DecodeCombine::Separate] {
                            benches.push(attention_decode_bench(
                                batch, kv_heads, context, None, mask, combine,
                            ));
                        }
                    }
                }
            }
        }
    }
    // A decoder's cache of capacity 32K at real lengths 1K and 4K: the grid is sized for the
    // capacity, the work for the real length.
    const CAPACITY: u64 = 32_768;
    for mask in [DecodeMask::SelfCausal, DecodeMask::Cross { window: None }] {
        for context in [1024, 4096] {
            for batch in [1, 16] {
                let cache_bytes = 2 * BF16 * batch * KV_HEADS * CAPACITY * HEAD_DIM;
                if cache_bytes > MAX_CACHE_BYTES {
                    continue;
                }
                for combine in [DecodeCombine::Fused, DecodeCombine::Separate] {
                    benches.push(attention_decode_bench(
                        batch,
                        KV_HEADS,
                        context,
                        Some(CAPACITY),
                        mask,
                        combine,
                    ));
                }
            }
        }
    }
    benches
}

// ---------------------------------------------------------------------------------------------
// attention_prefill
// ---------------------------------------------------------------------------------------------

/// One sequence of P tokens, H = 32, Hkv = 8, hd = 128 (or 64), packed q, k, v and out, on the
/// SIMT kernel (variants `bf16.<mask>`) and on tensor cores (`bf16.mma.<mask>`), side by side.
///
/// Bytes: q read and out written (`2 · 2 · P · H · hd`), k and v read (`2 · 2 · P · Hkv · hd`),
/// all bf16 (the batch's offset arrays are a few bytes).
/// FLOPs: `4 · H · hd` per (query, visible key) pair (q·k and p·v): causal,
/// `P (P + 1) / 2` pairs (≈ `2 · P² · H · hd`); sliding-window causal, `Σᵢ min(i + 1, W)`;
/// windowed cross, `Σᵢ min(i, W)` pairs.
///
/// Rotation: q, k, v and out rotate over [`copies_for`] copies; the batch is single.
pub(crate) fn attention_prefill_benches() -> Vec<KernelBench> {
    let masks = [
        PrefillMask::Causal,
        PrefillMask::SlidingCausal {
            window: WINDOW as usize,
        },
        PrefillMask::StaggeredCross {
            window: Some(WINDOW as usize),
        },
    ];
    // (mask, P, head_dim): every mask at 512 and 2048, plus causal at 4096 (hd 128) and
    // 1024 (hd 64).
    let mut configs: Vec<(PrefillMask, u64, u64)> = Vec::new();
    for mask in masks {
        for p in [512, 2048] {
            configs.push((mask, p, HEAD_DIM));
        }
    }
    configs.push((PrefillMask::Causal, 4096, HEAD_DIM));
    configs.push((PrefillMask::Causal, 1024, 64));
    let mut benches = Vec::new();
    for (mask, p, hd) in configs {
        for kernel in [PrefillKernel::Simt, PrefillKernel::TensorCore] {
            let heads = HeadShape {
                heads: HEADS as usize,
                kv_heads: KV_HEADS as usize,
                head_dim: hd as usize,
            };
            let bytes = 2 * BF16 * p * (HEADS + KV_HEADS) * hd;
            let (name, pairs) = match mask {
                PrefillMask::Causal => ("causal", p * (p + 1) / 2),
                PrefillMask::SlidingCausal { window } => (
                    "sliding_w128",
                    (0..p).map(|i| (i + 1).min(window as u64)).sum(),
                ),
                PrefillMask::StaggeredCross { window } => {
                    let w = window.map_or(u64::MAX, |w| w as u64);
                    ("cross_w128", (0..p).map(|i| i.min(w)).sum())
                }
            };
            let kernel_name = if kernel == PrefillKernel::TensorCore {
                "bf16.mma"
            } else {
                "bf16"
            };
            let dim_suffix = if hd == HEAD_DIM { "" } else { "_hd64" };
            let variant = format!("{kernel_name}.{name}{dim_suffix}");
            let flops = 4 * HEADS * hd * pairs;
            let mut shape = vec![
                ("p", p),
                ("heads", HEADS),
                ("kv_heads", KV_HEADS),
                ("head_dim", hd),
            ];
            if let PrefillMask::StaggeredCross { window: Some(w) }
            | PrefillMask::SlidingCausal { window: w } = mask
            {
                shape.push(("window", w as u64));
            }
            benches.push(KernelBench::new(
                "attention_prefill",
                variant,
                &shape,
                bytes,
                flops,
                move |stream| {
                    let copies = copies_for(bytes);
                    let rows = p as usize;
                    let q_len = rows * heads.heads * heads.head_dim;
                    let kv_len = rows * heads.kv_heads * heads.head_dim;
                    let q = random_copies::<bf16>(stream, q_len, copies, 71)?;
                    let k = random_copies::<bf16>(stream, kv_len, copies, 72)?;
                    let v = random_copies::<bf16>(stream, kv_len, copies, 73)?;
                    let mut out = output_copies::<bf16>(stream.device(), q_len, copies)?;
                    let batch = PrefillBatch::new(stream, &[rows])?;
                    let cfg = PrefillConfig::packed(heads, mask);
                    Ok(Box::new(move |s: &Stream, call: u64| {
                        let c = (call % copies) as usize;
                        attention_prefill_with(
                            s,
                            &batch,
                            &q[c],
                            &k[c],
                            &v[c],
                            &mut out[c],
                            &cfg,
                            kernel,
                        )
                    }) as Launcher)
                },
            ));
        }
    }
    benches
}

// ---------------------------------------------------------------------------------------------
// sample
// ---------------------------------------------------------------------------------------------

/// Bytes: the f32 logits read once, `4 · rows · V`, and per row its 24-byte settings read and a
/// token written, `28 · rows` (the kernel's selection passes re-read the logits, mostly from
/// L2; the floor counts one read).
/// FLOPs: greedy, 1 per logit (the comparison); sampling, 3 per logit (scale by 1/T, subtract
/// the maximum, exponentiate), the selection's integer work not counted.
///
/// Rotation: logits and tokens rotate over [`copies_for`] copies; every copy has its own
/// counters. Every row of a call has the variant's settings (the launches are the same for any
/// mix).
pub(crate) fn sample_benches() -> Vec<KernelBench> {
    let configs = [
        ("f32.greedy", SamplingConfig::GREEDY, 1),
        (
            "f32.t0.8_k40_p0.95",
            SamplingConfig {
                temperature: 0.8,
                top_k: 40,
                top_p: 0.95,
                seed: 7,
            },
            3,
        ),
    ];
    // The one-block kernel keeps its variant names; the multi-block kernel (the default) adds
    // `.multi` at the same shapes plus Llama 3's vocabulary at batch 1 and 16.
    let mut shapes: Vec<(u64, u64, SampleKernel)> = Vec::new();
    for vocab in [VOCAB, 262_144] {
        for rows in DECODE_ROWS {
            shapes.push((vocab, rows, SampleKernel::OneBlock));
            shapes.push((vocab, rows, SampleKernel::MultiBlock));
        }
    }
    for rows in [1, 16] {
        shapes.push((128_256, rows, SampleKernel::OneBlock));
        shapes.push((128_256, rows, SampleKernel::MultiBlock));
    }
    let mut benches = Vec::new();
    for (variant, config, flops_per_logit) in configs {
        for &(vocab, rows, kernel) in &shapes {
            let name = match kernel {
                SampleKernel::OneBlock => variant.to_string(),
                SampleKernel::MultiBlock => format!("{variant}.multi"),
            };
            // Logits read once (the multi-block kernel also writes and rereads 8-byte
            // weights, which stay in L2 at these sizes; see docs/perf-notes.md).
            let bytes = 4 * rows * vocab + 28 * rows;
            let flops = flops_per_logit * rows * vocab;
            let shape = SampleShape::contiguous(rows as usize, vocab as usize);
            benches.push(KernelBench::new(
                "sample",
                &name,
                &[("rows", rows), ("vocab", vocab)],
                bytes,
                flops,
                move |stream| {
                    let copies = copies_for(bytes);
                    let n = rows as usize;
                    let logits = random_copies::<f32>(stream, n * vocab as usize, copies, 81)?;
                    let mut tokens = output_copies::<i32>(stream.device(), n, copies)?;
                    let configs = vec![config; n];
                    let settings = (0..copies)
                        .map(|c| {
                            let counters: Vec<u32> = random_indices(n, 1 << 20, 82 + c)
                                .into_iter()
                                .map(|x| x as u32)
                                .collect();
                            DeviceBuffer::from_host(stream, &pack_rows(&configs, &counters)?)
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let mut workspace =
                        SampleWorkspace::with_kernel(stream, n, vocab as usize, kernel)?;
                    Ok(Box::new(move |s: &Stream, call: u64| {
                        let c = (call % copies) as usize;
                        sample(
                            s,
                            &logits[c],
                            &mut tokens[c],
                            &settings[c],
                            shape,
                            &mut workspace,
                        )
                    }) as Launcher)
                },
            ));
        }
    }
    benches
}

// ---------------------------------------------------------------------------------------------
// axpby
// ---------------------------------------------------------------------------------------------

/// `y = α·x + β·y` over n = B · D bf16 elements, D = 4096.
/// Bytes: x and y read, y written, `2 · 3 · n`. FLOPs: 3 per element.
///
/// Rotation: x and y rotate over [`copies_for`] copies. With α = β = 0.5 repeated calls keep
/// y bounded.
pub(crate) fn axpby_benches() -> Vec<KernelBench> {
    const DIM: u64 = 4096;
    let mut benches = Vec::new();
    for rows in [1, 64, 4096] {
        let n = rows * DIM;
        let bytes = BF16 * 3 * n;
        benches.push(KernelBench::new(
            "axpby",
            "bf16",
            &[("rows", rows), ("d", DIM)],
            bytes,
            3 * n,
            move |stream| {
                let copies = copies_for(bytes);
                let x = random_copies::<bf16>(stream, n as usize, copies, 91)?;
                let mut y = random_copies::<bf16>(stream, n as usize, copies, 92)?;
                Ok(Box::new(move |s: &Stream, call: u64| {
                    let c = (call % copies) as usize;
                    axpby(s, 0.5, &x[c], 0.5, &mut y[c])
                }) as Launcher)
            },
        ));
    }
    benches
}
