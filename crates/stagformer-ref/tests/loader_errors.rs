//! Every class of bad checkpoint or request gets a typed error naming what is wrong.

mod common;

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde_json::{json, Value};
use stagformer_ref::init::write_random_checkpoint;
use stagformer_ref::{
    score, Checkpoint, ConfigError, Error, LoadError, LoadWarning, Model, RequestError, ScoreMode,
    StorageDtype, TensorSource,
};

fn good_checkpoint(dir: &Path, shards: usize) {
    let v = common::Variant {
        sections: 2,
        shared: false,
        window: Some(3),
        mix: true,
        gqa: true,
        tied: false,
    };
    write_random_checkpoint(&common::config(v), 7, StorageDtype::Bf16, shards, dir).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(path, v.to_string()).unwrap();
}

/// Rewrites model.safetensors after `edit` changes the (name → (dtype, shape, bytes)) map.
fn edit_tensors(dir: &Path, edit: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut map: HashMap<_, _> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, (t.dtype(), t.shape().to_vec(), t.data().to_vec())))
        .collect();
    edit(&mut map);
    let views: Vec<_> = map
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

type ConfigEdit = Box<dyn Fn(&mut serde_json::Map<String, Value>)>;

fn load_err(dir: &Path) -> Error {
    match Model::load(dir) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn good_checkpoints_load_single_and_sharded() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    good_checkpoint(a.path(), 1);
    good_checkpoint(b.path(), 3);
    assert!(b.path().join("model.safetensors.index.json").is_file());
    let ma = Model::load(a.path()).unwrap();
    let mb = Model::load(b.path()).unwrap();
    let toks = common::tokens(6, 1);
    assert_eq!(ma.forward(&toks).unwrap(), mb.forward(&toks).unwrap());
    // The bf16 file holds exactly the bf16-rounded random weights.
    let mem = Model::random(ma.config.clone(), 7, StorageDtype::Bf16).unwrap();
    assert_eq!(ma.forward(&toks).unwrap(), mem.forward(&toks).unwrap());
}

