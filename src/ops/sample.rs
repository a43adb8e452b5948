//! Token sampling from rows of f32 logits (`cuda/sample.cu`, docs/MODEL.md "Sampling").
//!
//! Every row has its own settings ([`SamplingConfig`] and a counter, packed by [`pack_rows`]
//! into device memory), so greedy rows, sampled rows and rows with different settings share one
//! call, and a call's launches depend on its shape only (one captured graph serves every mix of
//! settings). Greedy when the temperature is 0 or top_k is 1 (highest logit, lowest id among
//! ties); otherwise temperature, top-k and top-p with the counter-based random number
//! `uniform(seed, counter)` of `stagformer_ref::sample`, so that a token depends only on the
//! logits, the row's settings and its counter (the token's index in its request): the same on
//! every run, every device and whichever row the request occupies.
//!
//! [`sample_checked`] also returns each chosen token's log-probability under the raw logits,
//! `log_softmax(logits)[token]` in f32 (before temperature and filters).
//!
//! The kernels select without sorting (radix select over the logits' bits) and add the f64
//! weights of the reference as exact fixed-point integers; see `cuda/sample.cu` for why their
//! token equals the reference's except at near-exact ties of cumulative weight.
//!
//! Two kernels give the same token on every row ([`SampleKernel`]): the default spreads each
//! row over many blocks that meet in a [`SampleWorkspace`]; the one-block kernel streams a row
//! through one block and needs no workspace memory.

use crate::device::kernel::{stag_kernel, LaunchConfig};
use crate::device::{
    AsDeviceView, AsDeviceViewMut, DeviceBuffer, DeviceView, DeviceViewMut, Stream,
};
use crate::error::{DeviceError, Result};
use crate::ffi::{SampleParams, StagSampleRow};

stag_kernel!(static SAMPLE_F32: SampleParams = sample_f32 in SAMPLE);
stag_kernel!(static SAMPLE_MULTI_PREPARE_F32: SampleParams = sample_multi_prepare_f32 in SAMPLE);
stag_kernel!(static SAMPLE_MULTI_STEP_F32: SampleParams = sample_multi_step_f32 in SAMPLE);
stag_kernel!(static SAMPLE_MULTI_TAIL_F32: SampleParams = sample_multi_tail_f32 in SAMPLE);

/// Dynamic shared memory of the kernel: its histograms and candidate list (`SMEM_BYTES` in
/// `cuda/sample.cu`).
const SAMPLE_SMEM_BYTES: u32 = 73_728;
const MAX_THREADS: usize = 1024;
/// Logits per thread below which a row gets fewer threads (small vocabularies).
const LOGITS_PER_THREAD: usize = 16;

/// Logits per block of the multi-block kernel (at most 2048: its 32-bit block sums rely on it).
/// 1024 gives a 128k-token row about 125 blocks, one per SM of an H100/H200.
const MULTI_BLOCK_CHUNK: u32 = 1024;
const MULTI_BLOCK_THREADS: u32 = 256;
/// `MB_SMEM_BYTES` in `cuda/sample.cu`.
const MULTI_BLOCK_SMEM_BYTES: u32 = 90_112;
/// `MB_FIXED_ROW_BYTES` in `cuda/sample.cu`: a row's state, histogram and candidate list.
const MULTI_BLOCK_FIXED_ROW_BYTES: usize = 107_008;
/// Bits of a select's composite key chosen per pass (`DIGIT_BITS` in `cuda/sample.cu`).
const DIGIT_BITS: u32 = 11;

/// Which sampling kernel a [`SampleWorkspace`] runs. Both give the same token on every row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SampleKernel {
    /// A row spread over blocks of 1024 logits that meet in the workspace (the default).
    #[default]
    MultiBlock,
    /// One block per row (the original kernel; no workspace memory).
    OneBlock,
}

