//! The engine's step: one call over a batch descriptor whose rows mix decode tokens and prompt
//! chunks of any sequences (new ones included), each with its position, its logits choice and
//! its own sampling, split into [`Decoder::submit`] (checks, plans pages, launches) and
//! [`Decoder::wait`] (collects the results), so the host prepares the next batch while the
//! device runs this one. In the manner of llama.cpp's `llama_batch` and vLLM's scheduler
//! output: the caller decides what each sequence gets this step; the decoder runs it.
//!
//! How a batch runs: every prompt chunk (a new sequence, or more than one token for a live
//! one) goes through every section as a prefill chunk of its sequence ([`Decoder::extend`]'s
//! path), one chunk after another; then all decode rows (one token for a live sequence) run as
//! one decode step, replayed from the graph of that row count. Sampling a decode row happens on
//! the device in that step; a chunk's next token is drawn on the host from its last logits row
//! with the same rule ([`stagformer_ref::sample::sample`], keyed by seed and token index).

use std::sync::atomic::{AtomicU64, Ordering};

use stagformer_ref::sample::{logprob, top_logprobs, try_sample};
use stagformer_ref::{RequestError, SamplingParams, SeqId};

use super::{ChunkMemory, Decoder, PrefillLogits};
use crate::error::{DecoderError, Result};
use crate::sampling::Sampled;
use crate::Activation;

/// One row of a batch ([`Decoder::submit`], [`Decoder::step_batch`]): tokens for one
/// sequence, from a given position on.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRow {
    /// The sequence fed: `Some(id)` continues a live one, `None` adds a new one (its id comes
    /// back in [`RowOutput::seq`]).
    pub seq: Option<SeqId>,
    /// Position of `tokens[0]`: the sequence's length (0 for a new one). Any other value is
    /// refused ([`DecoderError::Position`]): the caller's picture of the sequence is wrong.
    pub position: usize,
    /// The tokens: one for a decode row, several for a prompt chunk (at least one).
    pub tokens: Vec<u32>,
    /// Which logits come back: after every token, after the last, or none.
    pub logits: PrefillLogits,
    /// Draw the token that follows the last one with these settings (the draw for index
    /// `position + tokens.len()`), with its log-probability; `None`: no token drawn.
    pub sample: Option<SamplingParams>,
    /// Also return the `top_logprobs` most likely next tokens with their log-probabilities
    /// (the model's distribution after the row's last token; all of the vocabulary at most);
    /// 0: none.
    pub top_logprobs: usize,
}

impl BatchRow {
    /// A decode row: `token` for live sequence `seq` at `position`, sampled with `sample`, no
    /// logits back.
    pub fn decode(seq: SeqId, position: usize, token: u32, sample: SamplingParams) -> Self {
        BatchRow {
            seq: Some(seq),
            position,
            tokens: vec![token],
            logits: PrefillLogits::None,
            sample: Some(sample),
            top_logprobs: 0,
        }
    }

    /// The first chunk (or the whole) of a new sequence's prompt: no logits back, nothing
    /// sampled (see [`BatchRow::with_logits`], [`BatchRow::with_sample`]).
    pub fn prompt(tokens: Vec<u32>) -> Self {
        BatchRow {
            seq: None,
            position: 0,
            tokens,
            logits: PrefillLogits::None,
            sample: None,
            top_logprobs: 0,
        }
    }

    /// A later chunk of live sequence `seq`'s prompt at `position`: no logits back, nothing
    /// sampled.
    pub fn chunk(seq: SeqId, position: usize, tokens: Vec<u32>) -> Self {
        BatchRow {
            seq: Some(seq),
            position,
            tokens,
            logits: PrefillLogits::None,
            sample: None,
            top_logprobs: 0,
        }
    }

    /// This row with logits `want` back.
    pub fn with_logits(mut self, want: PrefillLogits) -> Self {
        self.logits = want;
        self
    }

    /// This row returning the `n` most likely next tokens with their logprobs.
    pub fn with_top_logprobs(mut self, n: usize) -> Self {
        self.top_logprobs = n;
        self
    }

