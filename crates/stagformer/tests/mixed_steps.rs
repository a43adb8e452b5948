//! The engine step: batches mixing new prompts, later prompt chunks and decode rows of several
//! sequences, with per-row logits choices and per-row sampling (greedy, sampled, none), while
//! sequences arrive and leave. Every logits row equals the CPU reference's forward pass over the
//! sequence's tokens; every drawn token is the reference sampler's pick from the row's logits,
//! its logprob the reference's; for the variant matrix, dense and paged caches (pages of 1 and
//! 16 slots), in-order and shuffled emulator schedules. Refused batches name their row and
//! change nothing; submit/wait keeps one batch in flight.

mod common;

use common::{devices, rel_err, tokens, variants, Held, Variant, TOL, VOCAB};
use stagformer::{
    BatchRow, Decoder, DecoderError, DecoderOptions, PrefillLogits, RowOutput, SamplingParams,
};
use stagformer_kernels::Device;
use stagformer_ref::sample::{logprob, sample, top_logprobs};
use stagformer_ref::{Model, RequestError, StorageDtype};

fn options(v: Variant, page: usize) -> DecoderOptions {
    DecoderOptions {
        mode: v.mode,
        kv_page_size: page,
        prefill_rows: 4,
        ..DecoderOptions::new(4, 40)
    }
}

fn sampling(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        top_k: 12,
        top_p: 0.9,
        seed,
    }
}

/// What the scenario asks of one row: which sequence (by index into `held`; `None`: a new
/// one), how many of its next tokens, which logits, which draw.
struct Ask {
    seq: Option<usize>,
    tokens: usize,
    logits: PrefillLogits,
    sample: Option<SamplingParams>,
}

fn ask(
    seq: Option<usize>,
    tokens: usize,
    logits: PrefillLogits,
    sample: Option<SamplingParams>,
) -> Ask {
    Ask {
        seq,
        tokens,
        logits,
        sample,
    }
}

/// Each sequence's whole token stream (what it will be fed), by arrival order.
fn streams() -> Vec<Vec<u32>> {
    (0..5).map(|k| tokens(30, 3 * k + 1)).collect()
}

/// Runs one batch of `asks`, records tokens and logits in `held`, checks every draw against
/// the reference sampler over the row's own logits (drawing rows ask for their last row).
fn run<T: stagformer::Activation>(
    dec: &mut Decoder<T>,
    model: &Model,
    held: &mut Vec<Held>,
    streams: &[Vec<u32>],
    asks: &[Ask],
    what: &str,
) {
    let mut arrivals = held.len();
    let mut targets = Vec::new();
    let rows: Vec<BatchRow> = asks
        .iter()
        .map(|a| {
            let k = match a.seq {
                Some(k) => k,
                None => {
                    arrivals += 1;
                    arrivals - 1
                }
            };
            targets.push(k);
            let position = held.get(k).map_or(0, |h| h.toks.len());
            let toks = streams[k][position..position + a.tokens].to_vec();
            BatchRow {
                seq: held.get(k).map(|h| h.id),
                position,
                tokens: toks,
                logits: a.logits,
                sample: a.sample,
                // Every other sequence asks for its top logprobs too.
                top_logprobs: if k % 2 == 0 { 3 } else { 0 },
            }
        })
        .collect();
    let out: Vec<RowOutput> = dec.step_batch(&rows).unwrap();
    assert_eq!(out.len(), rows.len());
    for ((row, o), (&k, a)) in rows.iter().zip(&out).zip(targets.iter().zip(asks)) {
        if k == held.len() {
            assert!(row.seq.is_none());
            held.push(Held::new(o.seq));
        }
        assert_eq!(held[k].id, o.seq, "{what}");
        held[k].take(&row.tokens, &o.logits, row.logits);
        if row.top_logprobs == 0 {
            assert!(o.top_logprobs.is_empty(), "{what}");
        } else {
            // The rule over the row's own logits when it returned them; its values always.
            assert_eq!(o.top_logprobs.len(), row.top_logprobs, "{what}");
            if row.logits != PrefillLogits::None {
                let last = &o.logits[o.logits.len() - VOCAB..];
                let want: Vec<u32> = top_logprobs(last, 3).iter().map(|&(t, _)| t).collect();
                let got: Vec<u32> = o.top_logprobs.iter().map(|&(t, _)| t).collect();
                assert_eq!(got, want, "{what}: top tokens");
            }
            let end = row.position + row.tokens.len();
            let reference = model.forward(&streams[k][..end]).unwrap();
            for &(t, lp) in &o.top_logprobs {
                let e = (f64::from(lp) - logprob(reference.row(end - 1), t)).abs();
                assert!(e < 1e-4, "{what}: top logprob of {t} off by {e:.1e}");
            }
        }
        match (a.sample, o.sampled) {
            (None, None) => {}
            (Some(params), Some(picked)) => {
                let n = row.tokens.len();
                let last = &o.logits[o.logits.len() - VOCAB..];
                assert!(
                    a.logits != PrefillLogits::None,
                    "the scenario checks draws on logits"
                );
                let index = (row.position + n) as u64;
                assert_eq!(
                    picked.token,
                    sample(last, &params, index),
                    "{what}: row {k}"
                );
                let lp = logprob(last, picked.token);
                assert!(
                    (f64::from(picked.logprob) - lp).abs() < 1e-4,
                    "{what}: logprob"
                );
            }
            other => panic!("{what}: draw asked {:?}, got {:?}", other.0, other.1),
        }
    }
}

