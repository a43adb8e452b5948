//! One capture per device at a time, as CUDA requires: [`Stream::capture`] holds the device's
//! [`CaptureLock`] from the start of a capture to its end, so captures begun on two threads
//! (two decoders sharing a device) run one after the other instead of one failing. A capture
//! begun on the thread that already holds the lock (inside another capture's recording) would
//! wait for itself forever, so it is refused instead.
//!
//! [`Stream::capture`]: super::Stream::capture

use std::sync::{Condvar, Mutex};
use std::thread::{self, ThreadId};

use super::emu::lock;
use crate::error::{DeviceError, Result};

/// Which thread is capturing on a device, if any.
#[derive(Default)]
pub(crate) struct CaptureLock {
    owner: Mutex<Option<ThreadId>>,
    freed: Condvar,
}

/// Held while a capture is in progress; releases the device on drop (also on unwind).
pub(crate) struct CaptureGuard<'a>(&'a CaptureLock);

impl CaptureLock {
    /// Waits until no other thread is capturing on the device, then takes it. `device` names
    /// it in the error when this thread is capturing already.
    pub(crate) fn acquire(&self, device: &str) -> Result<CaptureGuard<'_>> {
        let me = thread::current().id();
        let mut owner = lock(&self.owner);
        loop {
            match *owner {
                None => break,
                Some(holder) if holder == me => {
                    return Err(DeviceError::Capture {
                        reason: format!(
                            "this thread is already capturing on device {device} (a capture is \
                             already in progress there); a device captures one stream graph at \
                             a time, so end it before beginning another"
                        ),
                    })
                }
                Some(_) => owner = self.freed.wait(owner).unwrap_or_else(|e| e.into_inner()),
            }
        }
        *owner = Some(me);
        Ok(CaptureGuard(self))
    }
}

impl Drop for CaptureGuard<'_> {
    fn drop(&mut self) {
        *lock(&self.0.owner) = None;
        self.0.freed.notify_one();
    }
}
