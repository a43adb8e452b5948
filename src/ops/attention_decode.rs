//! Decode attention, split-KV (`cuda/attention_decode.cu`): one query row per sequence against
//! its KV cache, as causal self-attention or as StagFormer's staggered cross-attention.
//!
//! Row `r` belongs to sequence `seq_slots[r]` of the caches and sits at token position
//! `positions[r]`; both live on the device and are never read by the host. Caches are
//! `[cache_seqs][kv_heads][cache_slots][head_dim]`. Query head `h` reads kv head
//! `h / (heads / kv_heads)`.
//!
//! * [`DecodeMask::SelfCausal`]: keys at positions `0..=pos` (position `k` in slot `k`).
//! * [`DecodeMask::SelfSliding`]: keys at positions `max(0, pos − W + 1)..=pos` (Mistral's
//!   sliding window), held in a ring of `cache_slots ≥ W` slots (slot `k mod cache_slots`).
//! * [`DecodeMask::Cross`]: memory positions `max(0, pos − W)..pos` (exclusive of `pos`: the
//!   staggered section sees the memory one step behind) held in a ring of `cache_slots ≥ W`
//!   slots (slot `k mod cache_slots`), or `0..pos` in slot `k` when unbounded. At `pos = 0` the
//!   set is empty and the output is exactly zero. With a ring of `W + 1` slots or more (the
//!   decoder's has W + min(W, 256)) the slot that position `pos` is written into during the step is never one this step
//!   reads, so the previous section may write it concurrently; with exactly `W` slots it still
//!   holds position `pos − W` until the step's cross-attention has run.
//!
//! Paged caches ([`attention_decode_paged`], [`DecodePages`]): the same rows over a pool of
//! pages addressed through a block table ([`kv_pages`](crate::ops::kv_pages)); a key whose slot
//! has no page is absent from the row's softmax.
//!
//! A row whose sequence slot is outside `0..cache_seqs`, whose position is negative or whose
//! keys the cache cannot hold (self: `pos ≥ cache_slots`; unbounded cross: `pos > cache_slots`)
//! reads nothing and gets zeros: the kernels stay in bounds whatever the device holds.
//!
//! Split-KV: the keys of a row are cut into splits that run as separate blocks and write f32
//! partials into an [`AttentionWorkspace`], then combined. The host sizes only the grid: the
//! most splits a row may use ([`SplitPlan::splits`]), from the longest key set a row can have
//! ([`DecodeLayout::max_keys`], by default the cache capacity) and from how many blocks the
//! batch needs to fill the GPU. The device cuts each row by its own visible-key count, at least
//! [`SplitPlan::min_keys_per_split`] keys per split, so a row with few keys takes one or few
//! splits and the rest of the grid exits at once; a captured graph therefore adapts to the real
//! lengths at every replay. The split counts only affect speed, never the result.
//!
//! The combine ([`DecodeCombine`]): [`DecodeCombine::Fused`] (the default) lets the last block
//! to finish for a (row, head block) combine its partials, through a per-(row, head) counter in
//! the workspace that the finishing block resets, so the call is one launch and any number of
//! consecutive launches or graph replays may reuse the workspace; a row of one split writes its
//! output without partials. [`DecodeCombine::Separate`] is the former two-launch path (a combine
//! kernel after the split kernel), kept to compare the two.

use half::bf16;

use crate::device::kernel::{stag_kernel, Kernel, LaunchConfig};
use crate::device::{AsDeviceView, AsDeviceViewMut, Device, DeviceBuffer, Stream};
use crate::dtype::{DType, DeviceElem};
use crate::error::{DeviceError, Result};
use crate::ffi::{AttentionDecodeParams, STAG_ATTN_CROSS, STAG_ATTN_SELF};
use crate::ops::kv_pages::{paging_params, BlockTable, PagePool};

macro_rules! split_kernels {
    ($($name:ident = $kernel:ident;)+) => {
        $(stag_kernel!(static $name: AttentionDecodeParams = $kernel in ATTENTION_DECODE);)+
    };
}

