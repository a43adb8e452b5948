//! `stagformer.load` and the `Model` class: a checkpoint on the device it runs on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::bf16;
use numpy::PyArray2;
use pyo3::prelude::*;
use stagformer::{Activation, PrefillLogits};
use stagformer_cli::text::TextCodec;
use stagformer_kernels::Device;
use stagformer_ref::sample::try_sample;
use stagformer_ref::{score, Checkpoint, Config, ScoreMode, StepMode};

use crate::args::{self, DeviceChoice};
use crate::decoder::{logits_array, Core, CpuBatch, Decoder};
use crate::errors::{bad_request, failure, to_py, with_context};

/// Slots per KV page of `generate`'s kernel decoder (the CLI's `--kv-page-size` default).
const KV_PAGE_SIZE: usize = 16;

/// A model where it runs: the CPU reference holds the whole model in host f32; the kernel
/// devices keep the checkpoint mapped and upload from it for each decoder (as the CLI does).
enum Engine {
    Cpu(Arc<stagformer_ref::Model>),
    Kernels {
        device: Device,
        bf16: bool,
        checkpoint: Arc<Checkpoint>,
    },
}

/// A loaded checkpoint (`stagformer.load(path, ...)`).
#[pyclass(module = "stagformer", frozen)]
pub struct Model {
    engine: Engine,
    config: Config,
    config_json: String,
    codec: TextCodec,
    dir: PathBuf,
    warnings: Vec<String>,
    /// The end-of-sequence ids of generation_config.json (or config.json): where `generate`
    /// stops unless told otherwise, as the CLI's `generate`.
    eos: Vec<u32>,
}

/// Loads the checkpoint directory `path` (config.json + safetensors; a Hugging Face Llama or
/// Mistral directory loads as it is).
///
/// `device`: "cpu" (the reference), "emu" (the CUDA kernels emulated on the host), "cuda" (GPU
/// 0) or "auto" (cuda when there is a GPU, else cpu). `dtype` of the kernel devices: "f32",
/// "bf16" or "auto" (bf16 on cuda, f32 on emu); the cpu reference computes in f32.
#[pyfunction]
#[pyo3(signature = (path, device="auto", dtype="auto"))]
pub fn load(py: Python<'_>, path: PathBuf, device: &str, dtype: &str) -> PyResult<Model> {
    let choice = args::device(device)?;
    let want_bf16 = args::activation_dtype(dtype)?;
    py.allow_threads(|| open(&path, choice, want_bf16))
}

/// Resolves the device (a missing GPU is reported before anything is read), then loads.
fn open(dir: &Path, choice: DeviceChoice, want_bf16: Option<bool>) -> PyResult<Model> {
    let kernels = match choice {
        DeviceChoice::Cpu => None,
        DeviceChoice::Emu => Some((Device::emulated(), want_bf16.unwrap_or(false))),
        DeviceChoice::Cuda => {
            let device = Device::cuda(0)
                .map_err(|e| failure(format!("device \"cuda\": no usable CUDA GPU: {e}")))?;
            Some((device, want_bf16.unwrap_or(true)))
        }
        DeviceChoice::Auto => Device::cuda(0)
            .ok()
            .map(|device| (device, want_bf16.unwrap_or(true))),
    };
    let context = || format!("loading {}", dir.display());
    let (engine, config, warnings) = match kernels {
        None => {
            let model = stagformer_ref::Model::load(dir).map_err(|e| with_context(context(), e))?;
            let warnings = model.warnings().iter().map(|w| w.to_string()).collect();
            let config = model.config.clone();
            (Engine::Cpu(Arc::new(model)), config, warnings)
        }
        Some((device, bf16)) => {
            let ckpt = Checkpoint::open(dir).map_err(|e| with_context(context(), e))?;
            let warnings = ckpt.warnings().iter().map(|w| w.to_string()).collect();
            let config = stagformer_ref::TensorSource::config(&ckpt).clone();
            let checkpoint = Arc::new(ckpt);
            (
                Engine::Kernels {
                    device,
                    bf16,
                    checkpoint,
                },
                config,
                warnings,
            )
        }
    };
    let config_path = dir.join("config.json");
    let config_json = std::fs::read_to_string(&config_path)
        .map_err(|e| failure(format!("{}: cannot read: {e}", config_path.display())))?;
    let codec = TextCodec::for_model(Some(dir)).map_err(|e| failure(format!("{e:#}")))?;
    let eos = stagformer_ref::GenerationConfig::from_dir(dir)
        .map_err(|e| with_context(context(), e))?
        .eos_token_ids;
    Ok(Model {
        engine,
        config,
        config_json,
        codec,
        dir: dir.to_path_buf(),
        warnings,
        eos,
    })
}

