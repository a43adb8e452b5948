//! `stagformer inspect`: config, variant, parameter counts and bytes of a checkpoint.

use std::path::PathBuf;

use anyhow::{Context, Result};
use stagformer_ref::init::ParamCounts;
use stagformer_ref::Config;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint directory.
    #[arg(long)]
    model: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    // Validates the whole checkpoint (every tensor's name, shape and dtype), not only the config.
    let model = stagformer_ref::Model::load(&args.model)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let cfg = &model.config;
    let file_bytes: u64 = std::fs::read_dir(&args.model)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!("model: {}", args.model.display());
    println!("variant: {}", describe(cfg));
    println!(
        "shape: D={} F={} heads={} kv_heads={} head_dim={} vocab={} max_positions={}",
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
        cfg.vocab_size,
        cfg.max_position_embeddings
    );
    println!(
        "sections: p={} layers per section={} stored layers={} rms_norm_eps={} rope_theta={}",
        cfg.sections(),
        cfg.layers_per_section(),
        cfg.stored_layers(),
        cfg.rms_norm_eps,
        cfg.rope_theta
    );
    let c = ParamCounts::of(cfg);
    println!("parameters:");
    let rows = [
        ("embedding", c.embedding),
        ("self-attention + MLP layers", c.self_layers),
        ("cross-attention layers", c.cross_layers),
        ("norms and output mix", c.norms_and_mix),
        ("lm_head", c.lm_head),
        ("total", c.total()),
    ];
    for (name, n) in rows {
        println!("  {name:<30} {n:>14} ({:.2}M)", n as f64 / 1e6);
    }
    println!(
        "bytes: {file_bytes} in safetensors files; {} as f32, {} as bf16",
        c.total() * 4,
        c.total() * 2
    );
    Ok(())
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