/// The device memory the multi-block sampler's blocks meet in: per row a state, a histogram,
/// a candidate list (about 105 KiB) and the row's fixed-point weights (8 bytes per logit).
/// Allocated and zeroed once, then reused by every call (the kernels leave their counters at
/// zero), so calls allocate nothing and can be captured in a graph. Calls that share a
/// workspace must be ordered (the wrapper borrows it mutably; use one per stream).
pub struct SampleWorkspace {
    /// u32 words (the device element types have no u64); allocations are 256-byte aligned, as
    /// the kernels' u64 fields need.
    buffer: Option<DeviceBuffer<u32>>,
    max_rows: usize,
    max_vocab: usize,
    kernel: SampleKernel,
}

impl SampleWorkspace {
    /// A multi-block workspace for calls of up to `max_rows` rows of up to `max_vocab` logits,
    /// zeroed in order on `stream`.
    pub fn new(stream: &Stream, max_rows: usize, max_vocab: usize) -> Result<Self> {
        Self::with_kernel(stream, max_rows, max_vocab, SampleKernel::MultiBlock)
    }

    /// A workspace that runs `kernel`; [`SampleKernel::OneBlock`] allocates nothing and takes
    /// any shape.
    pub fn with_kernel(
        stream: &Stream,
        max_rows: usize,
        max_vocab: usize,
        kernel: SampleKernel,
    ) -> Result<Self> {
        if kernel == SampleKernel::OneBlock {
            return Ok(Self::one_block());
        }
        for (arg, value) in [("max_rows", max_rows), ("max_vocab", max_vocab)] {
            if value == 0 {
                return Err(DeviceError::invalid(arg, "must be at least 1"));
            }
        }
        // The kernel's row index is a u32 and its byte offsets u64.
        if u32::try_from(max_rows).is_err() {
            return Err(DeviceError::invalid(
                "max_rows",
                format!("{max_rows} exceeds u32"),
            ));
        }
        let bytes = Self::bytes_for(max_rows, max_vocab)?;
        Ok(SampleWorkspace {
            buffer: Some(DeviceBuffer::alloc_zeroed(stream, bytes / 4)?),
            max_rows,
            max_vocab,
            kernel,
        })
    }

    /// The one-block kernel, which needs no memory.
    pub fn one_block() -> Self {
        SampleWorkspace {
            buffer: None,
            max_rows: usize::MAX,
            max_vocab: usize::MAX,
            kernel: SampleKernel::OneBlock,
        }
    }

    /// The kernel calls with this workspace run.
    pub fn kernel(&self) -> SampleKernel {
        self.kernel
    }

    /// The most rows a call may have.
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    /// The largest vocabulary a call may have.
    pub fn max_vocab(&self) -> usize {
        self.max_vocab
    }

    /// Bytes a multi-block workspace for `max_rows` rows of up to `max_vocab` logits
    /// allocates (what [`SampleWorkspace::new`] takes; memory plans ask before allocating).
    pub fn bytes_for(max_rows: usize, max_vocab: usize) -> Result<usize> {
        max_rows
            .checked_mul(max_vocab)
            .and_then(|n| n.checked_mul(8))
            .and_then(|w| {
                max_rows
                    .checked_mul(MULTI_BLOCK_FIXED_ROW_BYTES)
                    .and_then(|f| f.checked_add(w))
            })
            .ok_or_else(|| DeviceError::overflow("max_vocab", "workspace bytes"))
    }

    /// Bytes of device memory it holds.
    pub fn bytes(&self) -> usize {
        self.buffer.as_ref().map_or(0, |b| b.len() * 4)
    }
}

impl std::fmt::Debug for SampleWorkspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampleWorkspace")
            .field("kernel", &self.kernel)
            .field("max_rows", &self.max_rows)
            .field("max_vocab", &self.max_vocab)
            .field("bytes", &self.bytes())
            .finish()
    }
}

