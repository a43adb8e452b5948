//! A batched decoder on a kernel device: sequences added and removed, steps over rows of
//! tokens with per-row logits and sampling.

use half::bf16;
use stagformer::{BatchRow, Decoder, DecoderOptions, PrefillLogits, RowOutput, SeqId};

use crate::buffers::{out, product, slice, slice_mut};
use crate::model::{Engine, StagModel};
use crate::status::{free_handle, guard, Failure, StagStatus};
use crate::types::{StagExecMode, StagRow, StagSeqId, STAG_ROW_LOGITS, STAG_ROW_SAMPLE};

/// A decoder of up to `max_batch` sequences (opaque), f32 or bf16 as its model was loaded.
pub struct StagDecoder {
    inner: Typed,
    /// The live id of each slot, so that a `StagSeqId` from C maps back to the decoder's id
    /// only while it is the slot's current one (a stale id is refused).
    live: Vec<Option<SeqId>>,
    vocab: usize,
}

/// The decoder in its activation type.
enum Typed {
    F32(Decoder<f32>),
    Bf16(Decoder<bf16>),
}

/// Runs `$body` with `$d` bound to the decoder whatever its type.
macro_rules! with_decoder {
    ($typed:expr, $d:ident => $body:expr) => {
        match $typed {
            Typed::F32($d) => $body,
            Typed::Bf16($d) => $body,
        }
    };
}

fn pack(id: SeqId) -> StagSeqId {
    (u64::from(id.generation()) << 32) | id.slot() as u64
}

impl StagDecoder {
    /// The decoder's id for C id `seq` while it names a live sequence.
    fn lookup(&self, arg: &str, seq: StagSeqId) -> Result<SeqId, Failure> {
        let slot = (seq & 0xffff_ffff) as usize;
        match self.live.get(slot).copied().flatten() {
            Some(id) if pack(id) == seq => Ok(id),
            _ => Err(Failure::new(
                StagStatus::Request,
                format!(
                    "{arg}: sequence {slot}.{} is not live in this decoder (removed, or never added)",
                    seq >> 32
                ),
            )),
        }
    }
}

/// The decoder behind `decoder`, checked for null.
///
/// # Safety
/// `decoder` must be null or a live handle not used by another thread meanwhile.
unsafe fn handle<'a>(decoder: *mut StagDecoder) -> Result<&'a mut StagDecoder, Failure> {
    // SAFETY: null is checked; otherwise the caller's contract makes it a live, unshared handle.
    unsafe { decoder.as_mut() }.ok_or_else(|| Failure::arg("decoder", "is null"))
}

/// Creates a decoder for `model` (loaded on `STAG_DEVICE_EMU` or `STAG_DEVICE_CUDA`; the
/// CPU reference is `STAG_STATUS_UNSUPPORTED`) holding up to `max_batch` sequences of up to
/// `capacity` tokens each, scheduled by `exec_mode` (a `STAG_EXEC_*` value), with KV pages
/// of `page_size` slots (0: dense caches). Its weights are uploaded now; the model may be
/// freed afterwards. The handle goes to `*out_decoder` (free it with `stag_decoder_free`).
/// A handle is used by one thread at a time.
///
/// # Safety
/// `model` must be null or a live handle; `out_decoder` null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn stag_decoder_new(
    model: *const StagModel,
    max_batch: usize,
    capacity: usize,
    exec_mode: StagExecMode,
    page_size: usize,
    out_decoder: *mut *mut StagDecoder,
) -> StagStatus {
    guard(|| {
        // SAFETY: null is checked; otherwise the caller passes a live handle.
        let model = unsafe { model.as_ref() }.ok_or_else(|| Failure::arg("model", "is null"))?;
        // SAFETY: the caller passes null (checked) or a pointer valid for one write.
        let slot = unsafe { out("out_decoder", out_decoder) }?;
        let opts = DecoderOptions {
            mode: crate::types::exec_mode(exec_mode)?,
            kv_page_size: page_size,
            ..DecoderOptions::new(max_batch, capacity)
        };
        let inner = match &model.engine {
            Engine::Cpu(_) => {
                return Err(Failure::new(
                    StagStatus::Unsupported,
                    "model: loaded on the cpu reference, which scores only; load it on \
                     STAG_DEVICE_EMU or STAG_DEVICE_CUDA for a decoder",
                ))
            }
            Engine::Kernels {
                device,
                bf16: false,
                checkpoint,
            } => Typed::F32(Decoder::from_checkpoint(device, checkpoint, opts)?),
            Engine::Kernels {
                device,
                bf16: true,
                checkpoint,
            } => Typed::Bf16(Decoder::from_checkpoint(device, checkpoint, opts)?),
        };
        let decoder = StagDecoder {
            inner,
            live: vec![None; max_batch],
            vocab: model.vocab(),
        };
        *slot = Box::into_raw(Box::new(decoder));
        Ok(())
    })
}

