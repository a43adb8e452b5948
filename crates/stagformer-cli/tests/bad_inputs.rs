//! The bad-input table: one row per class of bad input (mutated checkpoints, mutated configs,
//! special files, bad requests to every command, failing stdout/stderr). Each row builds its
//! input in a temporary directory, runs `stagformer`, and asserts the exit code (1: an error
//! of ours, 2: clap refused the arguments), that stderr names the right file, field or tensor,
//! and that nothing panicked (101), hung (killed after a minute) or succeeded.
//!
//! Only paths under the test's own temporary directory are written; /dev/zero is only the
//! target of a symlink read from, /dev/full only the stdout/stderr of the child process.
//! `STAGFORMER_BAD_INPUT_FILTER=<substring>` runs the rows whose class contains it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One bad input and what `stagformer` must say about it.
struct Row {
    class: String,
    args: Vec<String>,
    /// 1 for our errors, 2 for clap's.
    code: i32,
    /// Each must appear in stderr.
    needles: Vec<String>,
    stdout_full: bool,
    stderr_full: bool,
}

fn row(class: &str, args: &[&str], code: i32, needles: &[&str]) -> Row {
    Row {
        class: class.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        code,
        needles: needles.iter().map(|s| s.to_string()).collect(),
        stdout_full: false,
        stderr_full: false,
    }
}

/// Runs a row; returns a description of what went wrong, if anything.
fn check(r: &Row) -> Option<String> {
    let full = || Stdio::from(std::fs::File::create("/dev/full").expect("/dev/full"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_stagformer"))
        .args(&r.args)
        .stdin(Stdio::null())
        .stdout(if r.stdout_full { full() } else { Stdio::null() })
        .stderr(if r.stderr_full {
            full()
        } else {
            Stdio::piped()
        })
        .spawn()
        .expect("run stagformer");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            let _ = child.wait();
            return Some(format!("{}: {:?} hung", r.class, r.args));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code();
    if code != Some(r.code) {
        return Some(format!(
            "{}: {:?} exited {code:?}, expected {}: {stderr}",
            r.class, r.args, r.code
        ));
    }
    if stderr.contains("panicked") {
        return Some(format!("{}: panicked: {stderr}", r.class));
    }
    // One message per cause: an I/O error's text is not repeated by its source chain.
    if stderr.matches("(os error").count() > 1 {
        return Some(format!("{}: a cause printed twice: {stderr}", r.class));
    }
    for n in &r.needles {
        if !stderr.contains(n.as_str()) {
            return Some(format!("{}: {stderr:?} lacks {n:?}", r.class));
        }
    }
    None
}

fn stagformer_ok(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_stagformer"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
}

/// A model small enough to run in milliseconds.
fn micro_config() -> Value {
    json!({
        "vocab_size": 16, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 16,
        "tie_word_embeddings": false, "stag_sections": 2
    })
}

/// Writes a micro checkpoint (`shards` files) at `dir`.
fn checkpoint(root: &Path, name: &str, shards: usize) -> PathBuf {
    let cfg = root.join(format!("{name}.config.json"));
    std::fs::write(&cfg, micro_config().to_string()).unwrap();
    let dir = root.join(name);
    stagformer_ok(&[
        "init",
        "--config",
        s(&cfg),
        "--seed",
        "1",
        "--shards",
        &shards.to_string(),
        "--out",
        s(&dir),
    ]);
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A safetensors file as (header entries in order, data).
fn read_st(path: &Path) -> (Vec<(String, Value)>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header.into_iter().collect(), bytes[8 + n..].to_vec())
}

/// Writes a safetensors file from header entries (kept as given, duplicates included).
fn write_st(path: &Path, entries: &[(String, Value)], data: &[u8]) {
    let body: Vec<String> = entries
        .iter()
        .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), v))
        .collect();
    let header = format!("{{{}}}", body.join(","));
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

/// Rewrites the header of `path` with `edit`.
fn edit_header(path: &Path, edit: impl FnOnce(&mut Vec<(String, Value)>)) {
    let (mut entries, data) = read_st(path);
    edit(&mut entries);
    write_st(path, &entries, &data);
}

fn entry<'a>(entries: &'a mut [(String, Value)], name: &str) -> &'a mut Value {
    &mut entries.iter_mut().find(|(k, _)| k == name).unwrap().1
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(path, v.to_string()).unwrap();
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(s(path)).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

const EMBED: &str = "model.embed_tokens.weight";
const Q0: &str = "model.layers.0.self_attn.q_proj.weight";
const K0: &str = "model.layers.0.self_attn.k_proj.weight";
const SHARD1: &str = "model-00001-of-00002.safetensors";
const SHARD2: &str = "model-00002-of-00002.safetensors";
const INDEX: &str = "model.safetensors.index.json";