/// Launches of one multi-block call, whatever its rows' settings: 1 (`prepare`: every row's
/// maximum and log-sum-exp; greedy rows finish here), then one per 11-bit digit of the
/// `32 + id_bits`-bit key for each of the three selects a row may need (top-k, top-p, the token),
/// then 1 (the tail, which finishes rows whose candidates were compacted). Launches with nothing
/// left to do for a row return at once. A one-token vocabulary is always greedy: 1.
pub fn multi_block_launches(vocab: usize) -> usize {
    if vocab <= 1 {
        return 1;
    }
    // id_bits = bits of vocab - 1 (vocab >= 2 here).
    let id_bits = usize::BITS - (vocab - 1).leading_zeros();
    let levels = (32 + id_bits).div_ceil(DIGIT_BITS) as usize;
    1 + 3 * levels + 1
}

/// u32 words of one row's settings on the device (`StagSampleRow` in `stag_params.h`).
pub const SAMPLE_ROW_WORDS: usize = std::mem::size_of::<StagSampleRow>() / 4;

/// The device layout of `config` for the token at index `counter` of its request. Every field
/// is 32 bits wide, so a row is [`SAMPLE_ROW_WORDS`] u32 words. top_k beyond u32 keeps every
/// token, as any k >= vocab does.
fn row_words(config: &SamplingConfig, counter: u32) -> [u32; SAMPLE_ROW_WORDS] {
    [
        config.seed as u32,
        (config.seed >> 32) as u32,
        counter,
        u32::try_from(config.top_k).unwrap_or(0),
        config.temperature.to_bits(),
        config.top_p.to_bits(),
    ]
}

/// Packs one [`SamplingConfig`] and one counter per row (the token's index in its request,
/// which keys the row's random draw `uniform(seed, counter)`) into the u32 words [`sample`]
/// reads: upload them into a buffer of `rows ·` [`SAMPLE_ROW_WORDS`] u32. Every row is
/// validated first; a bad one is an [`DeviceError::InvalidArgument`] naming the field, the
/// reason saying which row.
pub fn pack_rows(configs: &[SamplingConfig], counters: &[u32]) -> Result<Vec<u32>> {
    check_len("counters", counters.len(), configs.len())?;
    let mut words = Vec::with_capacity(configs.len().saturating_mul(SAMPLE_ROW_WORDS));
    for (row, (config, &counter)) in configs.iter().zip(counters).enumerate() {
        config.validate().map_err(|e| match e {
            DeviceError::InvalidArgument { arg, reason } => DeviceError::InvalidArgument {
                arg,
                reason: format!("row {row}: {reason}"),
            },
            other => other,
        })?;
        words.extend_from_slice(&row_words(config, counter));
    }
    Ok(words)
}

/// How the next token is chosen, as the sampling kernels take it.
///
/// The same four numbers as `stagformer_ref::sample::SamplingParams`, whose `sample` defines
/// the token these kernels pick. This crate does not depend on the reference, so its launches
/// take this type; the decoder converts its settings into it in one place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingConfig {
    /// Divides the logits before the softmax; 0 = greedy. Finite and ≥ 0.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = all.
    pub top_k: usize,
    /// Keep the smallest most-likely set whose probability reaches p; 1 = all. In (0, 1].
    pub top_p: f32,
    /// Seed of the counter-based draw: a row uses `uniform(seed, counter)`, its counter being the
    /// token's index in its request.
    pub seed: u64,
}

impl SamplingConfig {
    /// Always the most likely token (lowest id among ties).
    pub const GREEDY: SamplingConfig = SamplingConfig {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
    };

