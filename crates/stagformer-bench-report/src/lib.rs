//! Summarises the GPU kernel benchmarks (`benches/kernels.rs`).
//!
//! Inputs:
//!
//! * criterion's output directory: every `<group>/<function>/<parameter>/new/benchmark.json`
//!   (the bench's id and throughput) with its `estimates.json` (times in nanoseconds);
//! * `roofline.json`, written by the benches: the measured copy bandwidth and bf16 GEMM rate of
//!   the device, and per bench id the bytes it must move and the FLOPs it does;
//! * optionally the PyTorch comparison (`python/torch_compare.py --out`), whose kernel entries
//!   carry the same ids as ours, and our decode numbers (`--decode`, see [`DecodeEntry`]).
//!
//! Outputs: a markdown summary ([`markdown`]) and a roofline plot ([`plot::roofline_png`]).

#![warn(missing_docs)]

pub mod plot;

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// An error of the report tool: what failed, with the file it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportError(pub String);

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReportError {}

/// The result of the report's fallible functions.
pub type Result<T, E = ReportError> = std::result::Result<T, E>;

fn err(msg: impl Into<String>) -> ReportError {
    ReportError(msg.into())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        fs::read_to_string(path).map_err(|e| err(format!("reading {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| err(format!("parsing {}: {e}", path.display())))
}

// ---------------------------------------------------------------------------------------------
// criterion
// ---------------------------------------------------------------------------------------------

/// One criterion result.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// `group/function/parameter`, as criterion writes it in `full_id`.
    pub id: String,
    /// Criterion's group: the kernel's name (`rmsnorm`, `linear`, ...).
    pub group: String,
    /// Median time per iteration, with its confidence interval, in nanoseconds.
    pub median_ns: f64,
    /// Lower bound of the median's confidence interval, ns.
    pub median_lo_ns: f64,
    /// Upper bound of the median's confidence interval, ns.
    pub median_hi_ns: f64,
    /// Bytes per iteration declared with `Throughput::Bytes`, if any.
    pub throughput_bytes: Option<u64>,
}

#[derive(Deserialize)]
struct BenchmarkJson {
    group_id: String,
    full_id: String,
    #[serde(default)]
    throughput: Option<BTreeMap<String, u64>>,
}

#[derive(Deserialize)]
struct Interval {
    lower_bound: f64,
    upper_bound: f64,
}

#[derive(Deserialize)]
struct Estimate {
    confidence_interval: Interval,
    point_estimate: f64,
}

#[derive(Deserialize)]
struct EstimatesJson {
    median: Estimate,
}

/// Every result under criterion's output directory `dir` (its `new/` estimates), sorted by id.
/// Directories without results (criterion's `report/`, older `base/` copies) are skipped.
pub fn load_criterion(dir: &Path) -> Result<Vec<Measurement>> {
    if !dir.is_dir() {
        return Err(err(format!(
            "{} is not a directory (criterion output expected)",
            dir.display()
        )));
    }
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).map_err(|e| err(format!("listing {}: {e}", d.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            if path.file_name().is_some_and(|n| n == "new") {
                let bench = path.join("benchmark.json");
                let estimates = path.join("estimates.json");
                if bench.is_file() && estimates.is_file() {
                    found.push(load_one(&bench, &estimates)?);
                }
            } else {
                stack.push(path);
            }
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

fn load_one(bench: &Path, estimates: &Path) -> Result<Measurement> {
    let b: BenchmarkJson = read_json(bench)?;
    let e: EstimatesJson = read_json(estimates)?;
    let throughput_bytes = b
        .throughput
        .as_ref()
        .and_then(|t| t.get("Bytes").or_else(|| t.get("BytesDecimal")).copied());
    Ok(Measurement {
        id: b.full_id,
        group: b.group_id,
        median_ns: e.median.point_estimate,
        median_lo_ns: e.median.confidence_interval.lower_bound,
        median_hi_ns: e.median.confidence_interval.upper_bound,
        throughput_bytes,
    })
}

// ---------------------------------------------------------------------------------------------
// roofline.json
// ---------------------------------------------------------------------------------------------

/// The device ceilings and per-bench work, as written by `benches/kernels.rs`.
#[derive(Debug, Clone, Deserialize)]
pub struct Roofline {
    #[serde(default)]
    /// The device's name, as the benches saw it (empty when not written).
    pub device: String,
    /// The measured memory roof.
    pub copy: CopyCeiling,
    /// The measured compute roof.
    pub gemm: GemmCeiling,
    #[serde(default)]
    /// The work of every bench, in the order the benches ran.
    pub benches: Vec<BenchWork>,
}

#[derive(Debug, Clone, Deserialize)]
/// The memory roof: the device-to-device copy bandwidth measured by the benches.
pub struct CopyCeiling {
    /// Bytes read plus bytes written per second.
    pub bytes_per_s: f64,
}

#[derive(Debug, Clone, Deserialize)]
/// The compute roof: the bf16 GEMM rate measured by the benches.
pub struct GemmCeiling {
    /// Floating-point operations per second.
    pub flops_per_s: f64,
}

/// What one bench must do per call.
#[derive(Debug, Clone, Deserialize)]
pub struct BenchWork {
    /// Criterion's full id, `kernel/variant/parameter`.
    pub id: String,
    /// The kernel's name (criterion's group).
    pub kernel: String,
    #[serde(default)]
    /// Element types and what tells benches of one shape apart (`bf16`, `bf16.q_o`).
    pub variant: String,
    #[serde(default)]
    /// The shape's named sizes (`rows`, `d`, `heads`, `context`, ...).
    pub shape: BTreeMap<String, u64>,
    /// Bytes the kernel must move per call (inputs read once, outputs written once).
    pub bytes: u64,
    #[serde(default)]
    /// Floating-point operations per call (0 when not counted).
    pub flops: u64,
}

impl Roofline {
    /// Reads `roofline.json`; both ceilings must be positive. Unreadable or malformed files are
    /// errors naming the path.
    pub fn load(path: &Path) -> Result<Roofline> {
        let r: Roofline = read_json(path)?;
        if !(r.copy.bytes_per_s > 0.0 && r.gemm.flops_per_s > 0.0) {
            return Err(err(format!(
                "{}: the ceilings must be positive (copy {} B/s, GEMM {} FLOP/s)",
                path.display(),
                r.copy.bytes_per_s,
                r.gemm.flops_per_s
            )));
        }
        Ok(r)
    }

    /// Arithmetic intensity (FLOP/byte) at which the two roofs meet.
    pub fn ridge(&self) -> f64 {
        self.gemm.flops_per_s / self.copy.bytes_per_s
    }

    /// The least time a call moving `bytes` and doing `flops` can take, and which roof sets it.
    pub fn floor(&self, bytes: u64, flops: u64) -> (f64, Bound) {
        let memory = bytes as f64 / self.copy.bytes_per_s;
        let compute = flops as f64 / self.gemm.flops_per_s;
        if compute > memory {
            (compute, Bound::Compute)
        } else {
            (memory, Bound::Memory)
        }
    }
}

/// Which roof limits a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Moving the bytes at the copy rate takes at least as long as the FLOPs at the GEMM rate.
    Memory,
    /// The FLOPs at the GEMM rate take longer than moving the bytes.
    Compute,
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Bound::Memory => "memory",
            Bound::Compute => "compute",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// PyTorch comparison and decode numbers
// ---------------------------------------------------------------------------------------------

/// `python/torch_compare.py`'s output.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TorchResults {
    #[serde(default)]
    /// The device's name (empty when not written).
    pub device: String,
    #[serde(default)]
    /// PyTorch's version.
    pub torch: String,
    #[serde(default)]
    /// One entry per kernel bench PyTorch ran.
    pub kernels: Vec<TorchKernel>,
    #[serde(default)]
    /// PyTorch's decode steps.
    pub decode: Vec<DecodeEntry>,
}

/// PyTorch's time for the bench with the same id.
#[derive(Debug, Clone, Deserialize)]
pub struct TorchKernel {
    /// Criterion's full id of our bench it pairs with.
    pub id: String,
    /// What was timed, e.g. `F.rms_norm`.
    #[serde(default)]
    pub op: String,
    /// Median time per call, in microseconds.
    pub median_us: f64,
}

/// One decode measurement: milliseconds per decode step (one token for each of `batch`
/// sequences) at `context` tokens of history. Used for PyTorch's numbers and for ours
/// (`--decode FILE` holding `{"decode": [...]}`); entries pair up by `(batch, context)`.
#[derive(Debug, Clone, Deserialize)]
pub struct DecodeEntry {
    #[serde(default)]
    /// The model measured (a preset name, or empty).
    pub model: String,
    /// `eager`, `cuda_graph`, `compile`, ...
    pub mode: String,
    /// Sequences decoded together.
    pub batch: u64,
    /// Tokens of history per sequence.
    pub context: u64,
    /// Milliseconds per decode step.
    pub ms_per_step: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
/// Our decode numbers (`--decode FILE`: `{"decode": [...]}`).
pub struct DecodeResults {
    #[serde(default)]
    /// One entry per (batch, context, mode) measured.
    pub decode: Vec<DecodeEntry>,
}

impl TorchResults {
    /// Reads `python/torch_compare.py`'s JSON; errors name the path.
    pub fn load(path: &Path) -> Result<TorchResults> {
        read_json(path)
    }
}

impl DecodeResults {
    /// Reads a `{"decode": [...]}` file; errors name the path.
    pub fn load(path: &Path) -> Result<DecodeResults> {
        read_json(path)
    }
}

// ---------------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------------

/// One bench, joined with its work and the device ceilings.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Criterion's full id.
    pub id: String,
    /// The kernel's name.
    pub kernel: String,
    /// The id without the kernel: `bf16/rows=1,d=768`.
    pub case: String,
    /// Median time per call, in seconds.
    pub seconds: f64,
    /// Lower bound of its confidence interval, in seconds.
    pub lo_seconds: f64,
    /// Upper bound, in seconds.
    pub hi_seconds: f64,
    /// Bytes per call, from the roofline or else from criterion's throughput.
    pub bytes: Option<u64>,
    /// FLOPs per call, from the roofline.
    pub flops: Option<u64>,
    /// Least possible time and the roof that sets it (needs the ceilings and the bytes).
    pub floor: Option<(f64, Bound)>,
}

impl Row {
    /// Achieved bandwidth, bytes per second (with the bytes known).
    pub fn bytes_per_s(&self) -> Option<f64> {
        self.bytes.map(|b| b as f64 / self.seconds)
    }

    /// Achieved FLOP rate (with a non-zero FLOP count known).
    pub fn flops_per_s(&self) -> Option<f64> {
        self.flops
            .filter(|&f| f > 0)
            .map(|f| f as f64 / self.seconds)
    }

    /// Arithmetic intensity, FLOP per byte.
    pub fn intensity(&self) -> Option<f64> {
        match (self.flops, self.bytes) {
            (Some(f), Some(b)) if f > 0 && b > 0 => Some(f as f64 / b as f64),
            _ => None,
        }
    }

    /// Floor over measured time: 1.0 means the kernel runs at its roof.
    pub fn fraction_of_roof(&self) -> Option<f64> {
        self.floor.map(|(t, _)| t / self.seconds)
    }
}

/// Joins criterion's results with the roofline's work entries (by id). Benches listed in the
/// roofline come first, in its order; others follow by id, with bytes from their throughput.
pub fn rows(measurements: &[Measurement], roofline: Option<&Roofline>) -> Vec<Row> {
    let work: BTreeMap<&str, &BenchWork> = roofline
        .map(|r| r.benches.iter().map(|b| (b.id.as_str(), b)).collect())
        .unwrap_or_default();
    let order: BTreeMap<&str, usize> = roofline
        .map(|r| {
            r.benches
                .iter()
                .enumerate()
                .map(|(i, b)| (b.id.as_str(), i))
                .collect()
        })
        .unwrap_or_default();
    let mut out: Vec<(usize, Row)> = measurements
        .iter()
        .filter(|m| m.median_ns > 0.0 && m.median_ns.is_finite())
        .map(|m| {
            let w = work.get(m.id.as_str());
            let bytes = w.map(|w| w.bytes).or(m.throughput_bytes);
            let flops = w.map(|w| w.flops);
            let kernel = w.map_or_else(|| m.group.clone(), |w| w.kernel.clone());
            let case =
                m.id.strip_prefix(&format!("{}/", m.group))
                    .unwrap_or(&m.id)
                    .to_string();
            let floor = match (roofline, bytes) {
                (Some(r), Some(b)) => Some(r.floor(b, flops.unwrap_or(0))),
                _ => None,
            };
            let row = Row {
                id: m.id.clone(),
                kernel,
                case,
                seconds: m.median_ns * 1e-9,
                lo_seconds: m.median_lo_ns * 1e-9,
                hi_seconds: m.median_hi_ns * 1e-9,
                bytes,
                flops,
                floor,
            };
            (order.get(m.id.as_str()).copied().unwrap_or(usize::MAX), row)
        })
        .collect();
    out.sort_by(|(a, ra), (b, rb)| a.cmp(b).then_with(|| ra.id.cmp(&rb.id)));
    out.into_iter().map(|(_, r)| r).collect()
}

// ---------------------------------------------------------------------------------------------
// Markdown
// ---------------------------------------------------------------------------------------------

/// Everything the report is made of.
#[derive(Debug, Default)]
pub struct Inputs {
    /// Criterion's results.
    pub measurements: Vec<Measurement>,
    /// The ceilings and work, if `roofline.json` was found.
    pub roofline: Option<Roofline>,
    /// PyTorch's numbers, if given and present.
    pub torch: Option<TorchResults>,
    /// Our decode numbers, if given and present.
    pub decode: Option<DecodeResults>,
    /// Lines added under the title (where the numbers came from, what did not run).
    pub notes: Vec<String>,
}

/// A time in engineering units.
pub fn fmt_time(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "n/a".into();
    }
    let us = seconds * 1e6;
    if us < 1000.0 {
        format!("{us:.2} µs")
    } else if us < 1e6 {
        format!("{:.3} ms", us / 1e3)
    } else {
        format!("{seconds:.3} s")
    }
}

fn opt(v: Option<String>) -> String {
    v.unwrap_or_else(|| "–".into())
}

/// The markdown report.
pub fn markdown(inputs: &Inputs, png_name: Option<&str>) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Kernel benchmark report\n");
    for note in &inputs.notes {
        let _ = writeln!(md, "{note}  ");
    }
    if !inputs.notes.is_empty() {
        md.push('\n');
    }
    match &inputs.roofline {
        Some(r) => {
            let _ = writeln!(
                md,
                "Device: {}. Measured ceilings: copy **{:.0} GB/s** (bytes read + written, 1 GiB \
                 device-to-device), bf16 GEMM **{:.0} TFLOP/s** (8192³, cuBLAS, random data); \
                 ridge at {:.0} FLOP/byte.\n",
                if r.device.is_empty() { "?" } else { &r.device },
                r.copy.bytes_per_s / 1e9,
                r.gemm.flops_per_s / 1e12,
                r.ridge()
            );
        }
        None => {
            let _ = writeln!(
                md,
                "No roofline.json: times and bandwidths only, no comparison with the device's \
                 ceilings.\n"
            );
        }
    }
    let rows = rows(&inputs.measurements, inputs.roofline.as_ref());
    if rows.is_empty() {
        let _ = writeln!(md, "No criterion results were found.\n");
    } else {
        let _ = writeln!(md, "## Kernels\n");
        let _ = writeln!(
            md,
            "Time: criterion's median of GPU time per call (CUDA events), with its 95% interval. \
             Floor: the larger of bytes / copy bandwidth and FLOPs / GEMM rate; \"of roof\" is \
             floor / time.\n"
        );
        let _ = writeln!(
            md,
            "| kernel | case | time | interval | bytes | GB/s | TFLOP/s | bound | floor | of roof |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---|---:|---:|");
        for r in &rows {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} – {} | {} | {} | {} | {} | {} | {} |",
                r.kernel,
                r.case,
                fmt_time(r.seconds),
                fmt_time(r.lo_seconds),
                fmt_time(r.hi_seconds),
                opt(r.bytes.map(fmt_bytes)),
                opt(r.bytes_per_s().map(|v| format!("{:.1}", v / 1e9))),
                opt(r.flops_per_s().map(|v| format!("{:.2}", v / 1e12))),
                opt(r.floor.map(|(_, b)| b.to_string())),
                opt(r.floor.map(|(t, _)| fmt_time(t))),
                opt(r.fraction_of_roof().map(|f| format!("{:.0}%", f * 100.0))),
            );
        }
        md.push('\n');
        if let Some(png) = png_name {
            let _ = writeln!(md, "![roofline]({png})\n");
        }
    }
    if let Some(torch) = &inputs.torch {
        torch_section(&mut md, torch, &rows, inputs.decode.as_ref());
    } else if let Some(decode) = &inputs.decode {
        decode_section(&mut md, &[], &decode.decode);
    }
    md
}

