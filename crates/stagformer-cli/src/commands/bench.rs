//! `stagformer bench`: decode speed per execution mode, prefill speed, speedups.
//!
//! Every mode runs the same work: B sequences prefilled with P tokens each, then N decode steps
//! of greedy tokens. Timings are wall-clock over whole steps (each step ends with the sampled
//! tokens on the host, as in real decoding).

use std::time::Instant;

use anyhow::{bail, Result};
use stagformer::{Activation, Decoder, DecoderOptions, ExecMode, GraphNodes, SamplingParams};
use stagformer_kernels::device::DeviceKind;
use stagformer_kernels::Device;
use stagformer_ref::sample::argmax;
use stagformer_ref::{DecodeBatch, Model, StepMode};

use crate::commands::inspect::describe;
use crate::engine::{DtypeChoice, Engine, GemvChoice};
use crate::model_source::{ModelArgs, Source};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Activation and weight storage on the kernel devices; auto = bf16 on cuda, f32 on emu.
    #[arg(long, value_enum, default_value_t = DtypeChoice::Auto)]
    dtype: DtypeChoice,
    /// Sequences decoded together (at most 1024).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Prompt tokens per sequence (--prompt-len + --warmup + --new-tokens must fit the model's
    /// max_position_embeddings).
    #[arg(long, default_value_t = 32)]
    prompt_len: usize,
    /// Decode steps timed per mode (bounded by the model's positions, see --prompt-len).
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// Untimed decode steps before timing (with graphs, the first runs uncaptured and the
    /// second captures the step graph that the timed steps replay).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Launch every kernel of a step instead of replaying a captured step graph.
    #[arg(long)]
    no_graph: bool,
    /// Decode-step projections: fused GEMVs or cuBLAS GEMMs with separate glue kernels (run
    /// the bench once with each to compare them).
    #[arg(long, value_enum, default_value_t = GemvChoice::Fused)]
    gemv: GemvChoice,
    /// Also write the results as JSON (`{"decode": [{model, mode, batch, context, graphs,
    /// ms_per_step}], ...}`), the format the benchmark report reads.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Most sequences one benchmark decodes together: more than any decoder batch in use, few
/// enough that the prompts and caches are sized without overflow.
const MAX_BATCH: usize = 1024;

/// One row of the result table.
struct ModeResult {
    name: &'static str,
    /// `Err`: why the mode does not apply here.
    ms_per_step: Result<f64, String>,
    /// Work nodes of the captured step graph (kernel devices with graphs only).
    launches: Option<GraphNodes>,
}

impl Args {
    /// The checks that need no file: the sizes and the preset options.
    pub(crate) fn check(&self) -> Result<()> {
        if self.batch == 0 || self.prompt_len == 0 || self.new_tokens == 0 {
            bail!("--batch, --prompt-len and --new-tokens must be at least 1");
        }
        if self.batch > MAX_BATCH {
            bail!("--batch {} is more than {MAX_BATCH} sequences", self.batch);
        }
        self.model.check()
    }
}

