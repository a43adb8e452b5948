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

/// max|got − want| / max|want|; infinite when `got` holds a non-finite value.
fn rel_max_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    if got.iter().any(|v| !v.is_finite()) {
        return f32::INFINITY;
    }
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = want
        .iter()
        .zip(got)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
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
            "--device",
            "cpu",
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
        "--device",
        "cpu",
        "--tokens",
        "1,2,3",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
    ]);
    assert!(!text.is_empty());
    // The short flags are the long ones.
    let again = ok(&[
        "generate",
        "-m",
        m,
        "-d",
        "cpu",
        "-t",
        "1,2,3",
        "-n",
        "5",
        "--temperature",
        "0",
    ]);
    assert_eq!(text, again, "greedy generation is deterministic");

    let table = ok(&[
        "bench",
        "--model",
        m,
        "--device",
        "cpu",
        "--new-tokens",
        "2",
        "--prompt-len",
        "4",
        "--repetitions",
        "2",
    ]);
    for row in [
        "| sequential | pp4 |",
        "| sequential | tg2 @ d4 |",
        "| staggered | n/a",
        "| batched | n/a",
        "| grouped | n/a",
        "| recurrent | n/a",
    ] {
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
            "--device",
            "cpu",
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
        ("decode", "3", "grouped"),
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
                "--schedule",
                exec,
                "--out",
                emu.to_str().unwrap(),
            ],
        ]
        .concat());
        let (shape_c, want) = logits(&cpu);
        let (shape_e, got) = logits(&emu);
        assert_eq!(shape_c, shape_e);
        let err = rel_max_err(&got, &want);
        assert!(err < 1e-4, "{mode} {exec}: emu differs from cpu by {err}");
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
        "--repetitions",
        "2",
    ]);
    for row in [
        "| sequential | pp4 |",
        "| sequential | tg2 @ d4 |",
        "| staggered | tg2 @ d4 |",
        "| batched | n/a",
        "| grouped | tg2 @ d4 |",
        "| recurrent | n/a",
    ] {
        assert!(table.contains(row), "emu bench table lacks {row}: {table}");
    }
    assert!(table.contains("step graphs on"), "{table}");
    let eager = ok(&[
        "bench",
        "--model",
        m,
        "--device",
        "emu",
        "--new-tokens",
        "1",
        "--prompt-len",
        "2",
        "--repetitions",
        "1",
        "--no-graph",
    ]);
    assert!(eager.contains("step graphs off"), "{eager}");
    // Generation on the emulated device samples on the device with the CPU's sampler rule:
    // the same tokens as the reference, greedy and sampled, with and without step graphs.
    for temperature in ["0", "0.8"] {
        let gen = |extra: &[&str]| {
            ok(&[
                &[
                    "generate",
                    "--model",
                    m,
                    "--tokens",
                    "1,2,3",
                    "--max-new-tokens",
                    "6",
                    "--temperature",
                    temperature,
                    "--seed",
                    "5",
                ][..],
                extra,
            ]
            .concat())
        };
        let cpu = gen(&["--device", "cpu"]);
        assert!(!cpu.trim().is_empty());
        for extra in [&["--device", "emu"][..], &["--device", "emu", "--no-graph"]] {
            assert_eq!(
                gen(extra),
                cpu,
                "generate {extra:?} at temperature {temperature}"
            );
        }
    }
    // `auto` without a GPU falls back to the cpu with a note.
    let auto_file = dir.path().join("auto.safetensors");
    let auto = stagformer(&[
        "score",
        "--model",
        m,
        "--tokens",
        "1,2",
        "--device",
        "auto",
        "--out",
        auto_file.to_str().unwrap(),
    ]);
    assert!(auto.status.success(), "{auto:?}");
    let stderr = String::from_utf8_lossy(&auto.stderr);
    if stderr.contains("no CUDA GPU") {
        assert!(stderr.contains("running on the cpu"), "{stderr}");
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

/// `score --device emu` against `score --device cpu` for the variant matrix (p 1–4,
/// separate/shared, windows, output mix, GQA, tied), in every execution mode that applies, with
/// step graphs and with `--no-graph`; recurrent scoring for the shared p = 2 models.
#[test]
fn score_on_emu_matches_cpu_over_the_variant_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = "4,30,17,2,2,39,5,11,23,8,1,0";
    let mut n = 0;
    for sections in 1..=4usize {
        for shared in [false, true] {
            for window in [None, Some(1), Some(3)] {
                if sections == 1 && window.is_some() {
                    continue;
                }
                n += 1;
                let config = stagformer_ref::Config {
                    vocab_size: 41,
                    hidden_size: 32,
                    intermediate_size: 48,
                    num_hidden_layers: if shared { 2 } else { 2 * sections },
                    num_attention_heads: 4,
                    num_key_value_heads: if n % 2 == 0 { 2 } else { 4 },
                    head_dim: 8,
                    rms_norm_eps: 1e-6,
                    rope_theta: 10000.0,
                    rope_scaling: stagformer_ref::RopeScaling::Default,
                    sliding_window: None,
                    max_position_embeddings: 64,
                    tie_word_embeddings: n % 3 == 0,
                    stag_sections: sections,
                    stag_shared_weights: shared,
                    stag_cross_window: window,
                    stag_output_mix: sections > 1 && n % 4 < 2,
                };
                let name = format!("v{n}");
                let config_path = dir.path().join(format!("{name}.json"));
                std::fs::write(&config_path, config.to_json().to_string()).unwrap();
                let model = dir.path().join(&name);
                let m = model.to_str().unwrap();
                let seed = n.to_string();
                ok(&[
                    "init",
                    "--config",
                    config_path.to_str().unwrap(),
                    "--seed",
                    &seed,
                    "--out",
                    m,
                ]);
                let mut runs = vec![("decode", "sequential"), ("decode", "staggered")];
                if shared || sections == 1 {
                    runs.push(("decode", "batched"));
                }
                runs.push(("decode", "grouped"));
                if shared && sections == 2 {
                    runs.push(("recurrent", "sequential"));
                }
                for (k, (mode, exec)) in runs.into_iter().enumerate() {
                    let score = |device: &str, extra: &[&str]| {
                        let out = dir.path().join(format!("{name}-{device}.safetensors"));
                        let args = [
                            &[
                                "score",
                                "--model",
                                m,
                                "--tokens",
                                tokens,
                                "--mode",
                                mode,
                                "--prompt-len",
                                "3",
                                "--device",
                                device,
                                "--out",
                            ][..],
                            &[out.to_str().unwrap()],
                            extra,
                        ]
                        .concat();
                        ok(&args);
                        logits(&out)
                    };
                    let (shape_c, want) = score("cpu", &[]);
                    // Alternate graphs on and off over the matrix.
                    let graph_flag: &[&str] = if (n + k) % 2 == 0 {
                        &[]
                    } else {
                        &["--no-graph"]
                    };
                    // `--mode-exec`, the former name of `--schedule`, is still accepted.
                    let (shape_e, got) =
                        score("emu", &[&["--mode-exec", exec], graph_flag].concat());
                    assert_eq!(shape_c, shape_e);
                    let err = rel_max_err(&got, &want);
                    assert!(
                        err < 1e-4,
                        "{config:?} {mode} {exec} {graph_flag:?}: emu differs from cpu by {err}"
                    );
                }
            }
        }
    }
}

