//! `y = α·x + β·y`, elementwise (`cuda/axpby.cu`): the decoder's output mix.

use crate::device::kernel::{stag_kernel, Kernel, LaunchConfig};
use crate::device::{AsDeviceView, AsDeviceViewMut, Stream};
use crate::dtype::DType;
use crate::error::{DeviceError, Result};
use crate::ffi::AxpbyParams;
use crate::ops::rmsnorm::NormElem;

stag_kernel!(static AXPBY_F32: AxpbyParams = axpby_f32 in AXPBY);
stag_kernel!(static AXPBY_BF16: AxpbyParams = axpby_bf16 in AXPBY);

const THREADS: u32 = 256;
/// Enough blocks to fill a large GPU; the kernel loops over the rest.
const MAX_BLOCKS: usize = 1024;

fn kernel_for<T: NormElem>() -> &'static Kernel<AxpbyParams> {
    match T::DTYPE {
        DType::BF16 => &AXPBY_BF16,
        // `NormElem` is implemented for f32 and bf16 only.
        _ => &AXPBY_F32,
    }
}

/// `y = alpha · x + beta · y`; with `beta == 0` the old `y` is not read.
pub fn axpby<T: NormElem>(
    stream: &Stream,
    alpha: f32,
    x: &impl AsDeviceView<T>,
    beta: f32,
    y: &mut impl AsDeviceViewMut<T>,
) -> Result<()> {
    let (x, mut y) = (x.view(), y.view_mut());
    if x.len() != y.len() {
        return Err(DeviceError::LengthMismatch {
            arg: "y",
            expected: x.len(),
            found: y.len(),
        });
    }
    for (arg, v) in [("alpha", alpha), ("beta", beta)] {
        if !v.is_finite() {
            return Err(DeviceError::invalid(arg, format!("{v} is not finite")));
        }
    }
    if x.is_empty() {
        return Ok(());
    }
    let per_vector = 16 / std::mem::size_of::<T>();
    let blocks = x
        .len()
        .div_ceil(per_vector * THREADS as usize)
        .clamp(1, MAX_BLOCKS) as u32;
    let params = AxpbyParams {
        x: x.as_ptr(),
        y: y.as_mut_ptr(),
        n: x.len() as u64,
        alpha,
        beta,
    };
    let retained = [x.retain("x"), y.retain("y")];
    // SAFETY: both views hold exactly `n` elements and are retained; `y` is borrowed mutably
    // (so it cannot alias `x` through safe code); the kernel touches indices below `n` only.
    unsafe {
        stream.launch(
            kernel_for::<T>(),
            LaunchConfig::linear(blocks, THREADS, 0),
            params,
            &retained,
        )
    }
}
