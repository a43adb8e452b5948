//! `stagformer bench`: prefill and decode speed of every execution mode, llama-bench style.
//!
//! Every mode runs the same work in a decoder of its own. First one untimed warm-up pass (B
//! prompts of the longest --prompt-len prefilled, then --warmup decode steps): module loading,
//! first launches and the capture of the step graph happen there. Then, for every prompt
//! length P, --repetitions timed passes: B prompts of P tokens prefilled (one `ppP` sample),
//! then as many greedy decode steps as the largest --new-tokens, whose first N steps are one
//! `tgN @ dP` sample for every N. Timings are wall-clock over whole steps (each step ends with
//! the sampled tokens on the host, as in real decoding); a row reports the mean and the sample
//! standard deviation over the repetitions, and is printed as soon as its test is done.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;
use indicatif::ProgressBar;
use stagformer::{Activation, Decoder, DecoderOptions, ExecMode, GraphNodes, SamplingParams};
use stagformer_kernels::device::DeviceKind;
use stagformer_kernels::Device;
use stagformer_ref::sample::argmax;
use stagformer_ref::{DecodeBatch, Model, SeqId, StepMode};

use crate::commands::inspect::{describe, human_params};
use crate::engine::{DtypeChoice, Engine, GemvChoice, DTYPE_HELP};
use crate::model_source::{ModelArgs, Source};
use crate::progress;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, value_enum, default_value_t = DtypeChoice::Auto, help = DTYPE_HELP)]
    dtype: DtypeChoice,
    /// Sequences decoded together (at most 1024).
    #[arg(short, long, value_name = "B", default_value_t = 1)]
    batch: usize,
    /// Prompt lengths, comma-separated (at most 16): each is a `pp` test (the prefill of every
    /// sequence's prompt) and the context of the `tg` tests after it. The longest, plus the
    /// larger of --warmup and the longest --new-tokens, must fit the model's positions.
    #[arg(
        short,
        long,
        value_name = "P,...",
        value_delimiter = ',',
        default_value = "32"
    )]
    prompt_len: Vec<usize>,
    /// Decode steps, comma-separated (at most 16): each is a `tg` test (that many steps after
    /// each prompt, as ms per step and tokens/s).
    #[arg(
        short,
        long,
        value_name = "N,...",
        value_delimiter = ',',
        default_value = "32"
    )]
    new_tokens: Vec<usize>,
    /// Timed repetitions of every test (1 to 100); each row is their mean ± standard deviation.
    #[arg(short, long, value_name = "R", default_value_t = 5)]
    repetitions: usize,
    /// Decode steps of the untimed warm-up pass that each mode runs first (with graphs, the
    /// first step runs uncaptured and the second captures the step graph that the timed steps
    /// replay).
    #[arg(long, value_name = "N", default_value_t = 2)]
    warmup: usize,
    /// Launch every kernel of a step instead of replaying a captured step graph.
    #[arg(long)]
    no_graph: bool,
    /// Decode-step projections: fused GEMVs or cuBLAS GEMMs with separate glue kernels (run
    /// the bench once with each to compare them).
    #[arg(long, value_enum, default_value_t = GemvChoice::Fused)]
    gemv: GemvChoice,
    /// Slots per page of the kernel decoders' KV caches (0 = dense caches; run the bench
    /// with both to compare them).
    #[arg(long, value_name = "N", default_value_t = crate::engine::DEFAULT_KV_PAGE_SIZE)]
    kv_page_size: usize,
    /// Format of the results on stdout.
    #[arg(short, long, value_enum, default_value_t = Output::Md)]
    output: Output,
    /// Also write the results as JSON to FILE (the document `--output json` prints:
    /// `{"decode": [{model, mode, batch, context, new_tokens, graphs, gemv, ms_per_step,
    /// ms_per_step_std, tokens_per_s, ...}], "prefill": [...], ...}`), the format the
    /// benchmark report reads.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// What `bench` prints on stdout.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A markdown table, row by row as the tests finish, under two lines describing the run.
    Md,
    /// Comma-separated values with a header row, row by row as the tests finish.
    Csv,
    /// One JSON document when every mode is done (the `--json` file's).
    Json,
}

/// Most sequences one benchmark decodes together: more than any decoder batch in use, few
/// enough that the prompts and caches are sized without overflow.
const MAX_BATCH: usize = 1024;
/// Most repetitions and most entries of each list: enough for any table, and a bound on the
/// work that one command line can ask for.
const MAX_REPETITIONS: usize = 100;
const MAX_LIST: usize = 16;

