//! **Decode**: the inference algorithm. A prompt is prefilled, then every step feeds one token
//! per sequence through *all* sections at once: section s reads only the memory slots ≤ i − 1
//! written by earlier steps, and the memory of step i is appended after every section ran.
//! Self-attention K/V are cached per section and layer; each cross-attention layer caches the
//! projected K/V of the memory, in a ring of W slots when the window is bounded.

use crate::error::{Error, RequestError, ShapeError};
use crate::model::Model;
use crate::ops::{self, Matrix};

pub use crate::slots::SeqId;
use crate::slots::Slots;

/// What a decode step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepMode {
    /// Every section processes the new token (the StagFormer schedule).
    Staggered,
    /// Shared weights, p = 2: only section 1 runs, its own normed output becomes the memory
    /// (rule 5 of the contract).
    Recurrent,
}

/// Projected keys and values of one attention layer, `slots` rows.
#[derive(Debug, Clone)]
struct KvCache {
    k: Matrix,
    v: Matrix,
}

impl KvCache {
    fn new(slots: usize, kv_dim: usize) -> Self {
        KvCache {
            k: Matrix::zeros(slots, kv_dim),
            v: Matrix::zeros(slots, kv_dim),
        }
    }

    fn write(&mut self, slot: usize, k: &[f32], v: &[f32]) {
        self.k.row_mut(slot).copy_from_slice(k);
        self.v.row_mut(slot).copy_from_slice(v);
    }
}

#[derive(Debug, Clone)]
struct Sequence {
    /// Tokens processed so far = the position of the next token.
    len: usize,
    /// `[section][layer]`.
    self_kv: Vec<Vec<KvCache>>,
    /// `[section − 1][layer]`.
    cross_kv: Vec<Vec<KvCache>>,
}

/// A batch of sequences decoded together, each at its own position.
#[derive(Debug)]
pub struct DecodeBatch<'m> {
    model: &'m Model,
    mode: StepMode,
    capacity: usize,
    seqs: Slots<Sequence>,
}

impl<'m> DecodeBatch<'m> {
    /// Room for `max_batch` sequences of up to `capacity` positions each.
    pub fn new(
        model: &'m Model,
        mode: StepMode,
        max_batch: usize,
        capacity: usize,
    ) -> Result<Self, Error> {
        let max = model.config.max_position_embeddings;
        if capacity > max {
            return Err(RequestError::TooLong { len: capacity, max }.into());
        }
        if mode == StepMode::Recurrent {
            if let Some(reason) = model.config.recurrent_unsupported_reason() {
                return Err(RequestError::RecurrentUnsupported { reason }.into());
            }
        }
        Ok(DecodeBatch {
            model,
            mode,
            capacity,
            seqs: Slots::new(max_batch),
        })
    }

    /// Memory slots per cross-attention cache: W when windowed, else the capacity.
    fn cross_slots(&self) -> usize {
        self.model
            .config
            .stag_cross_window
            .map_or(self.capacity, |w| w.min(self.capacity))
    }

    /// The cache slot holding memory position `k`.
    fn cross_slot(&self, k: usize) -> usize {
        self.model.config.stag_cross_window.map_or(k, |w| k % w)
    }

    /// Adds a sequence: runs every section over `prompt`, fills its caches, and returns its id
    /// and the logits of every prompt position [P, V].
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<(SeqId, Matrix), Error> {
        self.seqs.next_free()?;
        let model = self.model;
        model.check_tokens(prompt, self.capacity)?;
        let cfg = &model.config;
        let mut captured = Vec::new();
        let outputs = model.all_sections(prompt, Some(&mut captured))?;
        let (ls, kv_dim) = (cfg.layers_per_section(), cfg.kv_dim());
        let mut seq = Sequence {
            len: prompt.len(),
            self_kv: vec![vec![KvCache::new(self.capacity, kv_dim); ls]; cfg.sections()],
            cross_kv: vec![vec![KvCache::new(self.cross_slots(), kv_dim); ls]; cfg.sections() - 1],
        };
        for (s, layers) in captured.iter().enumerate() {
            for (j, kv) in layers.iter().enumerate() {
                for i in 0..prompt.len() {
                    seq.self_kv[s][j].write(i, kv.self_k.row(i), kv.self_v.row(i));
                }
                if let Some((k, v)) = &kv.cross {
                    // In position order, so a ring keeps the last W positions.
                    for i in 0..prompt.len() {
                        let slot = self.cross_slot(i);
                        seq.cross_kv[s - 1][j].write(slot, k.row(i), v.row(i));
                    }
                }
            }
        }
        let logits = model.logits(&model.mix(&outputs))?;
        let id = self.seqs.insert(seq)?;
        Ok((id, logits))
    }

    /// Drops a sequence, freeing its place in the batch.
    pub fn remove(&mut self, id: SeqId) -> Result<(), RequestError> {
        self.seqs.remove(id).map(drop)
    }

    /// Number of tokens sequence `id` has processed.
    pub fn len(&self, id: SeqId) -> Result<usize, RequestError> {
        self.seq(id).map(|s| s.len)
    }

    fn seq(&self, id: SeqId) -> Result<&Sequence, RequestError> {
        self.seqs.get(id)
    }

