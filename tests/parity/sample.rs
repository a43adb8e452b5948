//! Rows for `sample` (cuda/sample.cu) against `stagformer_ref::sample::sample`.
//!
//! The compared values are the sampled token ids plus one (so that a legitimate token 0 cannot
//! make the reference look all-zero), one per row, and the tolerance is 0: every token must be
//! the reference's. The kernel adds the reference's f64 weights as exact fixed-point integers,
//! so it can only disagree when a cumulative weight lies within ~2^-50 of the sampling point or
//! the top-p target; random logits do not produce such near-exact ties. Ties of equal logits
//! (which are exact) are covered by the greedy-ties and quantised rows.
//!
//! Each row of a call gets its own seed and counter, drawn from the case's inputs; `mixed` cases
//! also give the rows of one call different settings (greedy, temperature only, top-k, top-p,
//! both), all in one launch sequence. Every case runs on both kernels (multi-block, the
//! default, and one-block). The chosen tokens' log-probabilities are checked against the f64
//! log-softmax (`stagformer_ref::sample::logprob`): NMSE at most 1e-10, every one finite, and
//! the non-finite flags all 0.

use anyhow::ensure;
use stagformer_kernels::device::DeviceBuffer;
use stagformer_kernels::ops::sample::{
    pack_rows, sample_checked, SampleKernel, SampleShape, SampleWorkspace, SamplingConfig,
};
use stagformer_ref::sample::{self as reference, SamplingParams};

use crate::table::{poisoned, Case, Compared, Inputs};

/// How a row's logits are drawn.
#[derive(Clone, Copy, Debug)]
enum Logits {
    /// N(0, std²).
    Normal(f32),
    /// N(0, std²) rounded to multiples of 1/4: many equal logits, at every threshold.
    Quantised(f32),
    /// N(0, 2²) with the maximum repeated at three ids (never id 0).
    TiedMax,
}

#[derive(Clone, Copy, Debug)]
struct Row {
    rows: usize,
    vocab: usize,
    /// Elements between row starts (>= vocab).
    stride: usize,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    logits: Logits,
    /// Odd rows b of the call use MIXES[(b / 2) % MIXES.len()] instead: greedy and
    /// sampled rows, and different filters, in one call.
    mixed: bool,
}

/// The other settings of a mixed call's odd rows: (temperature, top_k, top_p).
const MIXES: [(f32, usize, f32); 4] =
    [(0.0, 0, 1.0), (0.9, 0, 0.95), (1.2, 50, 1.0), (0.7, 0, 1.0)];

/// Bound on the logprobs' NMSE against the f64 log-softmax (f32 sums of at most 2^18 terms).
const LOGPROB_NMSE: f64 = 1e-10;

const fn row(rows: usize, vocab: usize, temperature: f32, top_k: usize, top_p: f32) -> Row {
    Row {
        rows,
        vocab,
        stride: vocab,
        temperature,
        top_k,
        top_p,
        logits: Logits::Normal(2.0),
        mixed: false,
    }
}

const fn mixed(r: Row) -> Row {
    Row { mixed: true, ..r }
}

const fn with_logits(r: Row, logits: Logits) -> Row {
    Row { logits, ..r }
}

const fn with_stride(r: Row, stride: usize) -> Row {
    Row { stride, ..r }
}

