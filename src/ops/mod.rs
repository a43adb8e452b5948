//! Safe wrappers over the kernels: each validates shapes, lengths and devices, then launches.

pub mod gemm;
pub mod rmsnorm;
