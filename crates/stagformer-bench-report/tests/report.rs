//! The report tool on a synthetic criterion output tree, laid out and formatted as criterion
//! 0.8 writes it, with a roofline file and a PyTorch comparison.

use std::fs;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_stagformer-bench-report");

fn estimate(ns: f64) -> String {
    format!(
        r#"{{"confidence_interval":{{"confidence_level":0.95,"lower_bound":{lo},"upper_bound":{hi}}},"point_estimate":{ns},"standard_error":{se}}}"#,
        lo = ns * 0.98,
        hi = ns * 1.02,
        se = ns * 0.01
    )
}

/// One bench as criterion writes it: `<dir>/new/{benchmark,estimates}.json`, plus a stale
/// `base/` copy with another time that the report must ignore.
fn write_bench(root: &Path, group: &str, function: &str, value: &str, bytes: u64, median_ns: f64) {
    let dir_name = format!("{group}/{function}/{}", value.replace('/', "_"));
    let full_id = format!("{group}/{function}/{value}");
    for (sub, ns) in [("new", median_ns), ("base", median_ns * 10.0)] {
        let dir = root.join(&dir_name).join(sub);
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("benchmark.json"),
            format!(
                r#"{{"group_id":"{group}","function_id":"{function}","value_str":"{value}","throughput":{{"Bytes":{bytes}}},"full_id":"{full_id}","directory_name":"{dir_name}","title":"{full_id}"}}"#
            ),
        )
        .unwrap();
        fs::write(
            dir.join("estimates.json"),
            format!(
                r#"{{"mean":{},"median":{},"median_abs_dev":{},"slope":null,"std_dev":{}}}"#,
                estimate(ns * 1.01),
                estimate(ns),
                estimate(ns * 0.02),
                estimate(ns * 0.03)
            ),
        )
        .unwrap();
    }
}

const ROOFLINE: &str = r#"{
  "schema": "stagformer-roofline/1",
  "device": "cuda:0 (Synthetic GPU)",
  "method": "test",
  "copy": {"what": "copy", "bytes_per_run": 2147483648, "runs_ms": [0.7, 0.71], "median_ms": 0.705, "bytes_per_s": 3.0e12},
  "gemm": {"what": "gemm", "flops_per_run": 1.0995e12, "runs_ms": [1.4], "median_ms": 1.4, "flops_per_s": 7.5e14},
  "benches": [
    {"id": "rmsnorm/bf16/rows=1,d=2048", "kernel": "rmsnorm", "variant": "bf16", "shape": {"rows": 1, "d": 2048}, "bytes": 16384, "flops": 8192, "copies": 64},
    {"id": "rmsnorm/bf16/rows=4096,d=4096", "kernel": "rmsnorm", "variant": "bf16", "shape": {"rows": 4096, "d": 4096}, "bytes": 67125248, "flops": 67108864, "copies": 3},
    {"id": "linear/bf16.q_o/d=4096,m=4096,n=4096,k=4096", "kernel": "linear", "variant": "bf16.q_o", "shape": {"d": 4096, "m": 4096, "n": 4096, "k": 4096}, "bytes": 100663296, "flops": 137438953472, "copies": 2}
  ]
}"#;

const TORCH: &str = r#"{
  "schema": "stagformer-torch/1",
  "device": "Synthetic GPU",
  "torch": "2.11.0+cu130",
  "kernels": [
    {"id": "rmsnorm/bf16/rows=1,d=2048", "op": "F.rms_norm", "median_us": 6.0},
    {"id": "attention_decode/bf16/batch=1,heads=16,kv_heads=8,head_dim=128,context=1024", "op": "F.scaled_dot_product_attention", "median_us": 12.0}
  ],
  "decode": [
    {"model": "llama", "mode": "eager", "batch": 1, "context": 1024, "ms_per_step": 20.0},
    {"model": "llama", "mode": "cuda_graph", "batch": 1, "context": 1024, "ms_per_step": 5.0}
  ]
}"#;

fn synthetic_tree(root: &Path) {
    write_bench(root, "rmsnorm", "bf16", "rows=1,d=2048", 16384, 3000.0);
    write_bench(
        root,
        "rmsnorm",
        "bf16",
        "rows=4096,d=4096",
        67125248,
        30000.0,
    );
    write_bench(
        root,
        "linear",
        "bf16.q_o",
        "d=4096,m=4096,n=4096,k=4096",
        100663296,
        250000.0,
    );
    // A bench the roofline does not list (bytes from its throughput only).
    write_bench(root, "extra", "f32", "n=1", 1000, 1000.0);
    // Criterion's own report directory holds no results.
    fs::create_dir_all(root.join("report")).unwrap();
    fs::write(root.join("report/index.html"), "<html></html>").unwrap();
    fs::write(root.join("roofline.json"), ROOFLINE).unwrap();
}

