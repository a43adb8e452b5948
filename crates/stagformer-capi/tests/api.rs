//! The C functions called from Rust as a C caller would: bad arguments (null pointers, short
//! buffers, unknown enum values, stale sequence ids) are statuses with messages naming the
//! argument, and the decoder's step agrees with `stag_score`.

use std::ffi::{CStr, CString};
use std::ptr::{null, null_mut};

use stagformer_capi::*;
use stagformer_ref::{init, StorageDtype};

fn last_error() -> String {
    // SAFETY: stag_last_error returns a NUL-terminated string owned by this thread.
    unsafe { CStr::from_ptr(stag_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Asserts `status` is `want` and the thread's message contains `needle`.
#[track_caller]
fn fails(status: StagStatus, want: StagStatus, needle: &str) {
    assert_eq!(status, want, "message: {}", last_error());
    let message = last_error();
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
}

/// A random tiny f32 checkpoint and its path as a C string.
fn checkpoint() -> (tempfile::TempDir, CString) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = init::preset("tiny").unwrap();
    init::write_random_checkpoint(&cfg, 3, StorageDtype::F32, 1, dir.path()).unwrap();
    let path = CString::new(dir.path().to_str().unwrap()).unwrap();
    (dir, path)
}

fn load(path: &CStr, device: StagDevice) -> *mut StagModel {
    let mut model = null_mut();
    // SAFETY: a valid C string and a valid out-pointer.
    let status = unsafe { stag_model_load(path.as_ptr(), device, 0, STAG_DTYPE_F32, &mut model) };
    assert_eq!(status, StagStatus::Ok, "{}", last_error());
    model
}

fn vocab(model: *const StagModel) -> usize {
    let mut v = 0;
    // SAFETY: a live model and a valid out-pointer.
    assert_eq!(
        unsafe { stag_model_vocab_size(model, &mut v) },
        StagStatus::Ok
    );
    v
}

fn new_decoder(model: *const StagModel) -> *mut StagDecoder {
    let mut decoder = null_mut();
    // SAFETY: a live model and a valid out-pointer.
    let status = unsafe { stag_decoder_new(model, 2, 32, STAG_EXEC_SEQUENTIAL, 0, &mut decoder) };
    assert_eq!(status, StagStatus::Ok, "{}", last_error());
    decoder
}

fn add(decoder: *mut StagDecoder) -> StagSeqId {
    let mut seq = 0;
    // SAFETY: a live decoder and a valid out-pointer.
    assert_eq!(
        unsafe { stag_decoder_add(decoder, &mut seq) },
        StagStatus::Ok
    );
    seq
}

fn row(seq: StagSeqId, tokens: &[u32], flags: u32) -> StagRow {
    StagRow {
        seq,
        tokens: tokens.as_ptr(),
        n_tokens: tokens.len(),
        flags,
        sampling: StagSampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        },
    }
}

#[test]
fn loading_refuses_bad_arguments() {
    let (_dir, path) = checkpoint();
    let mut model = null_mut();
    // SAFETY (every call): arguments are null or valid.
    unsafe {
        fails(
            stag_model_load(null(), STAG_DEVICE_CPU, 0, STAG_DTYPE_AUTO, &mut model),
            StagStatus::InvalidArgument,
            "path: is null",
        );
        fails(
            stag_model_load(
                path.as_ptr(),
                STAG_DEVICE_CPU,
                0,
                STAG_DTYPE_AUTO,
                null_mut(),
            ),
            StagStatus::InvalidArgument,
            "out_model",
        );
        fails(
            stag_model_load(path.as_ptr(), 7, 0, STAG_DTYPE_AUTO, &mut model),
            StagStatus::InvalidArgument,
            "device",
        );
        fails(
            stag_model_load(path.as_ptr(), STAG_DEVICE_EMU, 0, 5, &mut model),
            StagStatus::InvalidArgument,
            "dtype",
        );
        let missing = CString::new("/nonexistent/stagformer-model").unwrap();
        assert_eq!(
            stag_model_load(
                missing.as_ptr(),
                STAG_DEVICE_CPU,
                0,
                STAG_DTYPE_AUTO,
                &mut model
            ),
            StagStatus::Model
        );
        assert!(!last_error().is_empty());
        // Without the kernel images a cuda device cannot be opened, GPU or not.
        if !stagformer_kernels::CUDA_KERNELS {
            fails(
                stag_model_load(
                    path.as_ptr(),
                    STAG_DEVICE_CUDA,
                    0,
                    STAG_DTYPE_AUTO,
                    &mut model,
                ),
                StagStatus::Device,
                "device cuda, gpu 0",
            );
        }
    }
    assert!(model.is_null(), "a failed load wrote its out-pointer");
    if !stagformer_kernels::CUDA_KERNELS {
        // `auto` without a GPU is the cpu reference, which scores only.
        let auto = load(&path, STAG_DEVICE_AUTO);
        let mut decoder = null_mut();
        // SAFETY: a live model and a valid out-pointer; the model is freed once.
        unsafe {
            fails(
                stag_decoder_new(auto, 1, 8, STAG_EXEC_STAGGERED, 0, &mut decoder),
                StagStatus::Unsupported,
                "cpu reference",
            );
            stag_model_free(auto);
        }
    }
    // SAFETY: null is allowed.
    unsafe {
        stag_model_free(null_mut());
        stag_decoder_free(null_mut());
    }
}

#[test]
fn scoring_checks_pointers_lengths_and_tokens() {
    let (_dir, path) = checkpoint();
    let model = load(&path, STAG_DEVICE_CPU);
    let v = vocab(model);
    let tokens = [1u32, 2, 3];
    let mut logits = vec![0f32; 3 * v];
    // SAFETY (every call): the buffers are as long as the lengths passed, or null.
    unsafe {
        fails(
            stag_score(
                null(),
                tokens.as_ptr(),
                3,
                logits.as_mut_ptr(),
                logits.len(),
            ),
            StagStatus::InvalidArgument,
            "model: is null",
        );
        fails(
            stag_score(model, null(), 3, logits.as_mut_ptr(), logits.len()),
            StagStatus::InvalidArgument,
            "tokens",
        );
        fails(
            stag_score(model, tokens.as_ptr(), 3, null_mut(), 0),
            StagStatus::InvalidArgument,
            "logits",
        );
        fails(
            stag_score(model, tokens.as_ptr(), 3, logits.as_mut_ptr(), 3 * v - 1),
            StagStatus::InvalidArgument,
            "logits: holds",
        );
        fails(
            stag_score(model, tokens.as_ptr(), 0, logits.as_mut_ptr(), logits.len()),
            StagStatus::InvalidArgument,
            "n_tokens",
        );
        assert!(
            logits.iter().all(|&x| x == 0.0),
            "a failed call wrote logits"
        );
        let outside = [1u32, v as u32];
        fails(
            stag_score(
                model,
                outside.as_ptr(),
                2,
                logits.as_mut_ptr(),
                logits.len(),
            ),
            StagStatus::Request,
            "",
        );
        assert_eq!(
            stag_score(model, tokens.as_ptr(), 3, logits.as_mut_ptr(), logits.len()),
            StagStatus::Ok
        );
        assert!(logits.iter().all(|x| x.is_finite()) && logits.iter().any(|&x| x != 0.0));
        let mut vocab_out = 0;
        fails(
            stag_model_vocab_size(null(), &mut vocab_out),
            StagStatus::InvalidArgument,
            "model",
        );
        fails(
            stag_model_vocab_size(model, null_mut()),
            StagStatus::InvalidArgument,
            "out_vocab",
        );
        // The cpu reference scores only.
        let mut decoder = null_mut();
        fails(
            stag_decoder_new(model, 1, 8, STAG_EXEC_STAGGERED, 0, &mut decoder),
            StagStatus::Unsupported,
            "cpu",
        );
        assert!(decoder.is_null());
        stag_model_free(model);
    }
}

#[test]
fn decoder_steps_match_scoring_and_refuse_bad_rows() {
    let (_dir, path) = checkpoint();
    let model = load(&path, STAG_DEVICE_EMU);
    let v = vocab(model);
    // SAFETY (every call): the handles are live, the buffers as long as the lengths passed.
    unsafe {
        let mut decoder = null_mut();
        fails(
            stag_decoder_new(model, 1, 8, 9, 0, &mut decoder),
            StagStatus::InvalidArgument,
            "exec_mode",
        );
        fails(
            stag_decoder_new(model, 1, 8, STAG_EXEC_STAGGERED, 0, null_mut()),
            StagStatus::InvalidArgument,
            "out_decoder",
        );
        let decoder = new_decoder(model);
        let prompt = [5u32, 6, 7, 8];
        let mut want = vec![0f32; prompt.len() * v];
        assert_eq!(
            stag_score(
                model,
                prompt.as_ptr(),
                prompt.len(),
                want.as_mut_ptr(),
                want.len()
            ),
            StagStatus::Ok
        );
        stag_model_free(model); // the decoder holds its own weights

        let a = add(decoder);
        let b = add(decoder);
        let mut extra = 0;
        fails(
            stag_decoder_add(decoder, &mut extra),
            StagStatus::Request,
            "",
        );
        fails(
            stag_decoder_add(null_mut(), &mut extra),
            StagStatus::InvalidArgument,
            "decoder: is null",
        );

        let mut logits = vec![0f32; 2 * v];
        let mut sampled = [u32::MAX; 2];
        let both = [
            row(a, &prompt, STAG_ROW_LOGITS | STAG_ROW_SAMPLE),
            row(b, &prompt[..1], 0),
        ];
        let step =
            |rows: &[StagRow], logits: &mut [f32], logits_len: usize, sampled: &mut [u32]| {
                stag_decoder_step(
                    decoder,
                    rows.as_ptr(),
                    rows.len(),
                    logits.as_mut_ptr(),
                    logits_len,
                    sampled.as_mut_ptr(),
                    sampled.len(),
                    null_mut(),
                    0,
                )
            };
        fails(
            step(&both, &mut logits, 2 * v - 1, &mut sampled),
            StagStatus::InvalidArgument,
            "logits: holds",
        );
        fails(
            stag_decoder_step(
                decoder,
                both.as_ptr(),
                2,
                logits.as_mut_ptr(),
                2 * v,
                null_mut(),
                0,
                null_mut(),
                0,
            ),
            StagStatus::InvalidArgument,
            "sampled",
        );
        fails(
            stag_decoder_step(
                decoder,
                null(),
                2,
                null_mut(),
                0,
                null_mut(),
                0,
                null_mut(),
                0,
            ),
            StagStatus::InvalidArgument,
            "rows",
        );
        fails(
            step(&[row(a, &prompt, 4)], &mut logits, 2 * v, &mut sampled),
            StagStatus::InvalidArgument,
            "rows[0].flags",
        );
        fails(
            step(&[row(a, &[], 0)], &mut logits, 2 * v, &mut sampled),
            StagStatus::InvalidArgument,
            "rows[0].n_tokens",
        );
        fails(
            step(
                &[row(a, &[1], 0), row(a, &[2], 0)],
                &mut logits,
                2 * v,
                &mut sampled,
            ),
            StagStatus::Request,
            "",
        );
        assert!(logits.iter().all(|&x| x == 0.0) && sampled == [u32::MAX; 2]);

        assert_eq!(
            step(&both, &mut logits, 2 * v, &mut sampled),
            StagStatus::Ok
        );
        let last = &want[(prompt.len() - 1) * v..];
        let scale = last.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = logits[..v]
            .iter()
            .zip(last)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff <= 1e-4 * scale, "step vs score: {diff} of {scale}");
        assert!(
            logits[v..].iter().all(|&x| x == 0.0),
            "row 1 asked for no logits"
        );
        assert_eq!(sampled[0], stagformer_ref::sample::argmax(&logits[..v]));
        assert_eq!(sampled[1], u32::MAX, "row 1 asked for no draw");

        let mut len = 0;
        assert_eq!(stag_decoder_len(decoder, a, &mut len), StagStatus::Ok);
        assert_eq!(len, prompt.len());

        // A removed sequence's id is stale everywhere, also once its slot is reused.
        assert_eq!(stag_decoder_remove(decoder, a), StagStatus::Ok);
        fails(
            stag_decoder_remove(decoder, a),
            StagStatus::Request,
            "not live",
        );
        fails(
            stag_decoder_len(decoder, a, &mut len),
            StagStatus::Request,
            "not live",
        );
        let c = add(decoder);
        assert_ne!(c, a);
        fails(
            step(&[row(a, &[1], 0)], &mut logits, 2 * v, &mut sampled),
            StagStatus::Request,
            "rows[0].seq",
        );
        fails(
            stag_decoder_len(decoder, a | 0xffff, &mut len),
            StagStatus::Request,
            "not live",
        );
        assert_eq!(stag_decoder_len(decoder, c, &mut len), StagStatus::Ok);
        assert_eq!(len, 0);

        // The drawn token's logprob, into a buffer of its own when one is passed.
        let rows = [row(c, &prompt, STAG_ROW_LOGITS | STAG_ROW_SAMPLE)];
        let mut logprob = [f32::NAN; 1];
        let mut with_logprobs = |logprobs_len| {
            stag_decoder_step(
                decoder,
                rows.as_ptr(),
                1,
                logits.as_mut_ptr(),
                v,
                sampled.as_mut_ptr(),
                1,
                logprob.as_mut_ptr(),
                logprobs_len,
            )
        };
        fails(
            with_logprobs(0),
            StagStatus::InvalidArgument,
            "logprobs: holds 0",
        );
        assert_eq!(with_logprobs(1), StagStatus::Ok, "{}", last_error());
        let want_lp = stagformer_ref::sample::logprob(&logits[..v], sampled[0]);
        assert!(
            (f64::from(logprob[0]) - want_lp).abs() <= 1e-4,
            "logprob {} vs {want_lp}",
            logprob[0]
        );
        stag_decoder_free(decoder);
    }
}

