//! Kernel launch plumbing for the op wrappers.
//!
//! A [`Kernel`] names one kernel and carries its entry points: the emulator's
//! `stag_emu_launch_<name>` (in every build) and the module image its CUDA function is loaded
//! from (with feature `cuda`; loaded lazily per device and cached). Declare
//! kernels with [`stag_kernel!`]; launch them with [`Stream::launch`], which validates the
//! geometry before anything unsafe happens.
//!
//! The op wrappers are the safe layer: they check shapes, lengths and devices, fill the params
//! struct from views, and call the unsafe `launch` with the views' allocations retained.

// Parts of this module are only used by op wrappers of one backend or the other.
#![allow(dead_code)]

use std::ffi::{c_char, c_int, CStr};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::DeviceRepr;

use super::buffer::Allocation;
use super::NodeKind;
use super::{Backend, Stream, StreamBackend};
use crate::error::{DeviceError, Result};
pub(crate) use crate::ffi::StagEmuLaunch;

/// Largest by-value kernel parameter block accepted (CUDA's classic 4 KiB limit).
pub(crate) const MAX_PARAMS_BYTES: usize = 4096;

/// A compiled CUDA module, embedded by the build script: a fatbin or cubin image, or PTX text
/// (with or without a trailing NUL), anything `cuModuleLoadData` accepts.
#[derive(Debug)]
pub(crate) struct ModuleImage {
    /// Module name (the `.cu` file's stem); the per-device module cache key.
    pub name: &'static str,
    /// The image bytes. Binary images must be 8-byte aligned.
    pub image: &'static [u8],
}

/// `extern "C" int stag_emu_launch_<name>(const StagEmuLaunch *cfg, const Params *p)`.
pub(crate) type EmuLaunchFn<P> = unsafe extern "C" fn(*const StagEmuLaunch, *const P) -> c_int;

/// `extern "C" const char *stag_emu_last_error(void)`: the calling thread's last error.
pub(crate) type EmuLastErrorFn = unsafe extern "C" fn() -> *const c_char;

/// The emulator entry points of a kernel.
pub(crate) struct EmuEntry<P> {
    pub launch: EmuLaunchFn<P>,
    pub last_error: EmuLastErrorFn,
}

impl<P> Clone for EmuEntry<P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P> Copy for EmuEntry<P> {}

/// One kernel, with params struct `P` passed by value as its only argument.
pub(crate) struct Kernel<P> {
    name: &'static str,
    module: Option<&'static ModuleImage>,
    emu: Option<EmuEntry<P>>,
    _params: PhantomData<fn(P)>,
}

impl<P> Kernel<P> {
    /// `module`: the CUDA image (`None` in builds without feature `cuda`); `emu`: the emulator
    /// entry points (`None` only for test kernels that have none).
    pub(crate) const fn new(
        name: &'static str,
        module: Option<&'static ModuleImage>,
        emu: Option<EmuEntry<P>>,
    ) -> Self {
        Kernel {
            name,
            module,
            emu,
            _params: PhantomData,
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        self.name
    }
}

impl<P> fmt::Debug for Kernel<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernel")
            .field("name", &self.name)
            .field("cuda", &self.module.is_some())
            .field("emulated", &self.emu.is_some())
            .finish()
    }
}

/// Launch geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_smem_bytes: u32,
}

impl LaunchConfig {
    /// A 1-D launch.
    pub(crate) const fn linear(blocks: u32, threads: u32, dynamic_smem_bytes: u32) -> Self {
        LaunchConfig {
            grid: [blocks, 1, 1],
            block: [threads, 1, 1],
            dynamic_smem_bytes,
        }
    }

