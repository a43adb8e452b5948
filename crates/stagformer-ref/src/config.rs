//! `config.json`: the Llama fields plus the `stag_*` fields of the model contract (docs/MODEL.md).
//!
//! Parsed field by field from a JSON object (not through a derive) so that every error names the
//! field at fault. Unknown fields are ignored, as Hugging Face configs carry many.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::ConfigError;

/// A validated model configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// p: number of sections.
    pub stag_sections: usize,
    /// One stack of layers run by every section (only the cross-attention differs).
    pub stag_shared_weights: bool,
    /// Cross-attention window W (memory slots i−W..i−1); `None` = unbounded.
    pub stag_cross_window: Option<usize>,
    /// Logits from a learned mix of every section's output.
    pub stag_output_mix: bool,
}

impl Config {
    /// Reads and validates `path` (a `config.json`).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ConfigError::Json {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&value)
    }

    /// Validates a parsed `config.json`.
    pub fn from_json(value: &Value) -> Result<Self, ConfigError> {
        let obj = value.as_object().ok_or_else(|| ConfigError::InvalidField {
            field: "(root)",
            value: short(value),
            reason: "config.json must hold a JSON object".into(),
        })?;
        reject_unsupported(obj)?;
        let hidden_size = req_usize(obj, "hidden_size")?;
        let num_attention_heads = req_usize(obj, "num_attention_heads")?;
        let num_key_value_heads =
            opt_usize(obj, "num_key_value_heads")?.unwrap_or(num_attention_heads);
        let head_dim = match opt_usize(obj, "head_dim")? {
            Some(d) => d,
            None => {
                if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 {
                    return Err(ConfigError::Inconsistent(format!(
                        "hidden_size {hidden_size} is not divisible by num_attention_heads \
                         {num_attention_heads} (and head_dim is not given)"
                    )));
                }
                hidden_size / num_attention_heads
            }
        };
        let cfg = Config {
            vocab_size: req_usize(obj, "vocab_size")?,
            hidden_size,
            intermediate_size: req_usize(obj, "intermediate_size")?,
            num_hidden_layers: req_usize(obj, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: opt_f64(obj, "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: opt_f64(obj, "rope_theta")?.unwrap_or(10000.0),
            max_position_embeddings: req_usize(obj, "max_position_embeddings")?,
            tie_word_embeddings: opt_bool(obj, "tie_word_embeddings")?.unwrap_or(false),
            stag_sections: opt_usize(obj, "stag_sections")?.unwrap_or(1),
            stag_shared_weights: opt_bool(obj, "stag_shared_weights")?.unwrap_or(false),
            stag_cross_window: opt_usize(obj, "stag_cross_window")?,
            stag_output_mix: opt_bool(obj, "stag_output_mix")?.unwrap_or(false),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges and the relations between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
            ("stag_sections", self.stag_sections),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(invalid(field, value, "must be at least 1"));
            }
        }
        if let Some(w) = self.stag_cross_window {
            if w == 0 {
                return Err(invalid(
                    "stag_cross_window",
                    w,
                    "must be null or at least 1",
                ));
            }
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(invalid(
                "rms_norm_eps",
                self.rms_norm_eps,
                "must be finite and > 0",
            ));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(invalid(
                "rope_theta",
                self.rope_theta,
                "must be finite and > 0",
            ));
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(ConfigError::Inconsistent(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if self.head_dim % 2 != 0 {
            return Err(invalid(
                "head_dim",
                self.head_dim,
                "must be even (RoPE rotates pairs)",
            ));
        }
        if !self.stag_shared_weights && self.num_hidden_layers % self.stag_sections != 0 {
            return Err(ConfigError::Inconsistent(format!(
                "num_hidden_layers {} is not divisible by stag_sections {} (separate weights)",
                self.num_hidden_layers, self.stag_sections
            )));
        }
        if self.stag_output_mix && self.stag_sections < 2 {
            return Err(ConfigError::Inconsistent(
                "stag_output_mix needs stag_sections >= 2".into(),
            ));
        }
        Ok(())
    }

    /// p, the number of sections.
    pub fn sections(&self) -> usize {
        self.stag_sections
    }

    /// Ls, the number of layers each section runs.
    pub fn layers_per_section(&self) -> usize {
        if self.stag_shared_weights {
            self.num_hidden_layers
        } else {
            self.num_hidden_layers / self.stag_sections
        }
    }

    /// Index of the stored self-attention/MLP layer that section `s` runs as its layer `j`.
    pub fn layer_index(&self, section: usize, j: usize) -> usize {
        if self.stag_shared_weights {
            j
        } else {
            section * self.layers_per_section() + j
        }
    }

    /// Number of stored self-attention/MLP layers.
    pub fn stored_layers(&self) -> usize {
        self.num_hidden_layers
    }

    /// H · head_dim, the width of q and of the attention output.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Hkv · head_dim, the width of k and v.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Whether recurrent mode (rule 5 of the contract) applies to this model.
    pub fn recurrent_unsupported_reason(&self) -> Option<String> {
        if !self.stag_shared_weights {
            Some("the model has separate weights per section".into())
        } else if self.stag_sections != 2 {
            Some(format!(
                "the model has stag_sections = {}",
                self.stag_sections
            ))
        } else {
            None
        }
    }

    /// The config as a `config.json` object (Llama fields plus `stag_*`).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "architectures": ["StagFormerForCausalLM"],
            "model_type": "stagformer",
            "hidden_act": "silu",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "stag_sections": self.stag_sections,
            "stag_shared_weights": self.stag_shared_weights,
            "stag_cross_window": self.stag_cross_window,
            "stag_output_mix": self.stag_output_mix,
        })
    }
}

/// Llama options whose math this contract does not define: refuse rather than compute wrongly.
fn reject_unsupported(obj: &Map<String, Value>) -> Result<(), ConfigError> {
    let unsupported = |field: &'static str, value: &Value| ConfigError::Unsupported {
        field,
        value: short(value),
    };
    if let Some(v) = obj.get("hidden_act") {
        if v.as_str() != Some("silu") {
            return Err(unsupported("hidden_act", v));
        }
    }
    for field in ["attention_bias", "mlp_bias"] {
        if let Some(v) = obj.get(field) {
            if v.as_bool() == Some(true) {
                return Err(unsupported(field, v));
            }
        }
    }
    if let Some(v) = obj.get("rope_scaling") {
        if !v.is_null() {
            return Err(unsupported("rope_scaling", v));
        }
    }
    Ok(())
}

fn short(value: &Value) -> String {
    let mut s = value.to_string();
    if s.len() > 60 {
        s.truncate(57);
        s.push_str("...");
    }
    s
}

fn invalid(field: &'static str, value: impl ToString, reason: &str) -> ConfigError {
    ConfigError::InvalidField {
        field,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// `Ok(None)` when the field is absent or null.
fn opt_usize(obj: &Map<String, Value>, field: &'static str) -> Result<Option<usize>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| invalid(field, short(v), "must be a non-negative integer")),
    }
}

fn req_usize(obj: &Map<String, Value>, field: &'static str) -> Result<usize, ConfigError> {
    opt_usize(obj, field)?.ok_or(ConfigError::MissingField { field })
}

fn opt_f64(obj: &Map<String, Value>, field: &'static str) -> Result<Option<f64>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| invalid(field, short(v), "must be a number")),
    }
}

fn opt_bool(obj: &Map<String, Value>, field: &'static str) -> Result<Option<bool>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| invalid(field, short(v), "must be true or false")),
    }
}
