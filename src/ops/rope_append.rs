//! RoPE and the KV-cache append, fused (`cuda/rope_append.cu`).
//!
//! For every token row `r` (a decode step's one token per sequence, or a prompt's rows of one
//! sequence alike), at position `p = positions[r]` of sequence slot `s = seq_slots[r]`:
//!
//! * every query head and every new key head is rotated in place with the Hugging Face Llama
//!   `rotate_half` convention (the pair `(x[m], x[m + hd/2])` turns by `p · inv_freq[m]`);
//! * the rotated key and the value are written into the caches at `[s][kv_head][p][..]`.
//!
//! The keys stay rotated in the projection rows too, so that prefill attention can read them
//! there. cos and sin come from a [`RopeTable`] built on the host in f64, exactly as
//! `stagformer_ref::ops::rope_inplace` computes them, and the kernel rounds each product and
//! sum as the reference does: f32 results are bit-identical to the reference.
//!
//! The caches may be paged ([`KvCacheLayout::into_paged`] and a [`BlockTable`]): a row whose
//! slot has no page is skipped like a row without a slot.
//!
//! Whatever the device indices hold, a row whose slot or position lies outside the caches or
//! the table is skipped (nothing of it is read or written); [`rope_append_host_rows`] checks
//! host indices and reports such rows as errors instead.

use std::collections::HashSet;

use crate::device::kernel::{stag_kernel, Kernel, LaunchConfig};
use crate::device::{
    AsDeviceView, AsDeviceViewMut, DeviceBuffer, DeviceView, DeviceViewMut, Stream,
};
use crate::dtype::{DType, DeviceElem};
use crate::error::{DeviceError, Result};
use crate::ffi::RopeAppendParams;
use crate::ops::kv_pages::{paging_params, BlockTable, PagePool};
use crate::ops::rmsnorm::NormElem;
use crate::ops::HeadShape;

stag_kernel!(static ROPE_APPEND_F32: RopeAppendParams = rope_append_f32 in ROPE_APPEND);
stag_kernel!(static ROPE_APPEND_BF16: RopeAppendParams = rope_append_bf16 in ROPE_APPEND);

/// Threads per block; must equal `THREADS` in `cuda/rope_append.cu`.
const THREADS: usize = 128;
/// Sizes handed to kernels stay below 2³¹, so their 32-bit index loops cannot wrap, and
/// indices fit the device's `i32`.
pub(crate) const MAX_EXTENT: usize = i32::MAX as usize;

fn kernel_for<T: NormElem>() -> &'static Kernel<RopeAppendParams> {
    match T::DTYPE {
        DType::BF16 => &ROPE_APPEND_BF16,
        // `NormElem` is implemented for f32 and bf16 only.
        _ => &ROPE_APPEND_F32,
    }
}

/// The cos and sin of every RoPE angle `position · inv_freq[m]`, `[positions, head_dim / 2]` f32
/// each, on the device.
///
/// The frequencies (`inv_freq[m] = θ^(−2m / head_dim)`, or a scaled set) and the angles are in
/// f64 and only their sine and cosine rounded to f32, as `stagformer_ref::ops::rope_inplace`
/// does.
pub struct RopeTable {
    cos: DeviceBuffer<f32>,
    sin: DeviceBuffer<f32>,
    head_dim: usize,
    positions: usize,
}

