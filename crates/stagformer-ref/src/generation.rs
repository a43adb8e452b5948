//! The generation settings a Hugging Face checkpoint ships next to its weights:
//! `generation_config.json` (end-of-sequence ids, sampling defaults), with `config.json` as the
//! fallback for the special-token ids, as `transformers` reads them.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The file holding the generation defaults.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
/// Where the special-token ids live when `generation_config.json` does not say.
const MODEL_CONFIG_FILE: &str = "config.json";
/// Both files are a few hundred bytes in practice; anything far larger is not one of them, and
/// reading it whole would let a stray file exhaust memory.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// What a checkpoint directory says about generation. Every field is optional in the files;
/// `None` (or an empty list) means the files do not say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    /// Generation ends when one of these is produced (`eos_token_id`, an int or a list).
    pub eos_token_ids: Vec<u32>,
    /// The id a tokenizer may put before a prompt (`bos_token_id`).
    pub bos_token_id: Option<u32>,
    /// Default sampling temperature (`temperature`, finite and ≥ 0; 0 is greedy).
    pub temperature: Option<f64>,
    /// Default top-k (`top_k`; 0 keeps every token).
    pub top_k: Option<usize>,
    /// Default nucleus mass (`top_p`, in (0, 1]).
    pub top_p: Option<f64>,
    /// `false` means greedy decoding whatever the other settings say (Hugging Face's rule).
    pub do_sample: Option<bool>,
}

/// A generation file that cannot be used; every variant names the file, and the field when one
/// is at fault.
#[derive(Debug, thiserror::Error)]
pub enum GenerationConfigError {
    /// The file exists but could not be opened or read.
    #[error("{path}: cannot read: {error}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The path names a directory, FIFO, socket or device.
    #[error("{path}: not a regular file")]
    NotAFile {
        /// The path at fault.
        path: PathBuf,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("{path}: larger than {limit} bytes; not a generation config")]
    TooLarge {
        /// The file at fault.
        path: PathBuf,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The file is not valid JSON.
    #[error("{path}: invalid JSON: {error}")]
    Json {
        /// The file at fault.
        path: PathBuf,
        /// The parser's error, with line and column.
        error: serde_json::Error,
    },
    /// The file is JSON but not an object.
    #[error("{path}: the top level is not a JSON object")]
    NotAnObject {
        /// The file at fault.
        path: PathBuf,
    },
    /// A field of the wrong type or outside its range.
    #[error("{path}: field `{field}` = {value}: {reason}")]
    InvalidField {
        /// The file at fault.
        path: PathBuf,
        /// The field's JSON key.
        field: &'static str,
        /// Its value, as JSON.
        value: String,
        /// What it must be.
        reason: &'static str,
    },
}

type Result<T, E = GenerationConfigError> = std::result::Result<T, E>;

impl GenerationConfig {
    /// Reads `dir/generation_config.json` and, for the token ids it does not give,
    /// `dir/config.json`. Missing files are not an error (nothing is said); unreadable,
    /// oversized or malformed ones are.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let gen_path = dir.join(GENERATION_CONFIG_FILE);
        let model_path = dir.join(MODEL_CONFIG_FILE);
        let mut config = match read_object(&gen_path)? {
            Some(obj) => Self::from_json(&gen_path, &obj)?,
            None => Self::default(),
        };
        // transformers builds the generation config from the model config when the file lacks
        // the special-token ids, so a checkpoint that only sets them in config.json still stops.
        if config.eos_token_ids.is_empty() || config.bos_token_id.is_none() {
            if let Some(obj) = read_object(&model_path)? {
                if config.eos_token_ids.is_empty() {
                    config.eos_token_ids = token_ids(&model_path, &obj, "eos_token_id")?;
                }
                if config.bos_token_id.is_none() {
                    config.bos_token_id = token_id(&model_path, &obj, "bos_token_id")?;
                }
            }
        }
        Ok(config)
    }

