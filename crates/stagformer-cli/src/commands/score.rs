//! `stagformer score`: logits after every token, as one f32 tensor `logits` [T, V].

use std::path::PathBuf;

use anyhow::Result;
use clap::ValueEnum;
use stagformer_ref::ScoreMode;

use crate::engine::{Engine, EngineArgs};
use crate::model_source::{parse_tokens, ModelArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Comma-separated token ids, e.g. 5,17,3.
    #[arg(short, long, value_name = "IDS", allow_hyphen_values = true)]
    tokens: String,
    /// What computes the logits: the definition over the whole sequence, or a prefill followed
    /// by decode (or recurrent) steps. How the kernel devices schedule a step is --schedule.
    #[arg(long, value_enum, default_value_t = Mode::Forward)]
    mode: Mode,
    /// Tokens prefilled before decoding one at a time (decode and recurrent modes).
    #[arg(long, value_name = "N", default_value_t = 1)]
    prompt_len: usize,
    /// Output safetensors file (one f32 tensor `logits` [tokens, vocab]).
    #[arg(short, long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum Mode {
    /// The definition: each section over the whole sequence.
    Forward,
    /// Prefill, then one token per step with every section in the same step.
    Decode,
    /// Prefill, then recurrent steps (shared weights, p = 2).
    Recurrent,
}

impl Args {
    /// The checks that need no file: the token list and the preset options.
    pub(crate) fn check(&self) -> Result<()> {
        parse_tokens(&self.tokens)?;
        self.model.check()
    }
}

pub fn run(args: Args) -> Result<()> {
    args.check()?;
    let tokens = parse_tokens(&args.tokens)?;
    // Before the model is loaded and run, so a bad --out costs nothing.
    stagformer_ref::files::check_replaceable(&args.out)?;
    let engine = Engine::open(&args.model, args.engine.dtype)?;
    let config = engine.config();
    stagformer_ref::model::check_tokens(config, &tokens, config.max_position_embeddings)?;
    let mode = match args.mode {
        Mode::Forward => ScoreMode::Forward,
        Mode::Decode => ScoreMode::Decode {
            prompt_len: args.prompt_len,
        },
        Mode::Recurrent => ScoreMode::Recurrent {
            prompt_len: args.prompt_len,
        },
    };
    let logits = engine.score(&tokens, mode, &args.engine)?;
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let tensor = stagformer_ref::checkpoint::EncodedTensor {
        name: "logits".into(),
        shape: vec![tokens.len(), engine.config().vocab_size],
        dtype: stagformer_ref::StorageDtype::F32,
        bytes,
    };
    stagformer_ref::checkpoint::write_safetensors(&args.out, &[tensor])?;
    Ok(())
}
