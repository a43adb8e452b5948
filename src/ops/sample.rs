//! Token sampling from rows of f32 logits (`cuda/sample.cu`, docs/MODEL.md "Sampling").
//!
//! Greedy when the temperature is 0 or top_k is 1 (highest logit, lowest id among ties);
//! otherwise temperature, top-k and top-p with the counter-based random number
//! `uniform(seed, sequence, step)` of `stagformer_ref::sample`, so that a token depends only on
//! the logits, the [`SamplingConfig`] and the row's (sequence, step): the same on every run and
//! every device.
//!
//! The kernel selects without sorting (radix select over the logits' bits) and adds the f64
//! weights of the reference as exact fixed-point integers; see `cuda/sample.cu` for why its
//! token equals the reference's except at near-exact ties of cumulative weight.

use crate::device::kernel::{stag_kernel, LaunchConfig};
use crate::device::{AsDeviceView, AsDeviceViewMut, Stream};
use crate::error::{DeviceError, Result};
use crate::ffi::SampleParams;

stag_kernel!(static SAMPLE_F32: SampleParams = sample_f32 in SAMPLE);

/// Dynamic shared memory of the kernel: its histograms and candidate list (`SMEM_BYTES` in
/// `cuda/sample.cu`).
const SAMPLE_SMEM_BYTES: u32 = 73_728;
const MAX_THREADS: usize = 1024;
/// Logits per thread below which a row gets fewer threads (small vocabularies).
const LOGITS_PER_THREAD: usize = 16;

/// How the next token is chosen (the kernel-side twin of `stagformer_ref::sample::SamplingParams`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingConfig {
    /// 0 = greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = all.
    pub top_k: usize,
    /// Keep the smallest most-likely set whose probability reaches p; 1 = all.
    pub top_p: f32,
    pub seed: u64,
}

impl SamplingConfig {
    pub const GREEDY: SamplingConfig = SamplingConfig {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
    };

