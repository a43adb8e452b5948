//! Streams and events.

use std::fmt;
use std::sync::{mpsc, Arc};

use cudarc::driver::CudaEvent;

use super::buffer::Allocation;
use super::cuda::CudaStreamState;
use super::emu::{EmuEvent, EmuStream};
use super::timing::EventClock;
use super::NodeKind;
use super::{Backend, Device};
use crate::error::{DeviceError, Result};

pub(crate) enum StreamBackend {
    Emulated(EmuStream),
    Cuda(CudaStreamState),
}

pub(super) struct StreamInner {
    // Declared first so that the backend stream goes before the device handle.
    pub(super) backend: StreamBackend,
    pub(super) device: Device,
}

/// An in-order queue of device work. Cheap to clone (shared handle); work queued through any
/// clone goes to the same queue.
#[derive(Clone)]
pub struct Stream {
    pub(super) inner: Arc<StreamInner>,
}

/// A recorded point in a stream's work; other streams can wait for it. Cheap to clone.
///
/// Events from [`Stream::record_timed_event`] also carry a time stamp (see
/// [`Event::elapsed_ms`]); those from [`Stream::record_event`] do not, which keeps them cheap.
#[derive(Clone)]
pub struct Event {
    pub(super) device: Device,
    pub(super) inner: EventInner,
    /// Where [`Event::elapsed_ms`] reads this event's time; `None` for untimed events.
    pub(super) clock: Option<EventClock>,
}

#[derive(Clone)]
pub(super) enum EventInner {
    Emulated(EmuEvent),
    Cuda(Arc<CudaEvent>),
}

/// Wraps a value so that it can be moved into stream work.
struct SendPtr(*mut u8);

// SAFETY: the pointer targets an emulated allocation that the same closure keeps alive through
// an `Arc<Allocation>`; device memory is only ever accessed through raw pointers.
unsafe impl Send for SendPtr {}
// SAFETY: as for `Send`; the wrapper only hands out the address.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(&self) -> *mut u8 {
        self.0
    }
}

impl Stream {
    pub(crate) fn new(device: &Device) -> Result<Stream> {
        let backend = match device.backend() {
            Backend::Emulated(e) => StreamBackend::Emulated(EmuStream::new(e)?),
            Backend::Cuda(c) => StreamBackend::Cuda(c.new_stream()?),
        };
        Ok(Stream {
            inner: Arc::new(StreamInner {
                backend,
                device: device.clone(),
            }),
        })
    }

    /// The device this stream belongs to.
    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    pub(crate) fn backend(&self) -> &StreamBackend {
        &self.inner.backend
    }

    /// Waits until all work queued so far has finished. Returns the stream's sticky error if
    /// queued work failed.
    pub fn synchronize(&self) -> Result<()> {
        self.refuse_capture("a stream synchronisation", "captured work does not run")?;
        match self.backend() {
            StreamBackend::Emulated(s) => s.synchronize(),
            StreamBackend::Cuda(s) => s.synchronize(),
        }
    }

    /// Records an event at the current end of the queue.
    pub fn record_event(&self) -> Result<Event> {
        let inner = match self.backend() {
            StreamBackend::Emulated(s) => EventInner::Emulated(s.record()),
            StreamBackend::Cuda(s) => EventInner::Cuda(Arc::new(s.record()?)),
        };
        Ok(Event {
            device: self.inner.device.clone(),
            inner,
            clock: None,
        })
    }

    /// Makes all work queued on this stream from now on wait until `event`'s work is done.
    /// Does not block the calling thread.
    pub fn wait_event(&self, event: &Event) -> Result<()> {
        if event.device != self.inner.device {
            return Err(DeviceError::DeviceMismatch {
                arg: "event",
                expected: self.inner.device.describe(),
                found: event.device.describe(),
            });
        }
        match (self.backend(), &event.inner) {
            (StreamBackend::Emulated(s), EventInner::Emulated(e)) => s.wait_event(e),
            (StreamBackend::Cuda(s), EventInner::Cuda(e)) => s.wait(e),
            _ => Err(DeviceError::DeviceMismatch {
                arg: "event",
                expected: self.inner.device.describe(),
                found: event.device.describe(),
            }),
        }
    }