impl RopeTable {
    /// The unscaled table (`inv_freq[m] = θ^(−2m / head_dim)`) for positions `0..positions`,
    /// built on the host and uploaded on `stream`.
    pub fn new(stream: &Stream, head_dim: usize, theta: f64, positions: usize) -> Result<Self> {
        if !(theta.is_finite() && theta > 0.0) {
            return Err(DeviceError::invalid(
                "theta",
                format!("{theta} must be finite and > 0"),
            ));
        }
        let half = head_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|m| theta.powf(-2.0 * m as f64 / head_dim as f64))
            .collect();
        Self::from_inv_freq(stream, head_dim, &inv_freq, positions)
    }

    /// The table of the frequencies `inv_freq` (`head_dim / 2` of them, RoPE scaling already
    /// applied: `stagformer_ref::Config::rope_inv_freq`), for positions `0..positions`.
    pub fn from_inv_freq(
        stream: &Stream,
        head_dim: usize,
        inv_freq: &[f64],
        positions: usize,
    ) -> Result<Self> {
        if head_dim < 2 || head_dim % 2 != 0 {
            return Err(DeviceError::invalid(
                "head_dim",
                format!("{head_dim} must be even and at least 2"),
            ));
        }
        if inv_freq.len() != head_dim / 2 {
            return Err(DeviceError::LengthMismatch {
                arg: "inv_freq",
                expected: head_dim / 2,
                found: inv_freq.len(),
            });
        }
        if let Some(bad) = inv_freq.iter().find(|f| !f.is_finite()) {
            return Err(DeviceError::invalid(
                "inv_freq",
                format!("{bad} is not finite"),
            ));
        }
        if positions == 0 {
            return Err(DeviceError::invalid("positions", "must be at least 1"));
        }
        let half = head_dim / 2;
        positions
            .checked_mul(half)
            .filter(|&n| n <= MAX_EXTENT && positions <= MAX_EXTENT)
            .ok_or_else(|| DeviceError::overflow("positions", "positions × head_dim / 2"))?;
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for pos in 0..positions {
            for &f in inv_freq {
                let angle = pos as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok(RopeTable {
            cos: DeviceBuffer::from_host(stream, &cos)?,
            sin: DeviceBuffer::from_host(stream, &sin)?,
            head_dim,
            positions,
        })
    }

    /// The head width the table was built for (twice the frequencies it holds).
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Positions the table covers (`0..positions()`).
    pub fn positions(&self) -> usize {
        self.positions
    }

    /// cos of the angles, `[positions, head_dim / 2]`.
    pub fn cos(&self) -> DeviceView<'_, f32> {
        self.cos.view()
    }

    /// sin of the angles, `[positions, head_dim / 2]`.
    pub fn sin(&self) -> DeviceView<'_, f32> {
        self.sin.view()
    }
}

/// Where a KV cache's elements lie: element `[seq][kv_head][slot][d]` at
/// `seq · seq_stride + kv_head · head_stride + slot · head_dim + d`, for `seqs` sequences,
/// `kv_heads` heads and `slots` slots per head. The strides may pad, but distinct elements must
/// not share an address.
///
/// `ring`: position `k` lives in slot `k mod slots` (a sliding-window self cache, whose
/// attention reads only the last W ≤ slots positions), instead of slot `k`. [`rope_append`]
/// honours it; the cross caches of `memory_kv_append` carry their ring modulus in
/// `CrossCaches::window` instead.
///
/// `paged` (see [`kv_pages`](crate::ops::kv_pages)): the buffers are a pool of pages, each
/// `[kv_heads][page_size][head_dim]`, `seq_stride` elements apart (the page stride), with
/// `head_stride` between the heads of a page; `seqs` and `slots` stay the sequences and slots
/// per sequence a block table maps onto the pages. Build it with [`KvCacheLayout::into_paged`]
/// and pass the table in [`KvCacheMut::block_table`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheLayout {
    /// Sequences the cache holds.
    pub seqs: usize,
    /// Key/value heads per sequence.
    pub kv_heads: usize,
    /// Slots per head: positions, or the ring's size.
    pub slots: usize,
    /// Elements per slot.
    pub head_dim: usize,
    /// Elements from the start of one sequence to the start of the next.
    pub seq_stride: usize,
    /// Elements from the start of one head's slots to the start of the next head's.
    pub head_stride: usize,
    /// Whether position `k` is in slot `k mod slots` (else in slot `k`).
    pub ring: bool,
    /// The page pool when the cache is paged (`None`: dense, sequence `s` at `s · seq_stride`).
    pub paged: Option<PagePool>,
}

