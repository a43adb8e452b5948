//! Kernel benchmarks on a CUDA GPU: criterion, timed on the GPU with CUDA events.
//!
//! ```sh
//! . .cache/cuda-13.0/env
//! cargo bench --features stagformer-kernels/cuda --bench kernels
//! cargo bench --features stagformer-kernels/cuda --bench kernels -- \
//!     --warm-up-time 1 --measurement-time 2 --noplot rmsnorm
//! ```
//!
//! Without a GPU, or in a build without the `cuda` feature, it prints one line saying that the
//! kernel benches did not run and exits 0. Nothing runs on the emulated device: its timings
//! describe the emulator, not the kernels.
//!
//! # Method
//!
//! * **GPU time.** Each criterion sample is timed with a pair of timed events around its
//!   launches. So that the events see back-to-back GPU execution rather than the host's launch
//!   rate, the stream is first held by a host function that waits on a gate; up to
//!   [`GATE_BATCH`] launches are queued behind it, then the gate opens. (Decode runs from CUDA
//!   graphs, where launch cost is gone as well.)
//! * **Bytes.** `Throughput::Bytes` is what the kernel must move: each input read once, each
//!   output written once. The report divides it by the time and compares it with the measured
//!   copy bandwidth; FLOPs against the measured GEMM rate.
//! * **Rotated operands.** Each bench allocates [`copies_for`] copies of all its operands and
//!   call `i` uses copy `i mod copies`, so that one pass over the copies is at least
//!   [`ROTATE_BYTES`] (4× the H100's 50 MB L2) and repeated calls cannot run from L2. Operand
//!   sets so small that even [`MAX_COPIES`] copies fit in L2 (norms of a few rows) are measured
//!   L2-resident, as they are in decode, where the previous kernel has just written them.
//! * **Dry run.** `STAGFORMER_BENCH_DRY_RUN=1` touches no device: it lists the benches and
//!   writes `roofline.json` with datasheet ceilings, to check the list and the report tool.
//! * **Ceilings.** Before the benches: a 1 GiB device-to-device copy (bytes read + written) and
//!   an 8192³ bf16 GEMM through cuBLAS on random data, median of [`CEILING_REPS`] runs each.
//!   Written with every bench's bytes and FLOPs to `roofline.json` in criterion's output
//!   directory (`$CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`, else
//!   `target/criterion`), or to `$STAGFORMER_ROOFLINE_JSON`. `stagformer-bench-report` reads it.
//!
//! # Adding a kernel
//!
//! Write a function returning `Vec<KernelBench>` (see [`rmsnorm_benches`]: shape, bytes, FLOPs,
//! and a setup closure that allocates the rotated operands and returns the launch closure) and
//! add it to [`SUITES`]. The shape's `(name, value)` pairs become the criterion parameter
//! (`rows=1,d=768`) and the `shape` object in `roofline.json`, which `python/torch_compare.py`
//! reads to time the PyTorch equivalent on the same shapes; for attention use `batch`, `heads`,
//! `kv_heads`, `head_dim`, `context`. For example, SwiGLU over a fused `[rows, 2F]` gate|up:
//!
//! ```ignore
//! fn swiglu_benches() -> Vec<KernelBench> {
//!     let mut benches = Vec::new();
//!     for (rows, ffn) in [(1, 5632), (64, 5632), (1, 14336), (64, 14336)] {
//!         let bytes = rows * ffn * 2 * 3; // read gate and up, write out (bf16)
//!         let shape = SwigluShape { rows: rows as usize, ffn: ffn as usize };
//!         benches.push(KernelBench::new("swiglu", "bf16", &[("rows", rows), ("f", ffn)],
//!             bytes, rows * ffn * 5, move |stream| {
//!                 let copies = copies_for(bytes);
//!                 let gu = random_copies::<bf16>(stream, (2 * rows * ffn) as usize, copies, 11)?;
//!                 let mut out = output_copies::<bf16>(stream.device(), (rows * ffn) as usize, copies)?;
//!                 Ok(Box::new(move |s: &Stream, call: u64| {
//!                     let c = (call % copies) as usize;
//!                     swiglu(s, &gu[c], &mut out[c], shape)
//!                 }))
//!             }));
//!     }
//!     benches
//! }
//! ```

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use half::bf16;
use stagformer_kernels::device::{Device, DeviceBuffer, Stream};
use stagformer_kernels::dtype::DeviceElem;
use stagformer_kernels::error::DeviceError;
use stagformer_kernels::ops::gemm::{linear, GemmShape};
use stagformer_kernels::ops::rmsnorm::{add_rmsnorm, rmsnorm, Rows};