    /// Checks the CUDA limits (compute capability 7.0 and later) and `max_smem`.
    pub(crate) fn validate(&self, kernel: &'static str, max_smem: u32) -> Result<()> {
        let bad = |reason: String| DeviceError::InvalidLaunch { kernel, reason };
        let [gx, gy, gz] = self.grid;
        let [bx, by, bz] = self.block;
        if gx == 0 || gy == 0 || gz == 0 {
            return Err(bad(format!("grid {:?} has a zero dimension", self.grid)));
        }
        if gx > i32::MAX as u32 || gy > 65_535 || gz > 65_535 {
            return Err(bad(format!(
                "grid {:?} exceeds the limits [2^31-1, 65535, 65535]",
                self.grid
            )));
        }
        if bx == 0 || by == 0 || bz == 0 {
            return Err(bad(format!("block {:?} has a zero dimension", self.block)));
        }
        if bx > 1024 || by > 1024 || bz > 64 {
            return Err(bad(format!(
                "block {:?} exceeds the limits [1024, 1024, 64]",
                self.block
            )));
        }
        let threads = u64::from(bx) * u64::from(by) * u64::from(bz);
        if threads > 1024 {
            return Err(bad(format!(
                "block {:?} has {threads} threads, more than 1024",
                self.block
            )));
        }
        if self.dynamic_smem_bytes > max_smem {
            return Err(bad(format!(
                "{} bytes of dynamic shared memory requested, the device allows {max_smem}",
                self.dynamic_smem_bytes
            )));
        }
        Ok(())
    }
}

/// An allocation kept alive by queued work, with the argument name it was passed as.
pub(crate) struct Retained {
    arg: &'static str,
    alloc: Arc<Allocation>,
}

impl Retained {
    pub(crate) fn new(arg: &'static str, alloc: Arc<Allocation>) -> Self {
        Retained { arg, alloc }
    }
}

/// Moves a params struct (plain data, possibly holding device addresses) into stream work.
struct SendParams<P>(P);

// SAFETY: `P` is a `Copy` C struct of plain values; the addresses in it refer to emulated
// device memory that the same closure keeps alive through `Retained` allocations.
unsafe impl<P> Send for SendParams<P> {}
// SAFETY: as for `Send`; replays only read the params.
unsafe impl<P> Sync for SendParams<P> {}

impl<P> SendParams<P> {
    fn get(&self) -> &P {
        &self.0
    }
}

extern "C" {
    /// The emulator's thread-local last error message (may be null).
    pub(crate) fn stag_emu_last_error() -> *const c_char;
}

