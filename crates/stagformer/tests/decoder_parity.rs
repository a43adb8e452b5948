//! The kernel decoder on the emulated device against the CPU reference's forward logits, for
//! the variant matrix and every execution mode that applies.

mod common;

use common::{nmse, rel_err};
use stagformer::{Decoder, DecoderOptions, ExecMode, GemvPath, Sampled, SamplingParams, SeqId};
use stagformer_kernels::ops::sample::multi_block_launches;
use stagformer_kernels::Device;
use stagformer_ref::{Config, Model, StorageDtype};

const TOL: f64 = 1e-4;
const STEPS: usize = 32;

#[derive(Debug, Clone, Copy)]
struct Variant {
    sections: usize,
    shared: bool,
    window: Option<usize>,
    gqa: bool,
    tied: bool,
    mix: bool,
}

fn variants() -> Vec<Variant> {
    let mut out = Vec::new();
    let mut n = 0;
    for sections in 1..=4 {
        for shared in [false, true] {
            for window in [None, Some(1), Some(3)] {
                if sections == 1 && window.is_some() {
                    continue;
                }
                n += 1;
                out.push(Variant {
                    sections,
                    shared,
                    window,
                    gqa: n % 2 == 0,
                    tied: n % 3 == 0,
                    mix: sections > 1 && n % 4 < 2,
                });
            }
        }
    }
    out
}

fn config(v: Variant) -> Config {
    Config {
        vocab_size: 41,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: if v.shared { 2 } else { 2 * v.sections },
        num_attention_heads: 4,
        num_key_value_heads: if v.gqa { 2 } else { 4 },
        head_dim: 8,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_scaling: stagformer_ref::RopeScaling::Default,
        sliding_window: None,
        max_position_embeddings: 64,
        tie_word_embeddings: v.tied,
        stag_sections: v.sections,
        stag_shared_weights: v.shared,
        stag_cross_window: v.window,
        stag_output_mix: v.mix,
    }
}

fn tokens(n: usize, seed: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 7 + seed * 11 + 3) % 41) as u32)
        .collect()
}

/// Logits of every position of `toks`: prefill `prompt_len` tokens, then one step per token.
fn score_one<T: stagformer::Activation>(
    dec: &mut Decoder<T>,
    toks: &[u32],
    prompt_len: usize,
) -> Vec<f32> {
    let (id, mut got) = dec.prefill(&toks[..prompt_len]).unwrap();
    for &t in &toks[prompt_len..] {
        got.extend(dec.step(&[id], &[t]).unwrap());
    }
    got
}

fn modes() -> [ExecMode; 2] {
    [ExecMode::Sequential, ExecMode::Staggered]
}

/// Every execution mode that applies to `v` (Batched needs shared weights).
fn modes_for(v: Variant) -> Vec<ExecMode> {
    let mut m = modes().to_vec();
    if v.shared || v.sections == 1 {
        m.push(ExecMode::Batched);
    }
    m.push(ExecMode::Grouped);
    m
}

/// B = 3 ragged: prompts of 1, 4 and 6 tokens, then 32 steps of all three together, with step
/// graphs and without; then B = 1 (a prompt of 4, 32 steps) with graphs.
#[test]
fn decoder_logits_match_reference_forward() {
    let device = Device::emulated();
    for (n, v) in variants().into_iter().enumerate() {
        let model = Model::random(config(v), 40 + n as u64, StorageDtype::F32).unwrap();
        let prompts = [1usize, 4, 6];
        let seqs: Vec<Vec<u32>> = prompts
            .iter()
            .enumerate()
            .map(|(b, &p)| tokens(p + STEPS, n + b))
            .collect();
        let wants: Vec<Vec<f32>> = seqs
            .iter()
            .map(|s| model.forward(s).unwrap().data)
            .collect();
        let paths = [
            (true, GemvPath::Fused),
            (false, GemvPath::Fused),
            (true, GemvPath::Cublas),
        ];
        for (mode, (graphs, gemv)) in modes_for(v)
            .into_iter()
            .flat_map(|m| paths.map(|path| (m, path)))
        {
            let opts = DecoderOptions {
                mode,
                recurrent: false,
                graphs,
                gemv,
                ..DecoderOptions::new(3, 40)
            };
            let mut dec = Decoder::<f32>::new(&device, &model, opts).unwrap();
            let mut got: Vec<Vec<f32>> = Vec::new();
            let mut ids = Vec::new();
            for (s, &p) in seqs.iter().zip(&prompts) {
                let (id, logits) = dec.prefill(&s[..p]).unwrap();
                ids.push(id);
                got.push(logits);
            }
            for step in 0..STEPS {
                let toks: Vec<u32> = (0..3).map(|b| seqs[b][prompts[b] + step]).collect();
                let logits = dec.step(&ids, &toks).unwrap();
                for b in 0..3 {
                    got[b].extend_from_slice(&logits[b * 41..(b + 1) * 41]);
                }
            }
            for b in 0..3 {
                let e = rel_err(&got[b], &wants[b]);
                assert!(
                    e <= TOL,
                    "{v:?} {mode:?} graphs {graphs} {gemv:?} sequence {b}: relative error {e:.2e}"
                );
            }
            // One batch size throughout: one graph, captured on the second step.
            assert_eq!(dec.captured_graphs(), usize::from(graphs), "{v:?} {mode:?}");
        }
        for mode in modes_for(v) {
            let opts = DecoderOptions {
                mode,
                recurrent: false,
                graphs: true,
                ..DecoderOptions::new(1, 40)
            };
            let mut dec = Decoder::<f32>::new(&device, &model, opts).unwrap();
            let toks = tokens(4 + STEPS, n + 7);
            let want = model.forward(&toks).unwrap().data;
            let e = rel_err(&score_one(&mut dec, &toks, 4), &want);
            assert!(e <= TOL, "{v:?} {mode:?} B=1: relative error {e:.2e}");
        }
    }
}