    /// Queues a host function: it runs after the work queued before it, and work queued after
    /// it waits for it to return. A panic in `f` is caught (under emulation it becomes the
    /// stream's error). `f` must not call into the device API: on CUDA that is an error, and
    /// waiting for its own stream from inside it never returns.
    pub fn host_fn(&self, f: impl FnOnce() + Send + 'static) -> Result<()> {
        self.refuse_capture("a host function", "it can run only once")?;
        match self.backend() {
            StreamBackend::Emulated(s) => s.enqueue(Box::new(move || {
                f();
                Ok(())
            })),
            StreamBackend::Cuda(s) => s.host_fn(Box::new(f)),
        }
    }

    /// Fails with [`DeviceError::DeviceMismatch`] unless `alloc` is on this stream's device.
    pub(crate) fn check_device(&self, arg: &'static str, alloc: &Allocation) -> Result<()> {
        if alloc.device() == &self.inner.device {
            Ok(())
        } else {
            Err(DeviceError::DeviceMismatch {
                arg,
                expected: self.inner.device.describe(),
                found: alloc.device().describe(),
            })
        }
    }

    /// Queues a copy of `src` to byte `offset` of `dst`; `src` is taken at once.
    ///
    /// # Safety
    /// `offset .. offset + src.len()` must lie within `dst`, which is on this stream's device.
    pub(crate) unsafe fn write_from_host(
        &self,
        dst: &Arc<Allocation>,
        offset: usize,
        src: &[u8],
    ) -> Result<()> {
        self.refuse_capture(
            "a copy from host memory",
            "its source is read when it is queued; copy before launching the graph",
        )?;
        match self.backend() {
            StreamBackend::Emulated(s) => {
                let data = src.to_vec();
                let target = SendPtr(dst.host_ptr()?.wrapping_add(offset));
                let keep = Arc::clone(dst);
                s.enqueue(Box::new(move || {
                    let _keep = keep;
                    // SAFETY: the caller guaranteed the range; `_keep` holds the allocation.
                    unsafe {
                        std::ptr::copy_nonoverlapping(data.as_ptr(), target.get(), data.len())
                    };
                    Ok(())
                }))
            }
            // SAFETY: the caller guaranteed the range.
            StreamBackend::Cuda(s) => unsafe { s.memcpy_htod(dst.addr() + offset as u64, src) },
        }
    }

    /// Copies `dst.len()` bytes from byte `offset` of `src` after the work queued so far, and
    /// waits for the stream.
    ///
    /// # Safety
    /// `offset .. offset + dst.len()` must lie within `src`, which is on this stream's device.
    pub(crate) unsafe fn read_to_host(
        &self,
        src: &Arc<Allocation>,
        offset: usize,
        dst: &mut [u8],
    ) -> Result<()> {
        self.refuse_capture(
            "a copy to host memory",
            "it waits for work that does not run",
        )?;
        match self.backend() {
            StreamBackend::Emulated(s) => {
                let (tx, rx) = mpsc::channel();
                let from = SendPtr(src.host_ptr()?.wrapping_add(offset));
                let len = dst.len();
                let keep = Arc::clone(src);
                s.enqueue(Box::new(move || {
                    let _keep = keep;
                    let mut data = vec![0u8; len];
                    // SAFETY: the caller guaranteed the range; `_keep` holds the allocation.
                    unsafe { std::ptr::copy_nonoverlapping(from.get(), data.as_mut_ptr(), len) };
                    // The receiver only disappears if the caller is gone; nothing to do then.
                    let _ = tx.send(data);
                    Ok(())
                }))?;
                s.synchronize()?;
                let data = rx.recv().map_err(|_| DeviceError::StreamFailed {
                    message: "a copy to the host did not run".into(),
                })?;
                dst.copy_from_slice(&data);
                Ok(())
            }
            // SAFETY: the caller guaranteed the range.
            StreamBackend::Cuda(s) => unsafe { s.memcpy_dtoh(dst, src.addr() + offset as u64) },
        }
    }