/// (class, what the error says it is, how to make it at a path).
type Special<'a> = (&'a str, &'a str, &'a dyn Fn(&Path));

/// Checkpoint mutants: each row copies the good micro checkpoint and breaks one thing.
fn checkpoint_rows(root: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut n = 0;
    let mut mutant = |shards: usize, mutate: &dyn Fn(&Path)| -> String {
        n += 1;
        let dir = checkpoint(root, &format!("m{n}"), shards);
        mutate(&dir);
        s(&dir).to_owned()
    };
    let inspect = |class: &str, dir: &str, needles: &[&str]| {
        row(class, &["inspect", "--model", dir], 1, needles)
    };
    let st = |d: &Path| d.join("model.safetensors");

    let d = mutant(1, &|d| {
        let b = std::fs::read(st(d)).unwrap();
        std::fs::write(st(d), &b[..b.len() / 2]).unwrap();
    });
    rows.push(inspect(
        "checkpoint: truncated data",
        &d,
        &["model.safetensors", "data bytes"],
    ));
    let d = mutant(1, &|d| std::fs::write(st(d), [1, 2, 3]).unwrap());
    rows.push(inspect(
        "checkpoint: shorter than the length prefix",
        &d,
        &["model.safetensors", "too short"],
    ));
    let d = mutant(1, &|d| {
        let mut b = std::fs::read(st(d)).unwrap();
        b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(st(d), b).unwrap();
    });
    rows.push(inspect(
        "checkpoint: header length beyond the file",
        &d,
        &["model.safetensors", "header length"],
    ));
    let d = mutant(1, &|d| {
        let mut b = std::fs::read(st(d)).unwrap();
        b[8] = b'x';
        std::fs::write(st(d), b).unwrap();
    });
    rows.push(inspect(
        "checkpoint: header not JSON",
        &d,
        &["model.safetensors", "not a JSON object"],
    ));
    let d = mutant(1, &|d| {
        let mut b = std::fs::read(st(d)).unwrap();
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        // A flipped byte in the middle of the header's JSON.
        b[8 + n / 2] ^= 0x5a;
        std::fs::write(st(d), b).unwrap();
    });
    rows.push(inspect(
        "checkpoint: header byte flipped",
        &d,
        &["model.safetensors"],
    ));
    let d = mutant(1, &|d| {
        edit_header(&st(d), |e| {
            let v = entry(e, Q0);
            let end = v["data_offsets"][1].as_u64().unwrap();
            v["data_offsets"][1] = json!(end + 4);
        })
    });
    rows.push(inspect(
        "checkpoint: bad data offsets",
        &d,
        &["model.safetensors", Q0, "data offsets"],
    ));
    let d = mutant(1, &|d| {
        edit_header(&st(d), |e| {
            entry(e, Q0)["data_offsets"] = json!([u64::MAX - 1, u64::MAX]);
        })
    });
    rows.push(inspect(
        "checkpoint: offsets overflow",
        &d,
        &["model.safetensors", Q0],
    ));
    let d = mutant(1, &|d| {
        edit_header(&st(d), |e| {
            let v = entry(e, EMBED);
            v["data_offsets"] = json!([0, 0]);
            v["shape"] = json!([0, 8]);
        })
    });
    rows.push(inspect(
        "checkpoint: gap between tensors",
        &d,
        &["model.safetensors", "gaps and overlaps"],
    ));
    let d = mutant(1, &|d| {
        edit_header(&st(d), |e| entry(e, Q0)["dtype"] = json!("I64"))
    });
    rows.push(inspect(
        "checkpoint: unsupported dtype",
        &d,
        &["model.safetensors", Q0, "unsupported dtype I64"],
    ));
    let d = mutant(1, &|d| {
        edit_header(&st(d), |e| entry(e, Q0)["dtype"] = json!(7))
    });
    rows.push(inspect(
        "checkpoint: dtype of the wrong type",
        &d,
        &["model.safetensors", Q0],
    ));
    let d = mutant(1, &|d| {
        edit_header(&st(d), |e| {
            let v = entry(e, K0);
            let shape = v["shape"].as_array().unwrap().clone();
            v["shape"] = json!([shape[1], shape[0]]);
        })
    });
    rows.push(inspect(
        "checkpoint: transposed shape",
        &d,
        &["model.safetensors", K0, "expected shape [4, 8]"],
    ));
    let d = mutant(1, &|d| {
        edit_header(&st(d), |e| entry(e, Q0)["shape"] = json!([u64::MAX, 2]))
    });
    rows.push(inspect(
        "checkpoint: shape overflows",
        &d,
        &["model.safetensors", Q0],
    ));
    let d = mutant(1, &|d| {
        edit_header(&st(d), |e| {
            let dup = e.iter().find(|(k, _)| k == Q0).unwrap().clone();
            e.push(dup);
        })
    });
    rows.push(inspect(
        "checkpoint: duplicate name in a header",
        &d,
        &["model.safetensors", Q0, "more than once"],
    ));
    let d = mutant(1, &|d| {
        edit_header(&st(d), |e| {
            let mut extra = e.iter().find(|(k, _)| k == Q0).unwrap().clone();
            extra.0 = "model.layers.9.extra.weight".into();
            // Same bytes as q_proj: an overlap, so rename instead of adding.
            e.retain(|(k, _)| k != Q0);
            e.push(extra);
        })
    });
    rows.push(inspect(
        "checkpoint: unexpected and missing tensor",
        &d,
        &["model.safetensors", Q0, "missing"],
    ));
    // Several bad tensors: the first in name order is reported, every run.
    let d = mutant(1, &|d| {
        edit_header(&st(d), |e| {
            for (_, v) in e.iter_mut().filter(|(k, _)| k != "__metadata__") {
                v["dtype"] = json!("F64");
            }
        })
    });
    rows.push(inspect(
        "checkpoint: many bad tensors, first in order reported",
        &d,
        &["lm_head.weight", "unsupported dtype F64"],
    ));
    let d = mutant(1, &|d| {
        let (mut e, mut data) = read_st(&st(d));
        let start = entry(&mut e, EMBED)["data_offsets"][0].as_u64().unwrap() as usize;
        data[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        write_st(&st(d), &e, &data);
    });
    rows.push(row(
        "checkpoint: NaN weight",
        &[
            "score",
            "--model",
            &d,
            "--tokens",
            "1,2",
            "--out",
            &format!("{d}/o"),
        ],
        1,
        &["model.safetensors", EMBED, "non-finite"],
    ));

    // Sharded: the index against its shards.
    let d = mutant(2, &|d| {
        edit_json(&d.join(INDEX), |m| {
            let map = m["weight_map"].as_object_mut().unwrap();
            let (name, file) = map.iter_mut().next().unwrap();
            let _ = name;
            *file = json!(if file == SHARD1 { SHARD2 } else { SHARD1 });
        })
    });
    rows.push(inspect(
        "index: tensor in another shard than its entry",
        &d,
        &[INDEX, "but `weight_map` puts it in"],
    ));
    let d = mutant(2, &|d| {
        edit_json(&d.join(INDEX), |m| {
            m["weight_map"]["model.ghost.weight"] = json!(SHARD1);
        })
    });
    rows.push(inspect(
        "index: entry in no shard",
        &d,
        &[INDEX, "model.ghost.weight", "does not hold it"],
    ));
    let d = mutant(2, &|d| {
        edit_json(&d.join(INDEX), |m| {
            m["weight_map"].as_object_mut().unwrap().remove(Q0);
        })
    });
    rows.push(inspect(
        "index: tensor in a shard but not in the map",
        &d,
        &[INDEX, Q0, "no `weight_map` entry"],
    ));
    let d = mutant(2, &|d| {
        let text = std::fs::read_to_string(d.join(INDEX)).unwrap();
        let at = text.find("\"weight_map\": {").unwrap() + "\"weight_map\": {".len();
        let dup = format!("\n    \"{EMBED}\": \"{SHARD2}\",");
        std::fs::write(
            d.join(INDEX),
            format!("{}{dup}{}", &text[..at], &text[at..]),
        )
        .unwrap();
    });
    rows.push(inspect(
        "index: duplicate key in weight_map",
        &d,
        &[INDEX, EMBED, "more than once"],
    ));
    let d = mutant(2, &|d| {
        edit_json(&d.join(INDEX), |m| {
            m["weight_map"][EMBED] = json!("../../etc/passwd");
        })
    });
    rows.push(inspect(
        "index: file name with a path",
        &d,
        &[INDEX, "not a plain file name"],
    ));
    let d = mutant(2, &|d| {
        std::fs::write(d.join(INDEX), "{\"weight_map\": [1]}").unwrap()
    });
    rows.push(inspect("index: weight_map not an object", &d, &[INDEX]));
    let d = mutant(2, &|d| std::fs::remove_file(d.join(SHARD2)).unwrap());
    rows.push(inspect("index: shard missing", &d, &[SHARD2]));
    let d = mutant(2, &|d| {
        let b = std::fs::read(d.join(SHARD2)).unwrap();
        std::fs::write(d.join(SHARD2), &b[..b.len() - 1]).unwrap();
    });
    rows.push(inspect("index: shard truncated", &d, &[SHARD2]));

    // Special files where a checkpoint file should be.
    for (file, shards) in [("config.json", 1), ("model.safetensors", 1), (INDEX, 2)] {
        let specials: [Special; 4] = [
            ("FIFO", "a FIFO", &mkfifo),
            ("/dev/zero symlink", "a character device", &|p: &Path| {
                std::os::unix::fs::symlink("/dev/zero", p).unwrap()
            }),
            ("directory", "a directory", &|p: &Path| {
                std::fs::create_dir(p).unwrap()
            }),
            ("dangling symlink", "a dangling symlink", &|p: &Path| {
                std::os::unix::fs::symlink("/nonexistent/stagformer-test", p).unwrap()
            }),
        ];
        for (what, says, make) in specials {
            let d = mutant(shards, &|d| {
                std::fs::remove_file(d.join(file)).unwrap();
                make(&d.join(file));
            });
            rows.push(inspect(
                &format!("special file: {file} is a {what}"),
                &d,
                &[file, says],
            ));
        }
    }
    rows
}

/// Config mutations, each applied to a good micro checkpoint's config.json.
fn config_rows(root: &Path) -> Vec<Row> {
    let base = checkpoint(root, "cfg-base", 1);
    let mut rows = Vec::new();
    let cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "huge layer count",
            json!({"num_hidden_layers": 10_000_000u64}),
            &["num_hidden_layers", "exceeds the limit"],
        ),
        (
            "2^40 layers",
            json!({"num_hidden_layers": 1u64 << 40}),
            &["num_hidden_layers", "limit"],
        ),
        (
            "huge vocab",
            json!({"vocab_size": 1u64 << 40}),
            &["vocab_size"],
        ),
        (
            "parameters overflow",
            json!({"hidden_size": 1u64 << 62, "intermediate_size": 1u64 << 62}),
            &["hidden_size"],
        ),
        (
            "q_dim overflows",
            json!({"head_dim": 1u64 << 62, "num_attention_heads": 8}),
            &["head_dim"],
        ),
        (
            "huge positions",
            json!({"max_position_embeddings": 1u64 << 40}),
            &["max_position_embeddings", "limit"],
        ),
        (
            "zero hidden size",
            json!({"hidden_size": 0}),
            &["hidden_size"],
        ),
        (
            "zero heads",
            json!({"num_attention_heads": 0}),
            &["num_attention_heads"],
        ),
        (
            "zero sections",
            json!({"stag_sections": 0}),
            &["stag_sections"],
        ),
        (
            "zero positions",
            json!({"max_position_embeddings": 0}),
            &["max_position_embeddings"],
        ),
        (
            "string for a count",
            json!({"hidden_size": "8"}),
            &["hidden_size"],
        ),
        (
            "negative count",
            json!({"num_hidden_layers": -2}),
            &["num_hidden_layers"],
        ),
        (
            "fractional count",
            json!({"vocab_size": 16.5}),
            &["vocab_size"],
        ),
        (
            "bool of the wrong type",
            json!({"tie_word_embeddings": 3}),
            &["tie_word_embeddings"],
        ),
        (
            "negative eps",
            json!({"rms_norm_eps": -1.0}),
            &["rms_norm_eps"],
        ),
        ("zero theta", json!({"rope_theta": 0.0}), &["rope_theta"]),
        (
            "kv heads not dividing heads",
            json!({"num_key_value_heads": 3}),
            &["num_key_value_heads"],
        ),
        (
            "unknown field",
            json!({"attention_bias": true}),
            &["attention_bias"],
        ),
    ];
    for (i, (class, patch, needles)) in cases.into_iter().enumerate() {
        let dir = root.join(format!("cfg{i}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(
            base.join("model.safetensors"),
            dir.join("model.safetensors"),
        )
        .unwrap();
        let cfg = dir.join("config.json");
        std::fs::copy(base.join("config.json"), &cfg).unwrap();
        edit_json(&cfg, |m| {
            for (k, v) in patch.as_object().unwrap() {
                m.insert(k.clone(), v.clone());
            }
        });
        let mut needles = needles.to_vec();
        needles.push("config");
        rows.push(row(
            &format!("config: {class}"),
            &["inspect", "--model", s(&dir)],
            1,
            &needles,
        ));
        // init --config reads the same parser before writing anything.
        let out = root.join(format!("cfg{i}-init"));
        rows.push(row(
            &format!("config: {class} (init)"),
            &["init", "--config", s(&cfg), "--seed", "1", "--out", s(&out)],
            1,
            &needles,
        ));
    }
    for (class, text, needle) in [
        ("not JSON", "{\"vocab_size\": 16,", "invalid JSON"),
        ("an array", "[1, 2]", "config"),
        ("empty", "", "invalid JSON"),
    ] {
        let dir = root.join(format!("cfg-{}", class.replace(' ', "-")));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("config.json"), text).unwrap();
        rows.push(row(
            &format!("config: {class}"),
            &["inspect", "--model", s(&dir)],
            1,
            &[needle],
        ));
    }
    let dir = root.join("cfg-large");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("config.json"), vec![b' '; (16 << 20) + 1]).unwrap();
    rows.push(row(
        "config: larger than 16 MiB",
        &["inspect", "--model", s(&dir)],
        1,
        &["config.json", "larger than"],
    ));
    rows
}