pub fn cases() -> Vec<Case> {
    let mut rows = vec![
        // Greedy: several equal maxima give the lowest id; top_k = 1 is greedy whatever T.
        with_logits(row(4, 1000, 0.0, 0, 1.0), Logits::TiedMax),
        with_logits(row(4, 50257, 0.0, 40, 0.9), Logits::TiedMax),
        with_logits(row(1, 262_144, 0.0, 0, 1.0), Logits::TiedMax),
        with_logits(row(4, 1000, 1.5, 1, 1.0), Logits::TiedMax),
        with_logits(row(4, 1000, 0.7, 1, 0.5), Logits::Normal(2.0)),
        with_logits(row(1, 50257, 1.0, 1, 0.9), Logits::TiedMax),
        row(3, 1, 1.0, 0, 1.0),
    ];
    // Temperature × top-k × top-p on a small vocabulary (64 threads: V is not a multiple).
    for temperature in [0.7, 1.0, 1.5] {
        for top_k in [0, 40] {
            for top_p in [1.0, 0.9, 0.5] {
                rows.push(row(4, 1000, temperature, top_k, top_p));
            }
        }
    }
    rows.extend([
        // 16-byte loads with a scalar tail (stride 1004), and the scalar path (odd stride).
        with_stride(row(4, 1003, 1.0, 0, 0.9), 1004),
        with_stride(row(4, 1003, 1.0, 40, 1.0), 1004),
        with_stride(row(3, 1000, 1.0, 0, 0.9), 1001),
        // Every candidate kept but one; a tiny temperature (most weights exactly 0).
        row(4, 1000, 1.0, 999, 1.0),
        row(4, 1000, 0.05, 0, 1.0),
        // Equal logits at the top-k boundary, inside the nucleus and at the sampling point.
        with_logits(row(4, 1000, 1.0, 40, 1.0), Logits::Quantised(2.0)),
        with_logits(row(4, 1000, 1.0, 0, 0.9), Logits::Quantised(2.0)),
        with_logits(row(4, 1000, 0.7, 100, 0.5), Logits::Quantised(1.0)),
        with_logits(row(2, 50257, 1.0, 0, 0.9), Logits::Quantised(1.0)),
        // GPT-2's vocabulary: a wide nucleus (> 2048 candidates, never compacted), a top-k above
        // the compaction limit, and the usual settings.
        row(4, 50257, 0.7, 0, 1.0),
        row(4, 50257, 1.0, 0, 0.9),
        with_logits(row(2, 50257, 1.5, 0, 0.9), Logits::Normal(1.0)),
        row(4, 50257, 1.5, 40, 0.5),
        row(2, 50257, 1.0, 5000, 1.0),
        row(2, 50257, 1.0, 5000, 0.9),
        // The largest vocabulary.
        row(1, 262_144, 1.0, 0, 0.9),
        row(1, 262_144, 0.7, 40, 1.0),
        with_logits(row(1, 262_144, 1.5, 0, 1.0), Logits::Normal(1.0)),
        row(4, 262_144, 1.0, 40, 0.9),
        with_logits(row(2, 262_144, 1.0, 0, 0.9), Logits::Quantised(1.0)),
        // Small odd vocabularies: one partial block, a block and one logit, two and a bit.
        row(3, 7, 1.0, 0, 0.9),
        row(2, 1025, 0.7, 40, 1.0),
        with_logits(row(2, 2049, 1.0, 3, 1.0), Logits::TiedMax),
        with_logits(row(2, 2049, 0.0, 0, 1.0), Logits::TiedMax),
    ]);
    // Mixed settings in one call: greedy next to sampled rows, and different filters.
    rows.extend([
        mixed(row(8, 1000, 1.0, 40, 0.9)),
        mixed(with_logits(row(6, 1000, 0.0, 0, 1.0), Logits::TiedMax)),
        mixed(with_stride(row(5, 1003, 1.5, 0, 0.5), 1004)),
        mixed(row(8, 50257, 0.8, 40, 0.95)),
        mixed(with_logits(
            row(4, 50257, 1.0, 0, 0.9),
            Logits::Quantised(1.0),
        )),
        mixed(row(4, 128_256, 1.0, 0, 0.9)),
    ]);
    // Llama 3's and Qwen 2's vocabularies at batch 1 and 8: greedy with ties, temperature only
    // (a select over the whole row), top-k, top-p, both, and equal logits everywhere.
    for vocab in [128_256, 151_936] {
        for rows_n in [1, 8] {
            rows.extend([
                with_logits(row(rows_n, vocab, 0.0, 0, 1.0), Logits::TiedMax),
                row(rows_n, vocab, 1.0, 0, 1.0),
                row(rows_n, vocab, 0.8, 40, 1.0),
                row(rows_n, vocab, 1.0, 0, 0.9),
                row(rows_n, vocab, 0.8, 40, 0.95),
                with_logits(row(rows_n, vocab, 1.0, 0, 0.9), Logits::Quantised(1.0)),
            ]);
        }
    }
    rows.into_iter()
        .flat_map(|r| {
            [SampleKernel::MultiBlock, SampleKernel::OneBlock]
                .into_iter()
                .map(move |k| sample_case(r, k))
        })
        .collect()
}

fn label(r: &Row, kernel: SampleKernel) -> String {
    let logits = match r.logits {
        Logits::Normal(std) => format!("normal({std})"),
        Logits::Quantised(std) => format!("quantised({std})"),
        Logits::TiedMax => "tied-max".to_string(),
    };
    let stride = if r.stride == r.vocab {
        String::new()
    } else {
        format!(" stride={}", r.stride)
    };
    let kernel = match kernel {
        SampleKernel::MultiBlock => "multi-block",
        SampleKernel::OneBlock => "one-block",
    };
    let mix = if r.mixed { " mixed" } else { "" };
    format!(
        "sample {kernel} B={} V={}{stride} T={} top_k={} top_p={} {logits}{mix}",
        r.rows, r.vocab, r.temperature, r.top_k, r.top_p
    )
}