#[test]
fn the_last_error_is_per_thread() {
    let mut model = null_mut();
    // SAFETY: a null path is refused before anything is read.
    let status = unsafe { stag_model_load(null(), STAG_DEVICE_CPU, 0, 0, &mut model) };
    assert_eq!(status, StagStatus::InvalidArgument);
    let other = std::thread::spawn(|| {
        let before = last_error();
        let mut v = 0;
        // SAFETY: a null model is refused.
        unsafe { stag_model_vocab_size(null(), &mut v) };
        (before, last_error())
    })
    .join()
    .unwrap();
    assert_eq!(other.0, "");
    assert!(other.1.starts_with("model"), "{}", other.1);
    assert!(last_error().starts_with("path"), "{}", last_error());
}

/// A bf16 model on the emulated device: scoring and a decoder step run in bf16 and stay near
/// the f32 reference. The weights here are f32, rounded to bf16 on upload, so the bound (a
/// normalized mean squared error of 1e-2) only checks that the bf16 path is the same model.
#[test]
fn bf16_scores_and_steps_near_the_reference() {
    let (_dir, path) = checkpoint();
    let reference = load(&path, STAG_DEVICE_CPU);
    let mut model = null_mut();
    // SAFETY: a valid C string and a valid out-pointer.
    let status = unsafe {
        stag_model_load(
            path.as_ptr(),
            STAG_DEVICE_EMU,
            0,
            STAG_DTYPE_BF16,
            &mut model,
        )
    };
    assert_eq!(status, StagStatus::Ok, "{}", last_error());
    let v = vocab(model);
    let tokens = [9u32, 4, 200];
    let mut want = vec![0f32; tokens.len() * v];
    let mut got = vec![0f32; tokens.len() * v];
    // SAFETY (every call): live handles, buffers as long as the lengths passed.
    unsafe {
        assert_eq!(
            stag_score(reference, tokens.as_ptr(), 3, want.as_mut_ptr(), want.len()),
            StagStatus::Ok
        );
        assert_eq!(
            stag_score(model, tokens.as_ptr(), 3, got.as_mut_ptr(), got.len()),
            StagStatus::Ok
        );
        let nmse = |got: &[f32], want: &[f32]| {
            let err: f64 = got
                .iter()
                .zip(want)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            err / want.iter().map(|b| f64::from(*b).powi(2)).sum::<f64>()
        };
        assert!(nmse(&got, &want) < 1e-2, "score nmse {}", nmse(&got, &want));

        let decoder = new_decoder(model);
        let seq = add(decoder);
        let mut logits = vec![0f32; v];
        let rows = [row(seq, &tokens, STAG_ROW_LOGITS)];
        let status = stag_decoder_step(
            decoder,
            rows.as_ptr(),
            1,
            logits.as_mut_ptr(),
            v,
            null_mut(),
            0,
            null_mut(),
            0,
        );
        assert_eq!(status, StagStatus::Ok, "{}", last_error());
        let last = &want[2 * v..];
        assert!(
            nmse(&logits, last) < 1e-2,
            "step nmse {}",
            nmse(&logits, last)
        );
        stag_decoder_free(decoder);
        stag_model_free(model);
        stag_model_free(reference);
    }
}
