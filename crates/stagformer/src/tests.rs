//! Tests that need the crate's internals (the join-breaking hook, the uploaded weights); the
//! decoder's public behaviour is tested in `tests/`.

use std::time::Duration;

use stagformer_kernels::{Device, DeviceBuffer};
use stagformer_ref::{Config, Model, StorageDtype};

use crate::weights::DeviceWeights;
use crate::{Decoder, DecoderError, DecoderOptions, ExecMode};

/// A small model: 4 query heads of 8, `sections` sections of 2 layers each, separate weights.
fn config(sections: usize, kv_heads: usize, cross_window: Option<usize>) -> Config {
    Config {
        vocab_size: 41,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2 * sections,
        num_attention_heads: 4,
        num_key_value_heads: kv_heads,
        head_dim: 8,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_scaling: stagformer_ref::RopeScaling::Default,
        sliding_window: None,
        max_position_embeddings: 64,
        tie_word_embeddings: false,
        stag_sections: sections,
        stag_shared_weights: false,
        stag_cross_window: cross_window,
        stag_output_mix: false,
    }
}

#[test]
fn decoders_can_move_between_threads() {
    fn check<T: Send>() {}
    check::<crate::Decoder<f32>>();
    check::<crate::Decoder<half::bf16>>();
}

/// Without the join before the logits (and with the last section's stream delayed), the
/// emulated run reads logits the last section has not written yet: the event wait is what
/// orders the streams.
#[test]
fn removing_the_join_event_breaks_the_emulated_run() {
    let device = Device::emulated();
    let model = Model::random(config(2, 2, None), 5, StorageDtype::F32).unwrap();
    let toks: Vec<u32> = (0..8).map(|i| ((i * 7 + 25) % 41) as u32).collect();
    let want = model.forward(&toks).unwrap().data;
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let run = |broken: bool| {
        let opts = DecoderOptions {
            mode: ExecMode::Staggered,
            recurrent: false,
            graphs: true,
            ..DecoderOptions::new(1, 16)
        };
        let mut dec = Decoder::<f32>::new(&device, &model, opts).unwrap();
        if broken {
            dec.break_join_for_test(Duration::from_millis(50));
        }
        let (id, mut got) = dec.prefill(&toks[..3])?;
        for &t in &toks[3..] {
            got.extend(dec.step(&[id], &[t])?);
        }
        Ok::<_, DecoderError>(got)
    };
    let correct = run(false).unwrap();
    assert_eq!(correct.len(), want.len());
    assert!(correct.iter().all(|v| v.is_finite()), "non-finite logits");
    let err = correct
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= 1e-4 * scale,
        "joined run off by {err} (scale {scale})"
    );
    // Logits read before the last section wrote them: wrong values, or (poisoned scratch) an
    // error naming the non-finite logits.
    let broken = match run(true) {
        Ok(logits) => logits,
        Err(e) => {
            assert!(e.to_string().contains("finite"), "{e}");
            return;
        }
    };
    let wrong = broken.iter().any(|v| !v.is_finite())
        || broken
            .iter()
            .zip(&want)
            .any(|(a, b)| (a - b).abs() > 1e-3 * scale);
    assert!(
        wrong,
        "the logits were right without the join: the event wait is not what orders the streams"
    );
}

/// A bf16 checkpoint uploaded to a bf16 decoder holds the stored bits exactly, fused weights
/// (q|k|v, gate|up, the cross k|v stack) included: no detour through f32 rounds anything.
#[test]
fn bf16_checkpoint_uploads_bit_for_bit() {
    let cfg = config(3, 2, Some(1));
    let dir = tempfile::tempdir().unwrap();
    stagformer_ref::init::write_random_checkpoint(&cfg, 5, StorageDtype::Bf16, 1, dir.path())
        .unwrap();
    let file = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&file).unwrap();
    let stored = |names: &[&str]| -> Vec<u16> {
        names
            .iter()
            .flat_map(|n| {
                let t = st.tensor(n).unwrap();
                assert_eq!(t.dtype(), safetensors::Dtype::BF16);
                t.data()
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let ckpt = stagformer_ref::Checkpoint::open(dir.path()).unwrap();
    let dev = Device::emulated();
    let stream = dev.new_stream().unwrap();
    let w = DeviceWeights::<half::bf16>::upload_from(&stream, &ckpt).unwrap();
    let bits = |b: &DeviceBuffer<half::bf16>| -> Vec<u16> {
        b.to_host(&stream)
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    assert_eq!(bits(&w.embed), stored(&["model.embed_tokens.weight"]));
    let l = "model.layers.1";
    assert_eq!(
        bits(&w.layers[1].wqkv),
        stored(&[
            &format!("{l}.self_attn.q_proj.weight"),
            &format!("{l}.self_attn.k_proj.weight"),
            &format!("{l}.self_attn.v_proj.weight"),
        ])
    );
    assert_eq!(
        bits(&w.layers[1].w_gate_up),
        stored(&[
            &format!("{l}.mlp.gate_proj.weight"),
            &format!("{l}.mlp.up_proj.weight"),
        ])
    );
    let c = "model.cross_layers.1";
    assert_eq!(
        bits(&w.memory_kv[0]),
        stored(&[
            &format!("{c}.0.cross_attn.k_proj.weight"),
            &format!("{c}.0.cross_attn.v_proj.weight"),
            &format!("{c}.1.cross_attn.k_proj.weight"),
            &format!("{c}.1.cross_attn.v_proj.weight"),
        ])
    );
    // f32 gains hold the bf16 values widened, exactly.
    let gain: Vec<f32> = w.final_norm.to_host(&stream).unwrap();
    let want: Vec<f32> = stored(&["model.norm.weight"])
        .into_iter()
        .map(|b| half::bf16::from_bits(b).to_f32())
        .collect();
    assert_eq!(gain, want);
}

/// A removed sequence's id is refused once its slot holds the next prompt, and the step
/// that names it changes nothing: the live sequence still matches a decoder that never saw
/// the stale id.
#[test]
fn a_stale_sequence_id_is_an_error_not_the_next_request() {
    use stagformer_ref::RequestError;
    let device = Device::emulated();
    let model = Model::random(config(2, 2, None), 9, StorageDtype::F32).unwrap();
    let opts = DecoderOptions::new(1, 16);
    let mut dec = Decoder::<f32>::new(&device, &model, opts).unwrap();
    let (old, _) = dec.prefill(&[3, 1, 4]).unwrap();
    dec.remove(old).unwrap();
    let (new, _) = dec.prefill(&[5, 9]).unwrap();
    assert_eq!(new.slot(), old.slot());
    for err in [
        dec.step(&[old], &[2]).unwrap_err(),
        dec.remove(old).unwrap_err(),
        dec.len(old).unwrap_err(),
    ] {
        assert!(
            matches!(
                err,
                DecoderError::Request(RequestError::StaleSequence { seq, generation: 1 })
                    if seq == old
            ),
            "{err}"
        );
    }
    assert_eq!(dec.len(new).unwrap(), 2);
    let got = dec.step(&[new], &[2]).unwrap();
    let mut fresh = Decoder::<f32>::new(&device, &model, opts).unwrap();
    let (id, _) = fresh.prefill(&[5, 9]).unwrap();
    assert_eq!(got, fresh.step(&[id], &[2]).unwrap());
}
