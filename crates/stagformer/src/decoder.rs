//! The decoder: owns the device state of a batch of sequences and runs prefills and steps.

mod batch;
mod extend;

pub use batch::{BatchRow, RowOutput, Submitted};

use std::collections::HashSet;

use stagformer_kernels::device::{Device, DeviceBuffer, DeviceView, Event, GraphNodes, Stream};
use stagformer_kernels::ops::attention_prefill::PrefillBatch;
use stagformer_kernels::ops::axpby::axpby;
use stagformer_kernels::ops::gemm::{linear, GemmShape};
use stagformer_kernels::ops::rmsnorm::{rmsnorm, Rows};
use stagformer_kernels::ops::rope_append::RopeTable;
use stagformer_kernels::ops::sample::{pack_rows, sample_checked, SampleShape, SampleWorkspace};
use stagformer_ref::{
    Checkpoint, Config, Model, RequestError, SamplingParams, SeqId, Slots, TensorSource,
};

use crate::error::{DecoderError, Result};
use crate::fused::{GemvPath, MAX_GROUPS, MAX_ROWS};
use crate::kv_store::{PagedRows, StepCopies};
use crate::plan::{MemoryPlan, Sizes};
use crate::row_inputs::{Row, RowInputs};
use crate::sampling::{kernel_sampling, GraphCache, GraphKey, Sampled, MAX_GRAPHS};
use crate::scratch::Scratch;
use crate::section::{Caches, CrossKeys, Pass, SelfCache, Shared};
use crate::weights::DeviceWeights;
use crate::Activation;

/// How a decode step is scheduled. Every mode computes the same logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecMode {
    /// Section s on stream s; the sections join only before the logits.
    Staggered,
    /// One stream, sections one after another: the baseline.
    Sequential,
    /// Shared weights: all passes of a layer as one GEMM of p·B rows. With the fused GEMV
    /// path this is the shared-weight case of `Grouped` (the same step).
    Batched,
    /// One stream, layer j of every section at once: each projection one grouped GEMV over
    /// all p·B rows (group s: section s's weights), one self- and one cross-attention launch
    /// per layer index, one launch for every memory hand-over. Separate or shared weights;
    /// steps the grouped GEMV cannot take (more than 16 rows a section, more than 4
    /// sections, or `GemvPath::Cublas`) run one section after another instead (cuBLAS
    /// `Batched` for shared weights).
    Grouped,
}

/// Which logits a prefill returns ([`Decoder::prefill_logits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefillLogits {
    /// After every prompt token: [P, V].
    All,
    /// After the prompt's last token only: [1, V].
    Last,
    /// None: the prompt only fills the caches.
    None,
}

impl PrefillLogits {
    /// Rows of logits a prompt of `len` tokens returns.
    pub fn rows(self, len: usize) -> usize {
        match self {
            PrefillLogits::All => len,
            PrefillLogits::Last => len.min(1),
            PrefillLogits::None => 0,
        }
    }
}

/// Where a chunk's section passes read the memory of the section before.
#[derive(Clone, Copy)]
enum ChunkMemory {
    /// A prompt from position 0: the projected memory of its rows so far (`prompt_memory`).
    Prompt,
    /// A continuation of a sequence: the cross caches, which hold every earlier position's
    /// memory (or the window's) and receive the chunk's own before the next section runs.
    Cache,
}

/// Positions `rows` of a run of `tokens` fed from position `first`.
struct Span<'a> {
    tokens: &'a [u32],
    first: usize,
    rows: std::ops::Range<usize>,
}

/// Prefill chunk size of [`DecoderOptions::new`].
pub const DEFAULT_PREFILL_ROWS: usize = 512;

/// Fixed capacity and schedule of a decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderOptions {
    /// Sequences the decoder holds at once (≥ 1): the slots [`Decoder::prefill`] hands out
    /// and the most rows a step may have. Caches, scratch and the sampler are sized for it.
    pub max_batch: usize,
    /// Positions per sequence (prompt plus generated tokens).
    pub capacity: usize,
    /// How a decode step is scheduled across streams ([`ExecMode`]); prefills run the same
    /// way in every mode.
    pub mode: ExecMode,
    /// Recurrent mode after the prompt (shared weights, p = 2).
    pub recurrent: bool,
    /// Replay each decode step as a graph captured once per batch size (with and without
    /// sampling, whatever the rows' settings; at most 32 kept, the least recently used
    /// evicted) instead of launching its kernels one by one. Same results either way.
    pub graphs: bool,
    /// Rows a prefill processes at a time: a prompt runs in chunks of this many rows, each
    /// attending to the caches of the chunks before it, so scratch and logits buffers hold
    /// this many rows, never `capacity` (and never `capacity × vocab` logits).
    pub prefill_rows: usize,
    /// Which kernels run a decode step's projections (fused GEMVs by default).
    pub gemv: GemvPath,
    /// Slots per KV page: with a value above 0 the self caches (rings included) and the
    /// unbounded cross caches live in pools of pages of this many slots, mapped per
    /// (section, sequence) row by block tables, and [`Decoder::fork`] shares pages
    /// (copy-on-write). 0 keeps every cache dense, one fixed region per sequence; windowed
    /// cross caches are dense rings either way.
    pub kv_page_size: usize,
    /// Pages in each layer's pool (self and cross pools alike) when paged; `None` sizes the
    /// pools for `max_batch` sequences at full capacity. A smaller pool holds more sequences
    /// than it could at full length only if they stay short: a prefill, step or fork that
    /// needs more pages than are free is refused with [`DecoderError::OutOfKvPages`].
    pub kv_pages: Option<usize>,
}

/// The kernel of a prefill's self-attention in bf16 models ([`Decoder::set_prefill_self_attention`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PrefillSelfAttention {
    /// `attention_prefill_cached`: tensor cores, the prompt's rows over the self cache.
    #[default]
    TensorCore,
    /// `attention_decode` with one query row per row of the prompt (as f32 models always do).
    DecodeKernel,
}

impl DecoderOptions {
    /// `max_batch` sequences of up to `capacity` positions, staggered, with graphs.
    pub fn new(max_batch: usize, capacity: usize) -> Self {
        DecoderOptions {
            max_batch,
            capacity,
            mode: ExecMode::Staggered,
            recurrent: false,
            graphs: true,
            prefill_rows: DEFAULT_PREFILL_ROWS,
            gemv: GemvPath::Fused,
            kv_page_size: 0,
            kv_pages: None,
        }
    }
}

