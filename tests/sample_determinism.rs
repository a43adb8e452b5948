//! `ops::sample` on the emulated device: the same inputs give the same tokens on every run and
//! under any thread order, seeds and counters matter but rows (slots) do not, rows with
//! different settings share one call (and one captured graph), tokens equal
//! `stagformer_ref::sample::sample` over many random rows and settings, ids stay in range even
//! for non-finite logits, and bad arguments are typed errors naming the argument and row. Every
//! run goes through both kernels (multi-block and one-block), which must agree token for token.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use stagformer_kernels::device::{Device, DeviceBuffer, EmuOptions, Stream};
use stagformer_kernels::error::DeviceError;
use stagformer_kernels::ops::sample::{
    pack_rows, sample, sample_checked, SampleKernel, SampleShape, SampleWorkspace, SamplingConfig,
    SAMPLE_ROW_WORDS,
};
use stagformer_ref::sample::{self as reference, SamplingParams};

type TestResult = Result<(), DeviceError>;

fn config(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingConfig {
    SamplingConfig {
        temperature,
        top_k,
        top_p,
        seed,
    }
}

fn normal_logits(rng: &mut StdRng, n: usize, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| std * rng.sample::<f32, _>(StandardNormal))
        .collect()
}

fn params_of(c: &SamplingConfig) -> SamplingParams {
    SamplingParams {
        temperature: c.temperature,
        top_k: c.top_k,
        top_p: c.top_p,
        seed: c.seed,
    }
}

/// One batch: rows of logits with their counters (each row's token index).
struct Batch {
    vocab: usize,
    logits: Vec<f32>,
    counters: Vec<u32>,
}

impl Batch {
    fn random(rng: &mut StdRng, rows: usize, vocab: usize, std: f32) -> Batch {
        Batch {
            vocab,
            logits: normal_logits(rng, rows * vocab, std),
            counters: (0..rows).map(|_| rng.random()).collect(),
        }
    }

    fn rows(&self) -> usize {
        self.counters.len()
    }

    /// The multi-block kernel's tokens with `config` on every row, after checking that the
    /// one-block kernel's are equal.
    fn run(&self, stream: &Stream, config: &SamplingConfig) -> Result<Vec<i32>, DeviceError> {
        self.run_rows(stream, &vec![*config; self.rows()])
    }

    /// As `run`, row r with `configs[r]`.
    fn run_rows(
        &self,
        stream: &Stream,
        configs: &[SamplingConfig],
    ) -> Result<Vec<i32>, DeviceError> {
        let mut multi = SampleWorkspace::new(stream, self.rows(), self.vocab)?;
        let tokens = self.run_with(stream, configs, &mut multi)?;
        let one = self.run_with(stream, configs, &mut SampleWorkspace::one_block())?;
        assert_eq!(tokens, one, "multi-block vs one-block, {configs:?}");
        Ok(tokens)
    }

    fn settings(
        &self,
        stream: &Stream,
        configs: &[SamplingConfig],
    ) -> Result<DeviceBuffer<u32>, DeviceError> {
        DeviceBuffer::from_host(stream, &pack_rows(configs, &self.counters)?)
    }

    fn run_with(
        &self,
        stream: &Stream,
        configs: &[SamplingConfig],
        workspace: &mut SampleWorkspace,
    ) -> Result<Vec<i32>, DeviceError> {
        let logits = DeviceBuffer::from_host(stream, &self.logits)?;
        let settings = self.settings(stream, configs)?;
        let mut tokens = DeviceBuffer::<i32>::alloc(stream.device(), self.rows())?;
        sample(
            stream,
            &logits,
            &mut tokens,
            &settings,
            SampleShape::contiguous(self.rows(), self.vocab),
            workspace,
        )?;
        tokens.to_host(stream)
    }

    fn reference(&self, config: &SamplingConfig) -> Vec<i32> {
        self.reference_rows(&vec![*config; self.rows()])
    }

    fn reference_rows(&self, configs: &[SamplingConfig]) -> Vec<i32> {
        self.logits
            .chunks(self.vocab)
            .enumerate()
            .map(|(r, row)| {
                reference::sample(row, &params_of(&configs[r]), self.counters[r].into()) as i32
            })
            .collect()
    }
}

