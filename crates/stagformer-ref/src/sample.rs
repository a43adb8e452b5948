//! Token sampling: greedy, temperature, top-k, top-p, driven by a counter-based random number so
//! that the same (seed, token index) picks the same token on every run, every device and
//! whichever batch row (slot) the request is decoded in; and the chosen token's log-probability.

use crate::error::{NonFiniteLogits, RequestError};

/// How the next token is chosen (the algorithm is [`sample`]'s).
///
/// The one sampling-settings type above the kernels: the reference's [`sample`], the kernel
/// decoder's `step_sample` (`stagformer` re-exports it) and the command line all take it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Divides the logits before the softmax; 0 = greedy. Finite and ≥ 0.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = all.
    pub top_k: usize,
    /// Keep the smallest most-likely set whose probability reaches p; 1 = all. In (0, 1].
    pub top_p: f32,
    /// Seed of the counter-based random numbers: the draw for the token at index t of a request
    /// (its position in the sequence) is [`uniform`]`(seed, t)`, so equal settings pick equal
    /// tokens on every run, whatever else is decoded alongside.
    pub seed: u64,
}

impl SamplingParams {
    /// Always the most likely token (lowest id among ties).
    pub const GREEDY: SamplingParams = SamplingParams {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
    };

    /// Checks the ranges: temperature finite and ≥ 0, top_p in (0, 1]; anything else is
    /// [`RequestError::BadSampling`] naming the field.
    pub fn validate(&self) -> Result<(), RequestError> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(RequestError::BadSampling {
                field: "temperature",
                value: self.temperature.to_string(),
                reason: "must be finite and >= 0",
            });
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(RequestError::BadSampling {
                field: "top_p",
                value: self.top_p.to_string(),
                reason: "must be in (0, 1]",
            });
        }
        Ok(())
    }

    /// Whether these settings always pick the arg-max (temperature 0 or top_k 1), so no
    /// random number is drawn.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }
}

/// Checks every row's settings ([`SamplingParams::validate`]); the first bad one is
/// [`RequestError::BadRowSampling`] naming its row and field.
pub fn validate_rows(settings: &[SamplingParams]) -> Result<(), RequestError> {
    for (row, params) in settings.iter().enumerate() {
        match params.validate() {
            Ok(()) => {}
            Err(RequestError::BadSampling {
                field,
                value,
                reason,
            }) => {
                return Err(RequestError::BadRowSampling {
                    row,
                    field,
                    value,
                    reason,
                })
            }
            Err(other) => return Err(other),
        }
    }
    Ok(())
}

/// splitmix64's finaliser: a bijective 64-bit mix.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The uniform number in [0, 1) for (seed, index): 24 random bits, exact in f32. `index` is the
/// token's index in its request, never a batch row, so a request's draws are its own.
pub fn uniform(seed: u64, index: u64) -> f32 {
    let golden = 0x9E37_79B9_7F4A_7C15u64;
    let h = mix64(mix64(mix64(seed.wrapping_add(golden))) ^ index);
    (h >> 40) as f32 / (1u64 << 24) as f32
}

/// The log-probability of `token` under the raw distribution softmax(logits), in f64:
/// `l_token − max − ln Σ exp(l − max)`. Temperature and filters do not enter (the logprob a
/// caller reports is the model's, as vLLM's default). `token` must be in range.
pub fn logprob(logits: &[f32], token: u32) -> f64 {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &l| m.max(f64::from(l)));
    let sum: f64 = logits.iter().map(|&l| (f64::from(l) - max).exp()).sum();
    f64::from(logits[token as usize]) - max - sum.ln()
}

/// The `n` most likely tokens of `logits` (all of them when `n` exceeds the vocabulary), most
/// likely first (the lower id among equal logits), each with its [`logprob`] in f64: the
/// "top logprobs" a server reports beside the chosen token. `logits` must be finite.
pub fn top_logprobs(logits: &[f32], n: usize) -> Vec<(u32, f64)> {
    let n = n.min(logits.len());
    if n == 0 {
        return Vec::new();
    }
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &l| m.max(f64::from(l)));
    let log_sum = logits
        .iter()
        .map(|&l| (f64::from(l) - max).exp())
        .sum::<f64>()
        .ln();
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if n < order.len() {
        order.select_nth_unstable_by(n - 1, by_logit);
        order.truncate(n);
    }
    order.sort_unstable_by(by_logit);
    order
        .into_iter()
        .map(|t| (t, f64::from(logits[t as usize]) - max - log_sum))
        .collect()
}

/// The highest logit's id, the lowest id among ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// [`sample`] after checking that every logit is finite: a NaN or infinity (an overflowed
/// activation) is an error naming `row` and the token id, never a token.
pub fn try_sample(
    logits: &[f32],
    params: &SamplingParams,
    index: u64,
    row: usize,
) -> Result<u32, NonFiniteLogits> {
    NonFiniteLogits::check(logits, logits.len(), row)?;
    Ok(sample(logits, params, index))
}