    /// Temperature finite and >= 0; top_p in (0, 1].
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(DeviceError::invalid(
                "temperature",
                format!("{} must be finite and >= 0", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(DeviceError::invalid(
                "top_p",
                format!("{} must be in (0, 1]", self.top_p),
            ));
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }
}

/// `rows` rows of `vocab` logits, row r starting at element `r · row_stride`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleShape {
    pub rows: usize,
    pub vocab: usize,
    pub row_stride: usize,
}

impl SampleShape {
    /// Rows stored one after another.
    pub fn contiguous(rows: usize, vocab: usize) -> Self {
        SampleShape {
            rows,
            vocab,
            row_stride: vocab,
        }
    }
}

/// Samples one token per row of `logits` into `tokens`, row r drawing
/// `uniform(config.seed, sequences[r], steps[r])`.
///
/// `logits` holds the rows of `shape` (its length between `(rows − 1) · row_stride + vocab` and
/// `rows · row_stride`); `tokens`, `sequences` and `steps` hold `rows` elements each. Token ids
/// are in `[0, vocab)`.
pub fn sample(
    stream: &Stream,
    logits: &impl AsDeviceView<f32>,
    tokens: &mut impl AsDeviceViewMut<i32>,
    sequences: &impl AsDeviceView<u32>,
    steps: &impl AsDeviceView<u32>,
    shape: SampleShape,
    config: &SamplingConfig,
) -> Result<()> {
    let (logits, sequences, steps) = (logits.view(), sequences.view(), steps.view());
    let mut tokens = tokens.view_mut();
    config.validate()?;
    let (rows, vocab, stride) = check_shape(shape)?;
    check_logits_len(logits.len(), shape)?;
    check_len("tokens", tokens.len(), shape.rows)?;
    check_len("sequences", sequences.len(), shape.rows)?;
    check_len("steps", steps.len(), shape.rows)?;
    if rows == 0 {
        return Ok(());
    }
    let params = SampleParams {
        logits: logits.as_ptr().cast(),
        tokens: tokens.as_mut_ptr().cast(),
        sequences: sequences.as_ptr().cast(),
        steps: steps.as_ptr().cast(),
        workspace: std::ptr::null_mut(),
        workspace_bytes: 0,
        seed: config.seed,
        rows,
        vocab,
        logits_row_stride: stride,
        // Any k >= vocab keeps every token, as 0 does.
        top_k: u32::try_from(config.top_k.min(shape.vocab)).unwrap_or(0),
        temperature: config.temperature,
        top_p: config.top_p,
    };
    let retained = [
        logits.retain("logits"),
        tokens.retain("tokens"),
        sequences.retain("sequences"),
        steps.retain("steps"),
    ];
    // SAFETY: every pointer comes from a view retained above whose length was checked: the
    // kernel reads row r's `vocab` logits from r · stride (all within `logits`), and element r of
    // `sequences` and `steps` and writes element r of `tokens` for r < rows, nothing else; it
    // uses the dynamic shared memory size passed here and no workspace. `tokens` is borrowed
    // mutably, so no other safe code aliases it.
    unsafe { stream.launch(&SAMPLE_F32, launch_config(shape), params, &retained) }
}

fn check_shape(shape: SampleShape) -> Result<(u32, u32, u32)> {
    if shape.vocab == 0 {
        return Err(DeviceError::invalid("vocab", "must be at least 1"));
    }
    // Token ids are i32.
    let vocab = u32::try_from(shape.vocab)
        .ok()
        .filter(|&v| v <= i32::MAX as u32)
        .ok_or_else(|| {
            DeviceError::invalid("vocab", format!("{} exceeds 2^31 - 1", shape.vocab))
        })?;
    let rows = u32::try_from(shape.rows)
        .ok()
        .filter(|&r| r <= i32::MAX as u32)
        .ok_or_else(|| DeviceError::invalid("rows", format!("{} exceeds 2^31 - 1", shape.rows)))?;
    if shape.row_stride < shape.vocab {
        return Err(DeviceError::invalid(
            "row_stride",
            format!("{} is below vocab {}", shape.row_stride, shape.vocab),
        ));
    }
    let stride = u32::try_from(shape.row_stride).map_err(|_| {
        DeviceError::invalid("row_stride", format!("{} exceeds u32", shape.row_stride))
    })?;
    shape
        .rows
        .checked_mul(shape.row_stride)
        .ok_or_else(|| DeviceError::overflow("rows", "rows × row_stride"))?;
    Ok((rows, vocab, stride))
}

fn check_logits_len(found: usize, shape: SampleShape) -> Result<()> {
    if shape.rows == 0 {
        return Ok(());
    }
    // Cannot overflow: check_shape bounded rows × row_stride.
    let min = (shape.rows - 1) * shape.row_stride + shape.vocab;
    let max = shape.rows * shape.row_stride;
    if found < min || found > max {
        let expected = if min == max {
            format!("{min} elements")
        } else {
            format!("{min} to {max} elements")
        };
        return Err(DeviceError::ShapeMismatch {
            arg: "logits",
            expected: format!(
                "{expected} ({} rows of {} at stride {})",
                shape.rows, shape.vocab, shape.row_stride
            ),
            found: format!("{found} elements"),
        });
    }
    Ok(())
}

fn check_len(arg: &'static str, found: usize, expected: usize) -> Result<()> {
    if found != expected {
        return Err(DeviceError::LengthMismatch {
            arg,
            expected,
            found,
        });
    }
    Ok(())
}

/// One block per row; small vocabularies get fewer threads (about 16 logits each).
fn launch_config(shape: SampleShape) -> LaunchConfig {
    let threads = shape
        .vocab
        .div_ceil(LOGITS_PER_THREAD)
        .next_multiple_of(32)
        .clamp(32, MAX_THREADS);
    LaunchConfig::linear(shape.rows as u32, threads as u32, SAMPLE_SMEM_BYTES)
}