    /// Queues a device-to-device copy of `bytes` bytes.
    ///
    /// # Safety
    /// Both ranges must lie within their allocations, on this stream's device, and must not
    /// overlap.
    pub(crate) unsafe fn copy_device(
        &self,
        dst: &Arc<Allocation>,
        dst_offset: usize,
        src: &Arc<Allocation>,
        src_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        match self.backend() {
            StreamBackend::Emulated(s) => {
                let to = SendPtr(dst.host_ptr()?.wrapping_add(dst_offset));
                let from = SendPtr(src.host_ptr()?.wrapping_add(src_offset));
                let keep = (Arc::clone(dst), Arc::clone(src));
                s.enqueue_node(
                    NodeKind::Copy,
                    Arc::new(move || {
                        let _keep = &keep;
                        // SAFETY: the caller guaranteed the ranges; `keep` holds both allocations.
                        unsafe { std::ptr::copy(from.get(), to.get(), bytes) };
                        Ok(())
                    }),
                )
            }
            StreamBackend::Cuda(s) => {
                self.retain_if_capturing([dst, src]);
                // SAFETY: the caller guaranteed the ranges.
                unsafe {
                    s.memcpy_dtod(
                        dst.addr() + dst_offset as u64,
                        src.addr() + src_offset as u64,
                        bytes,
                    )
                }
            }
        }
    }

    /// Queues zeroing of `bytes` bytes at byte `offset` of `dst`.
    ///
    /// # Safety
    /// The range must lie within `dst`, which is on this stream's device.
    pub(crate) unsafe fn zero_device(
        &self,
        dst: &Arc<Allocation>,
        offset: usize,
        bytes: usize,
    ) -> Result<()> {
        match self.backend() {
            StreamBackend::Emulated(s) => {
                let to = SendPtr(dst.host_ptr()?.wrapping_add(offset));
                let keep = Arc::clone(dst);
                s.enqueue_node(
                    NodeKind::Fill,
                    Arc::new(move || {
                        let _keep = &keep;
                        // SAFETY: the caller guaranteed the range; `keep` holds the allocation.
                        unsafe { std::ptr::write_bytes(to.get(), 0, bytes) };
                        Ok(())
                    }),
                )
            }
            StreamBackend::Cuda(s) => {
                self.retain_if_capturing([dst]);
                // SAFETY: the caller guaranteed the range.
                unsafe { s.memset_zero(dst.addr() + offset as u64, bytes) }
            }
        }
    }
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Stream");
        d.field("device", &self.inner.device.name());
        if let StreamBackend::Emulated(s) = self.backend() {
            d.field("id", &s.id());
        }
        d.finish()
    }
}

impl Event {
    /// Blocks the calling thread until the event's work is done. Under emulation, fails if
    /// that work failed.
    pub fn synchronize(&self) -> Result<()> {
        match &self.inner {
            EventInner::Emulated(e) => e.synchronize(),
            EventInner::Cuda(e) => e
                .synchronize()
                .map_err(DeviceError::driver("cuEventSynchronize")),
        }
    }

    /// Whether the event's work is done, without blocking.
    pub fn is_complete(&self) -> Result<bool> {
        match &self.inner {
            EventInner::Emulated(e) => e.is_complete(),
            EventInner::Cuda(e) => e
                .try_is_complete()
                .map_err(DeviceError::driver("cuEventQuery")),
        }
    }

    /// The device whose stream recorded the event.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("device", &self.device.name())
            .finish()
    }
}
