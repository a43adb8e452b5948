//! The model and its **forward** pass: the definition of the contract, computed section by
//! section over a whole sequence with explicit masks (as in training).

use std::path::Path;

use crate::checkpoint::{Checkpoint, Element, StorageDtype, TensorSource};
use crate::config::Config;
use crate::error::{Error, LoadError, LoadWarning, RequestError, ShapeError};
use crate::init;
use crate::ops::{self, HeadLayout, Matrix};
use crate::weights::{CrossWeights, LayerWeights, Weights};

/// A loaded StagFormer model (f32 weights).
#[derive(Debug, Clone)]
pub struct Model {
    /// The validated configuration the weights belong to.
    pub config: Config,
    /// Every tensor, f32, in the shapes [`crate::weights::expected_tensors`] lists.
    pub weights: Weights,
    pub(crate) inv_freq: Vec<f64>,
    pub(crate) warnings: Vec<LoadWarning>,
}

/// Keys/values of one layer computed during a section pass, handed to a prefill so it can fill
/// its caches from the very numbers the pass used.
pub(crate) struct LayerKv {
    pub self_k: Matrix,
    pub self_v: Matrix,
    /// Cross-attention keys/values of the memory (sections ≥ 1 only).
    pub cross: Option<(Matrix, Matrix)>,
}

impl Model {
    /// A model of `weights` for `config`, which must already be valid and match them (as
    /// [`Weights::from_tensors`] and [`Model::load`] ensure); nothing is checked here.
    pub fn new(config: Config, weights: Weights) -> Self {
        let inv_freq = config.rope_inv_freq();
        Model {
            config,
            weights,
            inv_freq,
            warnings: Vec::new(),
        }
    }

    /// Loads `dir` (config.json + safetensors) strictly, converting every tensor to f32 (the
    /// whole model in host memory, 4 bytes per parameter).
    pub fn load(dir: &Path) -> Result<Self, Error> {
        Self::load_with_progress(dir, |_, _| {})
    }

