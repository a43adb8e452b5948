//! The memory plan against the emulated device's allocation counter: for every config and
//! option tried, the bytes a new decoder holds are exactly the plan's total, and nothing in the
//! plan scales with capacity × vocab.

use half::bf16;
use stagformer::{Activation, Decoder, DecoderError, DecoderOptions, ExecMode, MemoryPlan};
use stagformer_kernels::dtype::DType;
use stagformer_kernels::Device;
use stagformer_ref::{Config, Model, RopeScaling, StorageDtype};

fn config(sections: usize, shared: bool, window: Option<usize>, mix: bool, tied: bool) -> Config {
    Config {
        vocab_size: 53,
        hidden_size: 32,
        intermediate_size: 40,
        num_hidden_layers: 2 * sections,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_scaling: RopeScaling::Default,
        sliding_window: None,
        max_position_embeddings: 256,
        tie_word_embeddings: tied,
        stag_sections: sections,
        stag_shared_weights: shared,
        stag_cross_window: window,
        stag_output_mix: mix,
    }
}

/// Builds a decoder and returns (bytes it holds, its plan).
fn measured<T: Activation>(model: &Model, opts: DecoderOptions) -> (usize, MemoryPlan) {
    let device = Device::emulated();
    let before = device.allocated_bytes();
    let plan = Decoder::<T>::memory_plan(&model.config, &opts).expect("plan");
    assert_eq!(device.allocated_bytes(), before, "the plan allocated");
    let decoder = Decoder::<T>::new(&device, model, opts).expect("decoder");
    let held = device.allocated_bytes() - before;
    drop(decoder);
    assert_eq!(
        device.allocated_bytes(),
        before,
        "the decoder freed everything"
    );
    (held, plan)
}

#[test]
fn allocated_bytes_equal_the_plan() {
    let cases = [
        (
            config(2, false, None, false, false),
            ExecMode::Staggered,
            false,
        ),
        (
            config(2, true, Some(5), true, true),
            ExecMode::Batched,
            false,
        ),
        (
            config(3, false, Some(300), false, true),
            ExecMode::Grouped,
            false,
        ),
        (
            config(1, false, None, false, false),
            ExecMode::Sequential,
            false,
        ),
        (
            config(2, true, None, false, false),
            ExecMode::Staggered,
            true,
        ),
    ];
    for (i, (cfg, mode, recurrent)) in cases.into_iter().enumerate() {
        let model = Model::random(cfg, 11 + i as u64, StorageDtype::F32).expect("model");
        // Dense, then paged: pages of 1 and 16 slots, pools sized for every sequence or given.
        let shapes = [
            (1, 16, 512, 0, None),
            (3, 40, 8, 0, None),
            (2, 200, 64, 0, None),
            (3, 40, 8, 1, None),
            (2, 200, 64, 16, None),
            (2, 40, 16, 16, Some(7)),
        ];
        for (batch, capacity, prefill_rows, kv_page_size, kv_pages) in shapes {
            let opts = DecoderOptions {
                mode,
                recurrent,
                prefill_rows,
                kv_page_size,
                kv_pages,
                ..DecoderOptions::new(batch, capacity)
            };
            let (held, plan) = measured::<f32>(&model, opts);
            assert_eq!(held, plan.total_bytes, "case {i} f32 {opts:?}: {plan:?}");
            let (held, plan) = measured::<bf16>(&model, opts);
            assert_eq!(held, plan.total_bytes, "case {i} bf16 {opts:?}: {plan:?}");
            let sum = plan.weights_bytes
                + plan.kv_bytes
                + plan.prompt_memory_bytes
                + plan.rope_bytes
                + plan.scratch_bytes
                + plan.logits_bytes
                + plan.workspace_bytes;
            assert_eq!(sum, plan.total_bytes);
        }
    }
}

/// Doubling the capacity (past the prefill chunk, so chunks stay the same size) changes the
/// caches, the prompt memories and the rope table, and nothing else: no buffer holds
/// `capacity` rows of logits.
#[test]
fn only_caches_prompt_memory_and_rope_scale_with_capacity() {
    let mut cfg = config(2, false, None, true, false);
    cfg.vocab_size = 5000;
    cfg.max_position_embeddings = 4096;
    for mode in [ExecMode::Staggered, ExecMode::Grouped] {
        let at = |capacity| {
            let opts = DecoderOptions {
                mode,
                prefill_rows: 64,
                ..DecoderOptions::new(2, capacity)
            };
            MemoryPlan::new(&cfg, &opts, DType::BF16).expect("plan")
        };
        let (a, b) = (at(1024), at(2048));
        assert_eq!(a.weights_bytes, b.weights_bytes);
        assert_eq!(a.scratch_bytes, b.scratch_bytes);
        assert_eq!(a.logits_bytes, b.logits_bytes);
        assert_eq!(a.workspace_bytes, b.workspace_bytes);
        assert_eq!(2 * a.kv_bytes, b.kv_bytes);
        assert_eq!(2 * a.prompt_memory_bytes, b.prompt_memory_bytes);
        assert_eq!(2 * a.rope_bytes, b.rope_bytes);
        // Logits are chunk rows × vocab (f32) plus the ids: far below capacity × vocab.
        assert!(a.logits_bytes < 1024 * cfg.vocab_size * 4 / 8);
    }
}

#[test]
fn an_overflowing_plan_is_an_error() {
    // Each tensor is within the config's limits, but the caches of 32767 sequences of 2^24
    // positions of 8192 heads of 128 do not fit in 64 bits of bytes.
    let mut cfg = config(2, false, None, false, false);
    cfg.hidden_size = 1;
    cfg.num_attention_heads = 8192;
    cfg.num_key_value_heads = 8192;
    cfg.head_dim = 128;
    cfg.max_position_embeddings = 1 << 24;
    cfg.validate().expect("a valid config");
    let opts = DecoderOptions::new(32_767, 1 << 24);
    match MemoryPlan::new(&cfg, &opts, DType::F32) {
        Err(DecoderError::Unsupported(msg)) => assert!(msg.contains("cache"), "{msg}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    let err = MemoryPlan::new(&cfg, &DecoderOptions::new(1, 8), DType::I32).expect_err("i32");
    assert!(matches!(err, DecoderError::Unsupported(_)), "{err:?}");
}
