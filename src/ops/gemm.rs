//! Dense products of activations with weight matrices: `Y = α·X·Wᵀ + β·Y`.
//!
//! All tensors are row-major: `X` is `[M, K]`, `W` is `[N, K]` (as weights are stored in
//! checkpoints: one row per output feature) and `Y` is `[M, N]`. Supported element types
//! `(x, w, y)`: `(f32, f32, f32)`, `(bf16, bf16, bf16)`, `(bf16, bf16, f32)` and
//! `(f16, f16, f16)`.
//!
//! Rounding contract, on both backends: inputs are converted exactly to f32, products are
//! accumulated in f32, and `α·acc + β·y` is computed in f32 and rounded once (to nearest even)
//! to the output type. When `β = 0`, `Y` is not read (it may hold NaN).
//!
//! On CUDA this is cuBLAS (`cublasGemmEx` / `cublasGemmStridedBatchedEx` with
//! `CUBLAS_COMPUTE_32F`) on the stream's own handle and workspace, so calls can be captured
//! into a CUDA graph. Under emulation it is a multithreaded CPU GEMM queued on the stream like
//! a kernel.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::{result as blas_result, sys as blas_sys};
use half::{bf16, f16};

use crate::device::{AsDeviceView, AsDeviceViewMut, Backend, NodeKind, Stream, StreamBackend};
use crate::dtype::{DType, DeviceElem};
use crate::error::{DeviceError, Result};

/// Matrix dimensions of a product: `X` is `[m, k]`, `W` is `[n, k]`, `Y` is `[m, n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmShape {
    /// Rows of `X` and `Y` (tokens).
    pub m: usize,
    /// Rows of `W`, columns of `Y` (output features).
    pub n: usize,
    /// Columns of `X` and `W` (input features).
    pub k: usize,
}

impl GemmShape {
    /// `[m, k] × [n, k]ᵀ → [m, n]`.
    pub const fn new(m: usize, n: usize, k: usize) -> Self {
        GemmShape { m, n, k }
    }
}

/// Scalars and row strides of a product. The default is `α = 1`, `β = 0` and dense rows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearOptions {
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the previous `Y`; `0` means `Y` is only written.
    pub beta: f32,
    /// Elements between consecutive rows of `X` (default `k`; at least `k`).
    pub x_row_stride: Option<usize>,
    /// Elements between consecutive rows of `W` (default `k`; at least `k`).
    pub w_row_stride: Option<usize>,
    /// Elements between consecutive rows of `Y` (default `n`; at least `n`).
    pub y_row_stride: Option<usize>,
}

impl Default for LinearOptions {
    fn default() -> Self {
        LinearOptions {
            alpha: 1.0,
            beta: 0.0,
            x_row_stride: None,
            w_row_stride: None,
            y_row_stride: None,
        }
    }
}

/// A batch of products: matrix `b` of each operand starts `b * stride` elements after the
/// operand's start. A stride of 0 shares one matrix across the batch (not allowed for `y`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchStrides {
    /// Products in the batch.
    pub count: usize,
    /// Elements from one `X` to the next (0: one `X` for all).
    pub x: usize,
    /// Elements from one `W` to the next (0: one `W` for all).
    pub w: usize,
    /// Elements from one `Y` to the next (non-zero, so the outputs do not overlap).
    pub y: usize,
}

const SUPPORTED: &str = "(f32, f32, f32), (bf16, bf16, bf16), (bf16, bf16, f32), (f16, f16, f16)";

/// Floating-point element types a product handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fp {
    F32,
    BF16,
    F16,
}

impl Fp {
    fn size(self) -> usize {
        match self {
            Fp::F32 => 4,
            Fp::BF16 | Fp::F16 => 2,
        }
    }

    fn cuda(self) -> blas_sys::cudaDataType {
        match self {
            Fp::F32 => blas_sys::cudaDataType::CUDA_R_32F,
            Fp::BF16 => blas_sys::cudaDataType::CUDA_R_16BF,
            Fp::F16 => blas_sys::cudaDataType::CUDA_R_16F,
        }
    }
}