split_kernels! {
    F32_HD64_G1 = attention_decode_split_f32_hd64_g1;
    F32_HD64_G2 = attention_decode_split_f32_hd64_g2;
    F32_HD64_G4 = attention_decode_split_f32_hd64_g4;
    F32_HD64_G8 = attention_decode_split_f32_hd64_g8;
    F32_HD128_G1 = attention_decode_split_f32_hd128_g1;
    F32_HD128_G2 = attention_decode_split_f32_hd128_g2;
    F32_HD128_G4 = attention_decode_split_f32_hd128_g4;
    F32_HD128_G8 = attention_decode_split_f32_hd128_g8;
    F32_ANY_G1 = attention_decode_split_f32_hdany_g1;
    F32_ANY_G2 = attention_decode_split_f32_hdany_g2;
    F32_ANY_G4 = attention_decode_split_f32_hdany_g4;
    F32_ANY_G8 = attention_decode_split_f32_hdany_g8;
    BF16_HD64_G1 = attention_decode_split_bf16_hd64_g1;
    BF16_HD64_G2 = attention_decode_split_bf16_hd64_g2;
    BF16_HD64_G4 = attention_decode_split_bf16_hd64_g4;
    BF16_HD64_G8 = attention_decode_split_bf16_hd64_g8;
    BF16_HD128_G1 = attention_decode_split_bf16_hd128_g1;
    BF16_HD128_G2 = attention_decode_split_bf16_hd128_g2;
    BF16_HD128_G4 = attention_decode_split_bf16_hd128_g4;
    BF16_HD128_G8 = attention_decode_split_bf16_hd128_g8;
    BF16_ANY_G1 = attention_decode_split_bf16_hdany_g1;
    BF16_ANY_G2 = attention_decode_split_bf16_hdany_g2;
    BF16_ANY_G4 = attention_decode_split_bf16_hdany_g4;
    BF16_ANY_G8 = attention_decode_split_bf16_hdany_g8;
    PAGED_F32_HD64_G1 = attention_decode_split_paged_f32_hd64_g1;
    PAGED_F32_HD64_G2 = attention_decode_split_paged_f32_hd64_g2;
    PAGED_F32_HD64_G4 = attention_decode_split_paged_f32_hd64_g4;
    PAGED_F32_HD64_G8 = attention_decode_split_paged_f32_hd64_g8;
    PAGED_F32_HD128_G1 = attention_decode_split_paged_f32_hd128_g1;
    PAGED_F32_HD128_G2 = attention_decode_split_paged_f32_hd128_g2;
    PAGED_F32_HD128_G4 = attention_decode_split_paged_f32_hd128_g4;
    PAGED_F32_HD128_G8 = attention_decode_split_paged_f32_hd128_g8;
    PAGED_F32_ANY_G1 = attention_decode_split_paged_f32_hdany_g1;
    PAGED_F32_ANY_G2 = attention_decode_split_paged_f32_hdany_g2;
    PAGED_F32_ANY_G4 = attention_decode_split_paged_f32_hdany_g4;
    PAGED_F32_ANY_G8 = attention_decode_split_paged_f32_hdany_g8;
    PAGED_BF16_HD64_G1 = attention_decode_split_paged_bf16_hd64_g1;
    PAGED_BF16_HD64_G2 = attention_decode_split_paged_bf16_hd64_g2;
    PAGED_BF16_HD64_G4 = attention_decode_split_paged_bf16_hd64_g4;
    PAGED_BF16_HD64_G8 = attention_decode_split_paged_bf16_hd64_g8;
    PAGED_BF16_HD128_G1 = attention_decode_split_paged_bf16_hd128_g1;
    PAGED_BF16_HD128_G2 = attention_decode_split_paged_bf16_hd128_g2;
    PAGED_BF16_HD128_G4 = attention_decode_split_paged_bf16_hd128_g4;
    PAGED_BF16_HD128_G8 = attention_decode_split_paged_bf16_hd128_g8;
    PAGED_BF16_ANY_G1 = attention_decode_split_paged_bf16_hdany_g1;
    PAGED_BF16_ANY_G2 = attention_decode_split_paged_bf16_hdany_g2;
    PAGED_BF16_ANY_G4 = attention_decode_split_paged_bf16_hdany_g4;
    PAGED_BF16_ANY_G8 = attention_decode_split_paged_bf16_hdany_g8;
    COMBINE_F32 = attention_decode_combine_f32;
    COMBINE_BF16 = attention_decode_combine_bf16;
}

type SplitTable = [[&'static Kernel<AttentionDecodeParams>; 4]; 3];

/// `[head dim 64, 128, other][group 1, 2, 4, 8]`.
static SPLIT_F32: SplitTable = [
    [&F32_HD64_G1, &F32_HD64_G2, &F32_HD64_G4, &F32_HD64_G8],
    [&F32_HD128_G1, &F32_HD128_G2, &F32_HD128_G4, &F32_HD128_G8],
    [&F32_ANY_G1, &F32_ANY_G2, &F32_ANY_G4, &F32_ANY_G8],
];
static SPLIT_BF16: SplitTable = [
    [&BF16_HD64_G1, &BF16_HD64_G2, &BF16_HD64_G4, &BF16_HD64_G8],
    [
        &BF16_HD128_G1,
        &BF16_HD128_G2,
        &BF16_HD128_G4,
        &BF16_HD128_G8,
    ],
    [&BF16_ANY_G1, &BF16_ANY_G2, &BF16_ANY_G4, &BF16_ANY_G8],
];

/// The same for paged caches (the `_paged` kernels, which resolve each key through the
/// block table).
static SPLIT_PAGED_F32: SplitTable = [
    [
        &PAGED_F32_HD64_G1,
        &PAGED_F32_HD64_G2,
        &PAGED_F32_HD64_G4,
        &PAGED_F32_HD64_G8,
    ],
    [
        &PAGED_F32_HD128_G1,
        &PAGED_F32_HD128_G2,
        &PAGED_F32_HD128_G4,
        &PAGED_F32_HD128_G8,
    ],
    [
        &PAGED_F32_ANY_G1,
        &PAGED_F32_ANY_G2,
        &PAGED_F32_ANY_G4,
        &PAGED_F32_ANY_G8,
    ],
];
static SPLIT_PAGED_BF16: SplitTable = [
    [
        &PAGED_BF16_HD64_G1,
        &PAGED_BF16_HD64_G2,
        &PAGED_BF16_HD64_G4,
        &PAGED_BF16_HD64_G8,
    ],
    [
        &PAGED_BF16_HD128_G1,
        &PAGED_BF16_HD128_G2,
        &PAGED_BF16_HD128_G4,
        &PAGED_BF16_HD128_G8,
    ],
    [
        &PAGED_BF16_ANY_G1,
        &PAGED_BF16_ANY_G2,
        &PAGED_BF16_ANY_G4,
        &PAGED_BF16_ANY_G8,
    ],
];

/// Threads of a pass-1 block; must equal `SPLIT_THREADS` in the kernel.
const SPLIT_THREADS: usize = 128;
/// Elements per lane of the generic kernels; must equal `GENERIC_ELEMS` in the kernel.
const GENERIC_ELEMS: usize = 8;
/// Largest head dim: the generic kernels hold at most 32 lanes × `GENERIC_ELEMS` elements.
pub const MAX_HEAD_DIM: usize = 32 * GENERIC_ELEMS;
const COMBINE_MAX_THREADS: usize = 128;
/// Pass-1 blocks aimed at per SM of the device (528 on a 132-SM H100), so that every SM has
/// several blocks' loads in flight even at batch 1.
const TARGET_BLOCKS_PER_SM: usize = 4;
/// The device never cuts a row into splits of fewer keys than this (docs/perf-notes.md: 64 keys
/// of bf16 K and V at head dim 128 are 32 KiB, one SM's share of the bytes HBM needs in flight;
/// shorter splits add blocks and partials without adding bytes in flight).
pub const MIN_KEYS_PER_SPLIT: usize = 64;
/// Upper bound on splits per row (the combine keeps one weight per split in shared memory).
pub const MAX_SPLITS: usize = 1024;
/// A workspace `max_splits` that lets batch 1 with 8 kv heads fill an H100.
pub const RECOMMENDED_MAX_SPLITS: usize = 64;
/// Grid y and z limit.
const GRID_YZ_MAX: usize = 65_535;

/// Element types of the decode attention: f32 and bf16 (activations and caches alike).
pub trait AttentionElem: DeviceElem {}

impl AttentionElem for f32 {}
impl AttentionElem for bf16 {}

/// Which keys a row sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeMask {
    /// Causal self-attention: positions `0..=pos`, position `k` in slot `k`.
    SelfCausal,
    /// Causal self-attention over a sliding window: positions `max(0, pos − W + 1)..=pos` in a
    /// ring of `cache_slots` slots, slot `k mod cache_slots` (`1 ≤ window ≤ cache_slots`).
    SelfSliding {
        /// W: positions each row sees, its own included.
        window: usize,
    },
    /// The staggered cross-attention: memory positions `max(0, pos − W)..pos` in a ring of
    /// `cache_slots` slots, slot `k mod cache_slots` (`window: Some(W)`, `1 ≤ W ≤ cache_slots`;
    /// `W + 1` slots let the next memory be written during the step), or `0..pos` in slot `k`
    /// (`None`).
    Cross {
        /// W: memory positions each row sees; `None` is unbounded.
        window: Option<usize>,
    },
}

/// How the split partials are combined into the output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DecodeCombine {
    /// In the split kernel: the last block to finish for a (row, head block) combines (one
    /// launch).
    #[default]
    Fused,
    /// A second launch, the combine kernel, after the split kernel.
    Separate,
}