fn devices() -> Vec<Device> {
    vec![
        Device::emulated(),
        Device::emulated_with(EmuOptions {
            shuffle_seed: 0x5eed,
            ..EmuOptions::default()
        }),
        Device::emulated_with(EmuOptions {
            shuffle_seed: 77,
            workers: 1,
        }),
    ]
}

#[test]
fn same_inputs_same_tokens_on_every_run_and_thread_order() -> TestResult {
    let mut rng = StdRng::seed_from_u64(1);
    let batch = Batch::random(&mut rng, 6, 4099, 1.5);
    let settings = [
        config(1.0, 0, 1.0, 11),
        config(0.8, 50, 0.9, 12),
        config(1.3, 0, 0.7, 13),
        config(1.0, 3000, 1.0, 14),
    ];
    for cfg in &settings {
        let mut first: Option<Vec<i32>> = None;
        for dev in devices() {
            let stream = dev.new_stream()?;
            for _ in 0..2 {
                let tokens = batch.run(&stream, cfg)?;
                match &first {
                    None => first = Some(tokens),
                    Some(f) => assert_eq!(&tokens, f, "{cfg:?} on {}", dev.name()),
                }
            }
        }
        assert_eq!(first.unwrap(), batch.reference(cfg), "{cfg:?}");
    }
    Ok(())
}

#[test]
fn different_seeds_give_different_tokens() -> TestResult {
    let dev = Device::emulated();
    let stream = dev.new_stream()?;
    let mut rng = StdRng::seed_from_u64(2);
    // Flat logits: many plausible tokens per row.
    let batch = Batch::random(&mut rng, 16, 1000, 0.5);
    let a = batch.run(&stream, &config(1.0, 0, 1.0, 1))?;
    let b = batch.run(&stream, &config(1.0, 0, 1.0, 2))?;
    assert_ne!(a, b);
    // Same seed, other counters: also different.
    let later = Batch {
        vocab: batch.vocab,
        logits: batch.logits.clone(),
        counters: batch.counters.iter().map(|s| s.wrapping_add(1)).collect(),
    };
    let c = later.run(&stream, &config(1.0, 0, 1.0, 1))?;
    assert_ne!(a, c);
    Ok(())
}

/// The draw is keyed by (seed, counter), not by the row: the same logits, seed and counter in
/// every row give one token in every row, and permuting the rows of a mixed call permutes its
/// tokens.
#[test]
fn the_row_a_request_lands_in_does_not_change_its_token() -> TestResult {
    let dev = Device::emulated();
    let stream = dev.new_stream()?;
    let mut rng = StdRng::seed_from_u64(21);
    let vocab = 2500;
    let one = normal_logits(&mut rng, vocab, 0.7);
    let same = Batch {
        vocab,
        logits: one.repeat(8),
        counters: vec![41; 8],
    };
    let tokens = same.run(&stream, &config(1.0, 0, 0.95, 77))?;
    assert!(tokens.iter().all(|&t| t == tokens[0]), "{tokens:?}");
    let batch = Batch::random(&mut rng, 6, vocab, 1.0);
    let configs: Vec<SamplingConfig> = (0..6)
        .map(|r| config(0.6 + 0.2 * r as f32, [0, 30][r % 2], 0.9, 1000 + r as u64))
        .collect();
    let got = batch.run_rows(&stream, &configs)?;
    let order = [4usize, 0, 5, 2, 1, 3];
    let permuted = Batch {
        vocab,
        logits: order
            .iter()
            .flat_map(|&r| batch.logits[r * vocab..(r + 1) * vocab].to_vec())
            .collect(),
        counters: order.iter().map(|&r| batch.counters[r]).collect(),
    };
    let permuted_configs: Vec<SamplingConfig> = order.iter().map(|&r| configs[r]).collect();
    let got_permuted = permuted.run_rows(&stream, &permuted_configs)?;
    for (i, &r) in order.iter().enumerate() {
        assert_eq!(got_permuted[i], got[r], "row {r} moved to {i}");
    }
    Ok(())
}