/// A validated product.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Plan {
    m: usize,
    n: usize,
    k: usize,
    /// Row strides, at least 1 (cuBLAS requires positive leading dimensions).
    ldx: usize,
    ldw: usize,
    ldy: usize,
    count: usize,
    sx: usize,
    sw: usize,
    sy: usize,
    alpha: f32,
    beta: f32,
    tx: Fp,
    tw: Fp,
    ty: Fp,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.count == 0 || self.m == 0 || self.n == 0
    }
}

fn dtypes(x: DType, w: DType, y: DType) -> Result<(Fp, Fp, Fp)> {
    match (x, w, y) {
        (DType::F32, DType::F32, DType::F32) => Ok((Fp::F32, Fp::F32, Fp::F32)),
        (DType::BF16, DType::BF16, DType::BF16) => Ok((Fp::BF16, Fp::BF16, Fp::BF16)),
        (DType::BF16, DType::BF16, DType::F32) => Ok((Fp::BF16, Fp::BF16, Fp::F32)),
        (DType::F16, DType::F16, DType::F16) => Ok((Fp::F16, Fp::F16, Fp::F16)),
        _ => Err(DeviceError::UnsupportedDTypes {
            op: "linear",
            found: format!("(x: {x}, w: {w}, y: {y})"),
            supported: SUPPORTED,
        }),
    }
}

/// One operand's layout, for validation.
struct Operand {
    arg: &'static str,
    stride_arg: &'static str,
    batch_arg: &'static str,
    rows: usize,
    cols: usize,
    row_stride: Option<usize>,
    batch_stride: usize,
    len: usize,
}

impl Operand {
    /// Checks the row stride and that the operand covers its extent; returns the row stride.
    fn check(&self, count: usize, batched: bool) -> Result<usize> {
        let ld = self.row_stride.unwrap_or(self.cols);
        if ld < self.cols {
            return Err(DeviceError::invalid(
                self.stride_arg,
                format!("row stride {ld} is less than the row length {}", self.cols),
            ));
        }
        let overflow = || DeviceError::overflow(self.arg, "extent does not fit in usize");
        let need = if count == 0 || self.rows == 0 || self.cols == 0 {
            0
        } else {
            let last_batch = (count - 1)
                .checked_mul(self.batch_stride)
                .ok_or_else(overflow)?;
            let last_row = (self.rows - 1).checked_mul(ld).ok_or_else(overflow)?;
            last_batch
                .checked_add(last_row)
                .and_then(|v| v.checked_add(self.cols))
                .ok_or_else(overflow)?
        };
        let dense = ld == self.cols && (count <= 1 || self.batch_stride == self.rows * ld);
        let ok = if dense {
            self.len == need
        } else {
            self.len >= need
        };
        if !ok {
            let dims = if batched {
                format!("[{}, {}, {}]", count, self.rows, self.cols)
            } else {
                format!("[{}, {}]", self.rows, self.cols)
            };
            let expected = if dense {
                format!("{dims} = {need} elements")
            } else if batched {
                format!(
                    "at least {need} elements for {dims} with row stride {ld} and {} {}",
                    self.batch_arg, self.batch_stride
                )
            } else {
                format!("at least {need} elements for {dims} with row stride {ld}")
            };
            return Err(DeviceError::ShapeMismatch {
                arg: self.arg,
                expected,
                found: format!("{} elements", self.len),
            });
        }
        Ok(ld)
    }
}

fn check_i32(arg: &'static str, v: usize) -> Result<()> {
    if v > i32::MAX as usize {
        return Err(DeviceError::invalid(
            arg,
            format!("{v} exceeds {}", i32::MAX),
        ));
    }
    Ok(())
}