/// Shapes and options of one decode attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodeLayout {
    /// Query rows (one per sequence taking part in this step).
    pub rows: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; must divide `heads`.
    pub kv_heads: usize,
    /// Head dim: 64 and 128 have specialised kernels; anything from 1 to [`MAX_HEAD_DIM`] works.
    pub head_dim: usize,
    /// Sequences the caches hold.
    pub cache_seqs: usize,
    /// Slots per (sequence, kv head) in the caches.
    pub cache_slots: usize,
    /// Elements between consecutive rows of `q` (at least `heads · head_dim`).
    pub q_row_stride: usize,
    /// Elements between consecutive rows of `out` (at least `heads · head_dim`).
    pub out_row_stride: usize,
    /// Softmax scale; finite and positive.
    pub scale: f32,
    /// The most keys any row may see at this call (e.g. the longest position + 1). Sizes the
    /// grid only (rows are split on the device by their own lengths; a longer row is still
    /// exact, with longer splits); `None` assumes the cache capacity (`cache_slots`, or `W`).
    /// A graph replayed at growing lengths keeps the capacity.
    pub max_keys: Option<usize>,
    /// How the partials are combined (default [`DecodeCombine::Fused`]).
    pub combine: DecodeCombine,
}

impl DecodeLayout {
    /// Contiguous `q` and `out` (`[rows, heads · head_dim]`), scale `1/sqrt(head_dim)`, splits
    /// sized for the cache capacity.
    pub fn new(
        rows: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        cache_seqs: usize,
        cache_slots: usize,
    ) -> Self {
        DecodeLayout {
            rows,
            heads,
            kv_heads,
            head_dim,
            cache_seqs,
            cache_slots,
            q_row_stride: heads * head_dim,
            out_row_stride: heads * head_dim,
            scale: 1.0 / (head_dim.max(1) as f32).sqrt(),
            max_keys: None,
            combine: DecodeCombine::Fused,
        }
    }

    /// The same layout with another combine path.
    pub fn with_combine(self, combine: DecodeCombine) -> Self {
        DecodeLayout { combine, ..self }
    }

    /// The same layout with a hint of the longest key set (see [`DecodeLayout::max_keys`]).
    pub fn with_max_keys(self, max_keys: usize) -> Self {
        DecodeLayout {
            max_keys: Some(max_keys),
            ..self
        }
    }

    /// The same layout with row strides for `q` and `out`.
    pub fn with_row_strides(self, q_row_stride: usize, out_row_stride: usize) -> Self {
        DecodeLayout {
            q_row_stride,
            out_row_stride,
            ..self
        }
    }

    /// The same layout with another softmax scale.
    pub fn with_scale(self, scale: f32) -> Self {
        DecodeLayout { scale, ..self }
    }

    /// Elements of each cache: `cache_seqs · kv_heads · cache_slots · head_dim`.
    pub fn cache_len(&self) -> Option<usize> {
        self.cache_seqs
            .checked_mul(self.kv_heads)?
            .checked_mul(self.cache_slots)?
            .checked_mul(self.head_dim)
    }
}

/// The f32 partials the split kernel writes and the combine reads: per (row, head, split) a
/// running max and sum and `head_dim` unnormalised outputs; and u32 counters for the fused
/// combine (one per (row, head) of a call is used), zero between calls (each call leaves them
/// as it found them).
/// Allocated once, reused by every call on the stream it is used with (calls are ordered on
/// that stream).
pub struct AttentionWorkspace {
    partial_out: DeviceBuffer<f32>,
    partial_stats: DeviceBuffer<f32>,
    counters: DeviceBuffer<u32>,
    partials: usize,
}

