//! The `stagformer` binary end to end: init → inspect → score (every mode) → generate → bench,
//! and bad input reported as an error (exit code 1, message on stderr), never a panic.

use std::path::Path;
use std::process::{Command, Output};

fn stagformer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stagformer"))
        .args(args)
        .output()
        .expect("run stagformer")
}

fn ok(args: &[&str]) -> String {
    let out = stagformer(args);
    assert!(
        out.status.success(),
        "stagformer {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str], needle: &str) {
    let out = stagformer(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stagformer {args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "stagformer {args:?}: {stderr:?} lacks {needle:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn logits(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).expect("logits file");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let t = st.tensor("logits").expect("logits tensor");
    let data = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (t.shape().to_vec(), data)
}

#[test]
fn init_inspect_score_generate_bench() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    let m = model.to_str().unwrap();
    ok(&[
        "init", "--preset", "tiny", "--seed", "5", "--dtype", "bf16", "--out", m,
    ]);
    let info = ok(&["inspect", "--model", m]);
    assert!(
        info.contains("StagFormer p=2") && info.contains("total"),
        "{info}"
    );

    let tokens = "5,17,3,9,200,31,7";
    let mut outputs = Vec::new();
    for (mode, prompt) in [("forward", "1"), ("decode", "1"), ("decode", "4")] {
        let out = dir.path().join(format!("{mode}-{prompt}.safetensors"));
        let o = out.to_str().unwrap();
        ok(&[
            "score",
            "--model",
            m,
            "--tokens",
            tokens,
            "--mode",
            mode,
            "--prompt-len",
            prompt,
            "--out",
            o,
        ]);
        let (shape, data) = logits(&out);
        assert_eq!(shape, vec![7, 512]);
        assert!(data.iter().all(|v| v.is_finite()));
        outputs.push(data);
    }
    let scale = outputs[0].iter().fold(0f32, |m, v| m.max(v.abs()));
    for other in &outputs[1..] {
        let diff = outputs[0]
            .iter()
            .zip(other)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff / scale < 1e-5,
            "decode differs from forward: {}",
            diff / scale
        );
    }

    let text = ok(&[
        "generate",
        "--model",
        m,
        "--tokens",
        "1,2,3",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
    ]);
    assert!(!text.is_empty());
    let again = ok(&[
        "generate",
        "--model",
        m,
        "--tokens",
        "1,2,3",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
    ]);
    assert_eq!(text, again, "greedy generation is deterministic");

    let table = ok(&[
        "bench",
        "--model",
        m,
        "--new-tokens",
        "2",
        "--prompt-len",
        "4",
    ]);
    for row in ["prefill", "sequential", "staggered", "batched", "recurrent"] {
        assert!(table.contains(row), "bench table lacks {row}: {table}");
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    let m = model.to_str().unwrap();
    ok(&["init", "--preset", "tiny", "--seed", "1", "--out", m]);
    let out = dir.path().join("x.safetensors");
    let o = out.to_str().unwrap();
    fails(
        &["score", "--model", m, "--tokens", "1,512", "--out", o],
        "out of range",
    );
    fails(
        &["score", "--model", m, "--tokens", "1,x", "--out", o],
        "not a token id",
    );
    fails(
        &[
            "score",
            "--model",
            m,
            "--tokens",
            "1,2",
            "--mode",
            "recurrent",
            "--out",
            o,
        ],
        "recurrent mode",
    );
    fails(
        &[
            "score",
            "--model",
            "/nonexistent",
            "--tokens",
            "1",
            "--out",
            o,
        ],
        "config.json",
    );
    fails(
        &["init", "--preset", "huge", "--seed", "1", "--out", o],
        "unknown preset",
    );
}

#[test]
fn emulated_kernels_match_the_cpu_reference() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    let m = model.to_str().unwrap();
    ok(&["init", "--preset", "tiny", "--seed", "8", "--out", m]);
    let tokens = "4,90,17,301,2,2,77,5,11";
    for (mode, prompt, exec) in [
        ("forward", "1", "staggered"),
        ("decode", "3", "staggered"),
        ("decode", "3", "sequential"),
    ] {
        let cpu = dir.path().join("cpu.safetensors");
        let emu = dir.path().join("emu.safetensors");
        let common = [
            "score",
            "--model",
            m,
            "--tokens",
            tokens,
            "--mode",
            mode,
            "--prompt-len",
            prompt,
        ];
        ok(&[
            &common[..],
            &["--device", "cpu", "--out", cpu.to_str().unwrap()],
        ]
        .concat());
        ok(&[
            &common[..],
            &[
                "--device",
                "emu",
                "--mode-exec",
                exec,
                "--out",
                emu.to_str().unwrap(),
            ],
        ]
        .concat());
        let (shape_c, want) = logits(&cpu);
        let (shape_e, got) = logits(&emu);
        assert_eq!(shape_c, shape_e);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = want
            .iter()
            .zip(&got)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff / scale < 1e-4,
            "{mode} {exec}: emu differs from cpu by {}",
            diff / scale
        );
    }
    let table = ok(&[
        "bench",
        "--model",
        m,
        "--device",
        "emu",
        "--new-tokens",
        "2",
        "--prompt-len",
        "4",
    ]);
    for row in ["prefill", "sequential", "staggered", "batched", "recurrent"] {
        assert!(table.contains(row), "emu bench table lacks {row}: {table}");
    }
    // Without a GPU (the usual case here) `--device cuda` must say so plainly; with one it runs.
    let out_file = dir.path().join("cuda.safetensors");
    let cuda = stagformer(&[
        "score",
        "--model",
        m,
        "--tokens",
        "1,2",
        "--device",
        "cuda",
        "--out",
        out_file.to_str().unwrap(),
    ]);
    if !cuda.status.success() {
        let stderr = String::from_utf8_lossy(&cuda.stderr);
        assert!(
            stderr.contains("no usable CUDA GPU") || stderr.contains("--features cuda"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
