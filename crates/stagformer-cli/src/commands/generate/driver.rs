//! The generation loop shared by every device, over one or several requests decoded as one
//! continuous batch: each request's first token comes from its prompt's logits, each later one
//! from a decode step over every request still running, until that request's end-of-sequence
//! token or token limit. A request waiting for a slot joins when one frees, so the batch never
//! holds more than `max_batch` requests.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use stagformer_ref::sample::SamplingParams;

/// One device's way to run the model on a batch of sequences, each named by the caller's
/// request index.
pub trait Generator {
    /// Runs `request`'s prompt in a free slot and picks its first new token with `params`
    /// (drawn at the chosen token's position, as the steps draw).
    fn admit(&mut self, request: usize, prompt: &[u32], params: SamplingParams) -> Result<u32>;
    /// Feeds `tokens[r]` to `requests[r]` in one step and picks each request's next token
    /// with its own settings.
    fn step(&mut self, requests: &[usize], tokens: &[u32]) -> Result<Vec<u32>>;
    /// Frees `request`'s slot.
    fn release(&mut self, request: usize) -> Result<()>;
}

/// Why a request's generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The model produced this end-of-sequence id (not emitted).
    Eos(u32),
    /// `--max-new-tokens` tokens were produced.
    MaxNewTokens,
    /// The model's positions ran out before `--max-new-tokens`.
    Capacity,
}

/// How one request went.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub stop: Stop,
    /// Tokens emitted.
    pub generated: usize,
    /// Decode steps this request took part in (the first token comes with the prompt).
    pub steps: usize,
    pub prompt_time: Duration,
    /// From the end of its prefill to its last token.
    pub generation_time: Duration,
}

/// What to generate for one request.
pub struct Limits<'a> {
    /// At most this many tokens.
    pub max_tokens: usize,
    /// `max_tokens` is the model's capacity, lower than `--max-new-tokens`.
    pub clamped: bool,
    /// Stop before emitting any of these.
    pub eos: &'a [u32],
}

impl Limits<'_> {
    fn limit_stop(&self) -> Stop {
        if self.clamped {
            Stop::Capacity
        } else {
            Stop::MaxNewTokens
        }
    }
}

/// One request: its prompt, its limits and its sampling settings.
pub struct Request<'a> {
    pub prompt: &'a [u32],
    pub limits: Limits<'a>,
    pub params: SamplingParams,
}

/// The whole batch's totals.
pub struct Totals {
    /// Batched decode steps run.
    pub steps: usize,
    /// From the first prefill to the last token.
    pub time: Duration,
}

/// A request in the batch: the token it feeds next and its outcome so far.
struct Running {
    request: usize,
    next: u32,
    started: Instant,
}

