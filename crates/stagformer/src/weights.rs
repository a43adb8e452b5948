//! Model weights on the device, in the layout the step wants: q|k|v and gate|up fused into one
//! GEMM each, and for every reading section the k|v projections of all its cross layers fused
//! into one GEMM against the memory (rows [k_0; v_0; k_1; v_1; ...]), whose output
//! `memory_kv_append` scatters into the cross caches. Norm gains stay f32.

use std::collections::HashMap;

use stagformer_kernels::device::{DeviceBuffer, Stream};
use stagformer_ref::weights::expected_tensors;
use stagformer_ref::{Element, TensorSource};

use crate::error::{DecoderError, Result};
use crate::Activation;

/// Self-attention + MLP weights of one stored layer.
pub(crate) struct LayerWeights<T: Activation> {
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
pub(crate) struct CrossWeights<T: Activation> {
    pub norm: DeviceBuffer<f32>,
    pub wq: DeviceBuffer<T>,
    pub wo: DeviceBuffer<T>,
}

/// Every weight of the model on the device, uploaded once by [`DeviceWeights::upload_from`].
pub(crate) struct DeviceWeights<T: Activation> {
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

/// Uploads tensors of a [`TensorSource`] converted straight to the device dtype: the host holds
/// one converted tensor at a time, never a whole f32 copy of the model.
struct Uploader<'a, S: TensorSource> {
    stream: &'a Stream,
    source: &'a S,
    /// Element counts of the config's tensors.
    lens: HashMap<String, usize>,
}

impl<'a, S: TensorSource> Uploader<'a, S> {
    fn new(stream: &'a Stream, source: &'a S) -> Result<Self> {
        let lens = expected_tensors(source.config())
            .into_iter()
            .map(|spec| {
                let len = spec
                    .shape
                    .iter()
                    .try_fold(1usize, |n, &d| n.checked_mul(d))
                    .ok_or_else(|| {
                        DecoderError::Unsupported(format!(
                            "tensor `{}`: shape {:?} is too large to address",
                            spec.name, spec.shape
                        ))
                    })?;
                Ok((spec.name, len))
            })
            .collect::<Result<_>>()?;
        Ok(Uploader {
            stream,
            source,
            lens,
        })
    }

    fn read<E: Element>(&self, name: &str) -> Result<Vec<E>> {
        let data = self
            .source
            .read::<E>(name)
            .map_err(stagformer_ref::Error::from)?;
        let expected = self.lens.get(name).copied().unwrap_or(0);
        if data.len() != expected {
            return Err(DecoderError::Unsupported(format!(
                "tensor `{name}`: the source gave {} values, its shape calls for {expected}",
                data.len()
            )));
        }
        Ok(data)
    }

    fn tensor<E: Activation>(&self, name: &str) -> Result<DeviceBuffer<E>> {
        Ok(DeviceBuffer::from_host(
            self.stream,
            &self.read::<E>(name)?,
        )?)
    }

    fn norm(&self, name: &str) -> Result<DeviceBuffer<f32>> {
        self.tensor::<f32>(name)
    }

    /// The rows of several `[out, in]` tensors stacked into one buffer, each uploaded into its
    /// sub-range as soon as it is converted.
    fn stacked<E: Activation>(&self, names: &[String]) -> Result<DeviceBuffer<E>> {
        let total = names
            .iter()
            .try_fold(0usize, |n, name| {
                n.checked_add(self.lens.get(name).copied().unwrap_or(0))
            })
            .ok_or_else(|| DecoderError::Unsupported("fused weight too large".into()))?;
        let mut buf = DeviceBuffer::<E>::alloc(self.stream.device(), total)?;
        let mut offset = 0;
        for name in names {
            let data = self.read::<E>(name)?;
            let end = offset + data.len();
            buf.slice_mut(offset..end)?
                .copy_from_host(self.stream, &data)?;
            offset = end;
        }
        Ok(buf)
    }
}

impl<T: Activation> DeviceWeights<T> {
    /// Uploads the tensors of `source` (a mapped checkpoint, a model, random weights) in `T`,
    /// converting each from its stored dtype once.
    pub(crate) fn upload_from(stream: &Stream, source: &impl TensorSource) -> Result<Self> {
        let cfg = source.config();
        let up = Uploader::new(stream, source)?;
        let layers = (0..cfg.stored_layers())
            .map(|l| {
                let p = format!("model.layers.{l}");
                let name = |n: &str| format!("{p}.{n}");
                Ok(LayerWeights {
                    input_norm: up.norm(&name("input_layernorm.weight"))?,
                    wqkv: up.stacked(&[
                        name("self_attn.q_proj.weight"),
                        name("self_attn.k_proj.weight"),
                        name("self_attn.v_proj.weight"),
                    ])?,
                    wo: up.tensor(&name("self_attn.o_proj.weight"))?,
                    post_attention_norm: up.norm(&name("post_attention_layernorm.weight"))?,
                    w_gate_up: up
                        .stacked(&[name("mlp.gate_proj.weight"), name("mlp.up_proj.weight")])?,
                    w_down: up.tensor(&name("mlp.down_proj.weight"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut cross = Vec::new();
        let mut memory_kv = Vec::new();
        for s in 1..cfg.sections() {
            let name = |j: usize, n: &str| format!("model.cross_layers.{s}.{j}.{n}");
            cross.push(
                (0..cfg.layers_per_section())
                    .map(|j| {
                        Ok(CrossWeights {
                            norm: up.norm(&name(j, "cross_attn_layernorm.weight"))?,
                            wq: up.tensor(&name(j, "cross_attn.q_proj.weight"))?,
                            wo: up.tensor(&name(j, "cross_attn.o_proj.weight"))?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
            );
            let kv: Vec<String> = (0..cfg.layers_per_section())
                .flat_map(|j| {
                    [
                        name(j, "cross_attn.k_proj.weight"),
                        name(j, "cross_attn.v_proj.weight"),
                    ]
                })
                .collect();
            memory_kv.push(up.stacked(&kv)?);
        }
        Ok(DeviceWeights {
            embed: up.tensor("model.embed_tokens.weight")?,
            layers,
            cross,
            memory_kv,
            memory_norms: (0..cfg.sections().saturating_sub(1))
                .map(|s| up.norm(&format!("model.memory_norms.{s}.weight")))
                .collect::<Result<Vec<_>>>()?,
            final_norm: up.norm("model.norm.weight")?,
            // A tied model's stored lm_head (if any) is ignored: the embedding is the head.
            lm_head: (!cfg.tie_word_embeddings)
                .then(|| up.tensor("lm_head.weight"))
                .transpose()?,
            output_mix: cfg
                .stag_output_mix
                .then(|| up.read::<f32>("model.output_mix.weight"))
                .transpose()?,
        })
    }

    /// The output projection `[V, D]`: the embedding when the model ties them.
    pub(crate) fn lm_head(&self) -> &DeviceBuffer<T> {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}
