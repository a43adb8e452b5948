//! The emulated backend: "device" memory is host memory, and every stream is an in-order
//! queue drained by its own host thread.
//!
//! An event is a point in one stream's queue (the number of items enqueued when it was
//! recorded). Waiting on it blocks until that stream's worker has completed that many
//! items, so cross-stream dependencies are real: a missing `wait_event` lets the waiting
//! stream run ahead, exactly as on a GPU.

use std::alloc::{self, Layout};
use std::any::Any;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread;

use super::emu_graph::{CapturePoint, CaptureSlot, CapturedGraph, LaneRef, Node, NodeKind};
use crate::error::{DeviceError, Result};

/// Alignment of emulated allocations (CUDA allocations are at least this aligned).
pub(crate) const EMU_ALIGN: usize = 256;

/// Options of an emulated device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmuOptions {
    /// 0: the threads of a block run in index order between barriers. Otherwise the seed of a
    /// shuffled order, which exposes missing barriers.
    pub shuffle_seed: u32,
    /// Host threads that run blocks (and CPU GEMMs) in parallel; 0 = one per available core.
    pub workers: u32,
}

pub(crate) struct EmuDevice {
    pub(crate) options: EmuOptions,
    streams: Mutex<Vec<Weak<StreamShared>>>,
    /// The stream capturing on this device, if any: CUDA's one capture per device.
    capturing: Mutex<Option<u64>>,
}

impl EmuDevice {
    pub(crate) fn new(options: EmuOptions) -> Self {
        EmuDevice {
            options,
            streams: Mutex::new(Vec::new()),
            capturing: Mutex::new(None),
        }
    }

    /// Marks stream `stream` as this device's capture; refused while another stream of the
    /// device is capturing, as on a GPU.
    pub(crate) fn begin_capture(&self, stream: u64) -> Result<()> {
        let mut capturing = lock(&self.capturing);
        if let Some(other) = *capturing {
            return Err(DeviceError::Capture {
                reason: format!(
                    "stream {other} of this device is capturing; a device captures one stream                      graph at a time (stream {stream} asked to begin)"
                ),
            });
        }
        *capturing = Some(stream);
        Ok(())
    }

    /// Ends the device's capture (whichever stream held it).
    pub(crate) fn end_capture(&self) {
        *lock(&self.capturing) = None;
    }

    fn register(&self, shared: &Arc<StreamShared>) {
        let mut streams = lock(&self.streams);
        streams.retain(|s| s.strong_count() > 0);
        streams.push(Arc::downgrade(shared));
    }