impl AttentionWorkspace {
    /// Room for `max_rows · heads · max_splits` partials of `head_dim` elements. A call may use
    /// more rows with fewer splits: it takes as many splits as fit, at least one.
    /// [`RECOMMENDED_MAX_SPLITS`] lets batch 1 fill an H100.
    pub fn new(
        device: &Device,
        max_rows: usize,
        heads: usize,
        head_dim: usize,
        max_splits: usize,
    ) -> Result<Self> {
        for (arg, value) in [
            ("max_rows", max_rows),
            ("heads", heads),
            ("head_dim", head_dim),
            ("max_splits", max_splits),
        ] {
            if value == 0 {
                return Err(DeviceError::invalid(arg, "must be at least 1"));
            }
        }
        let partials = max_rows
            .checked_mul(heads)
            .and_then(|n| n.checked_mul(max_splits))
            .ok_or_else(|| DeviceError::overflow("max_rows", "rows × heads × splits"))?;
        let out_len = partials
            .checked_mul(head_dim)
            .ok_or_else(|| DeviceError::overflow("head_dim", "partials × head_dim"))?;
        let stats_len = partials
            .checked_mul(2)
            .ok_or_else(|| DeviceError::overflow("max_rows", "partials × 2"))?;
        // One counter per partial: a call may use more rows than `max_rows` (with fewer
        // splits), and rows · heads <= rows · heads · splits <= partials always holds. They
        // cost 4 bytes beside each partial's (head_dim + 2) · 4.
        // The counters must be zero before the first call; a stream of its own orders that
        // before any use (it is synchronized here).
        let stream = device.new_stream()?;
        let counters = DeviceBuffer::alloc_zeroed(&stream, partials)?;
        stream.synchronize()?;
        Ok(AttentionWorkspace {
            partial_out: DeviceBuffer::alloc(device, out_len)?,
            partial_stats: DeviceBuffer::alloc(device, stats_len)?,
            counters,
            partials,
        })
    }

    /// Fills every partial (outputs and stats) with `value` on `stream` (tests poison them
    /// with NaN to show no call reads a partial it did not write).
    pub fn fill_partials(&mut self, stream: &Stream, value: f32) -> Result<()> {
        let out = vec![value; self.partial_out.len()];
        self.partial_out.copy_from_host(stream, &out)?;
        let stats = vec![value; self.partial_stats.len()];
        self.partial_stats.copy_from_host(stream, &stats)
    }

    /// The fused combine's counters, copied to the host (all zero between calls).
    pub fn counters_to_host(&self, stream: &Stream) -> Result<Vec<u32>> {
        self.counters.to_host(stream)
    }

    /// (row, head, split) partials it holds.
    pub fn partials(&self) -> usize {
        self.partials
    }

    /// Elements of partial output it holds (`partials · head_dim` of its construction).
    pub fn partial_elems(&self) -> usize {
        self.partial_out.len()
    }

    /// The device it lives on.
    pub fn device(&self) -> &Device {
        self.partial_out.device()
    }
}

impl std::fmt::Debug for AttentionWorkspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttentionWorkspace")
            .field("partials", &self.partials)
            .field("partial_elems", &self.partial_out.len())
            .finish()
    }
}

/// The grid of a call (computed on the host from the layout; exposed for tests and benches).
/// How many of its splits a row uses is decided on the device from the row's own key count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitPlan {
    /// The most splits a row may use: split-kernel grid x, and the workspace stride of this
    /// call.
    pub splits: usize,
    /// The fewest keys the device puts in a split ([`MIN_KEYS_PER_SPLIT`]); a row of `n` keys
    /// takes `max(this, ceil(n / splits))` keys per split, rounded up to 32.
    pub min_keys_per_split: usize,
    /// Query heads per split block: 1, 2, 4 or 8.
    pub heads_per_block: usize,
}

/// The page pool and block table of paged K and V caches (see
/// [`kv_pages`](crate::ops::kv_pages)): each buffer holds `pool.pages` unpadded pages
/// `[kv_heads][page_size][head_dim]`, and the table maps the layout's `cache_seqs` sequences
/// of `cache_slots` slots onto them. A key whose slot has no page is absent (not attended).
#[derive(Clone, Copy, Debug)]
pub struct DecodePages<'a> {
    /// Pages of the pool and slots per page.
    pub pool: PagePool,
    /// Page ids, `block_table.stride` per sequence.
    pub block_table: BlockTable<'a>,
}

/// Decode attention: `out[r, h] = softmax(scale · q[r, h] · Kᵀ) · V` over the keys
/// `mask` makes visible to row `r` (see the module documentation), exact zeros when none.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode<T: AttentionElem>(
    stream: &Stream,
    q: &impl AsDeviceView<T>,
    k_cache: &impl AsDeviceView<T>,
    v_cache: &impl AsDeviceView<T>,
    seq_slots: &impl AsDeviceView<i32>,
    positions: &impl AsDeviceView<i32>,
    out: &mut impl AsDeviceViewMut<T>,
    workspace: &mut AttentionWorkspace,
    layout: DecodeLayout,
    mask: DecodeMask,
) -> Result<()> {
    decode(
        stream, q, k_cache, v_cache, None, seq_slots, positions, out, workspace, layout, mask,
    )
}

/// [`attention_decode`] over paged caches: `k_pool` and `v_pool` each hold exactly
/// `pages.pool.pages · kv_heads · page_size · head_dim` elements, and the layout's
/// `cache_seqs` and `cache_slots` are the sequences and slots per sequence the block table maps.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode_paged<T: AttentionElem>(
    stream: &Stream,
    q: &impl AsDeviceView<T>,
    k_pool: &impl AsDeviceView<T>,
    v_pool: &impl AsDeviceView<T>,
    pages: DecodePages<'_>,
    seq_slots: &impl AsDeviceView<i32>,
    positions: &impl AsDeviceView<i32>,
    out: &mut impl AsDeviceViewMut<T>,
    workspace: &mut AttentionWorkspace,
    layout: DecodeLayout,
    mask: DecodeMask,
) -> Result<()> {
    decode(
        stream,
        q,
        k_pool,
        v_pool,
        Some(pages),
        seq_slots,
        positions,
        out,
        workspace,
        layout,
        mask,
    )
}