    /// This row drawing its next token with `sample` (`None`: no draw).
    pub fn with_sample(mut self, sample: Option<SamplingParams>) -> Self {
        self.sample = sample;
        self
    }

    /// Whether the row runs in the batch's decode step (one token for a live sequence) rather
    /// than as a prompt chunk.
    fn is_decode(&self) -> bool {
        self.seq.is_some() && self.tokens.len() == 1
    }
}

/// What one row of a batch returns, in the batch's row order.
#[derive(Debug, Clone, PartialEq)]
pub struct RowOutput {
    /// The row's sequence (for a new one, the id it was given).
    pub seq: SeqId,
    /// The logits the row asked for, `[rows, V]` row-major.
    pub logits: Vec<f32>,
    /// The drawn token and its log-probability, when the row asked for one.
    pub sampled: Option<Sampled>,
    /// The `top_logprobs` most likely next tokens, most likely first (the lower id among equal
    /// logits), with their log-probabilities (`stagformer_ref::sample::top_logprobs`, in f32).
    pub top_logprobs: Vec<(u32, f32)>,
}

/// The `n` most likely next tokens of one logits row, in f32.
fn top(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    top_logprobs(logits, n)
        .into_iter()
        .map(|(t, lp)| (t, lp as f32))
        .collect()
}

/// A batch [`Decoder::submit`] launched; [`Decoder::wait`] turns it into its rows' outputs.
#[must_use = "a submitted batch's results come from Decoder::wait"]
#[derive(Debug)]
pub struct Submitted {
    serial: u64,
}

/// The next batch's serial number, over every decoder of the process.
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(0);

/// What `wait` still has to collect.
pub(super) struct Pending {
    serial: u64,
    outputs: Vec<RowOutput>,
    /// The decode step's rows (batch indices, in step order) when there is one.
    decode: Vec<usize>,
    /// Per decode row: whether it asked for its logits, how many top logprobs, whether for a
    /// draw.
    decode_logits: Vec<bool>,
    decode_top: Vec<usize>,
    decode_draws: Vec<bool>,
    /// The first chunk row whose logits were not finite.
    bad_chunk: Option<usize>,
}

/// Row `row`'s error, naming the row.
fn in_row(row: usize) -> impl Fn(DecoderError) -> DecoderError {
    move |e| DecoderError::InRow {
        row,
        error: Box::new(e),
    }
}

impl<T: Activation> Decoder<T> {
    /// [`Decoder::submit`] then [`Decoder::wait`]: one step of a batch, its rows' outputs in
    /// row order.
    pub fn step_batch(&mut self, rows: &[BatchRow]) -> Result<Vec<RowOutput>> {
        let submitted = self.submit(rows)?;
        self.wait(submitted)
    }

    /// Checks a batch, readies its KV pages, launches its work and returns without waiting
    /// for the decode step's results ([`Decoder::wait`] collects them; until then every call
    /// that runs work is [`DecoderError::Pending`]). Rows: prompt chunks and decode tokens of
    /// distinct sequences, in any order (see the module's notes for how they run). Everything
    /// is checked before anything runs, each error naming its row ([`DecoderError::InRow`]):
    /// an unknown or stale id, a sequence twice, a position other than the sequence's length,
    /// no tokens, a token outside the vocabulary, a length past the capacity, bad sampling
    /// settings, more new sequences than free slots, a pool without the pages (refused for the
    /// whole batch, nothing taken), a continued chunk in recurrent mode. Rows asking for a
    /// prompt chunk's logits or sample wait for that chunk (the host copies them back) before
    /// the decode step is launched.
    pub fn submit(&mut self, rows: &[BatchRow]) -> Result<Submitted> {
        self.check_usable()?;
        if rows.is_empty() {
            return Err(RequestError::EmptyInput.into());
        }
        for r in 0..rows.len() {
            self.check_row(rows, r).map_err(in_row(r))?;
        }
        let new_rows = rows.iter().filter(|r| r.seq.is_none()).count();
        let free = self.lens.capacity() - self.lens.live();
        if new_rows > free {
            return Err(RequestError::BatchFull {
                max: self.opts.max_batch,
            }
            .into());
        }
        // Ids for the new sequences (given back if the pages are not there).
        let mut seqs = Vec::with_capacity(rows.len());
        for row in rows {
            seqs.push(match row.seq {
                Some(id) => id,
                None => self.lens.insert(0)?,
            });
        }
        let (write_seqs, positions): (Vec<SeqId>, Vec<usize>) = rows
            .iter()
            .zip(&seqs)
            .flat_map(|(row, &id)| {
                (row.position..row.position + row.tokens.len()).map(move |p| (id, p))
            })
            .unzip();
        let copies = match self.plan_pages(&write_seqs, &positions) {
            Ok(copies) => copies,
            Err(e) => {
                for (row, &id) in rows.iter().zip(&seqs) {
                    if row.seq.is_none() {
                        let _ = self.lens.remove(id);
                    }
                }
                return Err(e);
            }
        };
        // Unique across decoders, so that a ticket cannot collect another decoder's batch.
        let serial = NEXT_SERIAL.fetch_add(1, Ordering::Relaxed);
        let pending = self.guarded(|d| {
            d.caches.copy_pages(&d.streams[0], &copies)?;
            d.launch_batch(rows, &seqs, serial)
        })?;
        self.pending = Some(pending);
        Ok(Submitted { serial })
    }

