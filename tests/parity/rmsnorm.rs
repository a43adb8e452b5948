//! Rows for `rmsnorm` and `add_rmsnorm` (cuda/rmsnorm.cu).
//!
//! Tolerances: f32 outputs 1e-10 (the kernel accumulates the sum of squares in f64 like the
//! reference, in another order, so only the last bits of the f64 sum differ). bf16 outputs 2e-5: inputs are the same
//! bf16 values on both sides, so the only large error is rounding the output to bf16, at most
//! 2⁻⁸ relative per element, hence NMSE ≤ 2⁻¹⁶ ≈ 1.53e-5 however few elements a row has
//! (≈ 5e-6 on average for long rows). The fused sum is compared with the reference sum rounded
//! to the activation type, which the kernel must reproduce exactly (bound 0).

use stagformer_kernels::device::{DeviceBuffer, Stream};
use stagformer_kernels::ops::rmsnorm::{add_rmsnorm, rmsnorm, NormElem, Rows};
use stagformer_ref::ops as reference;

use crate::table::{poisoned, stored, widen, widen_f32, Case, Compared, Float, Inputs};

const EPS: f32 = 1e-6;
/// Output rounding to bf16 alone can reach 2⁻¹⁶ (see above).
const BF16_TOL: f64 = 2e-5;

/// (rows, dim): odd widths, one row, many rows, rows wider than the registers hold.
const SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (3, 7),
    (2, 8),
    (5, 64),
    (1, 4095),
    (2, 4096),
    (3, 4097),
    (64, 256),
    (1, 20000),
    (2, 40001),
];

/// Standard deviations of the huge-activation rows.
const HUGE: &[f32] = &[1e19, 1e30];

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for &(rows, dim) in SHAPES {
        for unaligned in [false, true] {
            if unaligned && dim < 8 {
                continue;
            }
            cases.push(norm_case::<f32>(rows, dim, unaligned, 1.0, 1e-10));
            cases.push(norm_case::<half::bf16>(rows, dim, unaligned, 1.0, BF16_TOL));
            cases.push(add_norm_case::<f32>(rows, dim, unaligned, 1.0, 1e-10));
            cases.push(add_norm_case::<half::bf16>(
                rows, dim, unaligned, 1.0, BF16_TOL,
            ));
        }
    }
    // Huge finite activations: an f32 sum of squares overflows from |x| ≈ 1.8e19 on (and a
    // norm of inf returns zeros); the kernel's f64 sum must give the reference's answer.
    for &scale in HUGE {
        for &(rows, dim) in &[(2, 64), (1, 4096), (1, 20000)] {
            cases.push(norm_case::<f32>(rows, dim, false, scale, 1e-10));
            cases.push(norm_case::<half::bf16>(rows, dim, false, scale, BF16_TOL));
            cases.push(add_norm_case::<f32>(rows, dim, true, scale, 1e-10));
            cases.push(add_norm_case::<half::bf16>(
                rows, dim, false, scale, BF16_TOL,
            ));
        }
    }
    cases
}

fn label(op: &str, dtype: &str, rows: usize, dim: usize, unaligned: bool, scale: f32) -> String {
    let tail = if unaligned { " unaligned" } else { "" };
    let scale = if scale == 1.0 {
        String::new()
    } else {
        format!(" scale={scale:e}")
    };
    format!("{op} {dtype} rows={rows} dim={dim}{tail}{scale}")
}

/// A device copy of `values`; with `unaligned` the data starts one element into the buffer, so
/// the kernel must take its scalar path.
fn upload<T: Float>(
    stream: &Stream,
    values: &[T],
    unaligned: bool,
) -> anyhow::Result<DeviceBuffer<T>> {
    let mut host = Vec::with_capacity(values.len() + 1);
    if unaligned {
        host.push(T::from_f32(0.5));
    }
    host.extend_from_slice(values);
    Ok(DeviceBuffer::from_host(stream, &host)?)
}

