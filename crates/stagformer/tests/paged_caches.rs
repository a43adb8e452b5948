//! Paged KV caches in the decoder: logits with pages of 1 and 16 slots equal the dense
//! decoder's and the CPU reference's while sequences come and go (so their pages interleave in
//! the pools); a pool too small refuses requests with a typed error and stays usable; a fork
//! shares its source's pages and each continuation sees only its own tokens; every page comes
//! back after the removes.

mod common;

use common::{devices, rel_err, tokens, Variant, TOL, VOCAB};
use stagformer::{Decoder, DecoderError, DecoderOptions, ExecMode, SeqId};
use stagformer_kernels::Device;
use stagformer_ref::{Model, StorageDtype};

/// p = 1, 2, 3, shared, cross windows None / 1 / 3, a sliding window, the output mix, and
/// every execution mode (Batched where the weights are shared).
fn variants() -> Vec<Variant> {
    let v = Variant::new;
    vec![
        v(1, false, None, None, false, ExecMode::Staggered),
        v(2, false, None, None, true, ExecMode::Sequential),
        v(2, true, Some(1), None, false, ExecMode::Batched),
        v(3, false, Some(3), Some(5), true, ExecMode::Grouped),
        v(3, true, None, Some(4), false, ExecMode::Staggered),
        v(2, true, None, None, true, ExecMode::Grouped),
    ]
}

fn nmse(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    assert!(got.iter().all(|v| v.is_finite()), "non-finite logits");
    let err: f64 = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum();
    err / want.iter().map(|&b| f64::from(b).powi(2)).sum::<f64>()
}

fn options(mode: ExecMode, page: usize, pages: Option<usize>) -> DecoderOptions {
    DecoderOptions {
        mode,
        graphs: true,
        kv_page_size: page,
        kv_pages: pages,
        ..DecoderOptions::new(3, 40)
    }
}

/// One sequence of the scenario: its tokens and the logits the decoder returned for them.
struct Run {
    id: SeqId,
    toks: Vec<u32>,
    fed: usize,
    logits: Vec<f32>,
}

/// Steps every sequence in `live` (indices into `runs`) `n` times with its next tokens.
fn step_all<T: stagformer::Activation>(
    dec: &mut Decoder<T>,
    runs: &mut [Run],
    live: &[usize],
    n: usize,
) {
    for _ in 0..n {
        let ids: Vec<SeqId> = live.iter().map(|&r| runs[r].id).collect();
        let toks: Vec<u32> = live.iter().map(|&r| runs[r].toks[runs[r].fed]).collect();
        let logits = dec.step(&ids, &toks).unwrap();
        for (row, &r) in live.iter().enumerate() {
            runs[r]
                .logits
                .extend(&logits[row * VOCAB..(row + 1) * VOCAB]);
            runs[r].fed += 1;
        }
    }
}

fn prefill<T: stagformer::Activation>(dec: &mut Decoder<T>, toks: Vec<u32>, len: usize) -> Run {
    let (id, logits) = dec.prefill(&toks[..len]).unwrap();
    Run {
        id,
        toks,
        fed: len,
        logits,
    }
}

/// Prefills and removes interleaved with steps of ragged batches: A and B, then A leaves and
/// C takes its slot (its pages come from wherever the pool has them), then D joins. Returns
/// every sequence's run and checks that all pages are free again after the removes.
fn scenario<T: stagformer::Activation>(dec: &mut Decoder<T>, seed: usize) -> Vec<Run> {
    let full = dec.free_kv_pages();
    let mut runs = vec![
        prefill(dec, tokens(5 + 5, seed), 5),
        prefill(dec, tokens(3 + 25, seed + 1), 3),
    ];
    step_all(dec, &mut runs, &[0, 1], 5);
    dec.remove(runs[0].id).unwrap();
    runs.push(prefill(dec, tokens(19 + 14, seed + 2), 19));
    step_all(dec, &mut runs, &[1, 2], 8);
    runs.push(prefill(dec, tokens(2 + 6, seed + 3), 2));
    step_all(dec, &mut runs, &[2, 1, 3], 6);
    step_all(dec, &mut runs, &[1], 6);
    for r in &runs[1..] {
        dec.remove(r.id).unwrap();
    }
    assert_eq!(dec.free_kv_pages(), full, "pages leaked");
    runs
}

fn fed(run: &Run) -> &[u32] {
    &run.toks[..run.fed]
}

