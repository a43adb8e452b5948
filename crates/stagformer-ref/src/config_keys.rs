//! Which `config.json` fields load, and how the two Hugging Face layouts of the RoPE settings
//! map onto one [`RopeScaling`].
//!
//! The rule (docs/MODEL.md, "config.json"): a field is either understood (parsed by
//! [`Config::from_json`](crate::Config::from_json) or here), known not to change the math
//! ([`BENIGN`], or benign only at one value: [`BENIGN_AT`]), or refused. transformers adds math
//! through config fields all the time (biases, soft-capping, partial rotary, quantisation); a
//! field nobody here has read must stop the load, never be skipped.

use serde_json::{Map, Value};

use crate::config::{invalid, opt_f64, opt_usize, short};
use crate::error::ConfigError;
use crate::rope::RopeScaling;

/// Fields parsed by `Config::from_json` or by this module.
const UNDERSTOOD: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "max_position_embeddings",
    "tie_word_embeddings",
    "sliding_window",
    "model_type",
    "architectures",
    "torch_dtype",
    "dtype",
    "layer_types",
    "stag_sections",
    "stag_shared_weights",
    "stag_cross_window",
    "stag_output_mix",
];

/// Fields that never change the logits, whatever their value: metadata, special-token ids
/// (used by generation, not by the forward), generation defaults older configs carry,
/// training-only settings (initialisation, dropout is off at inference), cache and output
/// switches of the Python implementation.
pub const BENIGN: &[&str] = &[
    "transformers_version",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "initializer_range",
    "attention_dropout",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "torchscript",
    "use_bfloat16",
    "tf_legacy_loss",
    "chunk_size_feed_forward",
    "is_decoder",
    "tie_encoder_decoder",
    "id2label",
    "label2id",
    "problem_type",
    "finetuning_task",
    "prefix",
    "task_specific_params",
    "tokenizer_class",
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
];

/// Fields that are harmless at exactly one value (the one that leaves the Llama math as it is)
/// and refused at any other.
pub const BENIGN_AT: &[(&str, BenignValue)] = &[
    ("hidden_act", BenignValue::Str("silu")),
    ("attention_bias", BenignValue::False),
    ("mlp_bias", BenignValue::False),
    ("pretraining_tp", BenignValue::Number(1.0)),
    ("partial_rotary_factor", BenignValue::Number(1.0)),
    ("attn_logit_softcapping", BenignValue::Null),
    ("final_logit_softcapping", BenignValue::Null),
    ("is_encoder_decoder", BenignValue::False),
    ("add_cross_attention", BenignValue::False),
    ("pruned_heads", BenignValue::EmptyObject),
    ("cross_attention_hidden_size", BenignValue::Null),
];

/// The one value at which a [`BENIGN_AT`] field is harmless.
#[derive(Debug, Clone, Copy)]
pub enum BenignValue {
    Str(&'static str),
    Number(f64),
    False,
    Null,
    EmptyObject,
}

impl BenignValue {
    fn holds(self, value: &Value) -> bool {
        match self {
            BenignValue::Str(s) => value.as_str() == Some(s),
            BenignValue::Number(n) => value.as_f64() == Some(n),
            BenignValue::False => value.as_bool() == Some(false) || value.is_null(),
            BenignValue::Null => value.is_null(),
            BenignValue::EmptyObject => {
                value.is_null() || value.as_object().is_some_and(|o| o.is_empty())
            }
        }
    }
}

/// The model families that load: `model_type` and the `architectures` class of each.
const FAMILIES: &[(Family, &str, &str)] = &[
    (Family::Llama, "llama", "LlamaForCausalLM"),
    (Family::Mistral, "mistral", "MistralForCausalLM"),
    (Family::StagFormer, "stagformer", "StagFormerForCausalLM"),
];

/// Which model a config describes. A config with neither `model_type` nor `architectures` is
/// read as this project's own StagFormer type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    StagFormer,
}