    /// The outputs of the batch `submitted` names, in its row order, once its work is done.
    /// A row whose logits held a NaN or an infinity is [`DecoderError::InRow`] around
    /// [`DecoderError::NonFiniteLogits`] (the batch was taken all the same, as a step is);
    /// a ticket that is not the pending batch's is [`DecoderError::Pending`].
    pub fn wait(&mut self, submitted: Submitted) -> Result<Vec<RowOutput>> {
        let pending = match self.pending.take() {
            Some(p) if p.serial == submitted.serial => p,
            other => {
                self.pending = other;
                return Err(DecoderError::Pending(
                    "this batch is not the one pending (already waited for, or another decoder's)",
                ));
            }
        };
        let Pending {
            mut outputs,
            decode,
            decode_logits,
            decode_top,
            decode_draws,
            bad_chunk,
            ..
        } = pending;
        let vocab = self.shared.cfg.vocab_size;
        let n = decode.len();
        let sampled = decode_draws.iter().any(|&d| d);
        let bad_decode = self.guarded(|d| {
            let stream = &d.streams[0];
            let mut bad = None;
            if sampled {
                let (picked, bad_row) = d.read_sampled(n)?;
                for ((&r, pick), &draw) in decode.iter().zip(picked).zip(&decode_draws) {
                    if draw {
                        outputs[r].sampled = Some(pick);
                    }
                }
                bad = bad_row;
            }
            // A step without draws checks its logits on the host, as `step` does.
            let any_top = decode_top.iter().any(|&k| k > 0);
            if !sampled && n > 0 || any_top || decode_logits.iter().any(|&w| w) {
                let all = d.logits.slice(..n * vocab)?.to_host(stream)?;
                for (i, &r) in decode.iter().enumerate() {
                    let row = &all[i * vocab..(i + 1) * vocab];
                    if row.iter().any(|v| !v.is_finite()) {
                        bad = bad.or(Some(i));
                    } else if decode_top[i] > 0 {
                        outputs[r].top_logprobs = top(row, decode_top[i]);
                    }
                    if decode_logits[i] {
                        outputs[r].logits.extend_from_slice(row);
                    }
                }
            }
            // Every launch of the batch is done (and its errors seen) before its results count.
            stream.synchronize()?;
            Ok(bad.map(|i| decode[i]))
        })?;
        if let Some(row) = bad_chunk.into_iter().chain(bad_decode).min() {
            return Err(in_row(row)(DecoderError::NonFiniteLogits { row }));
        }
        Ok(outputs)
    }

