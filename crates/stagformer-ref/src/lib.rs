//! CPU reference implementation of the StagFormer model contract (`docs/MODEL.md`).
//!
//! It defines the math every other implementation is checked against, and doubles as the CPU
//! fallback: f32 storage, multithreaded GEMM, f64 accumulation in norms and softmax.
//!
//! - [`Model::forward`]: the definition, section by section over the whole sequence.
//! - [`DecodeBatch`]: inference: prefill, then steps in which every section processes the same
//!   token, reading the prior section's memory up to the previous position.
//! - [`ops`]: the building blocks (RMSNorm, RoPE, attention with masks, SwiGLU, linear) that
//!   kernel tests compare against.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod config;
mod config_keys;
pub mod decode;
pub mod error;
pub mod files;
pub mod generation;
mod header;
pub mod init;
pub mod model;
pub mod ops;
pub mod rope;
pub mod sample;
pub mod score;
pub mod slots;
pub mod weights;

pub use checkpoint::{Checkpoint, Element, StorageDtype, TensorSource};
pub use config::Config;
pub use decode::{DecodeBatch, SeqId, StepMode};
pub use error::{
    ConfigError, Error, LoadError, LoadWarning, NonFiniteLogits, RequestError, ShapeError,
};
pub use generation::{GenerationConfig, GenerationConfigError};
pub use model::Model;
pub use ops::Matrix;
pub use rope::RopeScaling;
pub use sample::SamplingParams;
pub use score::{score, ScoreMode};
pub use slots::Slots;