impl Args {
    /// The checks that need no file: the sizes and the preset options.
    pub(crate) fn check(&self) -> Result<()> {
        if self.batch == 0
            || self.prompt_len.contains(&0)
            || self.new_tokens.contains(&0)
            || self.prompt_len.is_empty()
            || self.new_tokens.is_empty()
        {
            bail!("--batch, --prompt-len and --new-tokens must be at least 1");
        }
        if self.batch > MAX_BATCH {
            bail!("--batch {} is more than {MAX_BATCH} sequences", self.batch);
        }
        if self.repetitions == 0 || self.repetitions > MAX_REPETITIONS {
            bail!(
                "--repetitions {} must be between 1 and {MAX_REPETITIONS}",
                self.repetitions
            );
        }
        for (flag, list) in [
            ("--prompt-len", &self.prompt_len),
            ("--new-tokens", &self.new_tokens),
        ] {
            if list.len() > MAX_LIST {
                bail!(
                    "{flag}: {} values given, at most {MAX_LIST} are taken",
                    list.len()
                );
            }
        }
        self.model.check()
    }

    fn max_prompt(&self) -> usize {
        self.prompt_len.iter().copied().max().unwrap_or(1)
    }

    fn max_new(&self) -> usize {
        self.new_tokens.iter().copied().max().unwrap_or(1)
    }
}

/// One test of a mode: a prefill of every prompt, or decode steps after one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    Prefill { prompt: usize },
    Decode { prompt: usize, steps: usize },
}

impl Test {
    fn label(self) -> String {
        match self {
            Test::Prefill { prompt } => format!("pp{prompt}"),
            Test::Decode { prompt, steps } => format!("tg{steps} @ d{prompt}"),
        }
    }

    fn prompt(self) -> usize {
        match self {
            Test::Prefill { prompt } | Test::Decode { prompt, .. } => prompt,
        }
    }
}

/// The samples of one test: milliseconds of a whole prefill (`pp`) or per decode step (`tg`),
/// one per repetition, and the tokens each one produced.
#[derive(Debug, Clone)]
struct Samples {
    test: Test,
    ms: Vec<f64>,
    tokens: usize,
}

/// Mean and sample standard deviation (0 for one value).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Spread {
    mean: f64,
    std: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Spread {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = if values.len() > 1 {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        Spread {
            mean,
            std: var.sqrt(),
        }
    }
}

impl Samples {
    fn ms(&self) -> Spread {
        Spread::of(&self.ms)
    }

    /// Tokens per second, as a spread over the repetitions (not the inverse of the mean ms).
    fn tokens_per_s(&self) -> Spread {
        let rates: Vec<f64> = self
            .ms
            .iter()
            .map(|ms| self.tokens as f64 * 1e3 / ms)
            .collect();
        Spread::of(&rates)
    }
}

/// A finished test of one mode, ready to print.
struct Row {
    mode: &'static str,
    /// `Err`: why the mode does not apply here.
    samples: Result<Samples, String>,
    /// Work nodes of the captured step graph (kernel devices with graphs only).
    launches: Option<GraphNodes>,
}

/// Where the timings come from: only a GPU's say anything about a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timing {
    Gpu,
    Emulated,
    CpuReference,
}

impl Timing {
    fn name(self) -> &'static str {
        match self {
            Timing::Gpu => "gpu",
            Timing::Emulated => "emulated",
            Timing::CpuReference => "cpu reference",
        }
    }

    /// The warning printed before and after a run whose timings mean nothing for a GPU.
    fn warning(self) -> Option<&'static str> {
        match self {
            Timing::Gpu => None,
            Timing::Emulated => Some(
                "WARNING: --device emu times the CUDA kernels run by a host emulator on the CPU: \
                 these timings, and the speedups between modes, mean nothing for a GPU (the \
                 launch counts do carry over). Measure with --device cuda on a GPU.",
            ),
            Timing::CpuReference => Some(
                "WARNING: these are timings of the CPU reference implementation, not of the \
                 kernels: they mean nothing for a GPU. Measure with --device cuda on a GPU.",
            ),
        }
    }
}

