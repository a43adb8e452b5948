//! The tensors a config calls for (one list, used by the strict loader and by random init) and
//! the model's weights in f32.

use std::collections::BTreeMap;

use crate::checkpoint::{self, LoadedTensor, TensorSource};
use crate::config::Config;
use crate::error::LoadError;
use crate::ops::Matrix;

/// Buffers some Llama exporters save that carry no weights (RoPE is recomputed).
pub(crate) fn is_ignorable(name: &str) -> bool {
    name.ends_with(".rotary_emb.inv_freq")
}

/// What a tensor is, which decides its random initialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRole {
    /// The token embedding `[V, D]`.
    Embedding,
    /// A norm's gain vector.
    Norm,
    /// A projection `[out, in]`.
    Linear,
    /// The output mix's weights `[p]`, one per section.
    OutputMix,
}

/// One tensor the config calls for.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// The tensor's checkpoint name (`model.layers.0.self_attn.q_proj.weight`, ...).
    pub name: String,
    /// Its dimensions, outermost first.
    pub shape: Vec<usize>,
    /// What it is.
    pub role: TensorRole,
}

/// Every tensor of a checkpoint for `cfg`, in a fixed order.
pub fn expected_tensors(cfg: &Config) -> Vec<TensorSpec> {
    let (d, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let mut specs = Vec::new();
    let mut push =
        |name: String, shape: Vec<usize>, role| specs.push(TensorSpec { name, shape, role });
    push(
        "model.embed_tokens.weight".into(),
        vec![v, d],
        TensorRole::Embedding,
    );
    for l in 0..cfg.stored_layers() {
        let p = format!("model.layers.{l}");
        push(
            format!("{p}.input_layernorm.weight"),
            vec![d],
            TensorRole::Norm,
        );
        push(
            format!("{p}.self_attn.q_proj.weight"),
            vec![qd, d],
            TensorRole::Linear,
        );
        push(
            format!("{p}.self_attn.k_proj.weight"),
            vec![kvd, d],
            TensorRole::Linear,
        );
        push(
            format!("{p}.self_attn.v_proj.weight"),
            vec![kvd, d],
            TensorRole::Linear,
        );
        push(
            format!("{p}.self_attn.o_proj.weight"),
            vec![d, qd],
            TensorRole::Linear,
        );
        push(
            format!("{p}.post_attention_layernorm.weight"),
            vec![d],
            TensorRole::Norm,
        );
        push(
            format!("{p}.mlp.gate_proj.weight"),
            vec![f, d],
            TensorRole::Linear,
        );
        push(
            format!("{p}.mlp.up_proj.weight"),
            vec![f, d],
            TensorRole::Linear,
        );
        push(
            format!("{p}.mlp.down_proj.weight"),
            vec![d, f],
            TensorRole::Linear,
        );
    }
    for s in 1..cfg.sections() {
        for j in 0..cfg.layers_per_section() {
            let p = format!("model.cross_layers.{s}.{j}");
            push(
                format!("{p}.cross_attn_layernorm.weight"),
                vec![d],
                TensorRole::Norm,
            );
            push(
                format!("{p}.cross_attn.q_proj.weight"),
                vec![qd, d],
                TensorRole::Linear,
            );
            push(
                format!("{p}.cross_attn.k_proj.weight"),
                vec![kvd, d],
                TensorRole::Linear,
            );
            push(
                format!("{p}.cross_attn.v_proj.weight"),
                vec![kvd, d],
                TensorRole::Linear,
            );
            push(
                format!("{p}.cross_attn.o_proj.weight"),
                vec![d, qd],
                TensorRole::Linear,
            );
        }
    }
    for s in 0..cfg.sections().saturating_sub(1) {
        push(
            format!("model.memory_norms.{s}.weight"),
            vec![d],
            TensorRole::Norm,
        );
    }
    if cfg.stag_output_mix {
        push(
            "model.output_mix.weight".into(),
            vec![cfg.sections()],
            TensorRole::OutputMix,
        );
    }
    push("model.norm.weight".into(), vec![d], TensorRole::Norm);
    if !cfg.tie_word_embeddings {
        push("lm_head.weight".into(), vec![v, d], TensorRole::Linear);
    }
    specs
}

/// Self-attention + MLP weights of one stored layer.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// Gain of the RMSNorm before self-attention `[D]`.
    pub input_norm: Vec<f32>,
    /// Query projection `[H·hd, D]`.
    pub wq: Matrix,
    /// Key projection `[Hkv·hd, D]`.
    pub wk: Matrix,
    /// Value projection `[Hkv·hd, D]`.
    pub wv: Matrix,
    /// Output projection of the attention `[D, H·hd]`.
    pub wo: Matrix,
    /// Gain of the RMSNorm before the MLP `[D]`.
    pub post_attention_norm: Vec<f32>,
    /// MLP gate projection `[F, D]`.
    pub w_gate: Matrix,
    /// MLP up projection `[F, D]`.
    pub w_up: Matrix,
    /// MLP down projection `[D, F]`.
    pub w_down: Matrix,
}

