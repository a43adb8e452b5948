//! Interop with code that manages device memory and streams itself (another CUDA library, a
//! framework's allocator): wrap its raw pointers and stream handles, and export ours.
//!
//! * [`DeviceBuffer::from_raw_parts`] wraps `len` elements at a raw device address as a buffer
//!   that frees nothing; its [`view`](DeviceBuffer::view) and
//!   [`view_mut`](DeviceBuffer::view_mut) are ordinary [`DeviceView`]s and
//!   [`DeviceViewMut`]s, so every kernel wrapper takes them.
//! * [`Stream::from_raw`] wraps a stream handle; [`Stream::as_raw`] exports one.
//! * [`DeviceBuffer::addr`], [`DeviceView::as_ptr`] and [`DeviceViewMut::as_mut_ptr`] export
//!   addresses.
//!
//! [`Device::cuda`] opens the device's *primary* context (cudarc retains it with
//! `cuDevicePrimaryCtxRetain`), the one the CUDA runtime and most libraries share, so pointers
//! and streams of the runtime API on the same device are valid here and the other way round.
//!
//! On the emulated device a raw address is a host address (its allocations are host memory),
//! and a raw stream handle is one that [`Stream::as_raw`] gave out, so both paths are tested
//! without a GPU.
//!
//! [`DeviceView`]: super::DeviceView
//! [`DeviceViewMut`]: super::DeviceViewMut
//! [`DeviceView::as_ptr`]: super::DeviceView::as_ptr
//! [`DeviceViewMut::as_mut_ptr`]: super::DeviceViewMut::as_mut_ptr

use std::ffi::c_void;
use std::sync::Arc;

use super::buffer::{byte_len, Allocation};
use super::stream::{StreamBackend, StreamInner};
use super::{Backend, Device, DeviceBuffer, Stream};
use crate::dtype::DeviceElem;
use crate::error::{DeviceError, Result};

impl<T: DeviceElem> DeviceBuffer<T> {
    /// Wraps `len` elements of `T` at device address `addr` on `device`, memory this crate
    /// does not own: dropping the buffer (and its clones, and the work that used it) frees
    /// nothing, and [`Device::allocated_bytes`] does not count it. Refused (before anything
    /// unsafe) when `addr` is null or not aligned to `T`, or `len` elements overflow.
    ///
    /// # Safety
    ///
    /// * `addr` is the start of at least `len · size_of::<T>()` bytes of device memory of
    ///   `device` (on CUDA, of its primary context; under emulation, host memory), readable and
    ///   writable by the kernels;
    /// * the memory stays allocated, and of at least that size, until the buffer is dropped
    ///   and every piece of work queued with it (or a view of it) has finished;
    /// * while this crate may use it, nothing else writes it unless ordered by events or
    ///   stream order, exactly as for memory this crate allocates.
    pub unsafe fn from_raw_parts(device: &Device, addr: u64, len: usize) -> Result<Self> {
        if addr == 0 {
            return Err(DeviceError::invalid("addr", "is null"));
        }
        let align = std::mem::align_of::<T>() as u64;
        if addr % align != 0 {
            return Err(DeviceError::invalid(
                "addr",
                format!("{addr:#x} is not aligned to {align} bytes ({})", T::DTYPE),
            ));
        }
        let bytes = byte_len::<T>("len", len)?;
        if addr.checked_add(bytes as u64).is_none() {
            return Err(DeviceError::overflow(
                "len",
                "addr + len wraps the address space",
            ));
        }
        Ok(DeviceBuffer::from_allocation(
            Allocation::foreign(device, addr),
            len,
        ))
    }
}

impl Stream {
    /// Wraps a raw stream handle of `device`: on CUDA a `CUstream` (`cudaStream_t`) of the
    /// device's primary context, which the wrapper never destroys; under emulation a handle
    /// [`Stream::as_raw`] returned, for which the result is another handle to that stream.
    /// Work queued on the result is ordered with the owner's work on the same stream, as
    /// stream order always is. Refused when `handle` is null.
    ///
    /// # Safety
    ///
    /// * On CUDA: `handle` is a live stream of `device`'s primary context (or the null-free
    ///   legacy handles the driver accepts), and its owner keeps it alive while the result,
    ///   any clone of it or any graph captured on it is used.
    /// * Under emulation: `handle` came from [`Stream::as_raw`] of a stream of `device` that is
    ///   still alive (some [`Stream`] handle to it exists) when this is called.
    pub unsafe fn from_raw(device: &Device, handle: *mut c_void) -> Result<Stream> {
        if handle.is_null() {
            return Err(DeviceError::invalid("handle", "is null"));
        }
        match device.backend() {
            Backend::Emulated(_) => {
                let ptr = handle.cast_const().cast::<StreamInner>();
                // SAFETY: per the contract `ptr` is `Arc::as_ptr` of a live stream's inner
                // state: taking one more strong count and adopting it is that Arc's clone.
                let inner = unsafe {
                    Arc::increment_strong_count(ptr);
                    Arc::from_raw(ptr)
                };
                if inner.device != *device {
                    return Err(DeviceError::DeviceMismatch {
                        arg: "handle",
                        expected: device.describe(),
                        found: inner.device.describe(),
                    });
                }
                Ok(Stream { inner })
            }
            Backend::Cuda(c) => {
                // SAFETY: the caller guarantees a live stream of this context that outlives
                // the wrapper, which is `borrow_stream`'s contract.
                let state = unsafe { c.borrow_stream(handle.cast()) };
                Ok(Stream {
                    inner: Arc::new(StreamInner {
                        backend: StreamBackend::Cuda(state),
                        device: device.clone(),
                    }),
                })
            }
        }
    }

    /// The raw handle of this stream: on CUDA its `CUstream`, for other CUDA code to queue work
    /// in order with this stream's; under emulation an opaque handle for
    /// [`Stream::from_raw`]. Valid while this stream (or a clone) is alive.
    pub fn as_raw(&self) -> *mut c_void {
        match &self.inner.backend {
            StreamBackend::Emulated(_) => Arc::as_ptr(&self.inner).cast_mut().cast(),
            StreamBackend::Cuda(s) => s.raw().cast(),
        }
    }
}