/// The output mix's buffers: z = Σ α_s · (output of section s), then RMSNorm(z; model.norm).
struct OutputMix<T: Activation> {
    alpha: Vec<f32>,
    z: DeviceBuffer<T>,
    normed: DeviceBuffer<T>,
}

impl<T: Activation> OutputMix<T> {
    /// `z = α_s · out + (z if s > 0)` over the rows `out` holds.
    fn accumulate(&mut self, stream: &Stream, s: usize, out: DeviceView<'_, T>) -> Result<()> {
        let beta = if s == 0 { 0.0 } else { 1.0 };
        let len = out.len();
        axpby(
            stream,
            self.alpha[s],
            &out,
            beta,
            &mut self.z.slice_mut(..len)?,
        )?;
        Ok(())
    }

    /// RMSNorm of z with the final norm, into `normed`.
    fn finish(
        &mut self,
        stream: &Stream,
        gain: &DeviceBuffer<f32>,
        rows: Rows,
        eps: f32,
    ) -> Result<()> {
        let len = rows.rows * rows.dim;
        rmsnorm(
            stream,
            &self.z.slice(..len)?,
            gain,
            &mut self.normed.slice_mut(..len)?,
            rows,
            eps,
        )?;
        Ok(())
    }
}

/// A StagFormer model on a device with the caches of up to `max_batch` sequences: prefills
/// add sequences, decode steps feed each listed sequence one token, and `T` (f32 or bf16) is
/// the type of weights and activations.
///
/// Every buffer is allocated by the constructor for its [`DecoderOptions`]; nothing grows
/// afterwards. Requests that cannot run (an unknown or duplicate sequence, a token outside the
/// vocabulary, a prompt or step past `capacity`, a full batch, bad sampling settings) are
/// refused before anything is launched and leave the decoder as it was. A device error during
/// a prefill or step leaves the caches half written: the decoder is then poisoned and every
/// later call returns [`DecoderError::Poisoned`].
pub struct Decoder<T: Activation> {
    shared: Shared<T>,
    caches: Caches<T>,
    /// One per section (decode steps).
    scratch: Vec<Scratch<T>>,
    /// Rows of one prefill chunk.
    prefill: Scratch<T>,
    /// The running chunk's query and key rows for the prefill attention kernels, and a ring
    /// sub-chunk's: refilled per chunk, never reallocated (a free would synchronise the device).
    chunk_batch: PrefillBatch,
    sub_batch: PrefillBatch,
    /// Per reading section s ≥ 1: the projected memory of the prompt being prefilled, every
    /// row (`capacity` rows of k|v for all of s's cross layers).
    prompt_memory: Vec<DeviceBuffer<T>>,
    streams: Vec<Stream>,
    /// Ids, positions, slots and sampler settings of the current pass, one copy per step.
    inputs: RowInputs,
    logits: DeviceBuffer<f32>,
    tokens: DeviceBuffer<i32>,
    /// Where the sampler's blocks meet: `max_batch` rows of the vocabulary, reused every step.
    sample_workspace: SampleWorkspace,
    opts: DecoderOptions,
    /// Tokens processed per live sequence.
    lens: Slots<usize>,
    /// Captured steps, replayed on stream 0.
    graphs: GraphCache,
    /// Keys whose step ran once without capture: the warm-up loads modules, creates cuBLAS
    /// handles and sets kernel attributes outside any capture.
    warmed: HashSet<GraphKey>,
    poisoned: Option<String>,
    /// With `stag_output_mix`: z = Σ α_s · out_s and its final norm.
    mix: Option<OutputMix<T>>,
    /// Test hook: drop the join before the logits and delay the last section's stream by this
    /// much, to show that the emulated streams really need their events.
    broken_join: Option<std::time::Duration>,
    /// The batch [`Decoder::submit`] launched and [`Decoder::wait`] has not collected.
    pending: Option<batch::Pending>,
}

impl<T: Activation> Decoder<T> {
    /// The device memory a decoder of `T` for `cfg` (a [`TensorSource::config`]) and `opts`
    /// would hold, by purpose, without allocating anything: the sizes the constructor
    /// allocates, after the same validation (so an `Err` here is the constructor's `Err`).
    pub fn memory_plan(cfg: &Config, opts: &DecoderOptions) -> Result<MemoryPlan> {
        MemoryPlan::new(cfg, opts, T::DTYPE)
    }

    /// Uploads `model` to `device` and allocates every buffer for `opts`.
    pub fn new(device: &Device, model: &Model, opts: DecoderOptions) -> Result<Self> {
        Self::from_source(device, model, opts)
    }

    /// Uploads the tensors of a memory-mapped checkpoint straight from the map, each converted
    /// once from its stored dtype to `T` (bf16 stays bit for bit), and allocates every buffer
    /// for `opts`. The host never holds more than one converted tensor.
    pub fn from_checkpoint(
        device: &Device,
        checkpoint: &Checkpoint,
        opts: DecoderOptions,
    ) -> Result<Self> {
        Self::from_source(device, checkpoint, opts)
    }

