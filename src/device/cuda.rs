//! The CUDA backend, on top of cudarc's driver and cuBLAS bindings.
//!
//! It is compiled into every build: cudarc loads libcuda (and libcublas) at run time, so only
//! the kernel images depend on the `cuda` feature. Streams are explicit and cudarc's implicit
//! per-allocation event tracking is switched off: cross-stream ordering is the caller's, via
//! [`Event`](crate::device::Event)s, exactly as in the emulated backend.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex, PoisonError};

use cudarc::cublas::{result as blas_result, sys as blas_sys};
use cudarc::driver::{result, sys, CudaContext, CudaEvent, CudaGraph, CudaStream};

use super::buffer::Allocation;
use super::kernel::ModuleImage;
use crate::error::{DeviceError, Result};

/// Bytes of cuBLAS workspace per stream (the size NVIDIA recommends for Hopper). Setting it
/// explicitly keeps cuBLAS from allocating during a call, so calls can be graph-captured.
const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// First bytes of a fatbin (`0xBA55ED50`, little-endian).
const FATBIN_MAGIC: [u8; 4] = [0x50, 0xED, 0x55, 0xBA];

fn panic_reason(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("the CUDA bindings panicked: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("the CUDA bindings panicked: {s}")
    } else {
        "the CUDA bindings panicked".to_string()
    }
}

/// A CUDA device: its primary context and the kernels loaded into it.
pub(crate) struct CudaDevice {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) name: String,
    pub(crate) max_dynamic_smem: u32,
    pub(crate) sm_count: u32,
    modules: Mutex<HashMap<&'static str, Arc<LoadedModule>>>,
    functions: Mutex<HashMap<&'static str, Arc<LoadedFunction>>>,
    /// While a capture is in progress: every allocation work queued on this device touches,
    /// handed to the graph so that its memory outlives every replay.
    captured: Mutex<Option<Vec<Arc<Allocation>>>>,
}

impl CudaDevice {
    /// Opens device `ordinal`. Never panics: a missing driver is [`DeviceError::NoDriver`],
    /// anything else (no device, bad ordinal, a driver too old for the bindings) is
    /// [`DeviceError::CudaInit`].
    pub(crate) fn open(ordinal: usize) -> Result<Self> {
        // SAFETY: only tries to dlopen the driver library by its usual names.
        if !unsafe { sys::is_culib_present() } {
            return Err(DeviceError::NoDriver);
        }
        let init = |reason: String| DeviceError::CudaInit { ordinal, reason };
        let opened = std::panic::catch_unwind(|| -> Result<CudaDevice> {
            let ctx = CudaContext::new(ordinal).map_err(|e| init(e.to_string()))?;
            // SAFETY: this crate never creates `CudaSlice`s; all ordering between streams is
            // explicit (events), so cudarc's implicit tracking must stay off.
            unsafe { ctx.disable_event_tracking() };
            let name = ctx.name().map_err(|e| init(e.to_string()))?;
            let max_smem = ctx
                .attribute(
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                )
                .map_err(|e| init(e.to_string()))?;
            let sms = ctx
                .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(|e| init(e.to_string()))?;
            Ok(CudaDevice {
                ctx,
                name,
                max_dynamic_smem: u32::try_from(max_smem).unwrap_or(0),
                sm_count: u32::try_from(sms).unwrap_or(1).max(1),
                modules: Mutex::new(HashMap::new()),
                functions: Mutex::new(HashMap::new()),
                captured: Mutex::new(None),
            })
        });
        match opened {
            Ok(r) => r,
            Err(payload) => Err(init(panic_reason(payload))),
        }
    }

    /// Starts collecting the allocations of captured work. One capture at a time per device.
    pub(crate) fn begin_capture(&self) -> Result<()> {
        let mut captured = self.captured.lock().unwrap_or_else(PoisonError::into_inner);
        if captured.is_some() {
            return Err(DeviceError::Capture {
                reason: "another capture is in progress on this device".into(),
            });
        }
        *captured = Some(Vec::new());
        Ok(())
    }

    /// Stops collecting; returns what the capture touched.
    pub(crate) fn end_capture(&self) -> Vec<Arc<Allocation>> {
        self.captured
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_default()
    }

