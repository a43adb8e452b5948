//! Timing device work with events.
//!
//! ```
//! use stagformer_kernels::device::{Device, DeviceBuffer};
//!
//! # fn main() -> Result<(), stagformer_kernels::error::DeviceError> {
//! let device = Device::emulated();
//! let stream = device.new_stream()?;
//! let mut x = DeviceBuffer::<f32>::alloc(&device, 1 << 16)?;
//! let start = stream.record_timed_event()?;
//! x.fill_zero(&stream)?;
//! let end = stream.record_timed_event()?;
//! let ms = start.elapsed_ms(&end)?;
//! assert!(ms >= 0.0);
//! # Ok(())
//! # }
//! ```
//!
//! On CUDA a timed event is a driver event created without `CU_EVENT_DISABLE_TIMING`, and the
//! time between two of them is `cuEventElapsedTime`: GPU time, with the driver's resolution
//! (about half a microsecond). Under emulation a timed event queues a marker that stamps the
//! host clock when the stream's worker reaches it, that is, once all work queued before it on
//! that stream has finished. Emulated times measure the emulator, not a GPU: they order work
//! and test timing code, but say nothing about kernel speed.
//!
//! Untimed events ([`Stream::record_event`]) stay the default: on CUDA they are cheaper to
//! record and to wait on.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::stream::{Event, EventInner, StreamBackend};
use super::Stream;
use crate::error::{DeviceError, Result};

/// Where a timed event's time is read.
#[derive(Clone)]
pub(crate) enum EventClock {
    /// The driver event itself carries the time (`cuEventElapsedTime`).
    Cuda,
    /// Set by the emulated stream's worker when it reaches the event.
    Emulated(Arc<OnceLock<Instant>>),
}

impl Stream {
    /// Records an event at the current end of the queue that also records the time at which
    /// the stream reaches it, for [`Event::elapsed_ms`]. Can be waited on like any event.
    ///
    /// Under emulation this queues a marker, so it fails if the stream has already failed.
    pub fn record_timed_event(&self) -> Result<Event> {
        self.refuse_capture("a timed event", "its time stamp would be taken only once")?;
        let (inner, clock) = match self.backend() {
            StreamBackend::Cuda(s) => (
                EventInner::Cuda(Arc::new(s.record_timed()?)),
                EventClock::Cuda,
            ),
            StreamBackend::Emulated(s) => {
                let stamp = Arc::new(OnceLock::new());
                let set = Arc::clone(&stamp);
                let event = s.record_after(Box::new(move || {
                    // Each marker runs once, so the stamp is always unset here.
                    let _ = set.set(Instant::now());
                    Ok(())
                }))?;
                (EventInner::Emulated(event), EventClock::Emulated(stamp))
            }
        };
        Ok(Event {
            device: self.device().clone(),
            inner,
            clock: Some(clock),
        })
    }
}

impl Event {
    /// Whether the event was recorded with [`Stream::record_timed_event`].
    pub fn is_timed(&self) -> bool {
        self.clock.is_some()
    }