#[allow(clippy::too_many_arguments)]
fn decode<T: AttentionElem>(
    stream: &Stream,
    q: &impl AsDeviceView<T>,
    k_cache: &impl AsDeviceView<T>,
    v_cache: &impl AsDeviceView<T>,
    pages: Option<DecodePages<'_>>,
    seq_slots: &impl AsDeviceView<i32>,
    positions: &impl AsDeviceView<i32>,
    out: &mut impl AsDeviceViewMut<T>,
    workspace: &mut AttentionWorkspace,
    layout: DecodeLayout,
    mask: DecodeMask,
) -> Result<()> {
    let (q, k_cache, v_cache) = (q.view(), k_cache.view(), v_cache.view());
    let (seq_slots, positions, mut out) = (seq_slots.view(), positions.view(), out.view_mut());
    let mut checked = check_layout(&layout, mask)?;
    let (paging, table_retained) = paging_params(
        pages.map(|p| p.pool),
        pages.as_ref().map(|p| &p.block_table),
        layout.cache_seqs,
        layout.cache_slots,
    )?;
    if let Some(pages) = pages {
        // The pool replaces the dense extent: unpadded pages, page_size slots per head.
        let head_stride = pages
            .pool
            .page_size
            .checked_mul(layout.head_dim)
            .filter(|&n| n <= u32::MAX as usize)
            .ok_or_else(|| DeviceError::overflow("page_size", "page_size × head_dim > u32"))?;
        let page_stride = head_stride
            .checked_mul(layout.kv_heads)
            .filter(|&n| n <= u32::MAX as usize)
            .ok_or_else(|| {
                DeviceError::overflow("page_size", "kv_heads × page_size × head_dim > u32")
            })?;
        checked.cache_len = page_stride
            .checked_mul(pages.pool.pages)
            .ok_or_else(|| DeviceError::overflow("pages", "pool elements"))?;
        checked.cache_head_stride = head_stride;
        checked.cache_seq_stride = page_stride;
    }
    check_span(
        "q",
        q.len(),
        layout.rows,
        layout.q_row_stride,
        checked.q_dim,
    )?;
    check_span(
        "out",
        out.len(),
        layout.rows,
        layout.out_row_stride,
        checked.q_dim,
    )?;
    check_exact("k_cache", k_cache.len(), checked.cache_len)?;
    check_exact("v_cache", v_cache.len(), checked.cache_len)?;
    check_exact("seq_slots", seq_slots.len(), layout.rows)?;
    check_exact("positions", positions.len(), layout.rows)?;
    let plan = plan_splits(&layout, mask, workspace)?;
    if layout.rows == 0 {
        return Ok(());
    }

    let (mode, window) = match mask {
        DecodeMask::SelfCausal => (STAG_ATTN_SELF, 0),
        DecodeMask::SelfSliding { window } => (STAG_ATTN_SELF, window),
        DecodeMask::Cross { window } => (STAG_ATTN_CROSS, window.unwrap_or(0)),
    };
    let fused = layout.combine == DecodeCombine::Fused;
    let merge_smem = split_smem_bytes::<T>(layout.head_dim, plan.heads_per_block);
    // The fused combine reuses the split kernel's shared memory for one weight per split.
    let split_smem = if fused {
        merge_smem.max((plan.splits * 4) as u32)
    } else {
        merge_smem
    };
    let params = AttentionDecodeParams {
        q: q.as_ptr(),
        k_cache: k_cache.as_ptr(),
        v_cache: v_cache.as_ptr(),
        out: out.as_mut_ptr(),
        partial_out: workspace.partial_out.view_mut().as_mut_ptr().cast(),
        partial_stats: workspace.partial_stats.view_mut().as_mut_ptr().cast(),
        counters: workspace.counters.view_mut().as_mut_ptr().cast(),
        seq_slots: seq_slots.as_ptr().cast(),
        positions: positions.as_ptr().cast(),
        rows: layout.rows as u32,
        heads: layout.heads as u32,
        kv_heads: layout.kv_heads as u32,
        head_dim: layout.head_dim as u32,
        q_row_stride: layout.q_row_stride as u32,
        out_row_stride: layout.out_row_stride as u32,
        cache_seq_stride: checked.cache_seq_stride as u32,
        cache_head_stride: checked.cache_head_stride as u32,
        cache_slots: layout.cache_slots as u32,
        min_keys_per_split: plan.min_keys_per_split as u32,
        max_splits: plan.splits as u32,
        mode,
        window: window as u32,
        scale: layout.scale,
        cache_seqs: layout.cache_seqs as u32,
        fused_combine: u32::from(fused),
        paging,
    };
    let chunks = (layout.heads / layout.kv_heads).div_ceil(plan.heads_per_block);
    let split_cfg = LaunchConfig {
        grid: [
            plan.splits as u32,
            (layout.kv_heads * chunks) as u32,
            layout.rows as u32,
        ],
        block: [SPLIT_THREADS as u32, 1, 1],
        dynamic_smem_bytes: split_smem,
    };
    let combine_threads = layout
        .head_dim
        .next_multiple_of(32)
        .clamp(32, COMBINE_MAX_THREADS);
    let combine_cfg = LaunchConfig {
        grid: [layout.heads as u32, layout.rows as u32, 1],
        block: [combine_threads as u32, 1, 1],
        dynamic_smem_bytes: (plan.splits * 4) as u32,
    };
    let mut retained = vec![
        q.retain("q"),
        k_cache.retain("k_cache"),
        v_cache.retain("v_cache"),
        seq_slots.retain("seq_slots"),
        positions.retain("positions"),
        out.retain("out"),
        workspace.partial_out.view().retain("workspace"),
        workspace.partial_stats.view().retain("workspace"),
        workspace.counters.view().retain("workspace"),
    ];
    retained.extend(table_retained);
    let (split_kernel, combine_kernel) =
        kernels_for::<T>(layout.head_dim, plan.heads_per_block, pages.is_some());
    // SAFETY: `q` and `out` cover `(rows − 1) · stride + heads · head_dim` elements and the
    // caches exactly `cache_seqs · kv_heads · cache_slots · head_dim` (checked above); the
    // kernels address rows < `rows`, heads < `heads`, sequences < `cache_seqs` and slots <
    // `cache_slots` only, whatever `seq_slots` and `positions` hold (the mask function rejects
    // anything else); paged, the pools hold exactly `pages` pages and a key is read only
    // through a table entry naming one of them, the table covering every sequence's slots
    // (`paging_params`). The workspace holds `rows · heads · splits` partials (checked by
    // `plan_splits`), the extent the split kernel writes and the combine reads, and as many
    // counters, at least the `rows · heads` the fused combine indexes; the dynamic shared
    // memory covers the merge and `splits` combine weights; `out`
    // and the workspace are borrowed mutably, so nothing else can alias them. All allocations
    // are retained.
    unsafe {
        stream.launch(split_kernel, split_cfg, params, &retained)?;
        if !fused {
            stream.launch(combine_kernel, combine_cfg, params, &retained)?;
        }
        Ok(())
    }
}

