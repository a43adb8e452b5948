//! Continuous batching on the emulated device: requests arrive and finish at different steps,
//! each with its own sampling settings, in one kernel decoder whose KV caches live in page
//! pools; one request forks another after its prompt (the two share the prompt's pages until
//! they diverge). Every decode step feeds all live requests at once, greedy and sampled rows
//! together, and the graph cache holds one graph per row count whatever the settings.
//!
//! ```sh
//! cargo run --release -p stagformer --example continuous_batching
//! ```
//!
//! Each request's tokens and logprobs are then checked against the CPU reference: the
//! definition's logits over the request's whole sequence (`Model::forward`), the reference
//! sampler on them at every position (`stagformer_ref::sample::sample`, the same counter-based
//! draw), and `log_softmax` in f64. Exits non-zero on any difference, and when a page is not
//! returned after the last request leaves.

use anyhow::{bail, ensure, Context, Result};
use stagformer::{Decoder, DecoderOptions, SamplingParams, SeqId};
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
    seq: SeqId,
    tokens: Vec<u32>,
    /// Generated tokens with their logprobs, the position of each in `tokens`.
    generated: Vec<(usize, f32)>,
}

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
        // Shares request 2's prompt pages, then samples its own continuation.
        Request {
            arrives: 3,
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
        // Arrivals: a prompt is prefilled and its first token sampled from the prefill's last
        // logits on the host (the same sampler, index = the prompt's length); a fork copies
        // its parent as it stands.
        for (n, r) in requests
            .iter()
            .enumerate()
            .filter(|(_, r)| r.arrives == step)
        {
            let entry = match &r.start {
                Start::Prompt(p) => {
                    let (seq, logits) = decoder.prefill(p)?;
                    let last = &logits[logits.len() - vocab as usize..];
                    let token = sample::sample(last, &r.sampling, p.len() as u64);
                    let logprob = sample::logprob(last, token) as f32;
                    let mut tokens = p.clone();
                    tokens.push(token);
                    Live {
                        request: n,
                        seq,
                        tokens,
                        generated: vec![(p.len(), logprob)],
                    }
                }
                Start::Fork(parent) => {
                    let from = live
                        .iter()
                        .find(|l| l.request == *parent)
                        .context("the forked request is live")?;
                    Live {
                        request: n,
                        seq: decoder.fork(from.seq)?,
                        tokens: from.tokens.clone(),
                        generated: Vec::new(),
                    }
                }
            };
            live.push(entry);
        }
        // One decode step over every live request, each row with its own settings.
        let seqs: Vec<SeqId> = live.iter().map(|l| l.seq).collect();
        let fed: Vec<u32> = live.iter().map(|l| *l.tokens.last().unwrap()).collect();
        let settings: Vec<SamplingParams> =
            live.iter().map(|l| requests[l.request].sampling).collect();
        if !seqs.is_empty() {
            let picked = decoder.step_sample(&seqs, &fed, &settings)?;
            for (l, p) in live.iter_mut().zip(picked) {
                l.generated.push((l.tokens.len(), p.logprob));
                l.tokens.push(p.token);
            }
        }
        // Departures.
        let mut r = 0;
        while r < live.len() {
            // A fork's own tokens start after its parent's (which it does not count).
            if live[r].generated.len() >= requests[live[r].request].new_tokens {
                let l = live.remove(r);
                decoder.remove(l.seq)?;
                ensure!(
                    decoder.len(l.seq).is_err(),
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
        "{} requests over {step} decode steps, {} step graphs captured; every token and logprob \
         equals the CPU reference's",
        done.len(),
        decoder.captured_graphs()
    );
    Ok(())
}

/// Checks every generated token of `l` against the reference sampler on the definition's
/// logits, and its logprob against the f64 log-softmax.
fn check(model: &Model, l: &Live, params: &SamplingParams) -> Result<()> {
    let logits = model.forward(&l.tokens[..l.tokens.len() - 1])?;
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
