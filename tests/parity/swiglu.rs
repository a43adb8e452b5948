//! Rows for `swiglu` (cuda/swiglu.cu).
//!
//! Tolerances: f32 outputs 1e-10. The kernel evaluates silu in f32 (`expf`, one add, one
//! divide: a few ulp, ~3e-7 relative at worst) where the reference uses f64 and rounds once, so
//! NMSE stays below ~1e-13. bf16 outputs 2e-5: the inputs are the same bf16 values on both
//! sides and rounding the output to bf16 costs at most 2⁻⁸ relative per element, NMSE ≤ 2⁻¹⁶ ≈
//! 1.53e-5.

use half::bf16;
use stagformer_kernels::device::{DeviceBuffer, Stream};
use stagformer_kernels::ops::rmsnorm::NormElem;
use stagformer_kernels::ops::swiglu::{swiglu, SwigluShape};
use stagformer_ref::ops as reference;

use crate::table::{poisoned, stored, widen, widen_f32, Case, Compared, Float, Inputs};

const BF16_TOL: f64 = 2e-5;

/// (rows, F): one element, odd widths (scalar path), one vector, a width that is whole f32
/// vectors but not bf16 ones, Llama-like widths, more columns than one block covers.
const SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (3, 7),
    (2, 8),
    (4, 1000),
    (1, 2752),
    (2, 4097),
    (33, 96),
];

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for &(rows, ffn) in SHAPES {
        for unaligned in [false, true] {
            if unaligned && ffn < 8 {
                continue;
            }
            cases.push(swiglu_case::<f32>(rows, ffn, unaligned, 1e-10));
            cases.push(swiglu_case::<bf16>(rows, ffn, unaligned, BF16_TOL));
        }
    }
    cases
}

fn upload<T: Float>(
    stream: &Stream,
    values: &[T],
    offset: usize,
) -> anyhow::Result<DeviceBuffer<T>> {
    let mut host = vec![T::from_f32(0.5); offset];
    host.extend_from_slice(values);
    Ok(DeviceBuffer::from_host(stream, &host)?)
}

fn swiglu_case<T: Float + NormElem>(rows: usize, ffn: usize, unaligned: bool, tol: f64) -> Case {
    let tail = if unaligned { " unaligned" } else { "" };
    let name = format!("swiglu {} rows={rows} ffn={ffn}{tail}", T::NAME);
    Case::new(name, tol, move |stream, inputs: &mut Inputs| {
        // Gates spread over silu's whole shape (its minimum near -1.28, the linear tail), plus
        // saturating extremes where e^(-g) overflows f32 or vanishes.
        let mut gate_up = inputs.normal(rows * 2 * ffn, 0.0, 3.0);
        if ffn >= 3 {
            gate_up[1] = -120.0;
            gate_up[2] = 95.0;
        }
        let (gu, gu_seen) = stored::<T>(&gate_up);
        let start = usize::from(unaligned);
        let gu_dev = upload(stream, &gu, start)?;
        let mut out = poisoned::<T>(stream, rows * ffn + start)?;
        swiglu(
            stream,
            &gu_dev.slice(start..)?,
            &mut out.slice_mut(start..)?,
            SwigluShape { rows, ffn },
        )?;
        let got = out.slice(start..)?.to_host(stream)?;
        let mut want = Vec::with_capacity(rows * ffn);
        for row in gu_seen.chunks_exact(2 * ffn) {
            let (gate, up) = row.split_at(ffn);
            want.extend(gate.iter().zip(up).map(|(&g, &u)| reference::silu(g) * u));
        }
        Ok(vec![Compared {
            output: "out",
            got: widen(&got),
            want: widen_f32(&want),
        }])
    })
}
