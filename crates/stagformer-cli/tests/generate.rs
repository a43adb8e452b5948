//! `stagformer generate` with real tokenizer semantics: prompt ids as the tokenizer's own
//! `encode(text, add_special_tokens)`, streamed text equal to `decode(ids, skip_special_tokens)`,
//! stopping at EOS, the capacity note, and generation_config.json's defaults.

#[path = "support/tokenizers.rs"]
mod test_tokenizers;

use std::path::{Path, PathBuf};
use std::process::Command;

use test_tokenizers::PROMPTS;
use tokenizers::Tokenizer;

/// Runs `stagformer`, expecting success; returns (stdout, stderr).
fn run(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stagformer"))
        .args(args)
        .output()
        .expect("run stagformer");
    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "stagformer {args:?} failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    (stdout, stderr)
}

/// The ids after `label` (`prompt ids: [1, 2]`) on stderr.
fn ids_after(stderr: &str, label: &str) -> Vec<u32> {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} line in {stderr}"));
    let inner = line.trim().trim_start_matches('[').trim_end_matches(']');
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

/// stdout without the one newline `generate` ends it with.
fn text(stdout: &str) -> &str {
    stdout
        .strip_suffix('\n')
        .expect("output ends with a newline")
}

/// A small random model of `vocab` tokens and `positions` positions in `dir/name`.
fn init_model(dir: &Path, name: &str, vocab: usize, positions: usize) -> PathBuf {
    let config = serde_json::json!({
        "vocab_size": vocab,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "max_position_embeddings": positions,
        "stag_sections": 2,
    });
    let config_path = dir.join(format!("{name}.json"));
    std::fs::write(&config_path, config.to_string()).unwrap();
    let model = dir.join(name);
    run(&[
        "init",
        "--config",
        config_path.to_str().unwrap(),
        "--seed",
        "11",
        "--out",
        model.to_str().unwrap(),
    ]);
    model
}

/// A model whose vocabulary is exactly `tok`'s, with `tok` as its tokenizer.json.
fn model_with_tokenizer(dir: &Path, name: &str, tok: &Tokenizer) -> PathBuf {
    let model = init_model(dir, name, tok.get_vocab_size(true), 128);
    tok.save(model.join("tokenizer.json"), false).unwrap();
    model
}

#[test]
fn prompt_ids_and_streamed_text_follow_the_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    for (name, tok) in test_tokenizers::all() {
        let model = model_with_tokenizer(dir.path(), name, &tok);
        let m = model.to_str().unwrap();
        let mut generated_any_byte_piece = false;
        for (i, prompt) in PROMPTS.iter().enumerate() {
            let with = tok.encode(*prompt, true).unwrap().get_ids().to_vec();
            let without = tok.encode(*prompt, false).unwrap().get_ids().to_vec();
            assert_ne!(with, without, "{name}: the tokenizer adds special tokens");
            for (flags, want) in [(&[][..], &with), (&["--no-special-tokens"][..], &without)] {
                let seed = i.to_string();
                // Sampling over the whole vocabulary, so the ids are varied: special tokens,
                // bytes, pieces that split characters.
                let args = [
                    &[
                        "generate",
                        "--model",
                        m,
                        "--device",
                        "cpu",
                        "--prompt",
                        prompt,
                        "--max-new-tokens",
                        "24",
                        "--temperature",
                        "1",
                        "--top-k",
                        "0",
                        "--top-p",
                        "1",
                        "--seed",
                        &seed,
                        "--print-ids",
                    ][..],
                    flags,
                ]
                .concat();
                let (stdout, stderr) = run(&args);
                assert_eq!(
                    &ids_after(&stderr, "prompt ids: "),
                    want,
                    "{name} {prompt:?}"
                );
                let generated = ids_after(&stderr, "generated ids: ");
                assert_eq!(generated.len(), 24, "{name}: no EOS configured: {stderr}");
                generated_any_byte_piece |= generated.iter().any(|&id| {
                    tok.id_to_token(id)
                        .is_some_and(|t| t.len() == 6 && t.starts_with("<0x"))
                });
                assert_eq!(
                    text(&stdout),
                    tok.decode(&generated, true).unwrap(),
                    "{name} {prompt:?}: stdout is not decode(generated ids)"
                );
                assert!(
                    stderr.contains("stopped: --max-new-tokens 24 reached"),
                    "{stderr}"
                );
                assert!(
                    stderr.contains("prompt: ") && stderr.contains("tok/s"),
                    "{stderr}"
                );
                assert!(!stderr.contains("rewrote"), "{stderr}");
            }
        }
        if name == "byte-fallback" {
            assert!(
                generated_any_byte_piece,
                "the byte-fallback runs made no byte tokens"
            );
        }
    }
}

