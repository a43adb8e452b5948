//! Typed errors of the reference model: every bad checkpoint or request names the file, field,
//! tensor or argument at fault.

use crate::slots::SeqId;
use std::path::PathBuf;

/// Anything that can go wrong loading a checkpoint or serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `config.json` is unreadable or describes no valid model.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The checkpoint's files or tensors do not fit the config.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The request cannot be served (tokens, lengths, sequence ids, sampling settings).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// A building block got operands of mismatched shapes.
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// The model's logits hold a NaN or an infinity.
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
    /// Row of the logits matrix holding the first non-finite value.
    pub row: usize,
    /// Vocabulary id (column) of that value: the first bad one in its row.
    pub column: usize,
    /// The value itself: NaN, +inf or −inf.
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
    /// The file could not be opened or read.
    #[error("{path}: cannot read: {error}")]
    Io {
        /// The `config.json` at fault.
        path: PathBuf,
        /// The I/O error, part of the message only.
        error: std::io::Error,
    },
    /// The file is not valid JSON.
    #[error("{path}: invalid JSON: {error}")]
    Json {
        /// The `config.json` at fault.
        path: PathBuf,
        /// The parser's error (with line and column), part of the message only.
        error: serde_json::Error,
    },
    /// The path names a directory, FIFO, socket or device rather than a regular file.
    #[error("{path}: is {kind}, not a regular file")]
    NotAFile {
        /// The path given.
        path: PathBuf,
        /// What it is instead ("a directory", "a FIFO", ...).
        kind: &'static str,
    },
    /// The file is larger than any config could be (the limit of docs/MODEL.md, "Limits").
    #[error("{path}: larger than {limit} bytes; not a config.json")]
    FileTooLarge {
        /// The `config.json` at fault.
        path: PathBuf,
        /// The largest size accepted, in bytes.
        limit: u64,
    },
    /// A field the model needs is absent.
    #[error("config field `{field}` is missing")]
    MissingField {
        /// The field's JSON name.
        field: String,
    },
    /// A field holds a value outside its range (a zero size, a negative epsilon, ...).
    #[error("config field `{field}` = {value}: {reason}")]
    InvalidField {
        /// The field's JSON key, dotted inside nested objects (`rope_scaling.factor`), or
        /// `(root)` for the document itself.
        field: String,
        /// The value found, as written.
        value: String,
        /// What the field must be.
        reason: String,
    },
    /// A size derived from a field exceeds a limit of docs/MODEL.md ("Limits"); the field named
    /// is the first one that makes the size too large.
    #[error(
        "config field `{field}` = {value}: {what} exceeds the limit of {limit} \
         (docs/MODEL.md, Limits)"
    )]
    TooLarge {
        /// The field's JSON name.
        field: String,
        /// Its value.
        value: u64,
        /// The size that exceeds the limit (a tensor's elements, the vocabulary, ...).
        what: String,
        /// The limit it exceeds.
        limit: u64,
    },
    /// Fields that are valid one by one but not together (heads not divisible by kv heads,
    /// layers not divisible by sections, ...); the message names them.
    #[error("config is inconsistent: {0}")]
    Inconsistent(String),
    /// A valid Hugging Face setting that this implementation does not compute (another
    /// `model_type`, biases, YaRN, ...): refused rather than ignored.
    #[error("config field `{field}` = {value} is not supported by this implementation")]
    Unsupported {
        /// The field's JSON name.
        field: String,
        /// Its value, as written.
        value: String,
    },
    /// A field the implementation does not know: it might change the math, so the config is
    /// refused.
    #[error(
        "config field `{field}` is not known to this implementation: it may change the model's \
         math, so the config is refused rather than run without it (docs/MODEL.md lists the \
         fields that are understood or known to be harmless)"
    )]
    UnknownField {
        /// The field's JSON name.
        field: String,
    },
    /// Two fields that say the same thing with different values (`model_type` and
    /// `architectures`, `torch_dtype` and `dtype`, `rope_theta` at the top and inside
    /// `rope_parameters`, ...).
    #[error("config fields `{first}` = {first_value} and `{second}` = {second_value} disagree")]
    Conflict {
        /// The first field's JSON name.
        first: String,
        /// Its value, as written.
        first_value: String,
        /// The second field's JSON name.
        second: String,
        /// Its value, as written.
        second_value: String,
    },
}