    pub(crate) fn capture_in_progress(&self) -> bool {
        self.captured
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Keeps `allocs` alive as long as the graph being captured, if any. Work queued on other
    /// streams during a capture is kept too: harmless, it only delays a free.
    pub(crate) fn retain_if_capturing<'a>(
        &self,
        allocs: impl IntoIterator<Item = &'a Arc<Allocation>>,
    ) {
        let mut captured = self.captured.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = captured.as_mut() {
            list.extend(allocs.into_iter().map(Arc::clone));
        }
    }

    pub(crate) fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(DeviceError::driver("cuCtxSetCurrent"))
    }

    pub(crate) fn synchronize(&self) -> Result<()> {
        self.ctx
            .synchronize()
            .map_err(DeviceError::driver("cuCtxSynchronize"))
    }

    pub(crate) fn alloc(&self, bytes: usize) -> Result<CudaMem> {
        if bytes == 0 {
            return Ok(CudaMem {
                ptr: 0,
                ctx: Arc::clone(&self.ctx),
            });
        }
        self.bind()?;
        // SAFETY: the context is current; the memory is uninitialised, which `DeviceBuffer`
        // tolerates (its element types are plain old data).
        let ptr =
            unsafe { result::malloc_sync(bytes) }.map_err(DeviceError::driver("cuMemAlloc"))?;
        Ok(CudaMem {
            ptr,
            ctx: Arc::clone(&self.ctx),
        })
    }

    pub(crate) fn new_stream(&self) -> Result<CudaStreamState> {
        let stream = self
            .ctx
            .new_stream()
            .map_err(DeviceError::driver("cuStreamCreate"))?;
        Ok(CudaStreamState {
            blas: Mutex::new(None),
            stream,
        })
    }

    /// Wraps `handle`, a stream of this device's context owned by someone else: dropping the
    /// wrapper leaves the stream alone.
    ///
    /// # Safety
    ///
    /// `handle` is a live `CUstream` of this device's (primary) context and stays alive while
    /// the wrapper or any clone of it is used.
    pub(crate) unsafe fn borrow_stream(&self, handle: sys::CUstream) -> CudaStreamState {
        // SAFETY: the caller's contract is cudarc's for `wrap_borrowed_stream`.
        let stream = unsafe { self.ctx.wrap_borrowed_stream(handle) };
        CudaStreamState {
            blas: Mutex::new(None),
            stream,
        }
    }

    /// The loaded function for `name` from `image`, loading the module on first use.
    pub(crate) fn function(
        &self,
        name: &'static str,
        image: &'static ModuleImage,
    ) -> Result<Arc<LoadedFunction>> {
        let mut functions = self
            .functions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = functions.get(name) {
            return Ok(Arc::clone(f));
        }
        let module = self.module(image)?;
        let c_name = CString::new(name).map_err(|_| DeviceError::KernelUnavailable {
            kernel: name,
            reason: "kernel name contains a NUL byte",
        })?;
        self.bind()?;
        // SAFETY: `module.raw` is a loaded, not yet unloaded module of this (current) context.
        let raw = unsafe { result::module::get_function(module.raw, c_name) }
            .map_err(DeviceError::driver("cuModuleGetFunction"))?;
        let f = Arc::new(LoadedFunction {
            raw,
            smem_limit: Mutex::new(48 * 1024),
            _module: module,
        });
        functions.insert(name, Arc::clone(&f));
        Ok(f)
    }

    fn module(&self, image: &'static ModuleImage) -> Result<Arc<LoadedModule>> {
        let mut modules = self.modules.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = modules.get(image.name) {
            return Ok(Arc::clone(m));
        }
        let data = image.image;
        // Binary images (fatbin, cubin) are passed as they are; PTX text needs a trailing NUL.
        let is_binary = data.starts_with(&FATBIN_MAGIC) || data.starts_with(b"\x7fELF");
        let text;
        let ptr: *const c_void = if is_binary {
            if data.as_ptr() as usize % 8 != 0 {
                return Err(DeviceError::KernelUnavailable {
                    kernel: image.name,
                    reason: "binary module image is not 8-byte aligned",
                });
            }
            data.as_ptr().cast()
        } else {
            let body = data.strip_suffix(b"\0").unwrap_or(data);
            text = CString::new(body).map_err(|_| DeviceError::KernelUnavailable {
                kernel: image.name,
                reason: "PTX module image contains an interior NUL byte",
            })?;
            text.as_ptr().cast()
        };
        self.bind()?;
        // SAFETY: `ptr` points to a complete fatbin/cubin (aligned, checked above) or a
        // NUL-terminated PTX text, valid for the call (the driver copies what it keeps); the
        // context is current.
        let raw = unsafe { result::module::load_data(ptr) }
            .map_err(DeviceError::driver("cuModuleLoadData"))?;
        let m = Arc::new(LoadedModule {
            raw,
            ctx: Arc::clone(&self.ctx),
        });
        modules.insert(image.name, Arc::clone(&m));
        Ok(m)
    }
}

