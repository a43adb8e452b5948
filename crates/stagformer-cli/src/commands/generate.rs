//! `stagformer generate`: prefill a prompt, then decode and stream tokens. stdout carries the
//! generated text only; notes, ids, the stop reason and speeds go to stderr.

mod driver;
mod settings;

use std::io::Write;

use anyhow::{bail, Context, Result};
use stagformer::{Activation, Decoder, DecoderOptions, PrefillLogits};
use stagformer_kernels::Device;
use stagformer_ref::sample::{try_sample, SamplingParams};
use stagformer_ref::{DecodeBatch, GenerationConfig, SeqId, StepMode};

use crate::engine::{Engine, EngineArgs};
use crate::model_source::{parse_tokens, ModelArgs, Source};
use crate::text::{StreamPrinter, TextCodec};
use driver::{Generator, Limits, Stop};

/// The model `generate` runs when no `--model` or `--preset` is given.
const DEFAULT_PRESET: &str = "tiny";

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Prompt text (tokenized with the model's tokenizer.json, else as bytes).
    #[arg(
        short,
        long,
        value_name = "TEXT",
        conflicts_with = "tokens",
        allow_hyphen_values = true
    )]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids, used as given.
    #[arg(short, long, value_name = "IDS", allow_hyphen_values = true)]
    tokens: Option<String>,
    /// Tokenize --prompt without the tokenizer's special tokens (no BOS).
    #[arg(long, conflicts_with = "tokens")]
    no_special_tokens: bool,
    /// At most this many new tokens (fewer when the model's positions run out first).
    #[arg(short = 'n', long, value_name = "N", default_value_t = 32)]
    max_new_tokens: usize,
    /// Keep generating past the model's end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// Show the prompt's and the generated token ids (on stderr).
    #[arg(long)]
    print_ids: bool,
    /// Sampling temperature; 0 = greedy [default: generation_config.json's, else 0.8].
    #[arg(long, value_name = "T", allow_negative_numbers = true)]
    temperature: Option<f32>,
    /// Sample from the K likeliest tokens; 0 = no top-k filter [default:
    /// generation_config.json's, else 40].
    #[arg(long, value_name = "K", allow_negative_numbers = true)]
    top_k: Option<usize>,
    /// Nucleus filter: sample from the likeliest tokens whose probabilities add up to P; 1 =
    /// off [default: generation_config.json's, else 0.95].
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    top_p: Option<f32>,
    /// Seed of the sampler: the same seed, model and settings give the same tokens (on every
    /// device). Not the weights' seed, which is --preset-seed.
    #[arg(short, long, default_value_t = 0)]
    seed: u64,
    /// Recurrent mode after the prompt (shared weights, p = 2).
    #[arg(long)]
    recurrent: bool,
}

impl Args {
    fn flags(&self) -> settings::Flags {
        settings::Flags {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
        }
    }

    /// The checks that need no file: the token list, the sampling flags (with the CLI's
    /// defaults where one is not given) and the preset options.
    pub(crate) fn check(&self) -> Result<()> {
        if let Some(tokens) = &self.tokens {
            parse_tokens(tokens)?;
        }
        let (params, _) = settings::resolve(self.flags(), self.seed, &GenerationConfig::default());
        params.validate()?;
        self.model.check()
    }
}