/// Bad requests to every command.
fn request_rows(root: &Path) -> Vec<Row> {
    let m = checkpoint(root, "req", 1);
    let m = s(&m).to_owned();
    let out = format!("{}/out.safetensors", root.display());
    let score = |tokens: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["score", "--model", &m, "--tokens", tokens, "--out", &out]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let owned = |class: &str, args: Vec<String>, code: i32, needles: &[&str]| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        row(class, &refs, code, needles)
    };
    let big = "18446744073709551615";
    let bigger = "18446744073709551616";
    let mut rows = vec![
        row(
            "inspect: no such directory",
            &["inspect", "--model", "/nonexistent/m"],
            1,
            &["/nonexistent/m/config.json", "No such file"],
        ),
        row("inspect: no --model", &["inspect"], 2, &["--model"]),
        owned(
            "score: empty token list",
            score("", &[]),
            1,
            &["--tokens", "empty"],
        ),
        owned(
            "score: empty entry",
            score("1,,2", &[]),
            1,
            &["entry 1 is empty"],
        ),
        owned(
            "score: plus sign",
            score("+5", &[]),
            1,
            &["decimal digits only"],
        ),
        owned(
            "score: negative id",
            score("-1", &[]),
            1,
            &["decimal digits only"],
        ),
        owned(
            "score: id beyond u32",
            score(bigger, &[]),
            1,
            &["--tokens", "not a token id"],
        ),
        owned(
            "score: id beyond the vocabulary",
            score("1,16", &[]),
            1,
            &["token 16", "vocab_size = 16"],
        ),
        owned(
            "score: longer than the positions",
            score(&vec!["1"; 17].join(","), &[]),
            1,
            &["17 tokens", "16 positions"],
        ),
        owned(
            "score: prompt-len 0",
            score("1,2", &["--mode", "decode", "--prompt-len", "0"]),
            1,
            &["prompt length 0"],
        ),
        owned(
            "score: prompt-len huge",
            score("1,2", &["--mode", "decode", "--prompt-len", big]),
            1,
            &["prompt length"],
        ),
        owned(
            "score: prompt-len beyond usize",
            score("1,2", &["--mode", "decode", "--prompt-len", bigger]),
            2,
            &["--prompt-len"],
        ),
        owned(
            "score: recurrent without shared weights",
            score("1,2", &["--mode", "recurrent"]),
            1,
            &["recurrent mode needs shared weights"],
        ),
        owned(
            "score: unknown mode",
            score("1,2", &["--mode", "sideways"]),
            2,
            &["--mode"],
        ),
        owned(
            "score: unknown device",
            score("1,2", &["--device", "tpu"]),
            2,
            &["--device"],
        ),
        row(
            "score: --out in a missing directory",
            &[
                "score",
                "--model",
                &m,
                "--tokens",
                "1",
                "--out",
                "/nonexistent/dir/o",
            ],
            1,
            &["/nonexistent/dir/o"],
        ),
        row(
            "score: --out is a directory",
            &["score", "--model", &m, "--tokens", "1", "--out", s(root)],
            1,
            &["a directory; only a regular file is replaced"],
        ),
        row(
            "generate: negative temperature",
            &[
                "generate",
                "--preset",
                "tiny",
                "--tokens",
                "1",
                "--temperature",
                "-1",
            ],
            1,
            &["temperature", "-1"],
        ),
        row(
            "generate: NaN temperature",
            &[
                "generate",
                "--preset",
                "tiny",
                "--tokens",
                "1",
                "--temperature",
                "NaN",
            ],
            1,
            &["temperature"],
        ),
        row(
            "generate: top-p 0",
            &[
                "generate", "--preset", "tiny", "--tokens", "1", "--top-p", "0",
            ],
            1,
            &["top_p"],
        ),
        row(
            "generate: top-p above 1",
            &[
                "generate", "--preset", "tiny", "--tokens", "1", "--top-p", "1.5",
            ],
            1,
            &["top_p"],
        ),
        row(
            "generate: negative top-k",
            &[
                "generate", "--preset", "tiny", "--tokens", "1", "--top-k", "-1",
            ],
            2,
            &["--top-k"],
        ),
        row(
            "generate: max-new-tokens beyond usize",
            &[
                "generate",
                "--preset",
                "tiny",
                "--tokens",
                "1",
                "--max-new-tokens",
                bigger,
            ],
            2,
            &["--max-new-tokens"],
        ),
        row(
            "generate: empty entry",
            &["generate", "--preset", "tiny", "--tokens", "1,,2"],
            1,
            &["entry 1 is empty"],
        ),
        row(
            "generate: prompt and tokens",
            &["generate", "--prompt", "a", "--tokens", "1"],
            2,
            &["--tokens"],
        ),
        row(
            "generate: id beyond the vocabulary",
            &["generate", "--model", &m, "--tokens", "99"],
            1,
            &["token 99"],
        ),
        row(
            "generate: unknown preset",
            &["generate", "--preset", "huge", "--tokens", "1"],
            1,
            &["unknown preset \"huge\""],
        ),
        row(
            "generate: sections 0",
            &[
                "generate",
                "--preset",
                "tiny",
                "--sections",
                "0",
                "--tokens",
                "1",
            ],
            1,
            &["--sections must be at least 1"],
        ),
        row(
            "generate: preset options with --model",
            &[
                "generate", "--model", &m, "--preset", "tiny", "--tokens", "1",
            ],
            2,
            &["--preset"],
        ),
        row(
            "init: shards 0",
            &[
                "init",
                "--preset",
                "tiny",
                "--seed",
                "1",
                "--shards",
                "0",
                "--out",
                &format!("{}/i0", root.display()),
            ],
            1,
            &["--shards must be at least 1"],
        ),
        row(
            "init: seed not a number",
            &[
                "init",
                "--preset",
                "tiny",
                "--seed",
                "x",
                "--out",
                &format!("{}/i1", root.display()),
            ],
            2,
            &["--seed"],
        ),
        row(
            "init: unknown preset",
            &[
                "init",
                "--preset",
                "nope",
                "--seed",
                "1",
                "--out",
                &format!("{}/i2", root.display()),
            ],
            1,
            &["unknown preset"],
        ),
        row(
            "init: missing config",
            &[
                "init",
                "--config",
                "/nonexistent/c.json",
                "--seed",
                "1",
                "--out",
                &format!("{}/i3", root.display()),
            ],
            1,
            &["/nonexistent/c.json"],
        ),
        row(
            "init: --out is a file",
            &[
                "init",
                "--preset",
                "tiny",
                "--seed",
                "1",
                "--out",
                &format!("{m}/config.json"),
            ],
            1,
            &["config.json"],
        ),
        row(
            "bench: batch 0",
            &["bench", "--preset", "tiny", "--batch", "0"],
            1,
            &["at least 1"],
        ),
        row(
            "bench: huge batch",
            &["bench", "--preset", "tiny", "--batch", big],
            1,
            &["more than 1024 sequences"],
        ),
        row(
            "bench: huge prompt",
            &["bench", "--preset", "tiny", "--prompt-len", big],
            1,
            &["512 positions"],
        ),
        row(
            "bench: huge warmup",
            &["bench", "--preset", "tiny", "--warmup", big],
            1,
            &["512 positions"],
        ),
        row(
            "bench: huge new tokens",
            &["bench", "--preset", "tiny", "--new-tokens", big],
            1,
            &["512 positions"],
        ),
        row(
            "bench: 0 repetitions",
            &["bench", "--preset", "tiny", "--repetitions", "0"],
            1,
            &["--repetitions 0 must be between 1 and 100"],
        ),
        row(
            "bench: too many repetitions",
            &["bench", "--preset", "tiny", "-r", "101"],
            1,
            &["--repetitions 101"],
        ),
        row(
            "bench: a prompt length of 0 in the list",
            &["bench", "--preset", "tiny", "-p", "4,0"],
            1,
            &["at least 1"],
        ),
        row(
            "bench: an empty entry in the list",
            &["bench", "--preset", "tiny", "-n", "4,,8"],
            2,
            &["--new-tokens"],
        ),
        row(
            "bench: too long a list",
            &[
                "bench",
                "--preset",
                "tiny",
                "-p",
                "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17",
            ],
            1,
            &["--prompt-len: 17 values given, at most 16"],
        ),
        row(
            "bench: the longest prompt does not fit",
            &["bench", "--preset", "tiny", "-p", "4,500", "-n", "13"],
            1,
            &["--prompt-len 500", "512 positions"],
        ),
        row(
            "bench: unknown output format",
            &["bench", "--preset", "tiny", "--output", "xml"],
            2,
            &["--output"],
        ),
        row(
            "bench: --json is a directory",
            &["bench", "--preset", "tiny", "--json", s(root)],
            1,
            &["a directory"],
        ),
        row(
            "bench: sections 0 with shared weights",
            &[
                "bench",
                "--preset",
                "tiny",
                "--shared-weights",
                "--sections",
                "0",
            ],
            1,
            &["--sections must be at least 1"],
        ),
    ];
    // Outputs onto special files: refused before the run, the special file left alone.
    let fifo = root.join("out.fifo");
    mkfifo(&fifo);
    let link = root.join("out.link");
    std::os::unix::fs::symlink(root.join("target-of-link"), &link).unwrap();
    for (what, path) in [("FIFO", &fifo), ("symlink", &link)] {
        rows.push(row(
            &format!("score: --out is a {what}"),
            &["score", "--model", &m, "--tokens", "1", "--out", s(path)],
            1,
            &[s(path), "only a regular file is replaced"],
        ));
        rows.push(row(
            &format!("bench: --json is a {what}"),
            &["bench", "--preset", "tiny", "--json", s(path)],
            1,
            &[s(path), "only a regular file is replaced"],
        ));
    }
    // A tokenizer.json that is a folder, beside a good model.
    let tok = checkpoint(root, "tokdir", 1);
    std::fs::create_dir(tok.join("tokenizer.json")).unwrap();
    rows.push(row(
        "generate: tokenizer.json is a directory",
        &["generate", "--model", s(&tok), "--prompt", "hi"],
        1,
        &["tokenizer.json", "a directory"],
    ));
    // tokenizer.json files that made the tokenizers crate panic (found by fuzz/ `tokenizer`).
    let crashers = [
        (
            "decoder object with a syntax error",
            WORDLEVEL.replace(
                "\"decoder\": null",
                "\"decoder\": {\"type\": \"WordPiece\". \"prefix\": \"##\"}",
            ),
            "invalid JSON",
        ),
        (
            "bad precompiled normalizer",
            WORDLEVEL.replace(
                "\"normalizer\": null",
                "\"normalizer\": {\"type\": \"Precompiled\", \"precompiled_charsmap\": \"AAAA\"}",
            ),
            "tokenizer.json",
        ),
    ];
    for (i, (what, json, says)) in crashers.into_iter().enumerate() {
        let t = checkpoint(root, &format!("tokcrash{i}"), 1);
        std::fs::write(t.join("tokenizer.json"), json).unwrap();
        rows.push(row(
            &format!("generate: tokenizer.json with a {what}"),
            &["generate", "--model", s(&t), "--prompt", "hello"],
            1,
            &["tokenizer.json", says],
        ));
    }
    // Failing stdout / stderr.
    let mut r = row(
        "inspect: stdout is /dev/full",
        &["inspect", "--model", &m],
        1,
        &["cannot write to stdout"],
    );
    r.stdout_full = true;
    rows.push(r);
    let mut r = row(
        "generate: stdout is /dev/full",
        &[
            "generate",
            "--model",
            &m,
            "--tokens",
            "1",
            "--max-new-tokens",
            "2",
        ],
        1,
        &[],
    );
    r.stdout_full = true;
    rows.push(r);
    let mut r = row(
        "bench: stdout and stderr are /dev/full",
        &[
            "bench",
            "--preset",
            "tiny",
            "--new-tokens",
            "1",
            "--prompt-len",
            "1",
        ],
        1,
        &[],
    );
    r.stdout_full = true;
    r.stderr_full = true;
    rows.push(r);
    let mut r = row(
        "score: stderr is /dev/full on an error",
        &[
            "score",
            "--model",
            "/nonexistent",
            "--tokens",
            "1",
            "--out",
            &out,
        ],
        1,
        &[],
    );
    r.stderr_full = true;
    rows.push(r);
    rows
}

