//! The generation loop shared by every device: the first token from the prompt's logits, each
//! later one from a decode step, until an end-of-sequence token or the token limit.

use std::time::{Duration, Instant};

use anyhow::Result;

/// One device's way to run the model on a single sequence.
pub trait Generator {
    /// Runs the prompt and picks the first new token.
    fn prefill(&mut self, prompt: &[u32]) -> Result<u32>;
    /// Feeds `token` and picks the next one; `step` counts from 1.
    fn step(&mut self, token: u32, step: u64) -> Result<u32>;
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The model produced this end-of-sequence id (not emitted).
    Eos(u32),
    /// `--max-new-tokens` tokens were produced.
    MaxNewTokens,
    /// The model's positions ran out before `--max-new-tokens`.
    Capacity,
}

pub struct Outcome {
    pub stop: Stop,
    /// Tokens emitted.
    pub generated: usize,
    /// Decode steps run (the first token comes with the prompt).
    pub steps: usize,
    pub prompt_time: Duration,
    pub generation_time: Duration,
}

/// What to generate.
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

pub fn generate(
    engine: &mut dyn Generator,
    prompt: &[u32],
    limits: &Limits,
    emit: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<Outcome> {
    let mut outcome = Outcome {
        stop: limits.limit_stop(),
        generated: 0,
        steps: 0,
        prompt_time: Duration::ZERO,
        generation_time: Duration::ZERO,
    };
    if limits.max_tokens == 0 {
        return Ok(outcome);
    }
    let start = Instant::now();
    let mut next = engine.prefill(prompt)?;
    outcome.prompt_time = start.elapsed();
    let start = Instant::now();
    outcome.stop = loop {
        if limits.eos.contains(&next) {
            break Stop::Eos(next);
        }
        emit(next)?;
        outcome.generated += 1;
        if outcome.generated == limits.max_tokens {
            break limits.limit_stop();
        }
        next = engine.step(next, outcome.generated as u64)?;
        outcome.steps += 1;
    };
    outcome.generation_time = start.elapsed();
    Ok(outcome)
}

/// `n` per second of `time`, for the summary line.
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

    /// Produces 10, 11, 12, … and records what it was fed.
    struct Counter {
        fed: Vec<u32>,
    }

    impl Generator for Counter {
        fn prefill(&mut self, _: &[u32]) -> Result<u32> {
            Ok(10)
        }
        fn step(&mut self, token: u32, _: u64) -> Result<u32> {
            self.fed.push(token);
            Ok(token + 1)
        }
    }

    fn run(max_tokens: usize, clamped: bool, eos: &[u32]) -> (Outcome, Vec<u32>, Vec<u32>) {
        let mut engine = Counter { fed: Vec::new() };
        let mut out = Vec::new();
        let limits = Limits {
            max_tokens,
            clamped,
            eos,
        };
        let outcome = generate(&mut engine, &[1], &limits, &mut |id| {
            out.push(id);
            Ok(())
        })
        .unwrap();
        (outcome, out, engine.fed)
    }

    #[test]
    fn stops_at_eos_without_emitting_it() {
        let (o, out, fed) = run(10, false, &[99, 13]);
        assert_eq!(o.stop, Stop::Eos(13));
        assert_eq!(out, [10, 11, 12]);
        assert_eq!(fed, [10, 11, 12]);
        assert_eq!((o.generated, o.steps), (3, 3));
        // EOS as the very first token: nothing emitted.
        let (o, out, _) = run(10, false, &[10]);
        assert_eq!((o.stop, out.len()), (Stop::Eos(10), 0));
    }

    #[test]
    fn stops_at_the_limit_and_says_which() {
        let (o, out, fed) = run(3, false, &[]);
        assert_eq!(o.stop, Stop::MaxNewTokens);
        assert_eq!(out, [10, 11, 12]);
        // The last token is emitted but never fed back.
        assert_eq!(fed, [10, 11]);
        let (o, _, _) = run(3, true, &[]);
        assert_eq!(o.stop, Stop::Capacity);
        let (o, out, _) = run(0, false, &[]);
        assert_eq!((o.stop, out.len()), (Stop::MaxNewTokens, 0));
    }
}
