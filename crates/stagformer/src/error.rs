//! Errors of the decoder: each names what was wrong, and says whether the decoder can go on.

use stagformer_kernels::DeviceError;

#[derive(Debug, thiserror::Error)]
pub enum DecoderError {
    /// A kernel, copy or allocation failed. If it happened inside a step the decoder is
    /// poisoned (see [`DecoderError::Poisoned`]).
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The model or request is invalid (checked before anything runs: the decoder stays usable).
    #[error(transparent)]
    Model(#[from] stagformer_ref::Error),
    #[error(transparent)]
    Request(#[from] stagformer_ref::RequestError),
    /// The logits of row `row` of a step sampled on the device held a NaN or an infinity (an
    /// activation overflowed), so its token means nothing. The step was taken; the request may
    /// go on only with other logits.
    #[error(
        "the model's logits are not finite (row {row} of the step); an activation overflowed, \
         so no token is sampled from them"
    )]
    NonFiniteLogits { row: usize },
    /// The decoder cannot run this configuration (mode, dtype, variant).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An earlier device error left the caches in an unknown state; create a new decoder.
    #[error("the decoder is poisoned by an earlier device error ({0}); create a new one")]
    Poisoned(String),
}

pub type Result<T, E = DecoderError> = std::result::Result<T, E>;