fn fmt_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

fn torch_section(
    md: &mut String,
    torch: &TorchResults,
    rows: &[Row],
    ours: Option<&DecodeResults>,
) {
    let _ = writeln!(md, "## PyTorch comparison\n");
    let _ = writeln!(
        md,
        "PyTorch {} on {}. Ratio = PyTorch time / our time: above 1 means ours is faster.\n",
        if torch.torch.is_empty() {
            "?"
        } else {
            &torch.torch
        },
        if torch.device.is_empty() {
            "?"
        } else {
            &torch.device
        }
    );
    let ours_by_id: BTreeMap<&str, &Row> = rows.iter().map(|r| (r.id.as_str(), r)).collect();
    if !torch.kernels.is_empty() {
        let _ = writeln!(md, "| bench | PyTorch op | PyTorch | ours | ratio |");
        let _ = writeln!(md, "|---|---|---:|---:|---:|");
        for k in &torch.kernels {
            let theirs = k.median_us * 1e-6;
            let mine = ours_by_id.get(k.id.as_str()).map(|r| r.seconds);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                k.id,
                k.op,
                fmt_time(theirs),
                opt(mine.map(fmt_time)),
                opt(mine.map(|m| format!("{:.2}×", theirs / m)))
            );
        }
        md.push('\n');
    }
    let ours = ours.map(|d| d.decode.as_slice()).unwrap_or(&[]);
    decode_section(md, &torch.decode, ours);
}

