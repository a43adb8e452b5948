//! `stagformer-kernels`: handwritten CUDA kernels for StagFormer decoding behind a safe API.
//!
//! The same `cuda/*.cu` sources run on an NVIDIA GPU (feature `cuda`: PTX/fatbins built by nvcc,
//! launched through cudarc) and on the CPU by host emulation (the default build: the sources
//! compiled as C++ against `cuda/emu/`), so every kernel is tested on machines without a GPU.
//!
//! - [`device`]: [`Device`] (CUDA or emulated), streams, events, typed buffers.
//! - [`ops`]: the kernel wrappers ([`ops::rmsnorm`], [`ops::gemm`]).
//! - [`ffi`]: the kernels' params structs, generated from `cuda/include/stag_params.h`.

#![warn(missing_docs)]

pub mod device;
pub mod dtype;
pub mod error;
pub mod ffi;
pub mod ops;

/// The kernel images embedded by the build script (feature `cuda`).
#[cfg(feature = "cuda")]
#[allow(dead_code)]
pub(crate) mod kernels {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

pub use device::{Device, DeviceBuffer, Event, Stream};
pub use error::{DeviceError, Result};
