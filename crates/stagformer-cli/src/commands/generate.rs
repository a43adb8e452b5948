//! `stagformer generate`: prefill a prompt, then decode and stream tokens.

use std::io::Write;

use anyhow::{bail, Result};
use stagformer_ref::sample::{sample, SamplingParams};
use stagformer_ref::{DecodeBatch, StepMode};

use crate::model_source::{parse_tokens, ModelArgs};
use crate::text::{StreamPrinter, TextCodec};

/// The model `generate` runs when no `--model` or `--preset` is given.
const DEFAULT_PRESET: &str = "tiny";

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
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
    let model = source.load()?;
    let codec = TextCodec::for_model(args.model.model.as_deref())?;
    let prompt = match (&args.prompt, &args.tokens) {
        (_, Some(t)) => parse_tokens(t)?,
        (Some(text), None) => codec.encode(text)?,
        (None, None) => bail!("give --prompt TEXT or --tokens IDS"),
    };
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    params.validate()?;
    let mode = if args.recurrent {
        StepMode::Recurrent
    } else {
        StepMode::Staggered
    };
    let capacity = (prompt.len() + args.max_new_tokens).min(model.config.max_position_embeddings);
    let mut batch = DecodeBatch::new(&model, mode, 1, capacity.max(prompt.len()))?;
    let (id, logits) = batch.prefill(&prompt)?;
    let mut next = sample(logits.row(logits.rows - 1), &params, 0, 0);
    let mut printer = StreamPrinter::new();
    let mut out = std::io::stdout().lock();
    for step in 0..args.max_new_tokens {
        write!(out, "{}", printer.push(&codec, next)?)?;
        out.flush()?;
        if step + 1 == args.max_new_tokens {
            break;
        }
        if batch.len(id)? >= capacity {
            eprintln!("\nnote: stopped at the model's {capacity} positions");
            break;
        }
        let logits = batch.step(&[id], &[next])?;
        next = sample(logits.row(0), &params, 0, step as u64 + 1);
    }
    writeln!(out, "{}", printer.finish(&codec)?)?;
    Ok(())
}
