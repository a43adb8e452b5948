//! Model weights on the device, in the layout the step wants: q|k|v and gate|up fused into one
//! GEMM each, and for every reading section the k|v projections of all its cross layers fused
//! into one GEMM against the memory (rows [k_0; v_0; k_1; v_1; ...]), whose output
//! `memory_kv_append` scatters into the cross caches. Norm gains stay f32.

use stagformer_kernels::device::{DeviceBuffer, Stream};
use stagformer_ref::ops::Matrix;
use stagformer_ref::Model;

use crate::error::Result;
use crate::Activation;

/// Self-attention + MLP weights of one stored layer.
pub struct LayerWeights<T: Activation> {
    pub input_norm: DeviceBuffer<f32>,
    /// [(H + 2·Hkv)·hd, D]
    pub wqkv: DeviceBuffer<T>,
    pub wo: DeviceBuffer<T>,
    pub post_attention_norm: DeviceBuffer<f32>,
    /// [2F, D]
    pub w_gate_up: DeviceBuffer<T>,
    pub w_down: DeviceBuffer<T>,
}

/// Cross-attention weights of one layer of a reading section (its k/v live in `memory_kv`).
pub struct CrossWeights<T: Activation> {
    pub norm: DeviceBuffer<f32>,
    pub wq: DeviceBuffer<T>,
    pub wo: DeviceBuffer<T>,
}

pub struct DeviceWeights<T: Activation> {
    pub embed: DeviceBuffer<T>,
    pub layers: Vec<LayerWeights<T>>,
    /// `cross[s - 1][j]`.
    pub cross: Vec<Vec<CrossWeights<T>>>,
    /// `memory_kv[s - 1]`: [Ls·2·Hkv·hd, D], the k|v projections of section s's cross layers.
    pub memory_kv: Vec<DeviceBuffer<T>>,
    pub memory_norms: Vec<DeviceBuffer<f32>>,
    pub final_norm: DeviceBuffer<f32>,
    /// `None` when tied to the embedding.
    pub lm_head: Option<DeviceBuffer<T>>,
    pub output_mix: Option<Vec<f32>>,
}

fn upload<T: Activation>(stream: &Stream, data: &[f32]) -> Result<DeviceBuffer<T>> {
    let converted: Vec<T> = data.iter().map(|&v| T::from_f32(v)).collect();
    Ok(DeviceBuffer::from_host(stream, &converted)?)
}

fn upload_f32(stream: &Stream, data: &[f32]) -> Result<DeviceBuffer<f32>> {
    Ok(DeviceBuffer::from_host(stream, data)?)
}

/// The rows of several `[out, in]` matrices stacked into one.
fn stack(parts: &[&Matrix]) -> Vec<f32> {
    parts.iter().flat_map(|m| m.data.iter().copied()).collect()
}

impl<T: Activation> DeviceWeights<T> {
    pub fn upload(stream: &Stream, model: &Model) -> Result<Self> {
        let w = &model.weights;
        let layers = w
            .layers
            .iter()
            .map(|l| {
                Ok(LayerWeights {
                    input_norm: upload_f32(stream, &l.input_norm)?,
                    wqkv: upload(stream, &stack(&[&l.wq, &l.wk, &l.wv]))?,
                    wo: upload(stream, &l.wo.data)?,
                    post_attention_norm: upload_f32(stream, &l.post_attention_norm)?,
                    w_gate_up: upload(stream, &stack(&[&l.w_gate, &l.w_up]))?,
                    w_down: upload(stream, &l.w_down.data)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut cross = Vec::new();
        let mut memory_kv = Vec::new();
        for section in &w.cross {
            cross.push(
                section
                    .iter()
                    .map(|c| {
                        Ok(CrossWeights {
                            norm: upload_f32(stream, &c.norm)?,
                            wq: upload(stream, &c.wq.data)?,
                            wo: upload(stream, &c.wo.data)?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
            );
            let kv: Vec<&Matrix> = section.iter().flat_map(|c| [&c.wk, &c.wv]).collect();
            memory_kv.push(upload(stream, &stack(&kv))?);
        }
        Ok(DeviceWeights {
            embed: upload(stream, &w.embed.data)?,
            layers,
            cross,
            memory_kv,
            memory_norms: w
                .memory_norms
                .iter()
                .map(|n| upload_f32(stream, n))
                .collect::<Result<Vec<_>>>()?,
            final_norm: upload_f32(stream, &w.final_norm)?,
            lm_head: w
                .lm_head
                .as_ref()
                .map(|m| upload(stream, &m.data))
                .transpose()?,
            output_mix: w.output_mix.clone(),
        })
    }

    pub fn lm_head(&self) -> &DeviceBuffer<T> {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}
