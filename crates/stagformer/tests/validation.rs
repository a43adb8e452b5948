//! Everything a kernel would refuse later is refused by the constructor, before anything is
//! allocated, naming the field; and the device stays usable: a decoder built right after works.

use stagformer::{Decoder, DecoderError, DecoderOptions, MemoryPlan};
use stagformer_kernels::dtype::DType;
use stagformer_kernels::Device;
use stagformer_ref::{Config, Model, RopeScaling, StorageDtype};

fn config() -> Config {
    Config {
        vocab_size: 37,
        hidden_size: 32,
        intermediate_size: 40,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_scaling: RopeScaling::Default,
        sliding_window: None,
        max_position_embeddings: 128,
        tie_word_embeddings: false,
        stag_sections: 2,
        stag_shared_weights: false,
        stag_cross_window: None,
        stag_output_mix: false,
    }
}

/// The refusal must come before any allocation (nothing left held on the device), and a
/// decoder built next on the same device must run.
fn refused(device: &Device, model: &Model, opts: DecoderOptions) -> DecoderError {
    let before = device.allocated_bytes();
    let err = match Decoder::<f32>::new(device, model, opts) {
        Err(e) => e,
        Ok(_) => panic!("{opts:?} was accepted"),
    };
    assert_eq!(
        device.allocated_bytes(),
        before,
        "allocated before refusing: {err}"
    );
    assert!(
        MemoryPlan::new(&model.config, &opts, DType::F32).is_err(),
        "the plan accepts what the constructor refuses"
    );
    let good = Model::random(config(), 3, StorageDtype::F32).expect("model");
    let mut dec = Decoder::<f32>::new(device, &good, DecoderOptions::new(1, 16)).expect("new");
    let (_, logits) = dec.prefill(&[1, 2, 3]).expect("prefill");
    assert!(logits.iter().all(|v| v.is_finite()));
    err
}

fn unsupported(err: DecoderError, field: &str) {
    match err {
        DecoderError::Unsupported(msg) => assert!(msg.contains(field), "{msg} names no {field}"),
        other => panic!("expected Unsupported naming {field}, got {other}"),
    }
}

#[test]
fn head_dim_past_the_attention_kernels_is_refused_at_new() {
    let device = Device::emulated();
    let mut cfg = config();
    cfg.head_dim = 256;
    let model = Model::random(cfg, 1, StorageDtype::F32).expect("model");
    let err = refused(&device, &model, DecoderOptions::new(1, 16));
    unsupported(err, "head_dim");
}

#[test]
fn an_edited_inconsistent_config_is_refused_at_new() {
    let device = Device::emulated();
    let mut model = Model::random(config(), 2, StorageDtype::F32).expect("model");
    model.config.num_key_value_heads = 3;
    let err = refused(&device, &model, DecoderOptions::new(1, 16));
    assert!(
        matches!(err, DecoderError::Model(stagformer_ref::Error::Config(_))),
        "{err}"
    );
    assert!(err.to_string().contains("num_key_value_heads"), "{err}");
}

#[test]
fn options_past_the_kernels_are_refused_at_new() {
    let device = Device::emulated();
    let mut cfg = config();
    cfg.max_position_embeddings = 100_000;
    let model = Model::random(cfg, 4, StorageDtype::F32).expect("model");
    for (opts, field) in [
        (DecoderOptions::new(0, 16), "max_batch"),
        (DecoderOptions::new(40_000, 16), "max_batch"),
        (
            DecoderOptions {
                prefill_rows: 70_000,
                ..DecoderOptions::new(1, 70_000)
            },
            "prefill_rows",
        ),
    ] {
        unsupported(refused(&device, &model, opts), field);
    }
}

#[test]
fn config_limits_are_refused_by_the_plan() {
    let opts = DecoderOptions::new(1, 16);
    let mut cfg = config();
    cfg.vocab_size = 1 << 31;
    let err = MemoryPlan::new(&cfg, &opts, DType::BF16).expect_err("vocab");
    unsupported(err, "vocab_size");
    let mut cfg = config();
    cfg.num_attention_heads = 70_000 * 2;
    let err = MemoryPlan::new(&cfg, &opts, DType::BF16).expect_err("heads");
    unsupported(err, "num_attention_heads");
    cfg.num_key_value_heads = 70_000;
    let err = MemoryPlan::new(&cfg, &opts, DType::BF16).expect_err("kv heads");
    unsupported(err, "num_key_value_heads");
}