#[test]
fn paged_logits_equal_dense_and_reference() {
    let device = Device::emulated();
    for (n, v) in variants().into_iter().enumerate() {
        let model = Model::random(v.config(), 60 + n as u64, StorageDtype::F32).unwrap();
        let mut dense = Decoder::<f32>::new(&device, &model, options(v.mode, 0, None)).unwrap();
        assert_eq!(dense.free_kv_pages(), (None, None));
        let want = scenario(&mut dense, n);
        for run in &want {
            let reference = model.forward(fed(run)).unwrap().data;
            let e = rel_err(&run.logits, &reference);
            assert!(e <= TOL, "{v:?} dense: relative error {e:.2e}");
        }
        for (page, device) in [1, 16].into_iter().flat_map(|p| devices().map(|d| (p, d))) {
            let opts = options(v.mode, page, None);
            let mut dec = Decoder::<f32>::new(&device, &model, opts).unwrap();
            let (self_free, cross_free) = dec.free_kv_pages();
            assert!(self_free.is_some());
            let cross_paged = v.sections > 1 && v.window.is_none();
            assert_eq!(cross_free.is_some(), cross_paged, "{v:?}");
            let got = scenario(&mut dec, n);
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.toks, w.toks);
                let e = rel_err(&g.logits, &w.logits);
                let on = device.name();
                assert!(e <= TOL, "{v:?} page {page} {on} vs dense: {e:.2e}");
                let reference = model.forward(fed(g)).unwrap().data;
                let e = rel_err(&g.logits, &reference);
                assert!(e <= TOL, "{v:?} page {page} {on} vs reference: {e:.2e}");
            }
            assert!(dec.captured_graphs() > 0, "{v:?}: graphs on");
        }
    }
}

/// bf16 activations: paged and dense runs both stay within the bf16 bound of the f32
/// reference (the same bound as the dense decoder's parity test).
#[test]
fn paged_bf16_is_within_nmse_of_reference() {
    let device = Device::emulated();
    let v = variants()[3];
    let model = Model::random(v.config(), 7, StorageDtype::Bf16).unwrap();
    for page in [0, 1, 16] {
        let opts = options(v.mode, page, None);
        let mut dec = Decoder::<half::bf16>::new(&device, &model, opts).unwrap();
        for run in scenario(&mut dec, 2) {
            let reference = model.forward(fed(&run)).unwrap().data;
            let e = nmse(&run.logits, &reference);
            assert!(e <= 5e-4, "page {page}: nmse {e:.2e}");
            assert!(e > 0.0, "bf16 run identical to f32: is it really bf16?");
        }
    }
}

fn out_of_pages(e: DecoderError) -> (usize, usize) {
    match e {
        DecoderError::OutOfKvPages { needed, free } => (needed, free),
        other => panic!("expected OutOfKvPages, got {other:?}"),
    }
}

/// A pool of 6 pages of 4 slots (p = 2, unbounded cross window: two self rows and one cross
/// row per sequence). Prefills and steps that need more pages than are free are refused with
/// the counts, nothing changes, and the decoder goes on matching the reference.
#[test]
fn a_small_pool_refuses_requests_and_stays_usable() {
    let device = Device::emulated();
    let v = variants()[1];
    let model = Model::random(v.config(), 11, StorageDtype::F32).unwrap();
    let mut dec = Decoder::<f32>::new(&device, &model, options(v.mode, 4, Some(6))).unwrap();
    assert_eq!(dec.free_kv_pages(), (Some(6), Some(6)));
    // 13 positions: 4 pages in each of 2 self rows.
    let e = out_of_pages(dec.prefill(&tokens(13, 1)).unwrap_err());
    assert_eq!(e, (8, 6));
    assert_eq!(dec.free_kv_pages(), (Some(6), Some(6)), "nothing taken");
    let mut run = prefill(&mut dec, tokens(8 + 4, 2), 8);
    assert_eq!(dec.free_kv_pages(), (Some(2), Some(4)));
    // Position 8 opens a third page in each row: the self pool runs dry.
    step_all(&mut dec, std::slice::from_mut(&mut run), &[0], 4);
    assert_eq!(dec.free_kv_pages(), (Some(0), Some(3)));
    let e = out_of_pages(dec.prefill(&tokens(3, 3)).unwrap_err());
    assert_eq!(e, (2, 0));
    // Position 12 needs a fourth page per row.
    run.toks.push(9);
    let e = out_of_pages(dec.step(&[run.id], &[9]).unwrap_err());
    assert_eq!(e, (2, 0));
    assert_eq!(
        dec.len(run.id).unwrap(),
        12,
        "the refused step was not taken"
    );
    let reference = model.forward(fed(&run)).unwrap().data;
    assert!(rel_err(&run.logits, &reference) <= TOL);
    // Freed pages serve the next sequence.
    dec.remove(run.id).unwrap();
    assert_eq!(dec.free_kv_pages(), (Some(6), Some(6)));
    let mut other = prefill(&mut dec, tokens(3 + 3, 4), 3);
    step_all(&mut dec, std::slice::from_mut(&mut other), &[0], 3);
    let reference = model.forward(fed(&other)).unwrap().data;
    assert!(rel_err(&other.logits, &reference) <= TOL);
}