/// The tokens of a sampled step.
fn ids(picked: Vec<Sampled>) -> Vec<u32> {
    picked.into_iter().map(|s| s.token).collect()
}

/// Graph replays pick the same tokens as direct launches while the batch size and the rows'
/// sampler settings change: a graph per row count, and nothing stale baked into any of them.
#[test]
fn graph_replay_equals_direct_launches() {
    let device = Device::emulated();
    let v = Variant {
        sections: 3,
        shared: true,
        window: Some(3),
        gqa: true,
        tied: false,
        mix: true,
    };
    let model = Model::random(config(v), 17, StorageDtype::F32).unwrap();
    let warm = SamplingParams {
        temperature: 0.9,
        top_k: 12,
        top_p: 0.9,
        seed: 1234,
    };
    let greedy = SamplingParams::GREEDY;
    for mode in [ExecMode::Staggered, ExecMode::Sequential, ExecMode::Batched] {
        let mut runs = Vec::new();
        let mut graphs_captured = Vec::new();
        for graphs in [true, false] {
            let opts = DecoderOptions {
                mode,
                recurrent: false,
                graphs,
                ..DecoderOptions::new(3, 40)
            };
            let mut dec = Decoder::<f32>::new(&device, &model, opts).unwrap();
            let (a, _) = dec.prefill(&[3, 1, 4]).unwrap();
            let (b, _) = dec.prefill(&[9, 2, 6, 5, 3]).unwrap();
            let (c, _) = dec.prefill(&[7]).unwrap();
            let mut next = [5u32, 8, 13];
            let mut out = Vec::new();
            for step in 0..24u32 {
                // Batches of 3, 2 and 1 rows, and two sampler settings, interleaved.
                let seqs: &[SeqId] = match step % 4 {
                    0 | 1 => &[a, b, c],
                    2 => &[c, a],
                    _ => &[b],
                };
                // Mixed rows, the mix changing from step to step.
                let sampling: Vec<SamplingParams> = (0..seqs.len() as u32)
                    .map(|r| if (step + r) % 3 == 0 { greedy } else { warm })
                    .collect();
                let toks: Vec<u32> = seqs.iter().map(|&s| next[s.slot()]).collect();
                let picked = dec.step_sample(seqs, &toks, &sampling).unwrap();
                for (&s, p) in seqs.iter().zip(&picked) {
                    next[s.slot()] = p.token;
                }
                out.extend(picked.iter().flat_map(|p| [p.token, p.logprob.to_bits()]));
            }
            // The last few steps read logits instead of sampling: graphs without a sampler.
            for _ in 0..3 {
                let logits = dec
                    .step(&[a, c], &[next[a.slot()], next[c.slot()]])
                    .unwrap();
                out.extend(logits.iter().map(|v| v.to_bits()));
            }
            runs.push(out);
            graphs_captured.push(dec.captured_graphs());
        }
        assert_eq!(runs[0], runs[1], "{mode:?}: graph replay differs");
        // Rows 3, 2 and 1 sampling, and 2 reading logits: one graph each.
        assert_eq!(graphs_captured[0], 4, "{mode:?}: {graphs_captured:?}");
        assert_eq!(graphs_captured[1], 0, "{mode:?}");
    }
}

#[test]
fn recurrent_mode_matches_reference() {
    let device = Device::emulated();
    for window in [None, Some(1), Some(3)] {
        let v = Variant {
            sections: 2,
            shared: true,
            window,
            gqa: true,
            tied: false,
            mix: window.is_some(),
        };
        let model = Model::random(config(v), 7, StorageDtype::F32).unwrap();
        let toks = tokens(3 + STEPS, 1);
        let want = stagformer_ref::score(
            &model,
            &toks,
            stagformer_ref::ScoreMode::Recurrent { prompt_len: 3 },
        )
        .unwrap();
        // Recurrent steps run section 1 alone, whatever the mode (Grouped included).
        for mode in [ExecMode::Sequential, ExecMode::Grouped] {
            let opts = DecoderOptions {
                mode,
                recurrent: true,
                graphs: true,
                ..DecoderOptions::new(1, 40)
            };
            let mut dec = Decoder::<f32>::new(&device, &model, opts).unwrap();
            let got = score_one(&mut dec, &toks, 3);
            let e = rel_err(&got, &want.data);
            assert!(e <= TOL, "{window:?} {mode:?}: relative error {e:.2e}");
        }
    }
}

