//! `stagformer inspect --plan`: the JSON plan is the decoder's (and what a decoder built from
//! the checkpoint on the emulated device really holds); the table names every part; bad
//! options are errors; `--gpu` is accepted wherever `--device` is.

use std::path::Path;
use std::process::{Command, Output};

use stagformer::{Decoder, DecoderOptions, ExecMode};
use stagformer_kernels::Device;
use stagformer_ref::{Checkpoint, TensorSource};

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

fn init(dir: &Path) -> String {
    let m = dir.join("tiny");
    let m = m.to_str().expect("utf-8 path").to_owned();
    ok(&["init", "--preset", "tiny", "--seed", "3", "--out", &m]);
    m
}

fn field(json: &serde_json::Value, name: &str) -> usize {
    json[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} missing in {json}")) as usize
}

#[test]
fn json_plan_is_what_the_decoder_allocates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = init(dir.path());
    let ckpt = Checkpoint::open(Path::new(&m)).expect("checkpoint");
    // The default page size (16), dense caches, and pages of one slot.
    for (batch, capacity, schedule, mode, page) in [
        ("1", 32usize, "staggered", ExecMode::Staggered, None),
        ("3", 100, "grouped", ExecMode::Grouped, None),
        ("2", 40, "staggered", ExecMode::Staggered, Some(0)),
        ("2", 40, "grouped", ExecMode::Grouped, Some(1)),
    ] {
        let cap = capacity.to_string();
        let page_arg = page.map(|p: usize| p.to_string());
        let mut args = vec![
            "inspect",
            "--model",
            &m,
            "--plan",
            "--max-batch",
            batch,
            "--capacity",
            &cap,
            "--dtype",
            "f32",
            "--schedule",
            schedule,
            "--json",
        ];
        if let Some(p) = &page_arg {
            args.extend(["--kv-page-size", p.as_str()]);
        }
        let out = ok(&args);
        let json: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
        let opts = DecoderOptions {
            mode,
            kv_page_size: page.unwrap_or(16),
            ..DecoderOptions::new(batch.parse().expect("batch"), capacity)
        };
        assert_eq!(field(&json, "kv_page_size"), opts.kv_page_size);
        let plan = Decoder::<f32>::memory_plan(ckpt.config(), &opts).expect("plan");
        assert_eq!(field(&json, "total_bytes"), plan.total_bytes, "{json}");
        assert_eq!(field(&json, "weights_bytes"), plan.weights_bytes);
        assert_eq!(field(&json, "kv_bytes"), plan.kv_bytes);
        assert_eq!(field(&json, "scratch_bytes"), plan.scratch_bytes);
        let parts: usize = [
            "weights_bytes",
            "kv_bytes",
            "prompt_memory_bytes",
            "rope_bytes",
            "scratch_bytes",
            "logits_bytes",
            "workspace_bytes",
        ]
        .iter()
        .map(|n| field(&json, n))
        .sum();
        assert_eq!(parts, plan.total_bytes);
        let device = Device::emulated();
        let decoder = Decoder::<f32>::from_checkpoint(&device, &ckpt, opts).expect("decoder");
        assert_eq!(device.allocated_bytes(), plan.total_bytes);
        drop(decoder);
    }
}

#[test]
fn the_table_lists_every_part_and_bf16_halves_the_weights() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = init(dir.path());
    let table = ok(&["inspect", "--model", &m, "--plan", "--capacity", "64"]);
    for label in [
        "weights",
        "kv",
        "prompt memory",
        "rope",
        "scratch",
        "logits",
        "workspace",
        "total",
    ] {
        assert!(
            table.contains(&format!("  {label} ")),
            "{label} missing:\n{table}"
        );
    }
    assert!(table.contains("bf16"), "{table}");
    let json = |dtype: &str| -> serde_json::Value {
        let out = ok(&[
            "inspect",
            "--model",
            &m,
            "--plan",
            "--capacity",
            "64",
            "--dtype",
            dtype,
            // Dense: a paged plan adds block tables (i32 in either dtype).
            "--kv-page-size",
            "0",
            "--json",
        ]);
        serde_json::from_str(out.trim()).expect("json")
    };
    let (f, b) = (json("f32"), json("bf16"));
    assert!(field(&b, "weights_bytes") < field(&f, "weights_bytes"));
    assert!(field(&b, "kv_bytes") * 2 == field(&f, "kv_bytes"));
}

#[test]
fn refused_plans_and_flags_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = init(dir.path());
    for (args, needle) in [
        (vec!["--plan", "--max-batch", "0"], "max_batch"),
        (vec!["--plan", "--capacity", "100000000"], "capacity"),
        (vec!["--plan", "--schedule", "batched"], "shared weights"),
        (vec!["--json"], "--plan"),
    ] {
        let mut all = vec!["inspect", "--model", &m];
        all.extend(args.iter().copied());
        let out = stagformer(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{all:?} succeeded");
        assert!(stderr.contains(needle), "{all:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn gpu_is_accepted_wherever_device_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = init(dir.path());
    // The emulator ignores the ordinal; a missing GPU 7 is an error naming it.
    let o = dir.path().join("logits.safetensors");
    let o = o.to_str().expect("utf-8 path");
    let score = |device: &str| {
        stagformer(&[
            "score", "--model", &m, "--device", device, "--gpu", "7", "--tokens", "1,2,3", "--out",
            o,
        ])
    };
    assert!(score("emu").status.success());
    let out = score("cuda");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--gpu 7") || stderr.contains("--features cuda"),
        "{stderr}"
    );
}
