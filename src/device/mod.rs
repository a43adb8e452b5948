//! The device API: devices, streams, events and typed buffers, on a CUDA GPU or on the host
//! emulator.
//!
//! ```
//! use stagformer_kernels::device::{Device, DeviceBuffer};
//!
//! # fn main() -> Result<(), stagformer_kernels::error::DeviceError> {
//! let device = Device::emulated();
//! let stream = device.new_stream()?;
//! let x = DeviceBuffer::from_host(&stream, &[1.0f32, 2.0, 3.0])?;
//! assert_eq!(x.to_host(&stream)?, vec![1.0, 2.0, 3.0]);
//! # Ok(())
//! # }
//! ```
//!
//! # Model
//!
//! Both backends follow CUDA's rules, so that code tested under emulation behaves the same on
//! a GPU:
//!
//! * Work on one [`Stream`] runs in order; different streams run concurrently. Emulated
//!   streams are real host threads, so a missing [`Stream::wait_event`] shows up as a wrong
//!   result in CPU tests too.
//! * Allocation is immediate and not ordered on any stream. Fresh allocations are
//!   uninitialised; under emulation they are filled with a poison pattern (NaN, `0xDEADBEEF`).
//! * Copies from the host take their data when called; copies to the host wait for the stream.
//! * An error raised by queued work is sticky: the stream's next
//!   [`synchronize`](Stream::synchronize) (or `to_host`) and all later calls return it.
//! * [`Stream::record_timed_event`] and [`Event::elapsed_ms`] time device work: with the
//!   driver's event clock on CUDA, with the host clock under emulation.
//! * Dropping a buffer while queued work still uses it is safe: emulated work keeps the
//!   allocations it touches alive; on CUDA, freeing waits for the device (like `cudaFree`).
//!   Allocate up front rather than in a hot loop.
//! * [`Stream::capture`] records a stream's work (and that of the streams it forks to through
//!   events) into a [`Graph`] that [`Graph::launch`] replays with one call; CUDA's capture
//!   rules hold on both backends (see [`graph`]), one capture per device at a time: captures
//!   from several threads on one device are serialised.
//! * Memory and streams of other CUDA code can be wrapped, and ours exported ([`interop`]).

mod buffer;
mod capture_lock;
mod cuda;
mod emu;
mod emu_graph;
pub mod graph;
pub mod interop;
pub(crate) mod kernel;
mod stream;
mod timing;

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

pub use buffer::{AsDeviceView, AsDeviceViewMut, DeviceBuffer, DeviceView, DeviceViewMut};
pub use emu::EmuOptions;
pub(crate) use emu_graph::NodeKind;
pub use graph::{Graph, GraphNodes};
pub use stream::{Event, Stream};

pub(crate) use cuda::CudaDevice;
pub(crate) use emu::EmuDevice;
pub(crate) use stream::StreamBackend;

use crate::dtype::DeviceElem;
use crate::error::Result;

/// Largest dynamic shared memory per block accepted under emulation: the H100's opt-in limit,
/// so that launches valid under emulation are valid on the GPU the kernels target.
pub const EMU_MAX_DYNAMIC_SMEM_BYTES: u32 = 227 * 1024;

/// Streaming multiprocessors an emulated device reports: an H100 SXM's (and an H200's), so that
/// launch plans made under emulation are the ones that GPU gets.
pub const EMU_SM_COUNT: u32 = 132;

/// Which backend a [`Device`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// An NVIDIA GPU through the CUDA driver.
    Cuda,
    /// The host emulator of CUDA.
    Emulated,
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::Cuda => "cuda",
            DeviceKind::Emulated => "emulated",
        })
    }
}

pub(crate) enum Backend {
    Emulated(EmuDevice),
    Cuda(CudaDevice),
}

struct DeviceInner {
    id: u64,
    name: String,
    backend: Backend,
    /// Bytes of the live allocations made on this device (see [`Device::allocated_bytes`]).
    allocated: AtomicUsize,
    /// Serialises captures on this device (see [`capture_lock`]).
    capture: capture_lock::CaptureLock,
}

/// A device: a CUDA GPU or the host emulator. Cheap to clone (shared handle).
#[derive(Clone)]
pub struct Device {
    inner: Arc<DeviceInner>,
}

static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

