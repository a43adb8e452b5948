//! `stagformer inspect`: config, variant, parameter counts and bytes of a checkpoint.

use std::path::PathBuf;

use anyhow::{Context, Result};
use stagformer_ref::init::ParamCounts;
use stagformer_ref::{Checkpoint, Config, RopeScaling, TensorSource};

use crate::model_source::print_warnings;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint directory.
    #[arg(long)]
    model: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    // Validates the whole tensor directory (every tensor's name, shape, dtype and byte range)
    // from the safetensors headers; tensor values are not read, so neither are non-finite ones
    // found here.
    let ckpt = Checkpoint::open(&args.model)
        .with_context(|| format!("loading {}", args.model.display()))?;
    print_warnings(ckpt.warnings());
    let cfg = ckpt.config();
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
        outln!("  {name:<30} {n:>14} ({:.2}M)", n as f64 / 1e6);
    }
    outln!(
        "bytes: {file_bytes} in safetensors files; {} as f32, {} as bf16",
        c.total() * 4,
        c.total() * 2
    );
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
