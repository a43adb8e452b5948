//! Decode GEMV / small-M GEMM with fused prologues and epilogues (`cuda/gemv.cu`).
//!
//! `acc[m][n] = Σ_k W[n][k] · h[m][k]` for `m < M ≤ 16` activation rows (decode steps), with
//! `W` row-major `[N][K]` (dense, as checkpoints store it) of the activations' type `T` (f32 or
//! bf16, see [`NormElem`]) and f32 accumulation. It reads the weight once with 16-byte loads
//! and is meant for decode, where that read is the whole cost; `ops::gemm::linear` (cuBLAS)
//! stays the path for prefill and larger M.
//!
//! The **prologue** ([`GemvPrologue`]) makes `h` from the dense input rows `x` `[M][K]`:
//! `None` uses `x`; `RmsNorm` uses `h = round_T(x · inv_rms · weight)`, the `rmsnorm` kernel's
//! formula (`inv_rms = 1/sqrt(mean(x²) + eps)`), computed by every block from `x` (L2) and safe
//! for any finite input (`cuda/include/stag_norm.cuh`: the sum of squares and the inverse RMS in f64).
//!
//! The **epilogue** ([`GemvEpilogue`]) sees `g = round_T(acc)` — the GEMM output exactly as
//! `linear` stores it — and applies the math of the unfused kernel on it:
//!
//! | epilogue | W | writes |
//! |---|---|---|
//! | `Store` | `[N][K]` | `y[m][n] = g` |
//! | `ResidualAdd` | `[N][K]` | `y[m][n] = round_T(y[m][n] + g)` (in place, as `add_rmsnorm`'s sum) |
//! | `SwiGlu` | `[gate; up]`, N = 2F | `y[m][j] = swiglu(g_j, g_{F+j})` (as `swiglu`) |
//! | `RopeKvAppend` | `[q; k; v]` | the q\|k\|v row with q, k roped into `qkv`, k and v into the self caches (as `linear` then `rope_append` with `QkvRows::Fused`) |
//! | `CrossKvAppend` | `[k_0; v_0; k_1; …]` | every layer's cross caches (as `linear` then `memory_kv_append`) |
//!
//! Requirements checked on the host (typed errors naming the argument): `1 ≤ M ≤ 16`
//! ([`MAX_ROWS`]; `M = 0` is a no-op), `K` a multiple of 16 bytes' worth of elements (4 f32 or
//! 8 bf16) and `w` starting on a 16-byte boundary, the lengths of every operand, strides, cache
//! layouts and index arrays of `M` entries. Device indices that name no slot are skipped as in
//! `rope_append` / `memory_kv_append`.

//!
//! A decode layer with it (bf16, batch rows `m`; the unfused ops stay available):
//!
//! ```ignore
//! // qkv = rope(rmsnorm(h) · W_qkvᵀ), k and v appended to the self cache.
//! gemv(stream, &h, &w_qkv, GemvShape { m, n: (heads + 2 * kv_heads) * hd, k: d },
//!     GemvPrologue::RmsNorm { weight: attn_norm.view(), eps },
//!     GemvEpilogue::RopeKvAppend { qkv: qkv.view_mut(), row_stride: qkv_width, heads: shape,
//!         seq_slots: slots.view(), positions: pos.view(), table: &rope, cache })?;
//! // h += attn · W_oᵀ
//! gemv(stream, &attn, &w_o, GemvShape { m, n: d, k: heads * hd }, GemvPrologue::None,
//!     GemvEpilogue::ResidualAdd { y: h.view_mut(), row_stride: d })?;
//! // act = swiglu(rmsnorm(h) · W_gate_upᵀ); h += act · W_downᵀ
//! gemv(stream, &h, &w_gate_up, GemvShape { m, n: 2 * f, k: d },
//!     GemvPrologue::RmsNorm { weight: mlp_norm.view(), eps },
//!     GemvEpilogue::SwiGlu { y: act.view_mut(), row_stride: f })?;
//! gemv(stream, &act, &w_down, GemvShape { m, n: d, k: f }, GemvPrologue::None,
//!     GemvEpilogue::ResidualAdd { y: h.view_mut(), row_stride: d })?;
//! ```

