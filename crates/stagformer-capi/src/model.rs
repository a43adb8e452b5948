//! Loading a model onto a device, and scoring tokens with it.

use std::ffi::c_char;
use std::path::Path;

use half::bf16;
use stagformer::{Activation, Decoder, DecoderOptions, PrefillLogits};
use stagformer_kernels::Device;
use stagformer_ref::{score, Checkpoint, Model, ScoreMode, TensorSource};

use crate::buffers::{out, product, slice, slice_mut, string};
use crate::status::{free_handle, guard, Failure, StagStatus};
use crate::types::{check_device, check_dtype, StagDevice, StagDtype, STAG_DEVICE_AUTO};
use crate::types::{STAG_DEVICE_CPU, STAG_DEVICE_CUDA, STAG_DEVICE_EMU};

/// A loaded model (opaque): on the CPU reference, the whole model in host f32; on a kernel
/// device, the checkpoint mapped (decoders upload their weights from it).
pub struct StagModel {
    pub(crate) engine: Engine,
}

/// Where a model runs and how it is held there.
pub(crate) enum Engine {
    Cpu(Model),
    Kernels {
        device: Device,
        bf16: bool,
        checkpoint: Checkpoint,
    },
}

impl StagModel {
    /// The vocabulary size (the width of a logits row).
    pub(crate) fn vocab(&self) -> usize {
        match &self.engine {
            Engine::Cpu(model) => model.config.vocab_size,
            Engine::Kernels { checkpoint, .. } => checkpoint.config().vocab_size,
        }
    }
}

/// The kernel device `device` opens, and whether it computes in bf16 (`None`: the cpu).
fn resolve(
    device: StagDevice,
    gpu: u32,
    bf16: Option<bool>,
) -> Result<Option<(Device, bool)>, Failure> {
    let cuda = || Device::cuda(gpu as usize);
    Ok(match device {
        STAG_DEVICE_CPU => None,
        STAG_DEVICE_EMU => Some((Device::emulated(), bf16.unwrap_or(false))),
        STAG_DEVICE_CUDA => {
            let dev = cuda().map_err(|e| {
                Failure::new(StagStatus::Device, format!("device cuda, gpu {gpu}: {e}"))
            })?;
            Some((dev, bf16.unwrap_or(true)))
        }
        STAG_DEVICE_AUTO => cuda().ok().map(|dev| (dev, bf16.unwrap_or(true))),
        other => {
            return Err(Failure::arg(
                "device",
                format!("{other} is not a STAG_DEVICE_* value (0..=3)"),
            ))
        }
    })
}

/// Loads the model in directory `path` (config.json + safetensors; a Hugging Face Llama or
/// Mistral directory loads as it is) onto `device` (a `STAG_DEVICE_*` value; `gpu` is the
/// CUDA ordinal of `STAG_DEVICE_CUDA` and `STAG_DEVICE_AUTO`) with storage `dtype` (a
/// `STAG_DTYPE_*` value), and stores the new handle in `*out_model` (free it with
/// `stag_model_free`). The device is opened before the files are read, so a missing GPU is
/// reported first. On failure `*out_model` is left unchanged.
///
/// # Safety
/// `path` must be null or a NUL-terminated string; `out_model` null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn stag_model_load(
    path: *const c_char,
    device: StagDevice,
    gpu: u32,
    dtype: StagDtype,
    out_model: *mut *mut StagModel,
) -> StagStatus {
    guard(|| {
        // SAFETY: the caller passes a NUL-terminated string or null (checked inside).
        let dir = unsafe { string("path", path) }?;
        // SAFETY: the caller passes null (checked) or a pointer valid for one write.
        let slot = unsafe { out("out_model", out_model) }?;
        let bf16 = check_dtype(dtype)?;
        let engine = match resolve(check_device(device)?, gpu, bf16)? {
            None => Engine::Cpu(Model::load(Path::new(dir))?),
            Some((device, bf16)) => Engine::Kernels {
                device,
                bf16,
                checkpoint: Checkpoint::open(Path::new(dir))?,
            },
        };
        *slot = Box::into_raw(Box::new(StagModel { engine }));
        Ok(())
    })
}