/// Greedy rows, sampled rows and rows with different filters in one call equal the reference
/// row by row; a graph captured with all-greedy settings replays with any other settings
/// uploaded into the same buffer (the launches depend on the shape only) and still equals the
/// reference.
#[test]
fn mixed_settings_share_one_call_and_one_graph() -> TestResult {
    let dev = Device::emulated_with(EmuOptions {
        shuffle_seed: 5,
        ..EmuOptions::default()
    });
    let stream = dev.new_stream()?;
    let mut rng = StdRng::seed_from_u64(22);
    let (rows, vocab) = (6, 3000);
    let batch = Batch::random(&mut rng, rows, vocab, 1.5);
    let mixes = [
        vec![SamplingConfig::GREEDY; rows],
        vec![
            SamplingConfig::GREEDY,
            config(1.0, 0, 1.0, 1),
            config(0.8, 40, 1.0, 2),
            config(1.2, 0, 0.9, 3),
            config(0.7, 1, 0.5, 4),
            config(1.0, 2500, 0.95, 5),
        ],
        vec![config(1.5, 0, 0.8, 9); rows],
    ];
    for configs in &mixes {
        assert_eq!(
            batch.run_rows(&stream, configs)?,
            batch.reference_rows(configs)
        );
    }
    let logits = DeviceBuffer::from_host(&stream, &batch.logits)?;
    let mut settings = batch.settings(&stream, &mixes[0])?;
    let mut tokens = DeviceBuffer::<i32>::alloc(&dev, rows)?;
    let mut ws = SampleWorkspace::new(&stream, rows, vocab)?;
    let (graph, ()) = stream.capture(|| {
        sample(
            &stream,
            &logits,
            &mut tokens,
            &settings,
            SampleShape::contiguous(rows, vocab),
            &mut ws,
        )
    })?;
    for configs in mixes.iter().rev() {
        settings.copy_from_host(&stream, &pack_rows(configs, &batch.counters)?)?;
        graph.launch()?;
        assert_eq!(tokens.to_host(&stream)?, batch.reference_rows(configs));
    }
    Ok(())
}

#[test]
fn tokens_equal_the_reference_over_many_rows_and_settings() -> TestResult {
    let dev = Device::emulated_with(EmuOptions {
        shuffle_seed: 9,
        ..EmuOptions::default()
    });
    let stream = dev.new_stream()?;
    let mut rng = StdRng::seed_from_u64(3);
    let temperatures = [0.0, 0.3, 0.7, 1.0, 1.5, 2.5];
    let top_ks = [0, 1, 2, 10, 40, 500, 999, 1000, 5000];
    let top_ps = [1.0, 0.95, 0.9, 0.5, 0.1, 1e-6];
    let mut checked = 0;
    // 40 launches of 5 rows of V = 1000: 200 rows, each launch with its own settings.
    for launch in 0..40u64 {
        let cfg = config(
            temperatures[rng.random_range(0..temperatures.len())],
            top_ks[rng.random_range(0..top_ks.len())],
            top_ps[rng.random_range(0..top_ps.len())],
            rng.random(),
        );
        let std = [0.5f32, 2.0, 4.0][launch as usize % 3];
        let mut batch = Batch::random(&mut rng, 5, 1000, std);
        if launch % 4 == 3 {
            // Many equal logits: ties at every threshold.
            for x in &mut batch.logits {
                *x = (*x * 2.0).round() / 2.0;
            }
        }
        let got = batch.run(&stream, &cfg)?;
        assert_eq!(got, batch.reference(&cfg), "launch {launch}: {cfg:?}");
        assert!(got.iter().all(|&t| (0..1000).contains(&t)));
        checked += got.len();
    }
    assert_eq!(checked, 200);
    Ok(())
}