/// The split plan `attention_decode` would use for this layout and workspace.
pub fn plan_splits(
    layout: &DecodeLayout,
    mask: DecodeMask,
    workspace: &AttentionWorkspace,
) -> Result<SplitPlan> {
    check_layout(layout, mask)?;
    let group = layout.heads / layout.kv_heads;
    let heads_per_block = match group {
        1 => 1,
        2 => 2,
        3 | 4 => 4,
        _ => 8,
    };
    let capacity = match mask {
        DecodeMask::Cross { window: Some(w) } | DecodeMask::SelfSliding { window: w } => w,
        _ => layout.cache_slots,
    };
    let max_keys = layout.max_keys.unwrap_or(capacity).clamp(1, capacity);
    let per_row_heads = layout.rows.max(1) * layout.heads;
    let room = (workspace.partials / per_row_heads)
        .min(workspace.partial_out.len() / (per_row_heads * layout.head_dim));
    if room == 0 {
        return Err(DeviceError::ShapeMismatch {
            arg: "workspace",
            expected: format!(
                "room for at least {per_row_heads} partials of {} elements (rows × heads)",
                layout.head_dim
            ),
            found: format!(
                "{} partials, {} elements",
                workspace.partials,
                workspace.partial_out.len()
            ),
        });
    }
    let blocks_per_split = layout.rows.max(1) * layout.kv_heads * group.div_ceil(heads_per_block);
    let target_blocks = TARGET_BLOCKS_PER_SM * workspace.device().sm_count() as usize;
    // Enough splits of the longest row to put TARGET_BLOCKS_PER_SM blocks on every SM, never
    // splits shorter than MIN_KEYS_PER_SPLIT (the device would leave them empty anyway).
    let splits = target_blocks
        .div_ceil(blocks_per_split)
        .min(max_keys.div_ceil(MIN_KEYS_PER_SPLIT))
        .min(room)
        .clamp(1, MAX_SPLITS);
    Ok(SplitPlan {
        splits,
        min_keys_per_split: MIN_KEYS_PER_SPLIT,
        heads_per_block,
    })
}

/// Validated derived sizes.
struct Checked {
    q_dim: usize,
    cache_len: usize,
    cache_seq_stride: usize,
    cache_head_stride: usize,
}