/// What every row shares: the model, the device and the settings.
struct RunInfo {
    model: String,
    model_label: String,
    params: u64,
    device: String,
    dtype: &'static str,
    timing: Timing,
    batch: usize,
    graphs: Option<bool>,
    gemv: Option<&'static str>,
    repetitions: usize,
    warmup: usize,
    floor_ms: Option<f64>,
    perf: Option<PerfModel>,
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
    // which also bounds the steps of a pass (so no value runs for hours on a small model).
    let capacity = args
        .max_prompt()
        .checked_add(args.warmup.max(args.max_new()))
        .filter(|&n| n <= cfg.max_position_embeddings)
        .ok_or_else(|| {
            anyhow!(
                "--prompt-len {} + the larger of --warmup {} and --new-tokens {} exceeds the \
                 model's {} positions (max_position_embeddings)",
                args.max_prompt(),
                args.warmup,
                args.max_new(),
                cfg.max_position_embeddings
            )
        })?;
    let params = stagformer_ref::init::ParamCounts::of(cfg).total() as u64;
    let (timing, dtype, bf16) = match &engine {
        Engine::Cpu(_) => (Timing::CpuReference, "f32", false),
        Engine::Kernels { device, bf16, .. } => (
            if device.kind() == DeviceKind::Cuda {
                Timing::Gpu
            } else {
                Timing::Emulated
            },
            if *bf16 { "bf16" } else { "f32" },
            *bf16,
        ),
    };
    let weight_bytes = params as f64 * if bf16 { 2.0 } else { 4.0 };
    let floor_ms = match &engine {
        Engine::Kernels { device, .. } if timing == Timing::Gpu => {
            Some(weight_bytes / copy_bandwidth(device)? * 1e3)
        }
        _ => None,
    };
    let kernels = matches!(engine, Engine::Kernels { .. });
    let ctx = RunInfo {
        model: describe(cfg),
        model_label: model_label(&args.model),
        params,
        device: engine.describe(),
        dtype,
        timing,
        batch: args.batch,
        graphs: kernels.then_some(!args.no_graph),
        gemv: kernels.then(|| gemv_name(args.gemv)),
        repetitions: args.repetitions,
        warmup: args.warmup,
        floor_ms,
        perf: kernels.then_some(PerfModel {
            weight_bytes,
            bandwidth: MODEL_BANDWIDTH,
        }),
    };
    if let Some(warning) = timing.warning() {
        note!("{warning}");
    }
    let prompts: Vec<Vec<u32>> = (0..args.batch)
        .map(|b| {
            (0..args.max_prompt())
                .map(|i| ((b * 7919 + i * 104_729) % cfg.vocab_size) as u32)
                .collect()
        })
        .collect();

    let modes = match &engine {
        Engine::Cpu(model) => cpu_modes(model),
        Engine::Kernels { .. } => KERNEL_MODES.iter().map(|m| (m.0, None)).collect(),
    };
    let applicable = modes.iter().filter(|(_, why)| why.is_none()).count() as u64;
    let bar = progress::bar(
        applicable * units_per_mode(&args),
        "{msg} [{wide_bar}] {elapsed} (ETA {eta})",
    );
    let mut printer = Printer::new(args.output, &ctx, &bar)?;
    let mut rows: Vec<Row> = Vec::new();
    for (name, not_here) in modes {
        if let Some(why) = not_here {
            let row = bench_row(name, Err(why), None);
            printer.row(&ctx, &rows, &row)?;
            rows.push(row);
            continue;
        }
        bar.set_message(format!("{name}: setting up"));
        let mut runner: Box<dyn Runner + '_> = match &engine {
            Engine::Cpu(model) => {
                let mode = if name == "recurrent" {
                    StepMode::Recurrent
                } else {
                    StepMode::Staggered
                };
                Box::new(CpuRunner {
                    batch: DecodeBatch::new(model, mode, args.batch, capacity)?,
                    ids: Vec::new(),
                })
            }
            Engine::Kernels {
                device,
                bf16,
                source,
            } => {
                let (_, mode, recurrent) = KERNEL_MODES
                    .iter()
                    .copied()
                    .find(|m| m.0 == name)
                    .context("unknown mode")?;
                let opts = DecoderOptions {
                    mode,
                    recurrent,
                    graphs: !args.no_graph,
                    gemv: args.gemv.path(),
                    kv_page_size: args.kv_page_size,
                    ..DecoderOptions::new(args.batch, capacity)
                };
                bar.set_message(format!("{name}: uploading weights"));
                let built = if *bf16 {
                    KernelRunner::<half::bf16>::boxed(device, source, opts)
                } else {
                    KernelRunner::<f32>::boxed(device, source, opts)
                };
                match built {
                    Ok(runner) => runner,
                    Err(e) => {
                        bar.inc(units_per_mode(&args));
                        let row = bench_row(name, Err(format!("n/a: {e}")), None);
                        printer.row(&ctx, &rows, &row)?;
                        rows.push(row);
                        continue;
                    }
                }
            }
        };
        let mut on_row = |row: Row| -> Result<()> {
            printer.row(&ctx, &rows, &row)?;
            rows.push(row);
            Ok(())
        };
        if let Err(e) = bench_mode(name, runner.as_mut(), &prompts, &args, &bar, &mut on_row) {
            // A mode that fails part way (a decoder that refuses a step shape, say) is reported
            // in its row; the other modes still run.
            let why = format!("failed: {e:#}");
            on_row(bench_row(name, Err(why), None))?;
        }
    }
    bar.finish_and_clear();
    printer.finish(&ctx, &rows)?;
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&json_document(&ctx, &rows))? + "\n";
        stagformer_ref::files::write_replacing(path, text.as_bytes())?;
    }
    if ctx.perf.is_some() {
        note!(
            "note: predicted = weight bytes / {:.1} TB/s + {:.1} us per graph node (the H200 \
             model of docs/perf-notes.md), a prediction, not a measurement",
            MODEL_BANDWIDTH / 1e12,
            MODEL_NODE_US
        );
    }
    if let Some(warning) = timing.warning() {
        note!("{warning}");
    }
    Ok(())
}