/// Device memory from `cuMemAlloc`.
pub(crate) struct CudaMem {
    pub(crate) ptr: sys::CUdeviceptr,
    ctx: Arc<CudaContext>,
}

impl Drop for CudaMem {
    fn drop(&mut self) {
        if self.ptr == 0 {
            return;
        }
        // Work queued on any stream may still use this memory: wait for the device first
        // (what cudaFree does implicitly). Errors cannot be returned from drop; cudarc keeps
        // them in the context's error state.
        self.ctx.record_err(self.ctx.bind_to_thread());
        self.ctx.record_err(self.ctx.synchronize());
        // SAFETY: `ptr` came from `malloc_sync` in this context, is freed only here, and no
        // queued work can still use it after the synchronisation above.
        self.ctx.record_err(unsafe { result::free_sync(self.ptr) });
    }
}

struct LoadedModule {
    raw: sys::CUmodule,
    ctx: Arc<CudaContext>,
}

// SAFETY: a CUmodule handle may be used from any thread that has its context current; every
// use binds the context first.
unsafe impl Send for LoadedModule {}
// SAFETY: see `Send`; the handle is never mutated after loading.
unsafe impl Sync for LoadedModule {}

impl Drop for LoadedModule {
    fn drop(&mut self) {
        self.ctx.record_err(self.ctx.bind_to_thread());
        // SAFETY: loaded by `load_data`, unloaded only here, after every function from it
        // (each holds an `Arc` to this module) is gone.
        self.ctx
            .record_err(unsafe { result::module::unload(self.raw) });
    }
}

/// A kernel function of a loaded module.
pub(crate) struct LoadedFunction {
    raw: sys::CUfunction,
    /// Largest dynamic shared memory this function is currently allowed to use.
    smem_limit: Mutex<u32>,
    _module: Arc<LoadedModule>,
}

// SAFETY: a CUfunction handle may be used from any thread with its context current; the one
// mutable attribute is guarded by `smem_limit`'s mutex.
unsafe impl Send for LoadedFunction {}
// SAFETY: see `Send`.
unsafe impl Sync for LoadedFunction {}

impl LoadedFunction {
    fn ensure_smem(&self, bytes: u32) -> Result<()> {
        let mut limit = self
            .smem_limit
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if bytes <= *limit {
            return Ok(());
        }
        let value = i32::try_from(bytes).map_err(|_| DeviceError::InvalidLaunch {
            kernel: "?",
            reason: format!("{bytes} bytes of dynamic shared memory"),
        })?;
        // SAFETY: `raw` is a live function of a loaded module; the caller bound the context.
        unsafe {
            result::function::set_function_attribute(
                self.raw,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                value,
            )
        }
        .map_err(DeviceError::driver("cuFuncSetAttribute"))?;
        *limit = bytes;
        Ok(())
    }
}

/// A CUDA stream and its lazily created cuBLAS handle.
pub(crate) struct CudaStreamState {
    // Declared first: the cuBLAS handle is destroyed before the stream it is bound to.
    blas: Mutex<Option<Blas>>,
    pub(crate) stream: Arc<CudaStream>,
}

impl CudaStreamState {
    pub(crate) fn raw(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    pub(crate) fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(DeviceError::driver("cuStreamSynchronize"))
    }

    pub(crate) fn record(&self) -> Result<CudaEvent> {
        self.stream
            .record_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
            .map_err(DeviceError::driver("cuEventRecord"))
    }

    /// Records an event with timing enabled, for `cuEventElapsedTime`.
    pub(crate) fn record_timed(&self) -> Result<CudaEvent> {
        self.stream
            .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(DeviceError::driver("cuEventRecord"))
    }

