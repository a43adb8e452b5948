//! Prefill attention over a ragged batch (`cuda/attention_prefill.cu`): causal self-attention
//! and StagFormer's staggered cross-attention, flash style (tiled, online softmax in f32, no
//! O(P²) memory and no workspace).
//!
//! # Layout
//!
//! The sequences of a batch are packed row after row. A [`PrefillBatch`] describes them once,
//! from host lengths, and owns the small device arrays the kernel reads (row offsets and first
//! positions); build it once per prefill and reuse it for every layer. Sequence `b` owns
//!
//! * query rows `Σ q_lens[..b] .. + q_lens[b]` of `q` and `out`, the first at position
//!   `q_positions0[b]`, and
//! * key rows `Σ k_lens[..b] .. + k_lens[b]` of `k` and `v`, key row `j` (counted from the
//!   sequence's first) at position `j`.
//!
//! A row holds the heads one after another (`heads × head_dim` for q/out, `kv_heads × head_dim`
//! for k/v), and consecutive rows are [`RowStrides`] elements apart, so q, k and v can be views
//! into one fused projection output.
//!
//! # Masks
//!
//! * [`PrefillMask::Causal`]: query position `i` sees keys `0..=i`.
//! * [`PrefillMask::SlidingCausal`]: query position `i` sees keys `max(0, i − W + 1) ..= i`
//!   (Mistral's sliding window).
//! * [`PrefillMask::StaggeredCross`]: query position `i` sees the memory positions
//!   `max(0, i − W) ..= i − 1` (`W` unbounded for `window: None`). A query that sees nothing
//!   (position 0) gets an exact zero output row.
//!
//! Query head `h` reads kv head `h / (heads / kv_heads)` (GQA; see [`HeadShape`]). Scores are
//! `scale · q·k`. `head_dim` is 1 ..= [`MAX_HEAD_DIM`]; 64 and 128 have dedicated kernels.

use half::bf16;

use crate::device::kernel::{stag_kernel, Kernel, LaunchConfig};
use crate::device::{AsDeviceView, AsDeviceViewMut, Device, DeviceBuffer, DeviceView, Stream};
use crate::dtype::{DType, DeviceElem};
use crate::error::{DeviceError, Result};
use crate::ffi::{
    AttentionPrefillMmaParams, AttentionPrefillParams, StagKvPaging, STAG_ATTN_CROSS,
    STAG_ATTN_SELF, STAG_KV_CACHE, STAG_KV_PACKED,
};
use crate::ops::kv_pages::{paging_params, BlockTable};
use crate::ops::rope_append::{check_layout, KvCacheLayout};
use crate::ops::HeadShape;

stag_kernel!(static PREFILL_F32_HD64: AttentionPrefillParams = attention_prefill_f32_hd64 in ATTENTION_PREFILL);
stag_kernel!(static PREFILL_F32_HD128: AttentionPrefillParams = attention_prefill_f32_hd128 in ATTENTION_PREFILL);
stag_kernel!(static PREFILL_F32_ANY: AttentionPrefillParams = attention_prefill_f32_any in ATTENTION_PREFILL);
stag_kernel!(static PREFILL_BF16_HD64: AttentionPrefillParams = attention_prefill_bf16_hd64 in ATTENTION_PREFILL);
stag_kernel!(static PREFILL_BF16_HD128: AttentionPrefillParams = attention_prefill_bf16_hd128 in ATTENTION_PREFILL);
stag_kernel!(static PREFILL_BF16_ANY: AttentionPrefillParams = attention_prefill_bf16_any in ATTENTION_PREFILL);
stag_kernel!(static PREFILL_MMA_BF16_HD64: AttentionPrefillMmaParams = attention_prefill_mma_bf16_hd64 in ATTENTION_PREFILL_MMA);
stag_kernel!(static PREFILL_MMA_BF16_HD128: AttentionPrefillMmaParams = attention_prefill_mma_bf16_hd128 in ATTENTION_PREFILL_MMA);

// Tile geometry; must equal BM, BN, THREADS and MAX_HEAD_DIM in `cuda/attention_prefill.cu`.
/// Query items (row, head of a kv group) per block.
const BLOCK_ITEMS: usize = 64;
/// Keys per streamed K/V tile.
const BLOCK_KEYS: usize = 32;
const THREADS: u32 = 128;

/// Largest head dimension the kernels take.
pub const MAX_HEAD_DIM: usize = 128;
/// Most sequences in one batch (the launch grid's z extent).
pub const MAX_SEQUENCES: usize = 65_535;
/// Most kv heads (the launch grid's y extent).
pub const MAX_KV_HEADS: usize = 65_535;

/// Activation types of the prefill attention kernels: f32 and bf16 (f32 math).
pub trait PrefillElem: DeviceElem {}

impl PrefillElem for f32 {}
impl PrefillElem for bf16 {}

fn kernel_for<T: PrefillElem>(head_dim: usize) -> &'static Kernel<AttentionPrefillParams> {
    // `PrefillElem` is implemented for f32 and bf16 only.
    let bf16 = T::DTYPE == DType::BF16;
    match (bf16, head_dim) {
        (false, 64) => &PREFILL_F32_HD64,
        (false, 128) => &PREFILL_F32_HD128,
        (false, _) => &PREFILL_F32_ANY,
        (true, 64) => &PREFILL_BF16_HD64,
        (true, 128) => &PREFILL_BF16_HD128,
        (true, _) => &PREFILL_BF16_ANY,
    }
}

// Tile geometry of `cuda/attention_prefill_mma.cu` (BM, BN, THREADS).
const MMA_BLOCK_ITEMS: usize = 64;
const MMA_BLOCK_KEYS: usize = 64;
const MMA_THREADS: u32 = 128;

/// The tensor-core instance for `head_dim` and the head dim its tiles are laid out for: 64
/// (exact for 64, zero-padded below) or 128 (exact for 128, zero-padded for 65 ..= 127).
fn mma_kernel_for(head_dim: usize) -> (&'static Kernel<AttentionPrefillMmaParams>, usize) {
    if head_dim <= 64 {
        (&PREFILL_MMA_BF16_HD64, 64)
    } else {
        (&PREFILL_MMA_BF16_HD128, 128)
    }
}