fn decode_section(md: &mut String, torch: &[DecodeEntry], ours: &[DecodeEntry]) {
    if torch.is_empty() && ours.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Decode\n");
    let _ = writeln!(
        md,
        "Milliseconds per decode step (one token for each sequence of the batch). Ratio = \
         fastest PyTorch mode / our fastest mode.\n"
    );
    let mut keys: Vec<(u64, u64)> = torch
        .iter()
        .chain(ours)
        .map(|e| (e.batch, e.context))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let _ = writeln!(md, "| batch | context | PyTorch | ours | ratio |");
    let _ = writeln!(md, "|---:|---:|---|---|---:|");
    let list = |entries: &[DecodeEntry], key: (u64, u64)| -> (String, Option<f64>) {
        let mut found: Vec<&DecodeEntry> = entries
            .iter()
            .filter(|e| (e.batch, e.context) == key)
            .collect();
        found.sort_by(|a, b| a.ms_per_step.total_cmp(&b.ms_per_step));
        let text: Vec<String> = found
            .iter()
            .map(|e| format!("{} {:.3} ms", e.mode, e.ms_per_step))
            .collect();
        (text.join(", "), found.first().map(|e| e.ms_per_step))
    };
    for key in keys {
        let (theirs, best_theirs) = list(torch, key);
        let (mine, best_mine) = list(ours, key);
        let ratio = match (best_theirs, best_mine) {
            (Some(t), Some(m)) if m > 0.0 => format!("{:.2}×", t / m),
            _ => "–".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            key.0,
            key.1,
            if theirs.is_empty() {
                "–".into()
            } else {
                theirs
            },
            if mine.is_empty() {
                "not run".into()
            } else {
                mine
            },
            ratio
        );
    }
    md.push('\n');
}

