//! `stagformer generate`: prefill each prompt, then decode them as one continuous batch. One
//! prompt's text is streamed; several prompts' completions are printed in prompt order when the
//! batch is done. stdout carries the generated text only; notes, ids, stop reasons and speeds
//! go to stderr.

mod driver;
mod engines;
mod prompts;
mod settings;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use stagformer_ref::{DecodeBatch, GenerationConfig, StepMode};

use crate::engine::{Engine, EngineArgs};
use crate::model_source::{parse_tokens, ModelArgs};
use crate::text::{StreamPrinter, TextCodec};
use driver::{Generator, Limits, Outcome, Request, Stop};
use engines::{CpuEngine, KernelEngine};

/// The model `generate` runs when no `--model` or `--preset` is given.
const DEFAULT_PRESET: &str = "tiny";

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Prompt text (tokenized with the model's tokenizer.json, else as bytes). Repeat for
    /// several prompts, decoded as one batch.
    #[arg(
        short,
        long,
        value_name = "TEXT",
        conflicts_with_all = ["tokens", "prompts_file"],
        allow_hyphen_values = true
    )]
    prompt: Vec<String>,
    /// Prompts as text, one per line (empty and whitespace-only lines are skipped), decoded
    /// as one batch.
    #[arg(long, value_name = "PATH", conflicts_with = "tokens")]
    prompts_file: Option<PathBuf>,
    /// Prompt as comma-separated token ids, used as given. Repeat for several prompts.
    #[arg(short, long, value_name = "IDS", allow_hyphen_values = true)]
    tokens: Vec<String>,
    /// With several prompts, decode at most N at once: the others wait and join the batch as
    /// running prompts finish [default: all of them].
    #[arg(long, value_name = "N")]
    max_batch: Option<usize>,
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
    /// device, alone or in a batch). With several prompts, prompt k (counting from 0) gets
    /// seed S + k, or give --seed once per prompt. Not the weights' seed, which is
    /// --preset-seed.
    #[arg(short, long, value_name = "S", default_value = "0")]
    seed: Vec<u64>,
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
        for tokens in &self.tokens {
            parse_tokens(tokens)?;
        }
        if self.prompts_file.is_none() {
            // A prompts file's count is known once it is read.
            prompts::seeds(&self.seed, self.prompt.len().max(self.tokens.len()).max(1))?;
        }
        if self.max_batch == Some(0) {
            bail!("--max-batch 0: the batch needs at least one row");
        }
        let (params, _) = settings::resolve(self.flags(), 0, &GenerationConfig::default());
        params.validate()?;
        self.model.check()
    }

    /// The prompts as token ids, in order.
    fn prompt_ids(&self, codec: &TextCodec) -> Result<Vec<Vec<u32>>> {
        let texts = match &self.prompts_file {
            Some(path) => prompts::read_prompts_file(path)?,
            None => self.prompt.clone(),
        };
        if !self.tokens.is_empty() {
            return self.tokens.iter().map(|t| parse_tokens(t)).collect();
        }
        if texts.is_empty() {
            bail!("give --prompt TEXT, --prompts-file PATH or --tokens IDS");
        }
        texts
            .iter()
            .map(|text| codec.encode(text, !self.no_special_tokens))
            .collect()
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
    let prompts = args.prompt_ids(&codec)?;
    let single = prompts.len() == 1;
    // "prompt k: " before what concerns one prompt of several; nothing for a single one.
    let tag = |k: usize| {
        if single {
            String::new()
        } else {
            format!("prompt {k}: ")
        }
    };
    let seeds = prompts::seeds(&args.seed, prompts.len())?;
    let positions = config.max_position_embeddings;
    for (k, prompt) in prompts.iter().enumerate() {
        let checked = stagformer_ref::model::check_tokens(config, prompt, positions);
        if single {
            checked?;
        } else {
            checked.with_context(|| format!("prompt {k} (counting from 0)"))?;
        }
    }
    let eos = if args.ignore_eos {
        &[][..]
    } else {
        &generation.eos_token_ids[..]
    };
    let mut requests = Vec::with_capacity(prompts.len());
    for (k, (prompt, &seed)) in prompts.iter().zip(&seeds).enumerate() {
        let (params, note) = settings::resolve(args.flags(), seed, &generation);
        if let (0, Some(note)) = (k, note) {
            note!("{note}");
        }
        params.validate()?;
        // The whole sequence, prompt and generated tokens, has to fit the model's positions.
        let room = positions - prompt.len();
        let clamped = args.max_new_tokens > room;
        if clamped {
            note!(
                "{}note: --max-new-tokens {} does not fit: the prompt's {} tokens leave {room} \
                 of the model's {positions} positions (max_position_embeddings); generating at \
                 most {room}",
                tag(k),
                args.max_new_tokens,
                prompt.len()
            );
        }
        if args.print_ids {
            if single {
                note!("prompt ids: {prompt:?}");
            } else {
                note!("prompt {k} ids: {prompt:?}");
            }
        }
        requests.push(Request {
            prompt,
            limits: Limits {
                max_tokens: args.max_new_tokens.min(room),
                clamped,
                eos,
            },
            params,
        });
    }
    // Every sequence gets the longest one's positions: the decoder sizes all slots alike.
    let capacity = requests
        .iter()
        .map(|r| r.prompt.len() + r.limits.max_tokens)
        .max()
        .unwrap_or(1);
    let max_batch = args.max_batch.unwrap_or(requests.len()).min(requests.len());

    let mut printer = StreamPrinter::new();
    let mut batch_ids = vec![Vec::new(); requests.len()];
    let mut emit = |k: usize, id: u32| -> Result<()> {
        if single {
            let mut out = std::io::stdout().lock();
            write!(out, "{}", printer.push(&codec, id)?)?;
            out.flush()?;
        } else {
            batch_ids[k].push(id);
        }
        Ok(())
    };
    let step_mode = if args.recurrent {
        StepMode::Recurrent
    } else {
        StepMode::Staggered
    };
    let mut decode = |engine: &mut dyn Generator| {
        driver::generate(engine, &requests, max_batch, &mut emit).context("generation stopped")
    };
    let (outcomes, totals) = match &engine {
        Engine::Cpu(model) => {
            let batch = DecodeBatch::new(model, step_mode, max_batch, capacity)?;
            decode(&mut CpuEngine::new(batch, requests.len()))?
        }
        Engine::Kernels {
            device,
            bf16,
            source,
        } => {
            let opts = args
                .engine
                .decoder_options(max_batch, capacity, args.recurrent);
            if *bf16 {
                let engine = KernelEngine::<half::bf16>::new(device, source, opts, requests.len());
                decode(&mut engine?)?
            } else {
                decode(&mut KernelEngine::<f32>::new(
                    device,
                    source,
                    opts,
                    requests.len(),
                )?)?
            }
        }
    };
    if single {
        finish_streamed(&mut printer, &codec, args.print_ids)?;
    } else {
        print_completions(&batch_ids, &codec, args.print_ids)?;
    }
    for (k, outcome) in outcomes.iter().enumerate() {
        note!(
            "{}stopped: {}",
            tag(k),
            stop_reason(outcome.stop, args.max_new_tokens, positions)
        );
        note!("{}{}", tag(k), speeds(requests[k].prompt.len(), outcome));
    }
    if !single {
        let generated: usize = outcomes.iter().map(|o| o.generated).sum();
        note!(
            "batch: {} prompts, at most {max_batch} at once: {generated} tokens, {} decode \
             steps in {:.3} s ({} tok/s)",
            requests.len(),
            totals.steps,
            totals.time.as_secs_f64(),
            driver::rate(generated, totals.time),
        );
    }
    Ok(())
}

