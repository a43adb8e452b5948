//! Per-section working buffers: one set per section so that sections running on different
//! streams never share a buffer within a step.

use stagformer_kernels::device::{Device, DeviceBuffer};
use stagformer_kernels::ops::attention_decode::AttentionWorkspace;
use stagformer_ref::Config;

use crate::error::Result;
use crate::plan::ScratchSizes;
use crate::Activation;

pub(crate) struct Scratch<T: Activation> {
    /// The residual stream, ping-ponged by `add_rmsnorm` (sum in, sum out).
    pub x: [DeviceBuffer<T>; 2],
    /// The normed input of the next sublayer.
    pub h: DeviceBuffer<T>,
    pub qkv: DeviceBuffer<T>,
    pub attn: DeviceBuffer<T>,
    pub o: DeviceBuffer<T>,
    pub gate_up: DeviceBuffer<T>,
    pub act: DeviceBuffer<T>,
    /// Projected memory k|v of every cross layer of the next section.
    pub memory_kv: DeviceBuffer<T>,
    pub workspace: AttentionWorkspace,
}

impl<T: Activation> Scratch<T> {
    /// Allocates the buffers `sizes` (from [`Sizes`](crate::plan::Sizes)) counts.
    pub fn new(device: &Device, cfg: &Config, sizes: &ScratchSizes) -> Result<Self> {
        let alloc = |n: usize| DeviceBuffer::<T>::alloc(device, n);
        Ok(Scratch {
            x: [alloc(sizes.hidden)?, alloc(sizes.hidden)?],
            h: alloc(sizes.hidden)?,
            qkv: alloc(sizes.qkv)?,
            attn: alloc(sizes.attn)?,
            o: alloc(sizes.hidden)?,
            gate_up: alloc(sizes.gate_up)?,
            act: alloc(sizes.act)?,
            memory_kv: alloc(sizes.memory_kv)?,
            workspace: AttentionWorkspace::new(
                device,
                sizes.rows,
                cfg.num_attention_heads,
                cfg.head_dim,
                sizes.max_splits,
            )?,
        })
    }
}