#[test]
fn staggered_equals_sequential_token_for_token() {
    let device = Device::emulated();
    let v = Variant {
        sections: 3,
        shared: false,
        window: Some(3),
        gqa: true,
        tied: false,
        mix: true,
    };
    let model = Model::random(config(v), 99, StorageDtype::F32).unwrap();
    let greedy = SamplingParams::GREEDY;
    let mut runs = Vec::new();
    for mode in modes() {
        let opts = DecoderOptions {
            mode,
            recurrent: false,
            graphs: true,
            ..DecoderOptions::new(2, 40)
        };
        let mut dec = Decoder::<f32>::new(&device, &model, opts).unwrap();
        let (a, la) = dec.prefill(&[1, 2, 3]).unwrap();
        let (b, lb) = dec.prefill(&[9]).unwrap();
        let argmax =
            |row: &[f32]| (0..row.len()).fold(0, |m, i| if row[i] > row[m] { i } else { m }) as u32;
        let mut next = vec![argmax(&la[2 * 41..]), argmax(&lb)];
        let mut out = Vec::new();
        for _ in 0..STEPS as u32 {
            next = ids(dec.step_sample(&[a, b], &next, &[greedy; 2]).unwrap());
            out.extend_from_slice(&next);
        }
        runs.push(out);
    }
    assert_eq!(runs[0], runs[1]);
}

/// bf16 activations against the f32 reference on the same (bf16-rounded) weights. Every stored
/// activation is rounded to bf16 (≤ 2⁻⁸ relative, NMSE ≈ 5e-6 per store); about a dozen stores
/// per layer compound through the residual stream, so logits land near 1e-4: bound 5e-4.
#[test]
fn bf16_decoder_is_within_nmse_of_reference() {
    let device = Device::emulated();
    let v = Variant {
        sections: 2,
        shared: false,
        window: Some(3),
        gqa: true,
        tied: false,
        mix: true,
    };
    let model = Model::random(config(v), 3, StorageDtype::Bf16).unwrap();
    let toks = tokens(4 + STEPS, 5);
    let want = model.forward(&toks).unwrap().data;
    for (mode, gemv) in modes()
        .into_iter()
        .flat_map(|m| [(m, GemvPath::Fused), (m, GemvPath::Cublas)])
    {
        let opts = DecoderOptions {
            mode,
            recurrent: false,
            graphs: true,
            gemv,
            ..DecoderOptions::new(1, 40)
        };
        let mut dec = Decoder::<half::bf16>::new(&device, &model, opts).unwrap();
        let got = score_one(&mut dec, &toks, 4);
        let nmse = nmse(&got, &want);
        assert!(nmse <= 5e-4, "{mode:?} {gemv:?}: nmse {nmse:.2e}");
        assert!(nmse > 0.0, "bf16 run identical to f32: is it really bf16?");
    }
}

#[test]
fn batched_equals_sequential_token_for_token() {
    let device = Device::emulated();
    for sections in [2, 3] {
        let v = Variant {
            sections,
            shared: true,
            window: Some(2),
            gqa: true,
            tied: true,
            mix: sections == 3,
        };
        let model = Model::random(config(v), 21, StorageDtype::F32).unwrap();
        let greedy = SamplingParams::GREEDY;
        let mut runs = Vec::new();
        for mode in [ExecMode::Sequential, ExecMode::Staggered, ExecMode::Batched] {
            let opts = DecoderOptions {
                mode,
                recurrent: false,
                graphs: true,
                ..DecoderOptions::new(2, 40)
            };
            let mut dec = Decoder::<f32>::new(&device, &model, opts).unwrap();
            let (a, _) = dec.prefill(&[3, 1, 4, 1, 5]).unwrap();
            let (b, _) = dec.prefill(&[9, 2]).unwrap();
            let mut next = vec![7, 8];
            let mut out = Vec::new();
            for _ in 0..STEPS as u32 {
                next = ids(dec.step_sample(&[a, b], &next, &[greedy; 2]).unwrap());
                out.extend_from_slice(&next);
            }
            runs.push(out);
        }
        assert_eq!(
            runs[0], runs[1],
            "p={sections}: staggered differs from sequential"
        );
        assert_eq!(
            runs[0], runs[2],
            "p={sections}: batched differs from sequential"
        );
    }
}