impl KvCacheLayout {
    /// The unpadded layout `[seqs][kv_heads][slots][head_dim]`. Strides saturate on overflow,
    /// which the ops then reject.
    pub fn dense(seqs: usize, kv_heads: usize, slots: usize, head_dim: usize) -> Self {
        let head_stride = slots.saturating_mul(head_dim);
        KvCacheLayout {
            seqs,
            kv_heads,
            slots,
            head_dim,
            seq_stride: kv_heads.saturating_mul(head_stride),
            head_stride,
            ring: false,
            paged: None,
        }
    }

    /// The same sequences and slots held in a pool of `pages` pages of `page_size` slots
    /// (unpadded pages: head stride `page_size · head_dim`, page stride `kv_heads` times that),
    /// addressed through a block table. Rings stay rings: paging maps slots, not positions.
    pub fn into_paged(self, pages: usize, page_size: usize) -> Self {
        let head_stride = page_size.saturating_mul(self.head_dim);
        KvCacheLayout {
            seq_stride: self.kv_heads.saturating_mul(head_stride),
            head_stride,
            paged: Some(PagePool { pages, page_size }),
            ..self
        }
    }

    /// The same layout as a ring: position `k` in slot `k mod slots`.
    pub fn into_ring(self) -> Self {
        KvCacheLayout { ring: true, ..self }
    }

    /// The slot position `pos` is written to.
    pub fn slot_of(&self, pos: usize) -> usize {
        if self.ring && self.slots > 0 {
            pos % self.slots
        } else {
            pos
        }
    }

    /// Elements a cache buffer with this layout must hold (checked for overflow and overlap).
    pub fn required_len(&self) -> Result<usize> {
        check_layout(self, None)
    }
}

/// The K and V caches one call writes, with their (shared) layout.
pub struct KvCacheMut<'a, T: DeviceElem> {
    /// The key cache, at least `layout.required_len()` elements.
    pub k: DeviceViewMut<'a, T>,
    /// The value cache, laid out as `k`.
    pub v: DeviceViewMut<'a, T>,
    /// Where each element of both lies.
    pub layout: KvCacheLayout,
    /// The block table of a paged `layout` (`None` for a dense one).
    pub block_table: Option<BlockTable<'a>>,
}

/// The projected q, k and v of the token rows.
pub enum QkvRows<'a, T: DeviceElem> {
    /// One fused projection output: row `r` is `[q (heads·hd) | k (kv_heads·hd) | v
    /// (kv_heads·hd)]`, starting `r · row_stride` elements into `qkv`.
    Fused {
        /// The projection output; q and k are roped in place.
        qkv: DeviceViewMut<'a, T>,
        /// Elements between its rows (at least the row's width).
        row_stride: usize,
    },
    /// Separate dense tensors `[rows, heads·hd]`, `[rows, kv_heads·hd]` and
    /// `[rows, kv_heads·hd]`.
    Separate {
        /// The queries, roped in place.
        q: DeviceViewMut<'a, T>,
        /// The new keys, roped in place.
        k: DeviceViewMut<'a, T>,
        /// The new values, copied as they are.
        v: DeviceView<'a, T>,
    },
}