fn bench_row(
    mode: &'static str,
    samples: Result<Samples, String>,
    launches: Option<GraphNodes>,
) -> Row {
    Row {
        mode,
        samples,
        launches,
    }
}

/// The preset's name or the checkpoint directory's: the `model` of the first line and of the CSV.
fn model_label(args: &ModelArgs) -> String {
    match (&args.model, args.random_preset()) {
        (Some(dir), _) => dir
            .file_name()
            .unwrap_or(dir.as_os_str())
            .to_string_lossy()
            .into_owned(),
        (None, Some(name)) => name.to_owned(),
        (None, None) => "-".into(),
    }
}

fn gemv_name(gemv: GemvChoice) -> &'static str {
    match gemv {
        GemvChoice::Fused => "fused",
        GemvChoice::Cublas => "cublas",
    }
}

/// The kernel decoder's modes, in table order: (name, schedule, recurrent).
const KERNEL_MODES: [(&str, ExecMode, bool); 5] = [
    ("sequential", ExecMode::Sequential, false),
    ("staggered", ExecMode::Staggered, false),
    ("batched", ExecMode::Batched, false),
    ("grouped", ExecMode::Grouped, false),
    ("recurrent", ExecMode::Sequential, true),
];

/// The CPU reference runs the sections one after another (the sequential schedule): every
/// mode, with the reason it is not run where it is not.
fn cpu_modes(model: &Model) -> Vec<(&'static str, Option<String>)> {
    let na = |what: &str| Some(format!("n/a: {what}"));
    vec![
        ("sequential", None),
        (
            "staggered",
            na("the cpu reference runs sections one after another (use --device emu|cuda)"),
        ),
        (
            "batched",
            na("the cpu reference does not batch the passes (use --device emu|cuda)"),
        ),
        (
            "grouped",
            na("the cpu reference does not group the sections (use --device emu|cuda)"),
        ),
        (
            "recurrent",
            model
                .config
                .recurrent_unsupported_reason()
                .map(|reason| format!("n/a: {reason}")),
        ),
    ]
}

/// Progress units of one mode: one per prefill and one per decode step.
fn units_per_mode(args: &Args) -> u64 {
    let pass = 1 + args.max_new() as u64;
    let timed = args.prompt_len.len() as u64 * args.repetitions as u64 * pass;
    1 + args.warmup as u64 + timed
}

/// One mode's decoder, seen by the bench: B sequences at a time, greedy tokens.
trait Runner {
    /// Prefills every prompt; returns each sequence's first token.
    fn prefill(&mut self, prompts: &[&[u32]]) -> Result<Vec<u32>>;
    /// One decode step of every sequence; returns the next tokens.
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<u32>>;
    /// Frees every sequence.
    fn clear(&mut self) -> Result<()>;
    /// Work nodes of the captured step graph of `rows` rows, if there is one.
    fn launches(&self, rows: usize) -> Result<Option<GraphNodes>>;
}

struct CpuRunner<'a> {
    batch: DecodeBatch<'a>,
    ids: Vec<SeqId>,
}