use crate::device::kernel::{stag_kernel, Kernel, LaunchConfig, Retained};
use crate::device::{AsDeviceView, DeviceView, DeviceViewMut, Stream};
use crate::dtype::{DType, DeviceElem};
use crate::error::{DeviceError, Result};
use crate::ffi::{
    GemvParams, StagKvPaging, STAG_GEMV_CROSS_KV as CROSS_KV, STAG_GEMV_MAX_GROUPS,
    STAG_GEMV_RESIDUAL_ADD as RESIDUAL_ADD, STAG_GEMV_ROPE_KV as ROPE_KV, STAG_GEMV_STORE as STORE,
    STAG_GEMV_SWIGLU as SWIGLU,
};
use crate::ops::kv_pages::paging_params;
use crate::ops::memory_kv_append::{check_caches, CrossCaches};
use crate::ops::rmsnorm::NormElem;
use crate::ops::rope_append::{check_cache, check_rows, KvCacheMut, RopeTable};
use crate::ops::HeadShape;

stag_kernel!(static GEMV_F32: GemvParams = gemv_f32 in GEMV);
stag_kernel!(static GEMV_BF16: GemvParams = gemv_bf16 in GEMV);

/// Most activation rows one call (one group of a grouped call) takes.
pub const MAX_ROWS: usize = 16;
/// Most weight groups of one [`gemv_grouped`] launch; must equal `STAG_GEMV_MAX_GROUPS`.
pub const MAX_GROUPS: usize = STAG_GEMV_MAX_GROUPS as usize;
/// Threads per block and warps; must equal `THREADS` in `cuda/gemv.cu`.
const THREADS: usize = 256;
const WARPS: usize = THREADS / 32;
/// 16-byte W vectors per lane per row per K chunk; must equal `UNROLL` in `cuda/gemv.cu`.
const UNROLL: usize = 4;
const MAX_EXTENT: usize = i32::MAX as usize;

fn kernel_for<T: NormElem>() -> &'static Kernel<GemvParams> {
    match T::DTYPE {
        DType::BF16 => &GEMV_BF16,
        // `NormElem` is implemented for f32 and bf16 only.
        _ => &GEMV_F32,
    }
}

/// `x` is `[m, k]` (dense), `W` is `[n, k]` (dense): `n` is the number of W rows, which for
/// `SwiGlu` is 2F and for the KV epilogues the stacked projection's width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemvShape {
    /// Rows of `x` (tokens; at most 16 a group).
    pub m: usize,
    /// Rows of `W`: the outputs per row before the epilogue.
    pub n: usize,
    /// Columns of `x` and `W`.
    pub k: usize,
}

/// How the activations `h` are made from the input rows `x`.
pub enum GemvPrologue<'a> {
    /// `h = x`.
    None,
    /// `h = round_T(x · inv_rms · weight)`, `inv_rms = 1/sqrt(mean(x²) + eps)` per row, as the
    /// `rmsnorm` kernel computes it; `weight` is the f32 gain `[k]`.
    RmsNorm {
        /// The gain, `k` elements.
        weight: DeviceView<'a, f32>,
        /// ε added to the mean square of each row.
        eps: f32,
    },
}