/// Random u32 values from the row's inputs (the bits of normal draws).
fn random_u32(inputs: &mut Inputs, n: usize) -> Vec<u32> {
    inputs
        .normal(n, 0.0, 1.0)
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

fn draw_logits(inputs: &mut Inputs, r: &Row) -> Vec<f32> {
    let n = r.rows * r.vocab;
    match r.logits {
        Logits::Normal(std) => inputs.normal(n, 0.0, std),
        Logits::Quantised(std) => inputs
            .normal(n, 0.0, std)
            .into_iter()
            .map(|x| (x * 4.0).round() / 4.0)
            .collect(),
        Logits::TiedMax => {
            let mut x = inputs.normal(n, 0.0, 2.0);
            let picks = random_u32(inputs, 3 * r.rows);
            for (b, row) in x.chunks_mut(r.vocab).enumerate() {
                let top = row.iter().copied().fold(f32::MIN, f32::max) + 1.0;
                for p in &picks[3 * b..3 * b + 3] {
                    if r.vocab > 1 {
                        row[1 + *p as usize % (r.vocab - 1)] = top;
                    }
                }
            }
            x
        }
    }
}

fn sample_case(r: Row, kernel: SampleKernel) -> Case {
    Case::new(
        label(&r, kernel),
        0.0,
        move |stream, inputs: &mut Inputs| {
            let logits = draw_logits(inputs, &r);
            let counters = random_u32(inputs, r.rows);
            let seed_bits = random_u32(inputs, 2 * r.rows);
            let params: Vec<SamplingParams> = (0..r.rows)
                .map(|b| {
                    let (temperature, top_k, top_p) = if r.mixed && b % 2 == 1 {
                        MIXES[(b / 2) % MIXES.len()]
                    } else {
                        (r.temperature, r.top_k, r.top_p)
                    };
                    SamplingParams {
                        temperature,
                        top_k,
                        top_p,
                        seed: (u64::from(seed_bits[2 * b]) << 32) | u64::from(seed_bits[2 * b + 1]),
                    }
                })
                .collect();
            let configs: Vec<SamplingConfig> = params
                .iter()
                .map(|p| SamplingConfig {
                    temperature: p.temperature,
                    top_k: p.top_k,
                    top_p: p.top_p,
                    seed: p.seed,
                })
                .collect();

            // Rows at `stride`, the padding poisoned (the kernel must not read it as logits).
            let mut stored = vec![f32::NAN; (r.rows - 1) * r.stride + r.vocab];
            for (b, row) in logits.chunks(r.vocab).enumerate() {
                stored[b * r.stride..b * r.stride + r.vocab].copy_from_slice(row);
            }
            let logits_dev = DeviceBuffer::from_host(stream, &stored)?;
            let settings = DeviceBuffer::from_host(stream, &pack_rows(&configs, &counters)?)?;
            let mut tokens = poisoned::<i32>(stream, r.rows)?;
            let mut logprobs = poisoned::<f32>(stream, r.rows)?;
            let mut flags = poisoned::<i32>(stream, r.rows)?;
            let shape = SampleShape {
                rows: r.rows,
                vocab: r.vocab,
                row_stride: r.stride,
            };
            let mut workspace = SampleWorkspace::with_kernel(stream, r.rows, r.vocab, kernel)?;
            sample_checked(
                stream,
                &logits_dev,
                &mut tokens,
                &mut logprobs,
                &mut flags,
                &settings,
                shape,
                &mut workspace,
            )?;
            let got = tokens.to_host(stream)?;
            let got_lp = logprobs.to_host(stream)?;
            ensure!(
                flags.to_host(stream)?.iter().all(|&f| f == 0),
                "a finite row was flagged non-finite"
            );

            let want: Vec<f64> = logits
                .chunks(r.vocab)
                .enumerate()
                .map(|(b, row)| {
                    let id = reference::sample(row, &params[b], counters[b].into());
                    f64::from(id) + 1.0
                })
                .collect();
            // The logprob of the token the kernel chose (a wrong token fails the comparison
            // of tokens below).
            let (mut err, mut norm) = (0.0f64, 0.0f64);
            for (b, row) in logits.chunks(r.vocab).enumerate() {
                let token = u32::try_from(got[b]).unwrap_or(0).min(r.vocab as u32 - 1);
                let lp = reference::logprob(row, token);
                ensure!(got_lp[b].is_finite(), "row {b}: logprob {}", got_lp[b]);
                err += (f64::from(got_lp[b]) - lp).powi(2);
                norm += lp * lp;
            }
            // A row of one token (or a sure choice) has logprob 0: bound the error absolutely.
            let nmse = err / norm.max(r.rows as f64);
            ensure!(
                nmse <= LOGPROB_NMSE,
                "logprob nmse {nmse:.3e} > {LOGPROB_NMSE:.0e}"
            );
            Ok(vec![Compared {
                output: "token + 1",
                got: got.iter().map(|&t| f64::from(t) + 1.0).collect(),
                want,
            }])
        },
    )
}
