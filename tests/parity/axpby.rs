//! Rows for `axpby` (y = α·x + β·y), the decoder's output mix.
//!
//! Tolerances: f32 1e-10 (one multiply-add per element, ≤ 2 ulp apart from the reference);
//! bf16 2e-5 (output rounding alone, NMSE ≤ 2⁻¹⁶).

use stagformer_kernels::device::DeviceBuffer;
use stagformer_kernels::ops::axpby::axpby;
use stagformer_kernels::ops::rmsnorm::NormElem;

use crate::table::{poisoned, stored, widen, widen_f32, Case, Compared, Float, Inputs};

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for n in [1usize, 7, 8, 1000, 4099] {
        for (alpha, beta) in [(0.7f32, 0.0f32), (-1.25, 1.0), (0.5, -0.3)] {
            cases.push(case::<f32>(n, alpha, beta, 1e-10));
            cases.push(case::<half::bf16>(n, alpha, beta, 2e-5));
        }
    }
    cases
}

fn case<T: Float + NormElem>(n: usize, alpha: f32, beta: f32, tol: f64) -> Case {
    let name = format!("axpby {} n={n} alpha={alpha} beta={beta}", T::NAME);
    Case::new(name, tol, move |stream, inputs: &mut Inputs| {
        let (x, x_seen) = stored::<T>(&inputs.normal(n, 0.0, 1.0));
        let (y0, y_seen) = stored::<T>(&inputs.normal(n, 0.0, 1.0));
        let x_dev = DeviceBuffer::from_host(stream, &x)?;
        // With beta = 0 the kernel must not read y: start from NaN poison then.
        let mut y = if beta == 0.0 {
            poisoned::<T>(stream, n)?
        } else {
            DeviceBuffer::from_host(stream, &y0)?
        };
        axpby(stream, alpha, &x_dev, beta, &mut y)?;
        let want: Vec<f32> = x_seen
            .iter()
            .zip(&y_seen)
            .map(|(&a, &b)| alpha * a + if beta == 0.0 { 0.0 } else { beta * b })
            .collect();
        Ok(vec![Compared {
            output: "y",
            got: widen(&y.to_host(stream)?),
            want: widen_f32(&want),
        }])
    })
}