/// A checkpoint's tensors that do not match its config. As in [`ConfigError`], an I/O cause
/// is in the message, not in `source()`.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A weights file or index could not be opened, mapped or read.
    #[error("{path}: cannot read: {error}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The I/O error, part of the message only.
        error: std::io::Error,
    },
    /// The model directory holds neither a single weights file nor a sharded index.
    #[error("{path}: no model.safetensors and no model.safetensors.index.json")]
    NoWeights {
        /// The model directory.
        path: PathBuf,
    },
    /// `model.safetensors.index.json` is not a valid index (bad JSON, no `weight_map`, a shard
    /// that is not a plain file name, ...).
    #[error("{path}: invalid safetensors index: {reason}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A weights file whose header or data region is malformed or cut short.
    #[error("{path}: invalid or truncated safetensors file: {reason}")]
    Safetensors {
        /// The weights file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A weights file that was a regular file when checked but is not one once opened.
    #[error("{path}: not a regular file")]
    NotAFile {
        /// The path opened.
        path: PathBuf,
    },
    /// A weights file or index path that names a directory, FIFO, socket or device.
    #[error("{path}: is {kind}, not a regular file")]
    SpecialFile {
        /// The path given.
        path: PathBuf,
        /// What it is instead ("a directory", "a FIFO", ...).
        kind: &'static str,
    },
    /// A file larger than the limit of docs/MODEL.md ("Limits") for its kind.
    #[error("{path}: larger than {limit} bytes")]
    FileTooLarge {
        /// The file at fault.
        path: PathBuf,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A tensor a [`crate::TensorSource`] without files (random weights, a loaded model) does
    /// not hold.
    #[error("tensor `{name}` is missing from the checkpoint")]
    MissingTensor {
        /// The tensor's checkpoint name.
        name: String,
    },
    /// A tensor the config calls for that the checkpoint does not store; `path` is the file
    /// that lists the tensors (`model.safetensors`, or the index of a sharded checkpoint).
    #[error("{path}: tensor `{name}` is missing (the config calls for it)")]
    MissingStoredTensor {
        /// The file that lists the tensors.
        path: PathBuf,
        /// The tensor's checkpoint name.
        name: String,
    },
    /// A stored tensor the config does not call for (and that is not known to be harmless to
    /// skip): the checkpoint is for another model.
    #[error("{path}: unexpected tensor `{name}` (not part of this model's config)")]
    UnexpectedTensor {
        /// The file storing it.
        path: PathBuf,
        /// The tensor's checkpoint name.
        name: String,
    },
    /// One tensor stored in two shards of a sharded checkpoint.
    #[error("{path}: tensor `{name}` is also stored in {other}")]
    DuplicateTensor {
        /// One shard storing it.
        path: PathBuf,
        /// The other shard storing it.
        other: PathBuf,
        /// The tensor's checkpoint name.
        name: String,
    },
    /// A safetensors header that lists one name twice (a reader keeping the last entry would
    /// silently drop the other).
    #[error("{path}: tensor `{name}` is listed more than once in the header")]
    DuplicateInHeader {
        /// The weights file.
        path: PathBuf,
        /// The tensor's checkpoint name.
        name: String,
    },
    /// A sharded checkpoint whose index and shards disagree about a tensor.
    #[error("{path}: tensor `{name}` {reason}")]
    IndexMismatch {
        /// The index file.
        path: PathBuf,
        /// The tensor's checkpoint name.
        name: String,
        /// How they disagree: a tensor stored in a shard the `weight_map` does not give it, an
        /// entry whose shard does not store it, a tensor listed twice.
        reason: String,
    },
    /// A stored tensor whose shape is not the one the config implies.
    #[error("{path}: tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        /// The file storing it.
        path: PathBuf,
        /// The tensor's checkpoint name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The stored shape.
        found: Vec<usize>,
    },
    /// A tensor whose values do not fill its shape: a
    /// [`LoadedTensor`](crate::checkpoint::LoadedTensor) built by hand, or a
    /// [`TensorSource`](crate::TensorSource) that returns the wrong number of values.
    #[error("tensor `{name}`: shape {shape:?} needs {expected} values, found {found}")]
    DataLength {
        /// The tensor's checkpoint name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// Values the shape needs (the product of its dimensions).
        expected: usize,
        /// Values given.
        found: usize,
    },
    /// A stored tensor in a dtype other than F32, BF16 and F16.
    #[error(
        "{path}: tensor `{name}`: unsupported dtype {dtype} (f32, bf16 and f16 are supported)"
    )]
    UnsupportedDtype {
        /// The file storing it.
        path: PathBuf,
        /// The tensor's checkpoint name.
        name: String,
        /// Its dtype as the safetensors header names it.
        dtype: String,
    },
    /// A tensor holding a NaN or an infinity (found when it is converted).
    #[error("{path}: tensor `{name}` holds a non-finite value")]
    NonFinite {
        /// The file storing it.
        path: PathBuf,
        /// The tensor's checkpoint name.
        name: String,
    },
    /// Writing a checkpoint failed (an existing path that is not a regular file, an I/O error).
    #[error("{path}: cannot write: {reason}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// Why it failed.
        reason: String,
    },
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
    TiedLmHeadDiffers {
        /// The file storing `lm_head.weight`.
        path: PathBuf,
    },
}