/// A kernel decoder of `T` for `checkpoint`.
fn kernel_decoder<T: Activation>(
    device: &Device,
    checkpoint: &Checkpoint,
    opts: stagformer::DecoderOptions,
) -> PyResult<stagformer::Decoder<T>> {
    stagformer::Decoder::from_source(device, checkpoint, opts).map_err(to_py)
}

impl Model {
    /// An engine for `max_batch` sequences of `capacity` positions.
    fn core(
        &self,
        max_batch: usize,
        capacity: usize,
        mode: stagformer::ExecMode,
        recurrent: bool,
        kv_page_size: usize,
    ) -> PyResult<Core> {
        match &self.engine {
            Engine::Cpu(model) => {
                let step = if recurrent {
                    StepMode::Recurrent
                } else {
                    StepMode::Staggered
                };
                Ok(Core::Cpu(CpuBatch::new(
                    model.clone(),
                    step,
                    max_batch,
                    capacity,
                )?))
            }
            Engine::Kernels {
                device,
                bf16,
                checkpoint,
            } => {
                let opts = Core::options(max_batch, capacity, mode, recurrent, kv_page_size);
                Ok(if *bf16 {
                    Core::Bf16(kernel_decoder::<bf16>(device, checkpoint, opts)?)
                } else {
                    Core::F32(kernel_decoder::<f32>(device, checkpoint, opts)?)
                })
            }
        }
    }

    /// Logits [T, V] of `tokens` in `mode` (the CLI's `score`).
    fn score_logits(&self, tokens: &[u32], mode: ScoreMode) -> PyResult<Vec<f32>> {
        stagformer_ref::model::check_tokens(
            &self.config,
            tokens,
            self.config.max_position_embeddings,
        )
        .map_err(to_py)?;
        if let Engine::Cpu(model) = &self.engine {
            return Ok(score(model, tokens, mode).map_err(to_py)?.data);
        }
        let (prompt_len, recurrent) = match mode {
            // The prefill computes every position's logits by the definition's masks.
            ScoreMode::Forward => (tokens.len(), false),
            ScoreMode::Decode { prompt_len } => (prompt_len, false),
            ScoreMode::Recurrent { prompt_len } => (prompt_len, true),
        };
        if prompt_len == 0 || prompt_len > tokens.len() {
            return Err(bad_request(format!(
                "prompt_len {prompt_len} must be between 1 and the {} tokens given",
                tokens.len()
            )));
        }
        let mut core = self.core(
            1,
            tokens.len(),
            stagformer::ExecMode::Staggered,
            recurrent,
            0,
        )?;
        let (id, mut logits) = core.prefill(&tokens[..prompt_len], PrefillLogits::All)?;
        for &t in &tokens[prompt_len..] {
            logits.extend(core.step(&[id], &[t])?);
        }
        Ok(logits)
    }

    /// The CLI's `generate` loop over `core`: the first token sampled on the host from the
    /// prefill's last logits, the rest by decode steps, each draw keyed by its position.
    fn generate_ids(
        &self,
        prompt: &[u32],
        max_new: usize,
        params: stagformer_ref::SamplingParams,
        eos: &[u32],
        recurrent: bool,
    ) -> PyResult<Vec<u32>> {
        let positions = self.config.max_position_embeddings;
        stagformer_ref::model::check_tokens(&self.config, prompt, positions).map_err(to_py)?;
        // The whole sequence has to fit the model's positions.
        let max_new = max_new.min(positions.saturating_sub(prompt.len()));
        if max_new == 0 {
            return Ok(Vec::new());
        }
        let mut core = self.core(
            1,
            prompt.len() + max_new,
            stagformer::ExecMode::Staggered,
            recurrent,
            KV_PAGE_SIZE,
        )?;
        let (id, logits) = core.prefill(prompt, PrefillLogits::Last)?;
        let vocab = self.config.vocab_size;
        let first = try_sample(
            &logits[logits.len() - vocab..],
            &params,
            prompt.len() as u64,
            0,
        )
        .map_err(|e| to_py(stagformer_ref::Error::from(e)))?;
        let mut out = vec![first];
        while out.len() < max_new && !eos.contains(&out[out.len() - 1]) {
            let last = out[out.len() - 1];
            out.push(core.step_sample(&[id], &[last], &[params])?[0]);
        }
        Ok(out)
    }
}

