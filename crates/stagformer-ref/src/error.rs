//! Typed errors of the reference model: every bad checkpoint or request names the file, field,
//! tensor or argument at fault.

use std::path::PathBuf;

/// Anything that can go wrong loading a checkpoint or serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Shape(#[from] ShapeError),
    #[error(transparent)]
    NonFiniteLogits(#[from] NonFiniteLogits),
}

/// The model produced a NaN or infinite logit (an activation overflowed): nothing is sampled
/// or written from it. `row` is the row of the logits matrix (in [`crate::score()`], the
/// token position), `column` the first bad vocabulary id in it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "the model's logits are not finite (row {row}, token id {column}: {value}); an activation \
     overflowed, so nothing is sampled or written from them"
)]
pub struct NonFiniteLogits {
    pub row: usize,
    pub column: usize,
    pub value: f32,
}

impl NonFiniteLogits {
    /// The first non-finite value of `logits` (`[rows, vocab]` row-major), as an error naming
    /// its row `first_row + r` and column.
    pub fn check(logits: &[f32], vocab: usize, first_row: usize) -> Result<(), NonFiniteLogits> {
        match logits.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(i) => Err(NonFiniteLogits {
                row: first_row + i / vocab.max(1),
                column: i % vocab.max(1),
                value: logits[i],
            }),
        }
    }
}

/// A `config.json` that does not describe a valid StagFormer model.
///
/// The I/O and JSON causes are part of the message and deliberately not exposed as
/// `source()`: a caller printing the whole chain (anyhow's `{:#}`) would show them twice.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: invalid JSON: {error}")]
    Json {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("{path}: is {kind}, not a regular file")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("{path}: larger than {limit} bytes; not a config.json")]
    FileTooLarge { path: PathBuf, limit: u64 },
    #[error("config field `{field}` is missing")]
    MissingField { field: String },
    #[error("config field `{field}` = {value}: {reason}")]
    InvalidField {
        field: String,
        value: String,
        reason: String,
    },
    #[error(
        "config field `{field}` = {value}: {what} exceeds the limit of {limit} \
         (docs/MODEL.md, Limits)"
    )]
    TooLarge {
        field: String,
        value: u64,
        what: String,
        limit: u64,
    },
    #[error("config is inconsistent: {0}")]
    Inconsistent(String),
    #[error("config field `{field}` = {value} is not supported by this implementation")]
    Unsupported { field: String, value: String },
    #[error(
        "config field `{field}` is not known to this implementation: it may change the model's \
         math, so the config is refused rather than run without it (docs/MODEL.md lists the \
         fields that are understood or known to be harmless)"
    )]
    UnknownField { field: String },
    #[error("config fields `{first}` = {first_value} and `{second}` = {second_value} disagree")]
    Conflict {
        first: String,
        first_value: String,
        second: String,
        second_value: String,
    },
}

/// A checkpoint's tensors that do not match its config. As in [`ConfigError`], an I/O cause
/// is in the message, not in `source()`.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: no model.safetensors and no model.safetensors.index.json")]
    NoWeights { path: PathBuf },
    #[error("{path}: invalid safetensors index: {reason}")]
    Index { path: PathBuf, reason: String },
    #[error("{path}: invalid or truncated safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path}: is {kind}, not a regular file")]
    SpecialFile { path: PathBuf, kind: &'static str },
    #[error("{path}: larger than {limit} bytes")]
    FileTooLarge { path: PathBuf, limit: u64 },
    /// A tensor a [`crate::TensorSource`] without files (random weights, a loaded model) does
    /// not hold.
    #[error("tensor `{name}` is missing from the checkpoint")]
    MissingTensor { name: String },
    /// A tensor the config calls for that the checkpoint does not store; `path` is the file
    /// that lists the tensors (`model.safetensors`, or the index of a sharded checkpoint).
    #[error("{path}: tensor `{name}` is missing (the config calls for it)")]
    MissingStoredTensor { path: PathBuf, name: String },
    #[error("{path}: unexpected tensor `{name}` (not part of this model's config)")]
    UnexpectedTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` is also stored in {other}")]
    DuplicateTensor {
        path: PathBuf,
        other: PathBuf,
        name: String,
    },
    /// A safetensors header that lists one name twice (a reader keeping the last entry would
    /// silently drop the other).
    #[error("{path}: tensor `{name}` is listed more than once in the header")]
    DuplicateInHeader { path: PathBuf, name: String },
    /// A sharded checkpoint whose index and shards disagree about a tensor.
    #[error("{path}: tensor `{name}` {reason}")]
    IndexMismatch {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("{path}: tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}`: shape {shape:?} needs {expected} values, found {found}")]
    DataLength {
        name: String,
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },
    #[error(
        "{path}: tensor `{name}`: unsupported dtype {dtype} (f32, bf16 and f16 are supported)"
    )]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: tensor `{name}` holds a non-finite value")]
    NonFinite { path: PathBuf, name: String },
    #[error("{path}: cannot write: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// Something a checkpoint does that loading accepts but a user should hear about. The
/// library never prints these; see [`crate::checkpoint::Checkpoint::warnings`] and
/// [`crate::Model::warnings`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadWarning {
    /// `tie_word_embeddings` is true and the checkpoint also stores an `lm_head.weight` whose
    /// values differ from the embedding's. Hugging Face transformers ties the output projection
    /// to the input embedding in that case, discarding the stored one; so does this loader.
    #[error(
        "{path}: `lm_head.weight` differs from `model.embed_tokens.weight`, but \
         tie_word_embeddings is true: using the embedding and ignoring the stored lm_head, as \
         Hugging Face transformers does"
    )]
    TiedLmHeadDiffers { path: PathBuf },
}

/// A request (tokens, lengths, mode) the model cannot serve.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    #[error("input is empty: at least one token is needed")]
    EmptyInput,
    #[error("token {token} at index {index} is out of range (vocab_size = {vocab_size})")]
    TokenOutOfRange {
        index: usize,
        token: u32,
        vocab_size: usize,
    },
    #[error("sequence of {len} tokens exceeds the capacity of {max} positions")]
    TooLong { len: usize, max: usize },
    #[error("prompt length {prompt_len} must be between 1 and the {len} tokens given")]
    BadPromptLen { prompt_len: usize, len: usize },
    #[error("recurrent mode needs shared weights and stag_sections = 2: {reason}")]
    RecurrentUnsupported { reason: String },
    #[error("sequence {seq} does not exist in this decode batch")]
    UnknownSequence { seq: usize },
    #[error("sequence {seq} appears twice in one decode step")]
    DuplicateSequence { seq: usize },
    #[error("decode step got {ids} sequence ids and {tokens} tokens")]
    StepArity { ids: usize, tokens: usize },
    #[error("decode batch holds {max} sequences already")]
    BatchFull { max: usize },
    #[error("sampling parameter `{field}` = {value}: {reason}")]
    BadSampling {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// A building block got operands whose shapes do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {arg}: expected {expected}, found {found}")]
pub struct ShapeError {
    /// The building block, as named in [`crate::ops`].
    pub op: &'static str,
    /// The argument at fault.
    pub arg: &'static str,
    pub expected: String,
    pub found: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
