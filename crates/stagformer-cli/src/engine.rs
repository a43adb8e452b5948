//! Where the model runs: the CPU reference, or the kernel decoder on the emulated device or a
//! GPU, with its execution mode and dtype.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use stagformer::{Activation, Decoder, DecoderOptions, ExecMode, GemvPath};
use stagformer_kernels::Device;
use stagformer_ref::{score, Config, Model, ScoreMode, TensorSource};

use crate::model_source::{DeviceChoice, ModelArgs, Source};
use crate::progress::Tracked;

#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// How the kernel decoder schedules the sections of a step (emu and cuda devices; the cpu
    /// reference runs them one after another). Formerly --mode-exec, still accepted.
    #[arg(long, alias = "mode-exec", value_enum, default_value_t = ExecChoice::Staggered)]
    pub schedule: ExecChoice,
    #[arg(long, value_enum, default_value_t = DtypeChoice::Auto, help = DTYPE_HELP)]
    pub dtype: DtypeChoice,
    /// Launch every kernel of a decode step instead of replaying a captured step graph (emu
    /// and cuda devices; same results).
    #[arg(long)]
    pub no_graph: bool,
    /// Decode-step projections on the kernel devices: fused GEMVs (norms, RoPE, cache appends,
    /// SwiGLU and residual adds inside them; up to 16 rows) or cuBLAS GEMMs with separate glue
    /// kernels.
    #[arg(long, value_enum, default_value_t = GemvChoice::Fused)]
    pub gemv: GemvChoice,
    /// Slots per page of the KV caches on the kernel devices: self caches and unbounded
    /// cross caches live in page pools addressed through block tables (0 = dense caches, one
    /// region per sequence; windowed cross caches are always dense rings).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_KV_PAGE_SIZE)]
    pub kv_page_size: usize,
}

/// `--kv-page-size`'s default: 16 slots a page (vLLM's default block size), small enough that
/// a short sequence wastes little, large enough that the table stays a few entries a row.
pub const DEFAULT_KV_PAGE_SIZE: usize = 16;

/// The help line of `--dtype` on the commands that run a model.
pub const DTYPE_HELP: &str = "Activation and weight storage on the kernel devices (auto = bf16 \
     on cuda, f32 on emu; the cpu reference computes in f32)";

