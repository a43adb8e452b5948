//! Random checkpoints (test and benchmark models) and the named presets.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;

use crate::checkpoint::{self, Element, EncodedTensor, StorageDtype, TensorSource};
use crate::config::Config;
use crate::error::{Error, LoadError};
use crate::weights::{expected_tensors, TensorRole, TensorSpec, Weights};

/// Mixes `seed` and a tensor's index into an independent stream seed (splitmix64 finaliser), so
/// tensors can be drawn in parallel and each tensor's values do not depend on the others.
fn tensor_seed(seed: u64, index: usize) -> u64 {
    let mut z = seed
        ^ (index as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Values for one tensor: projections ~ N(0, 1/fan_in) so activations keep their scale through
/// depth, norm gains near 1, embeddings ~ N(0, 1), mix weights around 1/p.
fn draw(spec: &TensorSpec, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = spec.shape.iter().product();
    let mut normal = move || -> f32 { rng.sample(StandardNormal) };
    match spec.role {
        TensorRole::Embedding => (0..n).map(|_| normal()).collect(),
        TensorRole::Norm => (0..n).map(|_| 1.0 + 0.1 * normal()).collect(),
        TensorRole::Linear => {
            let std = 1.0 / (spec.shape[1] as f32).sqrt();
            (0..n).map(|_| std * normal()).collect()
        }
        TensorRole::OutputMix => {
            let base = 1.0 / n as f32;
            (0..n).map(|_| base + 0.2 * normal()).collect()
        }
    }
}

/// Random weights for `cfg`, drawn from `seed`, rounded through `dtype` so that a checkpoint
/// written in that dtype loads back to exactly these values.
pub fn random_weights(cfg: &Config, seed: u64, dtype: StorageDtype) -> Weights {
    random_weights_with_progress(cfg, seed, dtype, |_, _| {})
}

/// As [`random_weights`], calling `progress(drawn, total)` (parameters) as each tensor is
/// drawn. Tensors are drawn in parallel, so `progress` is called from several threads.
pub fn random_weights_with_progress(
    cfg: &Config,
    seed: u64,
    dtype: StorageDtype,
    progress: impl Fn(u64, u64) + Sync,
) -> Weights {
    let specs = expected_tensors(cfg);
    let counter = Counter::new(&specs);
    let values: BTreeMap<_, _> = specs
        .into_par_iter()
        .enumerate()
        .map(|(i, spec)| {
            let mut data = draw(&spec, tensor_seed(seed, i));
            round_through(&mut data, dtype);
            counter.add(data.len(), &progress);
            (spec.name, (spec.shape, data))
        })
        .collect();
    Weights::assemble(cfg, values)
}

/// Parameters drawn so far, shared by the drawing threads.
struct Counter {
    done: std::sync::atomic::AtomicU64,
    total: u64,
}

impl Counter {
    fn new(specs: &[TensorSpec]) -> Self {
        let total = specs
            .iter()
            .map(|s| s.shape.iter().product::<usize>() as u64)
            .sum();
        Counter {
            done: std::sync::atomic::AtomicU64::new(0),
            total,
        }
    }

    fn add(&self, n: usize, progress: &(impl Fn(u64, u64) + Sync)) {
        use std::sync::atomic::Ordering;
        let done = self.done.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        progress(done, self.total);
    }
}

fn round_through(data: &mut [f32], dtype: StorageDtype) {
    match dtype {
        StorageDtype::F32 => {}
        StorageDtype::Bf16 => data
            .iter_mut()
            .for_each(|v| *v = half::bf16::from_f32(*v).to_f32()),
        StorageDtype::F16 => data
            .iter_mut()
            .for_each(|v| *v = half::f16::from_f32(*v).to_f32()),
    }
}

/// The random weights of [`random_weights`] as a [`TensorSource`]: each tensor is drawn when it
/// is read, so a device decoder can be built without the whole model in host f32.
#[derive(Debug, Clone)]
pub struct RandomWeights {
    config: Config,
    seed: u64,
    dtype: StorageDtype,
    /// Name → (index in `expected_tensors`, which seeds its stream; spec).
    specs: HashMap<String, (usize, TensorSpec)>,
}

impl RandomWeights {
    /// The weights [`write_random_checkpoint`] would write for `config`, `seed` and `dtype`,
    /// drawn tensor by tensor when read (each tensor from its own stream, so any order gives
    /// the same values). An invalid `config` is [`Error::Config`].
    pub fn new(config: Config, seed: u64, dtype: StorageDtype) -> Result<Self, Error> {
        config.validate()?;
        let specs = expected_tensors(&config)
            .into_iter()
            .enumerate()
            .map(|(i, spec)| (spec.name.clone(), (i, spec)))
            .collect();
        Ok(RandomWeights {
            config,
            seed,
            dtype,
            specs,
        })
    }
}

impl TensorSource for RandomWeights {
    fn config(&self) -> &Config {
        &self.config
    }

    fn read<E: Element>(&self, name: &str) -> Result<Vec<E>, LoadError> {
        let (i, spec) = self
            .specs
            .get(name)
            .ok_or_else(|| LoadError::MissingTensor {
                name: name.to_owned(),
            })?;
        let mut data = draw(spec, tensor_seed(self.seed, *i));
        round_through(&mut data, self.dtype);
        Ok(data.into_iter().map(E::from_f32).collect())
    }
}

/// Writes a random checkpoint (`config.json` + safetensors, `shards` files) for `cfg` to `dir`.
pub fn write_random_checkpoint(
    cfg: &Config,
    seed: u64,
    dtype: StorageDtype,
    shards: usize,
    dir: &Path,
) -> Result<(), Error> {
    write_random_checkpoint_with_progress(cfg, seed, dtype, shards, dir, |_, _| {})
}

/// As [`write_random_checkpoint`], calling `progress(drawn, total)` (parameters) as each tensor
/// is drawn, from the drawing threads; the files are written after the last call.
pub fn write_random_checkpoint_with_progress(
    cfg: &Config,
    seed: u64,
    dtype: StorageDtype,
    shards: usize,
    dir: &Path,
    progress: impl Fn(u64, u64) + Sync,
) -> Result<(), Error> {
    cfg.validate()?;
    // Checked before the (possibly large) weights are drawn and written, so a config.json
    // that cannot be replaced leaves no half-written checkpoint.
    crate::files::check_replaceable(&dir.join(checkpoint::CONFIG_FILE))?;
    let specs = expected_tensors(cfg);
    let counter = Counter::new(&specs);
    let tensors: Vec<EncodedTensor> = specs
        .into_par_iter()
        .enumerate()
        .map(|(i, spec)| {
            let data = draw(&spec, tensor_seed(seed, i));
            counter.add(data.len(), &progress);
            EncodedTensor {
                bytes: checkpoint::encode(&data, dtype),
                name: spec.name,
                shape: spec.shape,
                dtype,
            }
        })
        .collect();
    checkpoint::write_tensors(dir, &tensors, shards)?;
    let path = dir.join(checkpoint::CONFIG_FILE);
    let text = serde_json::to_string_pretty(&cfg.to_json()).map_err(|e| LoadError::Write {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    crate::files::write_replacing(&path, (text + "\n").as_bytes())?;
    Ok(())
}

/// Named model shapes: `tiny` for tests and demos, the others for benchmarks. The sized ones
/// are named by their parameter count (as [`ParamCounts::total`] counts it) to two significant
/// digits.
pub const PRESETS: &[&str] = &["tiny", "small", "110m", "390m", "1.4b"];

/// Earlier names of presets, still accepted by [`preset`]: (old name, preset).
pub const PRESET_ALIASES: &[(&str, &str)] = &[("125m", "110m"), ("350m", "390m"), ("1.3b", "1.4b")];

/// The preset a name (or an alias of one) stands for, or `None`.
pub fn preset_name(name: &str) -> Option<&'static str> {
    PRESETS.iter().copied().find(|&p| p == name).or_else(|| {
        PRESET_ALIASES
            .iter()
            .find(|(a, _)| *a == name)
            .map(|&(_, p)| p)
    })
}

/// The config of a named preset (all p = 2, separate weights), or `None`. Accepts the names of
/// [`PRESETS`] and their aliases ([`PRESET_ALIASES`]).
pub fn preset(name: &str) -> Option<Config> {
    let name = preset_name(name)?;
    // (D, F, total layers, H, Hkv, V, max positions)
    let (d, f, layers, h, hkv, v, ctx) = match name {
        "tiny" => (64, 176, 4, 4, 2, 512, 512),
        // The CPU reference's own benchmark shape: p = 2, D = 512, 8 layers.
        "small" => (512, 1408, 8, 8, 4, 8192, 2048),
        "110m" => (768, 2048, 12, 12, 4, 32000, 4096),
        "390m" => (1024, 2816, 24, 16, 8, 32000, 4096),
        "1.4b" => (2048, 5632, 24, 16, 8, 32000, 4096),
        _ => return None,
    };
    Some(Config {
        vocab_size: v,
        hidden_size: d,
        intermediate_size: f,
        num_hidden_layers: layers,
        num_attention_heads: h,
        num_key_value_heads: hkv,
        head_dim: d / h,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_scaling: crate::RopeScaling::Default,
        sliding_window: None,
        max_position_embeddings: ctx,
        tie_word_embeddings: name == "110m",
        stag_sections: 2,
        stag_shared_weights: false,
        stag_cross_window: None,
        stag_output_mix: false,
    })
}

/// Parameter count per part of the model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamCounts {
    /// `model.embed_tokens.weight`: V · D.
    pub embedding: usize,
    /// Every stored self-attention + MLP layer, its norms included (`model.layers.*`).
    pub self_layers: usize,
    /// Every cross-attention layer, its norm included (`model.cross_layers.*`).
    pub cross_layers: usize,
    /// The final norm, the memory norms and the output mix.
    pub norms_and_mix: usize,
    /// `lm_head.weight` (0 when tied to the embedding).
    pub lm_head: usize,
}

impl ParamCounts {
    /// The counts of the tensors [`expected_tensors`] lists for `cfg`.
    pub fn of(cfg: &Config) -> Self {
        let mut c = ParamCounts::default();
        for spec in expected_tensors(cfg) {
            let n: usize = spec.shape.iter().product();
            let slot = if spec.name == "model.embed_tokens.weight" {
                &mut c.embedding
            } else if spec.name == "lm_head.weight" {
                &mut c.lm_head
            } else if spec.name.starts_with("model.cross_layers.") {
                &mut c.cross_layers
            } else if spec.name.starts_with("model.layers.") {
                &mut c.self_layers
            } else {
                &mut c.norms_and_mix
            };
            *slot += n;
        }
        c
    }

    /// Every parameter of the model.
    pub fn total(&self) -> usize {
        self.embedding + self.self_layers + self.cross_layers + self.norms_and_mix + self.lm_head
    }
}