    /// Waits for all work queued on streams of this device; returns the first stream error.
    pub(crate) fn synchronize(&self) -> Result<()> {
        let live: Vec<Arc<StreamShared>> = lock(&self.streams)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let mut first_error = None;
        for stream in live {
            if let Err(e) = stream.wait_all() {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; recover the data if it ever happens.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Host memory standing in for device memory.
pub(crate) struct HostMem {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: `HostMem` exclusively owns a heap block. It hands out raw addresses only; every access
// goes through raw pointers in stream-ordered work, which is the device-memory model the whole
// API follows (ordering between streams is the caller's business, as on a GPU).
unsafe impl Send for HostMem {}
// SAFETY: see `Send`; `&HostMem` exposes nothing but the address.
unsafe impl Sync for HostMem {}

impl HostMem {
    /// Allocates `bytes` (at least 1) bytes, `EMU_ALIGN`-aligned, uninitialised.
    pub(crate) fn new(bytes: usize) -> Result<Self> {
        let layout = Layout::from_size_align(bytes.max(1), EMU_ALIGN)
            .map_err(|_| DeviceError::HostAllocation { bytes })?;
        // SAFETY: `layout` has non-zero size.
        let raw = unsafe { alloc::alloc(layout) };
        let ptr = NonNull::new(raw).ok_or(DeviceError::HostAllocation { bytes })?;
        Ok(HostMem { ptr, layout })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for HostMem {
    fn drop(&mut self) {
        // SAFETY: `ptr` was returned by `alloc::alloc(self.layout)` and is freed only here.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// A unit of work on an emulated stream.
pub(crate) type Job = Box<dyn FnOnce() -> Result<()> + Send + 'static>;

struct Progress {
    /// Items enqueued so far; the sequence number of the last one.
    enqueued: u64,
    /// Sequence number of the last item the worker finished (or skipped).
    completed: u64,
    /// The first failure: the item's sequence number and its error. Sticky.
    failure: Option<(u64, DeviceError)>,
}

pub(crate) struct StreamShared {
    id: u64,
    progress: Mutex<Progress>,
    changed: Condvar,
}

impl StreamShared {
    fn wait_until(&self, target: u64) -> MutexGuard<'_, Progress> {
        let mut p = lock(&self.progress);
        while p.completed < target {
            p = self.changed.wait(p).unwrap_or_else(PoisonError::into_inner);
        }
        p
    }

    fn wait_all(&self) -> Result<()> {
        let target = lock(&self.progress).enqueued;
        let p = self.wait_until(target);
        match &p.failure {
            Some((_, e)) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Waits for item `target`; fails if that item or an earlier one failed.
    fn wait_point(&self, target: u64) -> Result<()> {
        let p = self.wait_until(target);
        match &p.failure {
            Some((seq, e)) if *seq <= target => Err(e.clone()),
            _ => Ok(()),
        }
    }
}

/// An emulated stream: a queue and the host thread that drains it in order.
pub(crate) struct EmuStream {
    shared: Arc<StreamShared>,
    queue: Sender<(u64, Job)>,
    /// The capture this stream records into, if any (see `emu_graph`).
    capture: CaptureSlot,
}

static NEXT_STREAM_ID: AtomicU64 = AtomicU64::new(1);

impl EmuStream {
    pub(crate) fn new(device: &EmuDevice) -> Result<Self> {
        let id = NEXT_STREAM_ID.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(StreamShared {
            id,
            progress: Mutex::new(Progress {
                enqueued: 0,
                completed: 0,
                failure: None,
            }),
            changed: Condvar::new(),
        });
        let (queue, rx) = mpsc::channel();
        let worker_shared = Arc::clone(&shared);
        thread::Builder::new()
            .name(format!("stag-emu-stream-{id}"))
            .spawn(move || worker(rx, worker_shared))
            .map_err(|e| DeviceError::Thread {
                reason: e.to_string(),
            })?;
        device.register(&shared);
        Ok(EmuStream {
            shared,
            queue,
            capture: Arc::new(Mutex::new(None)),
        })
    }

    pub(crate) fn id(&self) -> u64 {
        self.shared.id
    }

    /// Queues `job`, which runs once. Fails at once if the stream already failed (its error
    /// is sticky), and under capture, since a graph must be able to run its work many times.
    pub(crate) fn enqueue(&self, job: Job) -> Result<()> {
        self.refuse_capture("host-ordered work", "it can run only once")?;
        self.enqueue_seq(job).map(drop)
    }

    /// Queues `node`, or records it (as a `kind` node) into the capture this stream is part of.
    pub(crate) fn enqueue_node(&self, kind: NodeKind, node: Node) -> Result<()> {
        if let Some(lane) = self.capturing() {
            return lane.push_run(kind, node);
        }
        self.enqueue_seq(Box::new(move || node())).map(drop)
    }

    /// Queues `job` and returns an event at it: complete once `job` has run.
    pub(crate) fn record_after(&self, job: Job) -> Result<EmuEvent> {
        self.refuse_capture("a timed event", "its time stamp would be taken only once")?;
        let target = self.enqueue_seq(job)?;
        Ok(EmuEvent {
            stream: Arc::clone(&self.shared),
            target,
            capture: None,
        })
    }

    /// The capture this stream records into, if any.
    pub(crate) fn capturing(&self) -> Option<LaneRef> {
        lock(&self.capture).clone()
    }

    /// Fails with [`DeviceError::NotCapturable`] while this stream is under capture.
    pub(crate) fn refuse_capture(&self, op: &'static str, reason: &'static str) -> Result<()> {
        match self.capturing() {
            Some(_) => Err(DeviceError::NotCapturable { op, reason }),
            None => Ok(()),
        }
    }

    /// Starts recording this stream's work (and that of streams that wait on its events)
    /// instead of running it.
    pub(crate) fn begin_capture(&self) -> Result<()> {
        let mut slot = lock(&self.capture);
        if slot.is_some() {
            return Err(DeviceError::Capture {
                reason: "the stream is already capturing".into(),
            });
        }
        *slot = Some(LaneRef::begin(Arc::clone(&self.capture)));
        Ok(())
    }

    /// Ends the capture this stream began; every stream that joined it leaves it too.
    pub(crate) fn end_capture(&self) -> Result<CapturedGraph> {
        let lane = self.capturing().ok_or_else(|| DeviceError::Capture {
            reason: "the stream is not capturing".into(),
        })?;
        lane.end()
    }

    /// Queues `job`; returns its sequence number.
    fn enqueue_seq(&self, job: Job) -> Result<u64> {
        let mut p = lock(&self.shared.progress);
        if let Some((_, e)) = &p.failure {
            return Err(e.clone());
        }
        let seq = p.enqueued + 1;
        self.queue
            .send((seq, job))
            .map_err(|_| DeviceError::StreamFailed {
                message: "the stream's worker thread has exited".into(),
            })?;
        p.enqueued = seq;
        Ok(seq)
    }

    /// Waits until everything queued so far has run; returns the stream's sticky error.
    pub(crate) fn synchronize(&self) -> Result<()> {
        self.refuse_capture("a stream synchronisation", "captured work does not run")?;
        self.shared.wait_all()
    }

    /// An event at the current end of the queue; under capture, a point of the capture.
    pub(crate) fn record(&self) -> EmuEvent {
        let target = lock(&self.shared.progress).enqueued;
        EmuEvent {
            stream: Arc::clone(&self.shared),
            target,
            capture: self.capturing().map(|lane| lane.point()),
        }
    }

    /// Makes this stream's later work wait for `event`. Waiting for an event recorded under
    /// capture makes this stream join that capture (CUDA's fork); a stream under capture may
    /// only wait for events of its own capture.
    pub(crate) fn wait_event(&self, event: &EmuEvent) -> Result<()> {
        match (self.capturing(), &event.capture) {
            (None, None) => {}
            (Some(lane), Some(point)) => return lane.push_wait(point),
            (None, Some(point)) => {
                return point.join(Arc::clone(&self.capture));
            }
            (Some(_), None) => {
                return Err(DeviceError::Capture {
                    reason: "a stream under capture waited for an event recorded outside the \
                             capture"
                        .into(),
                })
            }
        }
        if Arc::ptr_eq(&event.stream, &self.shared) {
            // Work of this stream up to the event precedes anything enqueued now.
            return Ok(());
        }
        let event = event.clone();
        self.enqueue(Box::new(move || {
            event
                .stream
                .wait_point(event.target)
                .map_err(|e| DeviceError::StreamFailed {
                    message: format!("a stream this stream waited on failed: {e}"),
                })
        }))
    }
}

/// A recorded point of an emulated stream, or of a capture.
#[derive(Clone)]
pub(crate) struct EmuEvent {
    stream: Arc<StreamShared>,
    target: u64,
    /// Set for events recorded under capture: they mark a point of the graph, not of a queue.
    capture: Option<CapturePoint>,
}

impl EmuEvent {
    fn refuse_captured(&self) -> Result<()> {
        match self.capture {
            Some(_) => Err(DeviceError::NotCapturable {
                op: "waiting on the host for an event recorded under capture",
                reason: "the event marks a point of the graph, which never runs as such",
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn synchronize(&self) -> Result<()> {
        self.refuse_captured()?;
        self.stream.wait_point(self.target)
    }

    pub(crate) fn is_complete(&self) -> Result<bool> {
        self.refuse_captured()?;
        Ok(lock(&self.stream.progress).completed >= self.target)
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

fn worker(rx: Receiver<(u64, Job)>, shared: Arc<StreamShared>) {
    while let Ok((seq, job)) = rx.recv() {
        let failed = lock(&shared.progress).failure.is_some();
        let result = if failed {
            // After a failure the stream is dead, like a CUDA context after a sticky error:
            // queued work is dropped (releasing the buffers it holds) without running.
            drop(job);
            Ok(())
        } else {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).unwrap_or_else(|p| {
                Err(DeviceError::StreamFailed {
                    message: format!("panic in stream work: {}", panic_message(p)),
                })
            })
        };
        let mut p = lock(&shared.progress);
        if let Err(e) = result {
            if p.failure.is_none() {
                p.failure = Some((seq, e));
            }
        }
        p.completed = seq;
        drop(p);
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn jobs_run_in_order() {
        let dev = EmuDevice::new(EmuOptions::default());
        let s = EmuStream::new(&dev).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        for i in 0..100 {
            let log = Arc::clone(&log);
            s.enqueue(Box::new(move || {
                log.lock().unwrap().push(i);
                Ok(())
            }))
            .unwrap();
        }
        s.synchronize().unwrap();
        assert_eq!(*log.lock().unwrap(), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn errors_are_sticky_and_skip_later_work() {
        let dev = EmuDevice::new(EmuOptions::default());
        let s = EmuStream::new(&dev).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        // Hold the worker so the failing job and the one after it are queued together.
        s.enqueue(Box::new(move || {
            gate_rx.recv().ok();
            Ok(())
        }))
        .unwrap();
        s.enqueue(Box::new(|| Err(DeviceError::invalid("job", "boom"))))
            .unwrap();
        let r = Arc::clone(&ran);
        s.enqueue(Box::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }))
        .unwrap();
        gate_tx.send(()).unwrap();
        let e = s.synchronize().unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        // Sticky: later calls keep failing.
        assert!(s.synchronize().is_err());
        assert!(s.enqueue(Box::new(|| Ok(()))).is_err());
        assert!(dev.synchronize().is_err());
    }

    #[test]
    fn panics_become_errors() {
        let dev = EmuDevice::new(EmuOptions::default());
        let s = EmuStream::new(&dev).unwrap();
        s.enqueue(Box::new(|| panic!("kaput"))).unwrap();
        let e = s.synchronize().unwrap_err();
        assert!(e.to_string().contains("kaput"), "{e}");
    }

    #[test]
    fn event_on_failed_stream_propagates() {
        let dev = EmuDevice::new(EmuOptions::default());
        let a = EmuStream::new(&dev).unwrap();
        let b = EmuStream::new(&dev).unwrap();
        a.enqueue(Box::new(|| Err(DeviceError::invalid("job", "first"))))
            .unwrap();
        let ev = a.record();
        assert!(ev.synchronize().is_err());
        b.wait_event(&ev).unwrap();
        let e = b.synchronize().unwrap_err();
        assert!(e.to_string().contains("waited on failed"), "{e}");
    }

    #[test]
    fn one_capture_per_device() {
        let device = EmuDevice::new(EmuOptions::default());
        device.begin_capture(1).unwrap();
        let err = device.begin_capture(2).unwrap_err();
        assert!(
            err.to_string()
                .contains("stream 1 of this device is capturing"),
            "{err}"
        );
        device.end_capture();
        device.begin_capture(2).unwrap();
        device.end_capture();
    }

    #[test]
    fn host_mem_is_aligned() {
        for bytes in [0, 1, 3, 255, 4096] {
            let m = HostMem::new(bytes).unwrap();
            assert_eq!(m.as_ptr() as usize % EMU_ALIGN, 0);
        }
    }
}
