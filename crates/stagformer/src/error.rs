//! Errors of the decoder: each names what was wrong, and says whether the decoder can go on.

use stagformer_kernels::DeviceError;

/// Why a decoder call failed. Only a [`DecoderError::Device`] raised inside a prefill or step
/// poisons the decoder. Requests are checked before anything runs; non-finite logits are
/// found after the work that produced them. Either way the decoder stays usable.
#[derive(Debug, thiserror::Error)]
pub enum DecoderError {
    /// A kernel, copy or allocation failed. If it happened inside a step the decoder is
    /// poisoned (see [`DecoderError::Poisoned`]).
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The weights cannot be uploaded (a tensor the source cannot give, a non-finite weight:
    /// [`stagformer_ref::Error::Load`]), or the logits of a prefill or [`Decoder::step`] hold a
    /// NaN or an infinity ([`stagformer_ref::Error::NonFiniteLogits`]: the prefill adds no
    /// sequence, the step is taken).
    ///
    /// [`Decoder::step`]: crate::Decoder::step
    #[error(transparent)]
    Model(#[from] stagformer_ref::Error),
    /// A request the decoder refuses (unknown or duplicate sequence, token outside the
    /// vocabulary, past the capacity, full batch, bad sampling settings), the same errors the
    /// CPU reference returns; checked before anything runs, so the decoder stays usable.
    #[error(transparent)]
    Request(#[from] stagformer_ref::RequestError),
    /// The logits of row `row` of a step sampled on the device held a NaN or an infinity (an
    /// activation overflowed), so its token means nothing. The step was taken; the request may
    /// go on only with other logits.
    #[error(
        "the model's logits are not finite (row {row} of the step); an activation overflowed, \
         so no token is sampled from them"
    )]
    NonFiniteLogits {
        /// Index of the row in the step's `seqs`.
        row: usize,
    },
    /// A KV page pool has too few free pages for a prefill, step or fork
    /// (`DecoderOptions::kv_pages`). Refused before anything runs: nothing was allocated and
    /// the decoder stays usable (remove a sequence to free pages).
    #[error("the KV page pool has {free} free pages; this request needs {needed}")]
    OutOfKvPages {
        /// Pages the request needs (at least).
        needed: usize,
        /// Pages free in the pool.
        free: usize,
    },
    /// A caller buffer or view of the wrong length: `logits` of [`Decoder::step_into`] must
    /// hold `seqs.len() × vocab_size` values, a [`Decoder::logits_view`] at most the rows a
    /// step can have.
    ///
    /// [`Decoder::step_into`]: crate::Decoder::step_into
    /// [`Decoder::logits_view`]: crate::Decoder::logits_view
    #[error("logits buffer of {found} values; {expected} expected")]
    OutputLength {
        /// Values expected (the most a view can have).
        expected: usize,
        /// Values given (asked for).
        found: usize,
    },
    /// [`Decoder::truncate`] to a length the sequence cannot go back to: longer than it is,
    /// or so much shorter that its ring caches (a sliding window's, a cross window's) have
    /// already overwritten positions the new length would attend to. Refused before anything
    /// changed.
    ///
    /// [`Decoder::truncate`]: crate::Decoder::truncate
    #[error(
        "sequence {seq} has {len} tokens and cannot be truncated to {to}: only lengths \
         {min}..={len} are possible (its ring caches no longer hold the positions before)"
    )]
    CannotTruncate {
        /// The sequence.
        seq: stagformer_ref::SeqId,
        /// Its length.
        len: usize,
        /// The length asked for.
        to: usize,
        /// The shortest length it can be truncated to.
        min: usize,
    },
    /// A batch row's position is not its sequence's length (0 for a new sequence): the
    /// caller's picture of the sequence is out of date. Refused before anything ran.
    #[error("the row is at position {found}, but its sequence has {expected} tokens")]
    Position {
        /// The sequence's length.
        expected: usize,
        /// The row's position.
        found: usize,
    },
    /// Row `row` of a batch ([`Decoder::submit`]) failed: `error` says why.
    ///
    /// [`Decoder::submit`]: crate::Decoder::submit
    #[error("row {row} of the batch: {error}")]
    InRow {
        /// The row's index in the batch.
        row: usize,
        /// What was wrong with it.
        #[source]
        error: Box<DecoderError>,
    },
    /// A call that needs the results of the step [`Decoder::submit`] queued before
    /// [`Decoder::wait`] collected them (another prefill, step, extend, truncate, fork or
    /// submit), or a [`Decoder::wait`] for a step that is not pending. Nothing ran.
    ///
    /// [`Decoder::submit`]: crate::Decoder::submit
    /// [`Decoder::wait`]: crate::Decoder::wait
    #[error("{0}")]
    Pending(&'static str),
    /// The decoder cannot run this configuration (mode, dtype, variant).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An earlier device error left the caches in an unknown state; create a new decoder.
    #[error("the decoder is poisoned by an earlier device error ({0}); create a new one")]
    Poisoned(String),
}

/// The result of a decoder call.
pub type Result<T, E = DecoderError> = std::result::Result<T, E>;
