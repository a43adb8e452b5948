//! Continuous batching on the emulated device through the engine step
//! (`Decoder::step_batch`): requests arrive and finish at different steps, each with its own
//! sampling settings, in one kernel decoder whose KV caches live in page pools. A prompt
//! arrives in chunks of 4 tokens, one chunk a step, in the same batches as the other requests'
//! decode rows (its last chunk draws its first token); one request forks another after its
//! prompt (the two share the prompt's pages until they diverge). Decode rows of greedy and
//! sampled requests run together, and the graph cache holds one graph per row count whatever
//! the settings.
//!
//! ```sh
//! cargo run --release -p stagformer --example continuous_batching
//! ```
//!
//! Each request is then checked against the CPU reference: every logits row the decoder
//! returned against the definition's logits over the request's whole sequence
//! (`Model::forward`), every token against the reference sampler on those logits at its
//! position (`stagformer_ref::sample::sample`, the same counter-based draw), every logprob
//! against `log_softmax` in f64. Exits non-zero on any difference, and when a page is not
//! returned after the last request leaves.

use anyhow::{bail, ensure, Context, Result};
use stagformer::{BatchRow, Decoder, DecoderOptions, PrefillLogits, SamplingParams, SeqId};
use stagformer_kernels::Device;
use stagformer_ref::{init, sample, Model, StorageDtype};

/// A request: when it arrives (decode step), its prompt (or the request it forks), how many
/// tokens it generates, how it samples.
struct Request {
    arrives: usize,
    start: Start,
    new_tokens: usize,
    sampling: SamplingParams,
}

enum Start {
    Prompt(Vec<u32>),
    /// Continue request `n` as it stands after its prefill (its prompt and first token).
    Fork(usize),
}

/// A request being served: its sequence and every token so far (prompt included).
struct Live {
    request: usize,
    /// `None` until its first chunk ran.
    seq: Option<SeqId>,
    tokens: Vec<u32>,
    /// Tokens of `tokens` the decoder holds: the prompt is fed in chunks, then each drawn
    /// token in the next step.
    fed: usize,
    /// Length of the prompt (for a fork: its parent's tokens when it forked).
    prompt_len: usize,
    /// Generated tokens with their logprobs, the position of each in `tokens`.
    generated: Vec<(usize, f32)>,
    /// Logits rows the decoder returned: (position of the token they follow, the row).
    logits: Vec<(usize, Vec<f32>)>,
}

/// Tokens of a prompt fed per step.
const CHUNK: usize = 4;

const TOL: f64 = 1e-4;

fn sampled(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        top_k,
        top_p,
        seed,
    }
}

