//! RMSNorm and the fused residual add + RMSNorm (`cuda/rmsnorm.cu`).
//!
//! `out = x / sqrt(mean(x²) + eps) · weight` for every row of `rows × dim` activations (f32 or
//! bf16, f32 weight; the sum of squares and the inverse RMS in f64, so any finite row gives the
//! reference's answer). The fused form writes `sum = x + residual` (rounded to the
//! activation type) and the norm of that rounded sum, in one pass over the row.

use half::bf16;

use crate::device::kernel::{stag_kernel, Kernel, LaunchConfig};
use crate::device::{AsDeviceView, AsDeviceViewMut, Stream};
use crate::dtype::{DType, DeviceElem};
use crate::error::{DeviceError, Result};
use crate::ffi::RmsNormParams;

stag_kernel!(static RMSNORM_F32: RmsNormParams = rmsnorm_f32 in RMSNORM);
stag_kernel!(static RMSNORM_BF16: RmsNormParams = rmsnorm_bf16 in RMSNORM);

/// Vectors (16 bytes) each thread keeps in registers; must equal `ITEMS` in `cuda/rmsnorm.cu`.
/// Must match `ITEMS` and `MAX_THREADS` in cuda/rmsnorm.cu.
const ITEMS_PER_THREAD: usize = 2;
const MAX_THREADS: usize = 512;

/// Activation types the norm kernels take: f32 and bf16.
pub trait NormElem: DeviceElem {}

impl NormElem for f32 {}
impl NormElem for bf16 {}

fn kernel_for<T: NormElem>() -> &'static Kernel<RmsNormParams> {
    match T::DTYPE {
        DType::BF16 => &RMSNORM_BF16,
        // `NormElem` is implemented for f32 and bf16 only.
        _ => &RMSNORM_F32,
    }
}

/// `rows` rows of `dim` contiguous elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    /// Number of rows (tokens).
    pub rows: usize,
    /// Elements per row (the width normed over).
    pub dim: usize,
}

/// `out = rmsnorm(x) · weight`, row by row.
pub fn rmsnorm<T: NormElem>(
    stream: &Stream,
    x: &impl AsDeviceView<T>,
    weight: &impl AsDeviceView<f32>,
    out: &mut impl AsDeviceViewMut<T>,
    shape: Rows,
    eps: f32,
) -> Result<()> {
    let (x, weight, mut out) = (x.view(), weight.view(), out.view_mut());
    let (rows, dim) = check_shape(shape, eps)?;
    check_len("x", x.len(), shape)?;
    check_len("out", out.len(), shape)?;
    check_weight(weight.len(), shape)?;
    if rows == 0 {
        return Ok(());
    }
    let params = RmsNormParams {
        x: x.as_ptr(),
        residual: std::ptr::null(),
        sum_out: std::ptr::null_mut(),
        out: out.as_mut_ptr(),
        weight: weight.as_ptr().cast(),
        rows,
        dim,
        x_row_stride: dim,
        residual_row_stride: 0,
        sum_row_stride: 0,
        out_row_stride: dim,
        eps,
        reserved: 0,
    };
    let retained = [x.retain("x"), weight.retain("weight"), out.retain("out")];
    // SAFETY: every pointer in `params` comes from a view retained above whose length was
    // checked to cover `rows × dim` elements (`dim` for the weight); the kernel reads and writes
    // nothing beyond those rows; `out` is borrowed mutably, so no other safe code can alias it.
    unsafe {
        stream.launch(
            kernel_for::<T>(),
            launch_config::<T>(shape),
            params,
            &retained,
        )
    }
}

/// `sum = x + residual`; `out = rmsnorm(sum) · weight`, row by row, in one pass.
#[allow(clippy::too_many_arguments)]
pub fn add_rmsnorm<T: NormElem>(
    stream: &Stream,
    x: &impl AsDeviceView<T>,
    residual: &impl AsDeviceView<T>,
    weight: &impl AsDeviceView<f32>,
    sum: &mut impl AsDeviceViewMut<T>,
    out: &mut impl AsDeviceViewMut<T>,
    shape: Rows,
    eps: f32,
) -> Result<()> {
    let (x, residual, weight) = (x.view(), residual.view(), weight.view());
    let (mut sum, mut out) = (sum.view_mut(), out.view_mut());
    let (rows, dim) = check_shape(shape, eps)?;
    check_len("x", x.len(), shape)?;
    check_len("residual", residual.len(), shape)?;
    check_len("sum", sum.len(), shape)?;
    check_len("out", out.len(), shape)?;
    check_weight(weight.len(), shape)?;
    if rows == 0 {
        return Ok(());
    }
    let params = RmsNormParams {
        x: x.as_ptr(),
        residual: residual.as_ptr(),
        sum_out: sum.as_mut_ptr(),
        out: out.as_mut_ptr(),
        weight: weight.as_ptr().cast(),
        rows,
        dim,
        x_row_stride: dim,
        residual_row_stride: dim,
        sum_row_stride: dim,
        out_row_stride: dim,
        eps,
        reserved: 0,
    };
    let retained = [
        x.retain("x"),
        residual.retain("residual"),
        weight.retain("weight"),
        sum.retain("sum"),
        out.retain("out"),
    ];
    // SAFETY: as in `rmsnorm`; `sum` and `out` are distinct mutable borrows, so the kernel's
    // two outputs cannot overlap each other or the inputs.
    unsafe {
        stream.launch(
            kernel_for::<T>(),
            launch_config::<T>(shape),
            params,
            &retained,
        )
    }
}

fn check_shape(shape: Rows, eps: f32) -> Result<(u32, u32)> {
    if shape.dim == 0 {
        return Err(DeviceError::invalid("dim", "must be at least 1"));
    }
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(DeviceError::invalid(
            "eps",
            format!("{eps} must be finite and > 0"),
        ));
    }
    let rows = u32::try_from(shape.rows)
        .ok()
        .filter(|&r| r <= i32::MAX as u32)
        .ok_or_else(|| DeviceError::invalid("rows", format!("{} exceeds 2^31 - 1", shape.rows)))?;
    let dim = u32::try_from(shape.dim)
        .map_err(|_| DeviceError::invalid("dim", format!("{} exceeds u32", shape.dim)))?;
    shape
        .rows
        .checked_mul(shape.dim)
        .filter(|&n| n <= u32::MAX as usize * 2)
        .ok_or_else(|| DeviceError::overflow("rows", "rows × dim"))?;
    Ok((rows, dim))
}

fn check_len(arg: &'static str, found: usize, shape: Rows) -> Result<()> {
    let expected = shape.rows * shape.dim;
    if found != expected {
        return Err(DeviceError::LengthMismatch {
            arg,
            expected,
            found,
        });
    }
    Ok(())
}

fn check_weight(found: usize, shape: Rows) -> Result<()> {
    if found != shape.dim {
        return Err(DeviceError::LengthMismatch {
            arg: "weight",
            expected: shape.dim,
            found,
        });
    }
    Ok(())
}

/// One block per row, sized so each thread holds at most `ITEMS_PER_THREAD` vectors.
fn launch_config<T: DeviceElem>(shape: Rows) -> LaunchConfig {
    let per_vector = 16 / std::mem::size_of::<T>();
    let per_thread = ITEMS_PER_THREAD * per_vector;
    let threads = shape
        .dim
        .div_ceil(per_thread)
        .next_multiple_of(32)
        .clamp(32, MAX_THREADS);
    LaunchConfig::linear(shape.rows as u32, threads as u32, 0)
}