impl Runner for CpuRunner<'_> {
    fn prefill(&mut self, prompts: &[&[u32]]) -> Result<Vec<u32>> {
        let mut next = Vec::with_capacity(prompts.len());
        for p in prompts {
            let (id, logits) = self.batch.prefill(p)?;
            self.ids.push(id);
            next.push(argmax(logits.row(logits.rows - 1)));
        }
        Ok(next)
    }

    fn step(&mut self, tokens: &[u32]) -> Result<Vec<u32>> {
        let logits = self.batch.step(&self.ids, tokens)?;
        Ok((0..tokens.len()).map(|r| argmax(logits.row(r))).collect())
    }

    fn clear(&mut self) -> Result<()> {
        for id in self.ids.drain(..) {
            self.batch.remove(id)?;
        }
        Ok(())
    }

    fn launches(&self, _rows: usize) -> Result<Option<GraphNodes>> {
        Ok(None)
    }
}

struct KernelRunner<T: Activation> {
    decoder: Decoder<T>,
    ids: Vec<stagformer::SeqId>,
    /// Greedy settings for every row of the largest step.
    greedy: Vec<SamplingParams>,
}

/// Greedy sampling on the device.
const GREEDY: SamplingParams = SamplingParams::GREEDY;

impl<T: Activation + 'static> KernelRunner<T> {
    fn boxed(
        device: &Device,
        source: &Source,
        opts: DecoderOptions,
    ) -> stagformer::Result<Box<dyn Runner>> {
        Ok(Box::new(KernelRunner {
            decoder: Decoder::<T>::from_source(device, source, opts)?,
            ids: Vec::new(),
            greedy: vec![GREEDY; opts.max_batch],
        }))
    }
}

impl<T: Activation> Runner for KernelRunner<T> {
    fn prefill(&mut self, prompts: &[&[u32]]) -> Result<Vec<u32>> {
        let mut next = Vec::with_capacity(prompts.len());
        for p in prompts {
            let (id, logits) = self.decoder.prefill(p)?;
            let vocab = logits.len() / p.len();
            self.ids.push(id);
            next.push(argmax(&logits[logits.len() - vocab..]));
        }
        Ok(next)
    }

    fn step(&mut self, tokens: &[u32]) -> Result<Vec<u32>> {
        let rows = self.ids.len();
        let greedy = self.greedy.get(..rows).unwrap_or(&self.greedy);
        let next = self.decoder.step_sample(&self.ids, tokens, greedy)?;
        Ok(next.iter().map(|s| s.token).collect())
    }

    fn clear(&mut self) -> Result<()> {
        for id in self.ids.drain(..) {
            self.decoder.remove(id)?;
        }
        Ok(())
    }

    fn launches(&self, rows: usize) -> Result<Option<GraphNodes>> {
        Ok(self.decoder.graph_node_counts(rows, true)?)
    }
}

/// The warm-up pass, then every test of one mode; each finished test goes to `on_row`.
fn bench_mode(
    name: &'static str,
    runner: &mut dyn Runner,
    prompts: &[Vec<u32>],
    args: &Args,
    bar: &ProgressBar,
    on_row: &mut dyn FnMut(Row) -> Result<()>,
) -> Result<()> {
    let batch = prompts.len();
    bar.set_message(format!("{name}: warm-up"));
    let all: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let mut next = runner.prefill(&all)?;
    bar.inc(1);
    for _ in 0..args.warmup {
        next = runner.step(&next)?;
        bar.inc(1);
    }
    runner.clear()?;
    let max_new = args.max_new();
    for &prompt in &args.prompt_len {
        let cut: Vec<&[u32]> = prompts.iter().map(|p| &p[..prompt]).collect();
        let mut prefill_ms = Vec::new();
        // Per repetition, the time after each decode step (ms since the first step began).
        let mut decode_ms: Vec<Vec<f64>> = Vec::new();
        for rep in 0..args.repetitions {
            bar.set_message(format!(
                "{name}: pp{prompt} + tg{max_new}, repetition {}/{}",
                rep + 1,
                args.repetitions
            ));
            let start = Instant::now();
            let mut next = runner.prefill(&cut)?;
            prefill_ms.push(start.elapsed().as_secs_f64() * 1e3);
            bar.inc(1);
            let start = Instant::now();
            let mut after = Vec::with_capacity(max_new);
            for _ in 0..max_new {
                next = runner.step(&next)?;
                after.push(start.elapsed().as_secs_f64() * 1e3);
                bar.inc(1);
            }
            runner.clear()?;
            decode_ms.push(after);
        }
        let launches = runner.launches(batch)?;
        on_row(bench_row(
            name,
            Ok(Samples {
                test: Test::Prefill { prompt },
                ms: prefill_ms,
                tokens: batch * prompt,
            }),
            None,
        ))?;
        for &steps in &args.new_tokens {
            let ms = decode_ms
                .iter()
                .map(|after| after[steps - 1] / steps as f64)
                .collect();
            on_row(bench_row(
                name,
                Ok(Samples {
                    test: Test::Decode { prompt, steps },
                    ms,
                    tokens: batch,
                }),
                launches,
            ))?;
        }
    }
    Ok(())
}