/// What is done with `g = round_T(acc)`. Row `r` of an output starts `r · row_stride`
/// elements into it.
pub enum GemvEpilogue<'a, T: DeviceElem> {
    /// `y[m][n] = g`; `y` covers `[m, n]` at `row_stride ≥ n`.
    Store {
        /// The output.
        y: DeviceViewMut<'a, T>,
        /// Elements between its rows.
        row_stride: usize,
    },
    /// `y[m][n] = round_T(y[m][n] + g)`, in place (the residual stream).
    ResidualAdd {
        /// The residual stream, `[m, n]` at `row_stride ≥ n`, added to in place.
        y: DeviceViewMut<'a, T>,
        /// Elements between its rows.
        row_stride: usize,
    },
    /// W is `[gate; up]` (`n = 2F`, gate rows first); `y[m][j] = silu(g_j) · g_{F+j}` rounded,
    /// exactly as `swiglu`; `y` covers `[m, F]` at `row_stride ≥ F`.
    SwiGlu {
        /// The activation, `[m, F]`.
        y: DeviceViewMut<'a, T>,
        /// Elements between its rows.
        row_stride: usize,
    },
    /// W is `[q; k; v]` (`n = (heads + 2 · kv_heads) · head_dim`). `qkv` (`[m, n]` at
    /// `row_stride ≥ n`) receives the row with q and k roped at `positions[r]`, and the roped k
    /// and v go to `cache` at `(seq_slots[r], positions[r])` (ring layouts included): the same
    /// bytes as `linear` followed by `rope_append` with `QkvRows::Fused`. A row whose indices
    /// name no slot or table row keeps `g` unroped and writes no cache.
    RopeKvAppend {
        /// The projected rows, q and k roped.
        qkv: DeviceViewMut<'a, T>,
        /// Elements between the rows of `qkv`.
        row_stride: usize,
        /// The heads of q, k and v (`head_dim` that of `table`).
        heads: HeadShape,
        /// Cache sequence of each row, `m` entries.
        seq_slots: DeviceView<'a, i32>,
        /// Position of each row, `m` entries: its RoPE angle and cache slot.
        positions: DeviceView<'a, i32>,
        /// cos and sin of every position.
        table: &'a RopeTable,
        /// The self-attention K and V caches.
        cache: KvCacheMut<'a, T>,
    },
    /// W is `[Wk_0; Wv_0; Wk_1; Wv_1; …]` (`n = layers · 2 · kv_heads · head_dim`); `g` goes
    /// straight into every layer's cross caches at `(seq_slots[r], positions[r])`, exactly as
    /// `linear` followed by `memory_kv_append`.
    CrossKvAppend {
        /// Cross-cache sequence of each row, `m` entries.
        seq_slots: DeviceView<'a, i32>,
        /// Memory position of each row, `m` entries.
        positions: DeviceView<'a, i32>,
        /// The cross K and V caches of every layer.
        cache: KvCacheMut<'a, T>,
        /// Their geometry: layers, stride between layers, ring size.
        cross: CrossCaches,
    },
}

/// `h = prologue(x)`, `epilogue(round_T(h · Wᵀ))` for `shape.m ≤ 16` rows, queued on `stream`.
pub fn gemv<T: NormElem>(
    stream: &Stream,
    x: &impl AsDeviceView<T>,
    w: &impl AsDeviceView<T>,
    shape: GemvShape,
    prologue: GemvPrologue<'_>,
    epilogue: GemvEpilogue<'_, T>,
) -> Result<()> {
    let w = w.view();
    let weight;
    let prologue = match prologue {
        GemvPrologue::None => GroupedPrologue::None,
        GemvPrologue::RmsNorm { weight: gain, eps } => {
            weight = gain;
            GroupedPrologue::RmsNorm {
                weights: std::slice::from_ref(&weight),
                eps,
            }
        }
    };
    gemv_grouped(
        stream,
        x,
        std::slice::from_ref(&w),
        shape,
        prologue,
        epilogue,
    )
}

/// The prologue of a grouped call: one norm gain per group.
pub enum GroupedPrologue<'a, 'b> {
    /// `h = x`.
    None,
    /// Rows of group g are normed with `weights[g]` (`[k]` each), as [`GemvPrologue::RmsNorm`].
    RmsNorm {
        /// One gain per group, `k` elements each.
        weights: &'b [DeviceView<'a, f32>],
        /// ε added to the mean square of each row.
        eps: f32,
    },
}

