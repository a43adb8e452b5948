//! `stagformer bench`: decode speed per execution mode, prefill speed, speedups.
//!
//! Every mode runs the same work: B sequences prefilled with P tokens each, then N decode steps
//! of greedy tokens. Timings are wall-clock over whole steps (each step ends with the sampled
//! tokens on the host, as in real decoding).

use std::time::Instant;

use anyhow::{bail, Result};
use stagformer_ref::sample::argmax;
use stagformer_ref::{DecodeBatch, Model, StepMode};

use crate::commands::inspect::describe;
use crate::model_source::{DeviceChoice, ModelArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 32)]
    prompt_len: usize,
    /// Decode steps timed per mode.
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// Untimed decode steps before timing.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
}

/// One row of the result table.
struct ModeResult {
    name: &'static str,
    /// `Err`: why the mode does not apply here.
    ms_per_step: Result<f64, String>,
}

pub fn run(args: Args) -> Result<()> {
    if args.batch == 0 || args.prompt_len == 0 || args.new_tokens == 0 {
        bail!("--batch, --prompt-len and --new-tokens must be at least 1");
    }
    let model = args.model.load()?;
    let cfg = &model.config;
    let capacity = args.prompt_len + args.warmup + args.new_tokens;
    if capacity > cfg.max_position_embeddings {
        bail!(
            "--prompt-len + --warmup + --new-tokens = {capacity} exceeds the model's {} positions",
            cfg.max_position_embeddings
        );
    }
    let params = stagformer_ref::init::ParamCounts::of(cfg).total();
    println!(
        "model: {} ({:.1}M parameters, f32)",
        describe(cfg),
        params as f64 / 1e6
    );
    println!(
        "device: cpu reference | batch {} | prompt {} | {} timed steps after {} warm-up",
        args.batch, args.prompt_len, args.new_tokens, args.warmup
    );
    let prompts: Vec<Vec<u32>> = (0..args.batch)
        .map(|b| {
            (0..args.prompt_len)
                .map(|i| ((b * 7919 + i * 104_729) % cfg.vocab_size) as u32)
                .collect()
        })
        .collect();

    let prefill_s = time_prefill(&model, &prompts, capacity)?;
    let prefill_tokens = (args.batch * args.prompt_len) as f64;
    println!(
        "prefill: {:.1} tokens/s ({} tokens in {:.1} ms)",
        prefill_tokens / prefill_s,
        prefill_tokens,
        prefill_s * 1e3
    );

    let not_here = |what: &str| Err(format!("n/a: {what}"));
    let mut rows = vec![ModeResult {
        name: "sequential",
        ms_per_step: time_decode(&model, &prompts, capacity, StepMode::Staggered, &args)
            .map_err(|e| e.to_string()),
    }];
    rows.push(ModeResult {
        name: "staggered",
        ms_per_step: not_here(
            "the cpu reference runs sections one after another (use --device emu|cuda)",
        ),
    });
    rows.push(ModeResult {
        name: "batched",
        ms_per_step: if cfg.stag_shared_weights {
            not_here("the cpu reference does not batch the passes (use --device emu|cuda)")
        } else {
            not_here("needs shared weights")
        },
    });
    rows.push(ModeResult {
        name: "recurrent",
        ms_per_step: match cfg.recurrent_unsupported_reason() {
            None => time_decode(&model, &prompts, capacity, StepMode::Recurrent, &args)
                .map_err(|e| e.to_string()),
            Some(reason) => Err(format!("n/a: {reason}")),
        },
    });
    print_table(&rows, args.batch);
    if args.model.device != DeviceChoice::Cpu {
        println!("note: the weight-bytes floor is reported on CUDA only");
    }
    Ok(())
}

/// Seconds to prefill every prompt.
fn time_prefill(model: &Model, prompts: &[Vec<u32>], capacity: usize) -> Result<f64> {
    let mut batch = DecodeBatch::new(model, StepMode::Staggered, prompts.len(), capacity)?;
    let start = Instant::now();
    for p in prompts {
        batch.prefill(p)?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Mean milliseconds per decode step (all sequences advance one token).
fn time_decode(
    model: &Model,
    prompts: &[Vec<u32>],
    capacity: usize,
    mode: StepMode,
    args: &Args,
) -> Result<f64> {
    let mut batch = DecodeBatch::new(model, mode, prompts.len(), capacity)?;
    let mut ids = Vec::new();
    let mut next = Vec::new();
    for p in prompts {
        let (id, logits) = batch.prefill(p)?;
        ids.push(id);
        next.push(argmax(logits.row(logits.rows - 1)));
    }
    let mut step = |next: &mut Vec<u32>| -> Result<()> {
        let logits = batch.step(&ids, next)?;
        for (r, t) in next.iter_mut().enumerate() {
            *t = argmax(logits.row(r));
        }
        Ok(())
    };
    for _ in 0..args.warmup {
        step(&mut next)?;
    }
    let start = Instant::now();
    for _ in 0..args.new_tokens {
        step(&mut next)?;
    }
    Ok(start.elapsed().as_secs_f64() * 1e3 / args.new_tokens as f64)
}

fn print_table(rows: &[ModeResult], batch: usize) {
    let base = rows
        .iter()
        .find(|r| r.name == "sequential")
        .and_then(|r| r.ms_per_step.as_ref().ok().copied());
    println!();
    println!(
        "{:<12} {:>10} {:>12} {:>22} {:>16}",
        "mode", "ms/step", "tokens/s", "speedup vs sequential", "% weight floor"
    );
    for r in rows {
        match &r.ms_per_step {
            Ok(ms) => {
                let speedup = base.map_or("-".into(), |b| format!("{:.2}x", b / ms));
                println!(
                    "{:<12} {:>10.3} {:>12.1} {:>22} {:>16}",
                    r.name,
                    ms,
                    batch as f64 * 1e3 / ms,
                    speedup,
                    "cuda only"
                );
            }
            Err(why) => println!("{:<12} {why}", r.name),
        }
    }
}
