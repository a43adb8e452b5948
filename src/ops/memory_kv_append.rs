//! Scatter of projected memory K/V into the cross-attention caches
//! (`cuda/memory_kv_append.cu`).
//!
//! After a step, the memory of each sequence's new position is projected by every
//! cross-attention layer's Wk and Wv in one GEMM against the concatenated
//! `[Wk_0; Wv_0; Wk_1; Wv_1; ...]`, so row `r` of its output is
//! `[k_0 | v_0 | k_1 | v_1 | ...]`, each `kv_heads · head_dim` wide. This op copies layer `l`'s
//! k and v into that layer's caches at sequence `seq_slots[r]` and slot `positions[r] mod W`
//! (a ring of W slots), or slot `positions[r]` when the window is unbounded. No RoPE: the cross
//! keys carry no position.
//!
//! Whatever the device indices hold, a row naming no cache slot writes nothing;
//! [`memory_kv_append_host_rows`] checks host indices and reports such rows as errors instead.

use crate::device::kernel::{stag_kernel, Kernel, LaunchConfig};
use crate::device::{AsDeviceView, AsDeviceViewMut, Stream};
use crate::dtype::{DType, DeviceElem};
use crate::error::{DeviceError, Result};
use crate::ffi::MemoryKvAppendParams;
use crate::ops::kv_pages::paging_params;
use crate::ops::rmsnorm::NormElem;
use crate::ops::rope_append::{
    check_host_rows, check_layout, with_host_rows, KvCacheLayout, KvCacheMut,
};

stag_kernel!(static MEMORY_KV_APPEND_F32: MemoryKvAppendParams =
    memory_kv_append_f32 in MEMORY_KV_APPEND);
stag_kernel!(static MEMORY_KV_APPEND_BF16: MemoryKvAppendParams =
    memory_kv_append_bf16 in MEMORY_KV_APPEND);

/// Threads per block; must equal `THREADS` in `cuda/memory_kv_append.cu`.
const THREADS: usize = 256;
const MAX_EXTENT: usize = i32::MAX as usize;

fn kernel_for<T: NormElem>() -> &'static Kernel<MemoryKvAppendParams> {
    match T::DTYPE {
        DType::BF16 => &MEMORY_KV_APPEND_BF16,
        // `NormElem` is implemented for f32 and bf16 only.
        _ => &MEMORY_KV_APPEND_F32,
    }
}

/// How the cross-attention layers' caches are stacked and addressed: layer `l`'s cache (laid
/// out as the [`KvCacheMut`]'s layout) starts `l · layer_stride` elements into the K and V
/// buffers; `window` is W (slots are a ring, slot = position mod W), or `None` when every
/// position has its own slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrossCaches {
    /// Cross-attention layers whose caches are filled (≥ 1).
    pub layers: usize,
    /// Elements from one layer's cache to the next's.
    pub layer_stride: usize,
    /// W: the ring size (slot = position mod W), or `None` for one slot per position.
    pub window: Option<usize>,
}

/// Copies the projected memory rows `kv` (`[rows, layers · 2 · kv_heads · head_dim]`, dense)
/// into every layer's caches, at the device indices `seq_slots` and `positions` (one each per
/// row; rows = their length).
pub fn memory_kv_append<T: NormElem>(
    stream: &Stream,
    kv: &impl AsDeviceView<T>,
    seq_slots: &impl AsDeviceView<i32>,
    positions: &impl AsDeviceView<i32>,
    cache: KvCacheMut<'_, T>,
    cross: CrossCaches,
) -> Result<()> {
    let (kv, seq_slots, positions) = (kv.view(), seq_slots.view(), positions.view());
    if positions.len() != seq_slots.len() {
        return Err(DeviceError::LengthMismatch {
            arg: "positions",
            expected: seq_slots.len(),
            found: positions.len(),
        });
    }
    let rows = seq_slots.len();
    if rows > MAX_EXTENT {
        return Err(DeviceError::invalid(
            "seq_slots",
            format!("{rows} rows exceed 2^31 - 1"),
        ));
    }
    let KvCacheMut {
        k: mut k_cache,
        v: mut v_cache,
        layout,
        block_table,
    } = cache;
    let row_width = check_caches(&layout, cross, k_cache.len(), v_cache.len())?;
    let (paging, table_retained) = paging_params(
        layout.paged,
        block_table.as_ref(),
        layout.seqs,
        layout.slots,
    )?;
    check_kv(kv.len(), rows, row_width)?;
    if rows == 0 {
        return Ok(());
    }
    let params = MemoryKvAppendParams {
        kv: kv.as_ptr(),
        k_cache: k_cache.as_mut_ptr(),
        v_cache: v_cache.as_mut_ptr(),
        seq_slots: seq_slots.as_ptr().cast(),
        positions: positions.as_ptr().cast(),
        rows: rows as u32,
        layers: cross.layers as u32,
        kv_heads: layout.kv_heads as u32,
        head_dim: layout.head_dim as u32,
        kv_row_stride: row_width as u32,
        cache_layer_stride: cross.layer_stride as u32,
        cache_seq_stride: layout.seq_stride as u32,
        cache_head_stride: layout.head_stride as u32,
        cache_slots: layout.slots as u32,
        window: cross.window.unwrap_or(0) as u32,
        cache_seqs: layout.seqs as u32,
        reserved: 0,
        paging,
    };
    let mut retained = vec![
        kv.retain("kv"),
        k_cache.retain("k_cache"),
        v_cache.retain("v_cache"),
        seq_slots.retain("seq_slots"),
        positions.retain("positions"),
    ];
    retained.extend(table_retained);
    // SAFETY: `kv` holds `rows` dense rows of `layers · 2 · kv_dim` elements and the index
    // arrays `rows` entries (checked above); both caches hold every element of `layers` stacked
    // layouts (checked, no two elements at one address). The kernel writes a slot only for a
    // sequence below `cache_seqs` and a slot below `cache_slots` (paged: only through a table
    // entry naming a page of the pool, with the table covering every sequence's slots, both
    // checked by `paging_params`). The caches are distinct
    // mutable borrows, so nothing else aliases them, and every allocation is retained until
    // the kernel has run.
    unsafe {
        stream.launch(
            kernel_for::<T>(),
            launch_config::<T>(rows as u32, row_width),
            params,
            &retained,
        )
    }
}

