//! Safe wrappers over the kernels: each validates shapes, lengths and devices, then launches.

pub mod attention_decode;
pub mod attention_prefill;
pub mod axpby;
pub mod embedding;
pub mod gemm;
pub mod gemv;
pub mod memory_kv_append;
pub mod rmsnorm;
pub mod rope_append;
pub mod sample;
pub mod swiglu;
