//! The decoder's device memory, computed without allocating: [`Sizes`] holds the element
//! count of every buffer [`Decoder::from_source`](crate::Decoder::from_source) allocates, and
//! the constructor allocates exactly those counts, so [`MemoryPlan`] (their bytes) cannot
//! drift from what a decoder holds. `tests` checks the plan against the emulated device's
//! allocation counter.
//!
//! The kernel crate's workspaces ([`AttentionWorkspace`], [`SampleWorkspace`], [`RopeTable`])
//! size themselves; their formulas are restated in [`workspace`] below and held to the
//! constructors by the same test.
//!
//! [`AttentionWorkspace`]: stagformer_kernels::ops::attention_decode::AttentionWorkspace
//! [`SampleWorkspace`]: stagformer_kernels::ops::sample::SampleWorkspace
//! [`RopeTable`]: stagformer_kernels::ops::rope_append::RopeTable

use stagformer_kernels::dtype::DType;
use stagformer_kernels::ops::attention_decode::RECOMMENDED_MAX_SPLITS;
use stagformer_kernels::ops::rope_append::KvCacheLayout;
use stagformer_kernels::ops::sample::SAMPLE_ROW_WORDS;
use stagformer_ref::weights::{expected_tensors, TensorRole};
use stagformer_ref::Config;

use crate::decoder::{DecoderOptions, ExecMode};
use crate::error::{DecoderError, Result};
use crate::kv_store::PagedShape;
use crate::section::SelfCache;
use crate::validate::{memory_width, qkv_width, validate};

/// Splits used by the prefill's self-attention, whose many query rows fill the GPU already.
pub(crate) const PREFILL_SPLITS: usize = 4;

/// Bytes of device memory a decoder holds, by purpose. Every field is a sum of buffer sizes
/// the constructor allocates; [`MemoryPlan::total_bytes`] is their sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryPlan {
    /// The model's weights in the decoder's dtype (norm gains in f32; a tied model's lm_head
    /// is the embedding and costs nothing; the output mix lives on the host).
    pub weights_bytes: usize,
    /// Self-attention caches (k and v, every layer of a section, every pass's slots) and the
    /// cross caches of the reading sections. Scales with `max_batch × capacity` (the cross
    /// caches with the cross window instead, when it is shorter). Paged
    /// (`kv_page_size > 0`): the page pools (`kv_pages` pages a layer, or enough for every
    /// sequence at full length) and their block tables.
    pub kv_bytes: usize,
    /// The projected memory of the prompt being prefilled, one per reading section:
    /// `capacity` rows. Scales with `capacity`, never with the batch.
    pub prompt_memory_bytes: usize,
    /// The RoPE cos/sin tables (f32, `capacity × head_dim / 2` each).
    pub rope_bytes: usize,
    /// Per-section step scratch, the prefill chunk's scratch and the output mix: rows ×
    /// widths of the model, for a step's rows or one prefill chunk (never `capacity` rows).
    pub scratch_bytes: usize,
    /// The f32 logits of the most rows a step or a prefill chunk has, and the sampled ids
    /// with their non-finite flags.
    pub logits_bytes: usize,
    /// Attention split partials (per section and for the prefill), the sampler's workspace
    /// (`max_batch` rows of the vocabulary) and the per-row inputs graphs replay from.
    pub workspace_bytes: usize,
    /// Sum of the fields above: what [`Device::allocated_bytes`] grows by in the constructor.
    ///
    /// [`Device::allocated_bytes`]: stagformer_kernels::device::Device::allocated_bytes
    pub total_bytes: usize,
}

/// Element counts of one [`Scratch`](crate::scratch::Scratch) (its attention workspace
/// apart).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScratchSizes {
    pub rows: usize,
    /// Each of `x[0]`, `x[1]`, `h` and `o`.
    pub hidden: usize,
    pub qkv: usize,
    pub attn: usize,
    pub gate_up: usize,
    pub act: usize,
    pub memory_kv: usize,
    pub max_splits: usize,
}