/// Output piped into a reader that has gone away ends the process quietly (SIGPIPE, as for any
/// Unix tool), not with a panic.
#[cfg(unix)]
#[test]
fn a_closed_stdout_pipe_is_not_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_stagformer"))
        .args([
            "bench",
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--new-tokens",
            "1",
            "--prompt-len",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run stagformer");
    // Close the read end before the command prints anything (it builds a model first).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
}

/// A checkpoint with `tie_word_embeddings: true` that also stores a (different) `lm_head.weight`
/// loads like Hugging Face loads it: the embedding is the output projection, and every command
/// says so on stderr as a `warning:` line. Scores equal those of the checkpoint without it.
#[test]
fn tied_checkpoint_with_a_stored_lm_head_warns_and_uses_the_embedding() {
    let dir = tempfile::tempdir().unwrap();
    let with = dir.path().join("with");
    let without = dir.path().join("without");
    for d in [&with, &without] {
        ok(&[
            "init",
            "--preset",
            "tiny",
            "--seed",
            "3",
            "--out",
            d.to_str().unwrap(),
        ]);
        let cfg = d.join("config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        v["tie_word_embeddings"] = serde_json::json!(true);
        std::fs::write(&cfg, v.to_string()).unwrap();
    }
    // `without`: drop the stored head.
    let path = without.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "lm_head.weight")
        .collect();
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(&path, out).unwrap();

    let (w, wo) = (with.to_str().unwrap(), without.to_str().unwrap());
    let inspect = stagformer(&["inspect", "--model", w]);
    assert!(inspect.status.success());
    let stderr = String::from_utf8_lossy(&inspect.stderr);
    assert!(
        stderr.starts_with("warning: ") && stderr.contains("lm_head.weight"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&inspect.stdout).contains("tied embeddings"));
    assert!(stagformer(&["inspect", "--model", wo]).stderr.is_empty());

    let tokens = "5,17,3,9";
    let score = |model: &str, device: &str| {
        let out = dir.path().join(format!(
            "{}-{device}.safetensors",
            Path::new(model).file_name().unwrap().to_str().unwrap()
        ));
        let o = out.to_str().unwrap();
        let run = stagformer(&[
            "score", "--model", model, "--tokens", tokens, "--device", device, "--out", o,
        ]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        (
            logits(&out).1,
            String::from_utf8_lossy(&run.stderr).into_owned(),
        )
    };
    for device in ["cpu", "emu"] {
        let (got, warned) = score(w, device);
        let (want, quiet) = score(wo, device);
        assert!(warned.contains("warning: "), "{device}: {warned}");
        assert!(!quiet.contains("warning"), "{device}: {quiet}");
        assert_eq!(got, want, "{device}");
    }
}

/// Runs `stagformer` with stdout or stderr (or both) writing into /dev/full, where every write
/// fails with ENOSPC.
fn with_full(args: &[&str], stdout: bool, stderr: bool) -> Output {
    use std::process::Stdio;
    let full = || Stdio::from(std::fs::File::create("/dev/full").expect("/dev/full"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stagformer"));
    cmd.args(args);
    cmd.stdout(if stdout { full() } else { Stdio::piped() });
    cmd.stderr(if stderr { full() } else { Stdio::piped() });
    cmd.output().expect("run stagformer")
}

#[test]
fn preset_options_are_checked_before_they_are_used() {
    for cmd in ["bench", "score"] {
        let mut args = vec![
            cmd,
            "--preset",
            "tiny",
            "--shared-weights",
            "--sections",
            "0",
            "--tokens",
            "1,2",
            "--out",
            "/nonexistent/x",
        ];
        if cmd == "bench" {
            args.truncate(6);
        }
        fails(&args, "--sections must be at least 1");
    }
    fails(
        &[
            "bench",
            "--preset",
            "tiny",
            "--shared-weights",
            "--sections",
            "8",
        ],
        "fewer than the 8 sections",
    );
}

#[test]
fn huge_bench_sizes_are_refused_not_wrapped() {
    let max = "18446744073709551615";
    for flag in ["--prompt-len", "--warmup", "--new-tokens"] {
        fails(
            &["bench", "--preset", "tiny", "--device", "cpu", flag, max],
            "exceeds the model's 512 positions",
        );
    }
    fails(
        &[
            "bench", "--preset", "tiny", "--device", "cpu", "--batch", max,
        ],
        "more than 1024 sequences",
    );
}

#[test]
fn a_failing_stdout_or_stderr_is_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    let m = model.to_str().unwrap();
    // A failing stderr only loses the note: the checkpoint is written and init succeeds.
    let out = with_full(
        &["init", "--preset", "tiny", "--seed", "1", "--out", m],
        false,
        true,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(model.join("model.safetensors").is_file());
    let bench = [
        "bench",
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--new-tokens",
        "1",
        "--prompt-len",
        "2",
    ];
    for args in [&["inspect", "--model", m][..], &bench[..]] {
        let out = with_full(args, true, false);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("cannot write to stdout"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        // Both failing: still exit 1, no panic (101).
        let out = with_full(args, true, true);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
    }
}

#[test]
fn max_new_tokens_beyond_the_positions_is_clamped() {
    let out = stagformer(&[
        "generate",
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--tokens",
        "1,2,3",
        "--ignore-eos",
        "--max-new-tokens",
        "18446744073709551615",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("generating at most 509"), "{stderr}");
    assert!(stderr.contains("generation: 509 tokens"), "{stderr}");
}

/// `fails`, for a command that a regression would leave blocked (opening a FIFO): killed after
/// a minute instead of hanging the test run.
fn fails_without_blocking(args: &[&str], needle: &str) {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let mut child = Command::new(env!("CARGO_BIN_EXE_stagformer"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run stagformer");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("stagformer {args:?} blocked");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stagformer {args:?}: {stderr}");
    assert!(stderr.contains(needle), "{stderr:?} lacks {needle:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Outputs replace only regular files (or are new), are written whole and honour the umask.
#[test]
fn outputs_replace_only_regular_files_and_honour_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    let m = model.to_str().unwrap();
    ok(&["init", "--preset", "tiny", "--seed", "1", "--out", m]);
    let score = |out: &str| {
        vec!["score", "--model", m, "--tokens", "1,2", "--out", out]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let link = dir.path().join("link");
    let target = dir.path().join("target");
    std::fs::write(&target, "keep").unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    // No device node here: a binary that got this wrong, run as root, would replace the
    // system's /dev/null. Devices take the same path as FIFOs (anything not a regular file).
    for (path, what) in [
        (fifo.as_path(), "a FIFO"),
        (link.as_path(), "a symlink"),
        (sub.as_path(), "a directory"),
    ] {
        let args = score(path.to_str().unwrap());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&args, what);
        let json = [
            "bench",
            "--preset",
            "tiny",
            "--json",
            path.to_str().unwrap(),
        ];
        let out = stagformer(&json);
        assert_eq!(out.status.code(), Some(1));
        // Refused before the run: nothing was benchmarked.
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains(what));
    }
    // init's files too: a config.json that is a symlink is not written through.
    let linked = dir.path().join("linked");
    std::fs::create_dir(&linked).unwrap();
    std::os::unix::fs::symlink(&target, linked.join("config.json")).unwrap();
    let l = linked.to_str().unwrap();
    fails(
        &["init", "--preset", "tiny", "--seed", "1", "--out", l],
        "config.json: cannot write: it is a symlink",
    );
    assert!(!linked.join("model.safetensors").exists());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");

    // A regular file is replaced; new files get 0o666 less the umask.
    let bin = env!("CARGO_BIN_EXE_stagformer");
    let umask = |args: &[&str]| {
        let out = Command::new("sh")
            .arg("-c")
            .arg("umask 027; exec \"$@\"")
            .arg("sh")
            .arg(bin)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let logits = dir.path().join("logits.safetensors");
    std::fs::write(&logits, "old").unwrap();
    let args = score(logits.to_str().unwrap());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    umask(&args);
    assert!(std::fs::metadata(&logits).unwrap().len() > 3);
    let model2 = dir.path().join("tiny2");
    umask(&[
        "init",
        "--preset",
        "tiny",
        "--seed",
        "1",
        "--shards",
        "2",
        "--out",
        model2.to_str().unwrap(),
    ]);
    for f in [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
    ] {
        assert_eq!(mode(&model2.join(f)), 0o640, "{f}");
    }
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(&model2)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

/// Inputs that are not regular files are refused (never opened, so a FIFO cannot block), and
/// the message says what they are.
#[test]
fn special_input_files_are_refused_saying_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    let m = model.to_str().unwrap();
    ok(&["init", "--preset", "tiny", "--seed", "1", "--out", m]);
    let config = model.join("config.json");
    let weights = model.join("model.safetensors");
    let saved = std::fs::read(&config).unwrap();

    std::fs::remove_file(&config).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &config).unwrap();
    fails(&["inspect", "--model", m], "is a character device");
    std::fs::remove_file(&config).unwrap();
    mkfifo(&config);
    fails_without_blocking(&["inspect", "--model", m], "is a FIFO");
    std::fs::remove_file(&config).unwrap();
    // Larger than the limit (a sparse file: no disk is used).
    let big = std::fs::File::create(&config).unwrap();
    big.set_len((16 << 20) + 1).unwrap();
    fails(&["inspect", "--model", m], "larger than");
    std::fs::remove_file(&config).unwrap();
    // A symlink to a regular file is fine (Hugging Face's cache is made of them).
    let real = dir.path().join("real-config.json");
    std::fs::write(&real, &saved).unwrap();
    std::os::unix::fs::symlink(&real, &config).unwrap();
    ok(&["inspect", "--model", m]);

    let saved_weights = dir.path().join("weights");
    std::fs::rename(&weights, &saved_weights).unwrap();
    mkfifo(&weights);
    fails_without_blocking(&["inspect", "--model", m], "is a FIFO");
    std::fs::remove_file(&weights).unwrap();
    std::fs::create_dir(&weights).unwrap();
    fails(
        &["inspect", "--model", m],
        "model.safetensors: is a directory",
    );
    std::fs::remove_dir(&weights).unwrap();
    std::os::unix::fs::symlink(dir.path().join("gone"), &weights).unwrap();
    fails(&["inspect", "--model", m], "is a dangling symlink");
    std::fs::remove_file(&weights).unwrap();
    std::fs::rename(&saved_weights, &weights).unwrap();

    // generation_config.json and tokenizer.json: a FIFO is refused, not opened.
    let generate = [
        "generate", "--model", m, "--device", "cpu", "--prompt", "hi",
    ];
    ok(&generate);
    for name in ["generation_config.json", "tokenizer.json"] {
        let path = model.join(name);
        mkfifo(&path);
        fails_without_blocking(&generate, "not a regular file");
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn messages_name_the_cause_once_and_bad_values_are_refused() {
    let out = stagformer(&["inspect", "--model", "/nonexistent"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("os error 2").count(), 1, "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{").unwrap();
    let out = stagformer(&["inspect", "--model", dir.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("EOF while parsing").count(), 1, "{stderr}");

    let generate = |extra: &[&str]| {
        let mut args = vec!["generate", "--preset", "tiny", "--device", "cpu"];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    for (extra, needle) in [
        (&["--tokens", "1", "--temperature", "-1"][..], "temperature"),
        (&["--tokens", "1", "--top-p", "-0.5"][..], "top_p"),
        (&["--tokens", "1,,2"][..], "entry 1 is empty"),
        (&["--tokens", "+5"][..], "not a token id"),
        (&["--tokens", "1,2,"][..], "entry 2 is empty"),
    ] {
        let args = generate(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&args, needle);
    }
}

/// `init` without `--seed` draws seed 0: the weights `--preset NAME` (whose `--preset-seed`
/// defaults to 0) runs without a checkpoint, so both score alike.
#[test]
fn init_seed_defaults_to_the_presets_seed() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    let m = model.to_str().unwrap();
    let out = stagformer(&["init", "--preset", "tiny", "-o", m]);
    assert!(out.status.success(), "{out:?}");
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(
        note.contains("275 K parameters") && note.contains("1.10 MB"),
        "{note}"
    );
    let score = |source: &[&str], name: &str| {
        let path = dir.path().join(name);
        let args = [
            &["score", "--device", "cpu", "-t", "5,17,3,9", "-o"][..],
            &[path.to_str().unwrap()],
            source,
        ]
        .concat();
        ok(&args);
        logits(&path).1
    };
    let from_checkpoint = score(&["-m", m], "ckpt.safetensors");
    let from_preset = score(&["--preset", "tiny"], "preset.safetensors");
    assert_eq!(from_checkpoint, from_preset);
    let other_seed = score(
        &["--preset", "tiny", "--preset-seed", "1"],
        "s1.safetensors",
    );
    assert_ne!(from_checkpoint, other_seed, "the seed changes the weights");
}

#[test]
fn inspect_shows_sizes_and_with_tensors_every_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    let m = model.to_str().unwrap();
    ok(&[
        "init", "--preset", "tiny", "--dtype", "bf16", "--shards", "2", "--out", m,
    ]);
    let plain = ok(&["inspect", "-m", m]);
    assert!(
        plain.contains("275,200") && plain.contains("275 K"),
        "{plain}"
    );
    assert!(
        plain.contains("in 2 safetensors files") && plain.contains("kB as bf16"),
        "{plain}"
    );
    assert!(!plain.contains("tensors:"), "{plain}");
    let listed = ok(&["inspect", "-m", m, "--tensors"]);
    assert!(listed.starts_with(&plain), "{listed}");
    assert!(listed.contains("tensors: 50"), "{listed}");
    let embed = listed
        .lines()
        .find(|l| l.trim_start().starts_with("model.embed_tokens.weight"))
        .unwrap_or_else(|| panic!("no embedding row: {listed}"));
    for field in ["bf16", "[512, 64]", "32,768", "65.54 kB", "model-0000"] {
        assert!(embed.contains(field), "{embed:?} lacks {field:?}");
    }
    // In the order the model uses them: the embedding first, the head last.
    let names: Vec<&str> = listed
        .lines()
        .skip_while(|l| !l.starts_with("tensors:"))
        .skip(2)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names.len(), 50);
    assert_eq!(names[0], "model.embed_tokens.weight");
    assert_eq!(names[49], "lm_head.weight");
}

/// `generate` on a preset says on stderr that the weights are random and points at `bench`;
/// on a checkpoint it does not.
#[test]
fn generate_on_a_preset_says_its_weights_are_random() {
    let out = stagformer(&[
        "generate", "--preset", "tiny", "-d", "cpu", "-p", "Once", "-n", "3",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--preset tiny has random weights (seed 0), not a trained model")
            && stderr.contains("`stagformer bench --preset tiny`"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("random"));
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    let m = model.to_str().unwrap();
    ok(&["init", "--preset", "tiny", "--out", m]);
    let out = stagformer(&["generate", "-m", m, "-d", "cpu", "-t", "1", "-n", "2"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("random weights"));
}

/// Runs a bench and returns (stdout, stderr), expecting success.
fn bench(args: &[&str]) -> (String, String) {
    let out = stagformer(&[&["bench", "--preset", "tiny"][..], args].concat());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "bench {args:?}: {stderr}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

fn mean(values: &[serde_json::Value]) -> f64 {
    values.iter().map(|v| v.as_f64().unwrap()).sum::<f64>() / values.len() as f64
}

/// The prompt × generation matrix with repetitions, as markdown, CSV and JSON (stdout and
/// `--json` alike); a loud warning on devices whose timings mean nothing for a GPU.
#[test]
fn bench_reports_a_matrix_of_repeated_tests_in_every_format() {
    let matrix = ["-d", "cpu", "-p", "2,3", "-n", "1,2", "-r", "3"];
    let (md, stderr) = bench(&matrix);
    assert!(
        stderr.contains("WARNING") && stderr.contains("mean nothing for a GPU"),
        "{stderr}"
    );
    assert!(!md.contains("WARNING"), "notes stay on stderr: {md}");
    assert!(md.contains("3 repetitions"), "{md}");
    for test in ["pp2", "tg1 @ d2", "tg2 @ d2", "pp3", "tg1 @ d3", "tg2 @ d3"] {
        let row = format!("| sequential | {test} |");
        let line = md
            .lines()
            .find(|l| l.starts_with(&row))
            .unwrap_or_else(|| panic!("no {row} in {md}"));
        assert_eq!(line.matches(" ± ").count(), 2, "{line}");
    }

    let (csv_text, _) = bench(&[&matrix[..], &["-o", "csv"]].concat());
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let header = reader.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    // 6 tests of the sequential mode, and one row for each of the 4 modes that do not apply.
    assert_eq!(records.len(), 10, "{csv_text}");
    for r in &records[..6] {
        assert_eq!(&r[col("mode")], "sequential");
        assert_eq!(&r[col("repetitions")], "3");
        assert_eq!(&r[col("timing")], "cpu reference");
        let ms: f64 = r[col("ms")].parse().unwrap();
        let std: f64 = r[col("ms_std")].parse().unwrap();
        assert!(ms > 0.0 && std >= 0.0, "{r:?}");
    }
    assert!(records[6..]
        .iter()
        .all(|r| r[col("note")].starts_with("n/a")));
    // The model's description holds commas: quoted, so every record has every column.
    assert!(records.iter().all(|r| r.len() == header.len()));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bench.json");
    let (json_text, _) = bench(
        &[
            &matrix[..],
            &["-o", "json", "--json", file.to_str().unwrap()],
        ]
        .concat(),
    );
    let doc: serde_json::Value = serde_json::from_str(&json_text).unwrap();
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(doc, written, "stdout and --json carry one document");
    assert_eq!(doc["timing"], "cpu reference");
    assert!(doc["timing_warning"]
        .as_str()
        .unwrap()
        .contains("mean nothing"));
    let decode = doc["decode"].as_array().unwrap();
    assert_eq!(decode.len(), 4);
    for e in decode {
        let samples = e["samples_ms_per_step"].as_array().unwrap();
        assert_eq!(samples.len(), 3);
        assert_eq!(e["repetitions"], 3);
        let m = e["ms_per_step"].as_f64().unwrap();
        assert!((m - mean(samples)).abs() <= 1e-9 * m, "{e}");
        assert!(e["ms_per_step_std"].as_f64().unwrap() >= 0.0);
        for field in [
            "model",
            "mode",
            "batch",
            "context",
            "new_tokens",
            "tokens_per_s",
        ] {
            assert!(!e[field].is_null(), "{field} in {e}");
        }
    }
    let contexts: Vec<u64> = decode
        .iter()
        .map(|e| e["context"].as_u64().unwrap())
        .collect();
    assert_eq!(contexts, [2, 2, 3, 3]);
    let prefill = doc["prefill"].as_array().unwrap();
    assert_eq!(prefill.len(), 2);
    assert_eq!(prefill[1]["prompt_len"], 3);
    assert_eq!(doc["skipped"].as_array().unwrap().len(), 4);

    // The kernels on the emulator: graph launch counts, and the same warning.
    let (json_text, stderr) = bench(&["-d", "emu", "-p", "2", "-n", "1", "-r", "1", "-o", "json"]);
    assert!(stderr.contains("--device emu") && stderr.contains("mean nothing for a GPU"));
    let doc: serde_json::Value = serde_json::from_str(&json_text).unwrap();
    let sequential = &doc["decode"][0];
    assert_eq!(sequential["mode"], "sequential");
    assert!(
        sequential["launches_per_step"].as_u64().unwrap() > 0,
        "{doc}"
    );
    assert!(sequential["predicted_ms_per_step"].as_f64().is_some());
    assert_eq!(doc["timing"], "emulated");
}

/// Progress bars are drawn on a terminal only: piped, stderr carries the notes and nothing of
/// a bar (no carriage returns, no escape sequences), even for a model large enough to get one.
#[test]
fn progress_bars_stay_off_pipes() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("small");
    let m = model.to_str().unwrap();
    // 35 M parameters: above the size that gets a bar on a terminal.
    let out = stagformer(&["init", "--preset", "small", "--dtype", "bf16", "-o", m]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.starts_with("wrote "), "{stderr:?}");
    let (_, stderr) = bench(&["-d", "cpu", "-p", "2", "-n", "1", "-r", "1"]);
    for out in [&stderr, &String::from_utf8_lossy(&out.stdout).into_owned()] {
        assert!(!out.contains('\r') && !out.contains('\u{1b}'), "{out:?}");
    }
}

#[test]
fn version_says_what_the_kernels_of_this_build_hold() {
    let text = ok(&["--version"]);
    let lines: Vec<&str> = text.lines().collect();
    let info = stagformer_kernels::build_info();
    assert_eq!(
        lines,
        [
            concat!("stagformer ", env!("CARGO_PKG_VERSION")).to_string(),
            info.to_string()
        ],
        "{text}"
    );
    assert!(lines[1].contains("host emulator"), "{text}");
    // `-V` is the short form: the version alone.
    assert_eq!(ok(&["-V"]).trim_end(), lines[0]);
}
