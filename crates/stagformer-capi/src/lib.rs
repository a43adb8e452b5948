//! The C API of StagFormer: load a model, score tokens, run a batched decoder, all through
//! opaque handles, plain C types and caller-owned buffers. The header `include/stagformer.h`
//! is generated from this crate by cbindgen (`scripts/gen-capi-header`; `tests/header_fresh.rs`
//! fails while it is stale), so these doc comments are the header's comments.
//!
//! Rules every function follows: it returns a [`StagStatus`] (functions that free return
//! nothing); on failure [`stag_last_error`] gives the message on the calling thread and no
//! output is written except where the function says so; pointers are checked for null and
//! buffers for length before anything is read or written; a Rust panic never crosses the
//! boundary (it becomes [`StagStatus::Panic`]).
#![warn(missing_docs)]

mod buffers;
mod decoder;
mod model;
mod status;
mod types;

pub use decoder::{
    stag_decoder_add, stag_decoder_free, stag_decoder_len, stag_decoder_new, stag_decoder_remove,
    stag_decoder_step, StagDecoder,
};
pub use model::{stag_model_free, stag_model_load, stag_model_vocab_size, stag_score, StagModel};
pub use status::{stag_last_error, StagStatus};
pub use types::*;