#[pymethods]
impl Model {
    /// The model's config.json as a dict.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("json")?
            .call_method1("loads", (&self.config_json,))
    }

    /// Where the model runs: "cpu reference" or the kernel device's name with its dtype.
    #[getter]
    fn device(&self) -> String {
        match &self.engine {
            Engine::Cpu(_) => "cpu reference".into(),
            Engine::Kernels { device, bf16, .. } => {
                format!("{} ({})", device.name(), if *bf16 { "bf16" } else { "f32" })
            }
        }
    }

    /// The ids that end `generate` by default: generation_config.json's `eos_token_id`, else
    /// config.json's (empty when neither says).
    #[getter]
    fn eos_token_ids(&self) -> Vec<u32> {
        self.eos.clone()
    }

    /// What loading accepted but the caller should know (one message each).
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    /// The logits after every token of `tokens`, numpy float32 [T, V].
    ///
    /// `mode`: "forward" (the definition over the whole sequence), "decode" (a prefill of
    /// `prompt_len` tokens, then one decode step per token) or "recurrent" (the same with
    /// recurrent steps; shared weights, p = 2).
    #[pyo3(signature = (tokens, mode="forward", prompt_len=1))]
    fn score<'py>(
        &self,
        py: Python<'py>,
        tokens: Vec<u32>,
        mode: &str,
        prompt_len: usize,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let mode = match mode {
            "forward" => ScoreMode::Forward,
            "decode" => ScoreMode::Decode { prompt_len },
            "recurrent" => ScoreMode::Recurrent { prompt_len },
            _ => {
                return Err(bad_request(format!(
                    "mode {mode:?}: expected \"forward\", \"decode\" or \"recurrent\""
                )))
            }
        };
        let logits = py.allow_threads(|| self.score_logits(&tokens, mode))?;
        logits_array(py, logits, self.config.vocab_size)
    }

    /// Generates up to `max_new_tokens` tokens after `tokens` and returns their ids (fewer
    /// when the model's positions run out, or when an end-of-sequence token is generated: it
    /// is the last one returned). `eos`: the ids that end generation; None takes the model
    /// directory's (`eos_token_ids`), an empty list never stops early.
    ///
    /// Sampling: `temperature` 0 is greedy; `top_k` 0 and `top_p` 1 filter nothing; `seed`
    /// keys the draws (the same settings give the same tokens on every device).
    /// `recurrent`: recurrent steps after the prompt (shared weights, p = 2).
    #[pyo3(signature = (tokens, max_new_tokens=16, temperature=0.0, top_k=0, top_p=1.0, seed=0, eos=None, recurrent=false))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        tokens: Vec<u32>,
        max_new_tokens: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        seed: u64,
        eos: Option<Vec<u32>>,
        recurrent: bool,
    ) -> PyResult<Vec<u32>> {
        let params = args::sampling(temperature, top_k, top_p, seed)?;
        let eos = eos.unwrap_or_else(|| self.eos.clone());
        py.allow_threads(|| self.generate_ids(&tokens, max_new_tokens, params, &eos, recurrent))
    }

    /// `text` as token ids with the model directory's tokenizer.json; `special_tokens` adds
    /// what the tokenizer's post-processor puts around a sequence (a BOS).
    #[pyo3(signature = (text, special_tokens=true))]
    fn tokenize(&self, text: &str, special_tokens: bool) -> PyResult<Vec<u32>> {
        self.tokenizer()?;
        self.codec
            .encode(text, special_tokens)
            .map_err(|e| failure(format!("{e:#}")))
    }

    /// Token ids as text with the model directory's tokenizer.json (special tokens left out).
    fn detokenize(&self, ids: Vec<u32>) -> PyResult<String> {
        self.tokenizer()?;
        self.codec
            .decode(&ids)
            .map_err(|e| failure(format!("{e:#}")))
    }

    /// A batch decoder: up to `max_batch` sequences of up to `capacity` positions each, at
    /// most the model's max_position_embeddings (a larger `capacity` is lowered to it, as
    /// `generate` lowers `max_new_tokens`: no sequence could use the rest; the decoder's
    /// `capacity` says what it got). `mode` schedules the kernel decoder's steps
    /// ("staggered", "sequential", "batched", "grouped"; same results); `recurrent` runs
    /// recurrent steps (shared weights, p = 2); `kv_page_size` 0 keeps dense KV caches.
    #[pyo3(signature = (max_batch=8, capacity=1024, mode="staggered", recurrent=false, kv_page_size=16))]
    fn decoder(
        &self,
        py: Python<'_>,
        max_batch: usize,
        capacity: usize,
        mode: &str,
        recurrent: bool,
        kv_page_size: usize,
    ) -> PyResult<Decoder> {
        let mode = args::exec_mode(mode)?;
        let capacity = capacity.min(self.config.max_position_embeddings);
        let core =
            py.allow_threads(|| self.core(max_batch, capacity, mode, recurrent, kv_page_size))?;
        Ok(Decoder::new(core, self.config.vocab_size, capacity))
    }
}

impl Model {
    /// Refuses text calls when the model directory has no tokenizer.json.
    fn tokenizer(&self) -> PyResult<()> {
        match self.codec {
            TextCodec::Tokenizer(_) => Ok(()),
            TextCodec::Bytes => Err(failure(format!(
                "{}: no tokenizer.json; tokenize and detokenize need one (give token ids \
                 instead)",
                self.dir.display()
            ))),
        }
    }
}
