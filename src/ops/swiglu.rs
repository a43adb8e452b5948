//! SwiGLU on the fused gate|up projection (`cuda/swiglu.cu`):
//! `out[r, j] = silu(gate_up[r, j]) · gate_up[r, F + j]`, `silu(x) = x / (1 + e^(−x))`.
//!
//! `gate_up` is the output of one GEMM against the concatenated `[W_gate; W_up]` (`[rows, 2F]`),
//! `out` is `[rows, F]`; f32 or bf16 (see [`NormElem`]) with f32 math.

use crate::device::kernel::{stag_kernel, Kernel, LaunchConfig};
use crate::device::{AsDeviceView, AsDeviceViewMut, Stream};
use crate::dtype::{DType, DeviceElem};
use crate::error::{DeviceError, Result};
use crate::ffi::SwigluParams;
use crate::ops::rmsnorm::NormElem;

stag_kernel!(static SWIGLU_F32: SwigluParams = swiglu_f32 in SWIGLU);
stag_kernel!(static SWIGLU_BF16: SwigluParams = swiglu_bf16 in SWIGLU);

/// Threads per block; must equal `THREADS` in `cuda/swiglu.cu`.
const THREADS: usize = 256;
/// Sizes handed to the kernel stay below 2³¹, so its 32-bit index loops cannot wrap.
const MAX_EXTENT: usize = i32::MAX as usize;

fn kernel_for<T: NormElem>() -> &'static Kernel<SwigluParams> {
    match T::DTYPE {
        DType::BF16 => &SWIGLU_BF16,
        // `NormElem` is implemented for f32 and bf16 only.
        _ => &SWIGLU_F32,
    }
}

/// `rows` rows of the MLP's intermediate width `ffn` (F).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwigluShape {
    /// Number of rows (tokens).
    pub rows: usize,
    /// F: elements of `out` per row (`gate_up` has 2F).
    pub ffn: usize,
}

/// `out = silu(gate) ⊙ up` row by row, with `gate_up` `[rows, 2F]` (gate then up) and `out`
/// `[rows, F]`, both dense.
pub fn swiglu<T: NormElem>(
    stream: &Stream,
    gate_up: &impl AsDeviceView<T>,
    out: &mut impl AsDeviceViewMut<T>,
    shape: SwigluShape,
) -> Result<()> {
    let (gate_up, mut out) = (gate_up.view(), out.view_mut());
    if shape.ffn == 0 {
        return Err(DeviceError::invalid("ffn", "must be at least 1"));
    }
    if shape.rows > MAX_EXTENT {
        return Err(DeviceError::invalid(
            "rows",
            format!("{} exceeds 2^31 - 1", shape.rows),
        ));
    }
    let in_width = shape
        .ffn
        .checked_mul(2)
        .filter(|&w| w <= MAX_EXTENT)
        .ok_or_else(|| {
            DeviceError::invalid("ffn", format!("2 × {} exceeds 2^31 - 1", shape.ffn))
        })?;
    for (arg, found, width) in [
        ("gate_up", gate_up.len(), in_width),
        ("out", out.len(), shape.ffn),
    ] {
        let expected = shape
            .rows
            .checked_mul(width)
            .ok_or_else(|| DeviceError::overflow(arg, "rows × width"))?;
        if found != expected {
            return Err(DeviceError::LengthMismatch {
                arg,
                expected,
                found,
            });
        }
    }
    if shape.rows == 0 {
        return Ok(());
    }
    let params = SwigluParams {
        gate_up: gate_up.as_ptr(),
        out: out.as_mut_ptr(),
        rows: shape.rows as u32,
        ffn: shape.ffn as u32,
        in_row_stride: in_width as u32,
        out_row_stride: shape.ffn as u32,
    };
    let retained = [gate_up.retain("gate_up"), out.retain("out")];
    // SAFETY: `gate_up` holds `rows × 2F` elements and `out` `rows × F` (checked above); the
    // kernel reads and writes nothing beyond those rows. `out` is borrowed mutably, so it
    // cannot alias `gate_up`, and both are retained until the kernel has run.
    unsafe {
        stream.launch(
            kernel_for::<T>(),
            launch_config::<T>(shape),
            params,
            &retained,
        )
    }
}

/// One block row per token (grid.x), enough blocks along grid.y for one 16-byte vector per
/// thread.
fn launch_config<T: DeviceElem>(shape: SwigluShape) -> LaunchConfig {
    let per_vector = 16 / std::mem::size_of::<T>();
    let blocks_y = shape.ffn.div_ceil(per_vector * THREADS).clamp(1, 65_535);
    LaunchConfig {
        grid: [shape.rows as u32, blocks_y as u32, 1],
        block: [THREADS as u32, 1, 1],
        dynamic_smem_bytes: 0,
    }
}