/// Decodes `requests` as one continuous batch of at most `max_batch` rows, admitting them in
/// order as slots free. `emit(k, id)` receives request k's tokens in order; the outcomes come
/// back in request order.
pub fn generate(
    engine: &mut dyn Generator,
    requests: &[Request],
    max_batch: usize,
    emit: &mut dyn FnMut(usize, u32) -> Result<()>,
) -> Result<(Vec<Outcome>, Totals)> {
    if max_batch == 0 {
        bail!("the batch needs at least one row (--max-batch)");
    }
    let mut outcomes: Vec<Outcome> = requests
        .iter()
        .map(|r| Outcome {
            stop: r.limits.limit_stop(),
            generated: 0,
            steps: 0,
            prompt_time: Duration::ZERO,
            generation_time: Duration::ZERO,
        })
        .collect();
    let start = Instant::now();
    let mut running: Vec<Running> = Vec::with_capacity(max_batch);
    let mut waiting = 0..requests.len();
    let mut steps = 0;
    loop {
        // Fill free slots in request order; a request done with its first token frees its
        // slot at once.
        while running.len() < max_batch {
            let Some(k) = waiting.next() else { break };
            let request = &requests[k];
            if request.limits.max_tokens == 0 {
                continue;
            }
            let began = Instant::now();
            let first = engine.admit(k, request.prompt, request.params)?;
            outcomes[k].prompt_time = began.elapsed();
            let started = Instant::now();
            if accept(&request.limits, &mut outcomes[k], first, k, emit)? {
                running.push(Running {
                    request: k,
                    next: first,
                    started,
                });
            } else {
                outcomes[k].generation_time = started.elapsed();
                engine.release(k)?;
            }
        }
        if running.is_empty() {
            break;
        }
        let ids: Vec<usize> = running.iter().map(|r| r.request).collect();
        let fed: Vec<u32> = running.iter().map(|r| r.next).collect();
        let picked = engine.step(&ids, &fed)?;
        if picked.len() != ids.len() {
            bail!(
                "a decode step of {} rows returned {} tokens",
                ids.len(),
                picked.len()
            );
        }
        steps += 1;
        let mut still = Vec::with_capacity(running.len());
        for (mut row, token) in running.into_iter().zip(picked) {
            let k = row.request;
            outcomes[k].steps += 1;
            if accept(&requests[k].limits, &mut outcomes[k], token, k, emit)? {
                row.next = token;
                still.push(row);
            } else {
                outcomes[k].generation_time = row.started.elapsed();
                engine.release(k)?;
            }
        }
        running = still;
    }
    let totals = Totals {
        steps,
        time: start.elapsed(),
    };
    Ok((outcomes, totals))
}

/// Takes `token` for request k: false (with the stop recorded) when it is an EOS, or when it
/// was the request's last one.
fn accept(
    limits: &Limits,
    outcome: &mut Outcome,
    token: u32,
    k: usize,
    emit: &mut dyn FnMut(usize, u32) -> Result<()>,
) -> Result<bool> {
    if limits.eos.contains(&token) {
        outcome.stop = Stop::Eos(token);
        return Ok(false);
    }
    emit(k, token)?;
    outcome.generated += 1;
    if outcome.generated == limits.max_tokens {
        outcome.stop = limits.limit_stop();
        return Ok(false);
    }
    Ok(true)
}