/// A model whose weights are finite but whose logits overflow f32 (an lm_head of 3e38):
/// score refuses to write them and generate stops, naming the position.
fn non_finite_logit_rows(root: &Path) -> Vec<Row> {
    let d = checkpoint(root, "overflow", 1);
    let path = d.join("model.safetensors");
    let (mut e, mut data) = read_st(&path);
    let v = entry(&mut e, "lm_head.weight");
    let (a, b) = (
        v["data_offsets"][0].as_u64().unwrap() as usize,
        v["data_offsets"][1].as_u64().unwrap() as usize,
    );
    for c in data[a..b].chunks_exact_mut(4) {
        c.copy_from_slice(&3.0e38f32.to_le_bytes());
    }
    write_st(&path, &e, &data);
    let m = s(&d).to_owned();
    let out = format!("{m}/logits.safetensors");
    vec![
        row(
            "logits: non-finite in score",
            &[
                "score", "--model", &m, "--device", "cpu", "--tokens", "1,2,3", "--out", &out,
            ],
            1,
            &["logits are not finite", "row 0"],
        ),
        row(
            "logits: non-finite in score, decode mode",
            &[
                "score",
                "--model",
                &m,
                "--device",
                "cpu",
                "--tokens",
                "1,2,3",
                "--mode",
                "decode",
                "--prompt-len",
                "1",
                "--out",
                &out,
            ],
            1,
            &["logits are not finite"],
        ),
        row(
            "logits: non-finite stops generate",
            &[
                "generate",
                "--model",
                &m,
                "--device",
                "cpu",
                "--tokens",
                "1,2",
                "--temperature",
                "0.7",
            ],
            1,
            &["generation stopped", "logits are not finite", "row 1"],
        ),
        row(
            "logits: non-finite stops greedy generate",
            &[
                "generate",
                "--model",
                &m,
                "--device",
                "cpu",
                "--tokens",
                "1",
                "--temperature",
                "0",
            ],
            1,
            &["logits are not finite"],
        ),
        // The kernel decoder checks its host-side logits the same way.
        row(
            "logits: non-finite in score on emu",
            &[
                "score", "--model", &m, "--device", "emu", "--tokens", "1,2,3", "--mode", "decode",
                "--out", &out,
            ],
            1,
            &["logits are not finite"],
        ),
        row(
            "logits: non-finite stops generate on emu",
            &[
                "generate", "--model", &m, "--device", "emu", "--tokens", "1,2",
            ],
            1,
            &["generation stopped", "logits are not finite", "row 0"],
        ),
    ]
}