    /// Temperature finite and >= 0; top_p in (0, 1].
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(DeviceError::invalid(
                "temperature",
                format!("{} must be finite and >= 0", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(DeviceError::invalid(
                "top_p",
                format!("{} must be in (0, 1]", self.top_p),
            ));
        }
        Ok(())
    }

    /// Whether these settings always pick the arg-max (temperature 0 or top_k 1): no random
    /// number, and a row that exits after the first pass.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }
}

/// `rows` rows of `vocab` logits, row r starting at element `r · row_stride`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleShape {
    /// Rows sampled (one token each).
    pub rows: usize,
    /// Logits per row: token ids are `0..vocab`.
    pub vocab: usize,
    /// Elements from one row's first logit to the next's (≥ `vocab`).
    pub row_stride: usize,
}

impl SampleShape {
    /// Rows stored one after another.
    pub fn contiguous(rows: usize, vocab: usize) -> Self {
        SampleShape {
            rows,
            vocab,
            row_stride: vocab,
        }
    }
}

/// Samples one token per row of `logits` into `tokens`, row r with the settings
/// `settings[r ·` [`SAMPLE_ROW_WORDS`]`..]` (made by [`pack_rows`]).
///
/// `logits` holds the rows of `shape` (its length between `(rows − 1) · row_stride + vocab` and
/// `rows · row_stride`); `tokens` holds `rows` elements and `settings` `rows ·`
/// [`SAMPLE_ROW_WORDS`]. Token ids are in `[0, vocab)`. `workspace` picks the kernel; a
/// multi-block one must have room for `shape` (rows and vocab at most its maxima) and live on
/// the stream's device. The launches depend on `shape` and the workspace only, never on the
/// settings' values (which the kernels read from device memory).
pub fn sample(
    stream: &Stream,
    logits: &impl AsDeviceView<f32>,
    tokens: &mut impl AsDeviceViewMut<i32>,
    settings: &impl AsDeviceView<u32>,
    shape: SampleShape,
    workspace: &mut SampleWorkspace,
) -> Result<()> {
    let (logits, settings) = (logits.view(), settings.view());
    let tokens = tokens.view_mut();
    sample_into(stream, logits, tokens, None, settings, shape, workspace)
}

/// [`sample`], also writing `logprobs[r]`, the log-probability of row r's token under the raw
/// logits (`log_softmax(logits)[token]` in f32, before temperature, top-k and top-p), and
/// `nonfinite[r]` = 1 when row r holds a NaN or an infinity (else 0), so that a caller sampling
/// on the device can refuse such a token instead of using it silently. The tokens are the same
/// as [`sample`]'s; a row's log-probability is meaningless when its flag is set.
#[allow(clippy::too_many_arguments)]
pub fn sample_checked(
    stream: &Stream,
    logits: &impl AsDeviceView<f32>,
    tokens: &mut impl AsDeviceViewMut<i32>,
    logprobs: &mut impl AsDeviceViewMut<f32>,
    nonfinite: &mut impl AsDeviceViewMut<i32>,
    settings: &impl AsDeviceView<u32>,
    shape: SampleShape,
    workspace: &mut SampleWorkspace,
) -> Result<()> {
    let (logits, settings) = (logits.view(), settings.view());
    let (tokens, flags, logprobs) = (tokens.view_mut(), nonfinite.view_mut(), logprobs.view_mut());
    check_len("nonfinite", flags.len(), shape.rows)?;
    check_len("logprobs", logprobs.len(), shape.rows)?;
    sample_into(
        stream,
        logits,
        tokens,
        Some((logprobs, flags)),
        settings,
        shape,
        workspace,
    )
}