    /// Row `r` of `rows` against the decoder's sequences and limits.
    fn check_row(&self, rows: &[BatchRow], r: usize) -> Result<()> {
        let row = &rows[r];
        let len = match row.seq {
            Some(id) => {
                let len = *self.lens.get(id)?;
                if rows[..r].iter().any(|o| o.seq == Some(id)) {
                    return Err(RequestError::DuplicateSequence { seq: id }.into());
                }
                if self.opts.recurrent && row.tokens.len() > 1 {
                    return Err(DecoderError::Unsupported(
                        "a prompt chunk for a live sequence in recurrent mode".into(),
                    ));
                }
                len
            }
            None => 0,
        };
        if row.position != len {
            return Err(DecoderError::Position {
                expected: len,
                found: row.position,
            });
        }
        if let Some(params) = &row.sample {
            params.validate()?;
        }
        match row.seq {
            Some(id) if row.tokens.len() > 1 => self.check_extend(id, &row.tokens).map(drop),
            _ => self.check_tokens(len, &row.tokens),
        }
    }

    /// Runs a checked, planned batch: its prompt chunks now, its decode step launched.
    fn launch_batch(&mut self, rows: &[BatchRow], seqs: &[SeqId], serial: u64) -> Result<Pending> {
        let vocab = self.shared.cfg.vocab_size;
        let mut outputs: Vec<RowOutput> = seqs
            .iter()
            .map(|&seq| RowOutput {
                seq,
                logits: Vec::new(),
                sampled: None,
                top_logprobs: Vec::new(),
            })
            .collect();
        let mut bad_chunk = None;
        for (r, row) in rows.iter().enumerate().filter(|(_, row)| !row.is_decode()) {
            let id = seqs[r];
            // A draw (and the top logprobs) needs the last row's logits even when the row does
            // not want them back.
            let needs_last = row.sample.is_some() || row.top_logprobs > 0;
            let want = match row.logits {
                PrefillLogits::None if needs_last => PrefillLogits::Last,
                want => want,
            };
            let memory = match row.position {
                0 => ChunkMemory::Prompt,
                _ => ChunkMemory::Cache,
            };
            let logits = self.run_chunks(id, &row.tokens, row.position, want, memory)?;
            *self.lens.get_mut(id)? += row.tokens.len();
            let end = row.position + row.tokens.len();
            if let Some(params) = &row.sample {
                let last = &logits[logits.len() - vocab..];
                match try_sample(last, params, end as u64, r) {
                    Ok(token) => {
                        outputs[r].sampled = Some(Sampled {
                            token,
                            logprob: logprob(last, token) as f32,
                        })
                    }
                    Err(_) => bad_chunk = bad_chunk.or(Some(r)),
                }
            }
            if logits.iter().any(|v| !v.is_finite()) {
                bad_chunk = bad_chunk.or(Some(r));
            } else if row.top_logprobs > 0 {
                outputs[r].top_logprobs = top(&logits[logits.len() - vocab..], row.top_logprobs);
            }
            if row.logits != PrefillLogits::None {
                outputs[r].logits = logits;
            }
        }
        let decode: Vec<usize> = (0..rows.len()).filter(|&r| rows[r].is_decode()).collect();
        let decode_logits: Vec<bool> = decode
            .iter()
            .map(|&r| rows[r].logits != PrefillLogits::None)
            .collect();
        let decode_top: Vec<usize> = decode.iter().map(|&r| rows[r].top_logprobs).collect();
        let decode_draws: Vec<bool> = decode.iter().map(|&r| rows[r].sample.is_some()).collect();
        let sampled = decode_draws.iter().any(|&d| d);
        if !decode.is_empty() {
            let ids: Vec<SeqId> = decode.iter().map(|&r| seqs[r]).collect();
            let tokens: Vec<u32> = decode.iter().map(|&r| rows[r].tokens[0]).collect();
            let positions: Vec<usize> = decode.iter().map(|&r| rows[r].position).collect();
            let words = match sampled {
                true => {
                    // Rows without a draw take the greedy one (never read back).
                    let settings: Vec<SamplingParams> = decode
                        .iter()
                        .map(|&r| rows[r].sample.unwrap_or(SamplingParams::GREEDY))
                        .collect();
                    Some(self.sampler_words(&positions, &settings)?)
                }
                false => None,
            };
            self.run_step(&ids, &tokens, &positions, words.as_deref())?;
            self.advance(&ids);
        }
        Ok(Pending {
            serial,
            outputs,
            decode,
            decode_logits,
            decode_top,
            decode_draws,
            bad_chunk,
        })
    }
}