    /// Whether the stream is under capture.
    pub(crate) fn is_capturing(&self) -> Result<bool> {
        let status = self
            .stream
            .capture_status()
            .map_err(DeviceError::driver("cuStreamIsCapturing"))?;
        Ok(status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    }

    /// Starts capturing in relaxed mode: lazily created cuBLAS handles and module loads stay
    /// legal during a capture.
    pub(crate) fn begin_capture(&self) -> Result<()> {
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(DeviceError::driver("cuStreamBeginCapture"))
    }

    /// Ends the capture and instantiates the graph.
    pub(crate) fn end_capture(&self) -> Result<CudaGraph> {
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(DeviceError::driver("cuStreamEndCapture"))?
            .ok_or_else(|| DeviceError::Capture {
                reason: "the driver returned no graph".into(),
            })?;
        graph
            .upload()
            .map_err(DeviceError::driver("cuGraphUpload"))?;
        Ok(graph)
    }

    pub(crate) fn wait(&self, event: &CudaEvent) -> Result<()> {
        self.stream
            .wait(event)
            .map_err(DeviceError::driver("cuStreamWaitEvent"))
    }

    /// Copies `src` into device memory at `dst`.
    ///
    /// # Safety
    /// `dst..dst + src.len()` must lie in a live allocation of this stream's context.
    pub(crate) unsafe fn memcpy_htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.stream
            .context()
            .bind_to_thread()
            .map_err(DeviceError::driver("cuCtxSetCurrent"))?;
        // SAFETY: the caller guarantees the destination range. `src` is pageable memory, so
        // the driver stages it before returning and the caller may reuse it right away.
        unsafe { result::memcpy_htod_async(dst, src, self.raw()) }
            .map_err(DeviceError::driver("cuMemcpyHtoDAsync"))
    }