/// [`gemv`] over `ws.len()` groups (1 ..= [`MAX_GROUPS`]) in one launch: `shape.m` rows split
/// into equal groups of `shape.m / groups ≤ 16` rows; rows of group g are multiplied with
/// `ws[g]` (`[n, k]` each) after the norm with gain g. The epilogue sees every row at its place
/// among all `shape.m` (outputs and index arrays cover all of them). One layer of every
/// StagFormer section (separate weights) is one such launch.
pub fn gemv_grouped<T: NormElem>(
    stream: &Stream,
    x: &impl AsDeviceView<T>,
    ws: &[DeviceView<'_, T>],
    shape: GemvShape,
    prologue: GroupedPrologue<'_, '_>,
    epilogue: GemvEpilogue<'_, T>,
) -> Result<()> {
    let x = x.view();
    let groups = ws.len();
    if groups == 0 || groups > MAX_GROUPS {
        return Err(DeviceError::invalid(
            "ws",
            format!("{groups} weight groups; one launch takes 1 to {MAX_GROUPS}"),
        ));
    }
    if shape.m % groups != 0 {
        return Err(DeviceError::invalid(
            "m",
            format!("{} rows do not split into {groups} equal groups", shape.m),
        ));
    }
    let group_rows = shape.m / groups;
    check_shape::<T>(GemvShape {
        m: group_rows,
        ..shape
    })?;
    check_rows("x", x.len(), shape.m, shape.k, shape.k)?;
    for w in ws {
        check_rows("w", w.len(), shape.n, shape.k, shape.k)?;
        if w.as_ptr() as usize % 16 != 0 {
            return Err(DeviceError::invalid(
                "w",
                "must start on a 16-byte boundary (the kernel reads it with 16-byte loads)",
            ));
        }
    }
    let mut params = GemvParams {
        x: x.as_ptr(),
        w: ws[0].as_ptr(),
        y: std::ptr::null_mut(),
        norm_weight: std::ptr::null(),
        k_cache: std::ptr::null_mut(),
        v_cache: std::ptr::null_mut(),
        rope_cos: std::ptr::null(),
        rope_sin: std::ptr::null(),
        seq_slots: std::ptr::null(),
        positions: std::ptr::null(),
        rows: group_rows as u32,
        n: shape.n as u32,
        k: shape.k as u32,
        x_row_stride: shape.k as u32,
        w_row_stride: shape.k as u32,
        y_row_stride: 0,
        eps: 0.0,
        epilogue: STORE,
        heads: 0,
        kv_heads: 0,
        head_dim: 0,
        layers: 0,
        cache_layer_stride: 0,
        cache_seq_stride: 0,
        cache_head_stride: 0,
        cache_slots: 0,
        cache_seqs: 0,
        table_positions: 0,
        ring: 0,
        window: 0,
        group_w: [std::ptr::null(); MAX_GROUPS - 1],
        group_norm_weight: [std::ptr::null(); MAX_GROUPS - 1],
        paging: StagKvPaging::default(),
    };
    let mut retained = vec![x.retain("x")];
    for (g, w) in ws.iter().enumerate() {
        if g > 0 {
            params.group_w[g - 1] = w.as_ptr();
        }
        retained.push(w.retain("w"));
    }
    if let GroupedPrologue::RmsNorm { weights, eps } = prologue {
        if !(eps > 0.0 && eps.is_finite()) {
            return Err(DeviceError::invalid(
                "eps",
                format!("{eps} must be finite and > 0"),
            ));
        }
        if weights.len() != groups {
            return Err(DeviceError::LengthMismatch {
                arg: "weights",
                expected: groups,
                found: weights.len(),
            });
        }
        for (g, weight) in weights.iter().enumerate() {
            if weight.len() != shape.k {
                return Err(DeviceError::LengthMismatch {
                    arg: "weight",
                    expected: shape.k,
                    found: weight.len(),
                });
            }
            match g {
                0 => params.norm_weight = weight.as_ptr().cast(),
                _ => params.group_norm_weight[g - 1] = weight.as_ptr().cast(),
            }
            retained.push(weight.retain("weight"));
        }
        params.eps = eps;
    }
    let (m, n) = (shape.m, shape.n);
    // Grid blocks: each holds 8 warps, each warp one pair of W rows.
    let blocks = match epilogue {
        GemvEpilogue::Store { y, row_stride } => {
            output(&mut params, &mut retained, y, row_stride, m, n)?;
            params.epilogue = STORE;
            n.div_ceil(2 * WARPS)
        }
        GemvEpilogue::ResidualAdd { y, row_stride } => {
            output(&mut params, &mut retained, y, row_stride, m, n)?;
            params.epilogue = RESIDUAL_ADD;
            n.div_ceil(2 * WARPS)
        }
        GemvEpilogue::SwiGlu { y, row_stride } => {
            if n % 2 != 0 {
                return Err(DeviceError::invalid(
                    "n",
                    format!("{n} W rows are not a stacked [gate; up] pair (2F rows)"),
                ));
            }
            output(&mut params, &mut retained, y, row_stride, m, n / 2)?;
            params.epilogue = SWIGLU;
            (n / 2).div_ceil(WARPS)
        }
        GemvEpilogue::RopeKvAppend {
            qkv,
            row_stride,
            heads,
            seq_slots,
            positions,
            table,
            cache,
        } => {
            if heads.heads == 0 || heads.kv_heads == 0 {
                return Err(DeviceError::invalid(
                    "heads",
                    "heads and kv_heads must be at least 1",
                ));
            }
            if heads.head_dim != table.head_dim() {
                return Err(DeviceError::ShapeMismatch {
                    arg: "table",
                    expected: format!("head_dim {}", heads.head_dim),
                    found: format!("head_dim {}", table.head_dim()),
                });
            }
            let width = heads
                .kv_heads
                .checked_mul(2)
                .and_then(|kv| kv.checked_add(heads.heads))
                .and_then(|h| h.checked_mul(heads.head_dim));
            if width != Some(n) {
                return Err(DeviceError::ShapeMismatch {
                    arg: "w",
                    expected: format!(
                        "(heads + 2 · kv_heads) · head_dim = ({} + 2 · {}) · {} rows",
                        heads.heads, heads.kv_heads, heads.head_dim
                    ),
                    found: format!("{n} rows"),
                });
            }
            let KvCacheMut {
                k: mut k_cache,
                v: mut v_cache,
                layout,
                block_table,
            } = cache;
            check_cache(&layout, heads, k_cache.len(), v_cache.len())?;
            let (paging, table_retained) = paging_params(
                layout.paged,
                block_table.as_ref(),
                layout.seqs,
                layout.slots,
            )?;
            params.paging = paging;
            retained.extend(table_retained);
            indices(&mut params, &mut retained, seq_slots, positions, m)?;
            output(&mut params, &mut retained, qkv, row_stride, m, n)?;
            params.epilogue = ROPE_KV;
            params.heads = heads.heads as u32;
            params.kv_heads = heads.kv_heads as u32;
            params.head_dim = heads.head_dim as u32;
            params.k_cache = k_cache.as_mut_ptr();
            params.v_cache = v_cache.as_mut_ptr();
            params.cache_seq_stride = layout.seq_stride as u32;
            params.cache_head_stride = layout.head_stride as u32;
            params.cache_slots = layout.slots as u32;
            params.cache_seqs = layout.seqs as u32;
            params.ring = u32::from(layout.ring);
            params.rope_cos = table.cos().as_ptr().cast();
            params.rope_sin = table.sin().as_ptr().cast();
            params.table_positions = table.positions() as u32;
            retained.extend([
                k_cache.retain("k_cache"),
                v_cache.retain("v_cache"),
                table.cos().retain("rope_cos"),
                table.sin().retain("rope_sin"),
            ]);
            (n / 2).div_ceil(WARPS)
        }
        GemvEpilogue::CrossKvAppend {
            seq_slots,
            positions,
            cache,
            cross,
        } => {
            let KvCacheMut {
                k: mut k_cache,
                v: mut v_cache,
                layout,
                block_table,
            } = cache;
            let width = check_caches(&layout, cross, k_cache.len(), v_cache.len())?;
            let (paging, table_retained) = paging_params(
                layout.paged,
                block_table.as_ref(),
                layout.seqs,
                layout.slots,
            )?;
            params.paging = paging;
            retained.extend(table_retained);
            if width != n {
                return Err(DeviceError::ShapeMismatch {
                    arg: "w",
                    expected: format!(
                        "layers · 2 · kv_heads · head_dim = {} · 2 · {} · {} rows",
                        cross.layers, layout.kv_heads, layout.head_dim
                    ),
                    found: format!("{n} rows"),
                });
            }
            indices(&mut params, &mut retained, seq_slots, positions, m)?;
            params.epilogue = CROSS_KV;
            params.kv_heads = layout.kv_heads as u32;
            params.head_dim = layout.head_dim as u32;
            params.layers = cross.layers as u32;
            params.k_cache = k_cache.as_mut_ptr();
            params.v_cache = v_cache.as_mut_ptr();
            params.cache_layer_stride = cross.layer_stride as u32;
            params.cache_seq_stride = layout.seq_stride as u32;
            params.cache_head_stride = layout.head_stride as u32;
            params.cache_slots = layout.slots as u32;
            params.cache_seqs = layout.seqs as u32;
            params.window = cross.window.unwrap_or(0) as u32;
            retained.extend([k_cache.retain("k_cache"), v_cache.retain("v_cache")]);
            n.div_ceil(2 * WARPS)
        }
    };
    if m == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig {
        grid: [blocks as u32, groups as u32, 1],
        block: [THREADS as u32, 1, 1],
        dynamic_smem_bytes: smem_bytes(group_rows) as u32,
    };
    // SAFETY: `x` holds `m × k` and every group's `w` `n × k` elements (checked), each `w` is
    // 16-byte aligned and `k` a whole number of 16-byte vectors, so every 16-byte W load of a
    // row lies inside it; each norm weight holds `k` floats; the grid has one y-block per
    // group, so the kernel reads only the `groups` pointers set, and group g's rows
    // g·m/groups.. (m/groups ≤ 16 of them) lie inside every row-indexed operand. Each output covers `m` rows of its width at its stride
    // (checked), the caches every element their layouts address (checked, no two elements at
    // one address), the table `table_positions × head_dim / 2` floats and the index arrays `m`
    // entries; the kernel writes a cache slot only for indices inside those bounds (paged: a
    // table of `seqs · stride` entries covering every slot, and only entries naming a page of
    // the pool are written through, both checked by `paging_params`). Outputs and caches are
    // distinct mutable borrows, so they alias neither each other nor the inputs.
    // Every allocation is retained until the kernel has run.
    unsafe { stream.launch(kernel_for::<T>(), cfg, params, &retained) }
}

/// Bytes of shared memory the kernel stages `h` in: `m` rows of one K chunk (32 lanes ×
/// `UNROLL` 16-byte vectors, whatever the element type): at most 32 KiB.
fn smem_bytes(m: usize) -> usize {
    m * 32 * UNROLL * 16
}

fn check_shape<T: DeviceElem>(shape: GemvShape) -> Result<()> {
    if shape.m > MAX_ROWS {
        return Err(DeviceError::invalid(
            "m",
            format!(
                "{} rows (per group) exceed the {MAX_ROWS} one gemv launch takes (use linear)",
                shape.m
            ),
        ));
    }
    for (arg, v) in [("n", shape.n), ("k", shape.k)] {
        if v == 0 {
            return Err(DeviceError::invalid(arg, "must be at least 1"));
        }
        if v > MAX_EXTENT {
            return Err(DeviceError::invalid(arg, format!("{v} exceeds 2^31 - 1")));
        }
    }
    let per_vector = 16 / std::mem::size_of::<T>();
    if shape.k % per_vector != 0 {
        return Err(DeviceError::invalid(
            "k",
            format!(
                "{} is not a multiple of {per_vector} ({} elements are one 16-byte load)",
                shape.k,
                T::DTYPE
            ),
        ));
    }
    shape
        .n
        .checked_mul(shape.k)
        .ok_or_else(|| DeviceError::overflow("w", "n × k"))?;
    Ok(())
}

/// Validates an output of `m` rows of `width` at `row_stride` and puts it in `params.y`.
fn output<'a, T: DeviceElem>(
    params: &mut GemvParams,
    retained: &mut Vec<Retained>,
    mut y: DeviceViewMut<'a, T>,
    row_stride: usize,
    m: usize,
    width: usize,
) -> Result<()> {
    if row_stride < width {
        return Err(DeviceError::invalid(
            "row_stride",
            format!("{row_stride} is less than the output width {width}"),
        ));
    }
    if row_stride > u32::MAX as usize {
        return Err(DeviceError::invalid(
            "row_stride",
            format!("{row_stride} exceeds u32"),
        ));
    }
    check_rows("y", y.len(), m, row_stride, width)?;
    params.y = y.as_mut_ptr();
    params.y_row_stride = row_stride as u32;
    retained.push(y.retain("y"));
    Ok(())
}

/// Validates the per-row device indices (`m` each) and puts them in `params`.
fn indices(
    params: &mut GemvParams,
    retained: &mut Vec<Retained>,
    seq_slots: DeviceView<'_, i32>,
    positions: DeviceView<'_, i32>,
    m: usize,
) -> Result<()> {
    for (arg, len) in [
        ("seq_slots", seq_slots.len()),
        ("positions", positions.len()),
    ] {
        if len != m {
            return Err(DeviceError::LengthMismatch {
                arg,
                expected: m,
                found: len,
            });
        }
    }
    params.seq_slots = seq_slots.as_ptr().cast();
    params.positions = positions.as_ptr().cast();
    retained.extend([seq_slots.retain("seq_slots"), positions.retain("positions")]);
    Ok(())
}