#[test]
fn equal_logits_resolve_exact_ties_like_the_reference() -> TestResult {
    // Equal logits weigh exactly 1 each. With a power-of-two kept count, top_p · total lands
    // exactly on a running sum, and so does u · kept weight for the steps picked below: the
    // token must be the first whose running sum *exceeds* u, i.e. exactly u · kept.
    let dev = Device::emulated();
    let stream = dev.new_stream()?;
    let seed = 0x1234_5678_9abc_def0u64;
    for (vocab, top_p) in [(1024usize, 1.0f32), (1024, 0.5), (4096, 0.25), (1000, 1.0)] {
        let kept = (vocab as f64 * f64::from(top_p)).ceil();
        let exact: Vec<u32> = (0u32..)
            .filter(|&step| {
                let u = f64::from(reference::uniform(seed, step.into()));
                (u * kept).fract() == 0.0
            })
            .take(24)
            .collect();
        let rows = exact.len();
        let batch = Batch {
            vocab,
            logits: vec![0.375; rows * vocab],
            counters: exact.clone(),
        };
        let cfg = config(0.9, 0, top_p, seed);
        let want: Vec<i32> = exact
            .iter()
            .map(|&step| {
                let u = f64::from(reference::uniform(seed, step.into()));
                (u * kept) as i32
            })
            .collect();
        assert_eq!(batch.reference(&cfg), want, "V={vocab} top_p={top_p}");
        assert_eq!(batch.run(&stream, &cfg)?, want, "V={vocab} top_p={top_p}");
    }
    Ok(())
}

#[test]
fn ids_stay_in_range_for_non_finite_logits() -> TestResult {
    let dev = Device::emulated();
    let stream = dev.new_stream()?;
    let mut rng = StdRng::seed_from_u64(4);
    let vocab = 300;
    let mut batch = Batch::random(&mut rng, 6, vocab, 1.0);
    let specials = [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
    for (r, row) in batch.logits.chunks_mut(vocab).enumerate() {
        match r {
            // Everything NaN, or everything -inf.
            0 => row.fill(f32::NAN),
            1 => row.fill(f32::NEG_INFINITY),
            // Scattered specials.
            _ => {
                for i in (r..vocab).step_by(7) {
                    row[i] = specials[(i + r) % specials.len()];
                }
            }
        }
    }
    for cfg in [
        SamplingConfig::GREEDY,
        config(1.0, 0, 1.0, 5),
        config(0.7, 20, 0.9, 6),
        config(1.0, 0, 0.5, 7),
    ] {
        let tokens = batch.run(&stream, &cfg)?;
        assert!(
            tokens.iter().all(|&t| (0..vocab as i32).contains(&t)),
            "{cfg:?}: {tokens:?}"
        );
    }
    // Greedy follows the reference's argmax even here (NaN never wins unless at index 0).
    let greedy = batch.run(&stream, &SamplingConfig::GREEDY)?;
    assert_eq!(greedy, batch.reference(&SamplingConfig::GREEDY));
    Ok(())
}

/// `sample_checked` flags exactly the rows holding a NaN or an infinity (anywhere: first,
/// last, middle of a row wider than one block's chunk), on both kernels and for greedy and
/// sampling settings, picks the same tokens as `sample`, and leaves the flag of a clean row 0
/// on a reused workspace.
#[test]
fn non_finite_rows_are_flagged() -> TestResult {
    let dev = Device::emulated();
    let stream = dev.new_stream()?;
    let mut rng = StdRng::seed_from_u64(9);
    let (rows, vocab) = (6, 3000);
    let mut batch = Batch::random(&mut rng, rows, vocab, 1.0);
    let bad: [(usize, usize, f32); 4] = [
        (1, 0, f32::NAN),
        (2, vocab - 1, f32::INFINITY),
        (3, 2047, f32::NEG_INFINITY),
        (5, 1500, -f32::NAN),
    ];
    for &(r, i, v) in &bad {
        batch.logits[r * vocab + i] = v;
    }
    let want: Vec<i32> = (0..rows)
        .map(|r| i32::from(bad.iter().any(|b| b.0 == r)))
        .collect();
    let logits = DeviceBuffer::from_host(&stream, &batch.logits)?;
    let shape = SampleShape::contiguous(rows, vocab);
    let mut multi = SampleWorkspace::new(&stream, rows, vocab)?;
    let mut logprobs = DeviceBuffer::<f32>::alloc(&dev, rows)?;
    for cfg in [SamplingConfig::GREEDY, config(0.8, 40, 0.9, 3)] {
        let configs = vec![cfg; rows];
        let settings = batch.settings(&stream, &configs)?;
        let unchecked = batch.run_with(&stream, &configs, &mut multi)?;
        for ws in [&mut multi, &mut SampleWorkspace::one_block()] {
            for round in 0..2 {
                let mut tokens = DeviceBuffer::<i32>::alloc(&dev, rows)?;
                let mut flags = DeviceBuffer::from_host(&stream, &vec![7i32; rows])?;
                sample_checked(
                    &stream,
                    &logits,
                    &mut tokens,
                    &mut logprobs,
                    &mut flags,
                    &settings,
                    shape,
                    ws,
                )?;
                assert_eq!(flags.to_host(&stream)?, want, "{cfg:?} round {round}");
                assert_eq!(tokens.to_host(&stream)?, unchecked, "{cfg:?} round {round}");
            }
        }
    }
    // The same workspace on clean logits: nothing flagged (no flag left over).
    let clean = DeviceBuffer::from_host(&stream, &normal_logits(&mut rng, rows * vocab, 1.0))?;
    let mut tokens = DeviceBuffer::<i32>::alloc(&dev, rows)?;
    let mut flags = DeviceBuffer::from_host(&stream, &vec![7i32; rows])?;
    for cfg in [SamplingConfig::GREEDY, config(0.8, 40, 0.9, 3)] {
        let settings = batch.settings(&stream, &vec![cfg; rows])?;
        sample_checked(
            &stream,
            &clean,
            &mut tokens,
            &mut logprobs,
            &mut flags,
            &settings,
            shape,
            &mut multi,
        )?;
        assert_eq!(flags.to_host(&stream)?, vec![0; rows], "{cfg:?}");
        assert!(logprobs
            .to_host(&stream)?
            .iter()
            .all(|l| l.is_finite() && *l <= 0.0));
    }
    Ok(())
}

fn invalid_arg(result: Result<(), DeviceError>) -> &'static str {
    match result {
        Err(DeviceError::InvalidArgument { arg, .. }) => arg,
        Err(DeviceError::LengthMismatch { arg, .. }) => arg,
        Err(DeviceError::ShapeMismatch { arg, .. }) => arg,
        other => panic!("expected a typed argument error, got {other:?}"),
    }
}

