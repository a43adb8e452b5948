//! The plain C types of the API: enum values as integer constants (a C caller may pass any
//! integer, so each is checked rather than trusted as a Rust enum), the sampling settings, a
//! step's row and sequence ids.

use stagformer::{ExecMode, SamplingParams};

use crate::status::Failure;

/// Where a model runs: one of the `STAG_DEVICE_*` values.
pub type StagDevice = u32;
/// The CPU reference. Scores only: a decoder on it is `STAG_STATUS_UNSUPPORTED`.
pub const STAG_DEVICE_CPU: StagDevice = 0;
/// The CUDA kernels emulated on the CPU (slow; for tests).
pub const STAG_DEVICE_EMU: StagDevice = 1;
/// The CUDA kernels on GPU `gpu` (a library built with the `cuda` feature; otherwise
/// `STAG_STATUS_DEVICE`).
pub const STAG_DEVICE_CUDA: StagDevice = 2;
/// GPU `gpu` when it can be opened, else the CPU reference.
pub const STAG_DEVICE_AUTO: StagDevice = 3;

/// Activation and weight storage on the kernel devices: one of the `STAG_DTYPE_*` values.
/// The CPU reference always computes in f32.
pub type StagDtype = u32;
/// bf16 on cuda, f32 on emu.
pub const STAG_DTYPE_AUTO: StagDtype = 0;
/// f32 activations and weights.
pub const STAG_DTYPE_F32: StagDtype = 1;
/// bf16 activations and weights.
pub const STAG_DTYPE_BF16: StagDtype = 2;

/// How a decoder schedules the sections of a step: one of the `STAG_EXEC_*` values. Every
/// mode computes the same logits.
pub type StagExecMode = u32;
/// Every section on a stream of its own, concurrently.
pub const STAG_EXEC_STAGGERED: StagExecMode = 0;
/// The sections one after another on one stream.
pub const STAG_EXEC_SEQUENTIAL: StagExecMode = 1;
/// Every pass of a layer as one GEMM (shared weights, or one section).
pub const STAG_EXEC_BATCHED: StagExecMode = 2;
/// Every section's layer j in one launch per projection.
pub const STAG_EXEC_GROUPED: StagExecMode = 3;

/// A live sequence of one decoder: its slot in the low 32 bits, the slot's generation in the
/// high 32. Removing a sequence makes its id stale: every later use is
/// `STAG_STATUS_REQUEST`, never the next sequence placed in the slot.
pub type StagSeqId = u64;

/// Row flag: write the logits after the row's last token.
pub const STAG_ROW_LOGITS: u32 = 1;
/// Row flag: draw the token that follows the row's last one with the row's `sampling`.
pub const STAG_ROW_SAMPLE: u32 = 2;

/// Sampling settings of one row.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct StagSampling {
    /// Divides the logits before the softmax; 0 = greedy. Finite and >= 0.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = all.
    pub top_k: u32,
    /// Keep the smallest most-likely set whose probability reaches p; 1 = all. In (0, 1].
    pub top_p: f32,
    /// Seed of the draws: the token at position t of a sequence is drawn from (seed, t), so
    /// equal settings draw equal tokens whatever else is in the batch.
    pub seed: u64,
}

impl From<StagSampling> for SamplingParams {
    fn from(s: StagSampling) -> Self {
        SamplingParams {
            temperature: s.temperature,
            top_k: s.top_k as usize,
            top_p: s.top_p,
            seed: s.seed,
        }
    }
}

/// One row of a step: tokens fed to one live sequence after the tokens it holds (several for
/// a prompt or a prompt chunk, one for a decode step).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct StagRow {
    /// The sequence (from `stag_decoder_add`).
    pub seq: StagSeqId,
    /// `n_tokens` token ids (at least one).
    pub tokens: *const u32,
    /// How many ids `tokens` holds.
    pub n_tokens: usize,
    /// `STAG_ROW_LOGITS` and/or `STAG_ROW_SAMPLE` (0: the row only fills the caches).
    pub flags: u32,
    /// The draw's settings (read with `STAG_ROW_SAMPLE` only).
    pub sampling: StagSampling,
}

/// The device value `device`, checked.
pub(crate) fn check_device(device: StagDevice) -> Result<StagDevice, Failure> {
    match device {
        STAG_DEVICE_CPU | STAG_DEVICE_EMU | STAG_DEVICE_CUDA | STAG_DEVICE_AUTO => Ok(device),
        other => Err(Failure::arg(
            "device",
            format!("{other} is not a STAG_DEVICE_* value (0..=3)"),
        )),
    }
}

/// Whether dtype value `dtype` asks for bf16 (`None`: the device's default), checked.
pub(crate) fn check_dtype(dtype: StagDtype) -> Result<Option<bool>, Failure> {
    match dtype {
        STAG_DTYPE_AUTO => Ok(None),
        STAG_DTYPE_F32 => Ok(Some(false)),
        STAG_DTYPE_BF16 => Ok(Some(true)),
        other => Err(Failure::arg(
            "dtype",
            format!("{other} is not a STAG_DTYPE_* value (0..=2)"),
        )),
    }
}

/// The execution mode value `mode`, checked.
pub(crate) fn exec_mode(mode: StagExecMode) -> Result<ExecMode, Failure> {
    Ok(match mode {
        STAG_EXEC_STAGGERED => ExecMode::Staggered,
        STAG_EXEC_SEQUENTIAL => ExecMode::Sequential,
        STAG_EXEC_BATCHED => ExecMode::Batched,
        STAG_EXEC_GROUPED => ExecMode::Grouped,
        other => {
            return Err(Failure::arg(
                "exec_mode",
                format!("{other} is not a STAG_EXEC_* value (0..=3)"),
            ))
        }
    })
}