/// Dynamic shared memory of a tensor-core launch: bf16 tiles Q [BM][LD], K and V [2][BN][LD]
/// with LD = tile head dim + 8 (the kernel's layout).
fn mma_smem_bytes(tile_dim: usize) -> u32 {
    let ld = tile_dim + 8;
    let elems = MMA_BLOCK_ITEMS * ld + 4 * MMA_BLOCK_KEYS * ld;
    // At most 2 · 5 · 64 · 136 = 87 040 bytes.
    (elems * std::mem::size_of::<bf16>()) as u32
}

/// Which kernel computes a prefill attention. The SIMT kernel stays selectable so that a GPU
/// run can compare both (benches, parity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PrefillKernel {
    /// Tensor cores for bf16, the SIMT kernel for f32.
    #[default]
    Auto,
    /// `cuda/attention_prefill.cu`: f32 FFMA from f32 shared tiles (f32 and bf16).
    Simt,
    /// `cuda/attention_prefill_mma.cu`: mma.sync m16n8k16 (bf16 only).
    TensorCore,
}

impl PrefillKernel {
    /// The kernel that runs for element type `T`; tensor cores for f32 are an error.
    fn resolve<T: PrefillElem>(self) -> Result<PrefillKernel> {
        let bf16 = T::DTYPE == DType::BF16;
        match self {
            PrefillKernel::Auto if bf16 => Ok(PrefillKernel::TensorCore),
            PrefillKernel::Auto => Ok(PrefillKernel::Simt),
            PrefillKernel::TensorCore if !bf16 => Err(DeviceError::UnsupportedDTypes {
                op: "attention_prefill (tensor cores)",
                found: format!("{:?}", T::DTYPE),
                supported: "bf16",
            }),
            k => Ok(k),
        }
    }
}

/// Dynamic shared memory of a launch: f32 tiles Q [BM][ld], K and V [BN][ld], P [BM][BN + 4]
/// with ld = round_up(head_dim, 4) + 4 (the kernel's layout).
fn smem_bytes(head_dim: usize) -> u32 {
    let ld = head_dim.next_multiple_of(4) + 4;
    let floats = BLOCK_ITEMS * ld + 2 * BLOCK_KEYS * ld + BLOCK_ITEMS * (BLOCK_KEYS + 4);
    // At most 4 · (64 · 132 · 2 + 64 · 36) bytes for head_dim ≤ 128.
    (floats * std::mem::size_of::<f32>()) as u32
}

/// The sequences of a prefill batch: host lengths and their device offset arrays.
///
/// Owns three device arrays of `i32` (query row offsets and key row offsets, `sequences + 1`
/// each, and the first query position of every sequence). They are written once, when the batch
/// is built, and never exposed mutably, so the kernel always reads what was validated here.
pub struct PrefillBatch {
    q_lens: Vec<usize>,
    k_lens: Vec<usize>,
    q_positions0: Vec<usize>,
    q_rows: usize,
    k_rows: usize,
    max_q_len: usize,
    q_offsets: DeviceBuffer<i32>,
    k_offsets: DeviceBuffer<i32>,
    positions0: DeviceBuffer<i32>,
}

impl PrefillBatch {
    /// Prompts whose query rows are also their key rows, from position 0: sequence `b` has
    /// `lens[b]` rows. This is the plain prefill, for self-attention and for the staggered
    /// cross-attention over the previous section's memory of the same prompt.
    pub fn new(stream: &Stream, lens: &[usize]) -> Result<Self> {
        let zeros = vec![0; lens.len()];
        Self::with_positions(stream, lens, lens, &zeros)
    }

    /// The general batch: sequence `b` has `q_lens[b]` query rows, the first at position
    /// `q_positions0[b]`, over `k_lens[b]` key rows at positions `0..k_lens[b]` (e.g. a prompt
    /// chunk continuing earlier chunks whose keys precede it). The three slices have one entry per
    /// sequence. Whether the keys cover every query is checked per mask by
    /// [`attention_prefill`].
    pub fn with_positions(
        stream: &Stream,
        q_lens: &[usize],
        k_lens: &[usize],
        q_positions0: &[usize],
    ) -> Result<Self> {
        let host = BatchHost::new(q_lens, k_lens, q_positions0)?;
        Ok(PrefillBatch {
            q_lens: q_lens.to_vec(),
            k_lens: k_lens.to_vec(),
            q_positions0: q_positions0.to_vec(),
            q_rows: host.q_rows(),
            k_rows: host.k_rows(),
            max_q_len: q_lens.iter().copied().max().unwrap_or(0),
            q_offsets: DeviceBuffer::from_host(stream, &host.q_offsets)?,
            k_offsets: DeviceBuffer::from_host(stream, &host.k_offsets)?,
            positions0: DeviceBuffer::from_host(stream, &host.positions0)?,
        })
    }

    /// Makes this batch the one [`PrefillBatch::with_positions`] would make from the same
    /// arguments, reusing its device arrays (reallocated only when it had fewer sequences):
    /// the arrays' copies are queued on `stream`, ordered after the work queued there before,
    /// so a decoder keeps one batch for every prefill chunk instead of allocating (and, on
    /// CUDA, synchronising the device to free) one per chunk. Work on other streams that reads
    /// the old contents must have finished. Checked as `with_positions` is; on an error the
    /// batch is unchanged.
    pub fn refill(
        &mut self,
        stream: &Stream,
        q_lens: &[usize],
        k_lens: &[usize],
        q_positions0: &[usize],
    ) -> Result<()> {
        let host = BatchHost::new(q_lens, k_lens, q_positions0)?;
        if host.positions0.len() > self.positions0.len() {
            *self = Self::with_positions(stream, q_lens, k_lens, q_positions0)?;
            return Ok(());
        }
        let n = host.q_offsets.len();
        self.q_offsets
            .slice_mut(..n)?
            .copy_from_host(stream, &host.q_offsets)?;
        self.k_offsets
            .slice_mut(..n)?
            .copy_from_host(stream, &host.k_offsets)?;
        self.positions0
            .slice_mut(..n - 1)?
            .copy_from_host(stream, &host.positions0)?;
        self.q_rows = host.q_rows();
        self.k_rows = host.k_rows();
        self.max_q_len = q_lens.iter().copied().max().unwrap_or(0);
        self.q_lens = q_lens.to_vec();
        self.k_lens = k_lens.to_vec();
        self.q_positions0 = q_positions0.to_vec();
        Ok(())
    }

