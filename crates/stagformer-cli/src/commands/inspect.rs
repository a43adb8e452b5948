//! `stagformer inspect`: config, variant, parameter counts and bytes of a checkpoint.

use std::path::PathBuf;

use anyhow::{Context, Result};
use indicatif::{DecimalBytes, HumanCount};
use stagformer_ref::checkpoint::TensorInfo;
use stagformer_ref::init::ParamCounts;
use stagformer_ref::weights::expected_tensors;
use stagformer_ref::{Checkpoint, Config, RopeScaling, TensorSource};

use crate::commands::plan::{self, PlanArgs};
use crate::model_source::print_warnings;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint directory (config.json + safetensors).
    #[arg(short, long, value_name = "DIR")]
    model: PathBuf,
    /// Also list every tensor: name, dtype, shape, parameters, size (and file, when sharded).
    #[arg(long, conflicts_with = "plan")]
    tensors: bool,
    #[command(flatten)]
    plan: PlanArgs,
}

pub fn run(args: Args) -> Result<()> {
    // Validates the whole tensor directory (every tensor's name, shape, dtype and byte range)
    // from the safetensors headers; tensor values are not read, so neither are non-finite ones
    // found here.
    let ckpt = Checkpoint::open(&args.model)
        .with_context(|| format!("loading {}", args.model.display()))?;
    print_warnings(ckpt.warnings());
    let cfg = ckpt.config();
    if args.plan.plan {
        return plan::print(cfg, &args.plan);
    }
    let file_bytes = ckpt.file_bytes();
    outln!("model: {}", args.model.display());
    outln!("variant: {}", describe(cfg));
    outln!(
        "shape: D={} F={} heads={} kv_heads={} head_dim={} vocab={} max_positions={}",
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
        cfg.vocab_size,
        cfg.max_position_embeddings
    );
    outln!(
        "sections: p={} layers per section={} stored layers={} rms_norm_eps={} rope_theta={}",
        cfg.sections(),
        cfg.layers_per_section(),
        cfg.stored_layers(),
        cfg.rms_norm_eps,
        cfg.rope_theta
    );
    outln!(
        "rope: {}; self-attention: {}",
        rope_description(&cfg.rope_scaling),
        match cfg.sliding_window {
            Some(w) => format!("sliding window of {w} keys"),
            None => "every earlier key".into(),
        }
    );
    let c = ParamCounts::of(cfg);
    outln!("parameters:");
    let rows = [
        ("embedding", c.embedding),
        ("self-attention + MLP layers", c.self_layers),
        ("cross-attention layers", c.cross_layers),
        ("norms and output mix", c.norms_and_mix),
        ("lm_head", c.lm_head),
        ("total", c.total()),
    ];
    for (name, n) in rows {
        let n = n as u64;
        outln!(
            "  {name:<30} {:>15} {:>10}",
            HumanCount(n).to_string(),
            human_params(n)
        );
    }
    let files = ckpt.files().count();
    let total = c.total() as u64;
    outln!(
        "size: {} in {files} safetensors file{} ({} bytes); {} as f32, {} as bf16",
        DecimalBytes(file_bytes),
        if files == 1 { "" } else { "s" },
        HumanCount(file_bytes),
        DecimalBytes(total.saturating_mul(4)),
        DecimalBytes(total.saturating_mul(2))
    );
    if args.tensors {
        print_tensors(&ckpt, files > 1)?;
    }
    Ok(())
}

/// A parameter count to three significant digits with a K/M/B suffix: `275 K`, `35.1 M`,
/// `1.41 B` (the preset names round it to two).
pub fn human_params(n: u64) -> String {
    let n = n as f64;
    let (value, unit) = if n >= 1e9 {
        (n / 1e9, " B")
    } else if n >= 1e6 {
        (n / 1e6, " M")
    } else if n >= 1e3 {
        (n / 1e3, " K")
    } else {
        return format!("{n}");
    };
    let decimals = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.decimals$}{unit}")
}

/// The tensor directory: in the order the model uses the tensors, then any others by name.
fn print_tensors(ckpt: &Checkpoint, sharded: bool) -> Result<()> {
    let order = expected_tensors(ckpt.config());
    let mut listed: Vec<TensorInfo<'_>> = order
        .iter()
        .filter_map(|spec| ckpt.tensor(&spec.name))
        .collect();
    let mut others: Vec<TensorInfo<'_>> = ckpt
        .tensors()
        .filter(|t| !order.iter().any(|s| s.name == t.name))
        .collect();
    others.sort_by(|a, b| a.name.cmp(b.name));
    listed.extend(others);
    let width = listed
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(0)
        .max(6);
    outln!("tensors: {}", listed.len());
    let file_header = if sharded { "  file" } else { "" };
    outln!(
        "  {:<width$}  {:<5}  {:<16}  {:>13}  {:>10}{file_header}",
        "name",
        "dtype",
        "shape",
        "parameters",
        "size"
    );
    for t in listed {
        let shape: Vec<String> = t.shape.iter().map(usize::to_string).collect();
        let params: u64 = t.shape.iter().map(|&d| d as u64).product();
        let file = if sharded {
            let name = t.file.file_name().unwrap_or(t.file.as_os_str());
            format!("  {}", name.to_string_lossy())
        } else {
            String::new()
        };
        outln!(
            "  {:<width$}  {:<5}  {:<16}  {:>13}  {:>10}{file}",
            t.name,
            t.dtype.name(),
            format!("[{}]", shape.join(", ")),
            HumanCount(params).to_string(),
            DecimalBytes(t.bytes as u64).to_string()
        );
    }
    Ok(())
}

/// The RoPE scaling type and its parameters, as the config gives them.
fn rope_description(scaling: &RopeScaling) -> String {
    match *scaling {
        RopeScaling::Default => "default".into(),
        RopeScaling::Linear { factor } => format!("linear, factor {factor}"),
        RopeScaling::Dynamic { factor } => format!(
            "dynamic NTK, factor {factor} (equal to default within max_position_embeddings)"
        ),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => format!(
            "llama3, factor {factor}, low/high freq factor {low_freq_factor}/{high_freq_factor}, \
             original max positions {original_max_position_embeddings}"
        ),
    }
}

/// One line naming the variant, e.g. "StagFormer p=2, separate weights, window 128, output mix".
pub fn describe(cfg: &Config) -> String {
    if cfg.sections() == 1 {
        return "Llama (stag_sections = 1)".into();
    }
    let mut parts = vec![format!("StagFormer p={}", cfg.sections())];
    parts.push(if cfg.stag_shared_weights {
        "shared weights".into()
    } else {
        "separate weights".into()
    });
    parts.push(match cfg.stag_cross_window {
        Some(w) => format!("cross window {w}"),
        None => "unbounded cross-attention".into(),
    });
    if cfg.stag_output_mix {
        parts.push("output mix".into());
    }
    if cfg.tie_word_embeddings {
        parts.push("tied embeddings".into());
    }
    if cfg.recurrent_unsupported_reason().is_none() {
        parts.push("recurrent mode available".into());
    }
    parts.join(", ")
}