#[test]
fn every_bad_input_is_an_error_naming_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let filter = std::env::var("STAGFORMER_BAD_INPUT_FILTER").unwrap_or_default();
    let mut rows = Vec::new();
    rows.extend(checkpoint_rows(root));
    rows.extend(config_rows(root));
    rows.extend(request_rows(root));
    rows.extend(non_finite_logit_rows(root));
    let rows: Vec<&Row> = rows.iter().filter(|r| r.class.contains(&filter)).collect();
    let failures: Vec<String> = rows.iter().filter_map(|r| check(r)).collect();
    eprintln!(
        "bad-input table: {} rows, {} failed",
        rows.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // Nothing was written where it should not be: the FIFO is still a FIFO, the link a link.
    use std::os::unix::fs::FileTypeExt;
    if root.join("out.fifo").exists() {
        assert!(std::fs::symlink_metadata(root.join("out.fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert!(std::fs::symlink_metadata(root.join("out.link"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(!root.join("target-of-link").exists());
    }
}

/// A word-level tokenizer of 5 ids (`<s>` a special BOS).
const WORDLEVEL: &str = r#"{"version": "1.0", "truncation": null, "padding": null,
 "added_tokens": [{"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
 "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
 "decoder": null,
 "model": {"type": "WordLevel", "vocab": {"<s>": 0, "<unk>": 1, "hello": 2, "world": 3, "!": 4}, "unk_token": "<unk>"}}"#;

/// A tokenizer that knows fewer ids than the model's vocab_size is a loud warning naming both
/// sizes (not an error: checkpoints pad their embeddings), and generation still works.
#[test]
fn a_tokenizer_smaller_than_the_vocabulary_warns_with_both_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let m = checkpoint(dir.path(), "tok", 1);
    std::fs::write(m.join("tokenizer.json"), WORDLEVEL).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stagformer"))
        .args([
            "generate",
            "--model",
            s(&m),
            "--prompt",
            "hello world",
            "--max-new-tokens",
            "3",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr
            .contains("warning: tokenizer.json knows 5 token ids but the model's vocab_size is 16"),
        "{stderr}"
    );
}