    /// Number of sequences.
    pub fn sequences(&self) -> usize {
        self.q_lens.len()
    }

    /// Query rows per sequence.
    pub fn q_lens(&self) -> &[usize] {
        &self.q_lens
    }

    /// Key rows per sequence.
    pub fn k_lens(&self) -> &[usize] {
        &self.k_lens
    }

    /// Position of every sequence's first query row.
    pub fn q_positions0(&self) -> &[usize] {
        &self.q_positions0
    }

    /// Query rows of the whole batch (rows of `q` and `out`).
    pub fn q_rows(&self) -> usize {
        self.q_rows
    }

    /// Key rows of the whole batch (rows of `k` and `v`).
    pub fn k_rows(&self) -> usize {
        self.k_rows
    }

    /// The longest sequence's query rows.
    pub fn max_q_len(&self) -> usize {
        self.max_q_len
    }

    /// The device holding the offset arrays.
    pub fn device(&self) -> &Device {
        self.q_offsets.device()
    }

    /// Checks that every query's visible keys exist: causal needs keys up to the last query's
    /// position, the staggered cross mask up to the one before it.
    fn check_keys_cover(&self, mask: PrefillMask) -> Result<()> {
        let needs_own = matches!(
            mask,
            PrefillMask::Causal | PrefillMask::SlidingCausal { .. }
        );
        for (b, ((&nq, &nk), &p0)) in self
            .q_lens
            .iter()
            .zip(&self.k_lens)
            .zip(&self.q_positions0)
            .enumerate()
        {
            if nq == 0 {
                continue;
            }
            // Positions p0 .. p0 + nq - 1; causal reads keys up to the last position, cross up
            // to the one before.
            let needed = if needs_own { p0 + nq } else { p0 + nq - 1 };
            if nk < needed {
                return Err(DeviceError::invalid(
                    "batch",
                    format!(
                        "sequence {b}: {nq} queries from position {p0} need {needed} key rows \
                         under the {} mask, the batch has {nk}",
                        mask.name()
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for PrefillBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefillBatch")
            .field("q_lens", &self.q_lens)
            .field("k_lens", &self.k_lens)
            .field("q_positions0", &self.q_positions0)
            .field("device", &self.device().name())
            .finish()
    }
}

/// Exclusive prefix sums of `lens` as i32 row offsets (`lens.len() + 1` entries).
/// A batch's device arrays as the host computes them, after every check.
struct BatchHost {
    q_offsets: Vec<i32>,
    k_offsets: Vec<i32>,
    positions0: Vec<i32>,
}

impl BatchHost {
    fn new(q_lens: &[usize], k_lens: &[usize], q_positions0: &[usize]) -> Result<Self> {
        let sequences = q_lens.len();
        if sequences > MAX_SEQUENCES {
            return Err(DeviceError::invalid(
                "q_lens",
                format!("{sequences} sequences, at most {MAX_SEQUENCES} per batch"),
            ));
        }
        for (arg, found) in [
            ("k_lens", k_lens.len()),
            ("q_positions0", q_positions0.len()),
        ] {
            if found != sequences {
                return Err(DeviceError::LengthMismatch {
                    arg,
                    expected: sequences,
                    found,
                });
            }
        }
        let q_offsets = offsets("q_lens", q_lens)?;
        let k_offsets = offsets("k_lens", k_lens)?;
        let mut positions0 = Vec::with_capacity(sequences);
        for (b, (&p0, &n)) in q_positions0.iter().zip(q_lens).enumerate() {
            // Every query position of the sequence must be an i32.
            let last = p0.checked_add(n).filter(|&end| end <= i32::MAX as usize);
            if last.is_none() {
                return Err(DeviceError::invalid(
                    "q_positions0",
                    format!("sequence {b}: positions {p0} + {n} rows exceed 2^31 - 1"),
                ));
            }
            positions0.push(p0 as i32);
        }
        Ok(BatchHost {
            q_offsets,
            k_offsets,
            positions0,
        })
    }

    fn q_rows(&self) -> usize {
        *self.q_offsets.last().unwrap_or(&0) as usize
    }

    fn k_rows(&self) -> usize {
        *self.k_offsets.last().unwrap_or(&0) as usize
    }
}

fn offsets(arg: &'static str, lens: &[usize]) -> Result<Vec<i32>> {
    let mut out = Vec::with_capacity(lens.len() + 1);
    let mut total = 0usize;
    out.push(0);
    for &n in lens {
        total = total
            .checked_add(n)
            .filter(|&t| t <= i32::MAX as usize)
            .ok_or_else(|| DeviceError::invalid(arg, "the rows of the batch exceed 2^31 - 1"))?;
        out.push(total as i32);
    }
    Ok(out)
}

/// Elements between the starts of consecutive rows of each tensor; each must fit a `u32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowStrides {
    /// Of `q`: at least `heads · head_dim` (the rows must not overlap).
    pub q: usize,
    /// Of `k`: at least `kv_heads · head_dim` (unused by [`attention_prefill_cached`]).
    pub k: usize,
    /// Of `v`: at least `kv_heads · head_dim` (unused by [`attention_prefill_cached`]).
    pub v: usize,
    /// Of `out`: at least `heads · head_dim`.
    pub out: usize,
}

impl RowStrides {
    /// Separate, densely packed tensors: `heads × head_dim` (q, out) and
    /// `kv_heads × head_dim` (k, v) elements per row (saturating, as [`HeadShape::q_dim`]).
    pub fn packed(shape: HeadShape) -> Self {
        let q = shape.q_dim();
        let kv = shape.kv_dim();
        RowStrides {
            q,
            k: kv,
            v: kv,
            out: q,
        }
    }
}

/// Which keys a query sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefillMask {
    /// Query position `i` sees keys `0..=i`.
    Causal,
    /// Query position `i` sees keys `max(0, i − W + 1) ..= i` (`window` = W ≥ 1).
    SlidingCausal {
        /// W: keys each query sees, its own included.
        window: usize,
    },
    /// Query position `i` sees memory positions `max(0, i − W) ..= i − 1`; `window: None` is
    /// unbounded. `Some(0)` is rejected.
    StaggeredCross {
        /// W: memory positions each query sees; `None` is unbounded.
        window: Option<usize>,
    },
}

impl PrefillMask {
    fn name(self) -> &'static str {
        match self {
            PrefillMask::Causal => "causal",
            PrefillMask::SlidingCausal { .. } => "sliding-window causal",
            PrefillMask::StaggeredCross { .. } => "staggered cross",
        }
    }
}

/// Everything about one prefill attention call except its tensors and batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrefillConfig {
    /// The heads of q, k, v and out (`kv_heads` divides `heads`; `head_dim` 1 ..=
    /// [`MAX_HEAD_DIM`]).
    pub shape: HeadShape,
    /// Elements between consecutive rows of each tensor.
    pub strides: RowStrides,
    /// Which keys each query sees.
    pub mask: PrefillMask,
    /// Multiplies q·k; finite and > 0 (usually `1 / sqrt(head_dim)`).
    pub scale: f32,
}

impl PrefillConfig {
    /// Packed tensors ([`RowStrides::packed`]) and scale `1 / sqrt(head_dim)`.
    pub fn packed(shape: HeadShape, mask: PrefillMask) -> Self {
        PrefillConfig {
            shape,
            strides: RowStrides::packed(shape),
            mask,
            scale: (1.0 / (shape.head_dim.max(1) as f64).sqrt()) as f32,
        }
    }
}

/// Attention of every query row of `batch` over its sequence's visible keys:
/// `out = softmax(scale · q·kᵀ + mask) · v`, per query head (see the module docs for the layout),
/// on the [`PrefillKernel::Auto`] kernel (tensor cores for bf16).
///
/// `q`/`out` hold `batch.q_rows()` rows and `k`/`v` `batch.k_rows()` rows at the strides of
/// `cfg`; each view must reach the last row's last element used (`(rows − 1) · stride + width`
/// elements at least). Rows not owned by any sequence do not exist: the row counts are the
/// batch's. Errors name the argument; nothing is launched on an error.
pub fn attention_prefill<T: PrefillElem>(
    stream: &Stream,
    batch: &PrefillBatch,
    q: &impl AsDeviceView<T>,
    k: &impl AsDeviceView<T>,
    v: &impl AsDeviceView<T>,
    out: &mut impl AsDeviceViewMut<T>,
    cfg: &PrefillConfig,
) -> Result<()> {
    attention_prefill_with(stream, batch, q, k, v, out, cfg, PrefillKernel::Auto)
}

/// Checks the shape, mask, scale and the q/out views; `k_width`-independent parts only.
fn check_common(
    batch: &PrefillBatch,
    q_len: usize,
    out_len: usize,
    cfg: &PrefillConfig,
) -> Result<(u32, u32, u32, u32)> {
    let HeadShape {
        heads, head_dim, ..
    } = cfg.shape;
    check_heads(cfg.shape)?;
    let checked_window = |w: usize| {
        u32::try_from(w).ok().filter(|&w| w >= 1).ok_or_else(|| {
            DeviceError::invalid(
                "window",
                format!("{w} must be 1 ..= 2^32 - 1 (None for unbounded)"),
            )
        })
    };
    let (mode, window) = match cfg.mask {
        PrefillMask::Causal => (STAG_ATTN_SELF, 0u32),
        PrefillMask::SlidingCausal { window } => (STAG_ATTN_SELF, checked_window(window)?),
        PrefillMask::StaggeredCross { window: None } => (STAG_ATTN_CROSS, 0),
        PrefillMask::StaggeredCross { window: Some(w) } => (STAG_ATTN_CROSS, checked_window(w)?),
    };
    if !(cfg.scale.is_finite() && cfg.scale > 0.0) {
        return Err(DeviceError::invalid(
            "scale",
            format!("{} must be finite and > 0", cfg.scale),
        ));
    }
    let q_width = heads * head_dim;
    let q_stride = check_stride("q_row_stride", cfg.strides.q, q_width)?;
    let out_stride = check_stride("out_row_stride", cfg.strides.out, q_width)?;
    check_extent("q", q_len, batch.q_rows, cfg.strides.q, q_width)?;
    check_extent("out", out_len, batch.q_rows, cfg.strides.out, q_width)?;
    Ok((mode, window, q_stride, out_stride))
}

/// Blocks along grid x: query tiles of the longest sequence (None when they overflow).
fn query_tiles(batch: &PrefillBatch, group: usize, items_per_block: usize) -> Result<usize> {
    batch
        .max_q_len
        .checked_mul(group)
        .map(|items| items.div_ceil(items_per_block))
        .filter(|&t| t <= i32::MAX as usize)
        .ok_or_else(|| DeviceError::overflow("batch", "query tiles of the longest sequence"))
}

/// [`attention_prefill`] on a chosen kernel. [`PrefillKernel::TensorCore`] takes bf16 only
/// (an f32 call is [`DeviceError::UnsupportedDTypes`]; [`PrefillKernel::Auto`] never fails
/// that way).
#[allow(clippy::too_many_arguments)]
pub fn attention_prefill_with<T: PrefillElem>(
    stream: &Stream,
    batch: &PrefillBatch,
    q: &impl AsDeviceView<T>,
    k: &impl AsDeviceView<T>,
    v: &impl AsDeviceView<T>,
    out: &mut impl AsDeviceViewMut<T>,
    cfg: &PrefillConfig,
    kernel: PrefillKernel,
) -> Result<()> {
    let (q, k, v, mut out) = (q.view(), k.view(), v.view(), out.view_mut());
    let kernel = kernel.resolve::<T>()?;
    let (mode, window, q_stride, out_stride) = check_common(batch, q.len(), out.len(), cfg)?;
    let HeadShape {
        heads,
        kv_heads,
        head_dim,
    } = cfg.shape;
    let kv_width = kv_heads * head_dim;
    let k_stride = check_stride("k_row_stride", cfg.strides.k, kv_width)?;
    let v_stride = check_stride("v_row_stride", cfg.strides.v, kv_width)?;
    check_extent("k", k.len(), batch.k_rows, cfg.strides.k, kv_width)?;
    check_extent("v", v.len(), batch.k_rows, cfg.strides.v, kv_width)?;
    batch.check_keys_cover(cfg.mask)?;
    let group = heads / kv_heads;
    let retained = [
        q.retain("q"),
        k.retain("k"),
        v.retain("v"),
        out.retain("out"),
        batch.q_offsets.view().retain("batch"),
        batch.k_offsets.view().retain("batch"),
        batch.positions0.view().retain("batch"),
    ];

    if kernel == PrefillKernel::TensorCore {
        let tiles = query_tiles(batch, group, MMA_BLOCK_ITEMS)?;
        if tiles == 0 {
            return Ok(());
        }
        let (kern, tile_dim) = mma_kernel_for(head_dim);
        let params = AttentionPrefillMmaParams {
            q: q.as_ptr(),
            k: k.as_ptr(),
            v: v.as_ptr(),
            out: out.as_mut_ptr(),
            q_offsets: batch.q_offsets.view().as_ptr().cast(),
            k_offsets: batch.k_offsets.view().as_ptr().cast(),
            q_positions0: batch.positions0.view().as_ptr().cast(),
            q_slots: std::ptr::null(),
            cache_seq_stride: 0,
            cache_head_stride: 0,
            sequences: batch.sequences() as u32,
            heads: heads as u32,
            kv_heads: kv_heads as u32,
            head_dim: head_dim as u32,
            q_row_stride: q_stride,
            k_row_stride: k_stride,
            v_row_stride: v_stride,
            out_row_stride: out_stride,
            mode,
            window,
            scale: cfg.scale,
            q_rows: batch.q_rows as u32,
            k_rows: batch.k_rows as u32,
            kv_source: STAG_KV_PACKED,
            cache_ring: 0,
            cache_slots: 0,
            cache_seqs: 0,
            reserved: 0,
            paging: StagKvPaging::default(),
        };
        let launch = LaunchConfig {
            grid: [tiles as u32, kv_heads as u32, batch.sequences() as u32],
            block: [MMA_THREADS, 1, 1],
            dynamic_smem_bytes: mma_smem_bytes(tile_dim),
        };
        // SAFETY: as for the SIMT launch below (same views, extents and batch arrays, the same
        // clamping of rows in the kernel); `q_slots` is null and unused with packed keys.
        return unsafe { stream.launch(kern, launch, params, &retained) };
    }

    let tiles = query_tiles(batch, group, BLOCK_ITEMS)?;
    if tiles == 0 {
        return Ok(());
    }
    let params = AttentionPrefillParams {
        q: q.as_ptr(),
        k: k.as_ptr(),
        v: v.as_ptr(),
        out: out.as_mut_ptr(),
        q_offsets: batch.q_offsets.view().as_ptr().cast(),
        k_offsets: batch.k_offsets.view().as_ptr().cast(),
        q_positions0: batch.positions0.view().as_ptr().cast(),
        sequences: batch.sequences() as u32,
        heads: heads as u32,
        kv_heads: kv_heads as u32,
        head_dim: head_dim as u32,
        q_row_stride: q_stride,
        k_row_stride: k_stride,
        v_row_stride: v_stride,
        out_row_stride: out_stride,
        mode,
        window,
        scale: cfg.scale,
        q_rows: batch.q_rows as u32,
        k_rows: batch.k_rows as u32,
        reserved: 0,
    };
    let launch = LaunchConfig {
        grid: [tiles as u32, kv_heads as u32, batch.sequences() as u32],
        block: [THREADS, 1, 1],
        dynamic_smem_bytes: smem_bytes(head_dim),
    };
    // SAFETY: the views are retained above. `q`/`out` reach `(q_rows − 1) · stride + heads ·
    // head_dim` elements and `k`/`v` the same for `k_rows` rows and `kv_heads · head_dim`
    // (checked), and the kernel clamps every row it touches into `q_rows` / `k_rows`. The
    // offset arrays hold `sequences + 1` entries (the position array `sequences`), written from
    // validated host values by this batch, which never hands them out mutably; the kernel reads
    // only entries `b` and `b + 1` for `b < sequences`. `out` is borrowed mutably, so no safe
    // code can alias it with the inputs, and a stride of at least the row width keeps its rows
    // from overlapping each other.
    unsafe { stream.launch(kernel_for::<T>(head_dim), launch, params, &retained) }
}

/// The keys of a prefill read from a self-attention KV cache (the one `rope_append` fills).
pub struct CacheKeys<'a, T: DeviceElem> {
    /// The key cache, `layout.required_len()` elements or more.
    pub k: DeviceView<'a, T>,
    /// The value cache, laid out as `k`.
    pub v: DeviceView<'a, T>,
    /// The caches' layout; a ring holds position `j` in slot `j mod slots`.
    pub layout: KvCacheLayout,
    /// The cache sequence of every query row (`batch.q_rows()` entries, as `rope_append`
    /// takes them). The kernel reads the entry of each sequence's first row: every row of a
    /// sequence must name the same cache sequence (values are clamped into the cache).
    pub seq_slots: DeviceView<'a, i32>,
    /// The block table of a paged `layout` (`None` for a dense one); keys whose slot has no
    /// page are absent.
    pub block_table: Option<BlockTable<'a>>,
}