/// Checks the model family and every field against the lists above; returns the family.
pub fn check(obj: &Map<String, Value>) -> Result<Family, ConfigError> {
    let unsupported = |field: &str, value: &Value| ConfigError::Unsupported {
        field: field.into(),
        value: format!(
            "{} (model types that load: llama, mistral, stagformer)",
            short(value)
        ),
    };
    let by_type = match obj.get("model_type") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            FAMILIES
                .iter()
                .find(|(_, name, _)| v.as_str() == Some(name))
                .map(|f| f.0)
                .ok_or_else(|| unsupported("model_type", v))?,
        ),
    };
    let mut by_class = None;
    match obj.get("architectures") {
        None | Some(Value::Null) => {}
        Some(Value::Array(classes)) if !classes.is_empty() => {
            for class in classes {
                let family = FAMILIES
                    .iter()
                    .find(|(_, _, name)| class.as_str() == Some(name))
                    .map(|f| f.0)
                    .ok_or_else(|| unsupported("architectures", class))?;
                if by_class.is_some_and(|f| f != family) {
                    return Err(unsupported("architectures", &obj["architectures"]));
                }
                by_class = Some(family);
            }
        }
        Some(v) => {
            return Err(invalid(
                "architectures",
                short(v),
                "must be a list of class names",
            ))
        }
    }
    if let (Some(t), Some(c)) = (by_type, by_class) {
        if t != c {
            return Err(ConfigError::Conflict {
                first: "model_type".into(),
                first_value: short(&obj["model_type"]),
                second: "architectures".into(),
                second_value: short(&obj["architectures"]),
            });
        }
    }
    for (key, value) in obj {
        // `_name_or_path`, `_attn_implementation`, `_commit_hash`: bookkeeping of the Python
        // library (the attention implementation computes the same attention).
        if key.starts_with('_')
            || UNDERSTOOD.contains(&key.as_str())
            || BENIGN.contains(&key.as_str())
        {
            continue;
        }
        match BENIGN_AT.iter().find(|(name, _)| name == key) {
            Some((_, benign)) if benign.holds(value) => {}
            Some(_) => {
                return Err(ConfigError::Unsupported {
                    field: key.clone(),
                    value: short(value),
                })
            }
            None => return Err(ConfigError::UnknownField { field: key.clone() }),
        }
    }
    dtype_fields_agree(obj)?;
    Ok(by_type.or(by_class).unwrap_or(Family::StagFormer))
}

/// `torch_dtype` (4.x) and `dtype` (5.x) name the stored dtype; they do not change the math,
/// but two different answers mean the config was edited by hand.
fn dtype_fields_agree(obj: &Map<String, Value>) -> Result<(), ConfigError> {
    match (obj.get("torch_dtype"), obj.get("dtype")) {
        (Some(a), Some(b)) if !a.is_null() && !b.is_null() && a != b => {
            Err(ConfigError::Conflict {
                first: "torch_dtype".into(),
                first_value: short(a),
                second: "dtype".into(),
                second_value: short(b),
            })
        }
        _ => Ok(()),
    }
}

/// The self-attention window: Mistral's `sliding_window` (an integer, or null for none; an
/// absent field means transformers' default of 4096 for `mistral`). Llama has no sliding window
/// in transformers, so a non-null one there is refused rather than guessed.
pub fn sliding_window(
    obj: &Map<String, Value>,
    family: Family,
) -> Result<Option<usize>, ConfigError> {
    let window = match (family, obj.contains_key("sliding_window")) {
        (Family::Mistral, false) => Some(MISTRAL_DEFAULT_SLIDING_WINDOW),
        _ => opt_usize(obj, "sliding_window")?,
    };
    if family == Family::Llama && window.is_some() {
        return Err(ConfigError::Unsupported {
            field: "sliding_window".into(),
            value: format!(
                "{} (transformers' Llama has no sliding window; use model_type mistral)",
                short(&obj["sliding_window"])
            ),
        });
    }
    if let Some(types) = obj.get("layer_types").filter(|v| !v.is_null()) {
        let expected = if window.is_some() {
            "sliding_attention"
        } else {
            "full_attention"
        };
        let uniform = types
            .as_array()
            .is_some_and(|t| t.iter().all(|x| x.as_str() == Some(expected)));
        if !uniform {
            return Err(ConfigError::Unsupported {
                field: "layer_types".into(),
                value: format!("{} (every layer must be {expected} here)", short(types)),
            });
        }
    }
    Ok(window)
}

