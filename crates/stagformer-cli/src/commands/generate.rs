//! `stagformer generate`: prefill a prompt, then decode and stream tokens.

use std::io::Write;

use anyhow::{bail, Result};
use stagformer::{Activation, Decoder, DecoderOptions, ExecMode, SamplingConfig};
use stagformer_kernels::Device;
use stagformer_ref::sample::{sample, SamplingParams};
use stagformer_ref::{Config, DecodeBatch, Model, StepMode};

use crate::engine::{Engine, EngineArgs};
use crate::model_source::{parse_tokens, ModelArgs, Source};
use crate::text::{StreamPrinter, TextCodec};

/// The model `generate` runs when no `--model` or `--preset` is given.
const DEFAULT_PRESET: &str = "tiny";

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Prompt text (tokenized with the model's tokenizer.json, else as bytes).
    #[arg(long, conflicts_with = "tokens")]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids.
    #[arg(long)]
    tokens: Option<String>,
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// 0 = no top-k filter.
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Recurrent mode after the prompt (shared weights, p = 2).
    #[arg(long)]
    recurrent: bool,
}

pub fn run(args: Args) -> Result<()> {
    let mut source = args.model.clone();
    if source.model.is_none() && source.preset.is_none() {
        eprintln!(
            "note: no --model given: running the built-in {DEFAULT_PRESET:?} preset with random \
             weights (seed {}); its output is noise",
            source.preset_seed
        );
        source.preset = Some(DEFAULT_PRESET.into());
    }
    let engine = Engine::open(&source, args.engine.dtype)?;
    let config = engine.config();
    let codec = TextCodec::for_model(args.model.model.as_deref())?;
    let prompt = match (&args.prompt, &args.tokens) {
        (_, Some(t)) => parse_tokens(t)?,
        (Some(text), None) => codec.encode(text)?,
        (None, None) => bail!("give --prompt TEXT or --tokens IDS"),
    };
    stagformer_ref::model::check_tokens(config, &prompt, config.max_position_embeddings)?;
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    params.validate()?;
    let capacity = (prompt.len() + args.max_new_tokens).min(config.max_position_embeddings);
    let mut printer = StreamPrinter::new();
    let mut out = std::io::stdout().lock();
    let mut emit = |id: u32| -> Result<()> {
        write!(out, "{}", printer.push(&codec, id)?)?;
        out.flush()?;
        Ok(())
    };
    let run = Run {
        config,
        prompt: &prompt,
        params,
        capacity,
        new_tokens: args.max_new_tokens,
        recurrent: args.recurrent,
        graphs: !args.engine.no_graph,
    };
    let exec = args.engine.mode_exec.mode();
    match &engine {
        Engine::Cpu(model) => run.on_cpu(model, &mut emit)?,
        Engine::Kernels {
            device,
            bf16: false,
            source,
        } => run.on_kernels::<f32>(device, source, exec, &mut emit)?,
        Engine::Kernels {
            device,
            bf16: true,
            source,
        } => run.on_kernels::<half::bf16>(device, source, exec, &mut emit)?,
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", printer.finish(&codec)?)?;
    Ok(())
}

/// One generation: the first token comes from the prompt's logits, each later one from a step.
struct Run<'a> {
    config: &'a Config,
    prompt: &'a [u32],
    params: SamplingParams,
    capacity: usize,
    new_tokens: usize,
    recurrent: bool,
    graphs: bool,
}

impl Run<'_> {
    fn steps(&self) -> usize {
        self.new_tokens.min(self.capacity - self.prompt.len() + 1)
    }

    fn on_cpu(&self, model: &Model, emit: &mut impl FnMut(u32) -> Result<()>) -> Result<()> {
        let mode = if self.recurrent {
            StepMode::Recurrent
        } else {
            StepMode::Staggered
        };
        let mut batch = DecodeBatch::new(model, mode, 1, self.capacity.max(self.prompt.len()))?;
        let (id, logits) = batch.prefill(self.prompt)?;
        let mut next = sample(logits.row(logits.rows - 1), &self.params, 0, 0);
        for step in 1..=self.steps() {
            emit(next)?;
            if step == self.steps() {
                break;
            }
            let logits = batch.step(&[id], &[next])?;
            next = sample(logits.row(0), &self.params, 0, step as u64);
        }
        Ok(())
    }

    fn on_kernels<T: Activation>(
        &self,
        device: &Device,
        source: &Source,
        exec: ExecMode,
        emit: &mut impl FnMut(u32) -> Result<()>,
    ) -> Result<()> {
        let opts = DecoderOptions {
            max_batch: 1,
            capacity: self.capacity.max(self.prompt.len()),
            mode: exec,
            recurrent: self.recurrent,
            graphs: self.graphs,
        };
        let mut decoder = Decoder::<T>::from_source(device, source, opts)?;
        let (id, logits) = decoder.prefill(self.prompt)?;
        let vocab = self.config.vocab_size;
        let last = &logits[logits.len() - vocab..];
        let mut next = sample(last, &self.params, 0, 0);
        let config = SamplingConfig {
            temperature: self.params.temperature,
            top_k: self.params.top_k,
            top_p: self.params.top_p,
            seed: self.params.seed,
        };
        for step in 1..=self.steps() {
            emit(next)?;
            if step == self.steps() {
                break;
            }
            next = decoder.step_sample(&[id], &[next], &config, step as u32)?[0];
        }
        Ok(())
    }
}