/// [`memory_kv_append`] with the row indices on the host: each is checked (a sequence slot
/// below `cache.layout.seqs`, a position whose slot lies in the cache, no two rows at one
/// (sequence, slot); the error names the first bad row), copied into `staging` (at least
/// `2 · rows` elements: slots, then positions) in stream order, and the kernel is queued.
/// Nothing is written when a check fails.
pub fn memory_kv_append_host_rows<T: NormElem>(
    stream: &Stream,
    kv: &impl AsDeviceView<T>,
    seq_slots: &[u32],
    positions: &[u32],
    staging: &mut impl AsDeviceViewMut<i32>,
    cache: KvCacheMut<'_, T>,
    cross: CrossCaches,
) -> Result<()> {
    let layout = cache.layout;
    let row_width = check_caches(&layout, cross, cache.k.len(), cache.v.len())?;
    check_kv(kv.view().len(), seq_slots.len(), row_width)?;
    check_host_rows(seq_slots, positions, layout.seqs, |pos| {
        let slot = cross.window.map_or(pos, |w| pos % w);
        if slot < layout.slots {
            Ok(slot)
        } else {
            Err(format!(
                "has no slot in the cache ({} slots, unbounded window)",
                layout.slots
            ))
        }
    })?;
    with_host_rows(
        stream,
        seq_slots,
        positions,
        staging,
        |slots_dev, positions_dev| {
            memory_kv_append(stream, kv, slots_dev, positions_dev, cache, cross)
        },
    )
}

/// `kv` must hold `rows` dense rows of `row_width` elements.
fn check_kv(len: usize, rows: usize, row_width: usize) -> Result<()> {
    let expected = rows
        .checked_mul(row_width)
        .ok_or_else(|| DeviceError::overflow("kv", "rows × row width"))?;
    if len != expected {
        return Err(DeviceError::LengthMismatch {
            arg: "kv",
            expected,
            found: len,
        });
    }
    Ok(())
}

/// Validates the stacked caches and the window; returns the width of one `kv` row.
pub(crate) fn check_caches(
    layout: &KvCacheLayout,
    cross: CrossCaches,
    k_len: usize,
    v_len: usize,
) -> Result<usize> {
    if cross.layers > MAX_EXTENT {
        return Err(DeviceError::invalid(
            "layers",
            format!("{} exceeds 2^31 - 1", cross.layers),
        ));
    }
    let needed = check_layout(layout, Some((cross.layers, cross.layer_stride)))?;
    for (arg, len) in [("k_cache", k_len), ("v_cache", v_len)] {
        if len < needed {
            return Err(DeviceError::LengthMismatch {
                arg,
                expected: needed,
                found: len,
            });
        }
    }
    if let Some(w) = cross.window {
        if w == 0 || w > layout.slots {
            return Err(DeviceError::invalid(
                "window",
                format!(
                    "{w} must be at least 1 and at most the cache's {} slots",
                    layout.slots
                ),
            ));
        }
    }
    layout
        .kv_heads
        .checked_mul(layout.head_dim)
        .and_then(|kv_dim| kv_dim.checked_mul(2 * cross.layers))
        .filter(|&w| w <= MAX_EXTENT)
        .ok_or_else(|| {
            DeviceError::overflow("kv", "layers · 2 · kv_heads · head_dim exceeds 2^31 - 1")
        })
}

/// One block row per token (grid.x), enough blocks along grid.y for one 16-byte vector per
/// thread.
fn launch_config<T: DeviceElem>(rows: u32, row_width: usize) -> LaunchConfig {
    let per_vector = 16 / std::mem::size_of::<T>();
    let blocks_y = row_width.div_ceil(per_vector * THREADS).clamp(1, 65_535);
    LaunchConfig {
        grid: [rows, blocks_y as u32, 1],
        block: [THREADS as u32, 1, 1],
        dynamic_smem_bytes: 0,
    }
}
