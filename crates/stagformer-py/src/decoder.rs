//! `Model.decoder()`: a batch of sequences decoded together, on the CPU reference's
//! `DecodeBatch` or the kernel decoder, behind one Python class.

use std::collections::HashMap;
use std::sync::Arc;

use half::bf16;
use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use stagformer::{DecoderOptions, PrefillLogits, SamplingParams, SeqId};
use stagformer_ref::sample::{try_sample, validate_rows};
use stagformer_ref::{DecodeBatch, RequestError, StepMode};

use crate::errors::{bad_request, to_py};

/// The CPU reference's batch with the model it borrows, kept alive together.
pub struct CpuBatch {
    // Declared before `_model`, so it is dropped first: it borrows the model.
    batch: DecodeBatch<'static>,
    _model: Arc<stagformer_ref::Model>,
}

impl CpuBatch {
    /// A batch of `max_batch` sequences of up to `capacity` positions over `model`.
    pub fn new(
        model: Arc<stagformer_ref::Model>,
        mode: StepMode,
        max_batch: usize,
        capacity: usize,
    ) -> PyResult<Self> {
        // SAFETY: the model lives on the heap behind the `Arc` stored in the same struct, so it
        // neither moves nor is freed while `batch` exists: `batch` is declared first and
        // dropped first, and the `'static` reference never leaves this struct (the batch's
        // methods return owned values only).
        let model_ref: &'static stagformer_ref::Model = unsafe { &*Arc::as_ptr(&model) };
        let batch = DecodeBatch::new(model_ref, mode, max_batch, capacity).map_err(to_py)?;
        Ok(CpuBatch {
            batch,
            _model: model,
        })
    }
}

/// The engine under a [`Decoder`]: f32/bf16 kernel decoders and the CPU batch behind one type.
pub enum Core {
    /// The CPU reference.
    Cpu(CpuBatch),
    /// The kernel decoder in f32.
    F32(stagformer::Decoder<f32>),
    /// The kernel decoder in bf16.
    Bf16(stagformer::Decoder<bf16>),
}

/// Runs `$body` with `$d` bound to the kernel decoder, whatever its activation type.
macro_rules! kernels {
    ($core:expr, $cpu:ident => $on_cpu:expr, $d:ident => $body:expr) => {
        match $core {
            Core::Cpu($cpu) => $on_cpu,
            Core::F32($d) => $body,
            Core::Bf16($d) => $body,
        }
    };
}

impl Core {
    /// Kernel decoder options as the CLI builds them.
    pub fn options(
        max_batch: usize,
        capacity: usize,
        mode: stagformer::ExecMode,
        recurrent: bool,
        kv_page_size: usize,
    ) -> DecoderOptions {
        DecoderOptions {
            mode,
            recurrent,
            kv_page_size,
            ..DecoderOptions::new(max_batch, capacity)
        }
    }

    /// Adds a sequence for `prompt`: its id and the logits `want` asks for.
    pub fn prefill(&mut self, prompt: &[u32], want: PrefillLogits) -> PyResult<(SeqId, Vec<f32>)> {
        kernels!(self,
            cpu => {
                let (id, logits) = cpu.batch.prefill(prompt).map_err(to_py)?;
                let keep = want.rows(prompt.len()) * logits.cols;
                let mut data = logits.data;
                data.drain(..data.len() - keep);
                Ok((id, data))
            },
            d => d.prefill_logits(prompt, want).map_err(to_py)
        )
    }

    /// One decode step: logits [B, V] after each sequence's token.
    pub fn step(&mut self, seqs: &[SeqId], tokens: &[u32]) -> PyResult<Vec<f32>> {
        kernels!(self,
            cpu => Ok(cpu.batch.step(seqs, tokens).map_err(to_py)?.data),
            d => d.step(seqs, tokens).map_err(to_py)
        )
    }