    /// As [`Decoder::from_checkpoint`], from any [`TensorSource`] (a checkpoint, a model,
    /// seeded random weights).
    pub fn from_source(
        device: &Device,
        source: &impl TensorSource,
        opts: DecoderOptions,
    ) -> Result<Self> {
        let cfg = source.config().clone();
        // Every rule (config, options, kernel limits) before the first allocation; the plan's
        // sizes are the ones allocated below.
        let sizes = Sizes::new(&cfg, &opts)?;
        let p = cfg.sections();
        let streams = match opts.mode {
            ExecMode::Staggered if !opts.recurrent => (0..p)
                .map(|_| device.new_stream())
                .collect::<Result<Vec<_>, _>>()?,
            _ => vec![device.new_stream()?],
        };
        let stream = &streams[0];
        let weights = DeviceWeights::upload_from(stream, source)?;
        let rope = RopeTable::from_inv_freq(
            stream,
            cfg.head_dim,
            &cfg.rope_inv_freq(),
            sizes.rope_positions,
        )?;
        let (window, ring) = (sizes.window, sizes.ring);
        let self_cache = SelfCache::new(cfg.sliding_window, opts.capacity);
        let ls = cfg.layers_per_section();
        let row_len = cfg.num_key_value_heads * cfg.head_dim;
        let self_pages = match sizes.self_paged {
            Some(shape) => Some(PagedRows::new(
                device,
                shape,
                p * opts.max_batch,
                self_cache.slots,
                row_len,
            )?),
            None => None,
        };
        let cross_pages = match sizes.cross_paged {
            Some(shape) => Some(PagedRows::new(
                device,
                shape,
                (p - 1) * opts.max_batch,
                ring,
                row_len,
            )?),
            None => None,
        };
        let self_pool = self_pages.as_ref().map(|pg| pg.pool);
        let cross_pool = cross_pages.as_ref().map(|pg| pg.pool);
        let alloc = |n: usize| DeviceBuffer::<T>::alloc(device, n);
        let caches = Caches {
            self_k: (0..ls)
                .map(|_| alloc(sizes.self_len))
                .collect::<Result<Vec<_>, _>>()?,
            self_v: (0..ls)
                .map(|_| alloc(sizes.self_len))
                .collect::<Result<Vec<_>, _>>()?,
            cross_k: alloc(sizes.cross_len)?,
            cross_v: alloc(sizes.cross_len)?,
            self_pages,
            cross_pages,
        };
        // Batched and Grouped steps put every pass's rows into the first scratch.
        let scratch = (0..p)
            .map(|_| Scratch::new(device, &cfg, &sizes.step))
            .collect::<Result<Vec<_>>>()?;
        let prefill = Scratch::new(device, &cfg, &sizes.prefill)?;
        let rows = opts.max_batch;
        let buffer_rows = sizes.buffer_rows;
        // The projected memory of a prompt for each reading section: later chunks' rows attend
        // to every earlier row's memory.
        let prompt_memory = (1..p)
            .map(|_| alloc(sizes.prompt_memory))
            .collect::<Result<Vec<_>, _>>()?;
        let mix = match (&weights.output_mix, sizes.mix) {
            (Some(alpha), Some(mix_rows)) => Some(OutputMix {
                alpha: alpha.clone(),
                z: DeviceBuffer::alloc(device, mix_rows)?,
                normed: DeviceBuffer::alloc(device, mix_rows)?,
            }),
            _ => None,
        };
        let decoder = Decoder {
            mix,
            inputs: RowInputs::new(device, p * buffer_rows, buffer_rows)?,
            logits: DeviceBuffer::alloc(device, sizes.logits)?,
            prompt_memory,
            // Sampled ids, one non-finite-logits flag per row, then the f32 logprobs' bits: one
            // copy back per step.
            tokens: DeviceBuffer::alloc(device, sizes.tokens)?,
            sample_workspace: SampleWorkspace::new(stream, rows, cfg.vocab_size)?,
            shared: Shared {
                cfg,
                weights,
                rope,
                max_batch: opts.max_batch,
                capacity: opts.capacity,
                ring,
                window,
                self_cache,
                prefill_self_mma: true,
                self_pool,
                cross_pool,
            },
            caches,
            scratch,
            prefill,
            chunk_batch: PrefillBatch::with_positions(stream, &[0], &[0], &[0])?,
            sub_batch: PrefillBatch::with_positions(stream, &[0], &[0], &[0])?,
            streams,
            opts,
            lens: Slots::new(opts.max_batch),
            graphs: GraphCache::new(MAX_GRAPHS),
            warmed: HashSet::new(),
            poisoned: None,
            broken_join: None,
            pending: None,
        };
        decoder.streams[0].synchronize()?;
        Ok(decoder)
    }

    /// Test hook: from now on, steps skip the event wait that joins the sections before the
    /// logits, and the last section's stream first sleeps `delay`. The logits are then wrong:
    /// proof that cross-stream ordering is really enforced (also on the emulated device).
    /// Steps run without graphs then (a capture would refuse the unjoined stream).
    #[cfg(test)]
    pub(crate) fn break_join_for_test(&mut self, delay: std::time::Duration) {
        self.broken_join = Some(delay);
    }

    /// Chooses the kernel of prefill self-attention for bf16 models (f32 models always use
    /// the decode kernel): the tensor-core prefill kernel over the self cache (the default), or
    /// the decode kernel, so that both can be compared on one model.
    pub fn set_prefill_self_attention(&mut self, kernel: PrefillSelfAttention) {
        self.shared.prefill_self_mma = kernel == PrefillSelfAttention::TensorCore;
    }

    /// The options the decoder was built with.
    pub fn options(&self) -> DecoderOptions {
        self.opts
    }

    /// Step graphs held now (one per batch size, with or without sampling, seen twice; at most
    /// 32, the least recently used evicted first).
    pub fn captured_graphs(&self) -> usize {
        self.graphs.len()
    }

    /// Drops every captured step graph (and the device memory they hold); later steps capture
    /// again as needed.
    pub fn clear_graphs(&mut self) {
        self.graphs.clear();
    }

    /// Work nodes (launches) of the step graph for `rows` rows ending with sampling (`samples`)
    /// or with logits, if that graph is held.
    pub fn graph_nodes(&self, rows: usize, samples: bool) -> Result<Option<usize>> {
        match self.graphs.peek(&GraphKey { rows, samples }) {
            Some(graph) => Ok(Some(graph.nodes()?)),
            None => Ok(None),
        }
    }

    /// The step graph for `rows` rows ending with sampling (`samples`) or with logits by node
    /// kind — kernel launches and copies per replayed step — if that graph is held.
    pub fn graph_node_counts(&self, rows: usize, samples: bool) -> Result<Option<GraphNodes>> {
        match self.graphs.peek(&GraphKey { rows, samples }) {
            Some(graph) => Ok(Some(graph.node_counts()?)),
            None => Ok(None),
        }
    }

    /// Tokens sequence `id` has processed.
    pub fn len(&self, id: SeqId) -> Result<usize> {
        Ok(*self.lens.get(id)?)
    }

    /// Frees a sequence's slot (and, paged, its KV pages no fork still shares).
    pub fn remove(&mut self, id: SeqId) -> Result<()> {
        self.lens.remove(id)?;
        self.caches.release(&self.shared, id.slot());
        Ok(())
    }

    /// Free pages of the self and cross KV page pools (`None` for a dense cache), per
    /// layer's pool: every pool of a kind holds the same pages.
    pub fn free_kv_pages(&self) -> (Option<usize>, Option<usize>) {
        self.caches.free_pages()
    }