/// The row of `mode` for `test` in the sequential schedule, the speedups' base.
fn base_ms(rows: &[Row], test: Test) -> Option<f64> {
    rows.iter()
        .filter(|r| r.mode == "sequential")
        .filter_map(|r| r.samples.as_ref().ok())
        .find(|s| s.test == test)
        .map(|s| s.ms().mean)
}

/// Writes rows to stdout in the chosen format as they come (markdown and CSV), or the whole
/// document at the end (JSON). Lines go out while the progress bar is held off the terminal.
struct Printer<'a> {
    output: Output,
    bar: &'a ProgressBar,
}

/// The numbers of one row, formatted or not by each output.
struct Figures {
    test: String,
    prompt: usize,
    steps: Option<usize>,
    rate: Spread,
    ms: Spread,
    speedup: Option<f64>,
    floor_pct: Option<f64>,
    launches: Option<GraphNodes>,
    predicted: Option<f64>,
}

fn figures(ctx: &RunInfo, before: &[Row], row: &Row, s: &Samples) -> Figures {
    let ms = s.ms();
    let decode = matches!(s.test, Test::Decode { .. });
    Figures {
        test: s.test.label(),
        prompt: s.test.prompt(),
        steps: match s.test {
            Test::Decode { steps, .. } => Some(steps),
            Test::Prefill { .. } => None,
        },
        rate: s.tokens_per_s(),
        ms,
        speedup: if row.mode == "sequential" {
            Some(1.0)
        } else {
            base_ms(before, s.test).map(|b| b / ms.mean)
        },
        floor_pct: ctx.floor_ms.filter(|_| decode).map(|f| 100.0 * f / ms.mean),
        launches: row.launches,
        predicted: ctx
            .perf
            .as_ref()
            .filter(|_| decode)
            .and_then(|m| m.step_ms(row.launches)),
    }
}

const CSV_HEADER: [&str; 25] = [
    "model",
    "model_description",
    "params",
    "device",
    "dtype",
    "timing",
    "batch",
    "graphs",
    "gemv",
    "mode",
    "test",
    "prompt_len",
    "new_tokens",
    "repetitions",
    "tokens_per_s",
    "tokens_per_s_std",
    "ms",
    "ms_std",
    "speedup_vs_sequential",
    "weight_floor_pct",
    "launches_per_step",
    "copies_per_step",
    "predicted_ms_per_step",
    "weight_floor_ms",
    "note",
];

impl<'a> Printer<'a> {
    fn new(output: Output, ctx: &RunInfo, bar: &'a ProgressBar) -> Result<Self> {
        let p = Printer { output, bar };
        let about = [
            format!(
                "model: {}: {} ({} parameters, {} weights)",
                ctx.model_label,
                ctx.model,
                human_params(ctx.params),
                ctx.dtype
            ),
            format!(
                "device: {} | batch {} | step graphs {} | gemv {} | {} repetitions after a \
                 warm-up pass of {} decode steps | timings: {}{}",
                ctx.device,
                ctx.batch,
                match ctx.graphs {
                    None => "n/a",
                    Some(true) => "on",
                    Some(false) => "off",
                },
                ctx.gemv.unwrap_or("n/a"),
                ctx.repetitions,
                ctx.warmup,
                ctx.timing.name(),
                if ctx.timing == Timing::Gpu {
                    ""
                } else {
                    " (meaningless for a GPU)"
                }
            ),
        ];
        match output {
            Output::Md => {
                let mut text = String::new();
                for line in &about {
                    text.push_str(line);
                    text.push_str("  \n");
                }
                if let Some(floor) = ctx.floor_ms {
                    text.push_str(&format!(
                        "weights: {:.1} MB per step; measured copy bandwidth -> floor {floor:.3} \
                         ms/step  \n",
                        ctx.perf.as_ref().map_or(0.0, |m| m.weight_bytes) / 1e6
                    ));
                }
                text.push_str(
                    "tests: ppP = the prefill of every sequence's P-token prompt (ms: the whole \
                     prefill); tgN @ dP = N decode steps after it (ms: per step); t/s and ms are \
                     mean ± standard deviation over the repetitions  \n",
                );
                text.push('\n');
                text.push_str(
                    "| mode | test | t/s | ms | vs sequential | % weight floor | launches | \
                     predicted ms |\n",
                );
                text.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
                p.emit(&text)?;
            }
            Output::Csv => {
                for line in &about {
                    note!("{line}");
                }
                p.emit(&(csv_line(CSV_HEADER.iter().map(|s| s.to_string()))? + "\n"))?;
            }
            Output::Json => {
                for line in &about {
                    note!("{line}");
                }
            }
        }
        Ok(p)
    }