/// Ends a single prompt's streamed text with its newline.
fn finish_streamed(printer: &mut StreamPrinter, codec: &TextCodec, print_ids: bool) -> Result<()> {
    let finish = printer.finish(codec)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", finish.rest)?;
    out.flush()?;
    if finish.diverged {
        note!(
            "note: the tokenizer rewrote text already printed; the full text is: {:?}",
            codec.decode(printer.ids())?
        );
    }
    if print_ids {
        note!("generated ids: {:?}", printer.ids());
    }
    Ok(())
}

/// Several prompts' completions in prompt order, each the text a single run of its prompt
/// streams (then a newline), with a blank line between two completions.
fn print_completions(ids: &[Vec<u32>], codec: &TextCodec, print_ids: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for (k, ids) in ids.iter().enumerate() {
        let mut printer = StreamPrinter::new();
        if k > 0 {
            writeln!(out)?;
        }
        for &id in ids {
            write!(out, "{}", printer.push(codec, id)?)?;
        }
        let finish = printer.finish(codec)?;
        writeln!(out, "{}", finish.rest)?;
        if finish.diverged {
            note!(
                "prompt {k}: note: the tokenizer rewrote text already printed; the full text \
                 is: {:?}",
                codec.decode(ids)?
            );
        }
        if print_ids {
            note!("generated {k} ids: {ids:?}");
        }
    }
    out.flush()?;
    Ok(())
}

fn stop_reason(stop: Stop, max_new_tokens: usize, positions: usize) -> String {
    match stop {
        Stop::Eos(id) => format!("end of sequence (token {id})"),
        Stop::MaxNewTokens => format!("--max-new-tokens {max_new_tokens} reached"),
        Stop::Capacity => {
            format!("the model's {positions} positions (max_position_embeddings) are full")
        }
    }
}

/// One prompt's prefill and generation speeds.
fn speeds(prompt_len: usize, outcome: &Outcome) -> String {
    format!(
        "prompt: {} tokens in {:.3} s ({} tok/s); generation: {} tokens, {} decode steps in \
         {:.3} s ({} tok/s)",
        prompt_len,
        outcome.prompt_time.as_secs_f64(),
        driver::rate(prompt_len, outcome.prompt_time),
        outcome.generated,
        outcome.steps,
        outcome.generation_time.as_secs_f64(),
        driver::rate(outcome.steps, outcome.generation_time),
    )
}
