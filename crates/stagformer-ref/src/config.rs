//! `config.json`: the Llama / Mistral fields plus the `stag_*` fields of the model contract
//! (docs/MODEL.md), in the layouts Hugging Face `transformers` 4.x and 5.x write.
//!
//! Parsed field by field from a JSON object (not through a derive) so that every error names the
//! field at fault. A field this implementation does not know is refused unless it is on the list
//! of fields known not to change the math ([`config_keys`]): a config that
//! loads computes what transformers would compute, or it does not load.

use std::path::Path;

use serde_json::{Map, Value};

use crate::config_keys;
use crate::error::ConfigError;
use crate::rope::RopeScaling;

/// Most parameters a config may describe (2^40, about 1.1 trillion; 4.4 TB as f32).
pub const MAX_PARAMETERS: u64 = 1 << 40;
/// Most tensors a config may describe (self-attention/MLP, cross-attention, norms).
pub const MAX_TENSORS: u64 = 1 << 20;
/// Largest `vocab_size`: token ids are u32.
pub const MAX_VOCAB_SIZE: u64 = u32::MAX as u64;
/// Largest `max_position_embeddings` (2^24): positions are 32-bit on the devices, and the
/// RoPE tables and caches grow with it.
pub const MAX_POSITIONS: u64 = 1 << 24;

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
    /// How the RoPE frequencies derive from θ (`rope_scaling`, or `rope_parameters.rope_type`).
    pub rope_scaling: RopeScaling,
    /// Sliding window W of the self-attention (Mistral's `sliding_window`): position i sees
    /// keys max(0, i − W + 1)..=i; `None` = every earlier key.
    pub sliding_window: Option<usize>,
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
        use crate::files::{read_text, ReadFailure, MAX_JSON_BYTES};
        let text = read_text(path, MAX_JSON_BYTES).map_err(|failure| match failure {
            ReadFailure::Io(error) => ConfigError::Io {
                path: path.to_owned(),
                error,
            },
            ReadFailure::NotAFile(kind) => ConfigError::NotAFile {
                path: path.to_owned(),
                kind,
            },
            ReadFailure::TooLarge => ConfigError::FileTooLarge {
                path: path.to_owned(),
                limit: MAX_JSON_BYTES,
            },
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|error| ConfigError::Json {
            path: path.to_owned(),
            error,
        })?;
        Self::from_json(&value)
    }

    /// Validates a parsed `config.json`.
    pub fn from_json(value: &Value) -> Result<Self, ConfigError> {
        let obj = value.as_object().ok_or_else(|| ConfigError::InvalidField {
            field: "(root)".into(),
            value: short(value),
            reason: "config.json must hold a JSON object".into(),
        })?;
        let family = config_keys::check(obj)?;
        let (rope_theta, rope_scaling) = config_keys::rope(obj)?;
        let sliding_window = config_keys::sliding_window(obj, family)?;
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
            rope_theta,
            rope_scaling,
            sliding_window,
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
        for (field, window) in [
            ("stag_cross_window", self.stag_cross_window),
            ("sliding_window", self.sliding_window),
        ] {
            if window == Some(0) {
                return Err(invalid(field, 0, "must be null or at least 1"));
            }
        }
        config_keys::validate_scaling(&self.rope_scaling)?;
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
        self.check_sizes()
    }

    /// Checks that every size derived from the config fits the limits of docs/MODEL.md
    /// ("Limits"), with checked arithmetic: the products below are the ones the loaders,
    /// `expected_tensors` and the decoders compute unchecked, so a config that passes cannot
    /// overflow them.
    fn check_sizes(&self) -> Result<(), ConfigError> {
        let too_large = |field: &str, value: usize, what: &str, limit: u64| ConfigError::TooLarge {
            field: field.into(),
            value: value as u64,
            what: what.into(),
            limit,
        };
        let n = |v: usize| v as u64;
        if n(self.vocab_size) > MAX_VOCAB_SIZE {
            return Err(too_large(
                "vocab_size",
                self.vocab_size,
                "vocab_size (token ids are u32)",
                MAX_VOCAB_SIZE,
            ));
        }
        if n(self.max_position_embeddings) > MAX_POSITIONS {
            return Err(too_large(
                "max_position_embeddings",
                self.max_position_embeddings,
                "max_position_embeddings",
                MAX_POSITIONS,
            ));
        }
        // Each product is checked against the parameter limit as it is formed, so the first
        // field that makes a size absurd is the one named.
        let mul = |a: u64, b: u64, field: &str, value: usize, what: &str| {
            a.checked_mul(b)
                .filter(|&p| p <= MAX_PARAMETERS)
                .ok_or_else(|| too_large(field, value, what, MAX_PARAMETERS))
        };
        let add = |a: u64, b: u64, field: &str, value: usize, what: &str| {
            a.checked_add(b)
                .filter(|&p| p <= MAX_PARAMETERS)
                .ok_or_else(|| too_large(field, value, what, MAX_PARAMETERS))
        };
        let (d, v) = (n(self.hidden_size), n(self.vocab_size));
        let heads = self.num_attention_heads;
        let qd = mul(
            n(heads),
            n(self.head_dim),
            "num_attention_heads",
            heads,
            "num_attention_heads · head_dim",
        )?;
        let kv_heads = self.num_key_value_heads;
        let kvd = mul(
            n(kv_heads),
            n(self.head_dim),
            "num_key_value_heads",
            kv_heads,
            "num_key_value_heads · head_dim",
        )?;
        let hidden = self.hidden_size;
        let q_or_o = mul(
            qd,
            d,
            "hidden_size",
            hidden,
            "q_proj/o_proj (q_dim · hidden_size)",
        )?;
        let k_or_v = mul(
            kvd,
            d,
            "hidden_size",
            hidden,
            "k_proj/v_proj (kv_dim · hidden_size)",
        )?;
        let mlp = mul(
            n(self.intermediate_size),
            d,
            "intermediate_size",
            self.intermediate_size,
            "an MLP projection (intermediate_size · hidden_size)",
        )?;
        let embed = mul(
            v,
            d,
            "vocab_size",
            self.vocab_size,
            "the embedding (vocab_size · hidden_size)",
        )?;
        let attn_what = "one layer's parameters";
        let attn = add(
            mul(2, q_or_o, "hidden_size", hidden, attn_what)?,
            mul(2, k_or_v, "hidden_size", hidden, attn_what)?,
            "hidden_size",
            hidden,
            attn_what,
        )?;
        let self_layer = add(
            add(
                attn,
                mul(
                    3,
                    mlp,
                    "intermediate_size",
                    self.intermediate_size,
                    attn_what,
                )?,
                "hidden_size",
                hidden,
                attn_what,
            )?,
            mul(2, d, "hidden_size", hidden, attn_what)?,
            "hidden_size",
            hidden,
            attn_what,
        )?;
        let cross_layer = add(attn, d, "hidden_size", hidden, attn_what)?;
        let layers = self.num_hidden_layers;
        let layers_what = "the self-attention/MLP layers' parameters";
        let stored = mul(
            n(layers),
            self_layer,
            "num_hidden_layers",
            layers,
            layers_what,
        )?;
        let sections = self.stag_sections;
        let cross_count = mul(
            n(sections - 1),
            n(self.layers_per_section()),
            "stag_sections",
            sections,
            "the number of cross-attention layers",
        )?;
        let cross_what = "the cross-attention layers' parameters";
        let cross = mul(
            cross_count,
            cross_layer,
            "stag_sections",
            sections,
            cross_what,
        )?;
        let norms_what = "the norms' parameters";
        let norms = mul(n(sections), d, "stag_sections", sections, norms_what)?;
        let mix = if self.stag_output_mix { n(sections) } else { 0 };
        let lm_head = if self.tie_word_embeddings { 0 } else { embed };
        let total_what = "the total parameter count";
        let mut total = 0u64;
        for part in [embed, stored, cross, norms, mix, lm_head] {
            total = add(total, part, "num_hidden_layers", layers, total_what)?;
        }
        // Every tensor is listed by name before loading: bound the list, not only the sizes.
        let tensors = 2 + 9 * n(layers) + 5 * cross_count + n(sections) + mix.min(1);
        if tensors > MAX_TENSORS {
            return Err(too_large(
                if cross_count > n(layers) {
                    "stag_sections"
                } else {
                    "num_hidden_layers"
                },
                if cross_count > n(layers) {
                    sections
                } else {
                    layers
                },
                "the number of tensors",
                MAX_TENSORS,
            ));
        }
        // The whole model in f32 bytes must be addressable (it is, on 64-bit targets, for
        // every count under the parameter limit; this catches 32-bit ones).
        total
            .checked_mul(4)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| {
                too_large(
                    "num_hidden_layers",
                    layers,
                    "the model's f32 bytes",
                    usize::MAX as u64,
                )
            })?;
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

    /// `inv_freq[m]` (m < head_dim / 2) of this model's RoPE, scaling applied: the one source of
    /// the frequencies for the reference and the kernel decoder alike.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        self.rope_scaling
            .inv_freq(self.head_dim, self.rope_theta, self.max_position_embeddings)
    }

    /// First key position that self-attention at position i sees: max(0, i − W + 1) with a
    /// sliding window W, else 0.
    pub fn self_window_start(&self, i: usize) -> usize {
        self.sliding_window.map_or(0, |w| (i + 1).saturating_sub(w))
    }

    /// H · head_dim, the width of q and of the attention output (cannot overflow for a
    /// validated config).
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
            "rope_scaling": config_keys::scaling_to_json(&self.rope_scaling),
            "sliding_window": self.sliding_window,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "stag_sections": self.stag_sections,
            "stag_shared_weights": self.stag_shared_weights,
            "stag_cross_window": self.stag_cross_window,
            "stag_output_mix": self.stag_output_mix,
        })
    }
}

pub(crate) fn short(value: &Value) -> String {
    let mut s = value.to_string();
    if s.len() > 60 {
        s.truncate(57);
        s.push_str("...");
    }
    s
}

pub(crate) fn invalid(field: &str, value: impl ToString, reason: &str) -> ConfigError {
    ConfigError::InvalidField {
        field: field.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// `Ok(None)` when the field is absent or null.
pub(crate) fn opt_usize(
    obj: &Map<String, Value>,
    field: &str,
) -> Result<Option<usize>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| invalid(field, short(v), "must be a non-negative integer")),
    }
}

fn req_usize(obj: &Map<String, Value>, field: &str) -> Result<usize, ConfigError> {
    opt_usize(obj, field)?.ok_or_else(|| ConfigError::MissingField {
        field: field.into(),
    })
}

pub(crate) fn opt_f64(obj: &Map<String, Value>, field: &str) -> Result<Option<f64>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| invalid(field, short(v), "must be a number")),
    }
}

pub(crate) fn opt_bool(obj: &Map<String, Value>, field: &str) -> Result<Option<bool>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| invalid(field, short(v), "must be true or false")),
    }
}
