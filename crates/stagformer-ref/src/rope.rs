//! RoPE frequencies, with the scaling types Hugging Face `transformers` applies to Llama and
//! Mistral models (docs/MODEL.md, "RoPE scaling").
//!
//! The frequencies are computed here once, in f64, and every implementation takes them from
//! here: the reference rotates with them and the kernel decoder builds its cos/sin table from
//! them, so a scaling rule cannot differ between the two.

/// How the RoPE frequencies are derived from θ (`rope_type` in a Hugging Face config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// `default`: `inv_freq[m]` = θ^(−2m/hd).
    Default,
    /// `linear` (position interpolation): every frequency divided by `factor`.
    Linear { factor: f64 },
    /// `llama3` (Llama 3.1/3.2): long wavelengths divided by `factor`, short ones kept, the band
    /// between interpolated smoothly.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// `dynamic` (NTK-aware): θ grows with the sequence length once it exceeds
    /// `max_position_embeddings`; below that it is `default`.
    Dynamic { factor: f64 },
}

impl RopeScaling {
    /// The `rope_type` name, as Hugging Face writes it.
    pub fn rope_type(&self) -> &'static str {
        match self {
            RopeScaling::Default => "default",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::Dynamic { .. } => "dynamic",
        }
    }

    /// `inv_freq[m]` for m < head_dim / 2, for a model serving sequences of up to
    /// `max_position_embeddings` positions (the contract's limit).
    ///
    /// `dynamic` only changes θ for a sequence longer than `max_position_embeddings`, which is
    /// never served, so within the limit it equals `default` — exactly what transformers computes
    /// for such sequences ([`RopeScaling::inv_freq_for_length`] gives the longer case).
    pub fn inv_freq(
        &self,
        head_dim: usize,
        theta: f64,
        max_position_embeddings: usize,
    ) -> Vec<f64> {
        self.inv_freq_for_length(
            head_dim,
            theta,
            max_position_embeddings,
            max_position_embeddings,
        )
    }

    /// `inv_freq[m]` as transformers computes it for a sequence of `seq_len` positions (only
    /// `dynamic` depends on the length).
    pub fn inv_freq_for_length(
        &self,
        head_dim: usize,
        theta: f64,
        max_position_embeddings: usize,
        seq_len: usize,
    ) -> Vec<f64> {
        let dim = head_dim as f64;
        let default = |base: f64| crate::ops::rope_inv_freq(head_dim, base);
        match *self {
            RopeScaling::Default => default(theta),
            RopeScaling::Linear { factor } => {
                default(theta).into_iter().map(|f| f / factor).collect()
            }
            RopeScaling::Dynamic { factor } => {
                // transformers: seq_len = max(seq_len, max_position_embeddings) and
                // base · ((factor · seq_len / max_pos) − (factor − 1))^(dim / (dim − 2)).
                let max_pos = max_position_embeddings as f64;
                let len = (seq_len as f64).max(max_pos);
                let grown = (factor * len / max_pos) - (factor - 1.0);
                let base = if len > max_pos {
                    theta * grown.powf(dim / (dim - 2.0))
                } else {
                    theta
                };
                default(base)
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old_len = original_max_position_embeddings as f64;
                let low_freq_wavelen = old_len / low_freq_factor;
                let high_freq_wavelen = old_len / high_freq_factor;
                default(theta)
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_freq_wavelen {
                            f
                        } else if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            let smooth = (old_len / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_linear_by_hand() {
        // hd 4, θ 100: inv_freq = [1, 100^(-1/2)] = [1, 0.1].
        let f = RopeScaling::Default.inv_freq(4, 100.0, 16);
        assert_eq!(f, vec![1.0, 0.1]);
        let f = RopeScaling::Linear { factor: 4.0 }.inv_freq(4, 100.0, 16);
        assert_eq!(f, vec![0.25, 0.025]);
    }

    #[test]
    fn dynamic_is_default_within_the_limit_and_grows_theta_past_it() {
        let dynamic = RopeScaling::Dynamic { factor: 2.0 };
        assert_eq!(
            dynamic.inv_freq(4, 100.0, 16),
            RopeScaling::Default.inv_freq(4, 100.0, 16)
        );
        // seq_len 32 = 2 · max_pos: base = 100 · (2·2 − 1)^(4/2) = 900, inv_freq[1] = 1/30.
        let f = dynamic.inv_freq_for_length(4, 100.0, 16, 32);
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 1.0 / 30.0).abs() < 1e-15, "{}", f[1]);
    }

    #[test]
    fn llama3_keeps_short_wavelengths_divides_long_ones_and_blends_between() {
        // hd 8, θ 10000: inv_freq = 1, 0.1, 0.01, 0.001; wavelengths 2π/f ≈ 6.3, 63, 628, 6283.
        // original length 1000, low 1, high 4: keep below 250, divide above 1000, blend between.
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 1000,
        };
        let f = s.inv_freq(8, 10000.0, 4096);
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 0.1).abs() < 1e-15);
        let wavelen = 2.0 * std::f64::consts::PI / 0.01;
        let smooth = (1000.0 / wavelen - 1.0) / 3.0;
        let blended = (1.0 - smooth) * 0.01 / 8.0 + smooth * 0.01;
        assert!((f[2] - blended).abs() < 1e-15, "{} vs {blended}", f[2]);
        assert!(f[2] > 0.01 / 8.0 && f[2] < 0.01);
        assert!((f[3] - 0.001 / 8.0).abs() < 1e-15);
    }
}