/// The reason of an `InvalidArgument` error, for the row it names.
fn invalid_reason(result: Result<Vec<u32>, DeviceError>) -> (&'static str, String) {
    match result {
        Err(DeviceError::InvalidArgument { arg, reason }) => (arg, reason),
        other => panic!("expected an invalid argument, got {other:?}"),
    }
}

#[test]
fn bad_arguments_are_typed_errors() -> TestResult {
    let dev = Device::emulated();
    let stream = dev.new_stream()?;
    let (rows, vocab) = (3, 64);
    let logits = DeviceBuffer::from_host(&stream, &vec![0.5f32; rows * vocab])?;
    let ok = config(1.0, 0, 0.9, 1);
    let counters = vec![0u32; rows];
    let settings = DeviceBuffer::from_host(&stream, &pack_rows(&[ok; 3], &counters)?)?;
    let short_settings =
        DeviceBuffer::from_host(&stream, &vec![0u32; (rows - 1) * SAMPLE_ROW_WORDS])?;
    let mut tokens = DeviceBuffer::<i32>::alloc(&dev, rows)?;
    let mut long_tokens = DeviceBuffer::<i32>::alloc(&dev, rows + 1)?;
    let shape = SampleShape::contiguous(rows, vocab);

    // Settings are refused on the host, naming the field and the row, before any upload.
    for (bad, field) in [
        (config(1.0, 0, 0.0, 1), "top_p"),
        (config(1.0, 0, 1.5, 1), "top_p"),
        (config(1.0, 0, f32::NAN, 1), "top_p"),
        (config(-0.5, 0, 0.9, 1), "temperature"),
        (config(f32::INFINITY, 0, 0.9, 1), "temperature"),
        (config(f32::NAN, 0, 0.9, 1), "temperature"),
    ] {
        let (arg, reason) = invalid_reason(pack_rows(&[ok, ok, bad], &counters));
        assert_eq!(arg, field, "{bad:?}");
        assert!(reason.starts_with("row 2:"), "{reason}");
    }
    assert!(matches!(
        pack_rows(&[ok; 3], &counters[..2]),
        Err(DeviceError::LengthMismatch {
            arg: "counters",
            ..
        })
    ));

    let mut ws = SampleWorkspace::new(&stream, rows, vocab)?;
    let mut call =
        |shape: SampleShape| sample(&stream, &logits, &mut tokens, &settings, shape, &mut ws);
    assert_eq!(invalid_arg(call(SampleShape::contiguous(rows, 0))), "vocab");
    assert_eq!(
        invalid_arg(call(SampleShape::contiguous(rows, vocab + 1))),
        "logits"
    );
    assert_eq!(
        invalid_arg(call(SampleShape {
            rows,
            vocab,
            row_stride: vocab - 1
        })),
        "row_stride"
    );
    // Rows count from `tokens`: a wrong row count shows in the lengths.
    assert_eq!(
        invalid_arg(call(SampleShape::contiguous(rows - 1, vocab))),
        "logits"
    );
    assert_eq!(
        invalid_arg(sample(
            &stream,
            &logits,
            &mut long_tokens,
            &settings,
            shape,
            &mut ws
        )),
        "tokens"
    );
    assert_eq!(
        invalid_arg(sample(
            &stream,
            &logits,
            &mut tokens,
            &short_settings,
            shape,
            &mut ws
        )),
        "settings"
    );
    // A multi-block workspace bounds the shape.
    let mut small = SampleWorkspace::new(&stream, rows - 1, vocab)?;
    assert_eq!(
        invalid_arg(sample(
            &stream,
            &logits,
            &mut tokens,
            &settings,
            shape,
            &mut small
        )),
        "rows"
    );
    let mut narrow = SampleWorkspace::new(&stream, rows, vocab - 1)?;
    assert_eq!(
        invalid_arg(sample(
            &stream,
            &logits,
            &mut tokens,
            &settings,
            shape,
            &mut narrow
        )),
        "vocab"
    );
    assert_eq!(
        invalid_arg(SampleWorkspace::new(&stream, 0, vocab).map(|_| ())),
        "max_rows"
    );
    // Valid calls still work afterwards, including zero rows.
    sample(&stream, &logits, &mut tokens, &settings, shape, &mut ws)?;
    let empty_f = DeviceBuffer::<f32>::alloc(&dev, 0)?;
    let empty_u = DeviceBuffer::<u32>::alloc(&dev, 0)?;
    let mut empty_t = DeviceBuffer::<i32>::alloc(&dev, 0)?;
    sample(
        &stream,
        &empty_f,
        &mut empty_t,
        &empty_u,
        SampleShape::contiguous(0, vocab),
        &mut ws,
    )?;
    let tokens = tokens.to_host(&stream)?;
    assert!(tokens.iter().all(|&t| (0..vocab as i32).contains(&t)));
    Ok(())
}

