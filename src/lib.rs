//! `stagformer-kernels`: handwritten CUDA kernels for StagFormer decoding behind a safe API.
//!
//! The same `cuda/*.cu` sources run on the CPU by host emulation (compiled as C++ against
//! `cuda/emu/`, in every build, so every kernel is tested on machines without a GPU) and, with
//! the feature `cuda`, on an NVIDIA GPU (PTX/fatbins built by nvcc, launched through cudarc).
//! The feature is additive: [`Device::emulated`] works in every build, [`Device::cuda`] needs the
//! feature, and [`build_info`] says what a build holds.
//!
//! - [`device`]: [`Device`] (CUDA or emulated), streams, events, typed buffers.
//! - [`ops`]: the kernel wrappers ([`ops::rmsnorm`], [`ops::gemm`]).
//! - [`ffi`]: the kernels' params structs, generated from `cuda/include/stag_params.h`.
//!
//! `examples/rmsnorm_own_buffers.rs` calls one kernel on buffers of its own and checks the result
//! against the CPU reference (`cargo run --example rmsnorm_own_buffers`).

#![warn(missing_docs)]

use std::fmt;

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

/// Whether this build holds the CUDA kernel images (feature `cuda`). Without them
/// [`Device::cuda`] returns [`DeviceError::CudaNotBuilt`]; the host emulator is in every build.
pub const CUDA_KERNELS: bool = cfg!(feature = "cuda");

/// What a build of this crate holds: see [`build_info`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BuildInfo {
    /// This crate's version.
    pub version: &'static str,
    /// Whether the host emulator is compiled in: always, so [`Device::emulated`] works in every
    /// build.
    pub emulator: bool,
    /// Whether the CUDA kernel images are compiled in ([`CUDA_KERNELS`]).
    pub cuda: bool,
    /// The GPU architectures in every CUDA image: first the one embedded as PTX (JIT-compiled by
    /// the driver on that GPU and newer ones), then those compiled to native code. Empty without
    /// the CUDA kernels.
    pub cuda_targets: &'static [&'static str],
    /// The version of the nvcc that compiled the CUDA images (`None` without them).
    pub nvcc_version: Option<&'static str>,
}

/// What this build holds: the host emulator (always) and, with feature `cuda`, the CUDA kernel
/// images with their GPU architectures. Its `Display` form is one line, e.g.
/// `stagformer-kernels 0.1.0: host emulator + CUDA kernels (compute_80 PTX, sm_90a; nvcc
/// 13.0.88)`.
///
/// ```
/// let info = stagformer_kernels::build_info();
/// assert!(info.emulator);
/// assert_eq!(info.cuda, !info.cuda_targets.is_empty());
/// println!("{info}");
/// ```
pub const fn build_info() -> BuildInfo {
    #[cfg(feature = "cuda")]
    let (cuda_targets, nvcc_version) = (kernels::TARGETS, Some(kernels::NVCC_VERSION));
    #[cfg(not(feature = "cuda"))]
    let (cuda_targets, nvcc_version): (&[&str], _) = (&[], None);
    BuildInfo {
        version: env!("CARGO_PKG_VERSION"),
        emulator: true,
        cuda: CUDA_KERNELS,
        cuda_targets,
        nvcc_version,
    }
}

impl fmt::Display for BuildInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stagformer-kernels {}: host emulator", self.version)?;
        if !self.cuda {
            return f.write_str(", no CUDA kernels (build with feature `cuda` for a GPU)");
        }
        f.write_str(" + CUDA kernels (")?;
        for (i, target) in self.cuda_targets.iter().enumerate() {
            match i {
                0 => write!(f, "{target} PTX")?,
                _ => write!(f, ", {target}")?,
            }
        }
        if let Some(nvcc) = self.nvcc_version {
            write!(f, "; nvcc {nvcc}")?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_matches_the_build() {
        let info = build_info();
        assert!(info.emulator);
        assert_eq!(info.cuda, cfg!(feature = "cuda"));
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        let line = info.to_string();
        if info.cuda {
            assert!(!info.cuda_targets.is_empty() && info.nvcc_version.is_some());
            assert!(
                line.contains(&format!("{} PTX", info.cuda_targets[0])),
                "{line}"
            );
        } else {
            assert!(info.cuda_targets.is_empty() && info.nvcc_version.is_none());
            assert!(line.contains("no CUDA kernels"), "{line}");
        }
    }
}