/// transformers' `MistralConfig` default.
pub const MISTRAL_DEFAULT_SLIDING_WINDOW: usize = 4096;

/// θ and the scaling, from the 4.x layout (top-level `rope_theta` and `rope_scaling`), the 5.x
/// layout (`rope_parameters` holding `rope_type`, `rope_theta` and the scaling fields), or
/// both — in which case they must agree.
pub fn rope(obj: &Map<String, Value>) -> Result<(f64, RopeScaling), ConfigError> {
    let top_theta = opt_f64(obj, "rope_theta")?;
    let legacy = match obj.get("rope_scaling") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_scaling(v, "rope_scaling", obj)?),
    };
    let (nested_theta, nested) = match obj.get("rope_parameters") {
        None | Some(Value::Null) => (None, None),
        Some(v) => {
            let params = v
                .as_object()
                .ok_or_else(|| invalid("rope_parameters", short(v), "must be an object"))?;
            if !params.contains_key("rope_type") && !params.contains_key("rope_theta") {
                // transformers 5 keys the parameters by layer type for models that mix
                // attention kinds; none of the families here does.
                return Err(ConfigError::Unsupported {
                    field: "rope_parameters".into(),
                    value: format!("{} (per-layer-type RoPE parameters)", short(v)),
                });
            }
            let theta = opt_f64(params, "rope_theta").map_err(|e| rename(e, "rope_parameters"))?;
            (theta, Some(parse_scaling(v, "rope_parameters", obj)?))
        }
    };
    let theta = match (top_theta, nested_theta) {
        (Some(a), Some(b)) if a != b => {
            return Err(ConfigError::Conflict {
                first: "rope_theta".into(),
                first_value: a.to_string(),
                second: "rope_parameters.rope_theta".into(),
                second_value: b.to_string(),
            })
        }
        (a, b) => a.or(b).unwrap_or(DEFAULT_ROPE_THETA),
    };
    let scaling = match (legacy, nested) {
        (Some(a), Some(b)) if a != b => {
            return Err(ConfigError::Conflict {
                first: "rope_scaling".into(),
                first_value: short(&obj["rope_scaling"]),
                second: "rope_parameters".into(),
                second_value: short(&obj["rope_parameters"]),
            })
        }
        (a, b) => a.or(b).unwrap_or(RopeScaling::Default),
    };
    Ok((theta, scaling))
}

/// transformers' default θ for Llama and Mistral.
pub const DEFAULT_ROPE_THETA: f64 = 10000.0;