    /// Adds a sequence that continues sequence `id` exactly as it stands (same length, same
    /// caches) in a free slot, and returns its id: a prefix shared by two continuations.
    /// Paged caches share every page of `id` (vLLM-style prefix sharing; whichever sequence
    /// writes into a shared page first moves onto a copy of it, so neither sees the other's
    /// later tokens); dense caches copy the slot's rows on the device. Refused (nothing
    /// changed) for an unknown `id` or a full batch.
    pub fn fork(&mut self, id: SeqId) -> Result<SeqId> {
        self.check_usable()?;
        let len = *self.lens.get(id)?;
        let new = self.lens.next_free()?;
        self.guarded(|d| {
            let stream = &d.streams[0];
            d.caches.fork(&d.shared, stream, id.slot(), new.slot())
        })?;
        let issued = self.lens.insert(len)?;
        debug_assert_eq!(issued, new);
        Ok(new)
    }

    fn check_usable(&self) -> Result<()> {
        if let Some(why) = &self.poisoned {
            return Err(DecoderError::Poisoned(why.clone()));
        }
        if self.pending.is_some() {
            return Err(DecoderError::Pending(
                "a submitted batch has not been waited for (Decoder::wait)",
            ));
        }
        Ok(())
    }

    /// Runs `f`; a device error inside it poisons the decoder (its caches may be half written).
    fn guarded<R>(&mut self, f: impl FnOnce(&mut Self) -> Result<R>) -> Result<R> {
        self.check_usable()?;
        let result = f(self);
        if let Err(DecoderError::Device(e)) = &result {
            self.poisoned = Some(e.to_string());
        }
        result
    }

    /// Adds a sequence: runs every section over `prompt` and fills its caches. Returns its id
    /// and the logits after every prompt token, [P, V] row-major.
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<(SeqId, Vec<f32>)> {
        self.prefill_logits(prompt, PrefillLogits::All)
    }

    /// [`Decoder::prefill`] returning only the logits `want` asks for: all P rows, the last
    /// row (what a server samples the first token from), or none. Rows not asked for never
    /// reach the lm_head, so `Last` and `None` also save its P × V × D work; the non-finite
    /// check covers the rows returned.
    pub fn prefill_logits(
        &mut self,
        prompt: &[u32],
        want: PrefillLogits,
    ) -> Result<(SeqId, Vec<f32>)> {
        self.check_usable()?;
        let cfg = &self.shared.cfg;
        let vocab = cfg.vocab_size;
        if prompt.is_empty() {
            return Err(RequestError::EmptyInput.into());
        }
        if prompt.len() > self.opts.capacity {
            return Err(RequestError::TooLong {
                len: prompt.len(),
                max: self.opts.capacity,
            }
            .into());
        }
        if let Some(index) = prompt.iter().position(|&t| t as usize >= vocab) {
            return Err(RequestError::TokenOutOfRange {
                index,
                token: prompt[index],
                vocab_size: vocab,
            }
            .into());
        }
        let id = self.lens.next_free()?;
        // Pages for the whole prompt in every row, or a refusal before any launch.
        self.caches
            .reserve_prompt(&self.shared, id.slot(), prompt.len())?;
        let logits = self
            .guarded(|d| {
                d.caches.upload_tables(&d.streams[0])?;
                d.run_prefill(id, prompt, want)
            })
            .and_then(|logits| {
                // A NaN or infinity (an overflowed activation) is an error, not logits to
                // sample from; the slot stays free.
                stagformer_ref::NonFiniteLogits::check(&logits, vocab, 0)
                    .map_err(stagformer_ref::Error::from)?;
                Ok(logits)
            });
        let logits = match logits {
            Ok(logits) => logits,
            Err(e) => {
                self.caches.release(&self.shared, id.slot());
                return Err(e);
            }
        };
        let issued = self.lens.insert(prompt.len())?;
        debug_assert_eq!(issued, id);
        Ok((id, logits))
    }

    fn run_prefill(&mut self, id: SeqId, prompt: &[u32], want: PrefillLogits) -> Result<Vec<f32>> {
        self.run_chunks(id, prompt, 0, want, ChunkMemory::Prompt)
    }

    /// Runs `tokens` (positions `first..first + tokens.len()` of sequence `id`) through every
    /// section in chunks; returns the logits `want` asks for. A prompt
    /// ([`ChunkMemory::Prompt`], `first` = 0) runs in chunks of `prefill_rows`; a continuation
    /// ([`ChunkMemory::Cache`]) in chunks the cross caches can serve (see
    /// [`Decoder::continuation_chunk`]).
    fn run_chunks(
        &mut self,
        id: SeqId,
        tokens: &[u32],
        first: usize,
        want: PrefillLogits,
        memory: ChunkMemory,
    ) -> Result<Vec<f32>> {
        let vocab = self.shared.cfg.vocab_size;
        let n = tokens.len();
        let mut logits = Vec::with_capacity(want.rows(n) * vocab);
        let chunk = match memory {
            ChunkMemory::Prompt => self.opts.prefill_rows,
            ChunkMemory::Cache => self.continuation_chunk(),
        };
        let mut start = 0;
        while start < n {
            let end = (start + chunk).min(n);
            let span = Span {
                tokens,
                first,
                rows: first + start..first + end,
            };
            self.run_chunk(id, span, want, memory, &mut logits)?;
            start = end;
        }
        Ok(logits)
    }

    /// Rows a continuation chunk may have: an unbounded cross cache holds every earlier
    /// position, so `prefill_rows`; a windowed one, a ring of R slots, keeps the window of a
    /// chunk's first row while the chunk's memory is appended only for R − W rows
    /// (`plan::cross_ring`).
    fn continuation_chunk(&self) -> usize {
        let sh = &self.shared;
        match sh.window {
            Some(w) if sh.cfg.sections() > 1 => (sh.ring - w).clamp(1, self.opts.prefill_rows),
            _ => self.opts.prefill_rows,
        }
    }

