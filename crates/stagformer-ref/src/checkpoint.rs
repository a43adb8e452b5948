//! Checkpoint files: `config.json` + `model.safetensors`, or shards
//! `model-0000N-of-0000M.safetensors` listed by `model.safetensors.index.json`.
//! Every tensor is read into f32; f32, bf16 and f16 are accepted.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::error::LoadError;

pub const CONFIG_FILE: &str = "config.json";
pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One tensor read from a checkpoint, widened to f32.
#[derive(Debug, Clone)]
pub struct LoadedTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    /// The file it came from, for error messages.
    pub file: PathBuf,
}

/// Storage dtype of a written checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDtype {
    F32,
    Bf16,
    F16,
}

impl StorageDtype {
    pub fn bytes(self) -> usize {
        match self {
            StorageDtype::F32 => 4,
            StorageDtype::Bf16 | StorageDtype::F16 => 2,
        }
    }
}

/// Reads every tensor of the checkpoint in `dir`.
pub fn read_tensors(
    dir: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<BTreeMap<String, LoadedTensor>, LoadError> {
    let single = dir.join(SINGLE_FILE);
    let index = dir.join(INDEX_FILE);
    let files = if single.is_file() {
        vec![single]
    } else if index.is_file() {
        shard_files(dir, &index)?
    } else {
        return Err(LoadError::NoWeights {
            path: dir.to_owned(),
        });
    };
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let mut done = 0;
    let mut tensors = BTreeMap::new();
    for file in &files {
        let bytes = std::fs::read(file).map_err(|source| LoadError::Io {
            path: file.clone(),
            source,
        })?;
        done += bytes.len() as u64;
        read_file_tensors(file, &bytes, &mut tensors)?;
        progress(done, total);
    }
    Ok(tensors)
}

/// The distinct shard files named by an index's `weight_map`, in name order.
fn shard_files(dir: &Path, index: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let bad = |reason: String| LoadError::Index {
        path: index.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(index).map_err(|source| LoadError::Io {
        path: index.to_owned(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut names: Vec<&str> = Vec::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("`weight_map.{tensor}` is not a file name")))?;
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(bad(format!(
                "`weight_map.{tensor}` = {file:?} is not a plain file name"
            )));
        }
        if !names.contains(&file) {
            names.push(file);
        }
    }
    if names.is_empty() {
        return Err(bad("`weight_map` is empty".into()));
    }
    names.sort_unstable();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

fn read_file_tensors(
    file: &Path,
    bytes: &[u8],
    out: &mut BTreeMap<String, LoadedTensor>,
) -> Result<(), LoadError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| LoadError::Safetensors {
        path: file.to_owned(),
        reason: e.to_string(),
    })?;
    for (name, view) in st.tensors() {
        let data = widen(&name, &view)?;
        if data.iter().any(|v| !v.is_finite()) {
            return Err(LoadError::NonFinite { name });
        }
        let tensor = LoadedTensor {
            shape: view.shape().to_vec(),
            data,
            file: file.to_owned(),
        };
        if out.insert(name.clone(), tensor).is_some() {
            return Err(LoadError::DuplicateTensor {
                path: file.to_owned(),
                name,
            });
        }
    }
    Ok(())
}

fn widen(name: &str, view: &TensorView<'_>) -> Result<Vec<f32>, LoadError> {
    let bytes = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(LoadError::UnsupportedDtype {
                name: name.to_owned(),
                dtype: format!("{other:?}"),
            })
        }
    })
}

/// Rounds f32 values to `dtype` and returns their little-endian bytes.
pub fn encode(values: &[f32], dtype: StorageDtype) -> Vec<u8> {
    match dtype {
        StorageDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        StorageDtype::Bf16 => values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
        StorageDtype::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
    }
}

/// A tensor ready to be written: name, shape and encoded bytes.
pub struct EncodedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: StorageDtype,
    pub bytes: Vec<u8>,
}

/// Writes `model.safetensors`, or with `shards > 1` that many shard files and the index.
pub fn write_tensors(
    dir: &Path,
    tensors: &[EncodedTensor],
    shards: usize,
) -> Result<(), LoadError> {
    let write_err = |path: &Path, reason: String| LoadError::Write {
        path: path.to_owned(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e.to_string()))?;
    let shards = shards.clamp(1, tensors.len().max(1));
    let per_shard = tensors.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (n, chunk) in tensors.chunks(per_shard.max(1)).enumerate() {
        let file_name = if shards == 1 {
            SINGLE_FILE.to_owned()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", n + 1, shards)
        };
        let path = dir.join(&file_name);
        let views = chunk
            .iter()
            .map(|t| {
                let dtype = match t.dtype {
                    StorageDtype::F32 => Dtype::F32,
                    StorageDtype::Bf16 => Dtype::BF16,
                    StorageDtype::F16 => Dtype::F16,
                };
                TensorView::new(dtype, t.shape.clone(), &t.bytes)
                    .map(|v| (t.name.clone(), v))
                    .map_err(|e| write_err(&path, format!("tensor `{}`: {e}", t.name)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut metadata = HashMap::new();
        metadata.insert("format".to_owned(), "pt".to_owned());
        safetensors::serialize_to_file(views, Some(metadata), &path)
            .map_err(|e| write_err(&path, e.to_string()))?;
        for t in chunk {
            weight_map.insert(t.name.clone(), file_name.clone().into());
        }
    }
    if shards > 1 {
        let total: usize = tensors.iter().map(|t| t.bytes.len()).sum();
        let index = serde_json::json!({
            "metadata": { "total_size": total },
            "weight_map": weight_map,
        });
        let path = dir.join(INDEX_FILE);
        let text =
            serde_json::to_string_pretty(&index).map_err(|e| write_err(&path, e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| write_err(&path, e.to_string()))?;
    }
    Ok(())
}
