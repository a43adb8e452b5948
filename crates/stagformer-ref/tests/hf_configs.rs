//! `config.json` as Hugging Face transformers 4.x and 5.x write it: both RoPE layouts, the
//! scaling types, Mistral's sliding window, the architecture check and the fields refused
//! because they would change the math.

use serde_json::{json, Value};
use stagformer_ref::{Config, ConfigError, RopeScaling};

/// A Llama 3.2 config in the 4.x layout (top-level `rope_theta`, `rope_scaling`,
/// `torch_dtype`), every field transformers writes.
fn llama32_v4() -> Value {
    serde_json::from_str(
        r#"{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": 128001,
  "head_dim": 64,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 8192,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 16,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
}"#,
    )
    .unwrap()
}

/// The same model in the 5.x layout (`rope_parameters`, `dtype`).
fn llama32_v5() -> Value {
    serde_json::from_str(
        r#"{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "dtype": "bfloat16",
  "eos_token_id": 128001,
  "head_dim": 64,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 8192,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 16,
  "num_key_value_heads": 8,
  "pad_token_id": null,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_parameters": {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rope_type": "llama3"
  },
  "tie_word_embeddings": true,
  "transformers_version": "5.0.0",
  "use_cache": true,
  "vocab_size": 128256
}"#,
    )
    .unwrap()
}

/// Mistral 7B v0.1 as 4.x writes it.
fn mistral_v4() -> Value {
    serde_json::from_str(
        r#"{
  "architectures": ["MistralForCausalLM"],
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 32768,
  "model_type": "mistral",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "sliding_window": 4096,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.34.0.dev0",
  "use_cache": true,
  "vocab_size": 32000
}"#,
    )
    .unwrap()
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base.as_object_mut().unwrap().insert(key.into(), value);
    base
}

fn without(mut base: Value, key: &str) -> Value {
    base.as_object_mut().unwrap().remove(key);
    base
}

fn load(v: &Value) -> Config {
    Config::from_json(v).unwrap_or_else(|e| panic!("{e}"))
}

fn refused(v: &Value) -> String {
    match Config::from_json(v) {
        Ok(cfg) => panic!("accepted: {cfg:?}"),
        Err(e) => e.to_string(),
    }
}

const LLAMA3_32: RopeScaling = RopeScaling::Llama3 {
    factor: 32.0,
    low_freq_factor: 1.0,
    high_freq_factor: 4.0,
    original_max_position_embeddings: 8192,
};

#[test]
fn both_layouts_give_the_same_llama3_model() {
    let v4 = load(&llama32_v4());
    let v5 = load(&llama32_v5());
    assert_eq!(v4, v5);
    assert_eq!(v4.rope_theta, 500000.0);
    assert_eq!(v4.rope_scaling, LLAMA3_32);
    assert_eq!(v4.sliding_window, None);
    assert!(v4.tie_word_embeddings);
    assert_ne!(
        v4.rope_inv_freq(),
        RopeScaling::Default.inv_freq(64, 500000.0, 131072)
    );
}

#[test]
fn theta_of_the_5x_layout_is_not_ignored() {
    // The bug this guards against: θ read only from the top level, so a 5.x config ran with
    // the default 10000.
    let cfg = load(&llama32_v5());
    assert_eq!(cfg.rope_theta, 500000.0);
    let default_only = with(
        without(llama32_v5(), "rope_parameters"),
        "rope_parameters",
        json!({"rope_type": "default", "rope_theta": 1e6}),
    );
    let cfg = load(&default_only);
    assert_eq!(
        (cfg.rope_theta, cfg.rope_scaling),
        (1e6, RopeScaling::Default)
    );
    // rope_theta may be left out of rope_parameters: transformers' default θ applies.
    let no_theta = with(
        without(llama32_v5(), "rope_parameters"),
        "rope_parameters",
        json!({"rope_type": "default"}),
    );
    assert_eq!(load(&no_theta).rope_theta, 10000.0);
}

#[test]
fn linear_and_dynamic_in_both_layouts() {
    for (kind, want) in [
        ("linear", RopeScaling::Linear { factor: 2.0 }),
        ("dynamic", RopeScaling::Dynamic { factor: 2.0 }),
    ] {
        let v4 = with(
            llama32_v4(),
            "rope_scaling",
            json!({"type": kind, "factor": 2.0}),
        );
        let v5 = with(
            without(llama32_v5(), "rope_parameters"),
            "rope_parameters",
            json!({"rope_type": kind, "factor": 2.0, "rope_theta": 500000.0}),
        );
        assert_eq!(load(&v4).rope_scaling, want);
        assert_eq!(load(&v5).rope_scaling, want);
    }
    // Within max_position_embeddings dynamic NTK is the default RoPE (transformers rescales
    // θ only for longer sequences, which are never served).
    let cfg = load(&with(
        llama32_v4(),
        "rope_scaling",
        json!({"rope_type": "dynamic", "factor": 4.0}),
    ));
    assert_eq!(
        cfg.rope_inv_freq(),
        RopeScaling::Default.inv_freq(64, 500000.0, 131072)
    );
}