    /// Milliseconds from this event to `end`, waiting for both first. The events may come from
    /// different streams of the same device. Under emulation the result is negative if `end`
    /// was reached first; on CUDA it is what `cuEventElapsedTime` reports.
    ///
    /// Fails with [`DeviceError::InvalidArgument`] if either event was recorded without
    /// timing, [`DeviceError::DeviceMismatch`] if they belong to different devices, and with
    /// the stream's error if the work before either event failed.
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32> {
        if end.device != self.device {
            return Err(DeviceError::DeviceMismatch {
                arg: "end",
                expected: self.device.describe(),
                found: end.device.describe(),
            });
        }
        let untimed = |arg| {
            DeviceError::invalid(
                arg,
                "event was recorded without timing; use Stream::record_timed_event",
            )
        };
        let start_clock = self.clock.as_ref().ok_or_else(|| untimed("start"))?;
        let end_clock = end.clock.as_ref().ok_or_else(|| untimed("end"))?;
        match (&self.inner, &end.inner, start_clock, end_clock) {
            (EventInner::Cuda(a), EventInner::Cuda(b), EventClock::Cuda, EventClock::Cuda) => a
                .elapsed_ms(b)
                .map_err(DeviceError::driver("cuEventElapsedTime")),
            (
                EventInner::Emulated(_),
                EventInner::Emulated(_),
                EventClock::Emulated(a),
                EventClock::Emulated(b),
            ) => {
                self.synchronize()?;
                end.synchronize()?;
                let missing = || DeviceError::StreamFailed {
                    message: "a timed event's marker did not run".into(),
                };
                let (a, b) = (*a.get().ok_or_else(missing)?, *b.get().ok_or_else(missing)?);
                let ms = |from: Instant, to: Instant| to.duration_since(from).as_secs_f64() * 1e3;
                let signed = if b >= a { ms(a, b) } else { -ms(b, a) };
                Ok(signed as f32)
            }
            // Devices are equal, so both events come from the same backend.
            _ => Err(DeviceError::DeviceMismatch {
                arg: "end",
                expected: self.device.describe(),
                found: end.device.describe(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::device::{Device, DeviceBuffer};
    use crate::error::DeviceError;

    const PAUSE: Duration = Duration::from_millis(30);

    #[test]
    fn emulated_elapsed_covers_the_work_between_events() {
        let dev = Device::emulated();
        let stream = dev.new_stream().unwrap();
        // Work queued before the start event must not count.
        stream.host_fn(|| std::thread::sleep(PAUSE)).unwrap();
        let start = stream.record_timed_event().unwrap();
        assert!(start.is_timed());
        stream.host_fn(|| std::thread::sleep(PAUSE)).unwrap();
        let end = stream.record_timed_event().unwrap();
        let ms = start.elapsed_ms(&end).unwrap();
        assert!(ms >= PAUSE.as_secs_f32() * 1e3, "{ms} ms");
        assert!(ms < 20.0 * PAUSE.as_secs_f32() * 1e3, "{ms} ms");
        // Reversed order gives the negated time; an event against itself gives zero.
        assert_eq!(end.elapsed_ms(&start).unwrap(), -ms);
        assert_eq!(start.elapsed_ms(&start).unwrap(), 0.0);
    }

    #[test]
    fn emulated_stamp_is_taken_when_the_stream_reaches_the_event() {
        let dev = Device::emulated();
        let stream = dev.new_stream().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // Hold the stream, record both events, and only then let the stream go: the time
        // between them is the (short) time the worker needs to pass both markers, not the time
        // spent in this thread between the two calls.
        stream
            .host_fn(move || {
                let _ = rx.recv();
            })
            .unwrap();
        let start = stream.record_timed_event().unwrap();
        std::thread::sleep(PAUSE);
        let end = stream.record_timed_event().unwrap();
        assert!(!end.is_complete().unwrap());
        tx.send(()).unwrap();
        let ms = start.elapsed_ms(&end).unwrap();
        assert!((0.0..PAUSE.as_secs_f32() * 1e3).contains(&ms), "{ms} ms");
    }

    #[test]
    fn events_on_two_streams_of_one_device() {
        let dev = Device::emulated();
        let (a, b) = (dev.new_stream().unwrap(), dev.new_stream().unwrap());
        let start = a.record_timed_event().unwrap();
        start.synchronize().unwrap();
        std::thread::sleep(PAUSE);
        let end = b.record_timed_event().unwrap();
        let ms = start.elapsed_ms(&end).unwrap();
        assert!(ms >= PAUSE.as_secs_f32() * 1e3, "{ms} ms");
    }

    #[test]
    fn timed_events_order_streams_like_untimed_ones() {
        let dev = Device::emulated();
        let (a, b) = (dev.new_stream().unwrap(), dev.new_stream().unwrap());
        let mut x = DeviceBuffer::<u32>::alloc(&dev, 4).unwrap();
        a.host_fn(|| std::thread::sleep(PAUSE)).unwrap();
        x.copy_from_host(&a, &[1, 2, 3, 4]).unwrap();
        let done = a.record_timed_event().unwrap();
        b.wait_event(&done).unwrap();
        assert_eq!(x.to_host(&b).unwrap(), vec![1, 2, 3, 4]);
    }

    #[test]
    fn untimed_events_are_refused() {
        let dev = Device::emulated();
        let stream = dev.new_stream().unwrap();
        let plain = stream.record_event().unwrap();
        assert!(!plain.is_timed());
        let timed = stream.record_timed_event().unwrap();
        let e = plain.elapsed_ms(&timed).unwrap_err();
        assert!(
            matches!(e, DeviceError::InvalidArgument { arg: "start", .. }),
            "{e}"
        );
        let e = timed.elapsed_ms(&plain).unwrap_err();
        assert!(
            matches!(e, DeviceError::InvalidArgument { arg: "end", .. }),
            "{e}"
        );
    }

    #[test]
    fn events_of_another_device_are_refused() {
        let (d1, d2) = (Device::emulated(), Device::emulated());
        let e1 = d1.new_stream().unwrap().record_timed_event().unwrap();
        let e2 = d2.new_stream().unwrap().record_timed_event().unwrap();
        let e = e1.elapsed_ms(&e2).unwrap_err();
        assert!(
            matches!(e, DeviceError::DeviceMismatch { arg: "end", .. }),
            "{e}"
        );
    }

    /// On a machine with a GPU: driver events time a copy (ignored elsewhere, so no run passes
    /// without checking anything).
    #[test]
    #[ignore = "needs a CUDA GPU: the GPU check runs it with --include-ignored"]
    fn cuda_timed_events_measure_gpu_work() {
        let dev = Device::cuda(0).expect("this test needs a CUDA GPU");
        let stream = dev.new_stream().unwrap();
        let words = 64 << 20;
        let src = DeviceBuffer::<u32>::alloc_zeroed(&stream, words).unwrap();
        let mut dst = DeviceBuffer::<u32>::alloc(&dev, words).unwrap();
        let start = stream.record_timed_event().unwrap();
        dst.copy_from(&stream, &src).unwrap();
        let end = stream.record_timed_event().unwrap();
        let ms = start.elapsed_ms(&end).unwrap();
        // 512 MiB moved: more than a microsecond, less than a second on any CUDA GPU.
        assert!(ms > 1e-3 && ms < 1e3, "{ms} ms");
        let plain = stream.record_event().unwrap();
        assert!(matches!(
            start.elapsed_ms(&plain),
            Err(DeviceError::InvalidArgument { arg: "end", .. })
        ));
    }

    #[test]
    fn failed_work_is_reported() {
        let dev = Device::emulated();
        let stream = dev.new_stream().unwrap();
        let start = stream.record_timed_event().unwrap();
        stream.host_fn(|| panic!("stage failed")).unwrap();
        // The stream may or may not have failed yet; either way the error must surface.
        let e = match stream.record_timed_event() {
            Ok(end) => start.elapsed_ms(&end).unwrap_err(),
            Err(e) => e,
        };
        assert!(e.to_string().contains("stage failed"), "{e}");
    }
}