/// Grouped (every section's layer j in one launch per projection) picks Sequential's tokens,
/// separate and shared weights, p = 2..4, on the fused path and its cuBLAS fallback, and with
/// 9 rows a section (p · B = 36 rows: still grouped, 9 rows a group).
#[test]
fn grouped_equals_sequential_token_for_token() {
    let device = Device::emulated();
    for (sections, shared, batch) in [(2, false, 2), (3, false, 3), (4, true, 2), (4, false, 9)] {
        let v = Variant {
            sections,
            shared,
            window: Some(2),
            gqa: true,
            tied: true,
            mix: sections == 3,
        };
        let model = Model::random(config(v), 23, StorageDtype::F32).unwrap();
        let greedy = SamplingParams::GREEDY;
        let mut runs = Vec::new();
        for (mode, gemv) in [
            (ExecMode::Sequential, GemvPath::Fused),
            (ExecMode::Grouped, GemvPath::Fused),
            (ExecMode::Grouped, GemvPath::Cublas),
        ] {
            let opts = DecoderOptions {
                mode,
                recurrent: false,
                graphs: true,
                gemv,
                ..DecoderOptions::new(batch, 40)
            };
            let mut dec = Decoder::<f32>::new(&device, &model, opts).unwrap();
            let ids: Vec<SeqId> = (0..batch)
                .map(|b| dec.prefill(&tokens(1 + b % 5, b)).unwrap().0)
                .collect();
            let mut next: Vec<u32> = (0..batch as u32).map(|b| (b * 5 + 7) % 41).collect();
            let mut out = Vec::new();
            for _ in 0..12u32 {
                let settings = vec![greedy; ids.len()];
                next = self::ids(dec.step_sample(&ids, &next, &settings).unwrap());
                out.extend_from_slice(&next);
            }
            runs.push(out);
        }
        let what = format!("p={sections} shared {shared} B={batch}");
        assert_eq!(runs[0], runs[1], "{what}: grouped differs from sequential");
        assert_eq!(
            runs[0], runs[2],
            "{what}: grouped (cuBLAS) differs from sequential"
        );
    }
}

/// A prompt as long as the capacity: the prefill fits exactly, the next step is a request error
/// that leaves the decoder usable.
#[test]
fn a_prompt_filling_the_capacity() {
    let device = Device::emulated();
    let v = Variant {
        sections: 3,
        shared: false,
        window: Some(1),
        gqa: false,
        tied: true,
        mix: false,
    };
    let model = Model::random(config(v), 12, StorageDtype::F32).unwrap();
    let toks = tokens(6, 4);
    let want = model.forward(&toks).unwrap().data;
    let mut dec = Decoder::<f32>::new(&device, &model, DecoderOptions::new(1, 6)).unwrap();
    let (id, got) = dec.prefill(&toks).unwrap();
    assert!(rel_err(&got, &want) <= TOL);
    let err = dec.step(&[id], &[1]).unwrap_err();
    assert!(err.to_string().contains("7"), "{err}");
    dec.remove(id).unwrap();
    let (id, got) = dec.prefill(&toks[..5]).unwrap();
    assert!(rel_err(&got, &want[..5 * 41]) <= TOL);
    let logits = dec.step(&[id], &[toks[5]]).unwrap();
    assert!(rel_err(&logits, &want[5 * 41..]) <= TOL);
}

/// A prompt prefilled in chunks of 1, 3 and 7 rows (each chunk attending to the caches and
/// the projected memory of the chunks before it) gives the reference's logits, over the variant
/// matrix, a sliding window whose ring is shorter than the prompt, and steps after it.
#[test]
fn chunked_prefill_matches_reference_forward() {
    let device = Device::emulated();
    for (n, v) in variants().into_iter().enumerate() {
        let mut cfg = config(v);
        cfg.sliding_window = (n % 3 == 0).then_some(5);
        let model = Model::random(cfg, 140 + n as u64, StorageDtype::F32).unwrap();
        let toks = tokens(24, n + 5);
        let want = model.forward(&toks).unwrap().data;
        for prefill_rows in [1, 3, 7] {
            let opts = DecoderOptions {
                prefill_rows,
                ..DecoderOptions::new(1, 24)
            };
            let mut dec = Decoder::<f32>::new(&device, &model, opts).unwrap();
            let e = rel_err(&score_one(&mut dec, &toks, 20), &want);
            assert!(
                e <= TOL,
                "variant {n} {v:?} prefill_rows {prefill_rows}: relative error {e:.2e}"
            );
        }
    }
}

