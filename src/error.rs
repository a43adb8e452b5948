//! Errors of the device API and the op wrappers.
//!
//! Every variant that is about a caller's argument names it (`arg`), so that a failed op
//! says which tensor or field was wrong.

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;

/// Result type of the device API.
pub type Result<T, E = DeviceError> = std::result::Result<T, E>;

/// An error of the device API, of a kernel launch or of an op wrapper.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The CUDA driver library (libcuda) could not be loaded.
    #[error("no CUDA driver: libcuda could not be loaded")]
    NoDriver,

    /// The driver is present but the device could not be opened.
    #[error("CUDA device {ordinal} could not be initialised: {reason}")]
    CudaInit { ordinal: usize, reason: String },

    /// A CUDA driver call failed. The driver's error is in the message (and not also the
    /// error's source), so a report that prints the chain says it once.
    #[error("CUDA driver call {call} failed: {cause}")]
    Driver {
        call: &'static str,
        cause: DriverError,
    },

    /// cuBLAS could not be loaded.
    #[error("cuBLAS is not available: {reason}")]
    NoCublas { reason: String },

    /// A cuBLAS call failed (its error in the message only, as for `Driver`).
    #[error("cuBLAS call {call} failed: {cause}")]
    Cublas {
        call: &'static str,
        cause: CublasError,
    },

    /// A range does not fit in the buffer or view it was taken from.
    #[error("{arg}: range {start}..{end} is out of bounds for length {len}")]
    OutOfBounds {
        arg: &'static str,
        start: usize,
        end: usize,
        len: usize,
    },

    /// Two lengths that must be equal are not (e.g. a host slice and a device buffer).
    #[error("{arg}: expected {expected} elements, found {found}")]
    LengthMismatch {
        arg: &'static str,
        expected: usize,
        found: usize,
    },

    /// An operand's size does not match the shape an op was given.
    #[error("{arg}: shape mismatch: expected {expected}, found {found}")]
    ShapeMismatch {
        arg: &'static str,
        expected: String,
        found: String,
    },

    /// An argument is out of its valid range (a stride, a dimension, a scalar).
    #[error("{arg}: {reason}")]
    InvalidArgument { arg: &'static str, reason: String },

    /// An op does not support this combination of element types.
    #[error("{op}: unsupported element types {found}; supported: {supported}")]
    UnsupportedDTypes {
        op: &'static str,
        found: String,
        supported: &'static str,
    },

    /// A buffer, stream or event belongs to another device than the one it is used with.
    #[error("{arg}: belongs to device {found}, but the operation runs on device {expected}")]
    DeviceMismatch {
        arg: &'static str,
        expected: String,
        found: String,
    },

    /// A size computation overflowed.
    #[error("{arg}: size overflow ({what})")]
    SizeOverflow { arg: &'static str, what: String },

    /// A launch configuration (grid, block, shared memory, params) is invalid.
    #[error("kernel {kernel}: invalid launch: {reason}")]
    InvalidLaunch {
        kernel: &'static str,
        reason: String,
    },

    /// The kernel is not compiled in for the backend it was launched on.
    #[error("kernel {kernel}: {reason}")]
    KernelUnavailable {
        kernel: &'static str,
        reason: &'static str,
    },

    /// An emulated kernel reported a failure (e.g. a barrier deadlock).
    #[error("emulated kernel {kernel} failed (code {code}): {message}")]
    EmulatedKernel {
        kernel: &'static str,
        code: i32,
        message: String,
    },

    /// Work queued on an emulated stream failed (a panic in a host function or an
    /// emulated op, or a failure of a stream it waited on).
    #[error("stream work failed: {message}")]
    StreamFailed { message: String },

    /// An emulated ("device") allocation could not be made on the host.
    #[error("emulated allocation of {bytes} bytes failed")]
    HostAllocation { bytes: usize },

    /// A host thread for an emulated stream could not be started.
    #[error("could not start an emulated stream thread: {reason}")]
    Thread { reason: String },

    /// An operation that a graph cannot replay was issued on a stream under capture (a copy
    /// from or to host memory, a host function, a timed event, a synchronisation).
    #[error("{op} cannot be captured into a graph: {reason}")]
    NotCapturable {
        op: &'static str,
        reason: &'static str,
    },

    /// Stream capture was used against its rules (a nested capture, a wait on an event from
    /// outside the capture, a stream forked into the capture that never rejoined it).
    #[error("stream capture: {reason}")]
    Capture { reason: String },
    /// A CUDA device was asked for in a build without the CUDA kernel images (the `cuda`
    /// feature is off): nothing could run on it.
    #[error(
        "this build has no CUDA kernels (build with the `cuda` feature of stagformer-kernels, \
         stagformer or stagformer-cli)"
    )]
    CudaNotBuilt,
}

impl DeviceError {
    pub(crate) fn driver(call: &'static str) -> impl FnOnce(DriverError) -> DeviceError {
        move |cause| DeviceError::Driver { call, cause }
    }

    pub(crate) fn cublas(call: &'static str) -> impl FnOnce(CublasError) -> DeviceError {
        move |cause| DeviceError::Cublas { call, cause }
    }

    pub(crate) fn invalid(arg: &'static str, reason: impl Into<String>) -> DeviceError {
        DeviceError::InvalidArgument {
            arg,
            reason: reason.into(),
        }
    }

    pub(crate) fn overflow(arg: &'static str, what: impl Into<String>) -> DeviceError {
        DeviceError::SizeOverflow {
            arg,
            what: what.into(),
        }
    }
}
