//! Library rows of the bad-input table (the CLI's rows are in
//! crates/stagformer-cli/tests/bad_inputs.rs): headers with repeated names, an index that
//! disagrees with its shards, errors that name the tensor, the same error on every run, and
//! non-finite logits. Each row asserts the typed error, both from the mapped [`Checkpoint`] and
//! from the eager [`read_tensors`].

mod common;

use std::path::Path;

use serde_json::{json, Value};
use stagformer_ref::checkpoint::read_tensors;
use stagformer_ref::init::write_random_checkpoint;
use stagformer_ref::{
    score, Checkpoint, Error, LoadError, Model, NonFiniteLogits, ScoreMode, StorageDtype,
};

const EMBED: &str = "model.embed_tokens.weight";
const SHARD1: &str = "model-00001-of-00002.safetensors";
const SHARD2: &str = "model-00002-of-00002.safetensors";
const INDEX: &str = "model.safetensors.index.json";

fn good(dir: &Path, shards: usize) {
    let v = common::Variant {
        sections: 2,
        shared: false,
        window: None,
        mix: false,
        gqa: true,
        tied: false,
    };
    write_random_checkpoint(&common::config(v), 3, StorageDtype::F32, shards, dir).unwrap();
}

fn header(path: &Path) -> (Vec<(String, Value)>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let map: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (map.into_iter().collect(), bytes[8 + n..].to_vec())
}

fn write(path: &Path, entries: &[(String, Value)], data: &[u8]) {
    let body: Vec<String> = entries
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::from(k.as_str())))
        .collect();
    let text = format!("{{{}}}", body.join(","));
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(text.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

/// The load error from both readers, which must agree (the eager one is checked for the file
/// and index faults it shares with the mapped one).
fn both(dir: &Path) -> LoadError {
    let mapped = match Checkpoint::open(dir) {
        Ok(_) => panic!("{} opened", dir.display()),
        Err(Error::Load(e)) => e,
        Err(e) => panic!("not a load error: {e}"),
    };
    let eager = read_tensors(dir, |_, _| {}).expect_err("eager read succeeded");
    assert_eq!(mapped.to_string(), eager.to_string());
    mapped
}

#[test]
fn a_name_listed_twice_in_a_header_is_refused() {
    let d = tempfile::tempdir().unwrap();
    good(d.path(), 1);
    let path = d.path().join("model.safetensors");
    let (mut e, data) = header(&path);
    let dup = e.iter().find(|(k, _)| k == EMBED).unwrap().clone();
    e.push(dup);
    write(&path, &e, &data);
    let err = both(d.path());
    assert!(
        matches!(&err, LoadError::DuplicateInHeader { path: p, name } if p == &path && name == EMBED),
        "{err}"
    );
}

#[test]
fn header_faults_name_the_tensor_and_the_first_in_name_order() {
    let d = tempfile::tempdir().unwrap();
    good(d.path(), 1);
    let path = d.path().join("model.safetensors");
    let (mut e, data) = header(&path);
    // Every tensor's offsets broken: the first name in order is reported, on every run.
    for (k, v) in e.iter_mut().filter(|(k, _)| k != "__metadata__") {
        let _ = k;
        v["data_offsets"][1] = json!(v["data_offsets"][1].as_u64().unwrap() + 2);
    }
    let mut names: Vec<&str> = e
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| *k != "__metadata__")
        .collect();
    names.sort_unstable();
    let first = names[0].to_owned();
    write(&path, &e, &data);
    let messages: Vec<String> = (0..5).map(|_| both(d.path()).to_string()).collect();
    assert!(messages.iter().all(|m| m == &messages[0]), "{messages:?}");
    assert!(
        messages[0].contains(&format!("tensor `{first}`")),
        "{}",
        messages[0]
    );
    assert!(messages[0].contains("model.safetensors"), "{}", messages[0]);
}

fn sharded() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    good(d.path(), 2);
    d
}

fn edit_index(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join(INDEX);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(v["weight_map"].as_object_mut().unwrap());
    std::fs::write(path, v.to_string()).unwrap();
}