impl Stream {
    /// Launches `kernel` with `params` on this stream.
    ///
    /// Geometry, shared memory and params size are validated first; the allocations in
    /// `retained` must be on this stream's device and are kept alive until the kernel has run.
    ///
    /// # Safety
    /// `params` must be valid for the kernel: every address in it must point into one of the
    /// `retained` allocations with all the extent the kernel reads or writes for this geometry,
    /// and ranges the kernel writes must not be written concurrently by other queued work.
    pub(crate) unsafe fn launch<P: DeviceRepr + Copy + 'static>(
        &self,
        kernel: &Kernel<P>,
        cfg: LaunchConfig,
        params: P,
        retained: &[Retained],
    ) -> Result<()> {
        let name = kernel.name;
        cfg.validate(name, self.device().max_dynamic_smem_bytes())?;
        if std::mem::size_of::<P>() > MAX_PARAMS_BYTES {
            return Err(DeviceError::InvalidLaunch {
                kernel: name,
                reason: format!(
                    "params struct of {} bytes exceeds {MAX_PARAMS_BYTES}",
                    std::mem::size_of::<P>()
                ),
            });
        }
        for r in retained {
            self.check_device(r.arg, &r.alloc)?;
        }
        match (self.backend(), self.device().backend()) {
            (StreamBackend::Emulated(s), Backend::Emulated(dev)) => {
                let entry = kernel.emu.ok_or(DeviceError::KernelUnavailable {
                    kernel: name,
                    reason: "this kernel has no emulated entry point",
                })?;
                let launch = StagEmuLaunch {
                    grid: cfg.grid,
                    block: cfg.block,
                    dynamic_smem_bytes: cfg.dynamic_smem_bytes,
                    shuffle_seed: dev.options.shuffle_seed,
                    workers: dev.options.workers,
                    reserved: 0,
                };
                let keep: Vec<Arc<Allocation>> =
                    retained.iter().map(|r| Arc::clone(&r.alloc)).collect();
                let params = SendParams(params);
                s.enqueue_node(
                    NodeKind::Kernel,
                    Arc::new(move || {
                        let _keep = &keep;
                        // SAFETY: the entry point has the exported signature for `P`; both
                        // pointers are valid for the call; the caller of `launch` guaranteed the
                        // addresses inside `params`, and `_keep` holds their allocations.
                        let code = unsafe { (entry.launch)(&launch, params.get()) };
                        if code == 0 {
                            return Ok(());
                        }
                        // SAFETY: called on the thread that ran the launch, as the emulator's
                        // thread-local error requires.
                        let message = unsafe { c_message((entry.last_error)()) };
                        Err(DeviceError::EmulatedKernel {
                            kernel: name,
                            code,
                            message,
                        })
                    }),
                )
            }
            (StreamBackend::Cuda(s), Backend::Cuda(dev)) => {
                let image = kernel.module.ok_or(DeviceError::KernelUnavailable {
                    kernel: name,
                    reason: "this build has no CUDA kernels; rebuild with --features cuda",
                })?;
                let function = dev.function(name, image)?;
                dev.retain_if_capturing(retained.iter().map(|r| &r.alloc));
                // SAFETY: geometry validated above; the params contract is the caller's.
                unsafe {
                    s.launch(
                        name,
                        &function,
                        cfg.grid,
                        cfg.block,
                        cfg.dynamic_smem_bytes,
                        params,
                    )
                }
            }
            _ => Err(DeviceError::DeviceMismatch {
                arg: "stream",
                expected: "a stream of its own device".into(),
                found: self.device().describe(),
            }),
        }
    }
}

