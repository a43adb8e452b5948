//! Token embedding gather (`cuda/embedding.cu`): `out[r, :] = table[ids[r], :]`.
//!
//! The table is `[vocab, dim]` (f32 or bf16, see [`NormElem`]) and the output has the same
//! element type; rows are copied bit for bit. Token ids live on the device as `i32`. Ids that
//! came from the host are checked by [`embedding_from_host_ids`]; whatever device ids hold, the
//! kernel reads only rows of the table, and writes a row of zeros for an id outside
//! `[0, vocab)`.

use crate::device::kernel::{stag_kernel, Kernel, LaunchConfig};
use crate::device::{AsDeviceView, AsDeviceViewMut, Stream};
use crate::dtype::{DType, DeviceElem};
use crate::error::{DeviceError, Result};
use crate::ffi::EmbeddingParams;
use crate::ops::rmsnorm::NormElem;

stag_kernel!(static EMBEDDING_F32: EmbeddingParams = embedding_f32 in EMBEDDING);
stag_kernel!(static EMBEDDING_BF16: EmbeddingParams = embedding_bf16 in EMBEDDING);

/// Threads per block; must equal `THREADS` in `cuda/embedding.cu`.
const THREADS: usize = 256;
/// Sizes handed to the kernel stay below 2³¹, so its 32-bit index loops cannot wrap.
const MAX_EXTENT: usize = i32::MAX as usize;

fn kernel_for<T: NormElem>() -> &'static Kernel<EmbeddingParams> {
    match T::DTYPE {
        DType::BF16 => &EMBEDDING_BF16,
        // `NormElem` is implemented for f32 and bf16 only.
        _ => &EMBEDDING_F32,
    }
}

/// An embedding table of `vocab` rows of `dim` contiguous elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbeddingShape {
    /// Rows of the table: valid ids are `0..vocab`.
    pub vocab: usize,
    /// Elements per row (the model width).
    pub dim: usize,
}

/// `out[r, :] = table[ids[r], :]` for every `r < ids.len()`; `out` is `[ids.len(), dim]`.
///
/// The ids are not checked on the host (they are on the device); a row whose id lies outside
/// `[0, vocab)` becomes zeros.
pub fn embedding<T: NormElem>(
    stream: &Stream,
    ids: &impl AsDeviceView<i32>,
    table: &impl AsDeviceView<T>,
    out: &mut impl AsDeviceViewMut<T>,
    shape: EmbeddingShape,
) -> Result<()> {
    let (ids, table, mut out) = (ids.view(), table.view(), out.view_mut());
    let (vocab, dim) = check_shape(shape, table.len())?;
    let rows = check_out(ids.len(), out.len(), shape)?;
    if rows == 0 {
        return Ok(());
    }
    let params = EmbeddingParams {
        ids: ids.as_ptr().cast(),
        table: table.as_ptr(),
        out: out.as_mut_ptr(),
        rows,
        dim,
        vocab,
        out_row_stride: dim,
    };
    let retained = [ids.retain("ids"), table.retain("table"), out.retain("out")];
    // SAFETY: `ids` holds `rows` ids, `out` holds `rows × dim` elements and `table` holds
    // `vocab × dim` (all checked above); the kernel reads a table row only for an id in
    // `[0, vocab)` and writes only the `rows` output rows. `out` is borrowed mutably, so no
    // other safe code aliases it, and the views are retained until the kernel has run.
    unsafe {
        stream.launch(
            kernel_for::<T>(),
            launch_config::<T>(rows, shape.dim),
            params,
            &retained,
        )
    }
}

/// [`embedding`] for token ids held on the host: every id is checked against the vocabulary
/// (the error names the first bad index and id), then the ids are copied into the first
/// `ids.len()` elements of `ids_dev` in stream order, and the gather is queued.
///
/// `ids_dev` is a device staging area the caller keeps (so that no allocation happens per
/// call); it must hold at least `ids.len()` elements. Nothing is written when a check fails.
pub fn embedding_from_host_ids<T: NormElem>(
    stream: &Stream,
    ids: &[u32],
    ids_dev: &mut impl AsDeviceViewMut<i32>,
    table: &impl AsDeviceView<T>,
    out: &mut impl AsDeviceViewMut<T>,
    shape: EmbeddingShape,
) -> Result<()> {
    let (table, mut out) = (table.view(), out.view_mut());
    check_shape(shape, table.len())?;
    check_out(ids.len(), out.len(), shape)?;
    check_host_ids(ids, shape.vocab)?;
    let mut staging = ids_dev.view_mut();
    if staging.len() < ids.len() {
        return Err(DeviceError::LengthMismatch {
            arg: "ids_dev",
            expected: ids.len(),
            found: staging.len(),
        });
    }
    let mut staging = staging.slice_mut(..ids.len())?;
    // Every id is below `vocab ≤ i32::MAX` (checked), so the conversion is exact.
    let device_ids: Vec<i32> = ids.iter().map(|&id| id as i32).collect();
    staging.copy_from_host(stream, &device_ids)?;
    embedding(stream, &staging, &table, &mut out, shape)
}

/// Checks host token ids against the vocabulary size; the error names the first id that is not
/// below it, with its index.
pub fn check_host_ids(ids: &[u32], vocab: usize) -> Result<()> {
    match ids.iter().position(|&id| id as usize >= vocab) {
        None => Ok(()),
        Some(i) => Err(DeviceError::invalid(
            "ids",
            format!(
                "ids[{i}] = {} is not a token id: the vocabulary has {vocab} entries",
                ids[i]
            ),
        )),
    }
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

/// Validates the table shape against the table's length; returns (vocab, dim) for the kernel.
fn check_shape(shape: EmbeddingShape, table_len: usize) -> Result<(u32, u32)> {
    if shape.vocab == 0 {
        return Err(DeviceError::invalid("vocab", "must be at least 1"));
    }
    if shape.dim == 0 {
        return Err(DeviceError::invalid("dim", "must be at least 1"));
    }
    let vocab = extent("vocab", shape.vocab)?;
    let dim = extent("dim", shape.dim)?;
    let expected = shape
        .vocab
        .checked_mul(shape.dim)
        .ok_or_else(|| DeviceError::overflow("table", "vocab × dim"))?;
    if table_len != expected {
        return Err(DeviceError::ShapeMismatch {
            arg: "table",
            expected: format!("[{}, {}] = {expected} elements", shape.vocab, shape.dim),
            found: format!("{table_len} elements"),
        });
    }
    Ok((vocab, dim))
}

/// Validates the output length for `rows` ids; returns `rows` for the kernel.
fn check_out(rows: usize, out_len: usize, shape: EmbeddingShape) -> Result<u32> {
    let rows32 = extent("ids", rows)?;
    let expected = rows
        .checked_mul(shape.dim)
        .ok_or_else(|| DeviceError::overflow("out", "rows × dim"))?;
    if out_len != expected {
        return Err(DeviceError::LengthMismatch {
            arg: "out",
            expected,
            found: out_len,
        });
    }
    Ok(rows32)
}

/// One block row per token (grid.x), enough blocks along grid.y for one 16-byte vector per
/// thread.
fn launch_config<T: DeviceElem>(rows: u32, dim: usize) -> LaunchConfig {
    let per_vector = 16 / std::mem::size_of::<T>();
    let blocks_y = dim.div_ceil(per_vector * THREADS).clamp(1, 65_535);
    LaunchConfig {
        grid: [rows, blocks_y as u32, 1],
        block: [THREADS as u32, 1, 1],
        dynamic_smem_bytes: 0,
    }
}