#[test]
fn layouts_that_disagree_are_refused_naming_both_fields() {
    let theta = with(llama32_v5(), "rope_theta", json!(10000.0));
    let e = refused(&theta);
    assert!(
        e.contains("`rope_theta`") && e.contains("`rope_parameters.rope_theta`"),
        "{e}"
    );
    let scaling = with(
        llama32_v5(),
        "rope_scaling",
        json!({"rope_type": "linear", "factor": 8.0}),
    );
    let e = refused(&scaling);
    assert!(
        e.contains("`rope_scaling`") && e.contains("`rope_parameters`"),
        "{e}"
    );
    let dtype = with(llama32_v5(), "torch_dtype", json!("float32"));
    let e = refused(&dtype);
    assert!(e.contains("`torch_dtype`") && e.contains("`dtype`"), "{e}");
    // Agreeing copies load.
    let agree = with(llama32_v5(), "rope_theta", json!(500000.0));
    assert_eq!(load(&agree), load(&llama32_v4()));
    let both_types = with(
        llama32_v4(),
        "rope_scaling",
        json!({"rope_type": "llama3", "type": "linear", "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}),
    );
    let e = refused(&both_types);
    assert!(
        e.contains("rope_scaling.rope_type") && e.contains("rope_scaling.type"),
        "{e}"
    );
}

#[test]
fn rope_types_not_implemented_are_refused_in_both_layouts() {
    for kind in ["yarn", "longrope", "su", "mrope"] {
        let v4 = with(
            llama32_v4(),
            "rope_scaling",
            json!({"rope_type": kind, "factor": 4.0}),
        );
        let e = refused(&v4);
        assert!(
            e.contains("rope_scaling.rope_type") && e.contains(kind),
            "{e}"
        );
        let v5 = with(
            without(llama32_v5(), "rope_parameters"),
            "rope_parameters",
            json!({"rope_type": kind, "factor": 4.0, "rope_theta": 1e4}),
        );
        let e = refused(&v5);
        assert!(
            e.contains("rope_parameters.rope_type") && e.contains(kind),
            "{e}"
        );
    }
    // A field the rope type does not use (yarn's attention_factor on llama3) is refused too.
    let extra = with(
        llama32_v4(),
        "rope_scaling",
        json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
               "attention_factor": 1.2}),
    );
    assert!(refused(&extra).contains("rope_scaling.attention_factor"));
    // A missing llama3 field names itself.
    let missing = with(
        llama32_v4(),
        "rope_scaling",
        json!({"rope_type": "llama3", "factor": 8.0}),
    );
    assert!(refused(&missing).contains("rope_scaling.low_freq_factor"));
    // Per-layer-type parameters (transformers 5 for mixed-attention models).
    let per_layer = with(
        without(llama32_v5(), "rope_parameters"),
        "rope_parameters",
        json!({"full_attention": {"rope_type": "default", "rope_theta": 1e4}}),
    );
    assert!(refused(&per_layer).contains("rope_parameters"));
}

#[test]
fn mistral_sliding_window_loads_and_llama_refuses_one() {
    let cfg = load(&mistral_v4());
    assert_eq!(cfg.sliding_window, Some(4096));
    assert_eq!(cfg.self_window_start(4095), 0);
    assert_eq!(cfg.self_window_start(4096), 1);
    // Absent: MistralConfig's default of 4096; null: no window.
    assert_eq!(
        load(&without(mistral_v4(), "sliding_window")).sliding_window,
        Some(4096)
    );
    let none = with(mistral_v4(), "sliding_window", Value::Null);
    assert_eq!(load(&none).sliding_window, None);
    let e = refused(&with(llama32_v4(), "sliding_window", json!(4096)));
    assert!(e.contains("sliding_window"), "{e}");
    assert_eq!(
        load(&with(llama32_v4(), "sliding_window", Value::Null)).sliding_window,
        None
    );
    assert!(refused(&with(mistral_v4(), "sliding_window", json!(0))).contains("sliding_window"));
    // 5.x may spell out one attention kind per layer: all sliding for Mistral.
    let types = with(
        mistral_v4(),
        "layer_types",
        json!(vec!["sliding_attention"; 32]),
    );
    assert_eq!(load(&types).sliding_window, Some(4096));
    let mixed = with(
        mistral_v4(),
        "layer_types",
        json!(["sliding_attention", "full_attention"]),
    );
    assert!(refused(&mixed).contains("layer_types"));
}

