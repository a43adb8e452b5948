//! The C examples (`examples/c/score.c`, `examples/c/generate.c`) compiled with the system C
//! compiler against the library this `cargo test` built, then run on the emulated device:
//! score.c's logits must equal the CPU reference's to 1e-4 of the largest logit (the decoder
//! parity bound for f32), generate.c's tokens those of the Rust decoder stepping the same
//! rows, and its greedy tokens the reference's greedy continuation.
//!
//! Needs `cc` (or `$CC`) on the PATH: without one the test fails, it does not skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use stagformer::{BatchRow, Decoder, DecoderOptions, ExecMode, SamplingParams};
use stagformer_kernels::Device;
use stagformer_ref::{init, sample, score, Checkpoint, Model, ScoreMode, StorageDtype};

const TOL: f64 = 1e-4;
const TOKENS: [u32; 7] = [1, 17, 42, 7, 99, 3, 250];
/// What generate.c feeds and how it samples (keep in step with the file).
const PROMPTS: [&[u32]; 2] = [&[1, 2, 3, 4, 5], &[7, 8, 9]];
const NEW_TOKENS: usize = 6;
const WARM: SamplingParams = SamplingParams {
    temperature: 0.8,
    top_k: 20,
    top_p: 0.95,
    seed: 42,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The directory cargo put this build's libraries in: the test binary lives in `<dir>/deps`.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let deps = exe.parent().expect("deps directory");
    deps.parent().expect("profile directory").to_path_buf()
}

/// `name` as this build wrote it: in `deps` (the profile directory may hold a copy from an
/// earlier `cargo build`, which is not rebuilt for a test).
fn built(name: &str) -> PathBuf {
    let dir = lib_dir();
    [dir.join("deps").join(name), dir.join(name)]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found in {}/deps (or above)", dir.display()))
}