/// A bad sampler setting is the caller's error: reported before any launch, decoder usable.
#[test]
fn bad_sampling_settings_leave_the_decoder_usable() {
    let device = Device::emulated();
    let v = Variant {
        sections: 2,
        shared: false,
        window: None,
        gqa: true,
        tied: false,
        mix: false,
    };
    let model = Model::random(config(v), 31, StorageDtype::F32).unwrap();
    let mut dec = Decoder::<f32>::new(&device, &model, DecoderOptions::new(1, 16)).unwrap();
    let (id, _) = dec.prefill(&[1, 2]).unwrap();
    for bad in [
        SamplingParams {
            temperature: f32::NAN,
            ..SamplingParams::GREEDY
        },
        SamplingParams {
            top_p: 0.0,
            ..SamplingParams::GREEDY
        },
    ] {
        let err = dec.step_sample(&[id], &[3], &[bad]).unwrap_err();
        assert!(
            !matches!(err, stagformer::DecoderError::Poisoned(_)),
            "{err}"
        );
        assert_eq!(dec.len(id).unwrap(), 2, "a refused step must not advance");
    }
    // No setting for the one row: refused before anything runs.
    let err = dec.step_sample(&[id], &[3], &[]).unwrap_err();
    assert!(err.to_string().contains("sampling settings"), "{err}");
    assert_eq!(dec.len(id).unwrap(), 2);
    let picked = dec
        .step_sample(&[id], &[3], &[SamplingParams::GREEDY])
        .unwrap();
    assert_eq!(picked.len(), 1);
    assert_eq!(dec.len(id).unwrap(), 3);
}

/// The launch count of a step that `docs/perf-notes.md` derives from the code, measured on a
/// captured graph: the 1.3b preset's structure (p = 2, separate weights, 12 layers a section)
/// at small widths, for both GEMV paths. `attn` = launches of one decode attention (1:
/// the split kernel combines its partials).
///
/// Fused: a section-0 layer is 4 GEMVs + attention, a later section's adds 2 GEMVs + attention;
/// besides the layers, embedding per section, one memory GEMV, the final norm, the lm_head and
/// the sampler. cuBLAS: a section-0 layer is 8 + attention (q|k|v GEMM, rope_append, o GEMM,
/// add_rmsnorm, gate|up GEMM, swiglu, down GEMM, add_rmsnorm), a later section's adds 3 +
/// attention (add_rmsnorm, cross q GEMM, cross o GEMM); embedding and norm per section, the
/// memory hand-over (GEMM, append), the lm_head and the sampler.
#[test]
fn a_step_graph_has_the_launches_the_perf_notes_count() {
    let device = Device::emulated();
    let mut cfg = config(Variant {
        sections: 2,
        shared: false,
        window: None,
        gqa: true,
        tied: false,
        mix: false,
    });
    cfg.num_hidden_layers = 24;
    let model = Model::random(cfg, 2, StorageDtype::F32).unwrap();
    let attn = 1;
    // The sampler's launches depend on the vocabulary only (41: 2 + 3 selects · 4 digits).
    let sampler = multi_block_launches(41);
    assert_eq!(sampler, 14);
    let fused = 12 * (4 + attn) + 12 * (6 + 2 * attn) + 2 + 1 + 1 + 1 + sampler;
    let cublas = 2 * 2 + 12 * (8 + attn) + 12 * (11 + 2 * attn) + 2 + 1 + sampler;
    for (gemv, launches) in [(GemvPath::Fused, fused), (GemvPath::Cublas, cublas)] {
        let opts = DecoderOptions {
            gemv,
            ..DecoderOptions::new(1, 8)
        };
        let mut dec = Decoder::<f32>::new(&device, &model, opts).unwrap();
        let (id, _) = dec.prefill(&[1, 2]).unwrap();
        let greedy = SamplingParams::GREEDY;
        let mut next = vec![3];
        for _ in 0..3 {
            next = ids(dec.step_sample(&[id], &next, &[greedy]).unwrap());
        }
        assert_eq!(dec.graph_nodes(1, true).unwrap(), Some(launches));
        let nodes = dec.graph_node_counts(1, true).unwrap().unwrap();
        assert_eq!(
            (nodes.kernels, nodes.copies, nodes.fills),
            (launches, 0, 0),
            "{gemv:?}"
        );
        assert_eq!(dec.graph_nodes(2, true).unwrap(), None);
    }
    assert_eq!((fused, cublas), (175, 285));

    // Grouped: per layer index j, the q|k|v GEMV, self attention, o GEMV, cross q GEMV, cross
    // attention, cross o GEMV, gate|up GEMV and down GEMV for both sections at once
    // (6 + 2 · attn); per step the embedding of all rows, one memory hand-over GEMV, the final
    // norm, the lm_head and the sampler (its 14 launches): 12 · (6 + 2) + 4 + 14 = 114.
    let grouped = 12 * (6 + 2 * attn) + 1 + 1 + 1 + 1 + sampler;
    let opts = DecoderOptions {
        mode: ExecMode::Grouped,
        ..DecoderOptions::new(1, 8)
    };
    let mut dec = Decoder::<f32>::new(&device, &model, opts).unwrap();
    let (id, _) = dec.prefill(&[1, 2]).unwrap();
    let greedy = SamplingParams::GREEDY;
    let mut next = vec![3];
    for _ in 0..3 {
        next = ids(dec.step_sample(&[id], &next, &[greedy]).unwrap());
    }
    let nodes = dec.graph_node_counts(1, true).unwrap().unwrap();
    assert_eq!((nodes.kernels, nodes.copies, nodes.fills), (grouped, 0, 0));
    assert_eq!(grouped, 114);
}

