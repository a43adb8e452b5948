//! Rust errors as Python exceptions: a request the library refuses (bad arguments, an unknown
//! or stale sequence, a token outside the vocabulary, too long, a full batch or page pool) is
//! `ValueError`; everything else (files, devices, non-finite logits, a poisoned decoder) is
//! `stagformer.Error`. The message is the one the CLI prints: the error and its causes,
//! joined by ": " (anyhow's `{:#}`).

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::PyErr;
use stagformer::DecoderError;
use stagformer_ref::{ConfigError, RequestError};

create_exception!(
    stagformer,
    Error,
    PyException,
    "A StagFormer call failed for a reason other than a bad request: a file that cannot be \
     read or written, a device error, non-finite logits, a poisoned decoder."
);

/// Whether an error is the caller's (a request the library refuses before doing anything).
pub trait Classify {
    /// True for a refused request (`ValueError`), false for the rest (`stagformer.Error`).
    fn is_request(&self) -> bool;
}

impl Classify for RequestError {
    fn is_request(&self) -> bool {
        true
    }
}

/// A config dict given to `init` that the library refuses is a bad argument.
impl Classify for ConfigError {
    fn is_request(&self) -> bool {
        true
    }
}

/// A generation_config.json that cannot be used is a file problem, not the caller's request.
impl Classify for stagformer_ref::GenerationConfigError {
    fn is_request(&self) -> bool {
        false
    }
}

impl Classify for stagformer_ref::Error {
    fn is_request(&self) -> bool {
        matches!(self, stagformer_ref::Error::Request(_))
    }
}

impl Classify for DecoderError {
    fn is_request(&self) -> bool {
        match self {
            DecoderError::Request(_)
            | DecoderError::Position { .. }
            | DecoderError::OutOfKvPages { .. }
            | DecoderError::CannotTruncate { .. }
            | DecoderError::Pending(_)
            | DecoderError::OutputLength { .. } => true,
            DecoderError::InRow { error, .. } => error.is_request(),
            DecoderError::Model(e) => e.is_request(),
            _ => false,
        }
    }
}

/// The exception for `e` with `message`.
fn raise(request: bool, message: String) -> PyErr {
    if request {
        PyValueError::new_err(message)
    } else {
        Error::new_err(message)
    }
}

/// `e` as its Python exception.
pub fn to_py<E>(e: E) -> PyErr
where
    E: Classify + std::error::Error + Send + Sync + 'static,
{
    let request = e.is_request();
    raise(request, format!("{:#}", anyhow::Error::new(e)))
}

/// `e` as its Python exception, its message led by `context` (what was being done).
pub fn with_context<E>(context: String, e: E) -> PyErr
where
    E: Classify + std::error::Error + Send + Sync + 'static,
{
    let request = e.is_request();
    raise(
        request,
        format!("{:#}", anyhow::Error::new(e).context(context)),
    )
}

/// A `ValueError` for an argument the bindings refuse themselves.
pub fn bad_request(message: impl Into<String>) -> PyErr {
    PyValueError::new_err(message.into())
}

/// A `stagformer.Error` with `message`.
pub fn failure(message: impl Into<String>) -> PyErr {
    Error::new_err(message.into())
}