    /// One decode step that samples each row's next token with its settings; the draw is
    /// keyed by the sampled token's position on both engines.
    pub fn step_sample(
        &mut self,
        seqs: &[SeqId],
        tokens: &[u32],
        sampling: &[SamplingParams],
    ) -> PyResult<Vec<u32>> {
        kernels!(self,
            cpu => {
                // As the kernel decoder: the settings are checked before anything runs.
                if sampling.len() != seqs.len() {
                    return Err(to_py(RequestError::SamplingArity {
                        ids: seqs.len(),
                        settings: sampling.len(),
                    }));
                }
                validate_rows(sampling).map_err(to_py)?;
                let logits = cpu.batch.step(seqs, tokens).map_err(to_py)?;
                let vocab = logits.cols;
                let mut out = Vec::with_capacity(seqs.len());
                for (r, (&id, params)) in seqs.iter().zip(sampling).enumerate() {
                    let position = cpu.batch.len(id).map_err(to_py)? as u64;
                    let row = &logits.data[r * vocab..(r + 1) * vocab];
                    out.push(try_sample(row, params, position, r).map_err(|e| to_py(stagformer_ref::Error::from(e)))?);
                }
                Ok(out)
            },
            d => Ok(d
                .step_sample(seqs, tokens, sampling)
                .map_err(to_py)?
                .into_iter()
                .map(|s| s.token)
                .collect())
        )
    }

    /// Removes a sequence.
    pub fn remove(&mut self, id: SeqId) -> PyResult<()> {
        kernels!(self,
            cpu => cpu.batch.remove(id).map_err(to_py),
            d => d.remove(id).map_err(to_py)
        )
    }

    /// Tokens a sequence has processed.
    pub fn len(&self, id: SeqId) -> PyResult<usize> {
        kernels!(self,
            cpu => cpu.batch.len(id).map_err(to_py),
            d => d.len(id).map_err(to_py)
        )
    }

    /// A copy of a sequence (kernel decoder only: the CPU batch has no fork).
    pub fn fork(&mut self, id: SeqId) -> PyResult<SeqId> {
        kernels!(self,
            _cpu => Err(bad_request("fork needs the kernel decoder (device \"emu\" or \"cuda\")")),
            d => d.fork(id).map_err(to_py)
        )
    }
}

/// A batch of sequences decoded together (`Model.decoder(...)`).
///
/// Sequence ids are ints. `add(tokens)` prefills a new sequence, `step(seqs, tokens)` feeds
/// each listed sequence one token in one batched step, `remove(sid)` frees its slot; an id
/// kept after `remove` is refused (`ValueError`), never the slot's next sequence.
#[pyclass(module = "stagformer")]
pub struct Decoder {
    core: Core,
    vocab: usize,
    capacity: usize,
    /// The last id handed out for each slot used (at most `max_batch` entries), removed or
    /// not: an int naming it reaches the library's own checks (a removed one is its
    /// `StaleSequence`); an int of an earlier generation of the slot is refused here.
    ids: HashMap<usize, SeqId>,
}

impl Decoder {
    /// A decoder around `core` for a model of `vocab` tokens, `capacity` positions a sequence.
    pub fn new(core: Core, vocab: usize, capacity: usize) -> Self {
        Decoder {
            core,
            vocab,
            capacity,
            ids: HashMap::new(),
        }
    }

    /// The int a Python caller sees for `id`.
    fn handle(&mut self, id: SeqId) -> u64 {
        self.ids.insert(id.slot(), id);
        ((id.slot() as u64) << 32) | u64::from(id.generation())
    }

    /// The id behind a Python int.
    fn id(&self, handle: u64) -> PyResult<SeqId> {
        let (slot, generation) = ((handle >> 32) as usize, handle as u32);
        match self.ids.get(&slot) {
            Some(&id) if id.generation() == generation => Ok(id),
            Some(&id) if id.generation() > generation => Err(bad_request(format!(
                "sequence {slot}.{generation} was removed (its slot holds sequence {id} now)"
            ))),
            _ => Err(bad_request(format!("unknown sequence id {handle}"))),
        }
    }

    fn ids_of(&self, handles: &[u64]) -> PyResult<Vec<SeqId>> {
        handles.iter().map(|&h| self.id(h)).collect()
    }
}

