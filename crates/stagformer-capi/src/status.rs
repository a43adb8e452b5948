//! Status codes, the per-thread last error and the guard every exported function runs in.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use stagformer::DecoderError;

/// What a call did. `STAG_STATUS_OK` is 0; every other value is a failure whose message
/// `stag_last_error` returns.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StagStatus {
    /// Success.
    Ok = 0,
    /// A null pointer, a buffer too short, an unknown enum value or a size out of range; the
    /// message names the argument. Nothing ran.
    InvalidArgument = 1,
    /// A request the model or decoder refuses: a token outside the vocabulary, an unknown or
    /// stale sequence id, a length past the capacity, a full batch, bad sampling settings.
    /// Nothing ran; the decoder stays usable.
    Request = 2,
    /// The decoder's KV page pool has too few free pages; nothing ran (remove a sequence).
    OutOfPages = 3,
    /// The device failed (no GPU, a kernel or copy error).
    Device = 4,
    /// An earlier device error left the decoder unusable: free it and create a new one.
    Poisoned = 5,
    /// The call cannot run on this device or model (a decoder on the cpu device, a mode the
    /// model does not allow).
    Unsupported = 6,
    /// The logits held a NaN or an infinity (an activation overflowed). The step was taken.
    NonFinite = 7,
    /// The model directory cannot be loaded (config, safetensors, a tensor missing).
    Model = 8,
    /// A bug: a Rust panic was caught at the boundary. The handle should not be used again.
    Panic = 9,
}

/// A failure: its status and its message.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: StagStatus,
    pub message: String,
}

impl Failure {
    /// A failure of `status` with `message`.
    pub fn new(status: StagStatus, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }

    /// An `InvalidArgument` failure naming `arg`.
    pub fn arg(arg: &str, why: impl std::fmt::Display) -> Self {
        Self::new(StagStatus::InvalidArgument, format!("{arg}: {why}"))
    }
}

/// The status of a decoder error: the one mapping from the decoder's errors to C.
fn decoder_status(e: &DecoderError) -> StagStatus {
    match e {
        DecoderError::Device(_) => StagStatus::Device,
        DecoderError::Model(stagformer_ref::Error::Request(_)) => StagStatus::Request,
        DecoderError::Model(stagformer_ref::Error::NonFiniteLogits(_)) => StagStatus::NonFinite,
        DecoderError::Model(_) => StagStatus::Model,
        DecoderError::Request(_)
        | DecoderError::Position { .. }
        | DecoderError::CannotTruncate { .. }
        | DecoderError::Pending(_) => StagStatus::Request,
        DecoderError::NonFiniteLogits { .. } => StagStatus::NonFinite,
        DecoderError::OutOfKvPages { .. } => StagStatus::OutOfPages,
        DecoderError::OutputLength { .. } => StagStatus::InvalidArgument,
        DecoderError::InRow { error, .. } => decoder_status(error),
        DecoderError::Unsupported(_) => StagStatus::Unsupported,
        DecoderError::Poisoned(_) => StagStatus::Poisoned,
    }
}

impl From<DecoderError> for Failure {
    fn from(e: DecoderError) -> Self {
        Failure::new(decoder_status(&e), e.to_string())
    }
}

impl From<stagformer_ref::Error> for Failure {
    fn from(e: stagformer_ref::Error) -> Self {
        let status = match &e {
            stagformer_ref::Error::Request(_) => StagStatus::Request,
            stagformer_ref::Error::NonFiniteLogits(_) => StagStatus::NonFinite,
            _ => StagStatus::Model,
        };
        Failure::new(status, e.to_string())
    }
}

impl From<stagformer_ref::RequestError> for Failure {
    fn from(e: stagformer_ref::RequestError) -> Self {
        Failure::new(StagStatus::Request, e.to_string())
    }
}

thread_local! {
    /// The message of the calling thread's last failed call.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // An interior NUL would end the C string early; show it instead of dropping the message.
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|cell| *cell.borrow_mut() = text);
}

/// Drops the handle `ptr` that `Box::into_raw` made (null: nothing); a panic in a destructor
/// is caught and dropped here, since a free function has no status to report it with.
///
/// # Safety
/// `ptr` must be null or a pointer from `Box::into_raw` not yet freed.
pub(crate) unsafe fn free_handle<T>(ptr: *mut T) {
    if !ptr.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: by this function's contract, a live pointer from Box::into_raw.
            drop(unsafe { Box::from_raw(ptr) });
        }));
    }
}

/// Runs an exported function's body: its failure becomes the status and the thread's last
/// error, and a panic is caught here rather than unwinding into C.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Failure>) -> StagStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => StagStatus::Ok,
        Ok(Err(failure)) => {
            set_last_error(&failure.message);
            failure.status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            set_last_error(&format!("internal error (a panic was caught): {what}"));
            StagStatus::Panic
        }
    }
}

/// The message of the last call on this thread that failed, as a NUL-terminated UTF-8
/// string ("" before any failure). Owned by the library: valid until the next failing call
/// on the same thread; copy it to keep it. Successful calls leave it unchanged.
#[no_mangle]
pub extern "C" fn stag_last_error() -> *const c_char {
    // The pointer stays valid after the borrow ends: the CString's heap buffer lives in the
    // thread-local until the next `set_last_error` on this thread replaces it.
    LAST_ERROR.with(|cell| cell.borrow().as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: stag_last_error returns a valid NUL-terminated string owned by this thread.
        unsafe { CStr::from_ptr(stag_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let value = std::hint::black_box(7);
        let status = guard(|| panic!("deliberate {value}"));
        assert_eq!(status, StagStatus::Panic);
        assert!(last().contains("deliberate 7"), "{}", last());
    }

    #[test]
    fn a_failure_sets_the_message_and_success_keeps_it() {
        let status = guard(|| Err(Failure::arg("tokens", "is null")));
        assert_eq!(status, StagStatus::InvalidArgument);
        assert_eq!(last(), "tokens: is null");
        assert_eq!(guard(|| Ok(())), StagStatus::Ok);
        assert_eq!(last(), "tokens: is null");
    }

    #[test]
    fn messages_are_per_thread() {
        guard(|| Err(Failure::arg("here", "this thread")));
        let other = std::thread::spawn(|| {
            let before = last();
            guard(|| Err(Failure::arg("there", "other thread")));
            (before, last())
        })
        .join()
        .unwrap();
        assert_eq!(other, (String::new(), "there: other thread".to_string()));
        assert_eq!(last(), "here: this thread");
    }
}
