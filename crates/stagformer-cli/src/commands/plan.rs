//! `stagformer inspect --plan`: the device memory a kernel decoder of the checkpoint would hold
//! for a batch, a capacity, a dtype and a schedule, computed without a device.

use anyhow::{Context, Result};
use indicatif::DecimalBytes;
use stagformer::{DecoderOptions, MemoryPlan};
use stagformer_kernels::dtype::DType;
use stagformer_ref::Config;

use crate::engine::ExecChoice;

/// The flags of `inspect --plan`.
#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// Print the device memory plan of a kernel decoder instead of the model's description.
    #[arg(long)]
    pub plan: bool,
    /// With --plan: sequences the decoder holds at once.
    #[arg(long, value_name = "B", default_value_t = 1, requires = "plan")]
    pub max_batch: usize,
    /// With --plan: positions per sequence (default: the model's max_position_embeddings).
    #[arg(long, value_name = "C", requires = "plan")]
    pub capacity: Option<usize>,
    /// With --plan: activation and weight storage of the decoder.
    #[arg(long = "dtype", value_enum, default_value_t = PlanDtype::Bf16, requires = "plan")]
    pub dtype: PlanDtype,
    /// With --plan: the decoder's schedule (it sizes the step scratch).
    #[arg(long, value_enum, default_value_t = ExecChoice::Staggered, requires = "plan")]
    pub schedule: ExecChoice,
    /// With --plan: rows a prefill processes at a time.
    #[arg(long, value_name = "N", default_value_t = stagformer::DEFAULT_PREFILL_ROWS, requires = "plan")]
    pub prefill_rows: usize,
    /// With --plan: slots per KV cache page (0 = dense caches), as --kv-page-size of score,
    /// generate and bench.
    #[arg(long, value_name = "N", default_value_t = crate::engine::DEFAULT_KV_PAGE_SIZE, requires = "plan")]
    pub kv_page_size: usize,
    /// With --plan: pages per layer pool (default: enough for every sequence at full length).
    #[arg(long, value_name = "N", requires = "plan")]
    pub kv_pages: Option<usize>,
    /// With --plan: recurrent mode after the prompt.
    #[arg(long, requires = "plan")]
    pub recurrent: bool,
    /// With --plan: print the plan as one JSON object.
    #[arg(long, requires = "plan")]
    pub json: bool,
}

/// The dtypes a decoder runs.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanDtype {
    /// f32 activations and weights.
    F32,
    /// bf16 activations and weights.
    Bf16,
}

/// Computes and prints the plan of `cfg` for `args`.
pub fn print(cfg: &Config, args: &PlanArgs) -> Result<()> {
    let opts = DecoderOptions {
        mode: args.schedule.mode(),
        recurrent: args.recurrent,
        prefill_rows: args.prefill_rows,
        kv_page_size: args.kv_page_size,
        kv_pages: args.kv_pages,
        ..DecoderOptions::new(
            args.max_batch,
            args.capacity.unwrap_or(cfg.max_position_embeddings),
        )
    };
    let dtype = match args.dtype {
        PlanDtype::F32 => DType::F32,
        PlanDtype::Bf16 => DType::BF16,
    };
    let plan = MemoryPlan::new(cfg, &opts, dtype).context("--plan: the decoder refuses")?;
    let rows = [
        ("weights_bytes", plan.weights_bytes),
        ("kv_bytes", plan.kv_bytes),
        ("prompt_memory_bytes", plan.prompt_memory_bytes),
        ("rope_bytes", plan.rope_bytes),
        ("scratch_bytes", plan.scratch_bytes),
        ("logits_bytes", plan.logits_bytes),
        ("workspace_bytes", plan.workspace_bytes),
        ("total_bytes", plan.total_bytes),
    ];
    if args.json {
        let mut obj = serde_json::Map::new();
        obj.insert("dtype".into(), dtype.name().into());
        obj.insert("max_batch".into(), opts.max_batch.into());
        obj.insert("capacity".into(), opts.capacity.into());
        obj.insert("prefill_rows".into(), opts.prefill_rows.into());
        obj.insert("kv_page_size".into(), opts.kv_page_size.into());
        obj.insert(
            "schedule".into(),
            format!("{:?}", opts.mode).to_lowercase().into(),
        );
        for (name, bytes) in rows {
            obj.insert(name.into(), bytes.into());
        }
        outln!("{}", serde_json::Value::Object(obj));
        return Ok(());
    }
    outln!(
        "memory plan: {} decoder, max batch {}, capacity {}, prefill rows {}, {:?} schedule, {}",
        dtype.name(),
        opts.max_batch,
        opts.capacity,
        opts.prefill_rows,
        opts.mode,
        match opts.kv_page_size {
            0 => "dense KV caches".to_string(),
            n => format!("KV pages of {n} slots"),
        }
    );
    for (name, bytes) in rows {
        let label = name.trim_end_matches("_bytes").replace('_', " ");
        outln!(
            "  {label:<15} {bytes:>16} bytes {:>12}",
            DecimalBytes(bytes as u64).to_string()
        );
    }
    Ok(())
}