/// RoPE on q and k in place and the append of k and v into `cache`, for the token rows named by
/// the device indices `seq_slots` and `positions` (one each per row; rows = their length).
pub fn rope_append<T: NormElem>(
    stream: &Stream,
    qkv: QkvRows<'_, T>,
    shape: HeadShape,
    seq_slots: &impl AsDeviceView<i32>,
    positions: &impl AsDeviceView<i32>,
    table: &RopeTable,
    cache: KvCacheMut<'_, T>,
) -> Result<()> {
    let (seq_slots, positions) = (seq_slots.view(), positions.view());
    if positions.len() != seq_slots.len() {
        return Err(DeviceError::LengthMismatch {
            arg: "positions",
            expected: seq_slots.len(),
            found: positions.len(),
        });
    }
    let rows = extent("seq_slots", seq_slots.len())?;
    check_heads(shape, table)?;
    let KvCacheMut {
        k: mut k_cache,
        v: mut v_cache,
        layout,
        block_table,
    } = cache;
    check_cache(&layout, shape, k_cache.len(), v_cache.len())?;
    let (paging, table_retained) = paging_params(
        layout.paged,
        block_table.as_ref(),
        layout.seqs,
        layout.slots,
    )?;
    check_qkv(&qkv, shape, rows as usize)?;
    if rows == 0 {
        return Ok(());
    }
    let (q_dim, kv_dim) = (shape.q_dim(), shape.kv_dim());

    // Pointers and row strides of q, k, v; `retained_qkv` keeps their allocations alive.
    let (q_ptr, k_ptr, v_ptr, strides, retained_qkv) = match qkv {
        QkvRows::Fused {
            qkv: mut fused,
            row_stride,
        } => {
            let stride = row_stride as u32;
            let q_ptr = fused.as_mut_ptr();
            let k_ptr = fused.slice_mut(q_dim..)?.as_mut_ptr();
            let v_ptr = fused.slice(q_dim + kv_dim..)?.as_ptr();
            let retained = vec![fused.retain("qkv")];
            (q_ptr, k_ptr, v_ptr, [stride; 3], retained)
        }
        QkvRows::Separate { mut q, mut k, v } => {
            let retained = vec![q.retain("q"), k.retain("k"), v.retain("v")];
            let (qs, kvs) = (q_dim as u32, kv_dim as u32);
            (
                q.as_mut_ptr(),
                k.as_mut_ptr(),
                v.as_ptr(),
                [qs, kvs, kvs],
                retained,
            )
        }
    };

    let params = RopeAppendParams {
        q: q_ptr,
        k: k_ptr,
        v: v_ptr,
        k_cache: k_cache.as_mut_ptr(),
        v_cache: v_cache.as_mut_ptr(),
        rope_cos: table.cos.view().as_ptr().cast(),
        rope_sin: table.sin.view().as_ptr().cast(),
        seq_slots: seq_slots.as_ptr().cast(),
        positions: positions.as_ptr().cast(),
        rows,
        heads: shape.heads as u32,
        kv_heads: shape.kv_heads as u32,
        head_dim: shape.head_dim as u32,
        q_row_stride: strides[0],
        k_row_stride: strides[1],
        v_row_stride: strides[2],
        cache_seq_stride: layout.seq_stride as u32,
        cache_head_stride: layout.head_stride as u32,
        cache_slots: layout.slots as u32,
        table_positions: table.positions as u32,
        cache_seqs: layout.seqs as u32,
        ring: layout.ring as u32,
        reserved: 0,
        paging,
    };
    let mut retained = retained_qkv;
    retained.extend(table_retained);
    retained.extend([
        k_cache.retain("k_cache"),
        v_cache.retain("v_cache"),
        table.cos.view().retain("rope_cos"),
        table.sin.view().retain("rope_sin"),
        seq_slots.retain("seq_slots"),
        positions.retain("positions"),
    ]);
    // SAFETY: q, k and v cover `rows` rows of their widths at their strides (checked above; in
    // the fused form the three column ranges of a row are disjoint), the caches hold every
    // element their layout addresses (checked, with no two elements at one address), the table
    // holds `table_positions × head_dim / 2` floats, and the index arrays hold `rows` entries.
    // The kernel touches a cache slot or table row only for indices inside those bounds and
    // writes q, k (mutable borrows) and the caches (mutable borrows, distinct from each other
    // and from the inputs). A paged cache's table holds `seqs · stride` entries covering every
    // slot (checked by `paging_params`), and the kernel writes no row whose entry is not a
    // page of the pool, which the layout check sized. Every allocation is retained until the
    // kernel has run.
    unsafe {
        stream.launch(
            kernel_for::<T>(),
            launch_config::<T>(rows, shape),
            params,
            &retained,
        )
    }
}