/// Frees a decoder from `stag_decoder_new` (null: nothing); its sequence ids die with it.
///
/// # Safety
/// `decoder` must be null or a handle from `stag_decoder_new` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn stag_decoder_free(decoder: *mut StagDecoder) {
    // SAFETY: the caller hands back null or a live handle from Box::into_raw in
    // stag_decoder_new.
    unsafe { free_handle(decoder) }
}

/// Adds an empty sequence and writes its id to `*out_seq`; a step's row gives it its first
/// tokens (the prompt, all at once or in chunks). A full decoder is `STAG_STATUS_REQUEST`.
///
/// # Safety
/// `decoder` must be null or a live handle; `out_seq` null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn stag_decoder_add(
    decoder: *mut StagDecoder,
    out_seq: *mut StagSeqId,
) -> StagStatus {
    guard(|| {
        // SAFETY: null is checked inside; the caller passes a live handle otherwise.
        let d = unsafe { handle(decoder) }?;
        // SAFETY: the caller passes null (checked) or a pointer valid for one write.
        let slot = unsafe { out("out_seq", out_seq) }?;
        let id = with_decoder!(&mut d.inner, dec => dec.add())?;
        d.live[id.slot()] = Some(id);
        *slot = pack(id);
        Ok(())
    })
}

/// Removes sequence `seq`, freeing its slot (and KV pages); `seq` is stale from now on.
///
/// # Safety
/// `decoder` must be null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn stag_decoder_remove(
    decoder: *mut StagDecoder,
    seq: StagSeqId,
) -> StagStatus {
    guard(|| {
        // SAFETY: null is checked inside; the caller passes a live handle otherwise.
        let d = unsafe { handle(decoder) }?;
        let id = d.lookup("seq", seq)?;
        with_decoder!(&mut d.inner, dec => dec.remove(id))?;
        d.live[id.slot()] = None;
        Ok(())
    })
}

/// The number of tokens sequence `seq` holds, in `*out_len`.
///
/// # Safety
/// `decoder` must be null or a live handle; `out_len` null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn stag_decoder_len(
    decoder: *mut StagDecoder,
    seq: StagSeqId,
    out_len: *mut usize,
) -> StagStatus {
    guard(|| {
        // SAFETY: null is checked inside; the caller passes a live handle otherwise.
        let d = unsafe { handle(decoder) }?;
        // SAFETY: the caller passes null (checked) or a pointer valid for one write.
        let slot = unsafe { out("out_len", out_len) }?;
        let id = d.lookup("seq", seq)?;
        *slot = with_decoder!(&d.inner, dec => dec.len(id))?;
        Ok(())
    })
}