    /// The settings in one parsed `generation_config.json`; `path` is for the errors.
    pub fn from_json(path: &Path, obj: &serde_json::Map<String, Value>) -> Result<Self> {
        let bad = |field, value: &Value, reason| GenerationConfigError::InvalidField {
            path: path.to_owned(),
            field,
            value: value.to_string(),
            reason,
        };
        let temperature = match present(obj, "temperature") {
            None => None,
            Some(v) => match v.as_f64() {
                Some(t) if t.is_finite() && t >= 0.0 => Some(t),
                _ => return Err(bad("temperature", v, "must be a finite number >= 0")),
            },
        };
        let top_p = match present(obj, "top_p") {
            None => None,
            Some(v) => match v.as_f64() {
                Some(p) if p > 0.0 && p <= 1.0 => Some(p),
                _ => return Err(bad("top_p", v, "must be a number in (0, 1]")),
            },
        };
        let top_k = match present(obj, "top_k") {
            None => None,
            Some(v) => match v.as_u64().and_then(|k| usize::try_from(k).ok()) {
                Some(k) => Some(k),
                None => return Err(bad("top_k", v, "must be an integer >= 0")),
            },
        };
        let do_sample = match present(obj, "do_sample") {
            None => None,
            Some(v) => match v.as_bool() {
                Some(b) => Some(b),
                None => return Err(bad("do_sample", v, "must be true or false")),
            },
        };
        Ok(GenerationConfig {
            eos_token_ids: token_ids(path, obj, "eos_token_id")?,
            bos_token_id: token_id(path, obj, "bos_token_id")?,
            temperature,
            top_k,
            top_p,
            do_sample,
        })
    }

    /// True when the file gave any sampling setting.
    pub fn has_sampling_settings(&self) -> bool {
        self.temperature.is_some()
            || self.top_k.is_some()
            || self.top_p.is_some()
            || self.do_sample.is_some()
    }
}

/// The field's value unless it is absent or `null` (which the files use for "not set").
fn present<'a>(obj: &'a serde_json::Map<String, Value>, field: &str) -> Option<&'a Value> {
    obj.get(field).filter(|v| !v.is_null())
}

fn as_token_id(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|id| u32::try_from(id).ok())
}

fn token_id(
    path: &Path,
    obj: &serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<Option<u32>> {
    match present(obj, field) {
        None => Ok(None),
        Some(v) => match as_token_id(v) {
            Some(id) => Ok(Some(id)),
            None => Err(GenerationConfigError::InvalidField {
                path: path.to_owned(),
                field,
                value: v.to_string(),
                reason: "must be a token id (an integer >= 0)",
            }),
        },
    }
}

/// An int or a list of ints (Llama 3 lists several end-of-turn ids).
fn token_ids(
    path: &Path,
    obj: &serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<Vec<u32>> {
    let bad = |v: &Value| GenerationConfigError::InvalidField {
        path: path.to_owned(),
        field,
        value: v.to_string(),
        reason: "must be a token id or a list of token ids",
    };
    match present(obj, field) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| as_token_id(item).ok_or_else(|| bad(item)))
            .collect(),
        Some(v) => as_token_id(v).map(|id| vec![id]).ok_or_else(|| bad(v)),
    }
}