/// Self-attention of a prompt (or a chunk of one) over a KV cache, on tensor cores (bf16
/// only): the query rows of `batch` (sequence `b`'s first at position `q_positions0[b]`) attend
/// to the cache positions the causal or sliding-window mask shows them, which must already be
/// in the cache (append the rows first; earlier chunks' positions are read from the cache too).
/// The batch's key lengths are not used; `cfg.strides.k` / `.v` neither. `mask` must be a self
/// mask. A dense cache must hold every position up to the last query's; a ring cache needs a
/// sliding window with `q_len + window − 1 ≤ slots` per sequence, so that no position a row of
/// the call sees was overwritten by a later row of the same call.
pub fn attention_prefill_cached<T: PrefillElem>(
    stream: &Stream,
    batch: &PrefillBatch,
    q: &impl AsDeviceView<T>,
    keys: &CacheKeys<'_, T>,
    out: &mut impl AsDeviceViewMut<T>,
    cfg: &PrefillConfig,
) -> Result<()> {
    let (q, mut out) = (q.view(), out.view_mut());
    PrefillKernel::TensorCore.resolve::<T>()?;
    let (mode, window, q_stride, out_stride) = check_common(batch, q.len(), out.len(), cfg)?;
    let HeadShape {
        heads,
        kv_heads,
        head_dim,
    } = cfg.shape;
    let layout = keys.layout;
    let need = check_layout(&layout, None)?;
    let (paging, table_retained) = paging_params(
        layout.paged,
        keys.block_table.as_ref(),
        layout.seqs,
        layout.slots,
    )?;
    if layout.kv_heads != kv_heads || layout.head_dim != head_dim {
        return Err(DeviceError::ShapeMismatch {
            arg: "cache",
            expected: format!("{kv_heads} kv heads of dim {head_dim}"),
            found: format!("{} kv heads of dim {}", layout.kv_heads, layout.head_dim),
        });
    }
    for (arg, len) in [("k_cache", keys.k.len()), ("v_cache", keys.v.len())] {
        if len < need {
            return Err(DeviceError::LengthMismatch {
                arg,
                expected: need,
                found: len,
            });
        }
    }
    if keys.seq_slots.len() < batch.q_rows {
        return Err(DeviceError::LengthMismatch {
            arg: "seq_slots",
            expected: batch.q_rows,
            found: keys.seq_slots.len(),
        });
    }
    let sliding = match cfg.mask {
        PrefillMask::Causal => None,
        PrefillMask::SlidingCausal { window } => Some(window),
        PrefillMask::StaggeredCross { .. } => {
            return Err(DeviceError::invalid(
                "mask",
                "keys from a self-attention cache take a self mask",
            ))
        }
    };
    for (b, (&nq, &p0)) in batch.q_lens.iter().zip(&batch.q_positions0).enumerate() {
        if nq == 0 {
            continue;
        }
        // Positions below `slots` never wrap; past them only a window short enough that no
        // row sees a slot a later row of the call overwrote.
        let below = p0.checked_add(nq).is_some_and(|end| end <= layout.slots);
        let fits = below
            || (layout.ring
                && sliding
                    .is_some_and(|w| nq.checked_add(w).is_some_and(|n| n - 1 <= layout.slots)));
        if !fits {
            return Err(DeviceError::invalid(
                "batch",
                format!(
                    "sequence {b}: {nq} queries from position {p0} do not fit a {} cache of {} \
                     slots under the {} mask",
                    if layout.ring { "ring" } else { "dense" },
                    layout.slots,
                    cfg.mask.name()
                ),
            ));
        }
    }
    let group = heads / kv_heads;
    let tiles = query_tiles(batch, group, MMA_BLOCK_ITEMS)?;
    if tiles == 0 {
        return Ok(());
    }
    let (kern, tile_dim) = mma_kernel_for(head_dim);
    let params = AttentionPrefillMmaParams {
        q: q.as_ptr(),
        k: keys.k.as_ptr(),
        v: keys.v.as_ptr(),
        out: out.as_mut_ptr(),
        q_offsets: batch.q_offsets.view().as_ptr().cast(),
        k_offsets: std::ptr::null(),
        q_positions0: batch.positions0.view().as_ptr().cast(),
        q_slots: keys.seq_slots.as_ptr().cast(),
        cache_seq_stride: layout.seq_stride as u64,
        cache_head_stride: layout.head_stride as u64,
        sequences: batch.sequences() as u32,
        heads: heads as u32,
        kv_heads: kv_heads as u32,
        head_dim: head_dim as u32,
        q_row_stride: q_stride,
        k_row_stride: 0,
        v_row_stride: 0,
        out_row_stride: out_stride,
        mode,
        window,
        scale: cfg.scale,
        q_rows: batch.q_rows as u32,
        k_rows: 0,
        kv_source: STAG_KV_CACHE,
        cache_ring: layout.ring as u32,
        cache_slots: layout.slots as u32,
        cache_seqs: layout.seqs as u32,
        reserved: 0,
        paging,
    };
    let launch = LaunchConfig {
        grid: [tiles as u32, kv_heads as u32, batch.sequences() as u32],
        block: [MMA_THREADS, 1, 1],
        dynamic_smem_bytes: mma_smem_bytes(tile_dim),
    };
    let mut retained = vec![
        q.retain("q"),
        keys.k.retain("k_cache"),
        keys.v.retain("v_cache"),
        keys.seq_slots.retain("seq_slots"),
        out.retain("out"),
        batch.q_offsets.view().retain("batch"),
        batch.positions0.view().retain("batch"),
    ];
    retained.extend(table_retained);
    // SAFETY: the views are retained above. `q`/`out` reach their last row's last element
    // (checked). The caches hold `layout.required_len()` elements (checked), and the kernel
    // clamps the cache sequence it reads from `seq_slots` into `layout.seqs` and every cache
    // row into the slots (`pos mod slots` for a ring, positions below `slots` for a dense
    // cache), so every K/V read is inside the caches (paged: through a table of `seqs ·
    // stride` entries covering every slot, and only entries naming a page of the pool are
    // read through, both checked by `paging_params`). `seq_slots` holds at least `q_rows`
    // entries and the kernel reads only entries at clamped row offsets below `q_rows`. The
    // batch arrays are as for `attention_prefill`. `out` is borrowed mutably and does not alias
    // the inputs.
    unsafe { stream.launch(kern, launch, params, &retained) }
}