fn mismatch(err: &LoadError) -> (&str, &str) {
    match err {
        LoadError::IndexMismatch { path, name, reason } => {
            assert!(path.ends_with(INDEX), "{err}");
            (name, reason)
        }
        other => panic!("not an index mismatch: {other}"),
    }
}

#[test]
fn the_index_is_checked_against_its_shards() {
    // A tensor under another shard than the one it is in.
    let d = sharded();
    edit_index(d.path(), |m| {
        let f = m[EMBED].as_str().unwrap().to_owned();
        m[EMBED] = json!(if f == SHARD1 { SHARD2 } else { SHARD1 });
    });
    let err = both(d.path());
    let (name, reason) = mismatch(&err);
    assert_eq!(name, EMBED);
    assert!(reason.contains("but `weight_map` puts it in"), "{err}");

    // An entry found in no shard.
    let d = sharded();
    edit_index(d.path(), |m| {
        m.insert("model.ghost.weight".into(), json!(SHARD2));
    });
    let err = both(d.path());
    assert_eq!(mismatch(&err).0, "model.ghost.weight");

    // A stored tensor with no entry.
    let d = sharded();
    edit_index(d.path(), |m| {
        m.remove(EMBED);
    });
    let err = both(d.path());
    assert_eq!(
        mismatch(&err),
        (
            EMBED,
            &*format!("is stored in {SHARD1} but has no `weight_map` entry")
        )
    );

    // A key twice.
    let d = sharded();
    let path = d.path().join(INDEX);
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen(
        "\"weight_map\": {",
        &format!("\"weight_map\": {{\n    \"{EMBED}\": \"{SHARD1}\","),
        1,
    );
    std::fs::write(&path, text).unwrap();
    let err = both(d.path());
    assert_eq!(
        mismatch(&err),
        (EMBED, "appears more than once in `weight_map`")
    );

    // `weight_map` twice at the top level.
    let d = sharded();
    let path = d.path().join(INDEX);
    std::fs::write(
        &path,
        format!("{{\"weight_map\": {{}}, \"weight_map\": {{\"{EMBED}\": \"{SHARD1}\"}}}}"),
    )
    .unwrap();
    let err = both(d.path());
    assert!(matches!(&err, LoadError::Index { .. }), "{err}");
    assert!(err.to_string().contains("duplicate field"), "{err}");
}

#[test]
fn missing_tensors_name_the_file_that_lists_them() {
    for shards in [1, 2] {
        let d = tempfile::tempdir().unwrap();
        good(d.path(), shards);
        let cfg = d.path().join("config.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        v["stag_output_mix"] = json!(true);
        std::fs::write(&cfg, v.to_string()).unwrap();
        let err = Checkpoint::open(d.path()).unwrap_err().to_string();
        let listing = if shards == 1 {
            "model.safetensors"
        } else {
            INDEX
        };
        assert!(
            err.contains(listing) && err.contains("output_mix.weight"),
            "{err}"
        );
    }
}

#[test]
fn non_finite_logits_are_an_error_naming_the_position() {
    let d = tempfile::tempdir().unwrap();
    good(d.path(), 1);
    let path = d.path().join("model.safetensors");
    let (e, mut data) = header(&path);
    let v = &e.iter().find(|(k, _)| k == "lm_head.weight").unwrap().1;
    let (a, b) = (
        v["data_offsets"][0].as_u64().unwrap() as usize,
        v["data_offsets"][1].as_u64().unwrap() as usize,
    );
    // Finite weights whose products overflow f32.
    for c in data[a..b].chunks_exact_mut(4) {
        c.copy_from_slice(&3.0e38f32.to_le_bytes());
    }
    write(&path, &e, &data);
    let model = Model::load(d.path()).unwrap();
    for mode in [ScoreMode::Forward, ScoreMode::Decode { prompt_len: 2 }] {
        match score(&model, &[1, 2, 3], mode) {
            Err(Error::NonFiniteLogits(NonFiniteLogits { row: 0, .. })) => {}
            other => panic!("{mode:?}: {other:?}"),
        }
    }
}