#[test]
fn one_workspace_serves_calls_of_every_shape_and_setting() -> TestResult {
    // The kernels leave the workspace ready for the next call (counters at zero, whatever the
    // previous shape), as graph replays need; each call still equals the reference.
    let dev = Device::emulated_with(EmuOptions {
        shuffle_seed: 9,
        ..EmuOptions::default()
    });
    let stream = dev.new_stream()?;
    let mut rng = StdRng::seed_from_u64(6);
    let mut ws = SampleWorkspace::new(&stream, 5, 5000)?;
    assert_eq!(ws.kernel(), SampleKernel::MultiBlock);
    let calls = [
        (5, 5000, config(1.0, 0, 0.9, 1)),
        (1, 3000, config(0.8, 40, 0.95, 2)),
        (5, 4099, SamplingConfig::GREEDY),
        (2, 5000, config(1.2, 2500, 1.0, 3)),
        (3, 17, config(1.0, 0, 1.0, 4)),
        (5, 5000, config(0.9, 40, 1.0, 5)),
        (5, 5000, config(1.0, 0, 0.9, 1)),
    ];
    for (rows, vocab, cfg) in calls {
        let batch = Batch::random(&mut rng, rows, vocab, 2.0);
        for _ in 0..2 {
            let tokens = batch.run_with(&stream, &vec![cfg; rows], &mut ws)?;
            assert_eq!(tokens, batch.reference(&cfg), "{rows}x{vocab} {cfg:?}");
        }
    }
    Ok(())
}