/// Six batches: two prompts (one drawing its first token); a decode row beside a later chunk
/// and a new prompt; three decode rows (greedy, sampled, logits only) beside a chunk; a removal
/// and an arrival; decode rows of three sequences.
fn scenario<T: stagformer::Activation>(dec: &mut Decoder<T>, model: &Model, what: &str) {
    use PrefillLogits::{All, Last, None as No};
    let full = dec.free_kv_pages();
    let streams = streams();
    let mut held = Vec::new();
    let greedy = Some(SamplingParams::GREEDY);
    let batches: Vec<Vec<Ask>> = vec![
        vec![
            ask(None, 5, All, None),
            ask(None, 3, Last, Some(sampling(7))),
        ],
        vec![
            ask(Some(0), 1, Last, None),
            ask(Some(1), 6, All, None),
            ask(None, 6, No, None),
        ],
        vec![
            ask(Some(1), 1, Last, greedy),
            ask(Some(0), 1, Last, Some(sampling(3))),
            ask(Some(2), 3, Last, greedy),
        ],
        vec![
            ask(Some(2), 1, Last, None),
            ask(Some(0), 2, All, Some(sampling(5))),
            ask(Some(1), 1, All, Some(sampling(9))),
        ],
    ];
    for (b, asks) in batches.iter().enumerate() {
        run(
            dec,
            model,
            &mut held,
            &streams,
            asks,
            &format!("{what} batch {b}"),
        );
    }
    // Sequence 0 leaves; a new one arrives with a chunk while the others decode.
    dec.remove(held[0].id).unwrap();
    held[0].toks.clear();
    held[0].logits.clear();
    let asks = vec![
        ask(Some(2), 1, Last, Some(sampling(11))),
        ask(None, 7, Last, greedy),
        ask(Some(1), 1, Last, None),
    ];
    run(
        dec,
        model,
        &mut held,
        &streams,
        &asks,
        &format!("{what} batch 4"),
    );
    for k in [1, 2, 3] {
        held[k].check(model, &format!("{what} sequence {k}"));
    }
    for _ in 0..3 {
        let asks: Vec<Ask> = [1, 2, 3]
            .into_iter()
            .map(|k| ask(Some(k), 1, Last, Some(sampling(k as u64))))
            .collect();
        run(
            dec,
            model,
            &mut held,
            &streams,
            &asks,
            &format!("{what} decode"),
        );
    }
    for k in [1, 2, 3] {
        held[k].check(model, &format!("{what} sequence {k} after decoding"));
        dec.remove(held[k].id).unwrap();
    }
    assert_eq!(dec.free_kv_pages(), full, "{what}: pages leaked");
}

#[test]
fn mixed_batches_match_the_reference() {
    for (n, v) in variants().into_iter().enumerate() {
        let model = Model::random(v.config(), 90 + n as u64, StorageDtype::F32).unwrap();
        for page in [0, 1, 16] {
            let schedules: &[Device] = &devices()[..if page == 16 { 2 } else { 1 }];
            for device in schedules {
                let mut dec = Decoder::<f32>::new(device, &model, options(v, page)).unwrap();
                scenario(
                    &mut dec,
                    &model,
                    &format!("{v:?} page {page} {}", device.name()),
                );
                // Decode-only batches of 3 rows replayed one graph (with draws).
                assert!(
                    dec.graph_nodes(3, true).unwrap().is_some(),
                    "{v:?}: no graph"
                );
            }
        }
    }
}