    /// The rows `span.rows` of a chunk through every section, one section after another;
    /// appends the chunk's logits that `want` asks for to `logits`. Earlier positions left
    /// their keys in the self caches and their projected memory in `prompt_memory` (a prompt,
    /// [`ChunkMemory::Prompt`]) or in the cross caches ([`ChunkMemory::Cache`]), which this
    /// chunk's rows attend to.
    fn run_chunk(
        &mut self,
        id: SeqId,
        span: Span<'_>,
        want: PrefillLogits,
        source: ChunkMemory,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let stream = &self.streams[0];
        let sh = &self.shared;
        let cfg = &sh.cfg;
        let chunk = span.rows.clone();
        let (p, n, d, vocab) = (cfg.sections(), chunk.len(), cfg.hidden_size, cfg.vocab_size);
        let total = span.first + span.tokens.len();
        let width = sh.memory_width();
        // Stream 0 joined every stream at the end of the last step: what follows on it is
        // ordered after all of that step's work (and after the previous chunk's).
        self.chunk_batch
            .refill(stream, &[n], &[chunk.end], &[chunk.start])?;
        let batch = &self.chunk_batch;
        let sc = &mut self.prefill;
        let rows: Vec<Row> = chunk
            .clone()
            .map(|position| Row {
                seq: id.slot(),
                token: span.tokens[position - span.first],
                position,
            })
            .collect();
        self.inputs.upload(stream, p, sh.max_batch, &rows, None)?;
        for s in 0..p {
            let index = self.inputs.index(s * n..(s + 1) * n)?;
            let end = if s + 1 < p {
                &sh.weights.memory_norms[s]
            } else {
                &sh.weights.final_norm
            };
            let pass = Pass {
                section: s,
                rows: n,
                index,
                cross_keys: match (s, source) {
                    (0, _) | (_, ChunkMemory::Cache) => CrossKeys::Cache,
                    (_, ChunkMemory::Prompt) => CrossKeys::Prompt {
                        batch,
                        memory: &self.prompt_memory[s - 1],
                    },
                },
                prompt: Some(batch),
                sub_batch: Some(&mut self.sub_batch),
                end,
            };
            let out = sh.run_section(&mut self.caches, sc, stream, pass)?;
            if let Some(mix) = self.mix.as_mut() {
                mix.accumulate(stream, s, sc.x[out].slice(..n * d)?)?;
            }
            if s + 1 < p {
                let memory = &mut self.prompt_memory[s];
                // A prompt keeps every row's memory (later chunks attend to it); a
                // continuation's memory only passes through on its way to the cross caches.
                let (at, first) = match source {
                    // Only the last `ring` positions of the prompt fit the cross caches (and
                    // are ever read again).
                    ChunkMemory::Prompt => {
                        (chunk.start, total.saturating_sub(sh.ring).max(chunk.start))
                    }
                    ChunkMemory::Cache => (0, chunk.start),
                };
                let rows_kv = at * width..(at + n) * width;
                sh.project_memory(
                    stream,
                    sc.h.slice(..n * d)?,
                    memory.slice_mut(rows_kv)?,
                    s + 1,
                    n,
                )?;
                if first < chunk.end {
                    let reader = self.inputs.index((s + 1) * n..(s + 2) * n)?;
                    let from = at + (first - chunk.start);
                    sh.append_memory(
                        &mut self.caches,
                        memory.slice(from * width..(at + n) * width)?,
                        stream,
                        &reader,
                        first - chunk.start..n,
                    )?;
                }
            }
        }
        let rows = Rows { rows: n, dim: d };
        let normed = match self.mix.as_mut() {
            Some(mix) => {
                mix.finish(
                    stream,
                    &sh.weights.final_norm,
                    rows,
                    cfg.rms_norm_eps as f32,
                )?;
                &mix.normed
            }
            None => &sc.h,
        };
        // Only the rows asked for go through the lm_head (none, the last, or all).
        let out = match want {
            PrefillLogits::All => 0..n,
            PrefillLogits::Last if chunk.end == total => n - 1..n,
            PrefillLogits::Last | PrefillLogits::None => return Ok(()),
        };
        let m = out.len();
        let rows_d = out.start * d..out.end * d;
        lm_head(stream, sh, normed.slice(rows_d)?, &mut self.logits, m)?;
        logits.extend(self.logits.slice(..m * vocab)?.to_host(stream)?);
        Ok(())
    }

    /// One decode step: feeds `tokens[r]` to sequence `seqs[r]` and returns the logits [B, V].
    /// A non-finite logit is an error naming its row (the step is taken all the same).
    /// [`Decoder::step_sample`] checks on the device (the sampler flags such rows).
    pub fn step(&mut self, seqs: &[SeqId], tokens: &[u32]) -> Result<Vec<f32>> {
        // Checked before the buffer is sized from `seqs`.
        self.validate_step(seqs, tokens)?;
        let mut logits = vec![0.0; seqs.len().saturating_mul(self.shared.cfg.vocab_size)];
        self.step_into(seqs, tokens, &mut logits)?;
        Ok(logits)
    }

    /// [`Decoder::step`] copying the logits [B, V] into the caller's `logits` (exactly
    /// `seqs.len() × vocab_size` long, else [`DecoderError::OutputLength`] before anything
    /// runs) instead of a new vector. A non-finite logit is an error naming its row, as in
    /// `step`; the step is taken and `logits` holds its logits all the same.
    pub fn step_into(&mut self, seqs: &[SeqId], tokens: &[u32], logits: &mut [f32]) -> Result<()> {
        let vocab = self.shared.cfg.vocab_size;
        let expected = seqs
            .len()
            .checked_mul(vocab)
            .ok_or(DecoderError::OutputLength {
                expected: usize::MAX,
                found: logits.len(),
            })?;
        if logits.len() != expected {
            return Err(DecoderError::OutputLength {
                expected,
                found: logits.len(),
            });
        }
        let positions = self.validate_step(seqs, tokens)?;
        let copies = self.plan_pages(seqs, &positions)?;
        self.guarded(|d| {
            d.caches.copy_pages(&d.streams[0], &copies)?;
            d.run_step(seqs, tokens, &positions, None)?;
            Ok(d.logits
                .slice(..expected)?
                .copy_to_host(&d.streams[0], logits)?)
        })?;
        self.advance(seqs);
        stagformer_ref::NonFiniteLogits::check(logits, vocab, 0)
            .map_err(stagformer_ref::Error::from)?;
        Ok(())
    }