/// A request (tokens, lengths, mode) the model cannot serve.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    /// No tokens (or no sequences, for a step) were given.
    #[error("input is empty: at least one token is needed")]
    EmptyInput,
    /// A token id not below the vocabulary size.
    #[error("token {token} at index {index} is out of range (vocab_size = {vocab_size})")]
    TokenOutOfRange {
        /// Its index in the tokens given.
        index: usize,
        /// The id.
        token: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// A prompt, or a sequence after one more step, longer than the positions available.
    #[error("sequence of {len} tokens exceeds the capacity of {max} positions")]
    TooLong {
        /// The length it would have, in tokens.
        len: usize,
        /// The capacity (the decoder's, or `max_position_embeddings`).
        max: usize,
    },
    /// A scoring prompt length outside `1..=len`.
    #[error("prompt length {prompt_len} must be between 1 and the {len} tokens given")]
    BadPromptLen {
        /// The prompt length asked for.
        prompt_len: usize,
        /// The tokens given.
        len: usize,
    },
    /// Recurrent mode asked of a model it does not apply to.
    #[error("recurrent mode needs shared weights and stag_sections = 2: {reason}")]
    RecurrentUnsupported {
        /// Which of the conditions the model fails.
        reason: String,
    },
    /// A sequence id this batch never issued (ids are `slot.generation`).
    #[error("sequence {seq} does not exist in this decode batch")]
    UnknownSequence {
        /// The id given.
        seq: SeqId,
    },
    /// The id of a sequence that was removed: its slot is empty or holds a later sequence.
    #[error("sequence {seq} was removed (its slot is at generation {generation} now)")]
    StaleSequence {
        /// The id given.
        seq: SeqId,
        /// The slot's generation now.
        generation: u32,
    },
    /// One sequence listed twice in one step.
    #[error("sequence {seq} appears twice in one decode step")]
    DuplicateSequence {
        /// The id listed twice.
        seq: SeqId,
    },
    /// A step whose sequence ids and tokens differ in number.
    #[error("decode step got {ids} sequence ids and {tokens} tokens")]
    StepArity {
        /// Sequence ids given.
        ids: usize,
        /// Tokens given.
        tokens: usize,
    },
    /// A prefill while every slot of the batch holds a sequence.
    #[error("decode batch holds {max} sequences already")]
    BatchFull {
        /// The batch's size (`max_batch`).
        max: usize,
    },
    /// A sampling setting outside its range ([`crate::SamplingParams::validate`]).
    #[error("sampling parameter `{field}` = {value}: {reason}")]
    BadSampling {
        /// The setting's name (`temperature`, `top_p`).
        field: &'static str,
        /// Its value.
        value: String,
        /// The range it must be in.
        reason: &'static str,
    },
    /// A decode step given a number of per-row sampling settings other than its rows'.
    #[error("decode step got {ids} sequence ids and {settings} sampling settings")]
    SamplingArity {
        /// Sequence ids given.
        ids: usize,
        /// Sampling settings given.
        settings: usize,
    },
    /// Row `row`'s sampling setting outside its range
    /// ([`crate::sample::validate_rows`]).
    #[error("row {row}: sampling parameter `{field}` = {value}: {reason}")]
    BadRowSampling {
        /// Index of the row in the step.
        row: usize,
        /// The setting's name (`temperature`, `top_p`).
        field: &'static str,
        /// Its value.
        value: String,
        /// The range it must be in.
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
    /// What the building block needs (a length, a shape).
    pub expected: String,
    /// What it got.
    pub found: String,
}

/// The result of the reference's fallible functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;
