//! Every class of bad checkpoint or request gets a typed error naming what is wrong.

mod common;

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde_json::{json, Value};
use stagformer_ref::init::write_random_checkpoint;
use stagformer_ref::{
    score, ConfigError, Error, LoadError, Model, RequestError, ScoreMode, StorageDtype,
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
    assert!(matches!(err, Error::Load(LoadError::MissingTensor { .. })));
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
    assert!(matches!(
        batch.step(&[id + 1], &[5]).unwrap_err(),
        Error::Request(RequestError::UnknownSequence { .. })
    ));
    assert!(DecodeBatch::new(&m, StepMode::Staggered, 1, 65).is_err());
}