fn check_layout(layout: &DecodeLayout, mask: DecodeMask) -> Result<Checked> {
    let l = layout;
    for (arg, value) in [
        ("heads", l.heads),
        ("kv_heads", l.kv_heads),
        ("head_dim", l.head_dim),
        ("cache_seqs", l.cache_seqs),
        ("cache_slots", l.cache_slots),
    ] {
        if value == 0 {
            return Err(DeviceError::invalid(arg, "must be at least 1"));
        }
    }
    if l.heads % l.kv_heads != 0 {
        return Err(DeviceError::invalid(
            "kv_heads",
            format!("{} does not divide heads = {}", l.kv_heads, l.heads),
        ));
    }
    if l.head_dim > MAX_HEAD_DIM {
        return Err(DeviceError::invalid(
            "head_dim",
            format!("{} exceeds {MAX_HEAD_DIM}", l.head_dim),
        ));
    }
    if l.rows > GRID_YZ_MAX {
        return Err(DeviceError::invalid(
            "rows",
            format!("{} exceeds {GRID_YZ_MAX}", l.rows),
        ));
    }
    let chunks = (l.heads / l.kv_heads).div_ceil(8);
    if l.heads > GRID_YZ_MAX || l.kv_heads * chunks > GRID_YZ_MAX {
        return Err(DeviceError::invalid(
            "heads",
            format!("{} exceeds {GRID_YZ_MAX}", l.heads),
        ));
    }
    if !(l.scale.is_finite() && l.scale > 0.0) {
        return Err(DeviceError::invalid(
            "scale",
            format!("{} must be finite and > 0", l.scale),
        ));
    }
    let q_dim = l.heads * l.head_dim;
    for (arg, stride) in [
        ("q_row_stride", l.q_row_stride),
        ("out_row_stride", l.out_row_stride),
    ] {
        if stride < q_dim {
            return Err(DeviceError::invalid(
                arg,
                format!("{stride} is less than heads × head_dim = {q_dim}"),
            ));
        }
        if stride > u32::MAX as usize {
            return Err(DeviceError::invalid(arg, format!("{stride} exceeds u32")));
        }
    }
    // Positions are int32, so slots past i32::MAX could never be addressed.
    if l.cache_slots > i32::MAX as usize || l.cache_seqs > i32::MAX as usize {
        return Err(DeviceError::invalid(
            "cache_slots",
            "cache_slots and cache_seqs must not exceed 2^31 - 1",
        ));
    }
    let cache_head_stride = l
        .cache_slots
        .checked_mul(l.head_dim)
        .filter(|&n| n <= u32::MAX as usize)
        .ok_or_else(|| DeviceError::overflow("cache_slots", "cache_slots × head_dim > u32"))?;
    let cache_seq_stride = cache_head_stride
        .checked_mul(l.kv_heads)
        .filter(|&n| n <= u32::MAX as usize)
        .ok_or_else(|| {
            DeviceError::overflow("cache_slots", "kv_heads × cache_slots × head_dim > u32")
        })?;
    let cache_len = l
        .cache_len()
        .ok_or_else(|| DeviceError::overflow("cache_seqs", "cache elements"))?;
    if let Some(rows) = l.rows.checked_sub(1) {
        for (arg, stride) in [("q", l.q_row_stride), ("out", l.out_row_stride)] {
            rows.checked_mul(stride)
                .and_then(|n| n.checked_add(q_dim))
                .ok_or_else(|| DeviceError::overflow(arg, "rows × row stride"))?;
        }
    }
    match mask {
        DecodeMask::SelfCausal | DecodeMask::Cross { window: None } => {}
        DecodeMask::Cross { window: Some(w) } | DecodeMask::SelfSliding { window: w } => {
            if w == 0 || w > l.cache_slots {
                return Err(DeviceError::invalid(
                    "window",
                    format!(
                        "{w} must be between 1 and cache_slots = {} (the ring holds the window)",
                        l.cache_slots
                    ),
                ));
            }
        }
    }
    if l.max_keys == Some(0) {
        return Err(DeviceError::invalid(
            "max_keys",
            "must be at least 1 (or None for the cache capacity)",
        ));
    }
    Ok(Checked {
        q_dim,
        cache_len,
        cache_seq_stride,
        cache_head_stride,
    })
}

/// `found` must cover rows of `width` elements `stride` apart.
fn check_span(
    arg: &'static str,
    found: usize,
    rows: usize,
    stride: usize,
    width: usize,
) -> Result<()> {
    let needed = match rows.checked_sub(1) {
        None => 0,
        Some(last) => last * stride + width,
    };
    if found < needed {
        return Err(DeviceError::ShapeMismatch {
            arg,
            expected: format!("at least {needed} elements ({rows} rows, stride {stride})"),
            found: format!("{found} elements"),
        });
    }
    Ok(())
}

fn check_exact(arg: &'static str, found: usize, expected: usize) -> Result<()> {
    if found != expected {
        return Err(DeviceError::LengthMismatch {
            arg,
            expected,
            found,
        });
    }
    Ok(())
}

fn kernels_for<T: AttentionElem>(
    head_dim: usize,
    heads_per_block: usize,
    paged: bool,
) -> (
    &'static Kernel<AttentionDecodeParams>,
    &'static Kernel<AttentionDecodeParams>,
) {
    let (table, combine) = match (T::DTYPE, paged) {
        (DType::BF16, false) => (&SPLIT_BF16, &COMBINE_BF16),
        (DType::BF16, true) => (&SPLIT_PAGED_BF16, &COMBINE_BF16),
        // `AttentionElem` is implemented for f32 and bf16 only.
        (_, false) => (&SPLIT_F32, &COMBINE_F32),
        (_, true) => (&SPLIT_PAGED_F32, &COMBINE_F32),
    };
    let dim = match head_dim {
        64 => 0,
        128 => 1,
        _ => 2,
    };
    let group = match heads_per_block {
        1 => 0,
        2 => 1,
        4 => 2,
        _ => 3,
    };
    (table[dim][group], combine)
}