fn tiny(dir: &Path) -> PathBuf {
    let model = dir.join("tiny");
    run(&[
        "init",
        "--preset",
        "tiny",
        "--seed",
        "3",
        "--out",
        model.to_str().unwrap(),
    ]);
    model
}

/// Greedy generation of `n` tokens after 1,2,3: (stdout, stderr, generated ids).
fn greedy(m: &str, n: usize, extra: &[&str]) -> (String, String, Vec<u32>) {
    let n = n.to_string();
    let args = [
        &[
            "generate",
            "--model",
            m,
            "--device",
            "cpu",
            "--tokens",
            "1,2,3",
            "--max-new-tokens",
            &n,
            "--temperature",
            "0",
            "--print-ids",
        ][..],
        extra,
    ]
    .concat();
    let (stdout, stderr) = run(&args);
    let ids = ids_after(&stderr, "generated ids: ");
    (stdout, stderr, ids)
}

#[test]
fn generation_stops_at_the_eos_the_model_dir_declares() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let m = model.to_str().unwrap();
    let (_, stderr, free) = greedy(m, 12, &[]);
    assert!(stderr.contains("no tokenizer.json"), "{stderr}");
    assert_eq!(free.len(), 12);
    // Declare as EOS the token greedy decoding produces last for the first time, so that the
    // run must stop exactly there.
    let k = (0..free.len())
        .rev()
        .find(|&k| !free[..k].contains(&free[k]))
        .unwrap();
    let eos = free[k];
    let config_path = model.join("config.json");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let gen_path = model.join("generation_config.json");
    for (gen, config_eos) in [
        (Some(format!("{{\"eos_token_id\": [511, {eos}]}}")), None),
        (Some(format!("{{\"eos_token_id\": {eos}}}")), None),
        // Only config.json says.
        (None, Some(eos)),
        (Some("{\"eos_token_id\": null}".to_string()), Some(eos)),
    ] {
        match &gen {
            Some(text) => std::fs::write(&gen_path, text).unwrap(),
            None => {
                let _ = std::fs::remove_file(&gen_path);
            }
        }
        let mut c: serde_json::Value = serde_json::from_str(&config).unwrap();
        if let Some(id) = config_eos {
            c["eos_token_id"] = id.into();
        }
        std::fs::write(&config_path, c.to_string()).unwrap();
        let (_, stderr, ids) = greedy(m, 12, &[]);
        assert_eq!(ids, free[..k], "{gen:?} {config_eos:?}: {stderr}");
        assert!(
            stderr.contains(&format!("stopped: end of sequence (token {eos})")),
            "{stderr}"
        );
        let (_, stderr, ids) = greedy(m, 12, &["--ignore-eos"]);
        assert_eq!(ids, free);
        assert!(
            stderr.contains("stopped: --max-new-tokens 12 reached"),
            "{stderr}"
        );
    }
}

#[test]
fn max_new_tokens_past_the_capacity_is_announced_and_clamped() {
    let dir = tempfile::tempdir().unwrap();
    let model = init_model(dir.path(), "short", 300, 16);
    let m = model.to_str().unwrap();
    let (_, stderr, ids) = greedy(m, 50, &[]);
    assert!(
        stderr.contains("--max-new-tokens 50 does not fit") && stderr.contains("at most 13"),
        "{stderr}"
    );
    assert_eq!(
        ids.len(),
        13,
        "3 prompt + 13 generated fill the 16 positions"
    );
    assert!(
        stderr.contains("stopped: the model's 16 positions (max_position_embeddings) are full"),
        "{stderr}"
    );
    // Within the capacity nothing is said.
    let (_, stderr, ids) = greedy(m, 13, &[]);
    assert_eq!(ids.len(), 13);
    assert!(!stderr.contains("does not fit"), "{stderr}");
    assert!(
        stderr.contains("stopped: --max-new-tokens 13 reached"),
        "{stderr}"
    );
}