fn check_heads(shape: HeadShape) -> Result<()> {
    let HeadShape {
        heads,
        kv_heads,
        head_dim,
    } = shape;
    if head_dim == 0 || head_dim > MAX_HEAD_DIM {
        return Err(DeviceError::invalid(
            "head_dim",
            format!("{head_dim} must be 1 ..= {MAX_HEAD_DIM}"),
        ));
    }
    if kv_heads == 0 || kv_heads > MAX_KV_HEADS {
        return Err(DeviceError::invalid(
            "kv_heads",
            format!("{kv_heads} must be 1 ..= {MAX_KV_HEADS}"),
        ));
    }
    if heads == 0 || heads % kv_heads != 0 {
        return Err(DeviceError::invalid(
            "heads",
            format!("{heads} must be a positive multiple of kv_heads = {kv_heads}"),
        ));
    }
    heads
        .checked_mul(head_dim)
        .filter(|&w| w <= u32::MAX as usize)
        .ok_or_else(|| DeviceError::overflow("heads", "heads × head_dim exceeds u32"))?;
    Ok(())
}

fn check_stride(arg: &'static str, stride: usize, width: usize) -> Result<u32> {
    if stride < width {
        return Err(DeviceError::invalid(
            arg,
            format!("{stride} is less than the row width {width}"),
        ));
    }
    u32::try_from(stride).map_err(|_| DeviceError::invalid(arg, format!("{stride} exceeds u32")))
}

