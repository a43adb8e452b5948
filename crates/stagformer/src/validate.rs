//! Every rule a decoder's config and options must satisfy, checked before anything is
//! allocated: what a kernel wrapper would refuse later (and only then, mid-prefill, with a
//! message about one of its arguments) is refused here, naming the config field or option.
//!
//! The limits are the kernels' own constants where the kernel crate exports them; the ones it
//! keeps private are restated below next to the wrapper that enforces them.

use stagformer_kernels::ops::attention_decode;
use stagformer_kernels::ops::attention_prefill;
use stagformer_ref::{Config, RequestError};

use crate::decoder::{DecoderOptions, ExecMode};
use crate::error::{DecoderError, Result};

/// Largest grid y/z extent of a launch: `attention_decode` puts a step's rows and the heads on
/// those axes (its `GRID_YZ_MAX`).
const GRID_YZ_MAX: usize = 65_535;

/// Largest value of an `int32` index the kernels take (token ids, positions, cache slots, rope
/// rows).
const I32_MAX: usize = i32::MAX as usize;

/// The largest head dim every attention kernel the decoder runs accepts: prefills run
/// `attention_prefill` (cross-attention always, self-attention in bf16), steps run
/// `attention_decode`.
pub(crate) const MAX_HEAD_DIM: usize = min(
    attention_prefill::MAX_HEAD_DIM,
    attention_decode::MAX_HEAD_DIM,
);

const fn min(a: usize, b: usize) -> usize {
    if a < b {
        a
    } else {
        b
    }
}

fn unsupported(field: &str, value: impl std::fmt::Display, rule: &str) -> DecoderError {
    DecoderError::Unsupported(format!("{field} = {value}: {rule}"))
}

/// Checks `cfg` (the reference's own validation first, so that a caller-edited [`Config`]
/// that is inconsistent fails here) and `opts` against everything the kernels need. Returns
/// the first broken rule; allocates nothing.
pub(crate) fn validate(cfg: &Config, opts: &DecoderOptions) -> Result<()> {
    cfg.validate().map_err(stagformer_ref::Error::from)?;
    check_config(cfg)?;
    check_options(cfg, opts)
}

/// Limits of the kernels that depend on the config alone.
fn check_config(cfg: &Config) -> Result<()> {
    let hd = cfg.head_dim;
    if !(2..=MAX_HEAD_DIM).contains(&hd) || hd % 2 != 0 {
        return Err(unsupported(
            "head_dim",
            hd,
            &format!("must be even and 2..={MAX_HEAD_DIM} (the attention kernels' limit)"),
        ));
    }
    let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    if kv_heads > attention_prefill::MAX_KV_HEADS {
        return Err(unsupported(
            "num_key_value_heads",
            kv_heads,
            &format!("must be at most {}", attention_prefill::MAX_KV_HEADS),
        ));
    }
    if heads > GRID_YZ_MAX || kv_heads * (heads / kv_heads).div_ceil(8) > GRID_YZ_MAX {
        return Err(unsupported(
            "num_attention_heads",
            heads,
            &format!("must be at most {GRID_YZ_MAX} (a launch grid axis)"),
        ));
    }
    if cfg.vocab_size > I32_MAX {
        return Err(unsupported(
            "vocab_size",
            cfg.vocab_size,
            "must be at most 2^31 - 1 (token ids are int32)",
        ));
    }
    // Row strides of the fused projections and of the projected memory are u32 in the
    // kernels' params.
    let strides = [
        (
            "num_attention_heads × head_dim + 2 × kv dim",
            qkv_width(cfg),
        ),
        (
            "memory width (2 × kv dim per cross layer)",
            memory_width(cfg),
        ),
        (
            "2 × intermediate_size",
            cfg.intermediate_size.checked_mul(2),
        ),
        ("hidden_size", Some(cfg.hidden_size)),
        ("vocab_size", Some(cfg.vocab_size)),
    ];
    for (what, width) in strides {
        match width {
            Some(w) if w <= u32::MAX as usize => {}
            _ => {
                return Err(DecoderError::Unsupported(format!(
                    "{what} exceeds u32 (a kernel row stride)"
                )))
            }
        }
    }
    Ok(())
}

/// Width of a fused q|k|v row.
pub(crate) fn qkv_width(cfg: &Config) -> Option<usize> {
    cfg.kv_dim().checked_mul(2)?.checked_add(cfg.q_dim())
}

/// Width of a projected memory row: k|v of every cross layer of a section.
pub(crate) fn memory_width(cfg: &Config) -> Option<usize> {
    cfg.layers_per_section()
        .checked_mul(2)?
        .checked_mul(cfg.kv_dim())
}

/// Rules on the options, given a valid config.
fn check_options(cfg: &Config, opts: &DecoderOptions) -> Result<()> {
    for (field, value) in [
        ("max_batch", opts.max_batch),
        ("capacity", opts.capacity),
        ("prefill_rows", opts.prefill_rows),
    ] {
        if value == 0 {
            return Err(unsupported(field, value, "must be at least 1"));
        }
    }
    if opts.capacity > cfg.max_position_embeddings {
        return Err(RequestError::TooLong {
            len: opts.capacity,
            max: cfg.max_position_embeddings,
        }
        .into());
    }
    if opts.capacity > I32_MAX {
        return Err(unsupported(
            "capacity",
            opts.capacity,
            "must be at most 2^31 - 1 (positions are int32)",
        ));
    }
    if opts.recurrent {
        if let Some(reason) = cfg.recurrent_unsupported_reason() {
            return Err(RequestError::RecurrentUnsupported { reason }.into());
        }
    }
    let p = cfg.sections();
    if opts.mode == ExecMode::Batched && !cfg.stag_shared_weights && p > 1 {
        return Err(DecoderError::Unsupported(
            "batched execution needs shared weights (one stack run by every pass)".into(),
        ));
    }
    // A step's rows (every pass's in Batched and Grouped) and a prefill chunk's rows are a
    // grid axis of the decode kernel; cache sequences are int32 slots.
    let step_rows = p.checked_mul(opts.max_batch);
    match step_rows {
        Some(r) if r <= GRID_YZ_MAX => {}
        _ => {
            return Err(unsupported(
                "max_batch",
                opts.max_batch,
                &format!("stag_sections × max_batch must be at most {GRID_YZ_MAX}"),
            ))
        }
    }
    let chunk = opts.prefill_rows.min(opts.capacity);
    if chunk > GRID_YZ_MAX {
        return Err(unsupported(
            "prefill_rows",
            opts.prefill_rows,
            &format!("must be at most {GRID_YZ_MAX} (a launch grid axis)"),
        ));
    }
    Ok(())
}