/// Element counts of every buffer of a decoder, in the order the constructor allocates them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    /// Positions of the rope table.
    pub rope_positions: usize,
    /// The cross window when it is shorter than the capacity.
    pub window: Option<usize>,
    /// Slots of a cross-cache ring.
    pub ring: usize,
    /// Each of the `ls` self-k and self-v buffers.
    pub self_len: usize,
    /// Each of cross_k and cross_v (1 when p = 1 reads none).
    pub cross_len: usize,
    /// The self caches' pool and table when paged.
    pub self_paged: Option<PagedShape>,
    /// The cross caches' pool and table when paged (unbounded cross caches only).
    pub cross_paged: Option<PagedShape>,
    pub step: ScratchSizes,
    pub prefill: ScratchSizes,
    /// Most rows of any buffer shared by steps and prefills.
    pub buffer_rows: usize,
    /// Each of the output mix's z and normed, when the model mixes.
    pub mix: Option<usize>,
    /// Each of the `p − 1` prompt memories.
    pub prompt_memory: usize,
    /// Row inputs: `p · buffer_rows` pass rows and `buffer_rows` rows.
    pub row_inputs: usize,
    pub logits: usize,
    /// Sampled ids, their non-finite flags and their logprobs.
    pub tokens: usize,
}

fn overflow(what: &str) -> DecoderError {
    DecoderError::Unsupported(format!("{what} is too large to address"))
}

/// `a × b`, or an error naming `what`.
fn mul(a: usize, b: usize, what: &str) -> Result<usize> {
    a.checked_mul(b).ok_or_else(|| overflow(what))
}

/// A sum of products, checked.
fn sum(terms: &[(usize, usize)], what: &str) -> Result<usize> {
    terms.iter().try_fold(0usize, |acc, &(a, b)| {
        a.checked_mul(b)
            .and_then(|n| acc.checked_add(n))
            .ok_or_else(|| overflow(what))
    })
}

impl ScratchSizes {
    fn new(cfg: &Config, rows: usize, max_splits: usize) -> Result<Self> {
        let width =
            |w: Option<usize>, what: &str| mul(rows, w.ok_or_else(|| overflow(what))?, what);
        Ok(ScratchSizes {
            rows,
            hidden: mul(rows, cfg.hidden_size, "scratch rows")?,
            qkv: width(qkv_width(cfg), "q|k|v scratch")?,
            attn: mul(rows, cfg.q_dim(), "attention scratch")?,
            gate_up: width(cfg.intermediate_size.checked_mul(2), "gate|up scratch")?,
            act: mul(rows, cfg.intermediate_size, "MLP scratch")?,
            memory_kv: width(memory_width(cfg), "memory scratch")?,
            max_splits,
        })
    }

    /// Elements of every activation buffer (4 hidden-wide ones and the rest).
    fn elements(&self) -> Result<usize> {
        sum(
            &[
                (4, self.hidden),
                (1, self.qkv),
                (1, self.attn),
                (1, self.gate_up),
                (1, self.act),
                (1, self.memory_kv),
            ],
            "scratch",
        )
    }
}

/// Most rows a continuation chunk feeds through a windowed cross cache at once.
const CROSS_CHUNK: usize = 256;

/// Slots of a windowed cross cache (window `w` < `capacity`): a ring of W + C slots, C =
/// min(W, 256). A decode step needs W + 1 (the slot the prior section writes at step i is then
/// never one read at step i); a continuation chunk of up to C rows appends its memory before the
/// next section reads it, and W + C slots keep the window of its first row (positions a − W
/// onwards) while positions a..a + C are written. At most the capacity: such a ring never wraps.
pub(crate) fn cross_ring(w: usize, capacity: usize) -> usize {
    w.saturating_add(w.clamp(1, CROSS_CHUNK)).min(capacity)
}