/// Copies a C string owned by the emulator.
///
/// # Safety
/// `p` must be null or point to a NUL-terminated string that stays valid during the call.
unsafe fn c_message(p: *const c_char) -> String {
    if p.is_null() {
        return "no message".to_string();
    }
    // SAFETY: guaranteed by the caller.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Declares a kernel static: its emulator entry point `stag_emu_launch_<name>` (every build) and,
/// with feature `cuda`, its CUDA module image, the `&[u8]` static `crate::kernels::<MODULE>` of
/// the build script's `kernels.rs`.
///
/// ```ignore
/// stag_kernel!(static RMSNORM_BF16: RmsNormParams = rmsnorm_bf16 in RMSNORM);
/// ```
#[allow(unused_macros)]
macro_rules! stag_kernel {
    ($vis:vis static $static_name:ident : $params:ty = $kernel:ident in $module:ident) => {
        $vis static $static_name: $crate::device::kernel::Kernel<$params> =
            $crate::device::kernel::Kernel::new(
                stringify!($kernel),
                {
                    #[cfg(feature = "cuda")]
                    {
                        Some(&$crate::device::kernel::ModuleImage {
                            name: stringify!($module),
                            image: $crate::kernels::$module,
                        })
                    }
                    #[cfg(not(feature = "cuda"))]
                    {
                        None
                    }
                },
                {
                    extern "C" {
                        #[link_name = concat!("stag_emu_launch_", stringify!($kernel))]
                        fn launch(
                            cfg: *const $crate::device::kernel::StagEmuLaunch,
                            params: *const $params,
                        ) -> ::std::ffi::c_int;
                    }
                    Some($crate::device::kernel::EmuEntry {
                        launch,
                        last_error: $crate::device::kernel::stag_emu_last_error,
                    })
                },
            );
    };
}

#[allow(unused_imports)]
pub(crate) use stag_kernel;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{Device, DeviceBuffer};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Params of the test kernels below.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct FillParams {
        out: *mut u32,
        n: u32,
        value: u32,
    }

    // SAFETY: a `repr(C)` struct of a pointer and integers.
    unsafe impl DeviceRepr for FillParams {}

    /// A host "kernel" in the emulator's ABI: thread (b, t) writes element b * block + t.
    unsafe extern "C" fn fill_launch(cfg: *const StagEmuLaunch, p: *const FillParams) -> c_int {
        // SAFETY: the launcher passes valid pointers.
        let (cfg, p) = unsafe { (&*cfg, &*p) };
        for b in 0..cfg.grid[0] {
            for t in 0..cfg.block[0] {
                let i = b * cfg.block[0] + t;
                if i < p.n {
                    // SAFETY: `out` holds `n` elements (test contract).
                    unsafe { p.out.add(i as usize).write(p.value + i) };
                }
            }
        }
        0
    }

    static LAST_SEED: AtomicU32 = AtomicU32::new(0);

    unsafe extern "C" fn seed_probe(cfg: *const StagEmuLaunch, _p: *const FillParams) -> c_int {
        // SAFETY: the launcher passes a valid pointer.
        LAST_SEED.store(unsafe { (*cfg).shuffle_seed }, Ordering::SeqCst);
        0
    }

    unsafe extern "C" fn failing_launch(
        _cfg: *const StagEmuLaunch,
        _p: *const FillParams,
    ) -> c_int {
        3
    }

    unsafe extern "C" fn test_last_error() -> *const c_char {
        c"test_fail: barrier deadlock in block (0,0,0)".as_ptr()
    }

    static FILL: Kernel<FillParams> = Kernel::new(
        "test_fill",
        None,
        Some(EmuEntry {
            launch: fill_launch,
            last_error: test_last_error,
        }),
    );
    static FAIL: Kernel<FillParams> = Kernel::new(
        "test_fail",
        None,
        Some(EmuEntry {
            launch: failing_launch,
            last_error: test_last_error,
        }),
    );
    static SEED: Kernel<FillParams> = Kernel::new(
        "test_seed",
        None,
        Some(EmuEntry {
            launch: seed_probe,
            last_error: test_last_error,
        }),
    );
    static CUDA_ONLY: Kernel<FillParams> = Kernel::new("test_cuda_only", None, None);

    fn fill(stream: &Stream, out: &mut DeviceBuffer<u32>, cfg: LaunchConfig) -> Result<()> {
        let mut v = out.view_mut();
        let params = FillParams {
            out: v.as_mut_ptr().cast(),
            n: v.len() as u32,
            value: 100,
        };
        let keep = [v.retain("out")];
        // SAFETY: `out` holds `n` elements, the kernel writes indices below `n` only.
        unsafe { stream.launch(&FILL, cfg, params, &keep) }
    }

    #[test]
    fn emulated_launch_runs_and_keeps_buffers_alive() {
        let d = Device::emulated();
        let s = d.new_stream().unwrap();
        let mut out = DeviceBuffer::<u32>::alloc(&d, 10).unwrap();
        fill(&s, &mut out, LaunchConfig::linear(3, 4, 0)).unwrap();
        let expect: Vec<u32> = (100..110).collect();
        assert_eq!(out.to_host(&s).unwrap(), expect);

        // Drop the buffer right after queueing: the queued work holds the allocation.
        let mut tmp = DeviceBuffer::<u32>::alloc(&d, 1 << 16).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        s.host_fn(move || {
            rx.recv().ok();
        })
        .unwrap();
        fill(&s, &mut tmp, LaunchConfig::linear(64, 1024, 0)).unwrap();
        drop(tmp);
        tx.send(()).unwrap();
        s.synchronize().unwrap();
    }

    #[test]
    fn emulated_launch_passes_options() {
        let d = Device::emulated_with(crate::device::EmuOptions {
            shuffle_seed: 1234,
            workers: 1,
        });
        let s = d.new_stream().unwrap();
        let params = FillParams {
            out: std::ptr::null_mut(),
            n: 0,
            value: 0,
        };
        // SAFETY: the probe kernel touches no memory.
        unsafe { s.launch(&SEED, LaunchConfig::linear(1, 1, 0), params, &[]) }.unwrap();
        s.synchronize().unwrap();
        assert_eq!(LAST_SEED.load(Ordering::SeqCst), 1234);
    }

    #[test]
    fn emulated_kernel_failure_is_sticky_and_named() {
        let d = Device::emulated();
        let s = d.new_stream().unwrap();
        let params = FillParams {
            out: std::ptr::null_mut(),
            n: 0,
            value: 0,
        };
        // SAFETY: the failing kernel touches no memory.
        unsafe { s.launch(&FAIL, LaunchConfig::linear(1, 32, 0), params, &[]) }.unwrap();
        let e = s.synchronize().unwrap_err();
        match &e {
            DeviceError::EmulatedKernel {
                kernel,
                code,
                message,
            } => {
                assert_eq!(*kernel, "test_fail");
                assert_eq!(*code, 3);
                assert!(message.contains("barrier deadlock"), "{message}");
            }
            other => panic!("unexpected error {other}"),
        }
        // Sticky: the next sync and later launches fail too.
        assert!(s.synchronize().is_err());
        let mut out = DeviceBuffer::<u32>::alloc(&d, 4).unwrap();
        assert!(fill(&s, &mut out, LaunchConfig::linear(1, 4, 0)).is_err());
        assert!(out.to_host(&s).is_err());
    }

    #[test]
    fn invalid_geometry_is_rejected_before_launch() {
        let d = Device::emulated();
        let s = d.new_stream().unwrap();
        let mut out = DeviceBuffer::<u32>::alloc(&d, 4).unwrap();
        let cases = [
            LaunchConfig::linear(0, 32, 0),
            LaunchConfig::linear(1, 0, 0),
            LaunchConfig::linear(1, 1025, 0),
            LaunchConfig {
                grid: [1, 1, 1],
                block: [32, 32, 2],
                dynamic_smem_bytes: 0,
            },
            LaunchConfig {
                grid: [1, 70_000, 1],
                block: [32, 1, 1],
                dynamic_smem_bytes: 0,
            },
            LaunchConfig {
                grid: [1, 1, 1],
                block: [1, 1, 65],
                dynamic_smem_bytes: 0,
            },
            LaunchConfig::linear(1, 32, 228 * 1024),
        ];
        for cfg in cases {
            let e = fill(&s, &mut out, cfg).unwrap_err();
            assert!(
                matches!(
                    e,
                    DeviceError::InvalidLaunch {
                        kernel: "test_fill",
                        ..
                    }
                ),
                "{cfg:?}: {e}"
            );
        }
        // Valid extremes pass.
        fill(&s, &mut out, LaunchConfig::linear(1, 1024, 227 * 1024)).unwrap();
        s.synchronize().unwrap();
    }

    #[test]
    fn kernel_missing_for_backend_is_a_typed_error() {
        let d = Device::emulated();
        let s = d.new_stream().unwrap();
        let params = FillParams {
            out: std::ptr::null_mut(),
            n: 0,
            value: 0,
        };
        // SAFETY: rejected before anything runs.
        let e = unsafe { s.launch(&CUDA_ONLY, LaunchConfig::linear(1, 1, 0), params, &[]) }
            .unwrap_err();
        assert!(
            e.to_string().contains("no emulated entry point"),
            "unexpected message: {e}"
        );
    }

    #[test]
    fn retained_buffers_must_be_on_the_stream_device() {
        let d = Device::emulated();
        let other = Device::emulated();
        let s = d.new_stream().unwrap();
        let mut out = DeviceBuffer::<u32>::alloc(&other, 4).unwrap();
        let e = fill(&s, &mut out, LaunchConfig::linear(1, 4, 0)).unwrap_err();
        assert!(
            matches!(e, DeviceError::DeviceMismatch { arg: "out", .. }),
            "{e}"
        );
    }
}