pub fn run(args: Args) -> Result<()> {
    args.check()?;
    // Refused before the model is built: a path that cannot be replaced by a regular file
    // should not cost a whole run.
    if let Some(path) = &args.json {
        stagformer_ref::files::check_replaceable(path)?;
    }
    let engine = Engine::open(&args.model, args.dtype)?;
    let cfg = engine.config();
    // Checked: each is at most usize::MAX; their sum is bounded by the model's positions,
    // which also bounds the steps run (so no value runs for hours on a small model).
    let capacity = args
        .prompt_len
        .checked_add(args.warmup)
        .and_then(|n| n.checked_add(args.new_tokens))
        .filter(|&n| n <= cfg.max_position_embeddings)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--prompt-len {} + --warmup {} + --new-tokens {} exceeds the model's {} \
                 positions (max_position_embeddings)",
                args.prompt_len,
                args.warmup,
                args.new_tokens,
                cfg.max_position_embeddings
            )
        })?;
    let params = stagformer_ref::init::ParamCounts::of(cfg).total();
    outln!(
        "model: {} ({:.1}M parameters, f32)",
        describe(cfg),
        params as f64 / 1e6
    );
    outln!(
        "device: {} | batch {} | prompt {} | {} timed steps after {} warm-up | step graphs {} | gemv {}",
        engine.describe(),
        args.batch,
        args.prompt_len,
        args.new_tokens,
        args.warmup,
        match (&engine, args.no_graph) {
            (Engine::Cpu(_), _) => "n/a",
            (_, true) => "off",
            (_, false) => "on",
        },
        match &engine {
            Engine::Cpu(_) => "n/a".to_string(),
            _ => format!("{:?}", args.gemv).to_lowercase(),
        }
    );
    let prompts: Vec<Vec<u32>> = (0..args.batch)
        .map(|b| {
            (0..args.prompt_len)
                .map(|i| ((b * 7919 + i * 104_729) % cfg.vocab_size) as u32)
                .collect()
        })
        .collect();

    let rows = match &engine {
        Engine::Cpu(model) => cpu_rows(model, &prompts, capacity, &args)?,
        Engine::Kernels {
            device,
            bf16: false,
            source,
        } => kernel_rows::<f32>(device, source, &prompts, capacity, &args)?,
        Engine::Kernels {
            device,
            bf16: true,
            source,
        } => kernel_rows::<half::bf16>(device, source, &prompts, capacity, &args)?,
    };
    let model = match &engine {
        Engine::Kernels { bf16, .. } => Some(PerfModel {
            weight_bytes: params as f64 * if *bf16 { 2.0 } else { 4.0 },
            bandwidth: MODEL_BANDWIDTH,
        }),
        Engine::Cpu(_) => None,
    };
    let floor = match &engine {
        Engine::Kernels { device, bf16, .. } if device.kind() == DeviceKind::Cuda => {
            let bytes = params as f64 * if *bf16 { 2.0 } else { 4.0 };
            let bandwidth = copy_bandwidth(device)?;
            outln!(
                "weights: {:.1} MB per step; measured copy bandwidth {:.0} GB/s -> floor {:.3} ms/step",
                bytes / 1e6,
                bandwidth / 1e9,
                bytes / bandwidth * 1e3
            );
            Some(bytes / bandwidth * 1e3)
        }
        _ => None,
    };
    print_table(&rows, args.batch, floor, model.as_ref())?;
    if floor.is_none() {
        outln!("note: the weight-bytes floor is measured on CUDA devices only");
    }
    if model.is_some() {
        outln!(
            "note: predicted = weight bytes / {:.1} TB/s + {:.1} us per graph node (the H200 model of docs/perf-notes.md), a prediction, not a measurement",
            MODEL_BANDWIDTH / 1e12,
            MODEL_NODE_US
        );
    }
    if let Some(path) = &args.json {
        write_json(path, &describe(cfg), &rows, &args, floor, model.as_ref())?;
    }
    Ok(())
}

/// The CPU reference: sections run one after another (the sequential schedule).
fn cpu_rows(
    model: &Model,
    prompts: &[Vec<u32>],
    capacity: usize,
    args: &Args,
) -> Result<Vec<ModeResult>> {
    let cfg = &model.config;
    let prefill_s = time_prefill(model, prompts, capacity)?;
    print_prefill(prompts, prefill_s)?;
    let not_here = |what: &str| Err(format!("n/a: {what}"));
    Ok(vec![
        ModeResult {
            name: "sequential",
            ms_per_step: time_decode(model, prompts, capacity, StepMode::Staggered, args)
                .map_err(|e| e.to_string()),
            launches: None,
        },
        ModeResult {
            name: "staggered",
            ms_per_step: not_here(
                "the cpu reference runs sections one after another (use --device emu|cuda)",
            ),
            launches: None,
        },
        ModeResult {
            name: "batched",
            ms_per_step: not_here(
                "the cpu reference does not batch the passes (use --device emu|cuda)",
            ),
            launches: None,
        },
        ModeResult {
            name: "grouped",
            ms_per_step: not_here(
                "the cpu reference does not group the sections (use --device emu|cuda)",
            ),
            launches: None,
        },
        ModeResult {
            name: "recurrent",
            ms_per_step: match cfg.recurrent_unsupported_reason() {
                None => time_decode(model, prompts, capacity, StepMode::Recurrent, args)
                    .map_err(|e| e.to_string()),
                Some(reason) => Err(format!("n/a: {reason}")),
            },
            launches: None,
        },
    ])
}