#[test]
fn missing_directory_and_config() {
    let err = load_err(Path::new("/nonexistent/stagformer"));
    assert!(
        matches!(err, Error::Config(ConfigError::Io { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("config.json"));
}

#[test]
fn invalid_json() {
    let d = tempfile::tempdir().unwrap();
    good_checkpoint(d.path(), 1);
    std::fs::write(d.path().join("config.json"), "{ \"vocab_size\": 3,").unwrap();
    let err = load_err(d.path());
    assert!(
        matches!(err, Error::Config(ConfigError::Json { .. })),
        "{err}"
    );
}

#[test]
fn config_field_errors_name_the_field() {
    let cases: Vec<(&str, ConfigEdit)> = vec![
        (
            "hidden_size",
            Box::new(|c| {
                c.remove("hidden_size");
            }),
        ),
        (
            "num_attention_heads",
            Box::new(|c| {
                c.insert("num_attention_heads".into(), json!(0));
            }),
        ),
        (
            "stag_cross_window",
            Box::new(|c| {
                c.insert("stag_cross_window".into(), json!(0));
            }),
        ),
        (
            "vocab_size",
            Box::new(|c| {
                c.insert("vocab_size".into(), json!("many"));
            }),
        ),
        (
            "rms_norm_eps",
            Box::new(|c| {
                c.insert("rms_norm_eps".into(), json!(-1.0));
            }),
        ),
        (
            "stag_shared_weights",
            Box::new(|c| {
                c.insert("stag_shared_weights".into(), json!(1));
            }),
        ),
        (
            "head_dim",
            Box::new(|c| {
                c.insert("head_dim".into(), json!(3));
            }),
        ),
        (
            "rope_scaling",
            Box::new(|c| {
                c.insert("rope_scaling".into(), json!({"type": "linear"}));
            }),
        ),
        (
            "num_key_value_heads",
            Box::new(|c| {
                c.insert("num_key_value_heads".into(), json!(3));
            }),
        ),
        (
            "stag_sections",
            Box::new(|c| {
                c.insert("stag_sections".into(), json!(3));
            }),
        ),
        (
            "hidden_size",
            Box::new(|c| {
                c.remove("head_dim");
                c.insert("hidden_size".into(), json!(18));
            }),
        ),
    ];
    for (field, edit) in cases {
        let d = tempfile::tempdir().unwrap();
        good_checkpoint(d.path(), 1);
        edit_config(d.path(), |c| edit(c));
        let err = load_err(d.path());
        assert!(matches!(err, Error::Config(_)), "{field}: {err}");
        assert!(err.to_string().contains(field), "{field}: message {err:?}");
    }
}

#[test]
fn no_weights_file() {
    let d = tempfile::tempdir().unwrap();
    good_checkpoint(d.path(), 1);
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    assert!(matches!(
        load_err(d.path()),
        Error::Load(LoadError::NoWeights { .. })
    ));
}

#[test]
fn missing_tensor_is_named() {
    let d = tempfile::tempdir().unwrap();
    good_checkpoint(d.path(), 1);
    edit_tensors(d.path(), |m| {
        m.remove("model.cross_layers.1.1.cross_attn.v_proj.weight");
    });
    let err = load_err(d.path());
    assert!(matches!(
        err,
        Error::Load(LoadError::MissingStoredTensor { .. })
    ));
    assert!(err
        .to_string()
        .contains("model.cross_layers.1.1.cross_attn.v_proj.weight"));
}

#[test]
fn unexpected_tensor_is_named() {
    let d = tempfile::tempdir().unwrap();
    good_checkpoint(d.path(), 1);
    edit_tensors(d.path(), |m| {
        m.insert(
            "model.layers.9.mlp.up_proj.weight".into(),
            (Dtype::F32, vec![1], vec![0; 4]),
        );
    });
    let err = load_err(d.path());
    assert!(
        matches!(err, Error::Load(LoadError::UnexpectedTensor { .. })),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("model.layers.9.mlp.up_proj.weight"));
}

#[test]
fn tensor_data_that_does_not_fill_its_shape_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    good_checkpoint(d.path(), 1);
    let config = stagformer_ref::Config::from_file(&d.path().join("config.json")).unwrap();
    let mut tensors = stagformer_ref::checkpoint::read_tensors(d.path(), |_, _| {}).unwrap();
    let name = "model.layers.0.self_attn.k_proj.weight";
    tensors.get_mut(name).unwrap().data.pop();
    let err = stagformer_ref::weights::Weights::from_tensors(&config, tensors).unwrap_err();
    assert!(
        matches!(&err, LoadError::DataLength { name: n, expected: 128, found: 127, .. } if n == name),
        "{err}"
    );
}

#[test]
fn wrong_shape_says_expected_and_found() {
    let d = tempfile::tempdir().unwrap();
    good_checkpoint(d.path(), 1);
    edit_tensors(d.path(), |m| {
        let t = m.get_mut("model.layers.0.self_attn.k_proj.weight").unwrap();
        t.1 = vec![t.1[1], t.1[0]];
    });
    let err = load_err(d.path());
    let msg = err.to_string();
    assert!(matches!(err, Error::Load(LoadError::ShapeMismatch { .. })));
    assert!(
        msg.contains("k_proj") && msg.contains("[8, 16]") && msg.contains("[16, 8]"),
        "{msg}"
    );
}

#[test]
fn unsupported_dtype_is_named() {
    let d = tempfile::tempdir().unwrap();
    good_checkpoint(d.path(), 1);
    edit_tensors(d.path(), |m| {
        let t = m.get_mut("model.norm.weight").unwrap();
        *t = (Dtype::I32, t.1.clone(), vec![0; t.1[0] * 4]);
    });
    let err = load_err(d.path());
    assert!(
        matches!(err, Error::Load(LoadError::UnsupportedDtype { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("model.norm.weight"));
}

#[test]
fn truncated_file() {
    let d = tempfile::tempdir().unwrap();
    good_checkpoint(d.path(), 1);
    let path = d.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let err = load_err(d.path());
    assert!(
        matches!(err, Error::Load(LoadError::Safetensors { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("model.safetensors"));
    std::fs::write(&path, &bytes[..5]).unwrap();
    assert!(matches!(
        load_err(d.path()),
        Error::Load(LoadError::Safetensors { .. })
    ));
}

#[test]
fn non_finite_weight() {
    let d = tempfile::tempdir().unwrap();
    good_checkpoint(d.path(), 1);
    edit_tensors(d.path(), |m| {
        let t = m.get_mut("model.memory_norms.0.weight").unwrap();
        t.2[0] = 0xC0; // bf16 0x7FC0 = NaN
        t.2[1] = 0x7F;
    });
    let err = load_err(d.path());
    assert!(
        matches!(err, Error::Load(LoadError::NonFinite { .. })),
        "{err}"
    );
}

#[test]
fn sharded_index_errors() {
    let d = tempfile::tempdir().unwrap();
    good_checkpoint(d.path(), 2);
    std::fs::remove_file(d.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = load_err(d.path());
    assert!(matches!(err, Error::Load(LoadError::Io { .. })), "{err}");
    assert!(err.to_string().contains("model-00002-of-00002.safetensors"));

    let d = tempfile::tempdir().unwrap();
    good_checkpoint(d.path(), 2);
    std::fs::write(
        d.path().join("model.safetensors.index.json"),
        "{\"weight_map\": 3}",
    )
    .unwrap();
    assert!(matches!(
        load_err(d.path()),
        Error::Load(LoadError::Index { .. })
    ));

    // A tensor stored in two shards.
    let d = tempfile::tempdir().unwrap();
    good_checkpoint(d.path(), 2);
    let first = d.path().join("model-00001-of-00002.safetensors");
    let second = d.path().join("model-00002-of-00002.safetensors");
    let bytes = std::fs::read(&first).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (name, view) = st.tensors().into_iter().next().unwrap();
    let bytes2 = std::fs::read(&second).unwrap();
    let st2 = SafeTensors::deserialize(&bytes2).unwrap();
    let mut views = st2.tensors();
    views.push((name, view));
    safetensors::serialize_to_file(views, None, &second).unwrap();
    assert!(matches!(
        load_err(d.path()),
        Error::Load(LoadError::DuplicateTensor { .. })
    ));
}

#[test]
fn bad_requests_are_errors() {
    let m = common::model(
        common::Variant {
            sections: 2,
            shared: true,
            window: None,
            mix: false,
            gqa: false,
            tied: true,
        },
        3,
    );
    let err = |toks: &[u32], mode| score(&m, toks, mode).unwrap_err();
    assert!(matches!(
        err(&[], ScoreMode::Forward),
        Error::Request(RequestError::EmptyInput)
    ));
    match err(&[1, 37, 2], ScoreMode::Forward) {
        Error::Request(RequestError::TokenOutOfRange {
            index,
            token,
            vocab_size,
        }) => {
            assert_eq!((index, token, vocab_size), (1, 37, 37))
        }
        other => panic!("{other}"),
    }
    let long = vec![1u32; 65];
    for mode in [ScoreMode::Forward, ScoreMode::Decode { prompt_len: 1 }] {
        assert!(matches!(
            err(&long, mode),
            Error::Request(RequestError::TooLong { len: 65, max: 64 })
        ));
    }
    assert!(matches!(
        err(&[1, 2], ScoreMode::Decode { prompt_len: 3 }),
        Error::Request(RequestError::BadPromptLen { .. })
    ));
    assert!(matches!(
        err(&[1, 2], ScoreMode::Recurrent { prompt_len: 0 }),
        Error::Request(RequestError::BadPromptLen { .. })
    ));
}

#[test]
fn decode_batch_limits() {
    use stagformer_ref::{DecodeBatch, StepMode};
    let m = common::model(common::variant_matrix()[20], 4);
    let mut batch = DecodeBatch::new(&m, StepMode::Staggered, 1, 4).unwrap();
    let (id, _) = batch.prefill(&[1, 2, 3]).unwrap();
    assert!(matches!(
        batch.prefill(&[1]).unwrap_err(),
        Error::Request(RequestError::BatchFull { max: 1 })
    ));
    batch.step(&[id], &[4]).unwrap();
    assert!(matches!(
        batch.step(&[id], &[5]).unwrap_err(),
        Error::Request(RequestError::TooLong { len: 5, max: 4 })
    ));
    // A removed sequence's id is stale, also once its slot holds the next prompt.
    batch.remove(id).unwrap();
    let (next, _) = batch.prefill(&[1]).unwrap();
    assert_eq!(next.slot(), id.slot());
    assert!(matches!(
        batch.step(&[id], &[5]).unwrap_err(),
        Error::Request(RequestError::StaleSequence { seq, generation: 1 }) if seq == id
    ));
    assert!(batch.remove(id).is_err());
    batch.step(&[next], &[5]).unwrap();
    // An id from a batch with more slots is unknown here.
    let mut wide = DecodeBatch::new(&m, StepMode::Staggered, 2, 4).unwrap();
    wide.prefill(&[1]).unwrap();
    let (far, _) = wide.prefill(&[1]).unwrap();
    assert!(matches!(
        batch.step(&[far], &[5]).unwrap_err(),
        Error::Request(RequestError::UnknownSequence { seq }) if seq == far
    ));
    assert!(DecodeBatch::new(&m, StepMode::Staggered, 1, 65).is_err());
}

fn tied_checkpoint(dir: &Path) {
    let v = common::Variant {
        sections: 2,
        shared: false,
        window: None,
        mix: false,
        gqa: true,
        tied: true,
    };
    write_random_checkpoint(&common::config(v), 9, StorageDtype::Bf16, 1, dir).unwrap();
}

/// Stores `lm_head.weight` next to the embedding of a tied checkpoint, made from the
/// embedding's (dtype, shape, bytes) by `make`.
fn store_lm_head(
    dir: &Path,
    make: impl FnOnce(&(Dtype, Vec<usize>, Vec<u8>)) -> (Dtype, Vec<usize>, Vec<u8>),
) {
    edit_tensors(dir, |m| {
        let head = make(&m["model.embed_tokens.weight"]);
        m.insert("lm_head.weight".into(), head);
    });
}

#[test]
fn tied_model_with_an_equal_stored_lm_head_loads_as_without() {
    let plain = tempfile::tempdir().unwrap();
    tied_checkpoint(plain.path());
    let want = Model::load(plain.path()).unwrap();
    let toks = common::tokens(6, 2);
    // Same bytes, and the same values stored as f32 (bf16 widens exactly).
    type Make = fn(&(Dtype, Vec<usize>, Vec<u8>)) -> (Dtype, Vec<usize>, Vec<u8>);
    let makes: [Make; 2] = [
        |e| e.clone(),
        |(_, shape, bytes)| {
            let wide = bytes
                .chunks_exact(2)
                .flat_map(|c| {
                    let v = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                    v.to_le_bytes()
                })
                .collect();
            (Dtype::F32, shape.clone(), wide)
        },
    ];
    for make in makes {
        let d = tempfile::tempdir().unwrap();
        tied_checkpoint(d.path());
        store_lm_head(d.path(), make);
        let ckpt = Checkpoint::open(d.path()).unwrap();
        assert!(ckpt.warnings().is_empty(), "{:?}", ckpt.warnings());
        assert!(ckpt.tensor("lm_head.weight").is_some());
        let m = Model::load(d.path()).unwrap();
        assert!(m.warnings().is_empty());
        assert!(m.weights.lm_head.is_none());
        assert_eq!(m.forward(&toks).unwrap(), want.forward(&toks).unwrap());
    }
}

#[test]
fn tied_model_with_a_differing_stored_lm_head_uses_the_embedding_and_warns() {
    let plain = tempfile::tempdir().unwrap();
    tied_checkpoint(plain.path());
    let want = Model::load(plain.path()).unwrap();
    let d = tempfile::tempdir().unwrap();
    tied_checkpoint(d.path());
    store_lm_head(d.path(), |(dtype, shape, bytes)| {
        let mut bytes = bytes.clone();
        bytes[7] ^= 0x01;
        (*dtype, shape.clone(), bytes)
    });
    let m = Model::load(d.path()).unwrap();
    assert_eq!(m.warnings().len(), 1, "{:?}", m.warnings());
    assert!(matches!(
        &m.warnings()[0],
        LoadWarning::TiedLmHeadDiffers { path } if path.ends_with("model.safetensors")
    ));
    let msg = m.warnings()[0].to_string();
    assert!(
        msg.contains("lm_head.weight") && msg.contains("embedding"),
        "{msg}"
    );
    let toks = common::tokens(6, 2);
    assert_eq!(m.forward(&toks).unwrap(), want.forward(&toks).unwrap());
    assert_eq!(Checkpoint::open(d.path()).unwrap().warnings(), m.warnings());
}

#[test]
fn tied_model_with_a_misshapen_stored_lm_head_is_refused() {
    let d = tempfile::tempdir().unwrap();
    tied_checkpoint(d.path());
    store_lm_head(d.path(), |(dtype, shape, bytes)| {
        let rows = shape[0] - 1;
        (
            *dtype,
            vec![rows, shape[1]],
            bytes[..rows * shape[1] * 2].to_vec(),
        )
    });
    for err in [load_err(d.path()), Checkpoint::open(d.path()).unwrap_err()] {
        assert!(
            matches!(&err, Error::Load(LoadError::ShapeMismatch { name, .. }) if name == "lm_head.weight"),
            "{err}"
        );
        assert!(err.to_string().contains("[37, 16]"), "{err}");
    }
}

/// Opening maps the files and checks the tensor directory from the headers: every structural
/// fault is found there, naming the file; only values (non-finite) wait for conversion.
#[test]
fn mapped_open_finds_structural_faults_and_conversion_finds_values() {
    let d = tempfile::tempdir().unwrap();
    good_checkpoint(d.path(), 1);
    edit_tensors(d.path(), |m| {
        let t = m.get_mut("model.layers.1.mlp.up_proj.weight").unwrap();
        *t = (Dtype::I32, t.1.clone(), vec![0; t.2.len() * 2]);
    });
    let err = Checkpoint::open(d.path()).unwrap_err();
    assert!(
        matches!(&err, Error::Load(LoadError::UnsupportedDtype { name, .. }) if name == "model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    let d = tempfile::tempdir().unwrap();
    good_checkpoint(d.path(), 1);
    edit_tensors(d.path(), |m| {
        let t = m.get_mut("model.norm.weight").unwrap();
        t.2[0] = 0x80; // bf16 0x7F80 = +inf
        t.2[1] = 0x7F;
    });
    let ckpt = Checkpoint::open(d.path()).unwrap();
    assert!(ckpt
        .read::<f32>("model.layers.0.mlp.up_proj.weight")
        .is_ok());
    let err = ckpt.read::<f32>("model.norm.weight").unwrap_err();
    assert!(
        matches!(&err, LoadError::NonFinite { name, path } if name == "model.norm.weight" && path.ends_with("model.safetensors")),
        "{err}"
    );
    let err = ckpt.read::<half::bf16>("model.norm.weight").unwrap_err();
    assert!(matches!(err, LoadError::NonFinite { .. }), "{err}");

    // A shard that is a directory, not a regular file.
    let d = tempfile::tempdir().unwrap();
    good_checkpoint(d.path(), 2);
    let second = d.path().join("model-00002-of-00002.safetensors");
    std::fs::remove_file(&second).unwrap();
    std::fs::create_dir(&second).unwrap();
    let err = Checkpoint::open(d.path()).unwrap_err();
    assert!(
        matches!(&err, Error::Load(LoadError::SpecialFile { path, kind: "a directory" }) if path == &second),
        "{err}"
    );

    // A header whose offsets run past the end of the file.
    let d = tempfile::tempdir().unwrap();
    good_checkpoint(d.path(), 1);
    let path = d.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() - 2);
    std::fs::write(&path, &bytes).unwrap();
    let err = Checkpoint::open(d.path()).unwrap_err();
    assert!(
        matches!(&err, Error::Load(LoadError::Safetensors { path: p, .. }) if p == &path),
        "{err}"
    );
}

/// Converting from the map gives the values the eager f32 reader gives, in each target type
/// (bf16 from a bf16 file bit for bit), and every sharded tensor is found in its own file.
#[test]
fn mapped_reads_match_the_eager_reader() {
    let d = tempfile::tempdir().unwrap();
    good_checkpoint(d.path(), 3);
    let eager = stagformer_ref::checkpoint::read_tensors(d.path(), |_, _| {}).unwrap();
    let ckpt = Checkpoint::open(d.path()).unwrap();
    assert_eq!(ckpt.files().count(), 3);
    assert_eq!(ckpt.tensors().count(), eager.len());
    for (name, t) in &eager {
        let info = ckpt.tensor(name).unwrap();
        assert_eq!(info.shape, &t.shape[..]);
        assert_eq!(info.file, t.file);
        assert_eq!(info.dtype, StorageDtype::Bf16);
        assert_eq!(&ckpt.read::<f32>(name).unwrap(), &t.data, "{name}");
        let narrow: Vec<f32> = ckpt
            .read::<half::bf16>(name)
            .unwrap()
            .iter()
            .map(|v| v.to_f32())
            .collect();
        assert_eq!(&narrow, &t.data, "{name}");
    }
}