/// Mistral's sliding window (self caches become rings, prefills run in chunks) and the RoPE
/// scaling types, in every mode that applies, graphs on and off: prompts longer than the ring
/// (chunked prefill), then steps far past the window, against the reference forward. The
/// window must matter: the same model without it gives other logits.
#[test]
fn sliding_window_and_rope_scaling_match_reference_forward() {
    use stagformer_ref::RopeScaling;
    let device = Device::emulated();
    let cases = [
        (1, false, None, Some(4), RopeScaling::Linear { factor: 4.0 }),
        (
            2,
            false,
            Some(3),
            Some(5),
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 16,
            },
        ),
        (2, true, None, Some(3), RopeScaling::Dynamic { factor: 2.0 }),
        (3, false, Some(1), Some(2), RopeScaling::Default),
    ];
    for (n, (sections, shared, window, sliding, scaling)) in cases.into_iter().enumerate() {
        let v = Variant {
            sections,
            shared,
            window,
            gqa: n % 2 == 0,
            tied: n == 1,
            mix: sections == 3,
        };
        let mut cfg = config(v);
        cfg.rope_theta = 500000.0;
        cfg.rope_scaling = scaling;
        cfg.sliding_window = sliding;
        let model = Model::random(cfg.clone(), 90 + n as u64, StorageDtype::F32).unwrap();
        let toks = tokens(40, n + 3);
        let want = model.forward(&toks).unwrap().data;
        let mut unwindowed = cfg;
        unwindowed.sliding_window = None;
        let plain = Model::new(unwindowed, model.weights.clone());
        assert!(
            rel_err(&plain.forward(&toks).unwrap().data, &want) > 1e-3,
            "case {n}: the window changes nothing"
        );
        for mode in modes_for(v) {
            for graphs in [true, false] {
                let opts = DecoderOptions {
                    mode,
                    recurrent: false,
                    graphs,
                    ..DecoderOptions::new(2, 40)
                };
                let mut dec = Decoder::<f32>::new(&device, &model, opts).unwrap();
                for prompt in [17, 1] {
                    let e = rel_err(&score_one(&mut dec, &toks, prompt), &want);
                    assert!(
                        e <= TOL,
                        "case {n} {mode:?} graphs {graphs} prompt {prompt}: relative error {e:.2e}"
                    );
                }
            }
        }
    }
}

/// Writes `cfg`'s random checkpoint (seed 5) in `dtype` as two shards.
fn write_checkpoint(cfg: &Config, dtype: StorageDtype, dir: &std::path::Path) {
    stagformer_ref::init::write_random_checkpoint(cfg, 5, dtype, 2, dir).unwrap();
}

fn both_decoders<T: stagformer::Activation>(
    ckpt: &stagformer_ref::Checkpoint,
    model: &Model,
    toks: &[u32],
) -> (Vec<f32>, Vec<f32>) {
    let dev = Device::emulated();
    let opts = DecoderOptions::new(1, toks.len());
    let mut mapped = Decoder::<T>::from_checkpoint(&dev, ckpt, opts).unwrap();
    let mut hosted = Decoder::<T>::new(&dev, model, opts).unwrap();
    (
        score_one(&mut mapped, toks, 3),
        score_one(&mut hosted, toks, 3),
    )
}

/// The decoder built straight from the mapped checkpoint computes the very logits of the one
/// built from the f32 `Model` of the same files: each weight is rounded once, to the same value,
/// either way (f32, bf16 and f16 files; f32 and bf16 decoders).
#[test]
fn mapped_checkpoint_decoder_equals_model_decoder() {
    let picks = [1, 5, 8, 13, 20];
    let all = variants();
    let toks = tokens(9, 2);
    for &i in &picks {
        let v = all[i % all.len()];
        let cfg = config(v);
        for dtype in [StorageDtype::F32, StorageDtype::Bf16, StorageDtype::F16] {
            let dir = tempfile::tempdir().unwrap();
            write_checkpoint(&cfg, dtype, dir.path());
            let ckpt = stagformer_ref::Checkpoint::open(dir.path()).unwrap();
            let model = Model::load(dir.path()).unwrap();
            let (a, b) = both_decoders::<f32>(&ckpt, &model, &toks);
            assert_eq!(a, b, "{v:?} {dtype:?} f32 decoder");
            let (a, b) = both_decoders::<half::bf16>(&ckpt, &model, &toks);
            assert_eq!(a, b, "{v:?} {dtype:?} bf16 decoder");
        }
    }
}