impl EngineArgs {
    /// The decoder options these flags ask for, for `max_batch` sequences of `capacity`
    /// positions.
    pub fn decoder_options(
        &self,
        max_batch: usize,
        capacity: usize,
        recurrent: bool,
    ) -> DecoderOptions {
        DecoderOptions {
            mode: self.schedule.mode(),
            recurrent,
            graphs: !self.no_graph,
            gemv: self.gemv.path(),
            kv_page_size: self.kv_page_size,
            ..DecoderOptions::new(max_batch, capacity)
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemvChoice {
    /// One GEMV launch per projection with the glue inside it.
    Fused,
    /// cuBLAS GEMMs and separate glue kernels (the unfused path).
    Cublas,
}

impl GemvChoice {
    pub fn path(self) -> GemvPath {
        match self {
            GemvChoice::Fused => GemvPath::Fused,
            GemvChoice::Cublas => GemvPath::Cublas,
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecChoice {
    /// Every section on a stream of its own, concurrently.
    Staggered,
    /// The sections one after another on one stream.
    Sequential,
    /// Every pass of a layer as one GEMM (shared weights, or p = 1).
    Batched,
    /// Every section's layer j in one launch per projection.
    Grouped,
}

impl ExecChoice {
    pub fn mode(self) -> ExecMode {
        match self {
            ExecChoice::Staggered => ExecMode::Staggered,
            ExecChoice::Sequential => ExecMode::Sequential,
            ExecChoice::Batched => ExecMode::Batched,
            ExecChoice::Grouped => ExecMode::Grouped,
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtypeChoice {
    /// bf16 on cuda, f32 on emu.
    Auto,
    /// f32 activations and weights.
    F32,
    /// bf16 activations and weights.
    Bf16,
}

/// A resolved device.
pub enum Backend {
    Cpu,
    Kernels { device: Device, bf16: bool },
}

impl Backend {
    /// `gpu`: the ordinal `--device cuda` and `auto` open (`--gpu`).
    pub fn resolve(choice: DeviceChoice, gpu: usize, dtype: DtypeChoice) -> Result<Self> {
        let kernels = |device: Device, default_bf16: bool| {
            let bf16 = match dtype {
                DtypeChoice::Auto => default_bf16,
                DtypeChoice::F32 => false,
                DtypeChoice::Bf16 => true,
            };
            Backend::Kernels { device, bf16 }
        };
        Ok(match choice {
            DeviceChoice::Cpu => Backend::Cpu,
            DeviceChoice::Emu => kernels(Device::emulated(), false),
            DeviceChoice::Cuda => {
                let device = Device::cuda(gpu)
                    .with_context(|| format!("--device cuda --gpu {gpu}: no usable CUDA GPU"))?;
                kernels(device, true)
            }
            DeviceChoice::Auto => match Device::cuda(gpu) {
                Ok(device) => kernels(device, true),
                Err(e) => {
                    note!("note: --device auto: no CUDA GPU {gpu} ({e}); running on the cpu");
                    Backend::Cpu
                }
            },
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Backend::Cpu => "cpu reference".into(),
            Backend::Kernels { device, bf16 } => {
                format!("{} ({})", device.name(), if *bf16 { "bf16" } else { "f32" })
            }
        }
    }
}

/// A resolved device with the model loaded the way it runs there: the CPU reference holds the
/// whole model in host f32; the kernel devices keep the checkpoint mapped and upload from it.
pub enum Engine {
    Cpu(Model),
    Kernels {
        device: Device,
        bf16: bool,
        source: Source,
    },
}

impl Engine {
    /// Resolves `--device` (before loading, so a missing GPU is reported first), then loads.
    pub fn open(models: &ModelArgs, dtype: DtypeChoice) -> Result<Self> {
        Ok(match Backend::resolve(models.device, models.gpu, dtype)? {
            Backend::Cpu => Engine::Cpu(models.load()?),
            Backend::Kernels { device, bf16 } => Engine::Kernels {
                device,
                bf16,
                source: models.open()?,
            },
        })
    }

    pub fn config(&self) -> &Config {
        match self {
            Engine::Cpu(model) => &model.config,
            Engine::Kernels { source, .. } => source.config(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Engine::Cpu(_) => Backend::Cpu.describe(),
            Engine::Kernels { device, bf16, .. } => {
                format!("{} ({})", device.name(), if *bf16 { "bf16" } else { "f32" })
            }
        }
    }

    /// Logits [T, V] of `tokens` scored in `mode`.
    pub fn score(&self, tokens: &[u32], mode: ScoreMode, flags: &EngineArgs) -> Result<Vec<f32>> {
        match self {
            Engine::Cpu(model) => Ok(score(model, tokens, mode)?.data),
            Engine::Kernels {
                device,
                bf16: false,
                source,
            } => score_kernels::<f32>(device, source, tokens, mode, flags),
            Engine::Kernels {
                device,
                bf16: true,
                source,
            } => score_kernels::<half::bf16>(device, source, tokens, mode, flags),
        }
    }
}

/// A kernel decoder built from `source`, with a progress bar over the weight upload.
pub fn decoder_from<T: Activation>(
    device: &Device,
    source: &Source,
    opts: DecoderOptions,
) -> stagformer::Result<Decoder<T>> {
    let tracked = Tracked::new(source, "uploading weights");
    let decoder = Decoder::from_source(device, &tracked, opts);
    tracked.finish();
    decoder
}

fn score_kernels<T: Activation>(
    device: &Device,
    source: &Source,
    tokens: &[u32],
    mode: ScoreMode,
    flags: &EngineArgs,
) -> Result<Vec<f32>> {
    let (prompt_len, recurrent) = match mode {
        // The prefill computes every position's logits by the definition's masks.
        ScoreMode::Forward => (tokens.len(), false),
        ScoreMode::Decode { prompt_len } => (prompt_len, false),
        ScoreMode::Recurrent { prompt_len } => (prompt_len, true),
    };
    if prompt_len == 0 || prompt_len > tokens.len() {
        bail!(
            "--prompt-len {prompt_len} must be between 1 and the {} tokens given",
            tokens.len()
        );
    }
    let opts = flags.decoder_options(1, tokens.len(), recurrent);
    let mut decoder = decoder_from::<T>(device, source, opts)?;
    let (id, mut logits) = decoder.prefill(&tokens[..prompt_len])?;
    for &t in &tokens[prompt_len..] {
        logits.extend(decoder.step(&[id], &[t])?);
    }
    Ok(logits)
}