/// Cross-attention weights of one layer of a later section.
#[derive(Debug, Clone)]
pub struct CrossWeights {
    /// Gain of the RMSNorm before cross-attention `[D]`.
    pub norm: Vec<f32>,
    /// Query projection of the section's residual stream `[H·hd, D]`.
    pub wq: Matrix,
    /// Key projection of the memory `[Hkv·hd, D]`.
    pub wk: Matrix,
    /// Value projection of the memory `[Hkv·hd, D]`.
    pub wv: Matrix,
    /// Output projection `[D, H·hd]`.
    pub wo: Matrix,
}

/// All weights of a model, f32.
#[derive(Debug, Clone)]
pub struct Weights {
    /// Token embedding `[V, D]` (also the lm_head when tied).
    pub embed: Matrix,
    /// Stored layers: p·Ls with separate weights, Ls with shared ones.
    pub layers: Vec<LayerWeights>,
    /// `cross[s - 1][j]`: section s ≥ 1, layer j.
    pub cross: Vec<Vec<CrossWeights>>,
    /// `memory_norms[s]` normalises section s's output into the memory of section s + 1.
    pub memory_norms: Vec<Vec<f32>>,
    /// α_s of the output mix, one per section (`stag_output_mix`), else `None`.
    pub output_mix: Option<Vec<f32>>,
    /// Gain of the RMSNorm before the lm_head `[D]`.
    pub final_norm: Vec<f32>,
    /// `None` when tied to `embed`.
    pub lm_head: Option<Matrix>,
}

