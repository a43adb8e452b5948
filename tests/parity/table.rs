//! Rows of the parity table and how one is checked.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use stagformer_kernels::device::{Device, DeviceBuffer, Stream};
use stagformer_kernels::dtype::DeviceElem;

/// One output of a row: the kernel's values and the reference's.
pub struct Compared {
    pub output: &'static str,
    pub got: Vec<f64>,
    pub want: Vec<f64>,
}

type RunFn = Box<dyn Fn(&Stream, &mut Inputs) -> anyhow::Result<Vec<Compared>>>;

/// One row: a name (op, dtype, shape), the NMSE bound and the run.
pub struct Case {
    pub name: String,
    pub tolerance: f64,
    pub run: RunFn,
}

impl Case {
    pub fn new(
        name: String,
        tolerance: f64,
        run: impl Fn(&Stream, &mut Inputs) -> anyhow::Result<Vec<Compared>> + 'static,
    ) -> Self {
        Case {
            name,
            tolerance,
            run: Box::new(run),
        }
    }
}

/// Fresh random inputs for one row.
pub struct Inputs {
    rng: StdRng,
}

impl Inputs {
    /// `n` values ~ N(mean, std²), never all zero.
    pub fn normal(&mut self, n: usize, mean: f32, std: f32) -> Vec<f32> {
        (0..n)
            .map(|_| mean + std * self.rng.sample::<f32, _>(StandardNormal))
            .collect()
    }
}

/// A device buffer of `n` elements filled with the poison value (NaN for floats), so elements a
/// kernel does not write fail the finite check.
pub fn poisoned<T: DeviceElem>(stream: &Stream, n: usize) -> anyhow::Result<DeviceBuffer<T>> {
    Ok(DeviceBuffer::from_host(stream, &vec![T::POISON; n])?)
}

/// Σ(a−b)² / Σb².
pub fn nmse(got: &[f64], want: &[f64]) -> f64 {
    let err: f64 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum();
    let norm: f64 = want.iter().map(|b| b * b).sum();
    if norm == 0.0 {
        err
    } else {
        err / norm
    }
}

fn name_seed(name: &str, seed: u64) -> u64 {
    name.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Runs every row on `dev`; prints one line per row and returns (passed, failed).
pub fn run_table(dev: &Device, cases: &[Case], seed: u64) -> (usize, usize) {
    println!();
    println!("device: {}", dev.name());
    let stream = match dev.new_stream() {
        Ok(s) => s,
        Err(e) => {
            println!("  FAIL could not create a stream: {e}");
            return (0, cases.len());
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for case in cases {
        let mut inputs = Inputs {
            rng: StdRng::seed_from_u64(name_seed(&case.name, seed)),
        };
        let verdict = match (case.run)(&stream, &mut inputs) {
            Err(e) => Err(format!("error: {e:#}")),
            Ok(outputs) => judge(&outputs, case.tolerance),
        };
        match verdict {
            Ok(worst) => {
                passed += 1;
                println!(
                    "  ok   {:<58} nmse {worst:9.2e} <= {:.0e}",
                    case.name, case.tolerance
                );
            }
            Err(why) => {
                failed += 1;
                println!("  FAIL {:<58} {why}", case.name);
            }
        }
    }
    (passed, failed)
}

/// The worst NMSE over the outputs, or why the row fails.
fn judge(outputs: &[Compared], tolerance: f64) -> Result<f64, String> {
    let mut worst = 0f64;
    for c in outputs {
        if c.got.len() != c.want.len() {
            return Err(format!(
                "{}: {} values, expected {}",
                c.output,
                c.got.len(),
                c.want.len()
            ));
        }
        if let Some(i) = c.got.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "{}: non-finite value {} at {i} (unwritten or overflow)",
                c.output, c.got[i]
            ));
        }
        if c.want.iter().all(|&v| v == 0.0) {
            return Err(format!(
                "{}: the reference is all zeros; the row checks nothing",
                c.output
            ));
        }
        let e = nmse(&c.got, &c.want);
        if e.is_nan() || e > tolerance {
            return Err(format!("{}: nmse {e:.3e} > {tolerance:.0e}", c.output));
        }
        worst = worst.max(e);
    }
    Ok(worst)
}

/// Float element types of the table: conversions from the f32 inputs and to f64 for checks.
pub trait Float: DeviceElem {
    const NAME: &'static str;
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl Float for f32 {
    const NAME: &'static str = "f32";
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Float for half::bf16 {
    const NAME: &'static str = "bf16";
    fn from_f32(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

impl Float for half::f16 {
    const NAME: &'static str = "f16";
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

/// `values` stored as `T`, and the f32 values the device really sees (rounded through `T`).
pub fn stored<T: Float>(values: &[f32]) -> (Vec<T>, Vec<f32>) {
    let stored: Vec<T> = values.iter().map(|&v| T::from_f32(v)).collect();
    let seen = stored.iter().map(|&v| v.to_f32()).collect();
    (stored, seen)
}

pub fn widen<T: Float>(values: &[T]) -> Vec<f64> {
    values.iter().map(|&v| f64::from(v.to_f32())).collect()
}

pub fn widen_f32(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| f64::from(v)).collect()
}