impl Sizes {
    /// Validates `cfg` and `opts` (see `validate`), then sizes every buffer.
    pub(crate) fn new(cfg: &Config, opts: &DecoderOptions) -> Result<Self> {
        validate(cfg, opts)?;
        let p = cfg.sections();
        let window = cfg.stag_cross_window.filter(|&w| w < opts.capacity);
        let ring = window.map_or(opts.capacity, |w| cross_ring(w, opts.capacity));
        let (hkv, hd, ls) = (
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.layers_per_section(),
        );
        // Paged (kv_page_size > 0): self caches and unbounded cross caches are page pools;
        // windowed cross caches stay dense rings.
        let paged = |rows: usize, slots: usize| match opts.kv_page_size {
            0 => Ok(None),
            page => PagedShape::new(opts.kv_pages, page, rows, slots).map(Some),
        };
        let into_paged = |layout: KvCacheLayout, shape: Option<PagedShape>| match shape {
            Some(s) => layout.into_paged(s.pool.pages, s.pool.page_size),
            None => layout,
        };
        let self_rows = mul(p, opts.max_batch, "self-cache rows")?;
        let self_cache = SelfCache::new(cfg.sliding_window, opts.capacity);
        let self_paged = paged(self_rows, self_cache.slots)?;
        let self_len = into_paged(self_cache.layout(self_rows, hkv, hd), self_paged)
            .required_len()
            .map_err(|e| DecoderError::Unsupported(format!("self caches: {e}")))?;
        let readers = (p - 1) * opts.max_batch;
        let cross_paged = match (readers, window) {
            (0, _) | (_, Some(_)) => None,
            _ => paged(readers, ring)?,
        };
        let cross_len = match readers {
            0 => 1,
            readers => mul(
                into_paged(KvCacheLayout::dense(readers, hkv, ring, hd), cross_paged)
                    .required_len()
                    .map_err(|e| DecoderError::Unsupported(format!("cross caches: {e}")))?,
                ls,
                "cross caches",
            )?,
        };
        let step_rows = match opts.mode {
            ExecMode::Batched | ExecMode::Grouped => p * opts.max_batch,
            _ => opts.max_batch,
        };
        // Every prefill buffer holds one chunk of rows, none the whole capacity.
        let chunk_rows = opts.prefill_rows.min(opts.capacity);
        let buffer_rows = step_rows.max(chunk_rows);
        let hidden_rows = mul(buffer_rows, cfg.hidden_size, "output mix")?;
        let width = memory_width(cfg).ok_or_else(|| overflow("memory width"))?;
        Ok(Sizes {
            rope_positions: opts.capacity,
            window,
            ring,
            self_len,
            cross_len,
            self_paged,
            cross_paged,
            step: ScratchSizes::new(cfg, step_rows, RECOMMENDED_MAX_SPLITS)?,
            prefill: ScratchSizes::new(cfg, chunk_rows, PREFILL_SPLITS)?,
            buffer_rows,
            mix: cfg.stag_output_mix.then_some(hidden_rows),
            prompt_memory: mul(opts.capacity, width, "prompt memory")?,
            row_inputs: sum(
                &[(4 * p, buffer_rows), (SAMPLE_ROW_WORDS, buffer_rows)],
                "row inputs",
            )?,
            logits: mul(buffer_rows, cfg.vocab_size, "logits")?,
            tokens: mul(3, opts.max_batch, "sampled ids")?,
        })
    }
}

/// What the kernel crate's workspaces allocate, restated from their constructors.
mod workspace {
    use super::{mul, Result};
    use stagformer_kernels::ops::sample::SampleWorkspace;

    /// The decoder's two one-sequence `PrefillBatch`es (a chunk's, and a ring sub-chunk's),
    /// each q and k offsets (2 i32 each) and a first position (1 i32).
    pub const PREFILL_BATCHES: usize = 2 * (2 * 2 + 1) * 4;

    /// `AttentionWorkspace::new`: per partial, `head_dim` f32 outputs, 2 f32 stats and a u32
    /// counter.
    pub fn attention(rows: usize, heads: usize, head_dim: usize, splits: usize) -> Result<usize> {
        let partials = mul(
            mul(rows, heads, "attention partials")?,
            splits,
            "attention partials",
        )?;
        mul(
            partials,
            // head_dim is at most 128 here (validated).
            4 * (head_dim + 3),
            "attention workspace",
        )
    }

    /// `SampleWorkspace::new` (the kernel crate's own formula).
    pub fn sampler(rows: usize, vocab: usize) -> Result<usize> {
        Ok(SampleWorkspace::bytes_for(rows, vocab)?)
    }

    /// `RopeTable::from_inv_freq`: f32 cos and sin, `positions × head_dim / 2` each.
    pub fn rope(positions: usize, head_dim: usize) -> Result<usize> {
        mul(mul(positions, head_dim / 2, "rope table")?, 8, "rope table")
    }
}

