//! Which logits come back and where: a prefill's last row only or none, a step's logits into
//! the caller's buffer, or left on the device as a view. Each against the plain calls, whose
//! logits the parity tests check against the reference.

use stagformer::{Decoder, DecoderError, DecoderOptions, PrefillLogits};
use stagformer_kernels::Device;
use stagformer_ref::{Config, Model, RopeScaling, StorageDtype};

fn model(mix: bool) -> Model {
    let cfg = Config {
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
        max_position_embeddings: 64,
        tie_word_embeddings: false,
        stag_sections: 2,
        stag_shared_weights: false,
        stag_cross_window: None,
        stag_output_mix: mix,
    };
    Model::random(cfg, 21, StorageDtype::F32).expect("model")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

const PROMPT: [u32; 11] = [3, 1, 4, 1, 5, 9, 2, 6, 5, 35, 8];

#[test]
fn a_prefill_returns_the_rows_asked_for() {
    let device = Device::emulated();
    for mix in [false, true] {
        let model = model(mix);
        // Chunks of 4 rows: the last row comes from the third chunk.
        let opts = DecoderOptions {
            prefill_rows: 4,
            ..DecoderOptions::new(3, 24)
        };
        let mut dec = Decoder::<f32>::new(&device, &model, opts).expect("decoder");
        let vocab = model.config.vocab_size;
        let (all_id, all) = dec.prefill(&PROMPT).expect("all");
        assert_eq!(all.len(), PROMPT.len() * vocab);
        let (last_id, last) = dec
            .prefill_logits(&PROMPT, PrefillLogits::Last)
            .expect("last");
        assert_eq!(last.len(), vocab);
        let tail = &all[all.len() - vocab..];
        assert!(max_diff(&last, tail) <= 1e-5, "mix {mix}");
        let (none_id, none) = dec
            .prefill_logits(&PROMPT, PrefillLogits::None)
            .expect("none");
        assert!(none.is_empty());
        // Each prefill filled its caches alike: the same step gives the same logits.
        assert_eq!(dec.len(none_id).unwrap(), PROMPT.len());
        let step = dec
            .step(&[all_id, last_id, none_id], &[7, 7, 7])
            .expect("step");
        let (a, rest) = step.split_at(vocab);
        let (b, c) = rest.split_at(vocab);
        assert_eq!(a, b);
        assert_eq!(a, c);
    }
}

#[test]
fn step_into_and_the_device_view_hold_the_steps_logits() {
    let device = Device::emulated();
    let model = model(false);
    let vocab = model.config.vocab_size;
    let opts = DecoderOptions::new(2, 24);
    let mut plain = Decoder::<f32>::new(&device, &model, opts).expect("decoder");
    let mut into = Decoder::<f32>::new(&device, &model, opts).expect("decoder");
    let ids: Vec<_> = [&PROMPT[..5], &PROMPT[5..]]
        .iter()
        .map(|p| {
            let a = plain.prefill(p).expect("prefill").0;
            let b = into.prefill(p).expect("prefill").0;
            assert_eq!(a, b);
            a
        })
        .collect();
    // A buffer of the wrong length is refused before anything runs: the step is not taken.
    let mut short = vec![f32::NAN; 2 * vocab - 1];
    match into.step_into(&ids, &[4, 2], &mut short) {
        Err(DecoderError::OutputLength { expected, found }) => {
            assert_eq!((expected, found), (2 * vocab, 2 * vocab - 1))
        }
        other => panic!("a short buffer gave {other:?}"),
    }
    assert_eq!(into.len(ids[0]).unwrap(), 5);
    let mut buffer = vec![f32::NAN; 2 * vocab];
    for tokens in [[4u32, 2], [30, 0], [1, 1]] {
        let want = plain.step(&ids, &tokens).expect("step");
        into.step_into(&ids, &tokens, &mut buffer)
            .expect("step_into");
        assert_eq!(buffer, want);
        let view = into.logits_view(2).expect("view");
        assert_eq!(view.to_host(into.stream()).expect("copy"), want);
    }
    assert!(matches!(
        into.logits_view(opts.max_batch * 1000),
        Err(DecoderError::OutputLength { .. })
    ));
}