/// The JSON object in `path`, `None` when the file does not exist.
fn read_object(path: &Path) -> Result<Option<serde_json::Map<String, Value>>> {
    let io = |error| GenerationConfigError::Io {
        path: path.to_owned(),
        error,
    };
    // The type is checked before opening too: opening a FIFO would block.
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => {
            return Err(GenerationConfigError::NotAFile {
                path: path.to_owned(),
            })
        }
        _ => {}
    }
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    // Checked on the opened handle, so the file read is the file checked. Symlinks are
    // followed: Hugging Face's cache stores every file as a link to a blob.
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(GenerationConfigError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mut text = String::new();
    // One byte past the limit tells "exactly at the limit" from "larger", even if the file
    // grows after the metadata was read.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(GenerationConfigError::TooLarge {
            path: path.to_owned(),
            limit: MAX_FILE_BYTES,
        });
    }
    match serde_json::from_str(&text) {
        Ok(Value::Object(obj)) => Ok(Some(obj)),
        Ok(_) => Err(GenerationConfigError::NotAnObject {
            path: path.to_owned(),
        }),
        Err(error) => Err(GenerationConfigError::Json {
            path: path.to_owned(),
            error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn no_files_say_nothing() {
        let dir = dir_with(&[]);
        assert_eq!(
            GenerationConfig::from_dir(dir.path()).unwrap(),
            GenerationConfig::default()
        );
    }

    #[test]
    fn reads_every_field_and_a_list_of_eos_ids() {
        let dir = dir_with(&[(
            GENERATION_CONFIG_FILE,
            r#"{"bos_token_id": 1, "eos_token_id": [2, 32007], "temperature": 0.6,
                "top_p": 0.9, "top_k": 20, "do_sample": true, "max_length": 4096}"#,
        )]);
        let got = GenerationConfig::from_dir(dir.path()).unwrap();
        assert_eq!(
            got,
            GenerationConfig {
                eos_token_ids: vec![2, 32007],
                bos_token_id: Some(1),
                temperature: Some(0.6),
                top_k: Some(20),
                top_p: Some(0.9),
                do_sample: Some(true),
            }
        );
        assert!(got.has_sampling_settings());
    }

    #[test]
    fn config_json_supplies_the_ids_generation_config_lacks() {
        let dir = dir_with(&[
            (
                GENERATION_CONFIG_FILE,
                r#"{"eos_token_id": null, "do_sample": false}"#,
            ),
            ("config.json", r#"{"eos_token_id": 7, "bos_token_id": 3}"#),
        ]);
        let got = GenerationConfig::from_dir(dir.path()).unwrap();
        assert_eq!(got.eos_token_ids, vec![7]);
        assert_eq!(got.bos_token_id, Some(3));
        assert_eq!(got.do_sample, Some(false));
        // generation_config.json wins where it says something.
        let dir = dir_with(&[
            (GENERATION_CONFIG_FILE, r#"{"eos_token_id": 5}"#),
            ("config.json", r#"{"eos_token_id": [7, 8]}"#),
        ]);
        let got = GenerationConfig::from_dir(dir.path()).unwrap();
        assert_eq!(got.eos_token_ids, vec![5]);
        assert!(!got.has_sampling_settings());
        // config.json alone.
        let dir = dir_with(&[("config.json", r#"{"eos_token_id": [7, 8]}"#)]);
        let got = GenerationConfig::from_dir(dir.path()).unwrap();
        assert_eq!(got.eos_token_ids, vec![7, 8]);
    }

    #[test]
    fn bad_files_are_errors_naming_file_and_field() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                GENERATION_CONFIG_FILE,
                r#"{"eos_token_id": -1}"#,
                &["eos_token_id", "-1"],
            ),
            (
                GENERATION_CONFIG_FILE,
                r#"{"eos_token_id": [2, "x"]}"#,
                &["eos_token_id", "\"x\""],
            ),
            (
                GENERATION_CONFIG_FILE,
                r#"{"eos_token_id": 4294967296}"#,
                &["eos_token_id"],
            ),
            (
                GENERATION_CONFIG_FILE,
                r#"{"temperature": -0.5}"#,
                &["temperature"],
            ),
            (GENERATION_CONFIG_FILE, r#"{"top_p": 0}"#, &["top_p"]),
            (GENERATION_CONFIG_FILE, r#"{"top_p": 1.5}"#, &["top_p"]),
            (GENERATION_CONFIG_FILE, r#"{"top_k": 2.5}"#, &["top_k"]),
            (
                GENERATION_CONFIG_FILE,
                r#"{"do_sample": "yes"}"#,
                &["do_sample"],
            ),
            (
                GENERATION_CONFIG_FILE,
                r#"{"bos_token_id": "<s>"}"#,
                &["bos_token_id"],
            ),
            (GENERATION_CONFIG_FILE, "[1, 2]", &["not a JSON object"]),
            (GENERATION_CONFIG_FILE, "{", &["invalid JSON"]),
            (
                "config.json",
                r#"{"eos_token_id": {"id": 2}}"#,
                &["config.json", "eos_token_id"],
            ),
        ];
        for (file, text, needles) in cases {
            let dir = dir_with(&[(file, text)]);
            let err = GenerationConfig::from_dir(dir.path())
                .expect_err(text)
                .to_string();
            assert!(err.contains(file), "{text}: {err}");
            for needle in *needles {
                assert!(err.contains(needle), "{text}: {err:?} lacks {needle:?}");
            }
        }
    }

    #[test]
    fn refuses_oversized_files_and_directories() {
        let big = format!(
            "{{\"eos_token_id\": 2, \"pad\": \"{}\"}}",
            "x".repeat(MAX_FILE_BYTES as usize)
        );
        let dir = dir_with(&[(GENERATION_CONFIG_FILE, &big)]);
        let err = GenerationConfig::from_dir(dir.path()).unwrap_err();
        assert!(
            matches!(err, GenerationConfigError::TooLarge { .. }),
            "{err}"
        );
        let dir = dir_with(&[]);
        std::fs::create_dir(dir.path().join(GENERATION_CONFIG_FILE)).unwrap();
        let err = GenerationConfig::from_dir(dir.path()).unwrap_err();
        // Opening a directory succeeds on Unix and fails elsewhere; either way it is refused.
        #[cfg(unix)]
        assert!(
            matches!(err, GenerationConfigError::NotAFile { .. }),
            "{err}"
        );
        let _ = err;
    }
}