/// One RoPE object (`rope_scaling` or `rope_parameters`, named `at` in errors). `rope_type` wins
/// over the older `type` in transformers; here the two must agree when both are given.
fn parse_scaling(
    value: &Value,
    at: &str,
    config: &Map<String, Value>,
) -> Result<RopeScaling, ConfigError> {
    let obj = value
        .as_object()
        .ok_or_else(|| invalid(at, short(value), "must be an object or null"))?;
    let name = |key: &str| format!("{at}.{key}");
    let kind = match (obj.get("rope_type"), obj.get("type")) {
        (Some(a), Some(b)) if a != b => {
            return Err(ConfigError::Conflict {
                first: name("rope_type"),
                first_value: short(a),
                second: name("type"),
                second_value: short(b),
            })
        }
        (Some(v), _) | (None, Some(v)) => v
            .as_str()
            .ok_or_else(|| invalid(&name("rope_type"), short(v), "must be a string"))?,
        (None, None) if at == "rope_parameters" => "default",
        (None, None) => {
            return Err(ConfigError::MissingField {
                field: name("rope_type"),
            })
        }
    };
    let allowed: &[&str] = match kind {
        "default" => &[],
        "linear" | "dynamic" => &["factor", "original_max_position_embeddings"],
        "llama3" => &[
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
        ],
        other => {
            return Err(ConfigError::Unsupported {
                field: name("rope_type"),
                value: format!(
                    "\"{other}\" (RoPE types that load: default, linear, llama3, dynamic)"
                ),
            })
        }
    };
    for (key, v) in obj {
        let benign_rotary = key == "partial_rotary_factor" && v.as_f64() == Some(1.0);
        if ["rope_type", "type", "rope_theta"].contains(&key.as_str())
            || allowed.contains(&key.as_str())
            || benign_rotary
        {
            continue;
        }
        return Err(ConfigError::Unsupported {
            field: name(key),
            value: format!("{} (not used by rope_type \"{kind}\" here)", short(v)),
        });
    }
    let required_f64 = |key: &str| -> Result<f64, ConfigError> {
        opt_f64(obj, key)
            .map_err(|e| rename(e, at))?
            .ok_or_else(|| ConfigError::MissingField { field: name(key) })
    };
    let max_pos = opt_usize(config, "max_position_embeddings")?;
    Ok(match kind {
        "default" => RopeScaling::Default,
        "linear" | "dynamic" => {
            // An `original_max_position_embeddings` other than the model's own is read
            // differently by different transformers versions for these types: refused.
            if let Some(orig) =
                opt_usize(obj, "original_max_position_embeddings").map_err(|e| rename(e, at))?
            {
                if Some(orig) != max_pos {
                    return Err(ConfigError::Unsupported {
                        field: name("original_max_position_embeddings"),
                        value: format!(
                            "{orig} (with rope_type \"{kind}\" it must equal \
                             max_position_embeddings)"
                        ),
                    });
                }
            }
            let factor = required_f64("factor")?;
            if kind == "linear" {
                RopeScaling::Linear { factor }
            } else {
                RopeScaling::Dynamic { factor }
            }
        }
        _ => RopeScaling::Llama3 {
            factor: required_f64("factor")?,
            low_freq_factor: required_f64("low_freq_factor")?,
            high_freq_factor: required_f64("high_freq_factor")?,
            original_max_position_embeddings: opt_usize(obj, "original_max_position_embeddings")
                .map_err(|e| rename(e, at))?
                .ok_or_else(|| ConfigError::MissingField {
                    field: name("original_max_position_embeddings"),
                })?,
        },
    })
}

/// Range checks of the scaling parameters (also for a `Config` built in code).
pub fn validate_scaling(scaling: &RopeScaling) -> Result<(), ConfigError> {
    let at_least_one = |field: &str, v: f64| {
        if v.is_finite() && v >= 1.0 {
            Ok(())
        } else {
            Err(invalid(field, v, "must be finite and at least 1"))
        }
    };
    match *scaling {
        RopeScaling::Default => Ok(()),
        RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor } => {
            at_least_one("rope_scaling.factor", factor)
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            at_least_one("rope_scaling.factor", factor)?;
            if !(low_freq_factor.is_finite() && low_freq_factor > 0.0) {
                return Err(invalid(
                    "rope_scaling.low_freq_factor",
                    low_freq_factor,
                    "must be finite and > 0",
                ));
            }
            if !(high_freq_factor.is_finite() && high_freq_factor > low_freq_factor) {
                return Err(invalid(
                    "rope_scaling.high_freq_factor",
                    high_freq_factor,
                    "must be finite and greater than low_freq_factor",
                ));
            }
            if original_max_position_embeddings == 0 {
                return Err(invalid(
                    "rope_scaling.original_max_position_embeddings",
                    0,
                    "must be at least 1",
                ));
            }
            Ok(())
        }
    }
}

/// The scaling as a 4.x `rope_scaling` object (null for `default`), for `Config::to_json`.
pub fn scaling_to_json(scaling: &RopeScaling) -> Value {
    match *scaling {
        RopeScaling::Default => Value::Null,
        RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor } => {
            serde_json::json!({ "rope_type": scaling.rope_type(), "factor": factor })
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => serde_json::json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings,
        }),
    }
}

/// An error about field `f` of a nested object, renamed `at.f`.
fn rename(e: ConfigError, at: &str) -> ConfigError {
    match e {
        ConfigError::InvalidField {
            field,
            value,
            reason,
        } => ConfigError::InvalidField {
            field: format!("{at}.{field}"),
            value,
            reason,
        },
        ConfigError::MissingField { field } => ConfigError::MissingField {
            field: format!("{at}.{field}"),
        },
        other => other,
    }
}
