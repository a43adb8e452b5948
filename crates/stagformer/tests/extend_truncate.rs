//! Sequences fed in pieces: `extend` (chunks appended to a live sequence, after a prefill, after
//! decode steps, onto an empty sequence from `add`, onto a fork sharing pages), and `truncate`
//! (cut back, then continued with other tokens). Every logit equals the CPU reference's forward
//! pass over the tokens the sequence holds, for the variant matrix, dense and paged (pages of 1
//! and 16 slots), on in-order and shuffled emulator schedules.

mod common;

use common::{devices, rel_err, tokens, variants, Held, Variant, TOL, VOCAB};
use stagformer::{Decoder, DecoderError, DecoderOptions, PrefillLogits};
use stagformer_kernels::Device;
use stagformer_ref::{Model, StorageDtype};

fn options(v: Variant, page: usize) -> DecoderOptions {
    DecoderOptions {
        mode: v.mode,
        kv_page_size: page,
        // Small prefill chunks: an extension spans several.
        prefill_rows: 4,
        ..DecoderOptions::new(3, 40)
    }
}

/// A: prefill, extend (several chunks), steps, extend (last row only), truncate, extend with
/// other tokens, step; B: add, extend, steps beside A; C: a fork of A extended by other tokens
/// than A's next ones. Every page is free again after the removes.
fn scenario<T: stagformer::Activation>(
    dec: &mut Decoder<T>,
    model: &Model,
    seed: usize,
    what: &str,
) {
    let full = dec.free_kv_pages();
    let src = tokens(40, seed);
    let (id, logits) = dec.prefill(&src[..4]).unwrap();
    let mut a = Held::new(id);
    a.take(&src[..4], &logits, PrefillLogits::All);
    a.extend(dec, &src[4..13], PrefillLogits::All);
    for &t in &src[13..16] {
        a.step(dec, t);
    }
    a.extend(dec, &src[16..21], PrefillLogits::Last);
    a.extend(dec, &src[21..23], PrefillLogits::None);
    a.step(dec, src[23]);
    a.check(model, &format!("{what} A"));

    let mut b = Held::new(dec.add().unwrap());
    assert_eq!(dec.len(b.id).unwrap(), 0);
    b.extend(dec, &tokens(7, seed + 1), PrefillLogits::All);
    for t in 0..3 {
        let toks = [src[30 + t], src[t]];
        let logits = dec.step(&[a.id, b.id], &toks).unwrap();
        a.take(&toks[..1], &logits[..VOCAB], PrefillLogits::All);
        b.take(&toks[1..], &logits[VOCAB..], PrefillLogits::All);
    }
    b.check(model, &format!("{what} B"));

    // Truncate A as far as its rings allow (at most 5 back), then continue it otherwise.
    let len = dec.len(a.id).unwrap();
    let min = dec.truncate_min(a.id).unwrap();
    let to = min.max(len - 5);
    match dec.truncate(a.id, len + 1) {
        Err(DecoderError::CannotTruncate { min: m, .. }) => assert_eq!(m, min),
        other => panic!("{what}: truncating past the end: {other:?}"),
    }
    if min > 0 {
        assert!(matches!(
            dec.truncate(a.id, min - 1),
            Err(DecoderError::CannotTruncate { .. })
        ));
    }
    a.truncate(dec, to);
    let other = tokens(6, seed + 5);
    a.extend(dec, &other[..4], PrefillLogits::All);
    a.step(dec, other[4]);
    a.check(model, &format!("{what} A truncated to {to} of {len}"));

    // A fork of A takes other tokens than A: each sees only its own.
    let mut c = Held {
        id: dec.fork(a.id).unwrap(),
        toks: a.toks.clone(),
        logits: vec![None; a.toks.len()],
    };
    c.extend(dec, &tokens(3, seed + 9), PrefillLogits::All);
    a.step(dec, other[5]);
    c.step(dec, src[0]);
    a.check(model, &format!("{what} A after the fork"));
    c.check(model, &format!("{what} C (fork of A)"));

    for id in [a.id, b.id, c.id] {
        dec.remove(id).unwrap();
    }
    assert_eq!(dec.free_kv_pages(), full, "{what}: pages leaked");
}

#[test]
fn extend_and_truncate_match_the_reference() {
    for (n, v) in variants().into_iter().enumerate() {
        let model = Model::random(v.config(), 80 + n as u64, StorageDtype::F32).unwrap();
        for page in [0, 1, 16] {
            let schedules: &[Device] = &devices()[..if page == 1 { 2 } else { 1 }];
            for device in schedules {
                let mut dec = Decoder::<f32>::new(device, &model, options(v, page)).unwrap();
                let what = format!("{v:?} page {page} {}", device.name());
                scenario(&mut dec, &model, n, &what);
            }
        }
    }
}

/// Refusals leave the decoder as it was: no tokens, a token outside the vocabulary, past the
/// capacity, a stale id, a pool without the pages; recurrent mode refuses both calls.
#[test]
fn bad_extensions_are_refused_before_anything_runs() {
    let device = Device::emulated();
    let v = variants()[1];
    let model = Model::random(v.config(), 5, StorageDtype::F32).unwrap();
    let opts = DecoderOptions {
        kv_pages: Some(6),
        kv_page_size: 4,
        ..options(v, 4)
    };
    let mut dec = Decoder::<f32>::new(&device, &model, opts).unwrap();
    let src = tokens(40, 3);
    let (id, _) = dec.prefill(&src[..3]).unwrap();
    let free = dec.free_kv_pages();
    let err = |r: Result<Vec<f32>, DecoderError>| format!("{:?}", r.unwrap_err());
    assert!(err(dec.extend(id, &[], PrefillLogits::All)).contains("EmptyInput"));
    assert!(err(dec.extend(id, &[VOCAB as u32], PrefillLogits::All)).contains("TokenOutOfRange"));
    assert!(err(dec.extend(id, &src[..38], PrefillLogits::All)).contains("TooLong"));
    // 3 + 13 tokens need 4 pages a row: 12 for the two self rows and the cross row; 6 exist.
    assert!(err(dec.extend(id, &src[3..16], PrefillLogits::All)).contains("OutOfKvPages"));
    assert_eq!(dec.free_kv_pages(), free);
    assert_eq!(dec.len(id).unwrap(), 3);
    let stale = id;
    dec.remove(id).unwrap();
    assert!(err(dec.extend(stale, &src[..2], PrefillLogits::All)).contains("Stale"));
    // Still usable, and right.
    let (id, _) = dec.prefill(&src[..3]).unwrap();
    let logits = dec.extend(id, &src[3..5], PrefillLogits::All).unwrap();
    let want = model.forward(&src[..5]).unwrap().data;
    assert!(rel_err(&logits, &want[3 * VOCAB..]) <= TOL);

    let mut shared = v;
    shared.shared = true;
    let model = Model::random(shared.config(), 6, StorageDtype::F32).unwrap();
    let opts = DecoderOptions {
        recurrent: true,
        ..DecoderOptions::new(1, 40)
    };
    let mut dec = Decoder::<f32>::new(&device, &model, opts).unwrap();
    let (id, _) = dec.prefill(&src[..3]).unwrap();
    assert!(matches!(
        dec.extend(id, &src[3..5], PrefillLogits::All),
        Err(DecoderError::Unsupported(_))
    ));
    assert!(matches!(
        dec.truncate(id, 1),
        Err(DecoderError::Unsupported(_))
    ));
    assert_eq!(dec.len(id).unwrap(), 3);
}
