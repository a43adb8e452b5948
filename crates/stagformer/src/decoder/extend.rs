//! Growing and cutting sequences in place: [`Decoder::add`], [`Decoder::extend`] (a chunk of
//! tokens appended to a live sequence: chunked prefill, a prompt continued after some decode
//! steps, the prefix of a fork) and [`Decoder::truncate`] (llama.cpp's `seq_rm` from a
//! position to the end).

use stagformer_ref::{RequestError, SeqId};

use super::{ChunkMemory, Decoder, PrefillLogits};
use crate::error::{DecoderError, Result};
use crate::Activation;

impl<T: Activation> Decoder<T> {
    /// Adds an empty sequence (no tokens yet) and returns its id; [`Decoder::extend`] or a
    /// step gives it its first tokens. Paged caches take no page until then.
    pub fn add(&mut self) -> Result<SeqId> {
        self.check_usable()?;
        Ok(self.lens.insert(0)?)
    }

    /// Feeds `tokens` to sequence `id` after the tokens it has processed (positions
    /// `len..len + tokens.len()`), every section over all of them in chunks, and returns the
    /// logits `want` asks for (`All`: one row per token). The logits equal those of a prefill
    /// of the whole sequence at once, so a prompt may arrive in pieces, or continue after
    /// decode steps. A sequence of length 0 (from [`Decoder::add`] or a truncation to 0) runs
    /// as a prompt. With a windowed cross cache the chunks have at most min(W, 256) rows (what
    /// its ring holds beyond the window). Refused before anything runs for an unknown id,
    /// no tokens, a token outside the vocabulary, a length past the capacity, a pool without
    /// the pages (`OutOfKvPages`), or recurrent mode (whose decode state is not a prompt's).
    /// A non-finite logit is an error; the tokens are taken all the same, as in a step.
    pub fn extend(&mut self, id: SeqId, tokens: &[u32], want: PrefillLogits) -> Result<Vec<f32>> {
        let len = self.check_extend(id, tokens)?;
        let positions: Vec<usize> = (len..len + tokens.len()).collect();
        let slots = vec![id; positions.len()];
        let copies = self.plan_pages(&slots, &positions)?;
        let memory = if len == 0 {
            ChunkMemory::Prompt
        } else {
            ChunkMemory::Cache
        };
        let logits = self.guarded(|d| {
            d.caches.copy_pages(&d.streams[0], &copies)?;
            d.run_chunks(id, tokens, len, want, memory)
        })?;
        *self.lens.get_mut(id)? += tokens.len();
        stagformer_ref::NonFiniteLogits::check(&logits, self.shared.cfg.vocab_size, 0)
            .map_err(stagformer_ref::Error::from)?;
        Ok(logits)
    }

    /// Checks an extension of `id` by `tokens`; returns the sequence's length.
    pub(super) fn check_extend(&self, id: SeqId, tokens: &[u32]) -> Result<usize> {
        self.check_usable()?;
        let len = *self.lens.get(id)?;
        if self.opts.recurrent {
            return Err(DecoderError::Unsupported(
                "extend in recurrent mode (the decode state after a prompt is not a prompt's)"
                    .into(),
            ));
        }
        self.check_tokens(len, tokens)?;
        Ok(len)
    }

    /// Checks `tokens` fed to a sequence of `len` tokens: at least one, each in the
    /// vocabulary (an error naming its index), and room for them within the capacity.
    pub(super) fn check_tokens(&self, len: usize, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(RequestError::EmptyInput.into());
        }
        let total = len.saturating_add(tokens.len());
        if total > self.opts.capacity {
            return Err(RequestError::TooLong {
                len: total,
                max: self.opts.capacity,
            }
            .into());
        }
        let vocab = self.shared.cfg.vocab_size;
        if let Some(index) = tokens.iter().position(|&t| t as usize >= vocab) {
            return Err(RequestError::TokenOutOfRange {
                index,
                token: tokens[index],
                vocab_size: vocab,
            }
            .into());
        }
        Ok(())
    }

    /// Cuts sequence `id` back to its first `len` tokens (llama.cpp's `seq_rm(id, len, -1)`):
    /// the next token it is fed is at position `len`, and what came after is forgotten (paged,
    /// the pages past `len` that no fork shares are freed). A length above the sequence's, or
    /// below what its ring caches still hold ([`Decoder::truncate_min`]), is
    /// [`DecoderError::CannotTruncate`]; recurrent mode is unsupported. Nothing runs on the
    /// device.
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<()> {
        self.check_usable()?;
        if self.opts.recurrent {
            return Err(DecoderError::Unsupported(
                "truncate in recurrent mode (its decode state holds every earlier step)".into(),
            ));
        }
        let now = *self.lens.get(id)?;
        let min = self.truncate_min(id)?;
        if len > now || len < min {
            return Err(DecoderError::CannotTruncate {
                seq: id,
                len: now,
                to: len,
                min,
            });
        }
        self.caches.truncate(&self.shared, id.slot(), len);
        *self.lens.get_mut(id)? = len;
        Ok(())
    }

    /// The shortest length [`Decoder::truncate`] can cut sequence `id` back to: 0 unless a ring
    /// cache has wrapped. A self ring of S slots (sliding window W) keeps positions from
    /// len − S, and position t attends to t − W + 1 ..= t, so t ≥ len − S + W − 1; a cross
    /// ring of R slots keeps the memory from len − R and position t reads t − W .. t − 1, so
    /// t ≥ len − R + W once it wrapped.
    pub fn truncate_min(&self, id: SeqId) -> Result<usize> {
        let len = *self.lens.get(id)?;
        let sh = &self.shared;
        let ring_min = |slots: usize, back: usize| {
            if len <= slots {
                0
            } else {
                (len - slots + back).min(len)
            }
        };
        let self_min = match sh.self_cache.window {
            Some(w) => ring_min(sh.self_cache.slots, w.saturating_sub(1)),
            None => 0,
        };
        let cross_min = match sh.window {
            Some(w) if sh.cfg.sections() > 1 => ring_min(sh.ring, w),
            _ => 0,
        };
        Ok(self_min.max(cross_min))
    }
}