/// Fork: prefill A, fork B, step A alone once, then A and B together with different tokens;
/// each matches the reference over its own tokens (A unchanged by B's writes into the pages
/// they shared). Paged (pages of 1 and 4 slots, copy-on-write) and dense (rows copied).
#[test]
fn a_fork_continues_independently() {
    let [device, shuffled] = devices();
    for (n, v) in [variants()[1], variants()[3], variants()[4]]
        .into_iter()
        .enumerate()
    {
        let model = Model::random(v.config(), 30 + n as u64, StorageDtype::F32).unwrap();
        for page in [0, 1, 4] {
            let device = if page == 4 { &shuffled } else { &device };
            let mut dec = Decoder::<f32>::new(device, &model, options(v.mode, page, None)).unwrap();
            let full = dec.free_kv_pages();
            let prompt = tokens(6, n);
            let mut a = prefill(&mut dec, tokens(6 + 10, n), 6);
            assert_eq!(a.toks[..6], prompt[..]);
            let b_id = dec.fork(a.id).unwrap();
            assert_ne!(b_id, a.id);
            assert_eq!(dec.len(b_id).unwrap(), 6);
            let mut b_toks = prompt.clone();
            b_toks.extend(tokens(10, n + 50));
            let mut runs = vec![
                a,
                Run {
                    id: b_id,
                    toks: b_toks,
                    fed: 6,
                    // The fork's prompt logits are A's.
                    logits: Vec::new(),
                },
            ];
            runs[1].logits = runs[0].logits.clone();
            step_all(&mut dec, &mut runs, &[0], 1);
            step_all(&mut dec, &mut runs, &[1, 0], 8);
            // B fed positions 6..14 while A fed 6..15.
            for (r, run) in runs.iter().enumerate() {
                let reference = model.forward(fed(run)).unwrap().data;
                let e = rel_err(&run.logits, &reference);
                assert!(e <= TOL, "{v:?} page {page} sequence {r}: {e:.2e}");
            }
            a = runs.remove(0);
            dec.remove(a.id).unwrap();
            dec.remove(runs[0].id).unwrap();
            assert_eq!(dec.free_kv_pages(), full, "{v:?} page {page}: pages leaked");
        }
    }
}

#[test]
fn fork_refuses_unknown_ids_and_full_batches() {
    let device = Device::emulated();
    let v = variants()[1];
    let model = Model::random(v.config(), 5, StorageDtype::F32).unwrap();
    let mut dec = Decoder::<f32>::new(&device, &model, options(v.mode, 2, None)).unwrap();
    let (a, _) = dec.prefill(&tokens(3, 0)).unwrap();
    dec.fork(a).unwrap();
    dec.remove(a).unwrap();
    assert!(
        matches!(dec.fork(a), Err(DecoderError::Request(_))),
        "stale id"
    );
    let (c, _) = dec.prefill(&tokens(3, 1)).unwrap();
    dec.fork(c).unwrap();
    assert!(
        matches!(dec.fork(c), Err(DecoderError::Request(_))),
        "full batch"
    );
}

/// Recurrent steps (section 1 alone after the prompt) and prompts prefilled in chunks of 4
/// rows read and write the same paged rows as the dense decoder does.
#[test]
fn paged_recurrent_and_chunked_prefill_match_reference() {
    let device = Device::emulated();
    let v = Variant::new(2, true, None, None, false, ExecMode::Sequential);
    let model = Model::random(v.config(), 21, StorageDtype::F32).unwrap();
    let toks = tokens(11 + 9, 3);
    let want = stagformer_ref::score(
        &model,
        &toks,
        stagformer_ref::ScoreMode::Recurrent { prompt_len: 11 },
    )
    .unwrap()
    .data;
    for page in [0, 1, 16] {
        let opts = DecoderOptions {
            recurrent: true,
            prefill_rows: 4,
            ..options(v.mode, page, None)
        };
        let mut dec = Decoder::<f32>::new(&device, &model, opts).unwrap();
        let full = dec.free_kv_pages();
        let mut run = prefill(&mut dec, toks.clone(), 11);
        step_all(&mut dec, std::slice::from_mut(&mut run), &[0], 9);
        let e = rel_err(&run.logits, &want);
        assert!(e <= TOL, "page {page}: relative error {e:.2e}");
        dec.remove(run.id).unwrap();
        assert_eq!(dec.free_kv_pages(), full);
    }
}
