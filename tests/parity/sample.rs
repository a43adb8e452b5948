//! Rows for `sample` (cuda/sample.cu) against `stagformer_ref::sample::sample`.
//!
//! The compared values are the sampled token ids plus one (so that a legitimate token 0 cannot
//! make the reference look all-zero), one per row, and the tolerance is 0: every token must be
//! the reference's. The kernel adds the reference's f64 weights as exact fixed-point integers,
//! so it can only disagree when a cumulative weight lies within ~2^-50 of the sampling point or
//! the top-p target; random logits do not produce such near-exact ties. Ties of equal logits
//! (which are exact) are covered by the greedy-ties and quantised rows.
//!
//! Each row gets its own seed and per-row (sequence, step), drawn from the row's inputs. Every
//! row runs on both kernels (multi-block, the default, and one-block).

use stagformer_kernels::device::DeviceBuffer;
use stagformer_kernels::ops::sample::{
    sample, SampleKernel, SampleShape, SampleWorkspace, SamplingConfig,
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
}

const fn row(rows: usize, vocab: usize, temperature: f32, top_k: usize, top_p: f32) -> Row {
    Row {
        rows,
        vocab,
        stride: vocab,
        temperature,
        top_k,
        top_p,
        logits: Logits::Normal(2.0),
    }
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
    format!(
        "sample {kernel} B={} V={}{stride} T={} top_k={} top_p={} {logits}",
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
            let sequences = random_u32(inputs, r.rows);
            let steps = random_u32(inputs, r.rows);
            let seed_bits = random_u32(inputs, 2);
            let seed = (u64::from(seed_bits[0]) << 32) | u64::from(seed_bits[1]);

            // Rows at `stride`, the padding poisoned (the kernel must not read it as logits).
            let mut stored = vec![f32::NAN; (r.rows - 1) * r.stride + r.vocab];
            for (b, row) in logits.chunks(r.vocab).enumerate() {
                stored[b * r.stride..b * r.stride + r.vocab].copy_from_slice(row);
            }
            let logits_dev = DeviceBuffer::from_host(stream, &stored)?;
            let seq_dev = DeviceBuffer::from_host(stream, &sequences)?;
            let step_dev = DeviceBuffer::from_host(stream, &steps)?;
            let mut tokens = poisoned::<i32>(stream, r.rows)?;
            let config = SamplingConfig {
                temperature: r.temperature,
                top_k: r.top_k,
                top_p: r.top_p,
                seed,
            };
            let shape = SampleShape {
                rows: r.rows,
                vocab: r.vocab,
                row_stride: r.stride,
            };
            let mut workspace = SampleWorkspace::with_kernel(stream, r.rows, r.vocab, kernel)?;
            sample(
                stream,
                &logits_dev,
                &mut tokens,
                &seq_dev,
                &step_dev,
                shape,
                &config,
                &mut workspace,
            )?;
            let got = tokens.to_host(stream)?;

            let params = SamplingParams {
                temperature: r.temperature,
                top_k: r.top_k,
                top_p: r.top_p,
                seed,
            };
            let want: Vec<f64> = logits
                .chunks(r.vocab)
                .enumerate()
                .map(|(b, row)| {
                    let id = reference::sample(row, &params, sequences[b].into(), steps[b].into());
                    f64::from(id) + 1.0
                })
                .collect();
            Ok(vec![Compared {
                output: "token + 1",
                got: got.iter().map(|&t| f64::from(t) + 1.0).collect(),
                want,
            }])
        },
    )
}