/// Compiles `examples/c/<source>` into `out` with `link` arguments; panics with the
/// compiler's output on failure, and loudly when there is no C compiler.
fn compile(source: &str, out: &Path, link: &[String]) {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let src = repo().join("examples/c").join(source);
    let mut cmd = Command::new(&cc);
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-I"])
        .arg(repo().join("include"))
        .arg(&src)
        .arg("-o")
        .arg(out)
        .args(link);
    let output = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run the C compiler `{cc}` ({e}): these tests need one (set CC)")
    });
    assert!(
        output.status.success(),
        "{cc} {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `program` with `args`; its stdout, or a panic with its stderr.
fn run(program: &Path, args: &[String]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    assert!(
        output.status.success(),
        "{} {args:?} failed ({}):\n{}",
        program.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// A random tiny f32 checkpoint in a fresh directory.
fn checkpoint() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let cfg = init::preset("tiny").unwrap();
    init::write_random_checkpoint(&cfg, 11, StorageDtype::F32, 1, dir.path()).unwrap();
    dir
}

fn path_arg(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_owned()
}

/// score.c's output file: "T V" then T × V values.
fn read_logits(path: &Path) -> (usize, usize, Vec<f32>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let head: Vec<usize> = lines
        .next()
        .unwrap()
        .split(' ')
        .map(|v| v.parse().unwrap())
        .collect();
    let values = lines.map(|v| v.parse().unwrap()).collect();
    (head[0], head[1], values)
}

/// The largest difference relative to the largest reference value.
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let diff = got.iter().zip(want).fold(0f64, |m, (&a, &b)| {
        m.max((f64::from(a) - f64::from(b)).abs())
    });
    diff / scale
}

/// score.c linked with the static library: its emu logits match the reference, its cpu
/// logits are the reference's exactly.
#[test]
fn score_c_matches_the_reference() {
    let dir = checkpoint();
    let exe = dir.path().join("score");
    // The static library's own dependencies: the C++ runtime of the emulator and libc's parts.
    let mut link = vec![path_arg(&built("libstagformer_capi.a"))];
    link.extend(
        ["-lstdc++", "-lpthread", "-lm", "-ldl", "-lrt", "-lutil"]
            .iter()
            .map(|s| s.to_string()),
    );
    compile("score.c", &exe, &link);

    let model = Model::load(dir.path()).unwrap();
    let want = score(&model, &TOKENS, ScoreMode::Forward).unwrap().data;
    let vocab = model.config.vocab_size;
    for (device, tol) in [("emu", TOL), ("cpu", 0.0)] {
        let out = dir.path().join(format!("logits-{device}.txt"));
        let mut args = vec![path_arg(dir.path()), device.into(), path_arg(&out)];
        args.extend(TOKENS.iter().map(|t| t.to_string()));
        run(&exe, &args);
        let (t, v, got) = read_logits(&out);
        assert_eq!((t, v), (TOKENS.len(), vocab), "{device}");
        let err = rel_err(&got, &want);
        assert!(
            err <= tol,
            "{device}: logits off by {err:.2e} of the largest"
        );
    }
}

/// Parses generate.c's "label: id id ..." line.
fn ids(stdout: &str, label: &str) -> Vec<u32> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{label}:")))
        .unwrap_or_else(|| panic!("no {label} line in {stdout:?}"));
    line.split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

/// What generate.c does, through the Rust decoder: both prompts in the first step, then one
/// token per sequence per step, sequence 0 greedy and sequence 1 with [`WARM`].
fn rust_generate(dir: &Path) -> [Vec<u32>; 2] {
    let checkpoint = Checkpoint::open(dir).unwrap();
    let opts = DecoderOptions {
        mode: ExecMode::Staggered,
        kv_page_size: 16,
        ..DecoderOptions::new(2, 5 + 64)
    };
    let mut decoder =
        Decoder::<f32>::from_checkpoint(&Device::emulated(), &checkpoint, opts).unwrap();
    let seqs = [decoder.add().unwrap(), decoder.add().unwrap()];
    let settings = [SamplingParams::GREEDY, WARM];
    let mut fed: [Vec<u32>; 2] = [PROMPTS[0].to_vec(), PROMPTS[1].to_vec()];
    let mut lens = [0, 0];
    let mut out: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..NEW_TOKENS {
        let rows: Vec<BatchRow> = (0..2)
            .map(|r| {
                BatchRow::chunk(seqs[r], lens[r], fed[r].clone()).with_sample(Some(settings[r]))
            })
            .collect();
        let outputs = decoder.step_batch(&rows).unwrap();
        for r in 0..2 {
            lens[r] += fed[r].len();
            let token = outputs[r].sampled.unwrap().token;
            out[r].push(token);
            fed[r] = vec![token];
        }
    }
    out
}

/// The reference's greedy continuation of `prompt` by `n` tokens (each a full forward pass).
fn reference_greedy(model: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let vocab = model.config.vocab_size;
    let mut tokens = prompt.to_vec();
    for _ in 0..n {
        let logits = score(model, &tokens, ScoreMode::Forward).unwrap().data;
        tokens.push(sample::argmax(&logits[logits.len() - vocab..]));
    }
    tokens.split_off(prompt.len())
}

/// generate.c linked with the shared library: its tokens are the Rust decoder's, and its
/// greedy ones the reference's.
#[test]
fn generate_c_matches_the_decoder() {
    let dir = checkpoint();
    let exe = dir.path().join("generate");
    let lib = built("libstagformer_capi.so");
    let lib_dir = lib.parent().unwrap();
    let link = vec![
        format!("-L{}", path_arg(lib_dir)),
        format!("-Wl,-rpath,{}", path_arg(lib_dir)),
        "-lstagformer_capi".into(),
    ];
    compile("generate.c", &exe, &link);

    let stdout = run(
        &exe,
        &[path_arg(dir.path()), "emu".into(), NEW_TOKENS.to_string()],
    );
    let got = [ids(&stdout, "greedy"), ids(&stdout, "sampled")];
    assert_eq!(
        got,
        rust_generate(dir.path()),
        "generate.c vs the Rust decoder"
    );
    let model = Model::load(dir.path()).unwrap();
    assert_eq!(
        got[0],
        reference_greedy(&model, PROMPTS[0], NEW_TOKENS),
        "greedy tokens vs the CPU reference"
    );
}