fn print_prefill(prompts: &[Vec<u32>], seconds: f64) -> Result<()> {
    let tokens: usize = prompts.iter().map(Vec::len).sum();
    outln!(
        "prefill: {:.1} tokens/s ({tokens} tokens in {:.1} ms)",
        tokens as f64 / seconds,
        seconds * 1e3
    );
    Ok(())
}

/// The kernel decoder: every execution mode, each in a decoder of its own.
fn kernel_rows<T: Activation>(
    device: &Device,
    source: &Source,
    prompts: &[Vec<u32>],
    capacity: usize,
    args: &Args,
) -> Result<Vec<ModeResult>> {
    let modes = [
        ("sequential", ExecMode::Sequential, false),
        ("staggered", ExecMode::Staggered, false),
        ("batched", ExecMode::Batched, false),
        ("grouped", ExecMode::Grouped, false),
        ("recurrent", ExecMode::Sequential, true),
    ];
    let mut rows = Vec::new();
    for (name, mode, recurrent) in modes {
        let opts = DecoderOptions {
            mode,
            recurrent,
            graphs: !args.no_graph,
            gemv: args.gemv.path(),
            ..DecoderOptions::new(prompts.len(), capacity)
        };
        let timed = Decoder::<T>::from_source(device, source, opts)
            .map_err(|e| format!("n/a: {e}"))
            .and_then(|mut dec| {
                time_kernel_decode(&mut dec, prompts, args).map_err(|e| e.to_string())
            });
        // The prefill speed is reported once, from the first mode (all prefill alike).
        let (timed, launches) = match timed {
            Ok((prefill_s, ms, launches)) => {
                if name == "sequential" {
                    print_prefill(prompts, prefill_s)?;
                }
                (Ok(ms), launches)
            }
            Err(e) => (Err(e), None),
        };
        rows.push(ModeResult {
            name,
            ms_per_step: timed,
            launches,
        });
    }
    Ok(rows)
}

