//! The grouped decode GEMV (`ops::gemv_grouped`; groups = 1 is the plain `gemv`): the RmsNorm
//! prologue with the store epilogue (the other epilogues add a few bytes per output row,
//! nothing per weight byte), at the projections of the 1.3b preset's widths, 1 and 8 rows a
//! group, 1, 2 and 4 groups (a group is one section's weight: the Grouped decode step's
//! launch over p sections).
//!
//! Bytes: every group's weight read once plus its rows' inputs and outputs,
//! `groups · (n·k + rows·k + rows·n) · 2` (bf16) plus the gains `groups · k · 4`.
//! FLOPs `2 · groups · rows · n · k`.

use half::bf16;
use stagformer_kernels::device::{DeviceView, Stream};
use stagformer_kernels::ops::gemv::{gemv_grouped, GemvEpilogue, GemvShape, GroupedPrologue};

use super::{copies_for, output_copies, random_copies, KernelBench, EPS};

pub fn gemv_grouped_benches() -> Vec<KernelBench> {
    // The 1.3b preset: d 2048, 8 kv heads of 128, ffn 5632.
    let projections = [
        ("qkv", 2048 + 2 * 8 * 128, 2048),
        ("o", 2048, 2048),
        ("gate_up", 2 * 5632, 2048),
        ("down", 2048, 5632),
    ];
    let mut benches = Vec::new();
    for (proj, n, k) in projections {
        for groups in [1u64, 2, 4] {
            for rows in [1u64, 8] {
                benches.push(gemv_bench(proj, groups, rows, n, k));
            }
        }
    }
    benches
}

fn gemv_bench(proj: &'static str, groups: u64, rows: u64, n: u64, k: u64) -> KernelBench {
    let m = groups * rows;
    let bytes = groups * (n * k + rows * k + rows * n) * 2 + groups * k * 4;
    let flops = 2 * m * n * k;
    let shape = [("groups", groups), ("m", m), ("n", n), ("k", k)];
    let variant = format!("bf16.{proj}");
    KernelBench::new(
        "gemv_grouped",
        variant,
        &shape,
        bytes,
        flops,
        move |stream| {
            let copies = copies_for(bytes);
            let g = groups as usize;
            let shape = GemvShape {
                m: m as usize,
                n: n as usize,
                k: k as usize,
            };
            let x = random_copies::<bf16>(stream, shape.m * shape.k, copies, 11)?;
            // Copy c's weights of group j: `w[c * groups + j]`.
            let w = random_copies::<bf16>(stream, shape.n * shape.k, copies * groups, 12)?;
            let gain = random_copies::<f32>(stream, shape.k, groups, 13)?;
            let mut y = output_copies::<bf16>(stream.device(), shape.m * shape.n, copies)?;
            Ok(Box::new(move |s: &Stream, call: u64| {
                let c = (call % copies) as usize;
                let ws: Vec<DeviceView<'_, bf16>> =
                    w[c * g..(c + 1) * g].iter().map(|b| b.view()).collect();
                let gains: Vec<DeviceView<'_, f32>> = gain.iter().map(|b| b.view()).collect();
                gemv_grouped(
                    s,
                    &x[c],
                    &ws,
                    shape,
                    GroupedPrologue::RmsNorm {
                        weights: &gains,
                        eps: EPS,
                    },
                    GemvEpilogue::Store {
                        y: y[c].view_mut(),
                        row_stride: shape.n,
                    },
                )
            }))
        },
    )
}