impl Device {
    fn from_backend(name: String, backend: Backend) -> Device {
        Device {
            inner: Arc::new(DeviceInner {
                id: NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed),
                name,
                backend,
                allocated: AtomicUsize::new(0),
                capture: capture_lock::CaptureLock::default(),
            }),
        }
    }

    /// Opens CUDA device `ordinal` in its primary context (the one the CUDA runtime and most
    /// libraries share, retained through cudarc), so raw pointers and streams of other CUDA
    /// code on that device can be wrapped ([`interop`]).
    ///
    /// Never panics: in a build without the CUDA kernels (feature `cuda` off, see
    /// [`crate::build_info`]) it returns [`DeviceError::CudaNotBuilt`] before touching the
    /// driver, since no kernel could run on the device; without a CUDA driver it returns
    /// [`DeviceError::NoDriver`]; other failures (no GPU, a bad ordinal, an incompatible
    /// driver) are [`DeviceError::CudaInit`].
    ///
    /// [`DeviceError::CudaNotBuilt`]: crate::error::DeviceError::CudaNotBuilt
    /// [`DeviceError::NoDriver`]: crate::error::DeviceError::NoDriver
    /// [`DeviceError::CudaInit`]: crate::error::DeviceError::CudaInit
    pub fn cuda(ordinal: usize) -> Result<Device> {
        if !crate::CUDA_KERNELS {
            return Err(crate::error::DeviceError::CudaNotBuilt);
        }
        let dev = CudaDevice::open(ordinal)?;
        let name = format!("cuda:{ordinal} ({})", dev.name);
        Ok(Device::from_backend(name, Backend::Cuda(dev)))
    }

    /// The host emulator with default options (ordered threads, one worker per core). Available
    /// in every build, with or without the `cuda` feature.
    pub fn emulated() -> Device {
        Device::emulated_with(EmuOptions::default())
    }

    /// The host emulator with the given options.
    pub fn emulated_with(options: EmuOptions) -> Device {
        let mut name = String::from("emulated");
        if options.shuffle_seed != 0 {
            name.push_str(&format!(" (shuffle seed {})", options.shuffle_seed));
        }
        Device::from_backend(name, Backend::Emulated(EmuDevice::new(options)))
    }

    /// A human-readable name, e.g. `cuda:0 (NVIDIA H100 80GB HBM3)` or `emulated`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The backend.
    pub fn kind(&self) -> DeviceKind {
        match self.inner.backend {
            Backend::Emulated(_) => DeviceKind::Emulated,
            Backend::Cuda(_) => DeviceKind::Cuda,
        }
    }

    /// The emulator options, for an emulated device.
    pub fn emu_options(&self) -> Option<EmuOptions> {
        match &self.inner.backend {
            Backend::Emulated(e) => Some(e.options),
            Backend::Cuda(_) => None,
        }
    }

    /// Largest dynamic shared memory a kernel launch may request on this device.
    pub fn max_dynamic_smem_bytes(&self) -> u32 {
        match &self.inner.backend {
            Backend::Emulated(_) => EMU_MAX_DYNAMIC_SMEM_BYTES,
            Backend::Cuda(c) => c.max_dynamic_smem,
        }
    }

    /// Streaming multiprocessors, for sizing grids (see [`EMU_SM_COUNT`] under emulation).
    pub fn sm_count(&self) -> u32 {
        match &self.inner.backend {
            Backend::Emulated(_) => EMU_SM_COUNT,
            Backend::Cuda(c) => c.sm_count,
        }
    }

    /// Waits for all work on all streams of this device. Returns the first stream error.
    pub fn synchronize(&self) -> Result<()> {
        match &self.inner.backend {
            Backend::Emulated(e) => e.synchronize(),
            Backend::Cuda(c) => c.synchronize(),
        }
    }

    /// Creates a new stream (on CUDA a non-blocking stream; under emulation a queue with its
    /// own host thread).
    pub fn new_stream(&self) -> Result<Stream> {
        Stream::new(self)
    }

    /// Allocates `len` uninitialised elements (poisoned under emulation). Same as
    /// [`DeviceBuffer::alloc`].
    pub fn alloc<T: DeviceElem>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        DeviceBuffer::alloc(self, len)
    }

    /// Bytes of the buffers allocated on this device that are still alive (their requested
    /// sizes, before the allocator's rounding), counted on both backends. Memory planning is
    /// checked against it: after a constructor returns, the growth of this count is what the
    /// constructor holds.
    pub fn allocated_bytes(&self) -> usize {
        self.inner.allocated.load(Ordering::Relaxed)
    }

    /// Counts `bytes` allocated (`grow`) or freed.
    pub(crate) fn account(&self, bytes: usize, grow: bool) {
        if grow {
            self.inner.allocated.fetch_add(bytes, Ordering::Relaxed);
        } else {
            self.inner.allocated.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// Takes the device's capture lock: waits for a capture on another thread to end.
    pub(crate) fn lock_capture(&self) -> Result<capture_lock::CaptureGuard<'_>> {
        self.inner.capture.acquire(&self.describe())
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    /// Short description for error messages.
    pub(crate) fn describe(&self) -> String {
        format!("#{} {}", self.inner.id, self.inner.name)
    }
}

impl PartialEq for Device {
    fn eq(&self, other: &Self) -> bool {
        self.inner.id == other.inner.id
    }
}

impl Eq for Device {}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("id", &self.inner.id)
            .field("name", &self.inner.name)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Device>();
        check::<Stream>();
        check::<Event>();
        check::<Graph>();
        check::<DeviceBuffer<half::bf16>>();
        check::<DeviceView<'static, f32>>();
        check::<DeviceViewMut<'static, u32>>();
    }

    #[test]
    fn emulated_device_basics() {
        let d = Device::emulated();
        assert_eq!(d.kind(), DeviceKind::Emulated);
        assert_eq!(d.name(), "emulated");
        assert_eq!(d.emu_options(), Some(EmuOptions::default()));
        assert_eq!(d, d.clone());
        assert_ne!(d, Device::emulated());
        d.synchronize().unwrap();
        let opts = EmuOptions {
            shuffle_seed: 7,
            workers: 2,
        };
        let d2 = Device::emulated_with(opts);
        assert_eq!(d2.emu_options(), Some(opts));
        assert!(d2.name().contains("seed 7"));
    }
}