/// Picks a token from `logits` (one row) for the token at `index` of its request. The logits must be finite
/// (which token a NaN yields is unspecified); [`try_sample`] checks that.
/// 1. greedy when temperature = 0 or top_k = 1;
/// 2. candidates sorted by logit, highest first, ties by lower id; the first top_k kept;
/// 3. weights w = exp((l − l_max) / T) summed in f64;
/// 4. the shortest prefix whose weight reaches top_p · total kept (at least one);
/// 5. u = uniform(seed, index) · kept weight; the first candidate whose running sum exceeds u
///    is chosen.
pub fn sample(logits: &[f32], params: &SamplingParams, index: u64) -> u32 {
    if params.is_greedy() || logits.len() <= 1 {
        return argmax(logits);
    }
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if params.top_k > 0 && params.top_k < order.len() {
        order.select_nth_unstable_by(params.top_k - 1, by_logit);
        order.truncate(params.top_k);
    }
    order.sort_unstable_by(by_logit);
    let max = f64::from(logits[order[0] as usize]);
    let t = f64::from(params.temperature);
    let weights: Vec<f64> = order
        .iter()
        .map(|&id| ((f64::from(logits[id as usize]) - max) / t).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut kept = weights.len();
    if params.top_p < 1.0 {
        let target = f64::from(params.top_p) * total;
        let mut acc = 0.0;
        for (n, w) in weights.iter().enumerate() {
            acc += w;
            if acc >= target {
                kept = n + 1;
                break;
            }
        }
    }
    let kept_total: f64 = weights[..kept].iter().sum();
    let u = f64::from(uniform(params.seed, index)) * kept_total;
    let mut acc = 0.0;
    for (n, w) in weights[..kept].iter().enumerate() {
        acc += w;
        if acc > u {
            return order[n];
        }
    }
    order[kept - 1]
}

#[cfg(test)]
mod tests {

    #[test]
    fn top_logprobs_are_the_most_likely_tokens_in_order() {
        let logits = [0.5f32, 2.0, -1.0, 2.0, 1.0];
        let top = top_logprobs(&logits, 3);
        let ids: Vec<u32> = top.iter().map(|&(t, _)| t).collect();
        assert_eq!(ids, vec![1, 3, 4]);
        for &(t, lp) in &top {
            assert!((lp - logprob(&logits, t)).abs() < 1e-12);
        }
        let total: f64 = top_logprobs(&logits, 99)
            .iter()
            .map(|&(_, lp)| lp.exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert!(top_logprobs(&logits, 0).is_empty());
    }
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed,
        }
    }

    #[test]
    fn argmax_breaks_ties_by_lowest_id() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn top_k_one_is_argmax_whatever_the_seed() {
        let logits = [0.1, 2.0, 1.9, 2.0, -5.0];
        for seed in 0..20 {
            assert_eq!(sample(&logits, &params(1.5, 1, 1.0, seed), seed), 1);
        }
    }

    #[test]
    fn same_seed_same_token_and_seeds_differ() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 / 50.0).collect();
        let p = params(1.0, 0, 1.0, 42);
        let a: Vec<u32> = (0..50).map(|index| sample(&logits, &p, index)).collect();
        let b: Vec<u32> = (0..50).map(|index| sample(&logits, &p, index)).collect();
        assert_eq!(a, b);
        let c: Vec<u32> = (0..50)
            .map(|index| sample(&logits, &params(1.0, 0, 1.0, 43), index))
            .collect();
        assert_ne!(a, c);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities ≈ 0.87, 0.12, 0.002...: top_p 0.5 leaves only id 2.
        let logits = [0.0, 2.0, 4.0, -3.0];
        for step in 0..100 {
            assert_eq!(sample(&logits, &params(1.0, 0, 0.5, 7), step), 2);
        }
    }

    #[test]
    fn non_finite_logits_are_an_error_naming_row_and_id() {
        let p = params(1.0, 0, 1.0, 1);
        assert_eq!(try_sample(&[0.5, 1.0], &p, 0, 3), Ok(1));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let err = try_sample(&[0.5, 1.0, bad], &p, 0, 3).unwrap_err();
            assert_eq!((err.row, err.column), (3, 2));
            let greedy = try_sample(&[bad, 1.0], &SamplingParams::GREEDY, 0, 0);
            assert!(greedy.is_err());
        }
    }

    #[test]
    fn uniform_is_in_unit_interval() {
        for i in 0..10_000 {
            let u = uniform(1, i);
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn logprobs_are_a_log_softmax() {
        let logits = [0.5f32, -1.0, 2.0, 2.0, 30.0];
        let total: f64 = (0..5).map(|t| logprob(&logits, t).exp()).sum();
        assert!((total - 1.0).abs() < 1e-12, "{total}");
        // Shift invariance, and equal logits, equal logprobs.
        let shifted: Vec<f32> = logits.iter().map(|l| l - 7.0).collect();
        assert!((logprob(&logits, 0) - logprob(&shifted, 0)).abs() < 1e-12);
        assert_eq!(logprob(&logits, 2), logprob(&logits, 3));
    }
}