type Result<T, E = DeviceError> = std::result::Result<T, E>;

#[path = "kernels/decode_suites.rs"]
mod decode_suites;
#[path = "kernels/gemv_grouped_suite.rs"]
mod gemv_grouped_suite;
#[path = "kernels/gemv_suite.rs"]
mod gemv_suite;

/// Bytes one pass over a bench's operand copies must at least touch: 4× the H100's L2.
const ROTATE_BYTES: u64 = 200_000_000;
/// Most operand copies a bench allocates.
const MAX_COPIES: u64 = 64;
/// Most launches queued behind one gate. The driver's queue of pending launches holds about a
/// thousand entries; a launch beyond that would block the host while the gate blocks the GPU.
const GATE_BATCH: u64 = 256;
/// Timed runs of each ceiling measurement.
const CEILING_REPS: usize = 10;
const EPS: f32 = 1e-6;

/// The suites, one per kernel. Each returns its benches; a new kernel adds a line here.
const SUITES: &[fn() -> Vec<KernelBench>] = &[
    rmsnorm_benches,
    add_rmsnorm_benches,
    linear_benches,
    gemv_grouped_suite::gemv_grouped_benches,
    decode_suites::embedding_benches,
    decode_suites::rope_append_benches,
    decode_suites::memory_kv_append_benches,
    decode_suites::swiglu_benches,
    decode_suites::attention_decode_benches,
    decode_suites::attention_prefill_benches,
    decode_suites::sample_benches,
    decode_suites::axpby_benches,
    gemv_suite::gemv_benches,
];

/// Launches the kernel once, on operand copy `call mod copies`.
type Launcher = Box<dyn FnMut(&Stream, u64) -> Result<()>>;
/// Allocates a bench's operands (with their copies) and returns its launcher.
type Setup = Box<dyn Fn(&Stream) -> Result<Launcher>>;