/// [`rope_append`] with the row indices on the host: each is checked (a sequence slot below
/// `cache.layout.seqs`, a position inside both the cache and the table, no two rows at one
/// cache slot; the error names the first bad row), copied into `staging` (at least
/// `2 · rows` elements: slots, then positions) in stream order, and the kernel is queued.
/// Nothing is written when a check fails.
#[allow(clippy::too_many_arguments)]
pub fn rope_append_host_rows<T: NormElem>(
    stream: &Stream,
    qkv: QkvRows<'_, T>,
    shape: HeadShape,
    seq_slots: &[u32],
    positions: &[u32],
    staging: &mut impl AsDeviceViewMut<i32>,
    table: &RopeTable,
    cache: KvCacheMut<'_, T>,
) -> Result<()> {
    check_heads(shape, table)?;
    check_cache(&cache.layout, shape, cache.k.len(), cache.v.len())?;
    check_qkv(&qkv, shape, seq_slots.len())?;
    let layout = cache.layout;
    let limit = if layout.ring {
        table.positions
    } else {
        layout.slots.min(table.positions)
    };
    check_host_rows(seq_slots, positions, layout.seqs, |pos| {
        if pos < limit {
            Ok(layout.slot_of(pos))
        } else {
            Err(format!(
                "lies outside the cache ({} slots) or the RoPE table ({} positions)",
                layout.slots, table.positions
            ))
        }
    })?;
    with_host_rows(
        stream,
        seq_slots,
        positions,
        staging,
        |slots_dev, positions_dev| {
            rope_append(stream, qkv, shape, slots_dev, positions_dev, table, cache)
        },
    )
}

fn extent(arg: &'static str, value: usize) -> Result<u32> {
    if value > MAX_EXTENT {
        return Err(DeviceError::invalid(
            arg,
            format!("{value} exceeds 2^31 - 1"),
        ));
    }
    Ok(value as u32)
}

fn check_heads(shape: HeadShape, table: &RopeTable) -> Result<()> {
    if shape.heads == 0 {
        return Err(DeviceError::invalid("heads", "must be at least 1"));
    }
    if shape.kv_heads == 0 {
        return Err(DeviceError::invalid("kv_heads", "must be at least 1"));
    }
    if shape.head_dim != table.head_dim {
        return Err(DeviceError::ShapeMismatch {
            arg: "table",
            expected: format!("head_dim {}", shape.head_dim),
            found: format!("head_dim {}", table.head_dim),
        });
    }
    let width = shape
        .kv_heads
        .checked_mul(2)
        .and_then(|kv| kv.checked_add(shape.heads))
        .and_then(|h| h.checked_mul(shape.head_dim))
        .filter(|&w| w <= MAX_EXTENT);
    if width.is_none() {
        return Err(DeviceError::overflow(
            "heads",
            "(heads + 2 · kv_heads) · head_dim exceeds 2^31 - 1",
        ));
    }
    Ok(())
}

/// Checks that q, k and v cover `rows` rows (after [`check_heads`], so the widths fit).
fn check_qkv<T: DeviceElem>(qkv: &QkvRows<'_, T>, shape: HeadShape, rows: usize) -> Result<()> {
    let (q_dim, kv_dim) = (shape.q_dim(), shape.kv_dim());
    match qkv {
        QkvRows::Fused { qkv, row_stride } => {
            let width = q_dim + 2 * kv_dim;
            if *row_stride < width {
                return Err(DeviceError::invalid(
                    "row_stride",
                    format!("{row_stride} is less than the q|k|v width {width}"),
                ));
            }
            if *row_stride > u32::MAX as usize {
                return Err(DeviceError::invalid(
                    "row_stride",
                    format!("{row_stride} exceeds u32"),
                ));
            }
            check_rows("qkv", qkv.len(), rows, *row_stride, width)
        }
        QkvRows::Separate { q, k, v } => {
            check_rows("q", q.len(), rows, q_dim, q_dim)?;
            check_rows("k", k.len(), rows, kv_dim, kv_dim)?;
            check_rows("v", v.len(), rows, kv_dim, kv_dim)
        }
    }
}