fn norm_case<T: Float + NormElem>(
    rows: usize,
    dim: usize,
    unaligned: bool,
    scale: f32,
    tol: f64,
) -> Case {
    Case::new(
        label("rmsnorm", T::NAME, rows, dim, unaligned, scale),
        tol,
        move |stream, inputs: &mut Inputs| {
            let (x, x_seen) = stored::<T>(&inputs.normal(rows * dim, 0.0, scale));
            let weight = inputs.normal(dim, 1.0, 0.2);
            let x_dev = upload(stream, &x, unaligned)?;
            let w_dev = DeviceBuffer::from_host(stream, &weight)?;
            let mut out = poisoned::<T>(stream, rows * dim + usize::from(unaligned))?;
            let start = usize::from(unaligned);
            rmsnorm(
                stream,
                &x_dev.slice(start..)?,
                &w_dev,
                &mut out.slice_mut(start..)?,
                Rows { rows, dim },
                EPS,
            )?;
            let got = out.slice(start..)?.to_host(stream)?;
            let mut want = vec![0f32; rows * dim];
            for r in 0..rows {
                let span = r * dim..(r + 1) * dim;
                reference::rmsnorm(
                    &x_seen[span.clone()],
                    &weight,
                    f64::from(EPS),
                    &mut want[span],
                )?;
            }
            Ok(vec![Compared {
                output: "out",
                got: widen(&got),
                want: widen_f32(&want),
            }])
        },
    )
}

fn add_norm_case<T: Float + NormElem>(
    rows: usize,
    dim: usize,
    unaligned: bool,
    scale: f32,
    tol: f64,
) -> Case {
    Case::new(
        label("add_rmsnorm", T::NAME, rows, dim, unaligned, scale),
        tol,
        move |stream, inputs: &mut Inputs| {
            let (x, x_seen) = stored::<T>(&inputs.normal(rows * dim, 0.0, scale));
            let (r, r_seen) = stored::<T>(&inputs.normal(rows * dim, 0.0, scale));
            let weight = inputs.normal(dim, 1.0, 0.2);
            let start = usize::from(unaligned);
            let x_dev = upload(stream, &x, unaligned)?;
            let r_dev = upload(stream, &r, unaligned)?;
            let w_dev = DeviceBuffer::from_host(stream, &weight)?;
            let mut sum = poisoned::<T>(stream, rows * dim + start)?;
            let mut out = poisoned::<T>(stream, rows * dim + start)?;
            add_rmsnorm(
                stream,
                &x_dev.slice(start..)?,
                &r_dev.slice(start..)?,
                &w_dev,
                &mut sum.slice_mut(start..)?,
                &mut out.slice_mut(start..)?,
                Rows { rows, dim },
                EPS,
            )?;
            let got_sum = sum.slice(start..)?.to_host(stream)?;
            let got_out = out.slice(start..)?.to_host(stream)?;
            // The kernel normalises the sum as stored (rounded to T), like a separate rmsnorm of it.
            let want_sum: Vec<f32> = x_seen.iter().zip(&r_seen).map(|(a, b)| a + b).collect();
            let (_, sum_seen) = stored::<T>(&want_sum);
            let mut want_out = vec![0f32; rows * dim];
            for row in 0..rows {
                let span = row * dim..(row + 1) * dim;
                reference::rmsnorm(
                    &sum_seen[span.clone()],
                    &weight,
                    f64::from(EPS),
                    &mut want_out[span],
                )?;
            }
            let sum_exact = widen(&got_sum) == widen_f32(&sum_seen);
            if !sum_exact {
                anyhow::bail!("sum differs from the rounded reference sum x + residual");
            }
            Ok(vec![
                Compared {
                    output: "sum",
                    got: widen(&got_sum),
                    want: widen_f32(&sum_seen),
                },
                Compared {
                    output: "out",
                    got: widen(&got_out),
                    want: widen_f32(&want_out),
                },
            ])
        },
    )
}