/// Paths the tool reads and writes.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Criterion's output directory (read).
    pub criterion: PathBuf,
    /// `roofline.json` (read; default `<criterion>/roofline.json`, optional there).
    pub roofline: Option<PathBuf>,
    /// PyTorch's results (read; a missing file becomes a note).
    pub torch: Option<PathBuf>,
    /// Our decode numbers (read; a missing file becomes a note).
    pub decode: Option<PathBuf>,
    /// The markdown report (written; its directory is created).
    pub markdown: PathBuf,
    /// The roofline plot (written when the roofline is known).
    pub png: Option<PathBuf>,
    /// A TrueType font for the plot's text (else one is searched for).
    pub font: Option<PathBuf>,
}

/// What [`run`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// Benches in the report.
    pub rows: usize,
    /// The plot and its number of points, if one was drawn (it needs the roofline file).
    pub png: Option<(PathBuf, usize)>,
    /// Why the plot has no text, if it has none.
    pub plot_without_text: Option<String>,
}

/// Loads everything, writes the markdown and the plot. `notes` go under the title.
pub fn run(paths: &Paths, notes: &[String]) -> Result<Written> {
    let mut inputs = Inputs {
        measurements: load_criterion(&paths.criterion)?,
        notes: notes.to_vec(),
        ..Inputs::default()
    };
    let roofline_path = paths
        .roofline
        .clone()
        .unwrap_or_else(|| paths.criterion.join("roofline.json"));
    if roofline_path.is_file() {
        inputs.roofline = Some(Roofline::load(&roofline_path)?);
    } else if paths.roofline.is_some() {
        return Err(err(format!("{} does not exist", roofline_path.display())));
    }
    if let Some(p) = &paths.torch {
        if p.is_file() {
            inputs.torch = Some(TorchResults::load(p)?);
        } else {
            inputs.notes.push(format!(
                "PyTorch comparison: not run ({} is missing).",
                p.display()
            ));
        }
    }
    if let Some(p) = &paths.decode {
        if p.is_file() {
            inputs.decode = Some(DecodeResults::load(p)?);
        } else {
            inputs.notes.push(format!(
                "Our decode benchmarks: not run ({} is missing).",
                p.display()
            ));
        }
    }
    let rows_all = rows(&inputs.measurements, inputs.roofline.as_ref());
    let mut written = Written {
        rows: rows_all.len(),
        png: None,
        plot_without_text: None,
    };
    let mut png_name = None;
    if let (Some(png), Some(roofline)) = (&paths.png, &inputs.roofline) {
        let font = plot::find_font(paths.font.as_deref());
        let outcome = plot::roofline_png(png, roofline, &rows_all, font.as_deref())?;
        written.png = Some((png.clone(), outcome.points));
        written.plot_without_text = outcome.without_text;
        png_name = png.file_name().map(|n| n.to_string_lossy().into_owned());
    }
    let md = markdown(&inputs, png_name.as_deref());
    if let Some(dir) = paths
        .markdown
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        fs::create_dir_all(dir).map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
    }
    fs::write(&paths.markdown, md)
        .map_err(|e| err(format!("writing {}: {e}", paths.markdown.display())))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roofline() -> Roofline {
        Roofline {
            device: "test".into(),
            copy: CopyCeiling {
                bytes_per_s: 3.0e12,
            },
            gemm: GemmCeiling {
                flops_per_s: 750e12,
            },
            benches: vec![BenchWork {
                id: "linear/bf16.q_o/d=2048,m=1,n=2048,k=2048".into(),
                kernel: "linear".into(),
                variant: "bf16.q_o".into(),
                shape: BTreeMap::new(),
                bytes: 8_396_800,
                flops: 8_388_608,
            }],
        }
    }

    #[test]
    fn floor_picks_the_larger_term() {
        let r = roofline();
        assert_eq!(r.ridge(), 250.0);
        let (t, b) = r.floor(3_000_000, 1);
        assert_eq!(b, Bound::Memory);
        assert!((t - 1e-6).abs() < 1e-15);
        let (t, b) = r.floor(1, 750_000_000);
        assert_eq!(b, Bound::Compute);
        assert!((t - 1e-6).abs() < 1e-15);
    }

    #[test]
    fn rows_join_work_and_fall_back_to_throughput() {
        let r = roofline();
        let ms = vec![
            Measurement {
                id: "other/f/p".into(),
                group: "other".into(),
                median_ns: 1000.0,
                median_lo_ns: 900.0,
                median_hi_ns: 1100.0,
                throughput_bytes: Some(3_000_000),
            },
            Measurement {
                id: r.benches[0].id.clone(),
                group: "linear".into(),
                median_ns: 5600.0,
                median_lo_ns: 5500.0,
                median_hi_ns: 5700.0,
                throughput_bytes: Some(1),
            },
        ];
        let rows = rows(&ms, Some(&r));
        assert_eq!(rows.len(), 2);
        // Roofline order first.
        assert_eq!(rows[0].kernel, "linear");
        assert_eq!(rows[0].case, "bf16.q_o/d=2048,m=1,n=2048,k=2048");
        assert_eq!(rows[0].bytes, Some(8_396_800));
        let f = rows[0].fraction_of_roof().unwrap();
        assert!((f - 8_396_800.0 / 3e12 / 5.6e-6).abs() < 1e-9);
        assert_eq!(rows[1].bytes, Some(3_000_000));
        assert_eq!(rows[1].flops, None);
        assert_eq!(rows[1].floor.unwrap().1, Bound::Memory);
        assert!((rows[1].fraction_of_roof().unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn times_are_formatted_in_engineering_units() {
        assert_eq!(fmt_time(2.5e-6), "2.50 µs");
        assert_eq!(fmt_time(1.5e-3), "1.500 ms");
        assert_eq!(fmt_time(2.0), "2.000 s");
        assert_eq!(fmt_time(f64::NAN), "n/a");
    }

    #[test]
    fn decode_rows_pair_by_batch_and_context() {
        let e = |mode: &str, ms| DecodeEntry {
            model: "m".into(),
            mode: mode.into(),
            batch: 1,
            context: 1024,
            ms_per_step: ms,
        };
        let mut md = String::new();
        decode_section(
            &mut md,
            &[e("eager", 9.0), e("cuda_graph", 4.0)],
            &[e("graph", 2.0)],
        );
        assert!(
            md.contains(
                "| 1 | 1024 | cuda_graph 4.000 ms, eager 9.000 ms | graph 2.000 ms | 2.00× |"
            ),
            "{md}"
        );
        let mut md = String::new();
        decode_section(&mut md, &[e("eager", 9.0)], &[]);
        assert!(md.contains("| not run | – |"), "{md}");
    }
}