/// A logits-only decode batch is the plain step: the same logits as `step`, bit for bit.
#[test]
fn a_decode_only_batch_equals_a_step() {
    let device = Device::emulated();
    let v = variants()[3];
    let model = Model::random(v.config(), 4, StorageDtype::F32).unwrap();
    let src = tokens(12, 2);
    let mut a = Decoder::<f32>::new(&device, &model, options(v, 16)).unwrap();
    let mut b = Decoder::<f32>::new(&device, &model, options(v, 16)).unwrap();
    let (ia, _) = a.prefill(&src[..5]).unwrap();
    let out = b
        .step_batch(&[BatchRow::prompt(src[..5].to_vec())])
        .unwrap();
    let ib = out[0].seq;
    assert!(out[0].logits.is_empty() && out[0].sampled.is_none());
    for (t, &tok) in src[5..].iter().enumerate() {
        let want = a.step(&[ia], &[tok]).unwrap();
        let row = BatchRow::chunk(ib, 5 + t, vec![tok]).with_logits(PrefillLogits::Last);
        let got = b.step_batch(&[row]).unwrap();
        assert_eq!(got[0].logits, want, "step {t}");
    }
}

fn row_error(e: DecoderError) -> (usize, DecoderError) {
    match e {
        DecoderError::InRow { row, error } => (row, *error),
        other => panic!("expected a row's error, got {other:?}"),
    }
}

/// Bad batches are refused whole, naming the row, before anything runs: the decoder holds the
/// same sequences, lengths and pages afterwards, and goes on matching the reference.
#[test]
fn bad_batches_name_their_row_and_change_nothing() {
    let device = Device::emulated();
    let v = variants()[1];
    let model = Model::random(v.config(), 8, StorageDtype::F32).unwrap();
    let opts = DecoderOptions {
        max_batch: 3,
        kv_pages: Some(8),
        ..options(v, 4)
    };
    let mut dec = Decoder::<f32>::new(&device, &model, opts).unwrap();
    let src = tokens(40, 6);
    let (a, _) = dec.prefill(&src[..4]).unwrap();
    let free = dec.free_kv_pages();
    let good = BatchRow::decode(a, 4, src[4], SamplingParams::GREEDY);
    let bad_cases: Vec<(BatchRow, &str)> = vec![
        (
            BatchRow {
                position: 2,
                ..BatchRow::prompt(vec![1])
            },
            "Position",
        ),
        (BatchRow::prompt(vec![]), "EmptyInput"),
        (BatchRow::prompt(vec![VOCAB as u32]), "TokenOutOfRange"),
        (
            BatchRow::prompt(tokens(41, 1)).with_logits(PrefillLogits::All),
            "TooLong",
        ),
        (
            BatchRow::prompt(vec![1]).with_sample(Some(SamplingParams {
                top_p: 0.0,
                ..SamplingParams::GREEDY
            })),
            "BadSampling",
        ),
        (good.clone(), "DuplicateSequence"),
    ];
    for (bad, name) in bad_cases {
        let e = dec.step_batch(&[good.clone(), bad]).unwrap_err();
        let (row, error) = row_error(e);
        assert_eq!(row, 1, "{name}");
        assert!(format!("{error:?}").contains(name), "{name}: {error:?}");
    }
    // More new sequences than free slots; more pages than the self pool has.
    let three = vec![BatchRow::prompt(vec![1]); 3];
    assert!(matches!(
        dec.step_batch(&three),
        Err(DecoderError::Request(RequestError::BatchFull { .. }))
    ));
    let long = BatchRow::prompt(src[..12].to_vec());
    match dec.step_batch(&[good.clone(), long]) {
        Err(DecoderError::OutOfKvPages { needed, free: f }) => {
            // The self pool: A holds a page in each of its 2 rows; A's step takes one more
            // each, the new prompt 3 each.
            assert_eq!((needed, f), (2 + 6, 8 - 2), "pages counted");
        }
        other => panic!("expected OutOfKvPages, got {other:?}"),
    }
    assert_eq!(dec.free_kv_pages(), free);
    assert_eq!(dec.len(a).unwrap(), 4);
    // A stale id.
    let (b, _) = dec.prefill(&src[..2]).unwrap();
    dec.remove(b).unwrap();
    let (row, error) = row_error(
        dec.step_batch(&[
            good.clone(),
            BatchRow::decode(b, 2, 1, SamplingParams::GREEDY),
        ])
        .unwrap_err(),
    );
    assert_eq!(row, 1);
    assert!(matches!(
        error,
        DecoderError::Request(RequestError::StaleSequence { .. })
    ));
    // Unchanged and right.
    let out = dec
        .step_batch(&[good.with_logits(PrefillLogits::Last)])
        .unwrap();
    let want = model.forward(&src[..5]).unwrap().data;
    assert!(rel_err(&out[0].logits, &want[4 * VOCAB..]) <= TOL);
}