/// One step over `n_rows` rows, each feeding tokens to a distinct live sequence after the
/// tokens it holds: several for a prompt (chunk), one for a decode step; all rows run in the
/// one call. Row r with `STAG_ROW_LOGITS` gets the logits after its last token in
/// `logits[r × vocab ..]` (then `logits` must hold n_rows × vocab floats); row r with
/// `STAG_ROW_SAMPLE` gets the token drawn after its last one with its `sampling` in
/// `sampled[r]` (then `sampled` must hold n_rows ids) and, when `logprobs` is not null, the
/// token's log-probability in `logprobs[r]` (n_rows floats). Entries of rows that did not ask
/// are left as they were; either buffer may be null when no row asks for it. Everything is
/// checked before anything runs (a stale id, a sequence twice, a token outside the
/// vocabulary, a length past the capacity, bad settings, too few KV pages: nothing changes);
/// on any failure no buffer is written. `STAG_STATUS_NON_FINITE`: the step was taken.
///
/// # Safety
/// `decoder` must be null or a live handle; `rows` null or `n_rows` readable rows, each
/// row's `tokens` null or `n_tokens` readable ids; each output null or as long as its
/// length says.
#[no_mangle]
#[allow(clippy::too_many_arguments)] // each buffer is a pointer and its length: plain C
pub unsafe extern "C" fn stag_decoder_step(
    decoder: *mut StagDecoder,
    rows: *const StagRow,
    n_rows: usize,
    logits: *mut f32,
    logits_len: usize,
    sampled: *mut u32,
    sampled_len: usize,
    logprobs: *mut f32,
    logprobs_len: usize,
) -> StagStatus {
    guard(|| {
        // SAFETY: null is checked inside; the caller passes a live handle otherwise.
        let d = unsafe { handle(decoder) }?;
        if n_rows == 0 {
            return Err(Failure::arg("n_rows", "is 0; a step has at least one row"));
        }
        // SAFETY: the caller passes `n_rows` readable rows or null (checked inside).
        let rows = unsafe { slice("rows", rows, n_rows) }?;
        let mut batch = Vec::with_capacity(rows.len());
        for (r, row) in rows.iter().enumerate() {
            batch.push(d.batch_row(r, row)?);
        }
        let wants_logits = batch.iter().any(|b| b.logits != PrefillLogits::None);
        let wants_draws = batch.iter().any(|b| b.sample.is_some());
        let logits_needed = if wants_logits {
            product("logits", n_rows, d.vocab)?
        } else {
            0
        };
        let draws_needed = if wants_draws { n_rows } else { 0 };
        let logprobs_needed = if logprobs.is_null() { 0 } else { draws_needed };
        // SAFETY (all three): the caller passes each buffer null or with its stated length
        // (null and short buffers are refused inside).
        let logits = unsafe { slice_mut("logits", logits, logits_len, logits_needed) }?;
        let sampled = unsafe { slice_mut("sampled", sampled, sampled_len, draws_needed) }?;
        let logprobs = unsafe { slice_mut("logprobs", logprobs, logprobs_len, logprobs_needed) }?;
        let outputs: Vec<RowOutput> = with_decoder!(&mut d.inner, dec => dec.step_batch(&batch))?;
        for (r, output) in outputs.iter().enumerate() {
            if !output.logits.is_empty() {
                logits[r * d.vocab..(r + 1) * d.vocab].copy_from_slice(&output.logits);
            }
            if let Some(s) = output.sampled {
                sampled[r] = s.token;
                if let Some(lp) = logprobs.get_mut(r) {
                    *lp = s.logprob;
                }
            }
        }
        Ok(())
    })
}

impl StagDecoder {
    /// Row `r` of a step as the decoder's batch row, checked.
    fn batch_row(&self, r: usize, row: &StagRow) -> Result<BatchRow, Failure> {
        let id = self.lookup(&format!("rows[{r}].seq"), row.seq)?;
        if row.n_tokens == 0 {
            return Err(Failure::arg(&format!("rows[{r}].n_tokens"), "is 0"));
        }
        if row.flags & !(STAG_ROW_LOGITS | STAG_ROW_SAMPLE) != 0 {
            return Err(Failure::arg(
                &format!("rows[{r}].flags"),
                format!(
                    "{:#x} has bits other than STAG_ROW_LOGITS | STAG_ROW_SAMPLE",
                    row.flags
                ),
            ));
        }
        // SAFETY: the caller's contract: a row's `tokens` holds `n_tokens` readable ids or is
        // null (checked inside).
        let tokens = unsafe { slice(&format!("rows[{r}].tokens"), row.tokens, row.n_tokens) }?;
        let position = with_decoder!(&self.inner, dec => dec.len(id))?;
        let want = if row.flags & STAG_ROW_LOGITS != 0 {
            PrefillLogits::Last
        } else {
            PrefillLogits::None
        };
        let sample = (row.flags & STAG_ROW_SAMPLE != 0).then(|| row.sampling.into());
        Ok(BatchRow::chunk(id, position, tokens.to_vec())
            .with_logits(want)
            .with_sample(sample))
    }
}