/// One benchmark: a kernel at one shape.
pub struct KernelBench {
    /// Criterion group: the kernel's name (`rmsnorm`, `linear`, ...).
    kernel: &'static str,
    /// Criterion function id: the element types (`bf16`), plus what distinguishes benches
    /// of equal shape (`bf16.q_o`).
    variant: String,
    /// The shape as `(name, value)` pairs, in order.
    shape: Vec<(&'static str, u64)>,
    /// Bytes the kernel must move per call (inputs read once, outputs written once).
    bytes: u64,
    /// Floating-point operations per call.
    flops: u64,
    setup: Setup,
}

impl KernelBench {
    fn new(
        kernel: &'static str,
        variant: impl Into<String>,
        shape: &[(&'static str, u64)],
        bytes: u64,
        flops: u64,
        setup: impl Fn(&Stream) -> Result<Launcher> + 'static,
    ) -> Self {
        KernelBench {
            kernel,
            variant: variant.into(),
            shape: shape.to_vec(),
            bytes,
            flops,
            setup: Box::new(setup),
        }
    }

    /// The criterion parameter: `rows=1,d=768`.
    fn parameter(&self) -> String {
        let parts: Vec<String> = self.shape.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.join(",")
    }

    /// Criterion's full id: `group/function/parameter`.
    fn full_id(&self) -> String {
        format!("{}/{}/{}", self.kernel, self.variant, self.parameter())
    }
}

/// How many copies of a `set_bytes` operand set make one pass at least [`ROTATE_BYTES`].
fn copies_for(set_bytes: u64) -> u64 {
    ROTATE_BYTES.div_ceil(set_bytes.max(1)).clamp(2, MAX_COPIES)
}

/// `copies` device buffers holding the same `len` random values in [-1, 1).
fn random_copies<T: DeviceElem + FromF32>(
    stream: &Stream,
    len: usize,
    copies: u64,
    seed: u64,
) -> Result<Vec<DeviceBuffer<T>>> {
    let host = random_host::<T>(len, seed);
    let first = DeviceBuffer::from_host(stream, &host)?;
    let mut all = Vec::with_capacity(copies as usize);
    for _ in 1..copies {
        all.push(first.try_clone(stream)?);
    }
    all.push(first);
    Ok(all)
}

/// `copies` output buffers of `len` elements (never read before they are written).
fn output_copies<T: DeviceElem>(
    device: &Device,
    len: usize,
    copies: u64,
) -> Result<Vec<DeviceBuffer<T>>> {
    (0..copies)
        .map(|_| DeviceBuffer::alloc(device, len))
        .collect()
}

trait FromF32: Copy {
    fn from_f32(v: f32) -> Self;
}

impl FromF32 for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl FromF32 for bf16 {
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

impl FromF32 for u32 {
    fn from_f32(v: f32) -> Self {
        v.to_bits()
    }
}

/// Random values in [-1, 1) from a xorshift generator: never zeros (which can run faster than
/// real data), cheap enough for operands of hundreds of megabytes.
fn random_host<T: FromF32>(len: usize, seed: u64) -> Vec<T> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            T::from_f32((s >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        })
        .collect()
}

/// Holds a stream until opened; opens when dropped, so an error cannot leave the GPU blocked.
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn close(stream: &Stream) -> Result<Gate> {
        let state = Arc::new((Mutex::new(false), Condvar::new()));
        let held = Arc::clone(&state);
        stream.host_fn(move || {
            let (open, cv) = &*held;
            let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
            while !*open {
                open = cv.wait(open).unwrap_or_else(|p| p.into_inner());
            }
        })?;
        Ok(Gate(state))
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let (open, cv) = &*self.0;
        *open.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }
}

/// GPU time of `iters` calls of `launch`, queued behind gates in batches of [`GATE_BATCH`].
fn gpu_time(
    stream: &Stream,
    launch: &mut Launcher,
    first_call: u64,
    iters: u64,
) -> Result<Duration> {
    let mut ms = 0f64;
    let mut done = 0;
    while done < iters {
        let n = (iters - done).min(GATE_BATCH);
        let gate = Gate::close(stream)?;
        let start = stream.record_timed_event()?;
        for i in 0..n {
            launch(stream, first_call + done + i)?;
        }
        let end = stream.record_timed_event()?;
        drop(gate);
        ms += f64::from(start.elapsed_ms(&end)?);
        done += n;
    }
    Ok(Duration::from_secs_f64(ms / 1e3))
}

// ---------------------------------------------------------------------------------------------
// Suites
// ---------------------------------------------------------------------------------------------

/// Model widths the norms are measured at: 125M-, 1.3B- and 7B/8B-class models.
const NORM_DIMS: [u64; 3] = [768, 2048, 4096];
/// Decode batch rows (1, 8, 64) and a 4096-token prefill.
const NORM_ROWS: [u64; 4] = [1, 8, 64, 4096];

fn rmsnorm_benches() -> Vec<KernelBench> {
    let mut benches = Vec::new();
    for dim in NORM_DIMS {
        for rows in NORM_ROWS {
            // bf16 x read, bf16 out written, f32 weight read.
            let bytes = rows * dim * 2 * 2 + dim * 4;
            // Square and sum, scale, weight.
            let flops = rows * dim * 4;
            let shape = Rows {
                rows: rows as usize,
                dim: dim as usize,
            };
            benches.push(KernelBench::new(
                "rmsnorm",
                "bf16",
                &[("rows", rows), ("d", dim)],
                bytes,
                flops,
                move |stream| {
                    let copies = copies_for(bytes);
                    let n = shape.rows * shape.dim;
                    let x = random_copies::<bf16>(stream, n, copies, 1)?;
                    let w = random_copies::<f32>(stream, shape.dim, copies, 2)?;
                    let mut out = output_copies::<bf16>(stream.device(), n, copies)?;
                    Ok(Box::new(move |s: &Stream, call: u64| {
                        let c = (call % copies) as usize;
                        rmsnorm(s, &x[c], &w[c], &mut out[c], shape, EPS)
                    }))
                },
            ));
        }
    }
    benches
}

fn add_rmsnorm_benches() -> Vec<KernelBench> {
    let mut benches = Vec::new();
    for dim in NORM_DIMS {
        for rows in NORM_ROWS {
            // bf16 x and residual read, bf16 sum and out written, f32 weight read.
            let bytes = rows * dim * 2 * 4 + dim * 4;
            let flops = rows * dim * 5;
            let shape = Rows {
                rows: rows as usize,
                dim: dim as usize,
            };
            benches.push(KernelBench::new(
                "add_rmsnorm",
                "bf16",
                &[("rows", rows), ("d", dim)],
                bytes,
                flops,
                move |stream| {
                    let copies = copies_for(bytes);
                    let n = shape.rows * shape.dim;
                    let x = random_copies::<bf16>(stream, n, copies, 3)?;
                    let r = random_copies::<bf16>(stream, n, copies, 4)?;
                    let w = random_copies::<f32>(stream, shape.dim, copies, 5)?;
                    let mut sum = output_copies::<bf16>(stream.device(), n, copies)?;
                    let mut out = output_copies::<bf16>(stream.device(), n, copies)?;
                    Ok(Box::new(move |s: &Stream, call: u64| {
                        let c = (call % copies) as usize;
                        add_rmsnorm(s, &x[c], &r[c], &w[c], &mut sum[c], &mut out[c], shape, EPS)
                    }))
                },
            ));
        }
    }
    benches
}

/// The projections of a Llama-style model of width `d`: (name, n, k).
fn projections(d: u64, kv_heads: u64, head_dim: u64, ffn: u64) -> [(&'static str, u64, u64); 5] {
    [
        // q and o are both d × d when heads × head_dim = d.
        ("q_o", d, d),
        // k and v each.
        ("k_v", kv_heads * head_dim, d),
        // gate and up fused into one product.
        ("gate_up", 2 * ffn, d),
        ("down", d, ffn),
        ("lm_head", 32000, d),
    ]
}

fn linear_benches() -> Vec<KernelBench> {
    // (d, kv_heads, head_dim, ffn): the 1.3b preset's widths, and a Llama-3-8B-like model.
    let models = [(2048, 8, 128, 5632), (4096, 8, 128, 14336)];
    let mut benches = Vec::new();
    for (d, kv_heads, head_dim, ffn) in models {
        for (proj, n, k) in projections(d, kv_heads, head_dim, ffn) {
            let prefill: &[u64] = if proj == "lm_head" { &[] } else { &[4096] };
            for &m in [1, 8, 64].iter().chain(prefill) {
                benches.push(linear_bench(proj, d, m, n, k));
            }
        }
    }
    benches
}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ`, all bf16, for projection `proj` of a model of width `d`.
fn linear_bench(proj: &str, d: u64, m: u64, n: u64, k: u64) -> KernelBench {
    let bytes = (m * k + n * k + m * n) * 2;
    let flops = 2 * m * n * k;
    let shape = [("d", d), ("m", m), ("n", n), ("k", k)];
    let variant = format!("bf16.{proj}");
    KernelBench::new("linear", variant, &shape, bytes, flops, move |stream| {
        let copies = copies_for(bytes);
        let gemm = GemmShape::new(m as usize, n as usize, k as usize);
        let x = random_copies::<bf16>(stream, gemm.m * gemm.k, copies, 6)?;
        let w = random_copies::<bf16>(stream, gemm.n * gemm.k, copies, 7)?;
        let mut y = output_copies::<bf16>(stream.device(), gemm.m * gemm.n, copies)?;
        Ok(Box::new(move |s: &Stream, call: u64| {
            let c = (call % copies) as usize;
            linear(s, &x[c], &w[c], &mut y[c], gemm)
        }))
    })
}

// ---------------------------------------------------------------------------------------------
// Ceilings and roofline.json
// ---------------------------------------------------------------------------------------------

struct Ceiling {
    /// Bytes (copy) or FLOPs (GEMM) per run.
    work: f64,
    runs_ms: Vec<f64>,
}

impl Ceiling {
    fn median_ms(&self) -> f64 {
        let mut v = self.runs_ms.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }

    fn rate(&self) -> f64 {
        self.work / (self.median_ms() / 1e3)
    }
}

fn time_runs(
    stream: &Stream,
    warmup: usize,
    mut run: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        run()?;
    }
    stream.synchronize()?;
    let mut runs = Vec::with_capacity(CEILING_REPS);
    for _ in 0..CEILING_REPS {
        let start = stream.record_timed_event()?;
        run()?;
        let end = stream.record_timed_event()?;
        runs.push(f64::from(start.elapsed_ms(&end)?));
    }
    Ok(runs)
}

/// Device-to-device copy of 1 GiB; work = bytes read + bytes written.
fn copy_ceiling(stream: &Stream) -> Result<Ceiling> {
    let words = (1usize << 30) / 4;
    let src = DeviceBuffer::from_host(stream, &random_host::<u32>(words, 8))?;
    let mut dst = DeviceBuffer::<u32>::alloc(stream.device(), words)?;
    let runs_ms = time_runs(stream, 2, || dst.copy_from(stream, &src))?;
    Ok(Ceiling {
        work: 2.0 * (1u64 << 30) as f64,
        runs_ms,
    })
}

/// 8192³ bf16 GEMM (bf16 out, f32 accumulation) through cuBLAS, on random data.
const GEMM_N: usize = 8192;

fn gemm_ceiling(stream: &Stream) -> Result<Ceiling> {
    let n = GEMM_N;
    let x = DeviceBuffer::from_host(stream, &random_host::<bf16>(n * n, 9))?;
    let w = DeviceBuffer::from_host(stream, &random_host::<bf16>(n * n, 10))?;
    let mut y = DeviceBuffer::<bf16>::alloc(stream.device(), n * n)?;
    let shape = GemmShape::new(n, n, n);
    let runs_ms = time_runs(stream, 3, || linear(stream, &x, &w, &mut y, shape))?;
    Ok(Ceiling {
        work: 2.0 * (n as f64).powi(3),
        runs_ms,
    })
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_runs(runs: &[f64]) -> String {
    let parts: Vec<String> = runs.iter().map(|r| format!("{r:.6}")).collect();
    format!("[{}]", parts.join(", "))
}

fn roofline_json(device: &str, copy: &Ceiling, gemm: &Ceiling, benches: &[&KernelBench]) -> String {
    let mut j = String::new();
    let _ = writeln!(j, "{{");
    let _ = writeln!(j, "  \"schema\": \"stagformer-roofline/1\",");
    let _ = writeln!(j, "  \"device\": {},", json_str(device));
    let _ = writeln!(
        j,
        "  \"method\": {},",
        json_str(&format!(
            "CUDA events around gated batches of up to {GATE_BATCH} launches; operands rotated over \
             copies totalling >= {ROTATE_BYTES} bytes (at most {MAX_COPIES} copies)"
        ))
    );
    let _ = writeln!(
        j,
        "  \"copy\": {{\"what\": \"device-to-device copy of 1 GiB, bytes read + written\", \
         \"bytes_per_run\": {}, \"runs_ms\": {}, \"median_ms\": {:.6}, \"bytes_per_s\": {:.6e}}},",
        copy.work,
        json_runs(&copy.runs_ms),
        copy.median_ms(),
        copy.rate()
    );
    let _ = writeln!(
        j,
        "  \"gemm\": {{\"what\": \"bf16 GEMM {GEMM_N}x{GEMM_N}x{GEMM_N} through cuBLAS, random data\", \
         \"flops_per_run\": {:.6e}, \"runs_ms\": {}, \"median_ms\": {:.6}, \"flops_per_s\": {:.6e}}},",
        gemm.work,
        json_runs(&gemm.runs_ms),
        gemm.median_ms(),
        gemm.rate()
    );
    let _ = writeln!(j, "  \"benches\": [");
    for (i, b) in benches.iter().enumerate() {
        let shape: Vec<String> = b
            .shape
            .iter()
            .map(|(k, v)| format!("{}: {v}", json_str(k)))
            .collect();
        let _ = write!(
            j,
            "    {{\"id\": {}, \"kernel\": {}, \"variant\": {}, \"shape\": {{{}}}, \"bytes\": {}, \
             \"flops\": {}, \"copies\": {}}}",
            json_str(&b.full_id()),
            json_str(b.kernel),
            json_str(&b.variant),
            shape.join(", "),
            b.bytes,
            b.flops,
            copies_for(b.bytes)
        );
        let _ = writeln!(j, "{}", if i + 1 < benches.len() { "," } else { "" });
    }
    let _ = writeln!(j, "  ]");
    let _ = writeln!(j, "}}");
    j
}

fn roofline_path() -> PathBuf {
    if let Some(p) = std::env::var_os("STAGFORMER_ROOFLINE_JSON") {
        return PathBuf::from(p);
    }
    let dir = if let Some(home) = std::env::var_os("CRITERION_HOME") {
        PathBuf::from(home)
    } else if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        PathBuf::from(target).join("criterion")
    } else {
        PathBuf::from("target/criterion")
    };
    dir.join("roofline.json")
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

fn cuda_device() -> Result<Device, String> {
    if !cfg!(feature = "cuda") {
        return Err(
            "this build has no GPU kernels (build with --features stagformer-kernels/cuda)".into(),
        );
    }
    Device::cuda(0).map_err(|e| format!("no usable GPU ({e})"))
}

fn run_bench(c: &mut Criterion, stream: &Stream, kernel: &'static str, benches: Vec<KernelBench>) {
    let mut group = c.benchmark_group(kernel);
    for bench in benches {
        group.throughput(Throughput::Bytes(bench.bytes));
        let id = BenchmarkId::new(bench.variant.clone(), bench.parameter());
        let full_id = bench.full_id();
        let setup = bench.setup;
        // Set up on first use only: criterion calls this closure only for benches that pass
        // its filter, and several times for those.
        let mut launcher: Option<(Launcher, u64)> = None;
        group.bench_function(id, |b| {
            let (launch, calls) = launcher.get_or_insert_with(|| {
                let mut launch = setup(stream)
                    .unwrap_or_else(|e| panic!("{full_id}: setting up the operands failed: {e}"));
                // One untimed call loads the kernel (module loading may synchronise).
                launch(stream, 0)
                    .and_then(|()| stream.synchronize())
                    .unwrap_or_else(|e| panic!("{full_id}: first launch failed: {e}"));
                (launch, 1)
            });
            b.iter_custom(|iters| {
                let t = gpu_time(stream, launch, *calls, iters)
                    .unwrap_or_else(|e| panic!("{full_id}: launch failed: {e}"));
                *calls += iters;
                t
            })
        });
    }
    group.finish();
}

/// Writes `roofline.json`; returns where.
fn write_roofline(
    device: &str,
    copy: &Ceiling,
    gemm: &Ceiling,
    benches: &[&KernelBench],
) -> PathBuf {
    let path = roofline_path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&path, roofline_json(device, copy, gemm, benches)) {
        eprintln!("could not write {}: {e}", path.display());
    }
    path
}

/// `STAGFORMER_BENCH_DRY_RUN=1`: no device at all. Lists the bench ids and writes
/// `roofline.json` with the H100 datasheet ceilings in place of measured ones, so that the list
/// and the report tool can be checked on a machine without a GPU.
fn dry_run() {
    let suites: Vec<Vec<KernelBench>> = SUITES.iter().map(|suite| suite()).collect();
    let all: Vec<&KernelBench> = suites.iter().flatten().collect();
    for b in &all {
        println!("{}  {} bytes, {} FLOPs", b.full_id(), b.bytes, b.flops);
    }
    let copy_bytes = 2.0 * (1u64 << 30) as f64;
    let gemm_flops = 2.0 * (GEMM_N as f64).powi(3);
    let copy = Ceiling {
        work: copy_bytes,
        runs_ms: vec![copy_bytes / 3.35e12 * 1e3],
    };
    let gemm = Ceiling {
        work: gemm_flops,
        runs_ms: vec![gemm_flops / 990e12 * 1e3],
    };
    let device = "dry run: H100 datasheet ceilings, nothing measured";
    let path = write_roofline(device, &copy, &gemm, &all);
    println!(
        "kernel benches: dry run, {} benches listed, {} written; nothing was measured",
        all.len(),
        path.display()
    );
}

fn main() {
    if std::env::var_os("STAGFORMER_BENCH_DRY_RUN").is_some_and(|v| v == "1") {
        dry_run();
        return;
    }
    let device = match cuda_device() {
        Ok(d) => d,
        Err(why) => {
            println!("kernel benches: NOT RUN, {why}");
            return;
        }
    };
    let stream = device.new_stream().expect("a CUDA stream");
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();

    let suites: Vec<Vec<KernelBench>> = SUITES.iter().map(|suite| suite()).collect();

    let copy = copy_ceiling(&stream).expect("copy ceiling");
    let gemm = gemm_ceiling(&stream).expect("GEMM ceiling");
    println!(
        "{}: copy {:.0} GB/s (read + write), bf16 GEMM {:.0} TFLOP/s",
        device.name(),
        copy.rate() / 1e9,
        gemm.rate() / 1e12
    );
    let all: Vec<&KernelBench> = suites.iter().flatten().collect();
    let path = write_roofline(device.name(), &copy, &gemm, &all);
    println!("wrote {}", path.display());

    for benches in suites {
        if let Some(kernel) = benches.first().map(|b| b.kernel) {
            run_bench(&mut c, &stream, kernel, benches);
        }
    }
    c.final_summary();
}