    /// Prints `line` on stdout, with the progress bar out of the way.
    fn emit(&self, text: &str) -> Result<()> {
        self.bar.suspend(|| -> Result<()> {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .context("cannot write to stdout")
        })
    }

    /// Prints one finished row; `before` are the rows printed so far (for the speedups).
    fn row(&mut self, ctx: &RunInfo, before: &[Row], row: &Row) -> Result<()> {
        let fmt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".into(), f);
        match self.output {
            Output::Json => Ok(()),
            Output::Md => {
                let line = match &row.samples {
                    Ok(s) => {
                        let f = figures(ctx, before, row, s);
                        format!(
                            "| {} | {} | {:.2} ± {:.2} | {} | {} | {} | {} | {} |\n",
                            row.mode,
                            f.test,
                            f.rate.mean,
                            f.rate.std,
                            ms_text(f.ms),
                            fmt(f.speedup, &|x| format!("{x:.2}x")),
                            fmt(f.floor_pct, &|x| format!("{x:.0}%")),
                            f.launches.map_or("-".into(), |n| n.kernels.to_string()),
                            fmt(f.predicted, &|x| format!("{x:.3}")),
                        )
                    }
                    Err(why) => format!("| {} | {why} | - | - | - | - | - | - |\n", row.mode),
                };
                self.emit(&line)
            }
            Output::Csv => {
                let opt = |v: Option<f64>| v.map_or(String::new(), |x| x.to_string());
                let mut fields = vec![
                    ctx.model_label.clone(),
                    ctx.model.clone(),
                    ctx.params.to_string(),
                    ctx.device.clone(),
                    ctx.dtype.to_string(),
                    ctx.timing.name().to_string(),
                    ctx.batch.to_string(),
                    ctx.graphs.map_or(String::new(), |g| g.to_string()),
                    ctx.gemv.unwrap_or_default().to_string(),
                    row.mode.to_string(),
                ];
                match &row.samples {
                    Ok(s) => {
                        let f = figures(ctx, before, row, s);
                        fields.extend([
                            f.test,
                            f.prompt.to_string(),
                            f.steps.map_or(String::new(), |n| n.to_string()),
                            s.ms.len().to_string(),
                            f.rate.mean.to_string(),
                            f.rate.std.to_string(),
                            f.ms.mean.to_string(),
                            f.ms.std.to_string(),
                            opt(f.speedup),
                            opt(f.floor_pct),
                            f.launches.map_or(String::new(), |n| n.kernels.to_string()),
                            f.launches
                                .map_or(String::new(), |n| (n.copies + n.fills).to_string()),
                            opt(f.predicted),
                            opt(ctx.floor_ms),
                            String::new(),
                        ]);
                    }
                    Err(why) => {
                        fields.extend(std::iter::repeat_n(String::new(), 14));
                        fields.push(why.clone());
                    }
                }
                self.emit(&(csv_line(fields)? + "\n"))
            }
        }
    }

    /// What comes after the last row: the JSON document, for `--output json`.
    fn finish(&self, ctx: &RunInfo, rows: &[Row]) -> Result<()> {
        if self.output == Output::Json {
            let text = serde_json::to_string_pretty(&json_document(ctx, rows))? + "\n";
            self.emit(&text)?;
        }
        Ok(())
    }
}

/// Milliseconds as `mean ± std`, both with the decimals that give the mean four or five
/// significant digits.
fn ms_text(ms: Spread) -> String {
    let decimals = if ms.mean >= 100.0 {
        1
    } else if ms.mean >= 1.0 {
        3
    } else {
        4
    };
    format!("{:.decimals$} ± {:.decimals$}", ms.mean, ms.std)
}

/// One CSV record (quoted where a field needs it), without the line end.
fn csv_line(fields: impl IntoIterator<Item = String>) -> Result<String> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    writer.write_record(fields.into_iter().collect::<Vec<_>>())?;
    let bytes = writer.into_inner().map_err(|e| anyhow!("{e}"))?;
    let mut text = String::from_utf8(bytes)?;
    text.truncate(text.trim_end_matches('\n').len());
    Ok(text)
}