/// Seeded random weights drawn tensor by tensor (what the CLI's presets upload) are the weights
/// of `Model::random`.
#[test]
fn random_source_decoder_equals_model_decoder() {
    let v = variants()[7];
    let cfg = config(v);
    let source =
        stagformer_ref::init::RandomWeights::new(cfg.clone(), 3, StorageDtype::F32).unwrap();
    let model = Model::random(cfg, 3, StorageDtype::F32).unwrap();
    let dev = Device::emulated();
    let toks = tokens(7, 1);
    let opts = DecoderOptions::new(1, toks.len());
    let mut a = Decoder::<f32>::from_source(&dev, &source, opts).unwrap();
    let mut b = Decoder::<f32>::new(&dev, &model, opts).unwrap();
    assert_eq!(score_one(&mut a, &toks, 2), score_one(&mut b, &toks, 2));
}

/// A non-finite weight is found while uploading from the map, and named with its file.
#[test]
fn mapped_upload_refuses_a_non_finite_weight() {
    let cfg = config(variants()[4]);
    let dir = tempfile::tempdir().unwrap();
    stagformer_ref::init::write_random_checkpoint(&cfg, 5, StorageDtype::F32, 1, dir.path())
        .unwrap();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let name = "model.layers.0.mlp.down_proj.weight";
    let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
    let mut data = st.tensor(name).unwrap().data().to_vec();
    data[4..8].copy_from_slice(&f32::INFINITY.to_le_bytes());
    let shape = st.tensor(name).unwrap().shape().to_vec();
    views.retain(|(n, _)| n != name);
    views.push((
        name.to_owned(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &data).unwrap(),
    ));
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(&path, out).unwrap();
    // Opening reads headers only, so it succeeds; the upload converts and refuses.
    let ckpt = stagformer_ref::Checkpoint::open(dir.path()).unwrap();
    let err = match Decoder::<f32>::from_checkpoint(
        &Device::emulated(),
        &ckpt,
        DecoderOptions::new(1, 4),
    ) {
        Ok(_) => panic!("uploaded a non-finite weight"),
        Err(e) => e,
    };
    assert!(
        matches!(
            &err,
            stagformer::DecoderError::Model(stagformer_ref::Error::Load(
                stagformer_ref::LoadError::NonFinite { name: n, .. }
            )) if n == name
        ),
        "{err}"
    );
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

/// Teacher-forced sampled steps on `dec` (graphs on) against the reference sampler on the
/// logits `twin` (the same model, graphs off, stepping through `step`) computes for the same
/// tokens: row r of step i, sequence `ids[r]` at position `lens[r] + i`, uses
/// `settings(i, r)`; its token must be `stagformer_ref::sample::sample`'s for index
/// `lens[r] + i + 1` (the chosen token's position) and its logprob within 1e-4 of the f64
/// log-softmax. Returns the sampled rows, step by step.
fn sample_against_reference(
    dec: &mut Decoder<f32>,
    twin: &mut Decoder<f32>,
    ids: &[SeqId],
    steps: usize,
    settings: impl Fn(usize, usize) -> SamplingParams,
) -> Vec<Vec<Sampled>> {
    let vocab = 41;
    let mut out = Vec::new();
    for i in 0..steps {
        let lens: Vec<usize> = ids.iter().map(|&id| dec.len(id).unwrap()).collect();
        let toks: Vec<u32> = (0..ids.len())
            .map(|r| ((i * 5 + r * 13 + 2) % vocab) as u32)
            .collect();
        let rows: Vec<SamplingParams> = (0..ids.len()).map(|r| settings(i, r)).collect();
        let picked = dec.step_sample(ids, &toks, &rows).unwrap();
        let logits = twin.step(ids, &toks).unwrap();
        for (r, p) in picked.iter().enumerate() {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let index = (lens[r] + 1) as u64;
            let want = stagformer_ref::sample::sample(row, &rows[r], index);
            assert_eq!(p.token, want, "step {i} row {r} {:?}", rows[r]);
            let lp = stagformer_ref::sample::logprob(row, p.token);
            assert!(
                p.logprob.is_finite() && (f64::from(p.logprob) - lp).abs() <= 1e-4,
                "step {i} row {r}: logprob {} against {lp}",
                p.logprob
            );
        }
        out.push(picked);
    }
    out
}

fn sampling(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        top_k,
        top_p,
        seed,
    }
}