/// Logits as a numpy float32 array [rows, vocab].
pub fn logits_array(
    py: Python<'_>,
    data: Vec<f32>,
    vocab: usize,
) -> PyResult<Bound<'_, PyArray2<f32>>> {
    let rows = data.len().checked_div(vocab).unwrap_or(0);
    PyArray1::from_vec(py, data).reshape([rows, vocab])
}

#[pymethods]
impl Decoder {
    /// Adds a sequence: prefills `tokens` (at least one) and returns its id.
    fn add(&mut self, py: Python<'_>, tokens: Vec<u32>) -> PyResult<u64> {
        let core = &mut self.core;
        let (id, _) = py.allow_threads(|| core.prefill(&tokens, PrefillLogits::None))?;
        Ok(self.handle(id))
    }

    /// Adds a sequence like `add` and also returns the logits after every prompt token:
    /// `(sid, numpy float32 [len(tokens), V])`.
    fn prefill<'py>(
        &mut self,
        py: Python<'py>,
        tokens: Vec<u32>,
    ) -> PyResult<(u64, Bound<'py, PyArray2<f32>>)> {
        let core = &mut self.core;
        let (id, logits) = py.allow_threads(|| core.prefill(&tokens, PrefillLogits::All))?;
        let handle = self.handle(id);
        Ok((handle, logits_array(py, logits, self.vocab)?))
    }

    /// One batched decode step: sequence `seqs[i]` is fed `tokens[i]`.
    ///
    /// Without `sampling`, returns the logits after each token, numpy float32 [B, V]. With
    /// `sampling` (one dict for every row, or a list of one dict per row, keys `temperature`,
    /// `top_k`, `top_p`, `seed`), returns each row's sampled next token as a list of ints; the
    /// draw is keyed by the seed and the token's position, so it does not depend on the other
    /// rows or the device.
    #[pyo3(signature = (seqs, tokens, sampling=None))]
    fn step<'py>(
        &mut self,
        py: Python<'py>,
        seqs: Vec<u64>,
        tokens: Vec<u32>,
        sampling: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let ids = self.ids_of(&seqs)?;
        let core = &mut self.core;
        match sampling {
            None => {
                let logits = py.allow_threads(|| core.step(&ids, &tokens))?;
                Ok(logits_array(py, logits, self.vocab)?.into_any())
            }
            Some(value) => {
                let settings: Vec<SamplingParams> = if let Ok(dict) = value.downcast::<PyDict>() {
                    vec![crate::args::sampling_dict(dict)?; ids.len()]
                } else if let Ok(list) = value.downcast::<PyList>() {
                    list.iter()
                        .enumerate()
                        .map(|(i, item)| {
                            let dict = item.downcast::<PyDict>().map_err(|_| {
                                bad_request(format!("sampling[{i}]: expected a dict"))
                            })?;
                            crate::args::sampling_dict(dict)
                        })
                        .collect::<PyResult<_>>()?
                } else {
                    return Err(bad_request(
                        "sampling: expected None, a dict or a list of dicts",
                    ));
                };
                let picked = py.allow_threads(|| core.step_sample(&ids, &tokens, &settings))?;
                Ok(PyList::new(py, picked)?.into_any())
            }
        }
    }

    /// Removes a sequence and frees its slot (and its KV pages).
    fn remove(&mut self, sid: u64) -> PyResult<()> {
        let id = self.id(sid)?;
        self.core.remove(id)
    }

    /// Tokens the sequence has processed (the position of its next token).
    fn seq_len(&self, sid: u64) -> PyResult<usize> {
        self.core.len(self.id(sid)?)
    }

    /// A new sequence with the same tokens as `sid` (the kernel decoder shares its KV pages
    /// copy-on-write); returns the new id. Not on device "cpu".
    fn fork(&mut self, sid: u64) -> PyResult<u64> {
        let id = self.id(sid)?;
        let new = self.core.fork(id)?;
        Ok(self.handle(new))
    }

    /// The model's vocabulary size V (the width of every logits row).
    #[getter]
    fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Positions a sequence can hold (prompt and decoded tokens together).
    #[getter]
    fn capacity(&self) -> usize {
        self.capacity
    }
}