fn sample_into(
    stream: &Stream,
    logits: DeviceView<'_, f32>,
    mut tokens: DeviceViewMut<'_, i32>,
    mut extra: Option<(DeviceViewMut<'_, f32>, DeviceViewMut<'_, i32>)>,
    settings: DeviceView<'_, u32>,
    shape: SampleShape,
    workspace: &mut SampleWorkspace,
) -> Result<()> {
    let (rows, vocab, stride) = check_shape(shape)?;
    check_logits_len(logits.len(), shape)?;
    check_len("tokens", tokens.len(), shape.rows)?;
    let setting_words = shape
        .rows
        .checked_mul(SAMPLE_ROW_WORDS)
        .ok_or_else(|| DeviceError::overflow("rows", "rows × settings words"))?;
    check_len("settings", settings.len(), setting_words)?;
    if shape.rows > workspace.max_rows {
        return Err(DeviceError::invalid(
            "rows",
            format!(
                "{} exceeds the workspace's max_rows {}",
                shape.rows, workspace.max_rows
            ),
        ));
    }
    if shape.vocab > workspace.max_vocab {
        return Err(DeviceError::invalid(
            "vocab",
            format!(
                "{} exceeds the workspace's max_vocab {}",
                shape.vocab, workspace.max_vocab
            ),
        ));
    }
    if rows == 0 {
        return Ok(());
    }
    let (logprobs_ptr, nonfinite_ptr) = match extra.as_mut() {
        Some((lp, nf)) => (lp.as_mut_ptr().cast(), nf.as_mut_ptr().cast()),
        None => (std::ptr::null_mut(), std::ptr::null_mut()),
    };
    let mut params = SampleParams {
        logits: logits.as_ptr().cast(),
        tokens: tokens.as_mut_ptr().cast(),
        settings: settings.as_ptr().cast(),
        logprobs: logprobs_ptr,
        workspace: std::ptr::null_mut(),
        nonfinite: nonfinite_ptr,
        workspace_bytes: 0,
        rows,
        vocab,
        logits_row_stride: stride,
        workspace_rows: 0,
        chunk: 0,
        reserved: 0,
    };
    let mut retained = vec![
        logits.retain("logits"),
        tokens.retain("tokens"),
        settings.retain("settings"),
    ];
    if let Some((lp, nf)) = &extra {
        retained.push(lp.retain("logprobs"));
        retained.push(nf.retain("nonfinite"));
    }
    let Some(buffer) = workspace.buffer.as_mut() else {
        // SAFETY: every pointer comes from a view retained above whose length was checked: the
        // kernel reads row r's `vocab` logits from r · stride (all within `logits`) and the
        // SAMPLE_ROW_WORDS words of settings row r (a StagSampleRow of 32-bit fields, so the
        // u32 buffer's alignment suffices), and writes element r of `tokens` (and of `logprobs`
        // and `nonfinite` when given) for r < rows, nothing else; it uses the dynamic shared
        // memory size passed here and no workspace. The written views are borrowed mutably, so
        // no other safe code aliases them.
        return unsafe { stream.launch(&SAMPLE_F32, launch_config(shape), params, &retained) };
    };
    let mut ws = buffer.view_mut();
    params.workspace = ws.as_mut_ptr().cast();
    params.workspace_bytes = (ws.len() * 4) as u64;
    // max_rows fits u32 (checked at construction).
    params.workspace_rows = workspace.max_rows as u32;
    params.chunk = MULTI_BLOCK_CHUNK;
    retained.push(ws.retain("workspace"));
    // Cannot overflow: vocab <= 2^31 - 1.
    let chunks = vocab.div_ceil(MULTI_BLOCK_CHUNK);
    let launch = LaunchConfig {
        grid: [rows, chunks, 1],
        block: [MULTI_BLOCK_THREADS, 1, 1],
        dynamic_smem_bytes: 0,
    };
    let with_smem = LaunchConfig {
        dynamic_smem_bytes: MULTI_BLOCK_SMEM_BYTES,
        ..launch
    };
    // SAFETY (every launch below): the pointers of `logits`, `tokens`, `settings`, `logprobs`
    // and `nonfinite` are as for the one-block kernel above. The workspace holds `max_rows`
    // fixed parts of MULTI_BLOCK_FIXED_ROW_BYTES and `max_rows · max_vocab` weights (its
    // construction), and rows <= max_rows and vocab <= max_vocab were checked, so row r's fixed
    // part and its `vocab` weights at r · vocab (what the kernels touch, besides row r of the
    // outputs; the log-sum-exp partials take the first `chunks` <= vocab of those weights) are
    // inside it; the kernels also check this against `workspace_bytes`. The workspace and the
    // outputs are borrowed mutably, so no other safe code aliases them; the launches are ordered
    // on `stream`, which is what orders the blocks' meetings between launches.
    unsafe { stream.launch(&SAMPLE_MULTI_PREPARE_F32, launch, params, &retained)? };
    let launches = multi_block_launches(shape.vocab);
    if launches == 1 {
        return Ok(());
    }
    for _ in 2..launches {
        // SAFETY: see above.
        unsafe { stream.launch(&SAMPLE_MULTI_STEP_F32, with_smem, params, &retained)? };
    }
    let tail = LaunchConfig {
        grid: [rows, 1, 1],
        ..with_smem
    };
    // SAFETY: see above (one block per row, which touches only that row's fixed part).
    unsafe { stream.launch(&SAMPLE_MULTI_TAIL_F32, tail, params, &retained) }
}