    /// As [`Model::load`], reporting (bytes converted, total bytes) as tensors are converted.
    pub fn load_with_progress(
        dir: &Path,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Self, Error> {
        let ckpt = Checkpoint::open(dir)?;
        let total = ckpt.tensor_bytes();
        let mut done = 0;
        let names = crate::weights::expected_tensors(ckpt.config());
        let weights = Weights::from_source(&ckpt, |i, _| {
            done += ckpt.tensor_len(&names[i - 1].name);
            progress(done, total);
        })?;
        Ok(Self::from_checkpoint_weights(&ckpt, weights))
    }

    /// Converts every tensor of an opened checkpoint to f32.
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Self, Error> {
        let weights = Weights::from_source(ckpt, |_, _| {})?;
        Ok(Self::from_checkpoint_weights(ckpt, weights))
    }

    fn from_checkpoint_weights(ckpt: &Checkpoint, weights: Weights) -> Self {
        let mut model = Self::new(ckpt.config().clone(), weights);
        model.warnings = ckpt.warnings().to_vec();
        model
    }

    /// What loading noticed but accepted (see [`LoadWarning`]); empty for models not loaded
    /// from a checkpoint.
    pub fn warnings(&self) -> &[LoadWarning] {
        &self.warnings
    }

    /// A model with random weights drawn from `seed` (identical to loading the checkpoint
    /// `init::write_random_checkpoint` writes for the same config, seed and dtype).
    pub fn random(config: Config, seed: u64, dtype: StorageDtype) -> Result<Self, Error> {
        config.validate()?;
        let weights = init::random_weights(&config, seed, dtype);
        Ok(Self::new(config, weights))
    }

    /// The model's attention heads (H, Hkv, hd) for the [`ops`] attention functions.
    pub fn head_layout(&self) -> HeadLayout {
        HeadLayout {
            heads: self.config.num_attention_heads,
            kv_heads: self.config.num_key_value_heads,
            head_dim: self.config.head_dim,
        }
    }

    /// Checks ids against the vocabulary and the length against `capacity` positions.
    pub fn check_tokens(&self, tokens: &[u32], capacity: usize) -> Result<(), RequestError> {
        check_tokens(&self.config, tokens, capacity)
    }

    /// Logits [T, V] for every position of `tokens`, by the definition.
    pub fn forward(&self, tokens: &[u32]) -> Result<Matrix, Error> {
        self.check_tokens(tokens, self.config.max_position_embeddings)?;
        let outputs = self.all_sections(tokens, None)?;
        self.logits(&self.mix(&outputs))
    }

    /// Every section's output [T, D] over `tokens`, section s reading section s − 1's memory.
    pub(crate) fn all_sections(
        &self,
        tokens: &[u32],
        mut capture: Option<&mut Vec<Vec<LayerKv>>>,
    ) -> Result<Vec<Matrix>, Error> {
        let mut outputs: Vec<Matrix> = Vec::with_capacity(self.config.sections());
        for s in 0..self.config.sections() {
            let memory = match outputs.last() {
                Some(prev) => Some(self.memory(s - 1, prev)?),
                None => None,
            };
            let mut kv = Vec::new();
            let keep = capture.is_some().then_some(&mut kv);
            outputs.push(self.section_pass(s, tokens, memory.as_ref(), keep)?);
            if let Some(all) = capture.as_deref_mut() {
                all.push(kv);
            }
        }
        Ok(outputs)
    }

    /// Section `s` over positions 0..T of `tokens`. Sections ≥ 1 cross-attend to `memory`
    /// (at least T − 1 rows: position i reads memory rows max(0, i − W)..i − 1); a memory of
    /// the wrong width or too few rows, a missing memory or a section past the last is an
    /// [`Error::Shape`], bad tokens an [`Error::Request`].
    pub fn section_forward(
        &self,
        s: usize,
        tokens: &[u32],
        memory: Option<&Matrix>,
    ) -> Result<Matrix, Error> {
        let p = self.config.sections();
        let shape = |arg, expected: String, found: String| ShapeError {
            op: "section_forward",
            arg,
            expected,
            found,
        };
        if s >= p {
            return Err(shape("s", format!("a section below {p}"), s.to_string()).into());
        }
        if s >= 1 && memory.is_none() {
            return Err(shape(
                "memory",
                format!("the memory of section {} for section {s}", s - 1),
                "none".into(),
            )
            .into());
        }
        self.check_tokens(tokens, self.config.max_position_embeddings)?;
        Ok(self.section_pass(s, tokens, memory, None)?)
    }

    pub(crate) fn section_pass(
        &self,
        s: usize,
        tokens: &[u32],
        memory: Option<&Matrix>,
        mut capture: Option<&mut Vec<LayerKv>>,
    ) -> Result<Matrix, ShapeError> {
        let cfg = &self.config;
        let positions: Vec<usize> = (0..tokens.len()).collect();
        let mut x = self.embed(tokens);
        for j in 0..cfg.layers_per_section() {
            let layer = &self.weights.layers[cfg.layer_index(s, j)];
            let (k, v) = self.self_attention_full(layer, &mut x, &positions)?;
            let cross = if s >= 1 {
                let mem = memory.expect("sections >= 1 need a memory");
                Some(self.cross_attention_full(&self.weights.cross[s - 1][j], &mut x, mem)?)
            } else {
                None
            };
            self.mlp(layer, &mut x)?;
            if let Some(c) = capture.as_deref_mut() {
                c.push(LayerKv {
                    self_k: k,
                    self_v: v,
                    cross,
                });
            }
        }
        Ok(x)
    }

    pub(crate) fn embed(&self, tokens: &[u32]) -> Matrix {
        let d = self.config.hidden_size;
        let mut x = Matrix::zeros(tokens.len(), d);
        for (i, &t) in tokens.iter().enumerate() {
            x.row_mut(i)
                .copy_from_slice(self.weights.embed.row(t as usize));
        }
        x
    }

    /// q, k, v of `x`'s rows with RoPE applied at `positions`.
    pub(crate) fn qkv(
        &self,
        layer: &LayerWeights,
        x: &Matrix,
        positions: &[usize],
    ) -> Result<(Matrix, Matrix, Matrix), ShapeError> {
        let h = ops::rmsnorm_rows(x, &layer.input_norm, self.config.rms_norm_eps)?;
        let mut q = ops::linear(&h, &layer.wq)?;
        let mut k = ops::linear(&h, &layer.wk)?;
        let v = ops::linear(&h, &layer.wv)?;
        let hd = self.config.head_dim;
        for (r, &pos) in positions.iter().enumerate() {
            ops::rope_inplace(q.row_mut(r), hd, pos, &self.inv_freq)?;
            ops::rope_inplace(k.row_mut(r), hd, pos, &self.inv_freq)?;
        }
        Ok((q, k, v))
    }

    /// Causal self-attention over the whole sequence; returns the (roped) keys and values.
    fn self_attention_full(
        &self,
        layer: &LayerWeights,
        x: &mut Matrix,
        positions: &[usize],
    ) -> Result<(Matrix, Matrix), ShapeError> {
        let (q, k, v) = self.qkv(layer, x, positions)?;
        let layout = self.head_layout();
        let mut attn = Matrix::zeros(x.rows, layout.q_dim());
        for i in 0..x.rows {
            ops::attention_row(
                q.row(i),
                &k.data,
                &v.data,
                self.config.self_window_start(i)..i + 1,
                layout,
                attn.row_mut(i),
            )?;
        }
        x.add_assign(&ops::linear(&attn, &layer.wo)?)?;
        Ok((k, v))
    }

    /// The staggered cross-attention: position i reads memory rows max(0, i − W)..i − 1.
    fn cross_attention_full(
        &self,
        cross: &CrossWeights,
        x: &mut Matrix,
        memory: &Matrix,
    ) -> Result<(Matrix, Matrix), ShapeError> {
        let layout = self.head_layout();
        let h = ops::rmsnorm_rows(x, &cross.norm, self.config.rms_norm_eps)?;
        let q = ops::linear(&h, &cross.wq)?;
        let k = ops::linear(memory, &cross.wk)?;
        let v = ops::linear(memory, &cross.wv)?;
        let mut attn = Matrix::zeros(x.rows, layout.q_dim());
        for i in 0..x.rows {
            let keys = self.cross_window_start(i)..i;
            ops::attention_row(q.row(i), &k.data, &v.data, keys, layout, attn.row_mut(i))?;
        }
        x.add_assign(&ops::linear(&attn, &cross.wo)?)?;
        Ok((k, v))
    }

    /// First memory position that position i may read: max(0, i − W), or 0 when unbounded.
    pub fn cross_window_start(&self, i: usize) -> usize {
        self.config
            .stag_cross_window
            .map_or(0, |w| i.saturating_sub(w))
    }

    pub(crate) fn mlp(&self, layer: &LayerWeights, x: &mut Matrix) -> Result<(), ShapeError> {
        let h = ops::rmsnorm_rows(x, &layer.post_attention_norm, self.config.rms_norm_eps)?;
        let act = ops::swiglu(
            &ops::linear(&h, &layer.w_gate)?,
            &ops::linear(&h, &layer.w_up)?,
        )?;
        x.add_assign(&ops::linear(&act, &layer.w_down)?)
    }

    /// The memory section `s` hands to section s + 1: RMSNorm(output; memory_norms.s).
    pub fn memory(&self, s: usize, output: &Matrix) -> Result<Matrix, Error> {
        Ok(ops::rmsnorm_rows(
            output,
            &self.weights.memory_norms[s],
            self.config.rms_norm_eps,
        )?)
    }

    /// z: the last section's output, or Σ α_s · output_s with the output mix.
    pub(crate) fn mix(&self, outputs: &[Matrix]) -> Matrix {
        let last = outputs.last().expect("at least one section").clone();
        match &self.weights.output_mix {
            None => last,
            Some(alpha) => {
                let mut z = Matrix::zeros(last.rows, last.cols);
                for (out, &a) in outputs.iter().zip(alpha) {
                    z.data
                        .iter_mut()
                        .zip(&out.data)
                        .for_each(|(z, &o)| *z += a * o);
                }
                z
            }
        }
    }

    /// logits = lm_head(RMSNorm(z; model.norm)).
    pub fn logits(&self, z: &Matrix) -> Result<Matrix, Error> {
        let h = ops::rmsnorm_rows(z, &self.weights.final_norm, self.config.rms_norm_eps)?;
        Ok(ops::linear(&h, self.weights.lm_head())?)
    }
}

/// Checks ids against `config`'s vocabulary and the length against `capacity` positions (what
/// [`Model::check_tokens`] does, for callers that hold only a config).
pub fn check_tokens(config: &Config, tokens: &[u32], capacity: usize) -> Result<(), RequestError> {
    if tokens.is_empty() {
        return Err(RequestError::EmptyInput);
    }
    if tokens.len() > capacity {
        return Err(RequestError::TooLong {
            len: tokens.len(),
            max: capacity,
        });
    }
    let vocab_size = config.vocab_size;
    match tokens.iter().position(|&t| t as usize >= vocab_size) {
        Some(index) => Err(RequestError::TokenOutOfRange {
            index,
            token: tokens[index],
            vocab_size,
        }),
        None => Ok(()),
    }
}

/// The CPU model as a tensor source, so a device decoder can be built from it.
impl TensorSource for Model {
    fn config(&self) -> &Config {
        &self.config
    }

    fn read<E: Element>(&self, name: &str) -> Result<Vec<E>, LoadError> {
        let data = self
            .weights
            .tensor(name)
            .ok_or_else(|| LoadError::MissingTensor {
                name: name.to_owned(),
            })?;
        Ok(data.iter().map(|&v| E::from_f32(v)).collect())
    }
}
