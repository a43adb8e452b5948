//! Rows for the GEMM wrappers: `linear` (Y = X·Wᵀ, W as stored in checkpoints) and its
//! strided-batched form.
//!
//! Tolerances: f32 outputs 1e-10 (f32 accumulation over K ≤ 4097 terms against the reference's
//! gemm, also f32: relative error ~1e-6 at worst, NMSE ≤ 1e-12). Half-precision inputs are the
//! same rounded values on both sides; with an f32 output the bound stays 1e-10. Rounding the
//! output to bf16 costs at most 2⁻⁸ relative per element, so NMSE ≤ 2⁻¹⁶ ≈ 1.53e-5 (bound
//! 2e-5); to f16 at most 2⁻¹¹, NMSE ≤ 2.4e-7 (bound 1e-6). The margin covers a different
//! accumulation order (tensor cores, split-K) on a GPU, whose effect is ~1e-12.

use stagformer_kernels::device::DeviceBuffer;
use stagformer_kernels::ops::gemm::{
    linear, linear_strided_batched, BatchStrides, GemmShape, LinearOptions,
};
use stagformer_ref::ops::{self as reference, Matrix};

use crate::table::{poisoned, stored, widen, widen_f32, Case, Compared, Float, Inputs};

/// (m, n, k): decode-sized M = 1, odd sizes, N not a multiple of any tile, prefill-sized rows.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 4097, 64),
    (1, 256, 4095),
    (3, 77, 129),
    (8, 512, 512),
    (64, 128, 256),
    (200, 96, 33),
];

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for &(m, n, k) in SHAPES {
        cases.push(linear_case::<f32, f32>(m, n, k, 1e-10));
        cases.push(linear_case::<half::bf16, half::bf16>(m, n, k, 2e-5));
        cases.push(linear_case::<half::bf16, f32>(m, n, k, 1e-10));
        cases.push(linear_case::<half::f16, half::f16>(m, n, k, 1e-6));
    }
    cases.push(batched_case::<f32, f32>(3, 5, 33, 17, false, 1e-10));
    cases.push(batched_case::<half::bf16, half::bf16>(
        4, 1, 64, 128, true, 2e-5,
    ));
    cases
}

/// The reference product of the values the device sees.
fn reference_product(
    x: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
) -> anyhow::Result<Vec<f32>> {
    let x = Matrix::from_vec(m, k, x.to_vec())?;
    let w = Matrix::from_vec(n, k, w.to_vec())?;
    Ok(reference::linear(&x, &w)?.data)
}

fn linear_case<I: Float, O: Float>(m: usize, n: usize, k: usize, tol: f64) -> Case {
    let name = format!("linear x,w={} y={} m={m} n={n} k={k}", I::NAME, O::NAME);
    Case::new(name, tol, move |stream, inputs: &mut Inputs| {
        let (x, x_seen) = stored::<I>(&inputs.normal(m * k, 0.0, 1.0));
        let (w, w_seen) = stored::<I>(&inputs.normal(n * k, 0.0, 1.0 / (k as f32).sqrt()));
        let x_dev = DeviceBuffer::from_host(stream, &x)?;
        let w_dev = DeviceBuffer::from_host(stream, &w)?;
        let mut y = poisoned::<O>(stream, m * n)?;
        linear(stream, &x_dev, &w_dev, &mut y, GemmShape::new(m, n, k))?;
        Ok(vec![Compared {
            output: "y",
            got: widen(&y.to_host(stream)?),
            want: widen_f32(&reference_product(&x_seen, &w_seen, m, n, k)?),
        }])
    })
}

/// `count` products; `shared_w` uses one W for the whole batch (stride 0).
fn batched_case<I: Float, O: Float>(
    count: usize,
    m: usize,
    n: usize,
    k: usize,
    shared_w: bool,
    tol: f64,
) -> Case {
    let name = format!(
        "linear_batched x,w={} y={} count={count} m={m} n={n} k={k}{}",
        I::NAME,
        O::NAME,
        if shared_w { " shared-w" } else { "" }
    );
    Case::new(name, tol, move |stream, inputs: &mut Inputs| {
        let w_count = if shared_w { 1 } else { count };
        let (x, x_seen) = stored::<I>(&inputs.normal(count * m * k, 0.0, 1.0));
        let (w, w_seen) =
            stored::<I>(&inputs.normal(w_count * n * k, 0.0, 1.0 / (k as f32).sqrt()));
        let x_dev = DeviceBuffer::from_host(stream, &x)?;
        let w_dev = DeviceBuffer::from_host(stream, &w)?;
        let mut y = poisoned::<O>(stream, count * m * n)?;
        let strides = BatchStrides {
            count,
            x: m * k,
            w: if shared_w { 0 } else { n * k },
            y: m * n,
        };
        linear_strided_batched(
            stream,
            &x_dev,
            &w_dev,
            &mut y,
            GemmShape::new(m, n, k),
            strides,
            &LinearOptions::default(),
        )?;
        let mut want = Vec::with_capacity(count * m * n);
        for b in 0..count {
            let wb = if shared_w { 0 } else { b };
            want.extend(reference_product(
                &x_seen[b * m * k..(b + 1) * m * k],
                &w_seen[wb * n * k..(wb + 1) * n * k],
                m,
                n,
                k,
            )?);
        }
        Ok(vec![Compared {
            output: "y",
            got: widen(&y.to_host(stream)?),
            want: widen_f32(&want),
        }])
    })
}