/// `n` per second of `time`, for the summary lines.
pub fn rate(n: usize, time: Duration) -> String {
    let secs = time.as_secs_f64();
    if n == 0 || secs == 0.0 {
        "-".into()
    } else {
        format!("{:.1}", n as f64 / secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Request k produces 10k + 10, 10k + 11, … and the engine records every step's rows and
    /// the most rows ever held at once.
    #[derive(Default)]
    struct Counter {
        fed: Vec<Vec<(usize, u32)>>,
        held: Vec<usize>,
        most_held: usize,
        admitted: Vec<usize>,
    }

    impl Generator for Counter {
        fn admit(&mut self, k: usize, _: &[u32], _: SamplingParams) -> Result<u32> {
            self.held.push(k);
            self.admitted.push(k);
            self.most_held = self.most_held.max(self.held.len());
            Ok(10 * k as u32 + 10)
        }
        fn step(&mut self, requests: &[usize], tokens: &[u32]) -> Result<Vec<u32>> {
            assert!(requests.iter().all(|k| self.held.contains(k)));
            self.fed.push(
                requests
                    .iter()
                    .copied()
                    .zip(tokens.iter().copied())
                    .collect(),
            );
            Ok(tokens.iter().map(|t| t + 1).collect())
        }
        fn release(&mut self, k: usize) -> Result<()> {
            let at = self.held.iter().position(|&h| h == k).expect("held");
            self.held.remove(at);
            Ok(())
        }
    }

    fn request(max_tokens: usize, clamped: bool, eos: &[u32]) -> Request<'_> {
        Request {
            prompt: &[1],
            limits: Limits {
                max_tokens,
                clamped,
                eos,
            },
            params: SamplingParams::GREEDY,
        }
    }

    /// Runs `requests` in batches of `max_batch`: outcomes, tokens per request, the engine.
    fn run(requests: &[Request], max_batch: usize) -> (Vec<Outcome>, Vec<Vec<u32>>, Counter) {
        let mut engine = Counter::default();
        let mut out = vec![Vec::new(); requests.len()];
        let (outcomes, _) = generate(&mut engine, requests, max_batch, &mut |k, id| {
            out[k].push(id);
            Ok(())
        })
        .unwrap();
        assert!(engine.held.is_empty(), "every slot released");
        (outcomes, out, engine)
    }

    #[test]
    fn stops_at_eos_without_emitting_it() {
        let (o, out, e) = run(&[request(10, false, &[99, 13])], 1);
        assert_eq!(o[0].stop, Stop::Eos(13));
        assert_eq!(out[0], [10, 11, 12]);
        let fed: Vec<u32> = e.fed.iter().map(|s| s[0].1).collect();
        assert_eq!(fed, [10, 11, 12]);
        assert_eq!((o[0].generated, o[0].steps), (3, 3));
        // EOS as the very first token: nothing emitted.
        let (o, out, _) = run(&[request(10, false, &[10])], 1);
        assert_eq!((o[0].stop, out[0].len()), (Stop::Eos(10), 0));
    }

    #[test]
    fn stops_at_the_limit_and_says_which() {
        let (o, out, e) = run(&[request(3, false, &[])], 1);
        assert_eq!(o[0].stop, Stop::MaxNewTokens);
        assert_eq!(out[0], [10, 11, 12]);
        // The last token is emitted but never fed back.
        assert_eq!(e.fed.len(), 2);
        let (o, _, _) = run(&[request(3, true, &[])], 1);
        assert_eq!(o[0].stop, Stop::Capacity);
        let (o, out, e) = run(&[request(0, false, &[])], 1);
        assert_eq!((o[0].stop, out[0].len()), (Stop::MaxNewTokens, 0));
        assert!(e.admitted.is_empty(), "nothing to generate: no prefill");
    }

    #[test]
    fn requests_finish_at_their_own_steps_and_waiting_ones_join() {
        let eos = [23];
        let requests = [
            request(5, false, &[]),
            request(9, false, &eos), // 20, 21, 22, then EOS 23
            request(2, true, &[]),
            request(5, false, &[]),
        ];
        let (o, out, e) = run(&requests, 2);
        assert_eq!(e.most_held, 2);
        assert_eq!(e.admitted, [0, 1, 2, 3]);
        assert_eq!(out[0], [10, 11, 12, 13, 14]);
        assert_eq!(out[1], [20, 21, 22]);
        assert_eq!(out[2], [30, 31]);
        assert_eq!(out[3], [40, 41, 42, 43, 44]);
        assert_eq!(
            o.iter().map(|o| o.stop).collect::<Vec<_>>(),
            [
                Stop::MaxNewTokens,
                Stop::Eos(23),
                Stop::Capacity,
                Stop::MaxNewTokens
            ]
        );
        // Request 2 joins when request 1 stops at the third step, request 3 when request 0
        // and request 2 stop together at the fourth.
        let rows: Vec<Vec<usize>> = e
            .fed
            .iter()
            .map(|s| s.iter().map(|r| r.0).collect())
            .collect();
        assert_eq!(rows[0], [0, 1]);
        assert_eq!(rows[3], [0, 2]);
        assert_eq!(rows[4], [3]);
        // Every row fed is its request's previous token.
        for step in &e.fed {
            for &(k, t) in step {
                assert!(out[k].contains(&t), "{k} fed {t}");
            }
        }
    }

    #[test]
    fn an_empty_batch_is_refused() {
        let mut engine = Counter::default();
        assert!(generate(
            &mut engine,
            &[request(1, false, &[])],
            0,
            &mut |_, _| Ok(())
        )
        .is_err());
    }
}