/// `len` must reach the last element used: `(rows − 1) · stride + width`.
fn check_extent(
    arg: &'static str,
    len: usize,
    rows: usize,
    stride: usize,
    width: usize,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let needed = (rows - 1)
        .checked_mul(stride)
        .and_then(|n| n.checked_add(width))
        .ok_or_else(|| DeviceError::overflow(arg, "rows × stride"))?;
    if len < needed {
        return Err(DeviceError::ShapeMismatch {
            arg,
            expected: format!(
                "at least {needed} elements ({rows} rows, stride {stride}, width {width})"
            ),
            found: format!("{len} elements"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_fits_the_device_limits() {
        // 64 and smaller stay within the default 48 KiB; 128 needs the opt-in (≤ 227 KiB).
        assert!(smem_bytes(64) <= 48 * 1024);
        assert!(smem_bytes(24) <= 48 * 1024);
        assert!(smem_bytes(MAX_HEAD_DIM) <= crate::device::EMU_MAX_DYNAMIC_SMEM_BYTES);
        assert_eq!(smem_bytes(128), 4 * (64 * 132 + 2 * 32 * 132 + 64 * 36));
        // Tensor cores: bf16 Q [64][hd + 8] and double-buffered K, V [2][64][hd + 8].
        assert_eq!(mma_smem_bytes(64), 46_080);
        assert_eq!(mma_smem_bytes(128), 87_040);
        assert!(mma_smem_bytes(128) <= crate::device::EMU_MAX_DYNAMIC_SMEM_BYTES);
        assert_eq!(mma_kernel_for(24).1, 64);
        assert_eq!(mma_kernel_for(65).1, 128);
    }

    #[test]
    fn tensor_cores_take_bf16_only_and_cached_keys_are_checked() {
        let dev = Device::emulated();
        let stream = dev.new_stream().unwrap();
        let shape = HeadShape {
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
        };
        let batch = PrefillBatch::with_positions(&stream, &[3], &[3], &[4]).unwrap();
        let cfg = PrefillConfig::packed(shape, PrefillMask::Causal);
        let q32 = DeviceBuffer::<f32>::alloc(&dev, 3 * 32).unwrap();
        let kv32 = DeviceBuffer::<f32>::alloc(&dev, 8 * 16).unwrap();
        let mut out32 = DeviceBuffer::<f32>::alloc(&dev, 3 * 32).unwrap();
        let f32_batch = PrefillBatch::new(&stream, &[3]).unwrap();
        let err = attention_prefill_with(
            &stream,
            &f32_batch,
            &q32,
            &kv32,
            &kv32,
            &mut out32,
            &cfg,
            PrefillKernel::TensorCore,
        )
        .unwrap_err();
        assert!(
            matches!(err, DeviceError::UnsupportedDTypes { .. }),
            "{err}"
        );

        let q = DeviceBuffer::<bf16>::alloc(&dev, 3 * 32).unwrap();
        let mut out = DeviceBuffer::<bf16>::alloc(&dev, 3 * 32).unwrap();
        let slots = DeviceBuffer::<i32>::from_host(&stream, &[0, 0, 0]).unwrap();
        let dense = KvCacheLayout::dense(1, 2, 8, 8);
        let cache = DeviceBuffer::<bf16>::alloc(&dev, dense.required_len().unwrap()).unwrap();
        let keys = |layout: KvCacheLayout| CacheKeys {
            k: cache.view(),
            v: cache.view(),
            layout,
            seq_slots: slots.view(),
            block_table: None,
        };
        let arg = |r: Result<()>| match r.unwrap_err() {
            DeviceError::InvalidArgument { arg, .. }
            | DeviceError::ShapeMismatch { arg, .. }
            | DeviceError::LengthMismatch { arg, .. } => arg,
            other => panic!("unexpected error {other}"),
        };
        let run =
            |keys: &CacheKeys<'_, bf16>, cfg: &PrefillConfig, out: &mut DeviceBuffer<bf16>| {
                attention_prefill_cached(&stream, &batch, &q, keys, out, cfg)
            };
        // Positions 4..7 fit 8 dense slots.
        run(&keys(dense), &cfg, &mut out).unwrap();
        let cross = PrefillConfig::packed(shape, PrefillMask::StaggeredCross { window: None });
        assert_eq!(arg(run(&keys(dense), &cross, &mut out)), "mask");
        // A ring of 4 slots: 3 rows at positions 4.. need a window of at most 2.
        let ring = KvCacheLayout::dense(1, 2, 4, 8).into_ring();
        assert_eq!(arg(run(&keys(ring), &cfg, &mut out)), "batch");
        let w3 = PrefillConfig::packed(shape, PrefillMask::SlidingCausal { window: 3 });
        assert_eq!(arg(run(&keys(ring), &w3, &mut out)), "batch");
        let w2 = PrefillConfig::packed(shape, PrefillMask::SlidingCausal { window: 2 });
        run(&keys(ring), &w2, &mut out).unwrap();
        // Positions up to 6 do not fit 6 dense slots; a cache of the wrong head count.
        let short = KvCacheLayout::dense(1, 2, 6, 8);
        assert_eq!(arg(run(&keys(short), &cfg, &mut out)), "batch");
        let heads = KvCacheLayout::dense(1, 1, 8, 8);
        assert_eq!(arg(run(&keys(heads), &cfg, &mut out)), "cache");
        let big = KvCacheLayout::dense(2, 2, 8, 8);
        assert_eq!(arg(run(&keys(big), &cfg, &mut out)), "k_cache");
        stream.synchronize().unwrap();
    }

    #[test]
    fn a_refilled_batch_equals_a_new_one() {
        let dev = Device::emulated();
        let stream = dev.new_stream().unwrap();
        let mut batch = PrefillBatch::with_positions(&stream, &[3, 2], &[5, 2], &[2, 0]).unwrap();
        let arrays = |b: &PrefillBatch| {
            let n = b.sequences();
            let q = b.q_offsets.to_host(&stream).unwrap()[..n + 1].to_vec();
            let k = b.k_offsets.to_host(&stream).unwrap()[..n + 1].to_vec();
            let p = b.positions0.to_host(&stream).unwrap()[..n].to_vec();
            (
                q,
                k,
                p,
                b.q_rows(),
                b.k_rows(),
                b.max_q_len(),
                b.q_lens().to_vec(),
            )
        };
        // Fewer sequences (the arrays reused), then more (reallocated).
        let cases: [(&[usize], &[usize], &[usize]); 3] = [
            (&[4], &[9], &[5]),
            (&[1, 1, 6], &[1, 3, 6], &[0, 2, 0]),
            (&[], &[], &[]),
        ];
        for (q, k, p) in cases {
            batch.refill(&stream, q, k, p).unwrap();
            let fresh = PrefillBatch::with_positions(&stream, q, k, p).unwrap();
            assert_eq!(arrays(&batch), arrays(&fresh), "{q:?}");
        }
        // A refused refill leaves the batch as it was.
        let before = arrays(&batch);
        assert!(batch.refill(&stream, &[1], &[1, 2], &[0]).is_err());
        assert_eq!(arrays(&batch), before);
    }

    #[test]
    fn offsets_are_prefix_sums() {
        assert_eq!(offsets("l", &[3, 0, 5]).unwrap(), vec![0, 3, 3, 8]);
        assert_eq!(offsets("l", &[]).unwrap(), vec![0]);
        assert!(offsets("l", &[i32::MAX as usize, 1]).is_err());
    }

    #[test]
    fn rejects_bad_shapes_before_launching() {
        let dev = Device::emulated();
        let stream = dev.new_stream().unwrap();
        let shape = HeadShape {
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
        };
        let batch = PrefillBatch::new(&stream, &[3, 2]).unwrap();
        assert_eq!(
            (batch.q_rows(), batch.k_rows(), batch.max_q_len()),
            (5, 5, 3)
        );
        let q = DeviceBuffer::<f32>::alloc(&dev, 5 * 32).unwrap();
        let kv = DeviceBuffer::<f32>::alloc(&dev, 5 * 16).unwrap();
        let mut out = DeviceBuffer::<f32>::alloc(&dev, 5 * 32).unwrap();
        let run = |cfg: PrefillConfig, out: &mut DeviceBuffer<f32>| {
            attention_prefill(&stream, &batch, &q, &kv, &kv, out, &cfg)
        };
        let ok = PrefillConfig::packed(shape, PrefillMask::Causal);
        let arg_of = |e: DeviceError| match e {
            DeviceError::InvalidArgument { arg, .. }
            | DeviceError::ShapeMismatch { arg, .. }
            | DeviceError::LengthMismatch { arg, .. } => arg,
            other => panic!("unexpected error {other}"),
        };
        let bad_heads = PrefillConfig {
            shape: HeadShape { heads: 3, ..shape },
            ..ok
        };
        assert_eq!(arg_of(run(bad_heads, &mut out).unwrap_err()), "heads");
        let bad_dim = PrefillConfig {
            shape: HeadShape {
                head_dim: 129,
                ..shape
            },
            ..ok
        };
        assert_eq!(arg_of(run(bad_dim, &mut out).unwrap_err()), "head_dim");
        let bad_window = PrefillConfig {
            mask: PrefillMask::StaggeredCross { window: Some(0) },
            ..ok
        };
        assert_eq!(arg_of(run(bad_window, &mut out).unwrap_err()), "window");
        let bad_scale = PrefillConfig {
            scale: f32::NAN,
            ..ok
        };
        assert_eq!(arg_of(run(bad_scale, &mut out).unwrap_err()), "scale");
        let bad_stride = PrefillConfig {
            strides: RowStrides {
                k: 15,
                ..ok.strides
            },
            ..ok
        };
        assert_eq!(
            arg_of(run(bad_stride, &mut out).unwrap_err()),
            "k_row_stride"
        );
        let mut short = DeviceBuffer::<f32>::alloc(&dev, 5 * 32 - 1).unwrap();
        assert_eq!(arg_of(run(ok, &mut short).unwrap_err()), "out");

        // Queries at positions 2 and 3 need 4 keys causally (3 under the cross mask); the
        // sequence has 3.
        let shifted = PrefillBatch::with_positions(&stream, &[2], &[3], &[2]).unwrap();
        let err = attention_prefill(&stream, &shifted, &q, &kv, &kv, &mut out, &ok).unwrap_err();
        assert_eq!(arg_of(err), "batch");
        let mismatched = PrefillBatch::with_positions(&stream, &[2], &[3, 1], &[0]).unwrap_err();
        assert_eq!(arg_of(mismatched), "k_lens");
        run(ok, &mut out).unwrap();
        stream.synchronize().unwrap();
    }
}
