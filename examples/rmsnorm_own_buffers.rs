//! Calls one kernel on buffers of your own: `ops::rmsnorm` over rows of f32 activations with an
//! f32 gain, on the emulated device (or a GPU), checked against the CPU reference
//! (`stagformer_ref::ops::rmsnorm_rows`).
//!
//! ```sh
//! cargo run --example rmsnorm_own_buffers            # the host emulator, any build
//! cargo run --features cuda --example rmsnorm_own_buffers -- cuda   # a GPU
//! ```
//!
//! Exits non-zero when the kernel's output differs from the reference by more than the parity
//! table allows for this op (NMSE 1e-10: both sum the squares in f64, in another order).

use anyhow::{bail, Context, Result};
use stagformer_kernels::ops::rmsnorm::{rmsnorm, Rows};
use stagformer_kernels::{Device, DeviceBuffer};
use stagformer_ref::ops::{rmsnorm_rows, Matrix};

const ROWS: usize = 3;
const DIM: usize = 1000;
const EPS: f32 = 1e-6;
const TOL: f64 = 1e-10;

fn main() -> Result<()> {
    let device = match std::env::args().nth(1).as_deref() {
        None | Some("emu") => Device::emulated(),
        Some("cuda") => Device::cuda(0).context("opening CUDA device 0")?,
        Some(other) => bail!("unknown device {other:?}: expected `emu` or `cuda`"),
    };
    eprintln!("{}", stagformer_kernels::build_info());
    eprintln!("device: {}", device.name());

    // Host data the caller owns: any values; the gain a little different per column.
    let x: Vec<f32> = (0..ROWS * DIM)
        .map(|i| ((i * 7919) % 1009) as f32 / 100.0 - 5.0)
        .collect();
    let gain: Vec<f32> = (0..DIM).map(|c| 1.0 + (c % 13) as f32 / 64.0).collect();

    // Upload, allocate the output, launch, copy back: all ordered on one stream.
    let stream = device.new_stream()?;
    let x_dev = DeviceBuffer::from_host(&stream, &x)?;
    let gain_dev = DeviceBuffer::from_host(&stream, &gain)?;
    let mut out_dev = device.alloc::<f32>(ROWS * DIM)?;
    let shape = Rows {
        rows: ROWS,
        dim: DIM,
    };
    rmsnorm(&stream, &x_dev, &gain_dev, &mut out_dev, shape, EPS)?;
    let got = out_dev.to_host(&stream)?;

    let want = rmsnorm_rows(&Matrix::from_vec(ROWS, DIM, x)?, &gain, f64::from(EPS))?;
    let err: f64 = got
        .iter()
        .zip(&want.data)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum();
    let norm: f64 = want.data.iter().map(|&b| f64::from(b).powi(2)).sum();
    let nmse = err / norm;
    println!(
        "rmsnorm of {ROWS}x{DIM} on {}: NMSE {nmse:.2e} against the CPU reference",
        device.name()
    );
    if !got.iter().all(|v| v.is_finite()) || nmse.is_nan() || nmse > TOL {
        bail!("the kernel's output is not within NMSE {TOL:e} of the reference");
    }
    Ok(())
}