#[test]
fn generation_config_sampling_defaults_are_used_and_announced() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let m = model.to_str().unwrap();
    let sampled = |extra: &[&str]| {
        let args = [
            &[
                "generate",
                "--model",
                m,
                "--tokens",
                "1,2,3",
                "--max-new-tokens",
                "16",
                "--seed",
                "4",
                "--print-ids",
            ][..],
            extra,
        ]
        .concat();
        let (_, stderr) = run(&args);
        (ids_after(&stderr, "generated ids: "), stderr)
    };
    let (defaults, stderr) = sampled(&[]);
    assert!(!stderr.contains("generation_config"), "{stderr}");
    let (explicit, _) = sampled(&["--temperature", "0.3", "--top-p", "0.5"]);
    // Otherwise the comparison below could not tell the file's settings from the defaults.
    assert_ne!(explicit, defaults);

    let gen_path = model.join("generation_config.json");
    std::fs::write(
        &gen_path,
        r#"{"do_sample": true, "temperature": 0.3, "top_p": 0.5}"#,
    )
    .unwrap();
    let (from_file, stderr) = sampled(&[]);
    assert!(
        stderr.contains(
            "note: sampling settings from generation_config.json: temperature 0.3, top_p 0.5"
        ),
        "{stderr}"
    );
    assert_eq!(from_file, explicit);
    // A flag wins over the file, and the note names only what the file still supplies.
    let (flagged, stderr) = sampled(&["--temperature", "0.8"]);
    assert!(
        stderr.contains("generation_config.json: top_p 0.5") && !stderr.contains("temperature 0.3"),
        "{stderr}"
    );
    assert_eq!(
        flagged,
        sampled(&["--temperature", "0.8", "--top-p", "0.5"]).0
    );

    // do_sample false: greedy.
    std::fs::write(&gen_path, r#"{"do_sample": false, "temperature": 0.3}"#).unwrap();
    let (greedy_by_file, stderr) = sampled(&[]);
    assert!(stderr.contains("greedy decoding"), "{stderr}");
    assert_eq!(greedy_by_file, sampled(&["--temperature", "0"]).0);

    // A broken file is an error naming it.
    std::fs::write(&gen_path, r#"{"top_p": 7}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stagformer"))
        .args(["generate", "--model", m, "--tokens", "1,2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("generation_config.json") && stderr.contains("top_p"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Runs `stagformer`, expecting it to fail with exit code 1 (an error, not a usage error or a
/// panic); returns stderr.
fn fail<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_stagformer"))
        .args(args)
        .output()
        .expect("run stagformer");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty(), "an error prints no product");
    stderr
}

/// `base` then `extra`.
fn cat<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    [base, extra].concat()
}

/// Sampling settings that exercise temperature, top-k and top-p together.
const SAMPLING: [&str; 6] = ["--temperature", "0.9", "--top-k", "50", "--top-p", "0.9"];

/// `generate` of `prompts` (each a `--tokens` list) on `device` with `extra` flags:
/// (stdout, stderr).
fn generate_tokens(m: &str, device: &str, prompts: &[&str], extra: &[&str]) -> (String, String) {
    let mut args = vec![
        "generate",
        "--model",
        m,
        "--device",
        device,
        "--max-new-tokens",
        "20",
        "--print-ids",
    ];
    args.extend(SAMPLING);
    for p in prompts {
        args.extend(["--tokens", p]);
    }
    args.extend(extra);
    run(&args)
}

#[test]
fn each_prompt_of_a_batch_gets_the_tokens_of_its_single_run() {
    let dir = tempfile::tempdir().unwrap();
    // 24 positions: with --max-new-tokens 20 the prompts below stop after 20, 15, 9 and 20
    // tokens, at different steps of the batch.
    let model = init_model(dir.path(), "short", 300, 24);
    let m = model.to_str().unwrap();
    let prompts = [
        "1,2,3",
        "40,41,42,43,44,45,46,47,48",
        "9,8,7,6,5,4,3,2,1,9,8,7,6,5,4",
        "200",
    ];
    let lengths = [20, 15, 9, 20];
    for device in ["cpu", "emu"] {
        // Each prompt alone, with the seed it has in the batch (5 + k) and with 5.
        let alone = |k: usize, seed: usize| {
            let seed = seed.to_string();
            let (stdout, stderr) = generate_tokens(m, device, &[prompts[k]], &["--seed", &seed]);
            (stdout, ids_after(&stderr, "generated ids: "))
        };
        let singles: Vec<(String, Vec<u32>)> =
            (0..prompts.len()).map(|k| alone(k, 5 + k)).collect();
        let lens: Vec<usize> = singles.iter().map(|s| s.1.len()).collect();
        assert_eq!(lens, lengths, "{device}");
        // Otherwise the per-prompt seeds below could go unchecked.
        assert_ne!(
            alone(1, 5).1,
            singles[1].1,
            "{device}: seed 5 and 6 draw alike"
        );

        for max_batch in [None, Some("2")] {
            let mut extra = vec!["--seed", "5"];
            if let Some(n) = max_batch {
                extra.extend(["--max-batch", n]);
            }
            let (stdout, stderr) = generate_tokens(m, device, &prompts, &extra);
            for (k, (text, ids)) in singles.iter().enumerate() {
                assert_eq!(
                    &ids_after(&stderr, &format!("generated {k} ids: ")),
                    ids,
                    "{device} --max-batch {max_batch:?}: prompt {k}: {stderr}"
                );
                assert!(!text.is_empty());
            }
            // The completions in prompt order, a blank line between two.
            let texts: Vec<&str> = singles.iter().map(|s| s.0.as_str()).collect();
            assert_eq!(stdout, texts.join("\n"), "{device} {max_batch:?}");
            assert!(
                stderr.contains("prompt 0: stopped: --max-new-tokens 20 reached")
                    && stderr.contains(
                        "prompt 2: stopped: the model's 24 positions (max_position_embeddings) \
                         are full"
                    ),
                "{stderr}"
            );
            let at_once = max_batch.unwrap_or("4");
            assert!(
                stderr.contains(&format!(
                    "batch: 4 prompts, at most {at_once} at once: 64 tokens"
                )),
                "{stderr}"
            );
        }

        // One seed per prompt.
        let (_, stderr) =
            generate_tokens(m, device, &prompts[..2], &["--seed", "9", "--seed", "5"]);
        assert_eq!(ids_after(&stderr, "generated 0 ids: "), alone(0, 9).1);
        assert_eq!(ids_after(&stderr, "generated 1 ids: "), alone(1, 5).1);
    }
}

#[test]
fn a_prompts_file_is_one_prompt_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = init_model(dir.path(), "bytes", 300, 64);
    let m = model.to_str().unwrap();
    let file = dir.path().join("prompts.txt");
    std::fs::write(&file, "Once upon\n\n   \r\na time, far\r\n").unwrap();
    let f = file.to_str().unwrap();
    let base = [
        &["generate", "--model", m, "--device", "cpu", "-n", "12"][..],
        &SAMPLING,
    ]
    .concat();
    let (stdout, stderr) = run(&cat(
        &base,
        &["--prompts-file", f, "--seed", "3", "--print-ids"],
    ));
    let (one, _) = run(&cat(&base, &["--prompt", "Once upon", "--seed", "3"]));
    let (two, _) = run(&cat(&base, &["--prompt", "a time, far", "--seed", "4"]));
    assert_eq!(stdout, format!("{one}\n{two}"), "{stderr}");
    assert_eq!(
        ids_after(&stderr, "prompt 1 ids: "),
        b"a time, far"
            .iter()
            .map(|&b| u32::from(b))
            .collect::<Vec<_>>()
    );
    assert!(
        !stderr.contains("prompt 2"),
        "blank lines are not prompts: {stderr}"
    );
    // Repeated --prompt is the same batch.
    let (repeated, _) = run(&cat(
        &base,
        &[
            "--prompt",
            "Once upon",
            "--prompt",
            "a time, far",
            "--seed",
            "3",
        ],
    ));
    assert_eq!(repeated, stdout);
}