/// Split-kernel shared memory for the merge: per thread and head, the running (max, sum) and
/// the lane's outputs, then the block's (max, sum) per head.
fn split_smem_bytes<T: DeviceElem>(head_dim: usize, heads_per_block: usize) -> u32 {
    let elems = match head_dim {
        64 | 128 => 16 / std::mem::size_of::<T>(),
        _ => GENERIC_ELEMS,
    };
    ((SPLIT_THREADS * heads_per_block * (2 + elems) + 2 * heads_per_block) * 4) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace(rows: usize, heads: usize, head_dim: usize, splits: usize) -> AttentionWorkspace {
        AttentionWorkspace::new(&Device::emulated(), rows, heads, head_dim, splits)
            .expect("workspace")
    }

    fn arg_of(e: DeviceError) -> &'static str {
        match e {
            DeviceError::InvalidArgument { arg, .. }
            | DeviceError::ShapeMismatch { arg, .. }
            | DeviceError::LengthMismatch { arg, .. }
            | DeviceError::SizeOverflow { arg, .. } => arg,
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn batch_one_fills_the_gpu_and_long_rows_split() {
        // Llama-8B-like: 32 heads, 8 kv heads, hd 128, 4096 keys.
        let layout = DecodeLayout::new(1, 32, 8, 128, 1, 4096);
        let plan =
            plan_splits(&layout, DecodeMask::SelfCausal, &workspace(1, 32, 128, 64)).expect("plan");
        assert_eq!(plan.heads_per_block, 4);
        assert!(plan.splits * 8 >= 4 * 132 - 8 * 8, "{plan:?}");
        assert_eq!(plan.min_keys_per_split, MIN_KEYS_PER_SPLIT);
        // A batch that fills the GPU by itself takes one split per row.
        let layout = DecodeLayout::new(128, 32, 8, 128, 128, 4096);
        let plan = plan_splits(
            &layout,
            DecodeMask::SelfCausal,
            &workspace(128, 32, 128, 64),
        )
        .expect("plan");
        assert_eq!(plan.splits, 1);
        // The window bounds the split lengths of the cross-attention.
        let layout = DecodeLayout::new(1, 32, 8, 128, 1, 4096);
        let plan = plan_splits(
            &layout,
            DecodeMask::Cross { window: Some(128) },
            &workspace(1, 32, 128, 64),
        )
        .expect("plan");
        assert_eq!(plan.splits, 128 / MIN_KEYS_PER_SPLIT, "{plan:?}");
    }

    #[test]
    fn the_grid_is_sized_for_the_capacity_not_the_split_length() {
        // A decoder's cache of 32K slots at batch 1: the grid takes the workspace's splits;
        // how many of them a row uses is the device's choice (at least 64 keys each).
        let layout = DecodeLayout::new(1, 32, 8, 128, 1, 32_768);
        let ws = workspace(1, 32, 128, RECOMMENDED_MAX_SPLITS);
        let plan = plan_splits(&layout, DecodeMask::SelfCausal, &ws).expect("plan");
        assert_eq!(plan.splits, RECOMMENDED_MAX_SPLITS);
        assert_eq!(plan.min_keys_per_split, MIN_KEYS_PER_SPLIT);
        // Both combine paths plan the same grid.
        let separate = layout.with_combine(DecodeCombine::Separate);
        assert_eq!(
            plan_splits(&separate, DecodeMask::SelfCausal, &ws).expect("plan"),
            plan
        );
        assert_eq!(layout.combine, DecodeCombine::Fused);
    }

    #[test]
    fn a_small_workspace_serves_larger_batches_with_fewer_splits() {
        let ws = workspace(1, 8, 64, 16);
        let layout = DecodeLayout::new(4, 8, 8, 64, 4, 1024);
        let plan = plan_splits(&layout, DecodeMask::SelfCausal, &ws).expect("plan");
        assert!(plan.splits <= 4, "{plan:?}");
        let layout = DecodeLayout::new(17, 8, 8, 64, 17, 1024);
        let err = plan_splits(&layout, DecodeMask::SelfCausal, &ws).unwrap_err();
        assert_eq!(arg_of(err), "workspace");
    }

    #[test]
    fn invalid_layouts_name_their_argument() {
        let ws = workspace(2, 8, 64, 4);
        let base = DecodeLayout::new(2, 8, 2, 64, 2, 16);
        let cases: [(DecodeLayout, DecodeMask, &str); 9] = [
            (
                DecodeLayout {
                    kv_heads: 3,
                    ..base
                },
                DecodeMask::SelfCausal,
                "kv_heads",
            ),
            (
                DecodeLayout { heads: 0, ..base },
                DecodeMask::SelfCausal,
                "heads",
            ),
            (
                DecodeLayout {
                    head_dim: 0,
                    ..base
                },
                DecodeMask::SelfCausal,
                "head_dim",
            ),
            (
                DecodeLayout {
                    head_dim: 257,
                    ..base
                },
                DecodeMask::SelfCausal,
                "head_dim",
            ),
            (
                DecodeLayout {
                    cache_slots: 0,
                    ..base
                },
                DecodeMask::SelfCausal,
                "cache_slots",
            ),
            (base.with_scale(f32::NAN), DecodeMask::SelfCausal, "scale"),
            (
                base.with_row_strides(100, 512),
                DecodeMask::SelfCausal,
                "q_row_stride",
            ),
            (base, DecodeMask::Cross { window: Some(0) }, "window"),
            (base, DecodeMask::Cross { window: Some(17) }, "window"),
        ];
        for (layout, mask, arg) in cases {
            let err = plan_splits(&layout, mask, &ws).unwrap_err();
            assert_eq!(arg_of(err), arg, "{layout:?} {mask:?}");
        }
    }

    #[test]
    fn wrong_lengths_are_rejected_before_launch() {
        let device = Device::emulated();
        let stream = device.new_stream().expect("stream");
        let layout = DecodeLayout::new(2, 4, 2, 64, 3, 8);
        let cache_len = layout.cache_len().expect("cache len");
        let q = DeviceBuffer::<f32>::alloc(&device, 2 * 256).expect("alloc");
        let k = DeviceBuffer::<f32>::alloc(&device, cache_len).expect("alloc");
        let short_v = DeviceBuffer::<f32>::alloc(&device, cache_len - 1).expect("alloc");
        let idx = DeviceBuffer::<i32>::alloc(&device, 2).expect("alloc");
        let one = DeviceBuffer::<i32>::alloc(&device, 1).expect("alloc");
        let mut out = DeviceBuffer::<f32>::alloc(&device, 2 * 256).expect("alloc");
        let mut short_out = DeviceBuffer::<f32>::alloc(&device, 256).expect("alloc");
        let mut ws = workspace(2, 4, 64, 4);
        let mask = DecodeMask::SelfCausal;
        let err = attention_decode(
            &stream, &q, &k, &short_v, &idx, &idx, &mut out, &mut ws, layout, mask,
        )
        .unwrap_err();
        assert_eq!(arg_of(err), "v_cache");
        let err = attention_decode(
            &stream, &q, &k, &k, &idx, &one, &mut out, &mut ws, layout, mask,
        )
        .unwrap_err();
        assert_eq!(arg_of(err), "positions");
        let err = attention_decode(
            &stream,
            &q,
            &k,
            &k,
            &idx,
            &idx,
            &mut short_out,
            &mut ws,
            layout,
            mask,
        )
        .unwrap_err();
        assert_eq!(arg_of(err), "out");
    }
}