    /// The logits of the last [`Decoder::step`] or [`Decoder::step_into`] on the device, rows
    /// `[B, V]` of that step (`rows` of them), for an engine that samples or post-processes
    /// them with kernels of its own instead of copying them to the host. They are written in
    /// order on [`Decoder::stream`] (wait on it, or record an event there, before reading from
    /// another stream) and stay valid until the next prefill or step.
    pub fn logits_view(&self, rows: usize) -> Result<DeviceView<'_, f32>> {
        let vocab = self.shared.cfg.vocab_size;
        let len = rows
            .checked_mul(vocab)
            .filter(|&n| n <= self.logits.len())
            .ok_or(DecoderError::OutputLength {
                expected: self.logits.len(),
                found: rows.saturating_mul(vocab),
            })?;
        Ok(self.logits.slice(..len)?)
    }

    /// The stream every prefill and step ends on (stream 0): the logits and sampled ids are
    /// ordered on it.
    pub fn stream(&self) -> &Stream {
        &self.streams[0]
    }

    /// One decode step that samples on the device, row r with its own settings `sampling[r]`;
    /// only the chosen ids and their log-probabilities reach the host ([`Sampled`]). Row r's
    /// token is at position t = (tokens sequence `seqs[r]` has processed) + 1 and is drawn with
    /// `uniform(sampling[r].seed, t)` as [`stagformer_ref::sample::sample`] defines it, so a
    /// request's tokens depend on its seed and positions, never on its slot or on the other
    /// rows. Greedy and sampled rows share the step, and every mix of settings replays the one
    /// graph of this row count. A settings count other than the rows' or a setting that
    /// [`SamplingParams::validate`] refuses is [`DecoderError::Request`] (naming the row)
    /// before anything runs. A row whose logits hold a NaN or an infinity (flagged by the
    /// sampler, copied back with the ids) is [`DecoderError::NonFiniteLogits`]; the step is
    /// taken all the same.
    pub fn step_sample(
        &mut self,
        seqs: &[SeqId],
        tokens: &[u32],
        sampling: &[SamplingParams],
    ) -> Result<Vec<Sampled>> {
        let positions = self.validate_step(seqs, tokens)?;
        // Bad settings are the caller's error, not the device's: check them before any launch.
        if sampling.len() != seqs.len() {
            return Err(RequestError::SamplingArity {
                ids: seqs.len(),
                settings: sampling.len(),
            }
            .into());
        }
        let words = self.sampler_words(&positions, sampling)?;
        let copies = self.plan_pages(seqs, &positions)?;
        let picked = self.guarded(|d| {
            d.caches.copy_pages(&d.streams[0], &copies)?;
            d.run_step(seqs, tokens, &positions, Some(&words))?;
            d.read_sampled(seqs.len())
        })?;
        self.advance(seqs);
        let (picked, bad_row) = picked;
        if let Some(row) = bad_row {
            // The sampler saw a NaN or an infinity: its token means nothing (the step is taken
            // all the same, as in `step`).
            return Err(DecoderError::NonFiniteLogits { row });
        }
        Ok(picked)
    }

    /// The sampler's packed settings for rows at `positions` drawing with `sampling` (each
    /// checked first, an error naming its row): the draw's index is one past the position.
    fn sampler_words(&self, positions: &[usize], sampling: &[SamplingParams]) -> Result<Vec<u32>> {
        stagformer_ref::sample::validate_rows(sampling)?;
        let configs: Vec<_> = sampling.iter().map(kernel_sampling).collect();
        // The chosen token's index in its request: one past the fed token's position.
        let counters = positions
            .iter()
            .map(|&p| u32::try_from(p + 1))
            .collect::<std::result::Result<Vec<u32>, _>>()
            .map_err(|_| RequestError::TooLong {
                len: usize::MAX,
                max: u32::MAX as usize,
            })?;
        Ok(pack_rows(&configs, &counters)?)
    }

    /// The ids and log-probabilities the last sampled step drew for its `n` rows, and the
    /// first row the sampler flagged for non-finite logits; waits for the step.
    fn read_sampled(&self, n: usize) -> Result<(Vec<Sampled>, Option<usize>)> {
        let max = self.opts.max_batch;
        let all = self.tokens.to_host(&self.streams[0])?;
        let picked: Vec<Sampled> = (0..n)
            .map(|r| Sampled {
                token: all[r] as u32,
                logprob: f32::from_bits(all[2 * max + r] as u32),
            })
            .collect();
        Ok((picked, all[max..max + n].iter().position(|&f| f != 0)))
    }

    /// Readies the paged caches for the step's writes (pages for new slots, copies of shared
    /// pages), or refuses the step before anything runs.
    fn plan_pages(&mut self, seqs: &[SeqId], positions: &[usize]) -> Result<StepCopies> {
        let rows: Vec<_> = seqs
            .iter()
            .zip(positions)
            .map(|(s, &p)| (s.slot(), p))
            .collect();
        self.caches.plan_step(&self.shared, &rows)
    }

    fn advance(&mut self, seqs: &[SeqId]) {
        for &s in seqs {
            if let Ok(len) = self.lens.get_mut(s) {
                *len += 1;
            }
        }
    }

    /// Checks the step's arguments; returns each row's position.
    fn validate_step(&self, seqs: &[SeqId], tokens: &[u32]) -> Result<Vec<usize>> {
        self.check_usable()?;
        if seqs.is_empty() {
            return Err(RequestError::EmptyInput.into());
        }
        if seqs.len() != tokens.len() {
            return Err(RequestError::StepArity {
                ids: seqs.len(),
                tokens: tokens.len(),
            }
            .into());
        }
        let vocab = self.shared.cfg.vocab_size;
        let mut positions = Vec::with_capacity(seqs.len());
        for (r, (&id, &t)) in seqs.iter().zip(tokens).enumerate() {
            let len = self.len(id)?;
            if seqs[..r].contains(&id) {
                return Err(RequestError::DuplicateSequence { seq: id }.into());
            }
            if len >= self.opts.capacity {
                return Err(RequestError::TooLong {
                    len: len + 1,
                    max: self.opts.capacity,
                }
                .into());
            }
            if t as usize >= vocab {
                return Err(RequestError::TokenOutOfRange {
                    index: r,
                    token: t,
                    vocab_size: vocab,
                }
                .into());
            }
            positions.push(len);
        }
        Ok(positions)
    }

    /// Uploads the step's inputs with one copy on stream 0, then runs the step's launches:
    /// replayed from a graph when one is captured for this key, captured on the key's second
    /// use, run directly otherwise. Leaves the logits (and, when sampling, the picked ids in
    /// `self.tokens`) ordered on stream 0.
    fn run_step(
        &mut self,
        seqs: &[SeqId],
        tokens: &[u32],
        positions: &[usize],
        sampling: Option<&[u32]>,
    ) -> Result<()> {
        let rows: Vec<Row> = seqs
            .iter()
            .zip(tokens)
            .zip(positions)
            .map(|((&seq, &token), &position)| Row {
                seq: seq.slot(),
                token,
                position,
            })
            .collect();
        let p = self.shared.cfg.sections();
        self.inputs
            .upload(&self.streams[0], p, self.shared.max_batch, &rows, sampling)?;
        let n = rows.len();
        let samples = sampling.is_some();
        let key = GraphKey { rows: n, samples };
        if !self.opts.graphs || self.broken_join.is_some() {
            return self.launch_step(n, samples);
        }
        if let Some(graph) = self.graphs.get(&key) {
            return Ok(graph.launch()?);
        }
        if self.warmed.insert(key) {
            return self.launch_step(n, samples);
        }
        let origin = self.streams[0].clone();
        let (graph, ()) = origin.capture(|| self.launch_step(n, samples))?;
        graph.launch()?;
        self.graphs.insert(key, graph);
        Ok(())
    }

    /// The launches of one step over the `n` rows of the uploaded inputs; everything they
    /// read that changes between steps is in device memory, so they can be captured.
    fn launch_step(&mut self, n: usize, samples: bool) -> Result<()> {
        let p = self.shared.cfg.sections();
        let grouped = self.opts.gemv == GemvPath::Fused && n <= MAX_ROWS && p <= MAX_GROUPS;
        match self.opts.mode {
            _ if self.opts.recurrent => self.launch_section_step(n)?,
            ExecMode::Batched if !grouped || p * n > MAX_ROWS => self.launch_batched_step(n)?,
            ExecMode::Batched => self.launch_grouped_step(n)?,
            ExecMode::Grouped if grouped => self.launch_grouped_step(n)?,
            ExecMode::Grouped if self.shared.cfg.stag_shared_weights => {
                self.launch_batched_step(n)?
            }
            _ => self.launch_section_step(n)?,
        }
        if samples {
            let stream = &self.streams[0];
            let vocab = self.shared.cfg.vocab_size;
            let settings = self.inputs.sampler()?;
            let max = self.opts.max_batch;
            let (mut ids, rest) = self.tokens.slice_mut(..)?.split_at_mut(max)?;
            let (mut flags, logprobs) = rest.split_at_mut(max)?;
            // The logprobs' f32 bits share the ids' buffer, so one copy brings all back.
            let mut logprobs = logprobs.into_bitcast::<f32>()?;
            sample_checked(
                stream,
                &self.logits.slice(..n * vocab)?,
                &mut ids.slice_mut(..n)?,
                &mut logprobs.slice_mut(..n)?,
                &mut flags.slice_mut(..n)?,
                &settings,
                SampleShape::contiguous(n, vocab),
                &mut self.sample_workspace,
            )?;
        }
        Ok(())
    }

    /// Whether a step whose GEMMs have `rows` rows runs the fused GEMV path.
    fn fused_rows(&self, rows: usize) -> bool {
        self.opts.gemv == GemvPath::Fused && rows <= MAX_ROWS
    }

    /// A Staggered, Sequential or recurrent step: section s on stream s when staggered (forked
    /// from stream 0 after the input copy, joined back before the logits), else all on one.
    fn launch_section_step(&mut self, n: usize) -> Result<()> {
        let sh = &self.shared;
        let cfg = &sh.cfg;
        let (p, d) = (cfg.sections(), cfg.hidden_size);
        let recurrent = self.opts.recurrent;
        let sections: Vec<usize> = if recurrent { vec![1] } else { (0..p).collect() };
        let stream0 = &self.streams[0];
        // The fork: later sections start once stream 0 has the step's inputs, which also
        // orders them after everything the previous step did (it ended joined on stream 0).
        let fork: Option<Event> = match self.streams.len() {
            1 => None,
            _ => Some(stream0.record_event()?),
        };
        let fused = self.fused_rows(n);
        let mixed = self.mix.is_some();
        let mut joins = Vec::new();
        let mut outputs = Vec::new();
        for &s in &sections {
            let stream = &self.streams[s.min(self.streams.len() - 1)];
            if let (Some(fork), true) = (&fork, s > 0) {
                stream.wait_event(fork)?;
            }
            if let (Some(delay), true) = (self.broken_join, s + 1 == p && s > 0) {
                stream.host_fn(move || std::thread::sleep(delay))?;
            }
            let sc = &mut self.scratch[s];
            let index = self.inputs.index(s * n..(s + 1) * n)?;
            let end = if !recurrent && s + 1 < p {
                &sh.weights.memory_norms[s]
            } else {
                &sh.weights.final_norm
            };
            let last = recurrent || s + 1 == p;
            let out = if fused {
                sh.fused_embed(sc, stream, &index, 0..n)?;
                sh.run_section_fused(&mut self.caches, sc, stream, &index, s, n)?;
                // The lm_head reads the final norm of the last pass (the mix norms its sum).
                if last && (recurrent || !mixed) {
                    rmsnorm(
                        stream,
                        &sc.x[0].slice(..n * d)?,
                        end,
                        &mut sc.h.slice_mut(..n * d)?,
                        Rows { rows: n, dim: d },
                        cfg.rms_norm_eps as f32,
                    )?;
                }
                0
            } else {
                let pass = Pass {
                    section: s,
                    rows: n,
                    index,
                    cross_keys: CrossKeys::Cache,
                    prompt: None,
                    sub_batch: None,
                    end,
                };
                sh.run_section(&mut self.caches, sc, stream, pass)?
            };
            outputs.push((s, out));
            // The memory of step i lands in slot i, which no section reads during step i.
            if fused && (recurrent || s + 1 < p) {
                // Recurrent: section 1's output, normed with the memory norm of section 0,
                // into its own cross caches.
                let (norm, reader) = match recurrent {
                    true => (&sh.weights.memory_norms[0], 1),
                    false => (&sh.weights.memory_norms[s], s + 1),
                };
                let x = sc.x[0].slice(..n * d)?;
                let slots = self.inputs.index(reader * n..(reader + 1) * n)?;
                let readers = reader..reader + 1;
                sh.fused_memory(&mut self.caches, x, stream, &slots, &[norm], readers, 0..n)?;
            } else if recurrent {
                rmsnorm(
                    stream,
                    &sc.x[out].slice(..n * d)?,
                    &sh.weights.memory_norms[0],
                    &mut sc.o.slice_mut(..n * d)?,
                    Rows { rows: n, dim: d },
                    cfg.rms_norm_eps as f32,
                )?;
                let (rows_d, rows_kv) = (..n * d, ..n * sh.memory_width());
                sh.project_memory(
                    stream,
                    sc.o.slice(rows_d)?,
                    sc.memory_kv.slice_mut(rows_kv)?,
                    1,
                    n,
                )?;
                let memory = sc.memory_kv.slice(rows_kv)?;
                let slots = self.inputs.index(n..2 * n)?;
                sh.append_memory(&mut self.caches, memory, stream, &slots, 0..n)?;
            } else if s + 1 < p {
                let (rows_d, rows_kv) = (..n * d, ..n * sh.memory_width());
                sh.project_memory(
                    stream,
                    sc.h.slice(rows_d)?,
                    sc.memory_kv.slice_mut(rows_kv)?,
                    s + 1,
                    n,
                )?;
                let memory = sc.memory_kv.slice(rows_kv)?;
                let slots = self.inputs.index((s + 1) * n..(s + 2) * n)?;
                sh.append_memory(&mut self.caches, memory, stream, &slots, 0..n)?;
            }
            if fork.is_some() && s > 0 {
                joins.push(stream.record_event()?);
            }
        }
        if self.broken_join.is_none() {
            for join in &joins {
                stream0.wait_event(join)?;
            }
        }
        let last = *sections.last().expect("at least one section");
        // Recurrent positions take the logits of their one pass (no mix).
        let normed = match self.mix.as_mut() {
            Some(mix) if !recurrent => {
                for &(s, out) in &outputs {
                    mix.accumulate(stream0, s, self.scratch[s].x[out].slice(..n * d)?)?;
                }
                let rows = Rows { rows: n, dim: d };
                mix.finish(
                    stream0,
                    &sh.weights.final_norm,
                    rows,
                    cfg.rms_norm_eps as f32,
                )?;
                &mix.normed
            }
            _ => &self.scratch[last].h,
        };
        lm_head(stream0, sh, normed.slice(..n * d)?, &mut self.logits, n)
    }

    /// A Batched step on the cuBLAS path: pass s of sequence b is row s·B + b of one scratch;
    /// every layer's self-attention and MLP run as one GEMM over all p·B rows.
    fn launch_batched_step(&mut self, n: usize) -> Result<()> {
        let sh = &self.shared;
        let cfg = &sh.cfg;
        let (p, d) = (cfg.sections(), cfg.hidden_size);
        let stream = &self.streams[0];
        let index = self.inputs.index(0..p * n)?;
        let sc = &mut self.scratch[0];
        let ends: Vec<&DeviceBuffer<f32>> = (0..p)
            .map(|s| {
                if s + 1 < p {
                    &sh.weights.memory_norms[s]
                } else {
                    &sh.weights.final_norm
                }
            })
            .collect();
        let out = sh.run_batched(&mut self.caches, sc, stream, &index, n, &ends)?;
        for s in 0..p - 1 {
            let pass = s * n..(s + 1) * n;
            let width = sh.memory_width();
            let rows_kv = pass.start * width..pass.end * width;
            sh.project_memory(
                stream,
                sc.h.slice(pass.start * d..pass.end * d)?,
                sc.memory_kv.slice_mut(rows_kv.clone())?,
                s + 1,
                n,
            )?;
            let memory = sc.memory_kv.slice(rows_kv)?;
            let reader = pass.start + n..pass.end + n;
            sh.append_memory(&mut self.caches, memory, stream, &index, reader)?;
        }
        self.finish_batched_step(n, out)
    }

    /// A Grouped step (fused GEMVs, at most 16 rows a section): pass s of sequence b is row
    /// s·B + b of one scratch; layer j of every section runs as one grouped GEMV per
    /// projection, one self-attention over all p·B rows and one cross-attention over the rows
    /// of sections ≥ 1; then one GEMV hands every section's memory to the next.
    fn launch_grouped_step(&mut self, n: usize) -> Result<()> {
        let sh = &self.shared;
        let cfg = &sh.cfg;
        let (p, d) = (cfg.sections(), cfg.hidden_size);
        let stream = &self.streams[0];
        let index = self.inputs.index(0..p * n)?;
        let sc = &mut self.scratch[0];
        sh.fused_embed(sc, stream, &index, 0..p * n)?;
        sh.run_grouped_fused(&mut self.caches, sc, stream, &index, n)?;
        if p > 1 {
            // Writer s's rows s·B.. hand over at reader s + 1's rows (s + 1)·B.. (slot i of
            // step i, which no section reads during step i).
            let x = sc.x[0].slice(..(p - 1) * n * d)?;
            let norms: Vec<&DeviceBuffer<f32>> = sh.weights.memory_norms.iter().collect();
            sh.fused_memory(&mut self.caches, x, stream, &index, &norms, 1..p, n..p * n)?;
        }
        let last = (p - 1) * n * d..p * n * d;
        if self.mix.is_none() {
            rmsnorm(
                stream,
                &sc.x[0].slice(last.clone())?,
                &sh.weights.final_norm,
                &mut sc.h.slice_mut(last)?,
                Rows { rows: n, dim: d },
                cfg.rms_norm_eps as f32,
            )?;
        }
        self.finish_batched_step(n, 0)
    }

    /// The logits of a Batched or Grouped step whose passes' outputs are in residual buffer `out`: from
    /// the last pass (its final norm already in `h`), or from the output mix of all passes.
    fn finish_batched_step(&mut self, n: usize, out: usize) -> Result<()> {
        let sh = &self.shared;
        let cfg = &sh.cfg;
        let (p, d) = (cfg.sections(), cfg.hidden_size);
        let stream = &self.streams[0];
        let sc = &self.scratch[0];
        let normed = match self.mix.as_mut() {
            Some(mix) => {
                for s in 0..p {
                    mix.accumulate(stream, s, sc.x[out].slice(s * n * d..(s + 1) * n * d)?)?;
                }
                let rows = Rows { rows: n, dim: d };
                mix.finish(
                    stream,
                    &sh.weights.final_norm,
                    rows,
                    cfg.rms_norm_eps as f32,
                )?;
                mix.normed.slice(..n * d)?
            }
            None => sc.h.slice((p - 1) * n * d..p * n * d)?,
        };
        lm_head(stream, sh, normed, &mut self.logits, n)
    }
}

/// logits[..n] = normed · lm_headᵀ (f32) on `stream`.
fn lm_head<T: Activation>(
    stream: &Stream,
    sh: &Shared<T>,
    normed: DeviceView<'_, T>,
    logits: &mut DeviceBuffer<f32>,
    n: usize,
) -> Result<()> {
    let (d, vocab) = (sh.cfg.hidden_size, sh.cfg.vocab_size);
    linear(
        stream,
        &normed,
        sh.weights.lm_head(),
        &mut logits.slice_mut(..n * vocab)?,
        GemmShape::new(n, vocab, d),
    )?;
    Ok(())
}
