//! Per-section working buffers: one set per section so that sections running on different
//! streams never share a buffer within a step.

use stagformer_kernels::device::{Device, DeviceBuffer};
use stagformer_kernels::ops::attention_decode::AttentionWorkspace;
use stagformer_ref::Config;

use crate::error::Result;
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
    pub fn new(device: &Device, cfg: &Config, rows: usize, max_splits: usize) -> Result<Self> {
        let d = cfg.hidden_size;
        let qkv = cfg.q_dim() + 2 * cfg.kv_dim();
        let alloc = |n: usize| DeviceBuffer::<T>::alloc(device, rows * n);
        Ok(Scratch {
            x: [alloc(d)?, alloc(d)?],
            h: alloc(d)?,
            qkv: alloc(qkv)?,
            attn: alloc(cfg.q_dim())?,
            o: alloc(d)?,
            gate_up: alloc(2 * cfg.intermediate_size)?,
            act: alloc(cfg.intermediate_size)?,
            memory_kv: alloc(cfg.layers_per_section() * 2 * cfg.kv_dim())?,
            workspace: AttentionWorkspace::new(
                device,
                rows,
                cfg.num_attention_heads,
                cfg.head_dim,
                max_splits,
            )?,
        })
    }
}