/// Frees a model from `stag_model_load` (null: nothing). Decoders created from it hold their
/// own weights and stay usable.
///
/// # Safety
/// `model` must be null or a handle from `stag_model_load` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn stag_model_free(model: *mut StagModel) {
    // SAFETY: the caller hands back null or a live handle from Box::into_raw in
    // stag_model_load.
    unsafe { free_handle(model) }
}

/// The model's vocabulary size (the length of one logits row) in `*out_vocab`.
///
/// # Safety
/// `model` must be null or a live handle; `out_vocab` null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn stag_model_vocab_size(
    model: *const StagModel,
    out_vocab: *mut usize,
) -> StagStatus {
    guard(|| {
        // SAFETY: null is checked; otherwise the caller passes a live handle.
        let model = unsafe { model.as_ref() }.ok_or_else(|| Failure::arg("model", "is null"))?;
        // SAFETY: the caller passes null (checked) or a pointer valid for one write.
        *unsafe { out("out_vocab", out_vocab) }? = model.vocab();
        Ok(())
    })
}

/// Scores `n_tokens` token ids: writes the logits after every token, `n_tokens` rows of the
/// vocabulary size, row-major, into `logits` (which must hold `logits_len` ≥ n_tokens ×
/// vocab floats). The CPU reference computes the definition (every section over the whole
/// sequence); a kernel device prefills the tokens in a decoder of one sequence, which equals
/// it to rounding. Tokens outside the vocabulary or more than the model's positions are
/// `STAG_STATUS_REQUEST`.
///
/// # Safety
/// `model` must be null or a live handle, `tokens` null or `n_tokens` readable ids, `logits`
/// null or `logits_len` writable floats.
#[no_mangle]
pub unsafe extern "C" fn stag_score(
    model: *const StagModel,
    tokens: *const u32,
    n_tokens: usize,
    logits: *mut f32,
    logits_len: usize,
) -> StagStatus {
    guard(|| {
        // SAFETY: null is checked; otherwise the caller passes a live handle.
        let model = unsafe { model.as_ref() }.ok_or_else(|| Failure::arg("model", "is null"))?;
        if n_tokens == 0 {
            return Err(Failure::arg(
                "n_tokens",
                "is 0; at least one token is scored",
            ));
        }
        // SAFETY: the caller passes `n_tokens` readable ids or null (checked inside).
        let tokens = unsafe { slice("tokens", tokens, n_tokens) }?;
        let needed = product("logits", n_tokens, model.vocab())?;
        // SAFETY: the caller passes `logits_len` writable floats or null (checked inside).
        let dst = unsafe { slice_mut("logits", logits, logits_len, needed) }?;
        let values = match &model.engine {
            Engine::Cpu(m) => score(m, tokens, ScoreMode::Forward)?.data,
            Engine::Kernels {
                device,
                bf16: false,
                checkpoint,
            } => prefill_all::<f32>(device, checkpoint, tokens)?,
            Engine::Kernels {
                device,
                bf16: true,
                checkpoint,
            } => prefill_all::<bf16>(device, checkpoint, tokens)?,
        };
        dst.copy_from_slice(&values);
        Ok(())
    })
}

/// Every position's logits of `tokens` from a one-sequence decoder's prefill.
fn prefill_all<T: Activation>(
    device: &Device,
    source: &impl TensorSource,
    tokens: &[u32],
) -> Result<Vec<f32>, Failure> {
    let opts = DecoderOptions::new(1, tokens.len());
    let mut decoder = Decoder::<T>::from_source(device, source, opts)?;
    Ok(decoder.prefill_logits(tokens, PrefillLogits::All)?.1)
}