/// Bytes of the device weights: what `DeviceWeights::upload_from` uploads.
fn weights_bytes(cfg: &Config, elem: usize) -> Result<usize> {
    let mut total = 0usize;
    for spec in expected_tensors(cfg) {
        let size = match spec.role {
            TensorRole::Norm => 4,
            // Read to the host: the mix weights scale axpby launches.
            TensorRole::OutputMix => continue,
            // A tied model's head is the embedding.
            TensorRole::Linear if spec.name == "lm_head.weight" && cfg.tie_word_embeddings => {
                continue
            }
            TensorRole::Embedding | TensorRole::Linear => elem,
        };
        let len = spec
            .shape
            .iter()
            .try_fold(size, |n, &d| n.checked_mul(d))
            .ok_or_else(|| overflow(&format!("tensor `{}`", spec.name)))?;
        total = total.checked_add(len).ok_or_else(|| overflow("weights"))?;
    }
    Ok(total)
}

impl MemoryPlan {
    /// The plan of a decoder of `dtype` (f32 or bf16) for `cfg` and `opts`. Validates both
    /// exactly as the constructor does (the same errors), computes with checked arithmetic (a
    /// plan too large to address is [`DecoderError::Unsupported`]) and allocates nothing.
    pub fn new(cfg: &Config, opts: &DecoderOptions, dtype: DType) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::BF16) {
            return Err(DecoderError::Unsupported(format!(
                "dtype = {dtype}: the decoder runs f32 or bf16"
            )));
        }
        let sizes = Sizes::new(cfg, opts)?;
        sizes.bytes(cfg, dtype.size_in_bytes())
    }
}

impl Sizes {
    /// The bytes of these buffers for activations of `elem` bytes.
    pub(crate) fn bytes(&self, cfg: &Config, elem: usize) -> Result<MemoryPlan> {
        let p = cfg.sections();
        let ls = cfg.layers_per_section();
        let step = self.step.elements()?;
        let prefill = self.prefill.elements()?;
        let scratch_elems = sum(
            &[(p, step), (1, prefill), (2, self.mix.unwrap_or(0))],
            "scratch",
        )?;
        let (heads, hd) = (cfg.num_attention_heads, cfg.head_dim);
        let attention = sum(
            &[
                (
                    p,
                    workspace::attention(self.step.rows, heads, hd, self.step.max_splits)?,
                ),
                (
                    1,
                    workspace::attention(self.prefill.rows, heads, hd, self.prefill.max_splits)?,
                ),
            ],
            "attention workspaces",
        )?;
        let mut plan = MemoryPlan {
            weights_bytes: weights_bytes(cfg, elem)?,
            kv_bytes: sum(
                &[
                    (mul(2 * ls, self.self_len, "self caches")?, elem),
                    (2 * self.cross_len, elem),
                    // The block tables' device copies, i32.
                    (self.self_paged.map_or(0, |s| s.table_len), 4),
                    (self.cross_paged.map_or(0, |s| s.table_len), 4),
                ],
                "caches",
            )?,
            prompt_memory_bytes: sum(
                &[(mul(p - 1, self.prompt_memory, "prompt memory")?, elem)],
                "prompt memory",
            )?,
            rope_bytes: workspace::rope(self.rope_positions, hd)?,
            scratch_bytes: mul(scratch_elems, elem, "scratch")?,
            logits_bytes: sum(&[(self.logits, 4), (self.tokens, 4)], "logits")?,
            workspace_bytes: sum(
                &[
                    (1, attention),
                    (1, workspace::sampler(self.tokens / 3, cfg.vocab_size)?),
                    (self.row_inputs, 4),
                    (1, workspace::PREFILL_BATCHES),
                ],
                "workspaces",
            )?,
            total_bytes: 0,
        };
        plan.total_bytes = [
            plan.weights_bytes,
            plan.kv_bytes,
            plan.prompt_memory_bytes,
            plan.rope_bytes,
            plan.scratch_bytes,
            plan.logits_bytes,
            plan.workspace_bytes,
        ]
        .iter()
        .try_fold(0usize, |a, &b| a.checked_add(b))
        .ok_or_else(|| overflow("the decoder's memory"))?;
        Ok(plan)
    }
}
