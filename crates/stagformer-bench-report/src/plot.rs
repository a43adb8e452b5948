//! The roofline plot: achieved TFLOP/s against arithmetic intensity (log-log), under the
//! measured bandwidth and GEMM roofs.
//!
//! Text needs a TrueType font, read at run time (no system font library is linked): `--font`,
//! else `$STAGFORMER_FONT`, else DejaVu Sans from the usual system and matplotlib locations.
//! Without one the plot is drawn without text and the report says so.

use std::fs;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::{err, Result, Roofline, Row};

/// What [`roofline_png`] drew.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotOutcome {
    /// Benches plotted (those with both bytes and FLOPs).
    pub points: usize,
    /// Why there is no text, if there is none.
    pub without_text: Option<String>,
}

const FAMILY: &str = "sans-serif";
const FONT_NAMES: [&str; 2] = ["DejaVuSans.ttf", "LiberationSans-Regular.ttf"];

/// The font to draw text with: `explicit`, else `$STAGFORMER_FONT`, else a search of the usual
/// directories (system fonts, then matplotlib's bundled copy).
pub fn find_font(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("STAGFORMER_FONT") {
        return Some(PathBuf::from(p));
    }
    let mut roots: Vec<PathBuf> = vec!["/usr/share/fonts".into(), "/usr/local/share/fonts".into()];
    // matplotlib ships DejaVu Sans; the GPU machines have it in PyTorch's environment.
    for base in ["/opt/torch/.venv/lib", "/usr/lib", "/usr/local/lib"] {
        if let Ok(entries) = fs::read_dir(base) {
            for e in entries.flatten() {
                let name = e.file_name();
                if name.to_string_lossy().starts_with("python3") {
                    for site in ["site-packages", "dist-packages"] {
                        roots.push(e.path().join(site).join("matplotlib/mpl-data/fonts/ttf"));
                    }
                }
            }
        }
    }
    for name in FONT_NAMES {
        for root in &roots {
            if let Some(found) = find_file(root, name, 4) {
                return Some(found);
            }
        }
    }
    None
}

fn find_file(dir: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    let direct = dir.join(name);
    if direct.is_file() {
        return Some(direct);
    }
    if depth == 0 {
        return None;
    }
    let mut subdirs: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    subdirs.iter().find_map(|d| find_file(d, name, depth - 1))
}

/// Registers the font at `path` for text; `Err(reason)` if it cannot be used.
fn use_font(path: &Path) -> std::result::Result<(), String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read font {}: {e}", path.display()))?;
    // The font table keeps `'static` references; one font per process run is a small leak.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font(FAMILY, FontStyle::Normal, bytes)
        .map_err(|_| format!("{} is not a usable TrueType font", path.display()))
}

/// A tick label without trailing zeros: `0.01`, `1`, `1000`.
fn tick(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.6}");
        s.trim_end_matches('0').to_string()
    }
}

fn decade_below(v: f64) -> f64 {
    10f64.powf(v.log10().floor())
}

fn decade_above(v: f64) -> f64 {
    10f64.powf(v.log10().ceil())
}

/// Draws the roofline plot of `rows` into a PNG at `path`.
pub fn roofline_png(
    path: &Path,
    roofline: &Roofline,
    rows: &[Row],
    font: Option<&Path>,
) -> Result<PlotOutcome> {
    let without_text = match font {
        None => Some("no TrueType font found (give --font or STAGFORMER_FONT)".to_string()),
        Some(p) => use_font(p).err(),
    };
    let text = without_text.is_none();
    // (kernel, FLOP/byte, TFLOP/s)
    let points: Vec<(&str, f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r.kernel.as_str(), r.intensity()?, r.flops_per_s()? / 1e12)))
        .collect();
    let bw = roofline.copy.bytes_per_s / 1e12;
    let peak = roofline.gemm.flops_per_s / 1e12;
    let ridge = roofline.ridge();
    let (mut x_min, mut x_max) = (ridge / 100.0, ridge * 10.0);
    let mut y_min = bw * x_min;
    for &(_, x, y) in &points {
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        y_min = y_min.min(y);
    }
    let x_range = decade_below(x_min / 2.0)..decade_above(x_max * 2.0);
    let y_range = decade_below(y_min / 2.0)..decade_above(peak * 2.0);

    let draw_err = |e: &dyn std::fmt::Display| err(format!("drawing {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| draw_err(&e))?;
    }
    let root = BitMapBackend::new(path, (1280, 860)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(&e))?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(24).margin_right(48);
    if text {
        builder
            .caption(
                format!(
                    "Roofline: copy {:.0} GB/s, bf16 GEMM {:.0} TFLOP/s",
                    roofline.copy.bytes_per_s / 1e9,
                    peak
                ),
                (FAMILY, 26),
            )
            .x_label_area_size(56)
            .y_label_area_size(80);
    }
    let mut chart = builder
        .build_cartesian_2d(x_range.clone().log_scale(), y_range.log_scale())
        .map_err(|e| draw_err(&e))?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("arithmetic intensity (FLOP / byte)")
            .y_desc("achieved TFLOP/s")
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .label_style((FAMILY, 16))
            .axis_desc_style((FAMILY, 18));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|e| draw_err(&e))?;

    // The roofs: bandwidth × intensity up to the ridge, then the GEMM rate.
    let steps = 200;
    let (lx0, lx1) = (x_range.start.ln(), x_range.end.ln());
    let roof: Vec<(f64, f64)> = (0..=steps)
        .map(|i| {
            let x = (lx0 + (lx1 - lx0) * i as f64 / steps as f64).exp();
            (x, (bw * x).min(peak))
        })
        .collect();
    let series = chart
        .draw_series(LineSeries::new(roof, BLACK.stroke_width(2)))
        .map_err(|e| draw_err(&e))?;
    if text {
        series
            .label("roofs (measured)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    }

    // One colour per kernel, in order of first appearance.
    let mut kernels: Vec<&str> = Vec::new();
    for &(k, _, _) in &points {
        if !kernels.contains(&k) {
            kernels.push(k);
        }
    }
    for (i, kernel) in kernels.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let series = chart
            .draw_series(
                points
                    .iter()
                    .filter(|p| p.0 == *kernel)
                    .map(|&(_, x, y)| Circle::new((x, y), 5, color.filled())),
            )
            .map_err(|e| draw_err(&e))?;
        if text {
            series
                .label(*kernel)
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
        }
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FAMILY, 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| draw_err(&e))?;
    }
    root.present().map_err(|e| draw_err(&e))?;
    Ok(PlotOutcome {
        points: points.len(),
        without_text,
    })
}