    /// One decode step: feeds `tokens[r]` to sequence `ids[r]` and returns the logits [B, V].
    ///
    /// Requests are validated before anything changes. An [`Error::Shape`] can only come from
    /// weights edited after loading so that they no longer fit the config; it may leave the
    /// batch's caches half-written.
    pub fn step(&mut self, ids: &[SeqId], tokens: &[u32]) -> Result<Matrix, Error> {
        self.validate_step(ids, tokens)?;
        let model = self.model;
        let cfg = &model.config;
        let positions: Vec<usize> = ids
            .iter()
            .map(|&id| self.seqs.get(id).map_or(0, |s| s.len))
            .collect();
        let sections: Vec<usize> = match self.mode {
            StepMode::Staggered => (0..cfg.sections()).collect(),
            StepMode::Recurrent => vec![1],
        };
        let outputs = sections
            .iter()
            .map(|&s| self.section_step(s, ids, tokens, &positions))
            .collect::<Result<Vec<Matrix>, ShapeError>>()?;
        // Only now, after every section read slots ≤ i − 1, does the memory of step i land.
        match self.mode {
            StepMode::Staggered => {
                // The last section's output feeds no one.
                for (s, output) in outputs.iter().enumerate().take(cfg.sections() - 1) {
                    let memory = model.memory(s, output)?;
                    self.append_memory(s + 1, ids, &positions, &memory)?;
                }
            }
            StepMode::Recurrent => {
                let memory = model.memory(0, &outputs[0])?;
                self.append_memory(1, ids, &positions, &memory)?;
            }
        }
        for &id in ids {
            if let Ok(seq) = self.seqs.get_mut(id) {
                seq.len += 1;
            }
        }
        let z = match self.mode {
            StepMode::Staggered => model.mix(&outputs),
            StepMode::Recurrent => outputs[0].clone(),
        };
        model.logits(&z)
    }

    fn validate_step(&self, ids: &[SeqId], tokens: &[u32]) -> Result<(), Error> {
        if ids.is_empty() {
            return Err(RequestError::EmptyInput.into());
        }
        if ids.len() != tokens.len() {
            return Err(RequestError::StepArity {
                ids: ids.len(),
                tokens: tokens.len(),
            }
            .into());
        }
        for (r, &id) in ids.iter().enumerate() {
            let seq = self.seq(id)?;
            if ids[..r].contains(&id) {
                return Err(RequestError::DuplicateSequence { seq: id }.into());
            }
            if seq.len >= self.capacity {
                return Err(RequestError::TooLong {
                    len: seq.len + 1,
                    max: self.capacity,
                }
                .into());
            }
        }
        self.model.check_tokens(tokens, usize::MAX)?;
        Ok(())
    }

    /// Section `s` on one new token per sequence; returns its output rows [B, D].
    fn section_step(
        &mut self,
        s: usize,
        ids: &[SeqId],
        tokens: &[u32],
        positions: &[usize],
    ) -> Result<Matrix, ShapeError> {
        let model = self.model;
        let cfg = &model.config;
        let layout = model.head_layout();
        let window_slots = cfg.stag_cross_window;
        let mut x = model.embed(tokens);
        for j in 0..cfg.layers_per_section() {
            let layer = &model.weights.layers[cfg.layer_index(s, j)];
            let (q, k, v) = model.qkv(layer, &x, positions)?;
            let mut attn = Matrix::zeros(ids.len(), layout.q_dim());
            for (r, (&id, &pos)) in ids.iter().zip(positions).enumerate() {
                let seq = self.seqs.get_mut(id).expect("validated");
                let cache = &mut seq.self_kv[s][j];
                cache.write(pos, k.row(r), v.row(r));
                ops::attention_row(
                    q.row(r),
                    &cache.k.data,
                    &cache.v.data,
                    cfg.self_window_start(pos)..pos + 1,
                    layout,
                    attn.row_mut(r),
                )?;
            }
            x.add_assign(&ops::linear(&attn, &layer.wo)?)?;
            if s >= 1 {
                let cross = &model.weights.cross[s - 1][j];
                let h = ops::rmsnorm_rows(&x, &cross.norm, cfg.rms_norm_eps)?;
                let q = ops::linear(&h, &cross.wq)?;
                let mut attn = Matrix::zeros(ids.len(), layout.q_dim());
                for (r, (&id, &pos)) in ids.iter().zip(positions).enumerate() {
                    let cache = &self.seqs.get(id).expect("validated").cross_kv[s - 1][j];
                    // Slots 0..n hold exactly memory positions max(0, pos − W)..pos − 1.
                    let n = window_slots.map_or(pos, |w| pos.min(w));
                    ops::attention_row(
                        q.row(r),
                        &cache.k.data,
                        &cache.v.data,
                        0..n,
                        layout,
                        attn.row_mut(r),
                    )?;
                }
                x.add_assign(&ops::linear(&attn, &cross.wo)?)?;
            }
            model.mlp(layer, &mut x)?;
        }
        Ok(x)
    }

    /// Projects `memory` rows into every cross-attention cache of section `reader` at the
    /// slot of each row's position.
    fn append_memory(
        &mut self,
        reader: usize,
        ids: &[SeqId],
        positions: &[usize],
        memory: &Matrix,
    ) -> Result<(), ShapeError> {
        let model = self.model;
        for j in 0..model.config.layers_per_section() {
            let cross = &model.weights.cross[reader - 1][j];
            let k = ops::linear(memory, &cross.wk)?;
            let v = ops::linear(memory, &cross.wv)?;
            for (r, (&id, &pos)) in ids.iter().zip(positions).enumerate() {
                let slot = self.cross_slot(pos);
                let seq = self.seqs.get_mut(id).expect("validated");
                seq.cross_kv[reader - 1][j].write(slot, k.row(r), v.row(r));
            }
        }
        Ok(())
    }
}