fn main() -> Result<()> {
    let model = Model::random(
        init::preset("tiny").context("the tiny preset")?,
        7,
        StorageDtype::F32,
    )?;
    let vocab = model.config.vocab_size as u32;
    let prompt = |seed: u32, len: usize| -> Vec<u32> {
        (0..len as u32)
            .map(|i| (seed * 31 + i * 17 + 3) % vocab)
            .collect()
    };
    let requests = [
        Request {
            arrives: 0,
            start: Start::Prompt(prompt(1, 6)),
            new_tokens: 9,
            sampling: SamplingParams::GREEDY,
        },
        Request {
            arrives: 0,
            start: Start::Prompt(prompt(2, 3)),
            new_tokens: 4,
            sampling: sampled(0.8, 0, 0.9, 11),
        },
        Request {
            arrives: 2,
            start: Start::Prompt(prompt(3, 9)),
            new_tokens: 6,
            sampling: sampled(1.2, 20, 1.0, 12),
        },
        // Shares request 2's prompt pages (fed in chunks at steps 2, 3 and 4), then samples
        // its own continuation.
        Request {
            arrives: 5,
            start: Start::Fork(2),
            new_tokens: 5,
            sampling: sampled(1.0, 0, 0.95, 13),
        },
        // Arrives when request 1 has left: takes its slot (a fresh id, the old one is stale).
        Request {
            arrives: 6,
            start: Start::Prompt(prompt(4, 4)),
            new_tokens: 5,
            sampling: sampled(0.7, 5, 1.0, 14),
        },
    ];

    let device = Device::emulated();
    let opts = DecoderOptions {
        // Small pages, so that the requests' pages interleave in the pools.
        kv_page_size: 4,
        ..DecoderOptions::new(4, 32)
    };
    let mut decoder = Decoder::<f32>::new(&device, &model, opts)?;
    let pages_at_start = decoder.free_kv_pages();
    let mut live: Vec<Live> = Vec::new();
    let mut done: Vec<Live> = Vec::new();
    let mut step = 0;
    while done.len() < requests.len() {
        // Arrivals: a prompt waits for its first chunk; a fork copies its parent as it stands
        // (prompt fed, first token drawn).
        for (n, r) in requests
            .iter()
            .enumerate()
            .filter(|(_, r)| r.arrives == step)
        {
            let entry = match &r.start {
                Start::Prompt(p) => Live {
                    request: n,
                    seq: None,
                    tokens: p.clone(),
                    fed: 0,
                    prompt_len: p.len(),
                    generated: Vec::new(),
                    logits: Vec::new(),
                },
                Start::Fork(parent) => {
                    let from = live
                        .iter()
                        .find(|l| l.request == *parent)
                        .context("the forked request is live")?;
                    let seq = from.seq.context("the forked request has started")?;
                    ensure!(
                        from.fed >= from.prompt_len,
                        "fork after the parent's prompt"
                    );
                    Live {
                        request: n,
                        seq: Some(decoder.fork(seq)?),
                        tokens: from.tokens.clone(),
                        fed: from.fed,
                        prompt_len: from.tokens.len(),
                        generated: Vec::new(),
                        logits: Vec::new(),
                    }
                }
            };
            live.push(entry);
        }
        // One batch over every live request: the next chunk of a prompt being fed (the last
        // chunk draws the first token), else a decode row feeding the last drawn token. Every
        // row asks for its last logits row, to check them.
        let rows: Vec<BatchRow> = live
            .iter()
            .map(|l| {
                let left = l.tokens.len() - l.fed;
                let take = if l.fed < l.prompt_len {
                    left.min(CHUNK)
                } else {
                    1
                };
                BatchRow {
                    seq: l.seq,
                    position: l.fed,
                    tokens: l.tokens[l.fed..l.fed + take].to_vec(),
                    logits: PrefillLogits::Last,
                    sample: (take == left).then_some(requests[l.request].sampling),
                    top_logprobs: 0,
                }
            })
            .collect();
        if !rows.is_empty() {
            let out = decoder.step_batch(&rows)?;
            for ((l, row), o) in live.iter_mut().zip(&rows).zip(out) {
                l.seq = Some(o.seq);
                l.fed += row.tokens.len();
                l.logits.push((l.fed - 1, o.logits));
                if let Some(p) = o.sampled {
                    l.generated.push((l.tokens.len(), p.logprob));
                    l.tokens.push(p.token);
                }
            }
        }
        // Departures.
        let mut r = 0;
        while r < live.len() {
            // A fork's own tokens start after its parent's (which it does not count).
            if live[r].generated.len() >= requests[live[r].request].new_tokens {
                let l = live.remove(r);
                let seq = l.seq.context("a finished request has a sequence")?;
                decoder.remove(seq)?;
                ensure!(
                    decoder.len(seq).is_err(),
                    "a removed sequence's id still answers"
                );
                done.push(l);
            } else {
                r += 1;
            }
        }
        step += 1;
        ensure!(step < 64, "the requests did not finish");
    }
    ensure!(
        decoder.free_kv_pages() == pages_at_start,
        "pages not returned: {:?} free at the end, {:?} at the start",
        decoder.free_kv_pages(),
        pages_at_start
    );

    done.sort_by_key(|l| l.request);
    for l in &done {
        let r = &requests[l.request];
        check(&model, l, &r.sampling)
            .with_context(|| format!("request {} ({:?})", l.request, r.sampling))?;
        println!(
            "request {} (arrived at step {}, {}): {:?}",
            l.request,
            r.arrives,
            match r.start {
                Start::Prompt(_) => "prompt".to_string(),
                Start::Fork(p) => format!("fork of request {p}"),
            },
            &l.tokens
        );
    }
    println!(
        "{} requests over {step} batches, {} step graphs captured; every logits row, token and \
         logprob equals the CPU reference's",
        done.len(),
        decoder.captured_graphs()
    );
    Ok(())
}

/// Checks every logits row of `l` against the definition's, every generated token against the
/// reference sampler on the definition's logits, and its logprob against the f64 log-softmax.
fn check(model: &Model, l: &Live, params: &SamplingParams) -> Result<()> {
    let logits = model.forward(&l.tokens[..l.tokens.len() - 1])?;
    for (pos, row) in &l.logits {
        let want = logits.row(*pos);
        let scale = want.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
        let diff = row.iter().zip(want).fold(0f64, |m, (&a, &b)| {
            m.max((f64::from(a) - f64::from(b)).abs())
        });
        let err = diff / scale;
        if row.len() != want.len() || err.is_nan() || err > TOL {
            bail!(
                "logits after position {pos}: relative error {:.2e}",
                diff / scale
            );
        }
    }
    for &(pos, logprob) in &l.generated {
        let row = logits.row(pos - 1);
        let want = sample::sample(row, params, pos as u64);
        if l.tokens[pos] != want {
            bail!(
                "position {pos}: sampled {}, the reference samples {want}",
                l.tokens[pos]
            );
        }
        let want_lp = sample::logprob(row, want);
        if (f64::from(logprob) - want_lp).abs() > TOL || !logprob.is_finite() {
            bail!("position {pos}: logprob {logprob}, the reference's {want_lp}");
        }
    }
    Ok(())
}