/// The results as one JSON document: `decode` (one entry per mode and tg test; the fields the
/// benchmark report reads are model, mode, batch, context and ms_per_step), `prefill` (one per
/// mode and pp test), `skipped` (modes that do not apply, with the reason) and the run's
/// settings.
fn json_document(ctx: &RunInfo, rows: &[Row]) -> serde_json::Value {
    let mut decode = Vec::new();
    let mut prefill = Vec::new();
    let mut skipped = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let s = match &row.samples {
            Ok(s) => s,
            Err(why) => {
                skipped.push(serde_json::json!({ "mode": row.mode, "reason": why }));
                continue;
            }
        };
        let f = figures(ctx, &rows[..i], row, s);
        match s.test {
            Test::Decode { prompt, steps } => decode.push(serde_json::json!({
                "model": ctx.model,
                "mode": row.mode,
                "batch": ctx.batch,
                "context": prompt,
                "new_tokens": steps,
                "graphs": ctx.graphs.unwrap_or(false),
                "gemv": ctx.gemv.unwrap_or("n/a"),
                // The mean over the repetitions, and their spread.
                "ms_per_step": f.ms.mean,
                "ms_per_step_std": f.ms.std,
                "tokens_per_s": f.rate.mean,
                "tokens_per_s_std": f.rate.std,
                "repetitions": s.ms.len(),
                "samples_ms_per_step": s.ms,
                "speedup_vs_sequential": f.speedup,
                // Counted from the captured step graph: kernel nodes, and copy/fill nodes
                // separately (null without a graph).
                "launches_per_step": row.launches.map(|n| n.kernels),
                "copies_per_step": row.launches.map(|n| n.copies + n.fills),
                // The perf model's step time for this mode (a prediction, null without a graph).
                "predicted_ms_per_step": f.predicted,
            })),
            Test::Prefill { prompt } => prefill.push(serde_json::json!({
                "model": ctx.model,
                "mode": row.mode,
                "batch": ctx.batch,
                "prompt_len": prompt,
                "ms": f.ms.mean,
                "ms_std": f.ms.std,
                "tokens_per_s": f.rate.mean,
                "tokens_per_s_std": f.rate.std,
                "repetitions": s.ms.len(),
                "samples_ms": s.ms,
                "speedup_vs_sequential": f.speedup,
            })),
        }
    }
    serde_json::json!({
        "model": ctx.model,
        "model_label": ctx.model_label,
        "params": ctx.params,
        "device": ctx.device,
        "dtype": ctx.dtype,
        "timing": ctx.timing.name(),
        "timing_warning": ctx.timing.warning(),
        "batch": ctx.batch,
        "repetitions": ctx.repetitions,
        "warmup_steps": ctx.warmup,
        "decode": decode,
        "prefill": prefill,
        "skipped": skipped,
        "weight_floor_ms": ctx.floor_ms,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_the_mean_and_the_sample_standard_deviation() {
        let s = Spread::of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(s.mean, 5.0);
        // Sum of squared deviations 32 over n - 1 = 7.
        assert!((s.std - (32.0f64 / 7.0).sqrt()).abs() < 1e-12, "{s:?}");
        assert_eq!(
            Spread::of(&[3.5]),
            Spread {
                mean: 3.5,
                std: 0.0
            }
        );
    }

    #[test]
    fn rates_are_averaged_per_repetition() {
        // 10 tokens in 10 ms and in 40 ms: 1000 and 250 tokens/s, not 10 / 25 ms = 400.
        let s = Samples {
            test: Test::Prefill { prompt: 10 },
            ms: vec![10.0, 40.0],
            tokens: 10,
        };
        assert_eq!(s.tokens_per_s().mean, 625.0);
        assert_eq!(s.ms().mean, 25.0);
    }

    #[test]
    fn csv_fields_with_commas_or_quotes_are_quoted() {
        let line = csv_line(["a".into(), "b, c".into(), "say \"x\"".into()]).unwrap();
        assert_eq!(line, "a,\"b, c\",\"say \"\"x\"\"\"");
    }

    #[test]
    fn test_labels_follow_llama_bench() {
        assert_eq!(Test::Prefill { prompt: 512 }.label(), "pp512");
        assert_eq!(
            Test::Decode {
                prompt: 512,
                steps: 128
            }
            .label(),
            "tg128 @ d512"
        );
    }
}