fn check_shape(shape: SampleShape) -> Result<(u32, u32, u32)> {
    if shape.vocab == 0 {
        return Err(DeviceError::invalid("vocab", "must be at least 1"));
    }
    // Token ids are i32.
    let vocab = u32::try_from(shape.vocab)
        .ok()
        .filter(|&v| v <= i32::MAX as u32)
        .ok_or_else(|| {
            DeviceError::invalid("vocab", format!("{} exceeds 2^31 - 1", shape.vocab))
        })?;
    let rows = u32::try_from(shape.rows)
        .ok()
        .filter(|&r| r <= i32::MAX as u32)
        .ok_or_else(|| DeviceError::invalid("rows", format!("{} exceeds 2^31 - 1", shape.rows)))?;
    if shape.row_stride < shape.vocab {
        return Err(DeviceError::invalid(
            "row_stride",
            format!("{} is below vocab {}", shape.row_stride, shape.vocab),
        ));
    }
    let stride = u32::try_from(shape.row_stride).map_err(|_| {
        DeviceError::invalid("row_stride", format!("{} exceeds u32", shape.row_stride))
    })?;
    shape
        .rows
        .checked_mul(shape.row_stride)
        .ok_or_else(|| DeviceError::overflow("rows", "rows × row_stride"))?;
    Ok((rows, vocab, stride))
}

fn check_logits_len(found: usize, shape: SampleShape) -> Result<()> {
    if shape.rows == 0 {
        return Ok(());
    }
    // Cannot overflow: check_shape bounded rows × row_stride.
    let min = (shape.rows - 1) * shape.row_stride + shape.vocab;
    let max = shape.rows * shape.row_stride;
    if found < min || found > max {
        let expected = if min == max {
            format!("{min} elements")
        } else {
            format!("{min} to {max} elements")
        };
        return Err(DeviceError::ShapeMismatch {
            arg: "logits",
            expected: format!(
                "{expected} ({} rows of {} at stride {})",
                shape.rows, shape.vocab, shape.row_stride
            ),
            found: format!("{found} elements"),
        });
    }
    Ok(())
}

fn check_len(arg: &'static str, found: usize, expected: usize) -> Result<()> {
    if found != expected {
        return Err(DeviceError::LengthMismatch {
            arg,
            expected,
            found,
        });
    }
    Ok(())
}

/// One block per row; small vocabularies get fewer threads (about 16 logits each).
fn launch_config(shape: SampleShape) -> LaunchConfig {
    let threads = shape
        .vocab
        .div_ceil(LOGITS_PER_THREAD)
        .next_multiple_of(32)
        .clamp(32, MAX_THREADS);
    LaunchConfig::linear(shape.rows as u32, threads as u32, SAMPLE_SMEM_BYTES)
}