#[test]
fn other_architectures_are_refused_naming_the_field_and_value() {
    let e = refused(&with(llama32_v4(), "model_type", json!("qwen2")));
    assert!(e.contains("`model_type`") && e.contains("qwen2"), "{e}");
    let e = refused(&with(
        llama32_v4(),
        "architectures",
        json!(["Qwen2ForCausalLM"]),
    ));
    assert!(
        e.contains("`architectures`") && e.contains("Qwen2ForCausalLM"),
        "{e}"
    );
    let e = refused(&with(
        llama32_v4(),
        "architectures",
        json!(["MistralForCausalLM"]),
    ));
    assert!(
        e.contains("`model_type`") && e.contains("`architectures`"),
        "{e}"
    );
    // A config of the project's own type, or with neither field, loads.
    let own = with(llama32_v4(), "model_type", json!("stagformer"));
    load(&with(
        own,
        "architectures",
        json!(["StagFormerForCausalLM"]),
    ));
    load(&without(
        without(llama32_v4(), "model_type"),
        "architectures",
    ));
}

#[test]
fn math_changing_fields_are_refused_and_benign_ones_load() {
    let refusals = [
        ("attention_bias", json!(true)),
        ("mlp_bias", json!(true)),
        ("hidden_act", json!("gelu")),
        ("pretraining_tp", json!(2)),
        ("partial_rotary_factor", json!(0.5)),
        ("attn_logit_softcapping", json!(50.0)),
        ("final_logit_softcapping", json!(30.0)),
        (
            "quantization_config",
            json!({"quant_method": "gptq", "bits": 4}),
        ),
        ("use_sliding_window", json!(true)),
        ("some_new_field", json!(1)),
    ];
    for (key, value) in refusals {
        let e = refused(&with(llama32_v4(), key, value));
        assert!(e.contains(key), "{key}: {e}");
    }
    for (key, value) in [
        ("pretraining_tp", json!(1)),
        ("attention_dropout", json!(0.1)),
        ("_name_or_path", json!("meta-llama/Llama-3.2-1B")),
        ("pad_token_id", json!(0)),
        ("partial_rotary_factor", json!(1.0)),
        ("initializer_range", json!(0.006)),
    ] {
        load(&with(llama32_v4(), key, value));
    }
}

#[test]
fn own_checkpoints_roundtrip_the_new_fields() {
    let cfg = load(&with(
        with(mistral_v4(), "num_hidden_layers", json!(4)),
        "rope_scaling",
        json!({"rope_type": "linear", "factor": 2.0}),
    ));
    let again = Config::from_json(&cfg.to_json()).unwrap();
    assert_eq!(cfg, again);
    assert!(matches!(
        Config::from_json(&json!(null)),
        Err(ConfigError::InvalidField { .. })
    ));
}

/// Sizes derived from a config (q_dim, tensor sizes, the total parameter count) that would
/// overflow, or that no machine could hold, are refused naming the field, never computed.
#[test]
fn absurd_sizes_are_refused_naming_the_field() {
    let cases: [(&str, Value, &str); 6] = [
        // num_attention_heads · head_dim overflows usize.
        (
            "num_attention_heads",
            json!({"num_attention_heads": 1u64 << 40, "num_key_value_heads": 1u64 << 40,
                   "head_dim": 1u64 << 40}),
            "num_attention_heads · head_dim",
        ),
        ("vocab_size", json!({"vocab_size": u64::MAX}), "vocab_size"),
        (
            "vocab_size",
            json!({"vocab_size": 1u64 << 31, "hidden_size": 1u64 << 20, "head_dim": 64}),
            "embedding",
        ),
        (
            "num_hidden_layers",
            json!({"num_hidden_layers": 1u64 << 62}),
            "parameters",
        ),
        (
            "intermediate_size",
            json!({"intermediate_size": u64::MAX}),
            "MLP",
        ),
        (
            "max_position_embeddings",
            json!({"max_position_embeddings": u64::MAX}),
            "max_position_embeddings",
        ),
    ];
    for (field, patch, what) in cases {
        let mut cfg = llama32_v4();
        for (k, v) in patch.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        let err = Config::from_json(&cfg).unwrap_err();
        assert!(
            matches!(&err, ConfigError::TooLarge { field: f, .. } if f == field),
            "{field}: {err}"
        );
        let msg = err.to_string();
        assert!(msg.contains(what) && msg.contains("Limits"), "{msg}");
    }
    // The real model itself is well inside the limits.
    Config::from_json(&llama32_v4()).unwrap();
}
