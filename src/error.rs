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
    CudaInit {
        /// The device's index among the driver's devices.
        ordinal: usize,
        /// The driver's error (or the panic it raised), in words.
        reason: String,
    },

    /// A CUDA driver call failed. The driver's error is in the message (and not also the
    /// error's source), so a report that prints the chain says it once.
    #[error("CUDA driver call {call} failed: {cause}")]
    Driver {
        /// The driver call, by name.
        call: &'static str,
        /// The driver's error code.
        cause: DriverError,
    },

    /// cuBLAS could not be loaded.
    #[error("cuBLAS is not available: {reason}")]
    NoCublas {
        /// Why the library or a handle could not be created.
        reason: String,
    },

    /// A cuBLAS call failed (its error in the message only, as for `Driver`).
    #[error("cuBLAS call {call} failed: {cause}")]
    Cublas {
        /// The cuBLAS function.
        call: &'static str,
        /// Its status code.
        cause: CublasError,
    },

    /// A range does not fit in the buffer or view it was taken from.
    #[error("{arg}: range {start}..{end} is out of bounds for length {len}")]
    OutOfBounds {
        /// The buffer or view the range was taken from.
        arg: &'static str,
        /// First element of the range.
        start: usize,
        /// One past its last element.
        end: usize,
        /// Elements in the buffer or view.
        len: usize,
    },

    /// Two lengths that must be equal are not (e.g. a host slice and a device buffer).
    #[error("{arg}: expected {expected} elements, found {found}")]
    LengthMismatch {
        /// The argument whose length is wrong.
        arg: &'static str,
        /// Elements it must have.
        expected: usize,
        /// Elements it has.
        found: usize,
    },

    /// An operand's size does not match the shape an op was given.
    #[error("{arg}: shape mismatch: expected {expected}, found {found}")]
    ShapeMismatch {
        /// The operand at fault.
        arg: &'static str,
        /// What the op's shape implies for it.
        expected: String,
        /// What it is.
        found: String,
    },

    /// An argument is out of its valid range (a stride, a dimension, a scalar).
    #[error("{arg}: {reason}")]
    InvalidArgument {
        /// The argument or field at fault (`heads`, `temperature`, ...).
        arg: &'static str,
        /// The range it must be in.
        reason: String,
    },

    /// An op does not support this combination of element types.
    #[error("{op}: unsupported element types {found}; supported: {supported}")]
    UnsupportedDTypes {
        /// The op.
        op: &'static str,
        /// The element types given.
        found: String,
        /// The combinations it supports.
        supported: &'static str,
    },

    /// A buffer, stream or event belongs to another device than the one it is used with.
    #[error("{arg}: belongs to device {found}, but the operation runs on device {expected}")]
    DeviceMismatch {
        /// The buffer, stream or event at fault.
        arg: &'static str,
        /// The device the operation runs on.
        expected: String,
        /// The device the argument belongs to.
        found: String,
    },

    /// A size computation overflowed.
    #[error("{arg}: size overflow ({what})")]
    SizeOverflow {
        /// The argument whose size overflowed.
        arg: &'static str,
        /// Which product or sum, and the limit it passed (`usize`, or 2³¹ − 1 for sizes
        /// handed to kernels).
        what: String,
    },

    /// A launch configuration (grid, block, shared memory, params) is invalid.
    #[error("kernel {kernel}: invalid launch: {reason}")]
    InvalidLaunch {
        /// The kernel's name.
        kernel: &'static str,
        /// What is wrong with the launch.
        reason: String,
    },

    /// The kernel is not compiled in for the backend it was launched on.
    #[error("kernel {kernel}: {reason}")]
    KernelUnavailable {
        /// The kernel's name.
        kernel: &'static str,
        /// Why it cannot run: the build lacks that backend's kernels, or the kernel image is
        /// unusable.
        reason: &'static str,
    },

    /// An emulated kernel reported a failure (e.g. a barrier deadlock).
    #[error("emulated kernel {kernel} failed (code {code}): {message}")]
    EmulatedKernel {
        /// The kernel's name.
        kernel: &'static str,
        /// The emulator's error code.
        code: i32,
        /// The emulator's description.
        message: String,
    },

    /// Work queued on an emulated stream failed (a panic in a host function or an
    /// emulated op, or a failure of a stream it waited on).
    #[error("stream work failed: {message}")]
    StreamFailed {
        /// What failed, as the stream recorded it.
        message: String,
    },

    /// An emulated ("device") allocation could not be made on the host.
    #[error("emulated allocation of {bytes} bytes failed")]
    HostAllocation {
        /// The size asked for.
        bytes: usize,
    },

    /// A host thread for an emulated stream could not be started.
    #[error("could not start an emulated stream thread: {reason}")]
    Thread {
        /// The operating system's error.
        reason: String,
    },

    /// An operation that a graph cannot replay was issued on a stream under capture (a copy
    /// from or to host memory, a host function, a timed event, a synchronisation).
    #[error("{op} cannot be captured into a graph: {reason}")]
    NotCapturable {
        /// The operation, in words.
        op: &'static str,
        /// Why a graph cannot hold it.
        reason: &'static str,
    },

    /// Stream capture was used against its rules (a nested capture, a wait on an event from
    /// outside the capture, a stream forked into the capture that never rejoined it).
    #[error("stream capture: {reason}")]
    Capture {
        /// Which rule was broken.
        reason: String,
    },
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