    /// Copies device memory at `src` into `dst`, then waits for the stream.
    ///
    /// # Safety
    /// `src..src + dst.len()` must lie in a live allocation of this stream's context.
    pub(crate) unsafe fn memcpy_dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        if dst.is_empty() {
            return self.synchronize();
        }
        self.stream
            .context()
            .bind_to_thread()
            .map_err(DeviceError::driver("cuCtxSetCurrent"))?;
        // SAFETY: the caller guarantees the source range; `dst` stays borrowed until the
        // stream synchronisation below has completed the copy.
        unsafe { result::memcpy_dtoh_async(dst, src, self.raw()) }
            .map_err(DeviceError::driver("cuMemcpyDtoHAsync"))?;
        self.synchronize()
    }

    /// # Safety
    /// Both ranges must lie in live allocations of this stream's context.
    pub(crate) unsafe fn memcpy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.stream
            .context()
            .bind_to_thread()
            .map_err(DeviceError::driver("cuCtxSetCurrent"))?;
        // SAFETY: guaranteed by the caller.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.raw()) }
            .map_err(DeviceError::driver("cuMemcpyDtoDAsync"))
    }

    /// # Safety
    /// The range must lie in a live allocation of this stream's context.
    pub(crate) unsafe fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.stream
            .context()
            .bind_to_thread()
            .map_err(DeviceError::driver("cuCtxSetCurrent"))?;
        // SAFETY: guaranteed by the caller.
        unsafe { result::memset_d8_async(dst, 0, bytes, self.raw()) }
            .map_err(DeviceError::driver("cuMemsetD8Async"))
    }

    /// Queues a host function (`cuLaunchHostFunc`).
    pub(crate) fn host_fn(&self, f: Box<dyn FnOnce() + Send + 'static>) -> Result<()> {
        unsafe extern "C" fn trampoline(data: *mut c_void) {
            // SAFETY: `data` is the `Box<Box<dyn FnOnce>>` leaked below; the driver calls this
            // exactly once.
            let f = unsafe { Box::from_raw(data.cast::<Box<dyn FnOnce() + Send + 'static>>()) };
            // A panic must not unwind into the driver.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        }
        self.stream
            .context()
            .bind_to_thread()
            .map_err(DeviceError::driver("cuCtxSetCurrent"))?;
        let data = Box::into_raw(Box::new(f)).cast::<c_void>();
        // SAFETY: `trampoline` matches the callback signature and takes ownership of `data`.
        let r = unsafe { result::stream::launch_host_function(self.raw(), trampoline, data) };
        if let Err(e) = r {
            // SAFETY: the launch failed, so the driver will never call `trampoline`; reclaim it.
            drop(unsafe { Box::from_raw(data.cast::<Box<dyn FnOnce() + Send + 'static>>()) });
            return Err(DeviceError::driver("cuLaunchHostFunc")(e));
        }
        Ok(())
    }

    /// Launches `function` with `params` as its single by-value argument.
    ///
    /// # Safety
    /// `params` must be what the kernel expects, every address in it must point into live
    /// allocations of this context with the extents the kernel touches, and the geometry must
    /// have been validated.
    pub(crate) unsafe fn launch<P: Copy>(
        &self,
        kernel: &'static str,
        function: &LoadedFunction,
        grid: [u32; 3],
        block: [u32; 3],
        smem: u32,
        params: P,
    ) -> Result<()> {
        self.stream
            .context()
            .bind_to_thread()
            .map_err(DeviceError::driver("cuCtxSetCurrent"))?;
        function.ensure_smem(smem).map_err(|e| match e {
            DeviceError::InvalidLaunch { reason, .. } => {
                DeviceError::InvalidLaunch { kernel, reason }
            }
            other => other,
        })?;
        let mut params = params;
        let mut args = [(&mut params as *mut P).cast::<c_void>()];
        // SAFETY: guaranteed by the caller; `cuLaunchKernel` copies the argument before
        // returning, so pointing at a local is fine.
        unsafe {
            result::launch_kernel(
                function.raw,
                (grid[0], grid[1], grid[2]),
                (block[0], block[1], block[2]),
                smem,
                self.raw(),
                &mut args,
            )
        }
        .map_err(DeviceError::driver("cuLaunchKernel"))
    }

    /// Runs `f` with this stream's cuBLAS handle, creating it on first use.
    pub(crate) fn with_blas<R>(
        &self,
        device: &CudaDevice,
        f: impl FnOnce(blas_sys::cublasHandle_t) -> Result<R>,
    ) -> Result<R> {
        let mut guard = self.blas.lock().unwrap_or_else(PoisonError::into_inner);
        device.bind()?;
        if guard.is_none() {
            *guard = Some(Blas::new(device, self)?);
        }
        match guard.as_ref() {
            Some(blas) => f(blas.handle),
            None => Err(DeviceError::NoCublas {
                reason: "handle creation failed".into(),
            }),
        }
    }
}

/// A cuBLAS handle bound to one stream, with its own workspace.
struct Blas {
    handle: blas_sys::cublasHandle_t,
    // Dropped after the handle (declared later).
    _workspace: CudaMem,
}

// SAFETY: the handle is only used while holding the owning stream's `blas` mutex.
unsafe impl Send for Blas {}

impl Blas {
    fn new(device: &CudaDevice, stream: &CudaStreamState) -> Result<Self> {
        // SAFETY: only tries to dlopen libcublas.
        if !unsafe { blas_sys::is_culib_present() } {
            return Err(DeviceError::NoCublas {
                reason: "libcublas could not be loaded".into(),
            });
        }
        let workspace = device.alloc(CUBLAS_WORKSPACE_BYTES)?;
        let handle = std::panic::catch_unwind(blas_result::create_handle)
            .map_err(|p| DeviceError::NoCublas {
                reason: panic_reason(p),
            })?
            .map_err(DeviceError::cublas("cublasCreate"))?;
        let blas = Blas {
            handle,
            _workspace: workspace,
        };
        // SAFETY: `handle` is live; the stream belongs to the current context.
        unsafe { blas_result::set_stream(handle, stream.raw() as blas_sys::cudaStream_t) }
            .map_err(DeviceError::cublas("cublasSetStream"))?;
        // SAFETY: the workspace is a live allocation of `CUBLAS_WORKSPACE_BYTES` that outlives
        // the handle (it is dropped after it).
        unsafe {
            blas_sys::cublasSetWorkspace_v2(
                handle,
                blas._workspace.ptr as *mut c_void,
                CUBLAS_WORKSPACE_BYTES,
            )
        }
        .result()
        .map_err(DeviceError::cublas("cublasSetWorkspace"))?;
        // The GEMMs' contract is f32 accumulation with the output rounded once: cuBLAS may
        // otherwise reduce split-K partials in the output type (bf16), which would differ from
        // the emulator on a GPU only.
        // SAFETY: `handle` is live; the mode is a valid `cublasMath_t` value.
        unsafe {
            blas_sys::cublasSetMathMode(
                handle,
                blas_sys::cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION,
            )
        }
        .result()
        .map_err(DeviceError::cublas("cublasSetMathMode"))?;
        Ok(blas)
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: created by `create_handle`, destroyed only here. A failure cannot be
        // reported from drop and leaves nothing to clean up.
        let _ = unsafe { blas_result::destroy_handle(self.handle) };
    }
}
