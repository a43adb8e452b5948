//! The StagFormer decoder over the `stagformer-kernels` kernels.
//!
//! At decode step i every section processes token i: section s reads the prior section's
//! memory only up to position i − 1, so in [`ExecMode::Staggered`] the p sections run at the
//! same time on p streams and join only before the logits. [`ExecMode::Sequential`] runs them
//! one after another on one stream (the baseline); [`ExecMode::Batched`] (shared weights) runs
//! all passes of a layer as one GEMM with p·B rows; [`ExecMode::Grouped`] runs layer j of every
//! section (separate or shared weights) as one grouped GEMV per projection and one attention
//! launch. See `docs/ARCHITECTURE.md`.

#![warn(missing_docs)]

mod decoder;
pub mod error;
mod fused;
mod kv_store;
pub mod pages;
mod plan;
mod row_inputs;
mod sampling;
mod scratch;
mod section;
mod validate;
mod weights;

pub use decoder::{
    BatchRow, Decoder, DecoderOptions, ExecMode, PrefillLogits, PrefillSelfAttention, RowOutput,
    Submitted, DEFAULT_PREFILL_ROWS,
};
pub use error::{DecoderError, Result};
pub use fused::GemvPath;
pub use plan::MemoryPlan;
pub use sampling::Sampled;
pub use stagformer_kernels::device::GraphNodes;
pub use stagformer_ref::{SamplingParams, SeqId};

use half::bf16;
use stagformer_kernels::ops::attention_decode::AttentionElem;
use stagformer_kernels::ops::attention_prefill::PrefillElem;
use stagformer_kernels::ops::rmsnorm::NormElem;

/// Activation and weight storage types of the decoder: f32 or bf16 (math is f32 either way).
/// Weights convert into it from every stored dtype through [`stagformer_ref::Element`].
pub trait Activation: NormElem + AttentionElem + PrefillElem + stagformer_ref::Element {}

impl Activation for f32 {}

impl Activation for bf16 {}

#[cfg(test)]
mod tests;