/// Seconds to prefill the prompts, mean milliseconds per step of a kernel decoder (greedy
/// sampling on the device) and the work nodes of its step graph (when it captured one).
fn time_kernel_decode<T: Activation>(
    dec: &mut Decoder<T>,
    prompts: &[Vec<u32>],
    args: &Args,
) -> stagformer::Result<(f64, f64, Option<GraphNodes>)> {
    let start = Instant::now();
    let mut ids = Vec::new();
    let mut next = Vec::new();
    for p in prompts {
        let (id, logits) = dec.prefill(p)?;
        let vocab = logits.len() / p.len();
        ids.push(id);
        next.push(argmax(&logits[logits.len() - vocab..]));
    }
    let prefill_s = start.elapsed().as_secs_f64();
    let greedy = SamplingParams::GREEDY;
    for step in 0..args.warmup {
        next = dec.step_sample(&ids, &next, &greedy, step as u32)?;
    }
    let start = Instant::now();
    for step in 0..args.new_tokens {
        next = dec.step_sample(&ids, &next, &greedy, (args.warmup + step) as u32)?;
    }
    let ms = start.elapsed().as_secs_f64() * 1e3 / args.new_tokens as f64;
    Ok((
        prefill_s,
        ms,
        dec.graph_node_counts(ids.len(), Some(&greedy))?,
    ))
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

/// Device-to-device copy bandwidth (bytes/s): 256 MiB copied 5 times, timed with events.
fn copy_bandwidth(device: &Device) -> Result<f64> {
    let n = 64 << 20; // f32 elements = 256 MiB
    let stream = device.new_stream()?;
    let src = stagformer_kernels::DeviceBuffer::<f32>::alloc(device, n)?;
    let mut dst = stagformer_kernels::DeviceBuffer::<f32>::alloc(device, n)?;
    dst.copy_from(&stream, &src)?;
    let start = stream.record_timed_event()?;
    let copies = 5;
    for _ in 0..copies {
        dst.copy_from(&stream, &src)?;
    }
    let end = stream.record_timed_event()?;
    end.synchronize()?;
    let ms = f64::from(start.elapsed_ms(&end)?);
    // A copy reads and writes every byte.
    Ok((2 * n * 4 * copies) as f64 / (ms / 1e3))
}

/// Device copy bandwidth (bytes read + written per second) and dead time per graph node of the
/// performance model that `docs/perf-notes.md` predicts with (an H200).
const MODEL_BANDWIDTH: f64 = 4.3e12;
const MODEL_NODE_US: f64 = 1.3;

/// A decode step predicted from its weight bytes and its launches: every weight read once at
/// the model's bandwidth, plus the dead time of every kernel node of the step graph.
struct PerfModel {
    weight_bytes: f64,
    bandwidth: f64,
}

impl PerfModel {
    fn step_ms(&self, launches: Option<GraphNodes>) -> Option<f64> {
        let nodes = launches?;
        let nodes = (nodes.kernels + nodes.copies + nodes.fills) as f64;
        Some(self.weight_bytes / self.bandwidth * 1e3 + nodes * MODEL_NODE_US * 1e-3)
    }
}

fn write_json(
    path: &std::path::Path,
    model_name: &str,
    rows: &[ModeResult],
    args: &Args,
    floor_ms: Option<f64>,
    perf: Option<&PerfModel>,
) -> Result<()> {
    let decode: Vec<serde_json::Value> = rows
        .iter()
        .filter_map(|r| r.ms_per_step.as_ref().ok().map(|ms| (r, *ms)))
        .map(|(r, ms)| {
            serde_json::json!({
                "model": model_name,
                "mode": r.name,
                "batch": args.batch,
                "context": args.prompt_len,
                "graphs": !args.no_graph,
                "gemv": format!("{:?}", args.gemv).to_lowercase(),
                "ms_per_step": ms,
                // Counted from the captured step graph: kernel nodes, and copy/fill nodes
                // separately (null without a graph).
                "launches_per_step": r.launches.map(|n| n.kernels),
                "copies_per_step": r.launches.map(|n| n.copies + n.fills),
                // The perf model's step time for this mode (a prediction, null without a graph).
                "predicted_ms_per_step": perf.and_then(|m| m.step_ms(r.launches)),
            })
        })
        .collect();
    let doc = serde_json::json!({ "decode": decode, "weight_floor_ms": floor_ms });
    let text = serde_json::to_string_pretty(&doc)? + "\n";
    stagformer_ref::files::write_replacing(path, text.as_bytes())?;
    Ok(())
}

fn print_table(
    rows: &[ModeResult],
    batch: usize,
    floor_ms: Option<f64>,
    perf: Option<&PerfModel>,
) -> Result<()> {
    let base = rows
        .iter()
        .find(|r| r.name == "sequential")
        .and_then(|r| r.ms_per_step.as_ref().ok().copied());
    outln!();
    outln!(
        "{:<12} {:>10} {:>12} {:>22} {:>16} {:>10} {:>14}",
        "mode",
        "ms/step",
        "tokens/s",
        "speedup vs sequential",
        "% weight floor",
        "launches",
        "predicted ms"
    );
    for r in rows {
        match &r.ms_per_step {
            Ok(ms) => {
                let speedup = base.map_or("-".into(), |b| format!("{:.2}x", b / ms));
                outln!(
                    "{:<12} {:>10.3} {:>12.1} {:>22} {:>16} {:>10} {:>14}",
                    r.name,
                    ms,
                    batch as f64 * 1e3 / ms,
                    speedup,
                    floor_ms.map_or("-".into(), |f| format!("{:.0}%", 100.0 * f / ms)),
                    r.launches.map_or("-".into(), |n| n.kernels.to_string()),
                    perf.and_then(|m| m.step_ms(r.launches))
                        .map_or("-".into(), |ms| format!("{ms:.3}"))
                );
            }
            Err(why) => outln!("{:<12} {why}", r.name),
        }
    }
    Ok(())
}