pub fn run(args: Args) -> Result<()> {
    args.check()?;
    let mut source = args.model.clone();
    if source.model.is_none() && source.preset.is_none() {
        note!("note: no --model given: running the built-in {DEFAULT_PRESET:?} preset");
        source.preset = Some(DEFAULT_PRESET.into());
    }
    if let Some(name) = source.random_preset() {
        // No trained StagFormer checkpoint ships with the project: a preset is a shape with
        // random weights, and what it generates is not language.
        note!(
            "note: --preset {name} has random weights (seed {}), not a trained model: the text \
             below is noise (ids the byte codec cannot show print as <id>). It shows that \
             generation runs end to end, and how fast; `stagformer bench --preset {name}` \
             measures the speed properly, and --model DIR runs a trained checkpoint (a Hugging \
             Face Llama or Mistral directory loads as it is)",
            source.preset_seed
        );
    }
    let engine = Engine::open(&source, args.engine.dtype)?;
    let config = engine.config();
    let model_dir = args.model.model.as_deref();
    let codec = TextCodec::for_model(model_dir)?;
    if let Some(warning) = codec.vocab_warning(config.vocab_size) {
        note!("{warning}");
    }
    if matches!(codec, TextCodec::Bytes) {
        note!("note: no tokenizer.json: text is encoded and decoded as bytes (ids 0-255)");
    }
    let generation = match model_dir {
        Some(dir) => GenerationConfig::from_dir(dir)?,
        None => GenerationConfig::default(),
    };
    let prompt = match (&args.prompt, &args.tokens) {
        (_, Some(t)) => parse_tokens(t)?,
        (Some(text), None) => codec.encode(text, !args.no_special_tokens)?,
        (None, None) => bail!("give --prompt TEXT or --tokens IDS"),
    };
    let positions = config.max_position_embeddings;
    stagformer_ref::model::check_tokens(config, &prompt, positions)?;
    let (params, note) = settings::resolve(args.flags(), args.seed, &generation);
    if let Some(note) = note {
        note!("{note}");
    }
    params.validate()?;
    // The whole sequence, prompt and generated tokens, has to fit the model's positions.
    let room = positions - prompt.len();
    let clamped = args.max_new_tokens > room;
    if clamped {
        note!(
            "note: --max-new-tokens {} does not fit: the prompt's {} tokens leave {room} of the \
             model's {positions} positions (max_position_embeddings); generating at most {room}",
            args.max_new_tokens,
            prompt.len()
        );
    }
    let eos = if args.ignore_eos {
        &[][..]
    } else {
        &generation.eos_token_ids[..]
    };
    let limits = Limits {
        max_tokens: args.max_new_tokens.min(room),
        clamped,
        eos,
    };
    if args.print_ids {
        note!("prompt ids: {prompt:?}");
    }

    let mut printer = StreamPrinter::new();
    let mut out = std::io::stdout().lock();
    let mut emit = |id: u32| -> Result<()> {
        write!(out, "{}", printer.push(&codec, id)?)?;
        out.flush()?;
        Ok(())
    };
    let capacity = prompt.len() + limits.max_tokens;
    let step_mode = if args.recurrent {
        StepMode::Recurrent
    } else {
        StepMode::Staggered
    };
    let outcome = match &engine {
        Engine::Cpu(model) => {
            let mut engine = CpuEngine {
                batch: DecodeBatch::new(model, step_mode, 1, capacity)?,
                seq: None,
                params,
            };
            driver::generate(&mut engine, &prompt, &limits, &mut emit)
                .context("generation stopped")?
        }
        Engine::Kernels {
            device,
            bf16,
            source,
        } => {
            let opts = args.engine.decoder_options(1, capacity, args.recurrent);
            if *bf16 {
                let mut engine = KernelEngine::<half::bf16>::new(device, source, opts, params)?;
                driver::generate(&mut engine, &prompt, &limits, &mut emit)
                    .context("generation stopped")?
            } else {
                let mut engine = KernelEngine::<f32>::new(device, source, opts, params)?;
                driver::generate(&mut engine, &prompt, &limits, &mut emit)
                    .context("generation stopped")?
            }
        }
    };
    let finish = printer.finish(&codec)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", finish.rest)?;
    out.flush()?;
    if finish.diverged {
        note!(
            "note: the tokenizer rewrote text already printed; the full text is: {:?}",
            codec.decode(printer.ids())?
        );
    }
    if args.print_ids {
        note!("generated ids: {:?}", printer.ids());
    }
    match outcome.stop {
        Stop::Eos(id) => note!("stopped: end of sequence (token {id})"),
        Stop::MaxNewTokens => {
            note!("stopped: --max-new-tokens {} reached", args.max_new_tokens)
        }
        Stop::Capacity => {
            note!("stopped: the model's {positions} positions (max_position_embeddings) are full")
        }
    }
    note!(
        "prompt: {} tokens in {:.3} s ({} tok/s); generation: {} tokens, {} decode steps in \
         {:.3} s ({} tok/s)",
        prompt.len(),
        outcome.prompt_time.as_secs_f64(),
        driver::rate(prompt.len(), outcome.prompt_time),
        outcome.generated,
        outcome.steps,
        outcome.generation_time.as_secs_f64(),
        driver::rate(outcome.steps, outcome.generation_time),
    );
    Ok(())
}

/// The CPU reference, sampling on the host.
struct CpuEngine<'a> {
    batch: DecodeBatch<'a>,
    seq: Option<SeqId>,
    params: SamplingParams,
}

impl Generator for CpuEngine<'_> {
    fn prefill(&mut self, prompt: &[u32]) -> Result<u32> {
        let (seq, logits) = self.batch.prefill(prompt)?;
        self.seq = Some(seq);
        let last = logits.rows - 1;
        // The chosen token's index in the request (its position) keys the draw.
        Ok(try_sample(
            logits.row(last),
            &self.params,
            prompt.len() as u64,
            last,
        )?)
    }

    fn step(&mut self, token: u32, _step: u64) -> Result<u32> {
        let seq = self.seq.context("decode step before the prefill")?;
        // The position of `token`, whose logits these are; the chosen token comes next.
        let position = self.batch.len(seq)?;
        let logits = self.batch.step(&[seq], &[token])?;
        Ok(try_sample(
            logits.row(0),
            &self.params,
            position as u64 + 1,
            position,
        )?)
    }
}

/// The kernel decoder: the prompt's token is sampled on the host from the prefill's logits,
/// every later one on the device by the same rule.
struct KernelEngine<T: Activation> {
    decoder: Decoder<T>,
    seq: Option<stagformer::SeqId>,
    vocab: usize,
    params: SamplingParams,
}

impl<T: Activation> KernelEngine<T> {
    fn new(
        device: &Device,
        source: &Source,
        opts: DecoderOptions,
        params: SamplingParams,
    ) -> Result<Self> {
        Ok(KernelEngine {
            decoder: crate::engine::decoder_from(device, source, opts)?,
            seq: None,
            vocab: stagformer_ref::TensorSource::config(source).vocab_size,
            params,
        })
    }
}

impl<T: Activation> Generator for KernelEngine<T> {
    fn prefill(&mut self, prompt: &[u32]) -> Result<u32> {
        // Only the last row's logits: the prompt's other rows skip the lm_head.
        let (seq, logits) = self.decoder.prefill_logits(prompt, PrefillLogits::Last)?;
        self.seq = Some(seq);
        // As the decoder's steps: the draw is keyed by the chosen token's position.
        Ok(try_sample(
            &logits[logits.len() - self.vocab..],
            &self.params,
            prompt.len() as u64,
            prompt.len() - 1,
        )?)
    }

    fn step(&mut self, token: u32, _step: u64) -> Result<u32> {
        let seq = self.seq.context("decode step before the prefill")?;
        Ok(self.decoder.step_sample(&[seq], &[token], &[self.params])?[0].token)
    }
}