/// Greedy, top-k, top-p and plain temperature rows in one step (the mix rotating from step to
/// step), each against the reference sampler, in the per-section and the grouped schedules;
/// the whole run replays one sampling graph.
#[test]
fn per_row_sampling_matches_the_reference_sampler_in_one_step() {
    let device = Device::emulated();
    let v = variants()[0];
    let model = Model::random(config(v), 61, StorageDtype::F32).unwrap();
    let kinds = [
        SamplingParams::GREEDY,
        sampling(0.8, 5, 1.0, 7),
        sampling(1.3, 0, 0.85, 99),
        sampling(1.0, 0, 1.0, 3),
    ];
    for mode in [ExecMode::Sequential, ExecMode::Grouped] {
        let opts = DecoderOptions {
            mode,
            recurrent: false,
            ..DecoderOptions::new(3, 40)
        };
        let mut dec = Decoder::<f32>::new(&device, &model, opts).unwrap();
        let mut twin = Decoder::<f32>::new(
            &device,
            &model,
            DecoderOptions {
                graphs: false,
                ..opts
            },
        )
        .unwrap();
        let mut ids = Vec::new();
        for (b, p) in [2usize, 5, 1].into_iter().enumerate() {
            let prompt = tokens(p, b + 3);
            ids.push(dec.prefill(&prompt).unwrap().0);
            twin.prefill(&prompt).unwrap();
        }
        let out = sample_against_reference(&mut dec, &mut twin, &ids, 12, |i, r| {
            kinds[(i + r) % kinds.len()]
        });
        // The sampled rows really sample: not every token is the greedy one.
        assert!(out.iter().flatten().any(|p| p.logprob < -1e-3), "{mode:?}");
        assert_eq!(dec.captured_graphs(), 1, "{mode:?}");
    }
}

/// Ten seeds at one row count: one captured sampling graph, the reference's tokens at every
/// seed; clear_graphs drops it and the next step captures it again.
#[test]
fn ten_sampling_seeds_at_one_row_count_capture_one_graph() {
    let device = Device::emulated();
    let v = variants()[0];
    let model = Model::random(config(v), 62, StorageDtype::F32).unwrap();
    let opts = DecoderOptions {
        recurrent: false,
        ..DecoderOptions::new(2, 40)
    };
    let mut dec = Decoder::<f32>::new(&device, &model, opts).unwrap();
    let mut twin = Decoder::<f32>::new(
        &device,
        &model,
        DecoderOptions {
            graphs: false,
            ..opts
        },
    )
    .unwrap();
    let ids: Vec<SeqId> = (0..2)
        .map(|b| {
            twin.prefill(&tokens(3, b)).unwrap();
            dec.prefill(&tokens(3, b)).unwrap().0
        })
        .collect();
    let out = sample_against_reference(&mut dec, &mut twin, &ids, 10, |i, r| {
        sampling(1.1, 0, 1.0, 1000 + i as u64 * 17 + r as u64)
    });
    assert_eq!(dec.captured_graphs(), 1);
    assert!(dec.graph_nodes(2, true).unwrap().is_some());
    dec.clear_graphs();
    assert_eq!(dec.captured_graphs(), 0);
    sample_against_reference(&mut dec, &mut twin, &ids, 1, |_, _| {
        sampling(0.7, 3, 0.9, 5)
    });
    assert_eq!(dec.captured_graphs(), 1);
    // Seeds matter: the ten steps did not all draw what seed 1000 alone would have.
    assert!(out.iter().flatten().any(|p| p.logprob < -1e-3));
}

/// A request's draws are keyed by (seed, position), not by its slot: alone in slot 0, or in
/// slot 1 beside a greedy request, it samples the same tokens (free-running, each fed back).
#[test]
fn a_sampled_request_gets_the_same_tokens_in_any_slot() {
    let device = Device::emulated();
    let v = variants()[0];
    let model = Model::random(config(v), 63, StorageDtype::F32).unwrap();
    let opts = DecoderOptions {
        recurrent: false,
        ..DecoderOptions::new(2, 40)
    };
    let request = sampling(1.2, 0, 0.95, 4242);
    let prompt = tokens(4, 9);
    let run = |beside: bool| -> Vec<Sampled> {
        let mut dec = Decoder::<f32>::new(&device, &model, opts).unwrap();
        let other = beside.then(|| dec.prefill(&tokens(2, 1)).unwrap().0);
        let (id, _) = dec.prefill(&prompt).unwrap();
        let mut next = (5u32, 6u32);
        let mut got = Vec::new();
        for _ in 0..10 {
            let picked = match other {
                Some(o) => {
                    let settings = [SamplingParams::GREEDY, request];
                    let p = dec
                        .step_sample(&[o, id], &[next.1, next.0], &settings)
                        .unwrap();
                    next.1 = p[0].token;
                    p[1]
                }
                None => dec.step_sample(&[id], &[next.0], &[request]).unwrap()[0],
            };
            next.0 = picked.token;
            got.push(picked);
        }
        got
    };
    let alone = run(false);
    let beside = run(true);
    let tokens_of = |v: &[Sampled]| v.iter().map(|p| p.token).collect::<Vec<_>>();
    assert_eq!(tokens_of(&alone), tokens_of(&beside));
    for (a, b) in alone.iter().zip(&beside) {
        assert!((a.logprob - b.logprob).abs() <= 1e-4, "{a:?} {b:?}");
    }
}