/// `len` must cover `rows` rows of `width` elements, `stride` apart.
pub(crate) fn check_rows(
    arg: &'static str,
    len: usize,
    rows: usize,
    stride: usize,
    width: usize,
) -> Result<()> {
    let needed = match rows {
        0 => 0,
        _ => (rows - 1)
            .checked_mul(stride)
            .and_then(|n| n.checked_add(width))
            .ok_or_else(|| DeviceError::overflow(arg, "rows × row stride"))?,
    };
    let exact = stride == width;
    if (exact && len != needed) || len < needed {
        return Err(DeviceError::LengthMismatch {
            arg,
            expected: needed,
            found: len,
        });
    }
    Ok(())
}

pub(crate) fn check_cache(
    layout: &KvCacheLayout,
    shape: HeadShape,
    k_len: usize,
    v_len: usize,
) -> Result<()> {
    if layout.kv_heads != shape.kv_heads || layout.head_dim != shape.head_dim {
        return Err(DeviceError::ShapeMismatch {
            arg: "cache",
            expected: format!("{} kv heads of {}", shape.kv_heads, shape.head_dim),
            found: format!("{} kv heads of {}", layout.kv_heads, layout.head_dim),
        });
    }
    let needed = check_layout(layout, None)?;
    for (arg, len) in [("k_cache", k_len), ("v_cache", v_len)] {
        if len < needed {
            return Err(DeviceError::LengthMismatch {
                arg,
                expected: needed,
                found: len,
            });
        }
    }
    Ok(())
}

/// Validates a cache layout (optionally stacked as `layers` layers `layer_stride` apart) and
/// returns the elements it spans. Every stride fits the kernels' u32 fields and no two
/// elements share an address.
pub(crate) fn check_layout(
    layout: &KvCacheLayout,
    layers: Option<(usize, usize)>,
) -> Result<usize> {
    for (arg, value) in [
        ("cache.seqs", layout.seqs),
        ("cache.kv_heads", layout.kv_heads),
        ("cache.slots", layout.slots),
        ("cache.head_dim", layout.head_dim),
    ] {
        if value == 0 {
            return Err(DeviceError::invalid(arg, "must be at least 1"));
        }
        extent(arg, value)?;
    }
    // A paged cache spans its pool: `pages` pages of `page_size` slots, `seq_stride` apart.
    let (outer, row_slots) = match layout.paged {
        None => (layout.seqs, layout.slots),
        Some(pool) => {
            for (arg, value) in [("pages", pool.pages), ("page_size", pool.page_size)] {
                if value == 0 {
                    return Err(DeviceError::invalid(arg, "must be at least 1"));
                }
                extent(arg, value)?;
            }
            (pool.pages, pool.page_size)
        }
    };
    let row = row_slots
        .checked_mul(layout.head_dim)
        .ok_or_else(|| DeviceError::overflow("cache.slots", "slots × head_dim"))?;
    let mut dims = vec![
        ("cache.seq_stride", outer, layout.seq_stride),
        ("cache.head_stride", layout.kv_heads, layout.head_stride),
    ];
    if let Some((count, stride)) = layers {
        if count == 0 {
            return Err(DeviceError::invalid("layers", "must be at least 1"));
        }
        dims.push(("layer_stride", count, stride));
    }
    for &(arg, _, stride) in &dims {
        if stride > u32::MAX as usize {
            return Err(DeviceError::invalid(arg, format!("{stride} exceeds u32")));
        }
    }
    // Nested from the smallest stride out, each dimension must step past everything inside it.
    dims.retain(|&(_, count, _)| count > 1);
    dims.sort_by_key(|&(_, _, stride)| stride);
    let mut span = row;
    for (arg, count, stride) in dims {
        if stride < span {
            return Err(DeviceError::invalid(
                arg,
                format!("{stride} is smaller than the {span} elements it must step over"),
            ));
        }
        span = stride
            .checked_mul(count - 1)
            .and_then(|n| n.checked_add(span))
            .ok_or_else(|| DeviceError::overflow(arg, "cache extent"))?;
    }
    Ok(span)
}

