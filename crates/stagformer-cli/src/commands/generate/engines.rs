//! The devices `generate` runs on, each holding its requests' sequences: the CPU reference
//! (sampling on the host) and the kernel decoder (the first token sampled on the host from the
//! prefill's logits, every later one on the device by the same rule). Both key a token's draw
//! by its request's seed and the token's position, never by the slot, so a request's tokens do
//! not depend on what else shares the batch.

use anyhow::{Context, Result};
use stagformer::{Activation, Decoder, DecoderOptions, PrefillLogits};
use stagformer_kernels::Device;
use stagformer_ref::sample::{try_sample, SamplingParams};
use stagformer_ref::{DecodeBatch, SeqId};

use super::driver::Generator;
use crate::model_source::Source;

/// Per request: its sequence and settings, while it holds a slot.
struct Rows<Id> {
    rows: Vec<Option<(Id, SamplingParams)>>,
}

impl<Id: Copy> Rows<Id> {
    fn new(requests: usize) -> Self {
        Rows {
            rows: vec![None; requests],
        }
    }

    fn set(&mut self, request: usize, id: Id, params: SamplingParams) -> Result<()> {
        let row = self
            .rows
            .get_mut(request)
            .with_context(|| format!("request {request} is not in the batch"))?;
        *row = Some((id, params));
        Ok(())
    }

    fn get(&self, request: usize) -> Result<(Id, SamplingParams)> {
        self.rows
            .get(request)
            .copied()
            .flatten()
            .with_context(|| format!("request {request} holds no slot"))
    }

    fn take(&mut self, request: usize) -> Result<Id> {
        let id = self.get(request)?.0;
        self.rows[request] = None;
        Ok(id)
    }
}

/// The CPU reference, sampling on the host.
pub struct CpuEngine<'a> {
    batch: DecodeBatch<'a>,
    rows: Rows<SeqId>,
}

impl<'a> CpuEngine<'a> {
    /// An engine for `requests` requests, `batch` holding the slots.
    pub fn new(batch: DecodeBatch<'a>, requests: usize) -> Self {
        CpuEngine {
            batch,
            rows: Rows::new(requests),
        }
    }
}

impl Generator for CpuEngine<'_> {
    fn admit(&mut self, request: usize, prompt: &[u32], params: SamplingParams) -> Result<u32> {
        let (seq, logits) = self.batch.prefill(prompt)?;
        self.rows.set(request, seq, params)?;
        let last = logits.rows - 1;
        // The chosen token's index in the request (its position) keys the draw.
        Ok(try_sample(
            logits.row(last),
            &params,
            prompt.len() as u64,
            last,
        )?)
    }

    fn step(&mut self, requests: &[usize], tokens: &[u32]) -> Result<Vec<u32>> {
        let rows = requests
            .iter()
            .map(|&k| self.rows.get(k))
            .collect::<Result<Vec<_>>>()?;
        let seqs: Vec<SeqId> = rows.iter().map(|r| r.0).collect();
        // The position of each fed token, whose logits these are; the chosen token comes next.
        let positions = seqs
            .iter()
            .map(|&s| self.batch.len(s))
            .collect::<Result<Vec<_>, _>>()?;
        let logits = self.batch.step(&seqs, tokens)?;
        rows.iter()
            .zip(positions)
            .enumerate()
            .map(|(r, ((_, params), position))| {
                Ok(try_sample(logits.row(r), params, position as u64 + 1, r)?)
            })
            .collect()
    }

    fn release(&mut self, request: usize) -> Result<()> {
        let seq = self.rows.take(request)?;
        Ok(self.batch.remove(seq)?)
    }
}

/// The kernel decoder, sampling on the device after the prompt's token.
pub struct KernelEngine<T: Activation> {
    decoder: Decoder<T>,
    rows: Rows<stagformer::SeqId>,
    vocab: usize,
}

impl<T: Activation> KernelEngine<T> {
    /// Uploads `source` to `device` as a decoder of `opts` for `requests` requests.
    pub fn new(
        device: &Device,
        source: &Source,
        opts: DecoderOptions,
        requests: usize,
    ) -> Result<Self> {
        Ok(KernelEngine {
            decoder: crate::engine::decoder_from(device, source, opts)?,
            rows: Rows::new(requests),
            vocab: stagformer_ref::TensorSource::config(source).vocab_size,
        })
    }
}

impl<T: Activation> Generator for KernelEngine<T> {
    fn admit(&mut self, request: usize, prompt: &[u32], params: SamplingParams) -> Result<u32> {
        // Only the last row's logits: the prompt's other rows skip the lm_head.
        let (seq, logits) = self.decoder.prefill_logits(prompt, PrefillLogits::Last)?;
        self.rows.set(request, seq, params)?;
        let last = logits
            .len()
            .checked_sub(self.vocab)
            .context("the prefill returned no logits row")?;
        // As the decoder's steps: the draw is keyed by the chosen token's position.
        Ok(try_sample(
            &logits[last..],
            &params,
            prompt.len() as u64,
            prompt.len() - 1,
        )?)
    }

    fn step(&mut self, requests: &[usize], tokens: &[u32]) -> Result<Vec<u32>> {
        let rows = requests
            .iter()
            .map(|&k| self.rows.get(k))
            .collect::<Result<Vec<_>>>()?;
        let seqs: Vec<_> = rows.iter().map(|r| r.0).collect();
        let params: Vec<_> = rows.iter().map(|r| r.1).collect();
        let picked = self.decoder.step_sample(&seqs, tokens, &params)?;
        Ok(picked.iter().map(|s| s.token).collect())
    }

    fn release(&mut self, request: usize) -> Result<()> {
        let seq = self.rows.take(request)?;
        Ok(self.decoder.remove(seq)?)
    }
}
