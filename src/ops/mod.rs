//! Safe wrappers over the kernels: each validates shapes, lengths and devices, then launches.

pub mod attention_decode;
pub mod attention_prefill;
pub mod axpby;
pub mod embedding;
pub mod gemm;
pub mod gemv;
pub mod kv_pages;
pub mod memory_kv_append;
pub mod rmsnorm;
pub mod rope_append;
pub mod sample;
pub mod swiglu;

/// The attention heads of a model: `heads` query heads and `kv_heads` key/value heads of
/// `head_dim` elements each. A q row holds the query heads one after another
/// ([`q_dim`](Self::q_dim) elements), a k or v row the kv heads ([`kv_dim`](Self::kv_dim)).
///
/// With grouped-query attention (`kv_heads` < `heads`) query head `h` reads kv head
/// `h / (heads / kv_heads)`. The type checks nothing itself; each op refuses the shapes it
/// cannot run, with [`DeviceError::InvalidArgument`](crate::DeviceError::InvalidArgument) or
/// [`DeviceError::SizeOverflow`](crate::DeviceError::SizeOverflow) naming the field: every op needs
/// `heads` and `kv_heads` ≥ 1 and row widths below 2³¹; the prefill attention also needs
/// `kv_heads` to divide `heads` and `head_dim` in 1 ..=
/// [`MAX_HEAD_DIM`](attention_prefill::MAX_HEAD_DIM); RoPE needs `head_dim` to match its
/// [`RopeTable`](rope_append::RopeTable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadShape {
    /// Query heads (≥ 1).
    pub heads: usize,
    /// Key/value heads (≥ 1; a divisor of `heads` wherever heads are grouped).
    pub kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
}

impl HeadShape {
    /// Width of a q row, `heads · head_dim` (saturating; the ops reject sizes that overflow).
    pub fn q_dim(&self) -> usize {
        self.heads.saturating_mul(self.head_dim)
    }

    /// Width of a k or v row, `kv_heads · head_dim` (saturating, as [`q_dim`](Self::q_dim)).
    pub fn kv_dim(&self) -> usize {
        self.kv_heads.saturating_mul(self.head_dim)
    }
}