/// Checks host row indices: equal lengths, `seq_slots[r] < seqs`, `slot_of(positions[r])` (the
/// cache slot, or why there is none), no two rows at one (sequence, slot). Errors name the
/// first bad row.
pub(crate) fn check_host_rows(
    seq_slots: &[u32],
    positions: &[u32],
    seqs: usize,
    slot_of: impl Fn(usize) -> std::result::Result<usize, String>,
) -> Result<()> {
    if positions.len() != seq_slots.len() {
        return Err(DeviceError::LengthMismatch {
            arg: "positions",
            expected: seq_slots.len(),
            found: positions.len(),
        });
    }
    extent("seq_slots", seq_slots.len())?;
    let mut taken = HashSet::with_capacity(seq_slots.len());
    for (r, (&seq, &pos)) in seq_slots.iter().zip(positions).enumerate() {
        if seq as usize >= seqs {
            return Err(DeviceError::invalid(
                "seq_slots",
                format!("seq_slots[{r}] = {seq} is not below the cache's {seqs} sequences"),
            ));
        }
        if pos as usize > MAX_EXTENT {
            return Err(DeviceError::invalid(
                "positions",
                format!("positions[{r}] = {pos} exceeds 2^31 - 1"),
            ));
        }
        let slot = slot_of(pos as usize).map_err(|why| {
            DeviceError::invalid("positions", format!("positions[{r}] = {pos} {why}"))
        })?;
        if !taken.insert((seq, slot)) {
            return Err(DeviceError::invalid(
                "positions",
                format!(
                    "row {r} (sequence {seq}, position {pos}) writes cache slot {slot} that an \
                     earlier row of the call writes too"
                ),
            ));
        }
    }
    Ok(())
}

/// Copies checked host indices into `staging` (slots, then positions) in stream order and
/// runs `launch` with the two device ranges.
pub(crate) fn with_host_rows(
    stream: &Stream,
    seq_slots: &[u32],
    positions: &[u32],
    staging: &mut impl AsDeviceViewMut<i32>,
    launch: impl FnOnce(&DeviceViewMut<'_, i32>, &DeviceViewMut<'_, i32>) -> Result<()>,
) -> Result<()> {
    let rows = seq_slots.len();
    let staging = staging.view_mut();
    if staging.len() < 2 * rows {
        return Err(DeviceError::LengthMismatch {
            arg: "staging",
            expected: 2 * rows,
            found: staging.len(),
        });
    }
    let (mut slots_dev, mut positions_dev) =
        staging.into_slice_mut(..2 * rows)?.split_at_mut(rows)?;
    // Both were checked to be at most 2^31 - 1, so the conversions are exact.
    let to_i32 = |v: &[u32]| v.iter().map(|&x| x as i32).collect::<Vec<i32>>();
    slots_dev.copy_from_host(stream, &to_i32(seq_slots))?;
    positions_dev.copy_from_host(stream, &to_i32(positions))?;
    launch(&slots_dev, &positions_dev)
}

/// One block row per token (grid.x), enough blocks along grid.y for one 16-byte group of pairs
/// (or of v elements) per thread.
fn launch_config<T: DeviceElem>(rows: u32, shape: HeadShape) -> LaunchConfig {
    let per_vector = 16 / std::mem::size_of::<T>();
    let half = shape.head_dim / 2;
    let items = (shape.heads + shape.kv_heads) * half.div_ceil(per_vector)
        + shape.kv_heads * shape.head_dim.div_ceil(per_vector);
    let blocks_y = items.div_ceil(THREADS).clamp(1, 65_535);
    LaunchConfig {
        grid: [rows, blocks_y as u32, 1],
        block: [THREADS as u32, 1, 1],
        dynamic_smem_bytes: 0,
    }
}