fn is_png(path: &Path) -> bool {
    fs::read(path).is_ok_and(|b| b.len() > 1000 && b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

#[test]
fn report_from_synthetic_criterion_output() {
    let tmp = tempfile::tempdir().unwrap();
    let crit = tmp.path().join("criterion");
    synthetic_tree(&crit);
    let torch = tmp.path().join("torch.json");
    fs::write(&torch, TORCH).unwrap();
    let out = tmp.path().join("out/report.md");
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    let run = Command::new(BIN)
        .arg("--criterion")
        .arg(&crit)
        .arg("--torch")
        .arg(&torch)
        .arg("--decode")
        .arg(tmp.path().join("missing-decode.json"))
        .arg("--out")
        .arg(&out)
        .args(["--note", "Commit: test."])
        // A font that does not exist: the plot is drawn without text and says so.
        .env("STAGFORMER_FONT", tmp.path().join("no-such-font.ttf"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("(4 benches)"), "{stdout}");
    assert!(stdout.contains("plot drawn without text"), "{stdout}");

    let md = fs::read_to_string(&out).unwrap();
    assert!(md.contains("Commit: test."), "{md}");
    assert!(md.contains("copy **3000 GB/s**"), "{md}");
    assert!(md.contains("bf16 GEMM **750 TFLOP/s**"), "{md}");
    // Roofline order first, then the unlisted bench; the stale base/ times are not used.
    let rms = md
        .find("| rmsnorm | bf16/rows=1,d=2048 | 3.00 µs")
        .expect("rmsnorm row");
    let lin = md
        .find("| linear | bf16.q_o/d=4096,m=4096,n=4096,k=4096 | 250.00 µs")
        .expect("linear row");
    let extra = md.find("| extra | f32/n=1 | 1.00 µs").expect("extra row");
    assert!(rms < lin && lin < extra, "{md}");
    // 67125248 B in 30 µs = 2237.5 GB/s: 75% of the 3 TB/s copy roof.
    assert!(
        md.contains("| 2237.5 | 2.24 | memory | 22.38 µs | 75% |"),
        "{md}"
    );
    // 137.4 GFLOP in 250 µs = 549.76 TFLOP/s: 73% of 750.
    assert!(
        md.contains("| 549.76 | compute | 183.25 µs | 73% |"),
        "{md}"
    );
    assert!(md.contains("![roofline](roofline.png)"), "{md}");
    // PyTorch: 6 µs against our 3 µs; no attention bench of ours yet.
    assert!(
        md.contains("| rmsnorm/bf16/rows=1,d=2048 | F.rms_norm | 6.00 µs | 3.00 µs | 2.00× |"),
        "{md}"
    );
    assert!(
        md.contains("| F.scaled_dot_product_attention | 12.00 µs | – | – |"),
        "{md}"
    );
    assert!(
        md.contains("| 1 | 1024 | cuda_graph 5.000 ms, eager 20.000 ms | not run | – |"),
        "{md}"
    );
    assert!(md.contains("Our decode benchmarks: not run"), "{md}");
    assert!(is_png(&out.with_file_name("roofline.png")));
}

#[test]
fn plot_with_text_when_a_font_is_available() {
    let tmp = tempfile::tempdir().unwrap();
    let crit = tmp.path().join("criterion");
    synthetic_tree(&crit);
    let Some(font) = stagformer_bench_report::plot::find_font(None) else {
        eprintln!("no TrueType font on this machine; the text path is not exercised");
        return;
    };
    let out = tmp.path().join("report.md");
    let png = tmp.path().join("plot.png");
    let run = Command::new(BIN)
        .arg("--criterion")
        .arg(&crit)
        .arg("--out")
        .arg(&out)
        .arg("--png")
        .arg(&png)
        .arg("--font")
        .arg(&font)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(!stdout.contains("without text"), "{stdout}");
    assert!(stdout.contains("(3 points)"), "{stdout}");
    assert!(is_png(&png));
}

#[test]
fn without_roofline_there_is_no_plot_and_bytes_come_from_throughput() {
    let tmp = tempfile::tempdir().unwrap();
    let crit = tmp.path().join("criterion");
    write_bench(&crit, "rmsnorm", "bf16", "rows=8,d=768", 25600, 2000.0);
    let out = tmp.path().join("report.md");
    let run = Command::new(BIN)
        .arg("--criterion")
        .arg(&crit)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success());
    let md = fs::read_to_string(&out).unwrap();
    assert!(md.contains("No roofline.json"), "{md}");
    assert!(
        md.contains("| rmsnorm | bf16/rows=8,d=768 | 2.00 µs"),
        "{md}"
    );
    assert!(md.contains("| 12.8 |"), "{md}");
    assert!(!tmp.path().join("roofline.png").exists());
}

#[test]
fn bad_inputs_are_errors_that_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = Command::new(BIN)
        .arg("--criterion")
        .arg(tmp.path().join("nothing"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("is not a directory"));

    let crit = tmp.path().join("criterion");
    synthetic_tree(&crit);
    fs::write(crit.join("roofline.json"), "{\"copy\": 1}").unwrap();
    let bad = Command::new(BIN)
        .arg("--criterion")
        .arg(&crit)
        .arg("--out")
        .arg(tmp.path().join("r.md"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("roofline.json"));

    let usage = Command::new(BIN).arg("--bogus").output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
}