fn check_i64(arg: &'static str, v: usize) -> Result<()> {
    if v > i64::MAX as usize {
        return Err(DeviceError::invalid(
            arg,
            format!("{v} exceeds {}", i64::MAX),
        ));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn plan(
    shape: GemmShape,
    batch: Option<BatchStrides>,
    opts: &LinearOptions,
    types: (DType, DType, DType),
    x_len: usize,
    w_len: usize,
    y_len: usize,
) -> Result<Plan> {
    let (tx, tw, ty) = dtypes(types.0, types.1, types.2)?;
    let GemmShape { m, n, k } = shape;
    check_i32("m", m)?;
    check_i32("n", n)?;
    check_i32("k", k)?;
    let batched = batch.is_some();
    let b = batch.unwrap_or(BatchStrides {
        count: 1,
        x: 0,
        w: 0,
        y: 0,
    });
    check_i32("batch.count", b.count)?;
    check_i64("batch.x", b.x)?;
    check_i64("batch.w", b.w)?;
    check_i64("batch.y", b.y)?;
    let ldx = Operand {
        arg: "x",
        stride_arg: "x_row_stride",
        batch_arg: "batch.x",
        rows: m,
        cols: k,
        row_stride: opts.x_row_stride,
        batch_stride: b.x,
        len: x_len,
    }
    .check(b.count, batched)?;
    let ldw = Operand {
        arg: "w",
        stride_arg: "w_row_stride",
        batch_arg: "batch.w",
        rows: n,
        cols: k,
        row_stride: opts.w_row_stride,
        batch_stride: b.w,
        len: w_len,
    }
    .check(b.count, batched)?;
    let ldy = Operand {
        arg: "y",
        stride_arg: "y_row_stride",
        batch_arg: "batch.y",
        rows: m,
        cols: n,
        row_stride: opts.y_row_stride,
        batch_stride: b.y,
        len: y_len,
    }
    .check(b.count, batched)?;
    if b.count > 1 && m > 0 && n > 0 {
        // (m - 1) * ldy + n is known not to overflow: it is part of y's checked extent.
        let one = (m - 1) * ldy + n;
        if b.y < one {
            return Err(DeviceError::invalid(
                "batch.y",
                format!(
                    "stride {} makes output matrices of {one} elements overlap",
                    b.y
                ),
            ));
        }
    }
    for (arg, ld) in [
        ("x_row_stride", ldx),
        ("w_row_stride", ldw),
        ("y_row_stride", ldy),
    ] {
        check_i32(arg, ld)?;
    }
    Ok(Plan {
        m,
        n,
        k,
        ldx: ldx.max(1),
        ldw: ldw.max(1),
        ldy: ldy.max(1),
        count: b.count,
        sx: b.x,
        sw: b.w,
        sy: b.y,
        alpha: opts.alpha,
        beta: opts.beta,
        tx,
        tw,
        ty,
    })
}

/// `y = x · wᵀ` for row-major `x: [m, k]`, `w: [n, k]`, `y: [m, n]` (dense), queued on
/// `stream`.
pub fn linear<X, W, Y>(
    stream: &Stream,
    x: &impl AsDeviceView<X>,
    w: &impl AsDeviceView<W>,
    y: &mut impl AsDeviceViewMut<Y>,
    shape: GemmShape,
) -> Result<()>
where
    X: DeviceElem,
    W: DeviceElem,
    Y: DeviceElem,
{
    linear_with(stream, x, w, y, shape, &LinearOptions::default())
}

/// `y = α · x · wᵀ + β · y` with optional row strides (see [`LinearOptions`]).
pub fn linear_with<X, W, Y>(
    stream: &Stream,
    x: &impl AsDeviceView<X>,
    w: &impl AsDeviceView<W>,
    y: &mut impl AsDeviceViewMut<Y>,
    shape: GemmShape,
    options: &LinearOptions,
) -> Result<()>
where
    X: DeviceElem,
    W: DeviceElem,
    Y: DeviceElem,
{
    run(stream, x, w, y, shape, None, options)
}

/// A batch of products `y[b] = α · x[b] · w[b]ᵀ + β · y[b]`, with matrix `b` of each operand
/// starting at `b * batch.<operand>` elements.
pub fn linear_strided_batched<X, W, Y>(
    stream: &Stream,
    x: &impl AsDeviceView<X>,
    w: &impl AsDeviceView<W>,
    y: &mut impl AsDeviceViewMut<Y>,
    shape: GemmShape,
    batch: BatchStrides,
    options: &LinearOptions,
) -> Result<()>
where
    X: DeviceElem,
    W: DeviceElem,
    Y: DeviceElem,
{
    run(stream, x, w, y, shape, Some(batch), options)
}

/// A raw pointer moved into emulated stream work.
struct SendPtr<T>(*mut T);

// SAFETY: the pointer targets an emulated allocation kept alive by the same closure; device
// memory is only accessed through raw pointers, ordered by the stream.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as for `Send`; the wrapper only hands out the address.
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

fn run<X, W, Y>(
    stream: &Stream,
    x: &impl AsDeviceView<X>,
    w: &impl AsDeviceView<W>,
    y: &mut impl AsDeviceViewMut<Y>,
    shape: GemmShape,
    batch: Option<BatchStrides>,
    options: &LinearOptions,
) -> Result<()>
where
    X: DeviceElem,
    W: DeviceElem,
    Y: DeviceElem,
{
    let x = x.view();
    let w = w.view();
    let y = y.view_mut();
    let p = plan(
        shape,
        batch,
        options,
        (X::DTYPE, W::DTYPE, Y::DTYPE),
        x.len(),
        w.len(),
        y.len(),
    )?;
    stream.check_device("x", x.allocation())?;
    stream.check_device("w", w.allocation())?;
    stream.check_device("y", y.allocation())?;
    if p.is_empty() {
        return Ok(());
    }
    match (stream.backend(), stream.device().backend()) {
        (StreamBackend::Emulated(s), Backend::Emulated(dev)) => {
            let threads = dev.options.workers as usize;
            let xp = SendPtr(x.allocation().host_ptr()?.wrapping_add(x.byte_offset()));
            let wp = SendPtr(w.allocation().host_ptr()?.wrapping_add(w.byte_offset()));
            let yp = SendPtr(y.allocation().host_ptr()?.wrapping_add(y.byte_offset()));
            let keep = (
                Arc::clone(x.allocation()),
                Arc::clone(w.allocation()),
                Arc::clone(y.allocation()),
            );
            s.enqueue_node(
                NodeKind::Kernel,
                Arc::new(move || {
                    let _keep = &keep;
                    // SAFETY: `plan` checked that every operand covers the extent the product
                    // touches; `_keep` holds the allocations; `y` is disjoint from `x` and `w`
                    // (it was borrowed mutably while they were borrowed).
                    unsafe { cpu_linear(&p, xp.get(), wp.get(), yp.get(), threads) };
                    Ok(())
                }),
            )
        }
        (StreamBackend::Cuda(s), Backend::Cuda(dev)) => s.with_blas(dev, |handle| {
            dev.retain_if_capturing([x.allocation(), w.allocation(), y.allocation()]);
            // SAFETY: `plan` validated dimensions, strides and extents against the views,
            // which are on this stream's device; alpha and beta are host scalars (the
            // handle's default pointer mode) that outlive the call.
            unsafe { cublas_linear(handle, &p, x.addr(), w.addr(), y.addr()) }
        }),
        _ => Err(DeviceError::DeviceMismatch {
            arg: "stream",
            expected: "a stream of its own device".into(),
            found: stream.device().describe(),
        }),
    }
}

/// Row-major `Y = X·Wᵀ` is column-major `Yᵀ = W·Xᵀ`: cuBLAS sees `A = W` (stored `[k, n]`
/// column-major, transposed), `B = X` (stored `[k, m]`), `C = Y` (`[n, m]`).
///
/// # Safety
/// The plan must have been validated against allocations at these device addresses, and
/// `handle` must be bound to the stream the operands are used on.
unsafe fn cublas_linear(
    handle: blas_sys::cublasHandle_t,
    p: &Plan,
    x: u64,
    w: u64,
    y: u64,
) -> Result<()> {
    let alpha = p.alpha;
    let beta = p.beta;
    let ptr = |addr: u64| addr as usize as *const c_void;
    // The casts below are lossless: `plan` bounds dimensions and leading dimensions by
    // i32::MAX and batch strides by i64::MAX.
    if p.count == 1 {
        // SAFETY: guaranteed by the caller.
        unsafe {
            blas_result::gemm_ex(
                handle,
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                p.n as i32,
                p.m as i32,
                p.k as i32,
                (&alpha as *const f32).cast(),
                ptr(w),
                p.tw.cuda(),
                p.ldw as i32,
                ptr(x),
                p.tx.cuda(),
                p.ldx as i32,
                (&beta as *const f32).cast(),
                ptr(y).cast_mut(),
                p.ty.cuda(),
                p.ldy as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(DeviceError::cublas("cublasGemmEx"))
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe {
            blas_result::gemm_strided_batched_ex(
                handle,
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                p.n as i32,
                p.m as i32,
                p.k as i32,
                (&alpha as *const f32).cast(),
                ptr(w),
                p.tw.cuda(),
                p.ldw as i32,
                p.sw as i64,
                ptr(x),
                p.tx.cuda(),
                p.ldx as i32,
                p.sx as i64,
                (&beta as *const f32).cast(),
                ptr(y).cast_mut(),
                p.ty.cuda(),
                p.ldy as i32,
                p.sy as i64,
                p.count as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(DeviceError::cublas("cublasGemmStridedBatchedEx"))
    }
}

/// Element types that convert to and from f32.
trait Float: Copy {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
}

impl Float for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Float for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

impl Float for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

/// Converts a strided `[rows, cols]` matrix to dense f32 in `out`.
///
/// # Safety
/// `src` must be valid for reads of `(rows - 1) * ld + cols` elements of `T`.
unsafe fn widen<T: Float>(src: *const T, rows: usize, cols: usize, ld: usize, out: &mut Vec<f32>) {
    out.clear();
    out.reserve(rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            // SAFETY: within the extent guaranteed by the caller.
            out.push(unsafe { src.add(r * ld + c).read() }.to_f32());
        }
    }
}

/// # Safety
/// As for [`widen`].
unsafe fn widen_dyn(
    t: Fp,
    src: *const u8,
    rows: usize,
    cols: usize,
    ld: usize,
    out: &mut Vec<f32>,
) {
    // SAFETY: forwarded from the caller; the element type is `t`.
    unsafe {
        match t {
            Fp::F32 => widen(src.cast::<f32>(), rows, cols, ld, out),
            Fp::BF16 => widen(src.cast::<bf16>(), rows, cols, ld, out),
            Fp::F16 => widen(src.cast::<f16>(), rows, cols, ld, out),
        }
    }
}

/// `y = round(α·acc + β·y)`, not reading `y` when `β = 0`.
///
/// # Safety
/// `y` must be valid for reads and writes of `(m - 1) * ld + n` elements of `T`.
unsafe fn store<T: Float>(
    y: *mut T,
    acc: &[f32],
    m: usize,
    n: usize,
    ld: usize,
    alpha: f32,
    beta: f32,
) {
    for i in 0..m {
        for j in 0..n {
            let a = alpha * acc[i * n + j];
            // SAFETY: within the extent guaranteed by the caller.
            let dst = unsafe { y.add(i * ld + j) };
            let v = if beta == 0.0 {
                a
            } else {
                // SAFETY: as above.
                a + beta * unsafe { dst.read() }.to_f32()
            };
            // SAFETY: as above.
            unsafe { dst.write(T::from_f32(v)) };
        }
    }
}

/// The CPU product behind emulated `linear`.
///
/// # Safety
/// The pointers must cover the extents `p` describes (validated by [`plan`]), `y`'s range
/// must not overlap `x`'s or `w`'s, and `p` must not be empty.
unsafe fn cpu_linear(p: &Plan, x: *const u8, w: *const u8, y: *mut u8, threads: usize) {
    let (m, n, k) = (p.m, p.n, p.k);
    let mut acc = vec![0f32; m * n];
    let mut xs = Vec::new();
    let mut ws = Vec::new();
    let mut widened_w: Option<*const u8> = None;
    for b in 0..p.count {
        let xb = x.wrapping_add(b * p.sx * p.tx.size());
        let wb = w.wrapping_add(b * p.sw * p.tw.size());
        let yb = y.wrapping_add(b * p.sy * p.ty.size());
        if k == 0 {
            acc.fill(0.0);
        } else {
            let (xf, ldx) = if p.tx == Fp::F32 {
                (xb.cast::<f32>(), p.ldx)
            } else {
                // SAFETY: x's extent covers this batch's matrix.
                unsafe { widen_dyn(p.tx, xb, m, k, p.ldx, &mut xs) };
                (xs.as_ptr(), k)
            };
            let (wf, ldw) = if p.tw == Fp::F32 {
                (wb.cast::<f32>(), p.ldw)
            } else {
                if widened_w != Some(wb) {
                    // SAFETY: w's extent covers this batch's matrix.
                    unsafe { widen_dyn(p.tw, wb, n, k, p.ldw, &mut ws) };
                    widened_w = Some(wb);
                }
                (ws.as_ptr(), k)
            };
            // SAFETY: `acc` is a dense [m, n] f32 matrix; `xf` is [m, k] with row stride
            // `ldx`; `wf` is [n, k] with row stride `ldw`, read as the [k, n] matrix Wᵀ
            // (row step 1, column step `ldw`). The gemm crate computes
            // dst = alpha·dst + beta·lhs·rhs; with read_dst = false, dst = lhs·rhs.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    acc.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    xf,
                    1,
                    ldx as isize,
                    wf,
                    ldw as isize,
                    1,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(threads),
                )
            };
        }
        // SAFETY: y's extent covers this batch's matrix.
        unsafe {
            match p.ty {
                Fp::F32 => store(yb.cast::<f32>(), &acc, m, n, p.ldy, p.alpha, p.beta),
                Fp::BF16 => store(yb.cast::<bf16>(), &acc, m, n, p.ldy, p.alpha, p.beta),
                Fp::F16 => store(yb.cast::<f16>(), &acc, m, n, p.ldy, p.alpha, p.beta),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: (DType, DType, DType) = (DType::F32, DType::F32, DType::F32);

    fn opts() -> LinearOptions {
        LinearOptions::default()
    }

    #[test]
    fn plan_accepts_dense_shapes() {
        let p = plan(GemmShape::new(3, 5, 7), None, &opts(), F, 21, 35, 15).unwrap();
        assert_eq!((p.ldx, p.ldw, p.ldy, p.count), (7, 7, 5, 1));
    }

    #[test]
    fn plan_names_the_bad_operand() {
        let e = plan(GemmShape::new(3, 5, 7), None, &opts(), F, 21, 34, 15).unwrap_err();
        assert!(
            matches!(e, DeviceError::ShapeMismatch { arg: "w", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("[5, 7] = 35 elements"), "{e}");
        let e = plan(GemmShape::new(3, 5, 7), None, &opts(), F, 22, 35, 15).unwrap_err();
        assert!(
            matches!(e, DeviceError::ShapeMismatch { arg: "x", .. }),
            "{e}"
        );
        let e = plan(GemmShape::new(3, 5, 7), None, &opts(), F, 21, 35, 16).unwrap_err();
        assert!(
            matches!(e, DeviceError::ShapeMismatch { arg: "y", .. }),
            "{e}"
        );
    }

    #[test]
    fn plan_rejects_unsupported_dtypes() {
        for t in [
            (DType::F32, DType::BF16, DType::F32),
            (DType::BF16, DType::BF16, DType::F16),
            (DType::F16, DType::F16, DType::F32),
            (DType::I32, DType::I32, DType::I32),
        ] {
            let e = plan(GemmShape::new(1, 1, 1), None, &opts(), t, 1, 1, 1).unwrap_err();
            assert!(
                matches!(e, DeviceError::UnsupportedDTypes { op: "linear", .. }),
                "{e}"
            );
        }
    }

    #[test]
    fn plan_checks_strides() {
        let o = LinearOptions {
            x_row_stride: Some(6),
            ..opts()
        };
        let e = plan(GemmShape::new(2, 2, 7), None, &o, F, 100, 14, 4).unwrap_err();
        assert!(
            matches!(
                e,
                DeviceError::InvalidArgument {
                    arg: "x_row_stride",
                    ..
                }
            ),
            "{e}"
        );
        // Strided x: needs (m - 1) * 10 + k elements, more is fine.
        let o = LinearOptions {
            x_row_stride: Some(10),
            ..opts()
        };
        plan(GemmShape::new(2, 2, 7), None, &o, F, 17, 14, 4).unwrap();
        plan(GemmShape::new(2, 2, 7), None, &o, F, 20, 14, 4).unwrap();
        let e = plan(GemmShape::new(2, 2, 7), None, &o, F, 16, 14, 4).unwrap_err();
        assert!(
            matches!(e, DeviceError::ShapeMismatch { arg: "x", .. }),
            "{e}"
        );
    }

    #[test]
    fn plan_checks_batches() {
        let s = GemmShape::new(2, 3, 4);
        let dense = BatchStrides {
            count: 5,
            x: 8,
            w: 12,
            y: 6,
        };
        plan(s, Some(dense), &opts(), F, 40, 60, 30).unwrap();
        // Shared weights.
        let shared = BatchStrides { w: 0, ..dense };
        plan(s, Some(shared), &opts(), F, 40, 12, 30).unwrap();
        // Overlapping outputs.
        let overlap = BatchStrides { y: 5, ..dense };
        let e = plan(s, Some(overlap), &opts(), F, 40, 60, 30).unwrap_err();
        assert!(
            matches!(e, DeviceError::InvalidArgument { arg: "batch.y", .. }),
            "{e}"
        );
        let e = plan(s, Some(dense), &opts(), F, 40, 59, 30).unwrap_err();
        assert!(
            matches!(e, DeviceError::ShapeMismatch { arg: "w", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("[5, 3, 4]"), "{e}");
    }

    #[test]
    fn plan_checks_cublas_limits() {
        let e = plan(GemmShape::new(1 << 31, 0, 0), None, &opts(), F, 0, 0, 0).unwrap_err();
        assert!(
            matches!(e, DeviceError::InvalidArgument { arg: "m", .. }),
            "{e}"
        );
    }

    #[test]
    fn empty_products_plan_as_empty() {
        let p = plan(GemmShape::new(0, 4, 4), None, &opts(), F, 0, 16, 0).unwrap();
        assert!(p.is_empty());
        let p = plan(GemmShape::new(2, 3, 0), None, &opts(), F, 0, 0, 6).unwrap();
        assert!(!p.is_empty());
        assert_eq!((p.ldx, p.ldw), (1, 1));
    }

    #[test]
    fn cpu_linear_matches_naive_with_strides_and_beta() {
        // x: [2, 3] with row stride 4; w: [2, 3] dense; y: [2, 2] with row stride 3.
        let x: Vec<f32> = vec![1.0, 2.0, 3.0, 99.0, 4.0, 5.0, 6.0];
        let w: Vec<bf16> = [1.0f32, 0.5, -1.0, 2.0, 0.0, 1.0]
            .iter()
            .map(|&v| bf16::from_f32(v))
            .collect();
        let mut y: Vec<f32> = vec![10.0, 20.0, 7.0, 30.0, 40.0];
        let p = Plan {
            m: 2,
            n: 2,
            k: 3,
            ldx: 4,
            ldw: 3,
            ldy: 3,
            count: 1,
            sx: 0,
            sw: 0,
            sy: 0,
            alpha: 2.0,
            beta: 0.5,
            tx: Fp::F32,
            tw: Fp::BF16,
            ty: Fp::F32,
        };
        // SAFETY: the vectors cover the extents of the plan.
        unsafe {
            cpu_linear(
                &p,
                x.as_ptr().cast(),
                w.as_ptr().cast(),
                y.as_mut_ptr().cast(),
                1,
            )
        };
        // Row 0: x·w0 = 1 + 1 - 3 = -1, x·w1 = 2 + 0 + 3 = 5.
        // Row 1: x·w0 = 4 + 2.5 - 6 = 0.5, x·w1 = 8 + 0 + 6 = 14.
        assert_eq!(y, vec![3.0, 20.0, 7.0, 16.0, 48.0]);
    }
}