/// Between submit and wait the decoder refuses work (one batch in flight); a ticket is only
/// good for its own decoder's pending batch; wait returns what step_batch would have.
#[test]
fn submit_then_wait_keeps_one_batch_in_flight() {
    let device = Device::emulated();
    let v = variants()[2];
    let model = Model::random(v.config(), 9, StorageDtype::F32).unwrap();
    let mut a = Decoder::<f32>::new(&device, &model, options(v, 1)).unwrap();
    let mut b = Decoder::<f32>::new(&device, &model, options(v, 1)).unwrap();
    let src = tokens(8, 1);
    let first = BatchRow::prompt(src[..3].to_vec()).with_logits(PrefillLogits::All);
    let ta = a.submit(std::slice::from_ref(&first)).unwrap();
    assert!(matches!(
        a.prefill(&src[..2]),
        Err(DecoderError::Pending(_))
    ));
    assert!(matches!(
        a.submit(std::slice::from_ref(&first)),
        Err(DecoderError::Pending(_))
    ));
    let tb = b.submit(std::slice::from_ref(&first)).unwrap();
    assert!(matches!(a.wait(tb), Err(DecoderError::Pending(_))));
    let out = a.wait(ta).unwrap();
    let want = model.forward(&src[..3]).unwrap().data;
    assert!(rel_err(&out[0].logits, &want) <= TOL);
    // `a` is free again; a decode row submitted, the host free until wait.
    let id = out[0].seq;
    let row = BatchRow::decode(id, 3, src[3], sampling(2)).with_logits(PrefillLogits::Last);
    let t = a.submit(&[row]).unwrap();
    let got = a.wait(t).unwrap();
    let want = model.forward(&src[..4]).unwrap().data;
    assert!(rel_err(&got[0].logits, &want[3 * VOCAB..]) <= TOL);
    let picked = got[0].sampled.unwrap();
    assert_eq!(picked.token, sample(&got[0].logits, &sampling(2), 4));
    assert_eq!(a.len(id).unwrap(), 4);
}

/// Recurrent mode: batches of new prompts and decode rows give what prefill and step give, bit
/// for bit; a continued chunk is refused (naming its row) and changes nothing.
#[test]
fn recurrent_batches_equal_prefill_and_steps() {
    let device = Device::emulated();
    let mut v = variants()[1];
    v.shared = true;
    let model = Model::random(v.config(), 12, StorageDtype::F32).unwrap();
    let opts = DecoderOptions {
        recurrent: true,
        ..options(v, 16)
    };
    let mut a = Decoder::<f32>::new(&device, &model, opts).unwrap();
    let mut b = Decoder::<f32>::new(&device, &model, opts).unwrap();
    let (p, q) = (tokens(12, 3), tokens(12, 4));
    let (ia, la) = a.prefill(&p[..5]).unwrap();
    let (ja, lb) = a.prefill(&q[..2]).unwrap();
    let out = b
        .step_batch(&[
            BatchRow::prompt(p[..5].to_vec()).with_logits(PrefillLogits::All),
            BatchRow::prompt(q[..2].to_vec()).with_logits(PrefillLogits::All),
        ])
        .unwrap();
    assert_eq!((&out[0].logits, &out[1].logits), (&la, &lb));
    let (ib, jb) = (out[0].seq, out[1].seq);
    for t in 0..4 {
        let want = a.step(&[ia, ja], &[p[5 + t], q[2 + t]]).unwrap();
        let rows = [
            BatchRow::chunk(ib, 5 + t, vec![p[5 + t]]).with_logits(PrefillLogits::Last),
            BatchRow::chunk(jb, 2 + t, vec![q[2 + t]]).with_logits(PrefillLogits::Last),
        ];
        let got = b.step_batch(&rows).unwrap();
        assert_eq!(
            [&got[0].logits[..], &got[1].logits[..]].concat(),
            want,
            "step {t}"
        );
    }
    let chunk = BatchRow::chunk(ib, 9, p[9..11].to_vec());
    let (row, error) = row_error(b.step_batch(&[chunk]).unwrap_err());
    assert_eq!(row, 0);
    assert!(matches!(error, DecoderError::Unsupported(_)));
    assert_eq!(b.len(ib).unwrap(), 9);
}