impl Weights {
    /// Takes the tensors `cfg` calls for out of `tensors`; anything missing, misshapen or left
    /// over is an error naming the tensor. A tied model's stored `lm_head.weight` is checked
    /// for shape and dropped (see [`checkpoint::Checkpoint::warnings`] for the comparison with
    /// the embedding).
    pub fn from_tensors(
        cfg: &Config,
        mut tensors: BTreeMap<String, LoadedTensor>,
    ) -> Result<Self, LoadError> {
        let mut take = |name: &str, shape: &[usize]| -> Result<Vec<f32>, LoadError> {
            let t = tensors
                .remove(name)
                .ok_or_else(|| LoadError::MissingTensor {
                    name: name.to_owned(),
                })?;
            if t.shape != shape {
                return Err(LoadError::ShapeMismatch {
                    path: t.file,
                    name: name.to_owned(),
                    expected: shape.to_vec(),
                    found: t.shape,
                });
            }
            // `LoadedTensor`'s fields are public, so shape and data may disagree; `assemble`
            // relies on them agreeing.
            let expected: usize = shape.iter().product();
            if t.data.len() != expected {
                return Err(LoadError::DataLength {
                    name: name.to_owned(),
                    shape: t.shape,
                    expected,
                    found: t.data.len(),
                });
            }
            Ok(t.data)
        };
        // Take in the spec's order so the first problem reported is deterministic.
        let mut values = BTreeMap::new();
        for spec in expected_tensors(cfg) {
            let data = take(&spec.name, &spec.shape)?;
            values.insert(spec.name, (spec.shape, data));
        }
        if let Some(spec) = checkpoint::tied_lm_head_spec(cfg) {
            // Absent is fine; present, it must have the embedding's shape.
            match take(&spec.name, &spec.shape) {
                Ok(_) | Err(LoadError::MissingTensor { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some((name, t)) = tensors.into_iter().find(|(n, _)| !is_ignorable(n)) {
            return Err(LoadError::UnexpectedTensor { path: t.file, name });
        }
        Ok(Self::assemble(cfg, values))
    }

    /// Reads every tensor `source.config()` calls for, one at a time, as f32, reporting
    /// (tensors read, tensors in all) after each.
    pub fn from_source(
        source: &impl TensorSource,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Self, LoadError> {
        let cfg = source.config();
        let specs = expected_tensors(cfg);
        let total = specs.len();
        let mut values = BTreeMap::new();
        for (i, spec) in specs.into_iter().enumerate() {
            let data = source.read::<f32>(&spec.name)?;
            check_len(&spec, data.len())?;
            values.insert(spec.name, (spec.shape, data));
            progress(i + 1, total);
        }
        Ok(Self::assemble(cfg, values))
    }

    /// The f32 values of the tensor stored under `name` (a name of [`expected_tensors`]), or
    /// `None` if this model has no such tensor. A tied model has no `lm_head.weight`.
    pub fn tensor(&self, name: &str) -> Option<&[f32]> {
        match name {
            "model.embed_tokens.weight" => return Some(&self.embed.data),
            "model.norm.weight" => return Some(&self.final_norm),
            "model.output_mix.weight" => return self.output_mix.as_deref(),
            "lm_head.weight" => return self.lm_head.as_ref().map(|m| &m.data[..]),
            _ => {}
        }
        if let Some(rest) = name.strip_prefix("model.layers.") {
            let (l, field) = rest.split_once('.')?;
            let w = self.layers.get(l.parse::<usize>().ok()?)?;
            return Some(match field {
                "input_layernorm.weight" => &w.input_norm,
                "self_attn.q_proj.weight" => &w.wq.data,
                "self_attn.k_proj.weight" => &w.wk.data,
                "self_attn.v_proj.weight" => &w.wv.data,
                "self_attn.o_proj.weight" => &w.wo.data,
                "post_attention_layernorm.weight" => &w.post_attention_norm,
                "mlp.gate_proj.weight" => &w.w_gate.data,
                "mlp.up_proj.weight" => &w.w_up.data,
                "mlp.down_proj.weight" => &w.w_down.data,
                _ => return None,
            });
        }
        if let Some(rest) = name.strip_prefix("model.cross_layers.") {
            let (s, rest) = rest.split_once('.')?;
            let (j, field) = rest.split_once('.')?;
            let s = s.parse::<usize>().ok()?.checked_sub(1)?;
            let c = self.cross.get(s)?.get(j.parse::<usize>().ok()?)?;
            return Some(match field {
                "cross_attn_layernorm.weight" => &c.norm,
                "cross_attn.q_proj.weight" => &c.wq.data,
                "cross_attn.k_proj.weight" => &c.wk.data,
                "cross_attn.v_proj.weight" => &c.wv.data,
                "cross_attn.o_proj.weight" => &c.wo.data,
                _ => return None,
            });
        }
        let s = name
            .strip_prefix("model.memory_norms.")?
            .strip_suffix(".weight")?;
        Some(self.memory_norms.get(s.parse::<usize>().ok()?)?)
    }

    /// Builds the structure from a complete `name → (shape, data)` map (names from
    /// [`expected_tensors`]), each data holding exactly the values its shape calls for.
    pub(crate) fn assemble(cfg: &Config, values: BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> Self {
        let mut parts = Parts(values);
        let layers = (0..cfg.stored_layers())
            .map(|l| {
                let p = format!("model.layers.{l}");
                LayerWeights {
                    input_norm: parts.vector(&format!("{p}.input_layernorm.weight")),
                    wq: parts.matrix(&format!("{p}.self_attn.q_proj.weight")),
                    wk: parts.matrix(&format!("{p}.self_attn.k_proj.weight")),
                    wv: parts.matrix(&format!("{p}.self_attn.v_proj.weight")),
                    wo: parts.matrix(&format!("{p}.self_attn.o_proj.weight")),
                    post_attention_norm: parts
                        .vector(&format!("{p}.post_attention_layernorm.weight")),
                    w_gate: parts.matrix(&format!("{p}.mlp.gate_proj.weight")),
                    w_up: parts.matrix(&format!("{p}.mlp.up_proj.weight")),
                    w_down: parts.matrix(&format!("{p}.mlp.down_proj.weight")),
                }
            })
            .collect();
        let cross = (1..cfg.sections())
            .map(|s| {
                (0..cfg.layers_per_section())
                    .map(|j| {
                        let p = format!("model.cross_layers.{s}.{j}");
                        CrossWeights {
                            norm: parts.vector(&format!("{p}.cross_attn_layernorm.weight")),
                            wq: parts.matrix(&format!("{p}.cross_attn.q_proj.weight")),
                            wk: parts.matrix(&format!("{p}.cross_attn.k_proj.weight")),
                            wv: parts.matrix(&format!("{p}.cross_attn.v_proj.weight")),
                            wo: parts.matrix(&format!("{p}.cross_attn.o_proj.weight")),
                        }
                    })
                    .collect()
            })
            .collect();
        let memory_norms = (0..cfg.sections().saturating_sub(1))
            .map(|s| parts.vector(&format!("model.memory_norms.{s}.weight")))
            .collect();
        Weights {
            embed: parts.matrix("model.embed_tokens.weight"),
            layers,
            cross,
            memory_norms,
            output_mix: cfg
                .stag_output_mix
                .then(|| parts.vector("model.output_mix.weight")),
            final_norm: parts.vector("model.norm.weight"),
            lm_head: (!cfg.tie_word_embeddings).then(|| parts.matrix("lm_head.weight")),
        }
    }

    /// The output projection: `lm_head`, or the embedding when tied.
    pub fn lm_head(&self) -> &Matrix {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

/// A converted tensor must hold exactly the values its spec calls for (`assemble` relies on it;
/// a [`TensorSource`] outside this crate could get it wrong).
fn check_len(spec: &TensorSpec, found: usize) -> Result<(), LoadError> {
    let expected = spec.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if expected != Some(found) {
        return Err(LoadError::DataLength {
            name: spec.name.clone(),
            shape: spec.shape.clone(),
            expected: expected.unwrap_or(usize::MAX),
            found,
        });
    }
    Ok(())
}

/// The tensors being assembled; every name and data length was checked against the spec before.
struct Parts(BTreeMap<String, (Vec<usize>, Vec<f32>)>);

impl Parts {
    fn take(&mut self, name: &str) -> (Vec<usize>, Vec<f32>) {
        // Invariant: `assemble` only runs on a map holding every tensor of `expected_tensors`.
        self.0
            .remove(name)
            .unwrap_or_else(|| panic!("internal: tensor `{name}` was validated but is absent"))
    }
    fn vector(&mut self, name: &str) -> Vec<f32> {
        self.take(name).1
    }
    fn matrix(&mut self, name: &str) -> Matrix {
        let (shape, data) = self.take(name);
        // Invariant: `from_tensors` checked every data length against its shape, and
        // `random_weights` draws exactly that many values.
        Matrix::from_vec(shape[0], shape[1], data)
            .unwrap_or_else(|e| panic!("internal: tensor `{name}` was validated but {e}"))
    }
}