#[test]
fn bad_batches_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = init_model(dir.path(), "short", 300, 24);
    let m = model.to_str().unwrap();
    let base = ["generate", "--model", m, "--device", "cpu"];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };

    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n  \n\r\n").unwrap();
    let e = fail(&with(&["--prompts-file", empty.to_str().unwrap()]));
    assert!(
        e.contains("--prompts-file") && e.contains("no prompt"),
        "{e}"
    );

    let e = fail(&with(&["--prompts-file", dir.path().to_str().unwrap()]));
    assert!(
        e.contains("--prompts-file") && e.contains("not a regular file"),
        "{e}"
    );

    let missing = dir.path().join("missing.txt");
    let e = fail(&with(&["--prompts-file", missing.to_str().unwrap()]));
    assert!(
        e.contains("missing.txt") && e.contains("cannot read"),
        "{e}"
    );

    let e = fail(&with(&[
        "-t", "1", "-t", "2", "--seed", "1", "--seed", "2", "--seed", "3",
    ]));
    assert!(e.contains("--seed given 3 times for 2 prompts"), "{e}");
    // Checked once the file is read too.
    let two = dir.path().join("two.txt");
    std::fs::write(&two, "a\nb\n").unwrap();
    let e = fail(&with(&[
        "--prompts-file",
        two.to_str().unwrap(),
        "-s",
        "1",
        "-s",
        "2",
        "-s",
        "3",
    ]));
    assert!(e.contains("--seed given 3 times for 2 prompts"), "{e}");

    let long: Vec<String> = (0..25).map(|i| i.to_string()).collect();
    let long = long.join(",");
    let e = fail(&with(&["-t", "1,2", "-t", &long]));
    assert!(e.contains("prompt 1") && e.contains("25"), "{e}");

    let e = fail(&with(&["-t", "1", "-t", "2", "--max-batch", "0"]));
    assert!(e.contains("--max-batch 0"), "{e}");

    let e = fail(&with(&["-t", "1", "-t", "1,,2"]));
    assert!(e.contains("entry 1 is empty"), "{e}");
}
