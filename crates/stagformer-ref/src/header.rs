//! The safetensors header, parsed here rather than by the `safetensors` crate: the crate reads
//! the tensor directory into a hash map, so a name listed twice silently keeps its last entry,
//! and its errors ("invalid shape, data type, or offset for tensor") do not say which tensor.
//! Every error here names the file and, where there is one, the tensor; where several tensors
//! are wrong, the first in name (or offset) order is reported, the same on every run.
//!
//! Also home of [`object_entries`], the duplicate-keeping JSON object reader the index uses.

use std::fmt;
use std::path::Path;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::checkpoint::StorageDtype;
use crate::error::LoadError;

/// Largest header accepted, as in the `safetensors` crate: a directory of ~10^6 tensors.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor of a safetensors header, checked against the file.
#[derive(Debug, Clone)]
pub(crate) struct HeaderTensor {
    pub name: String,
    pub dtype: StorageDtype,
    pub shape: Vec<usize>,
    /// Byte range within the whole file (header included), inside the file.
    pub bytes: std::ops::Range<usize>,
}

/// A JSON object's entries in file order, duplicates kept (serde_json's maps keep only the
/// last value of a repeated key).
#[derive(Debug, Default)]
pub(crate) struct Entries(pub Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(EntriesVisitor)
    }
}

/// The entries of the JSON object `text`, duplicates kept.
pub(crate) fn object_entries(text: &[u8]) -> Result<Vec<(String, Value)>, serde_json::Error> {
    serde_json::from_slice::<Entries>(text).map(|e| e.0)
}

/// `model.safetensors.index.json`: only `weight_map` is read (`metadata` is informational). A
/// repeated top-level key is a serde error ("duplicate field").
#[derive(Deserialize)]
pub(crate) struct IndexDoc {
    pub weight_map: Option<Entries>,
}

/// The first key (in sorted order) that `entries` holds more than once.
pub(crate) fn first_duplicate(entries: &[(String, Value)]) -> Option<&str> {
    let mut keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    keys.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// What a header says about one tensor, before it is checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// Parses and checks the header of the safetensors file `file` (its whole contents, read from
/// `path`): the length prefix, the JSON, every entry's dtype, shape and offsets, that the
/// offsets tile the data exactly, and that no name is listed twice.
pub(crate) fn parse(path: &Path, file: &[u8]) -> Result<Vec<HeaderTensor>, LoadError> {
    let corrupt = |reason: String| LoadError::Safetensors {
        path: path.to_owned(),
        reason,
    };
    let prefix: [u8; 8] = file
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            corrupt(format!(
                "{} bytes is too short for a safetensors header",
                file.len()
            ))
        })?;
    let header_len = u64::from_le_bytes(prefix);
    let room = file.len() as u64 - 8;
    if header_len > MAX_HEADER_BYTES || header_len > room {
        return Err(corrupt(format!(
            "header length {header_len} exceeds the file's remaining {room} bytes or the \
             limit of {MAX_HEADER_BYTES}"
        )));
    }
    // Both fit in usize: bounded by the file's length.
    let data_start = 8 + header_len as usize;
    let header = &file[8..data_start];
    if header.first() != Some(&b'{') {
        return Err(corrupt("header is not a JSON object".into()));
    }
    let entries =
        object_entries(header).map_err(|e| corrupt(format!("header is not valid JSON: {e}")))?;
    if let Some(name) = first_duplicate(&entries) {
        return Err(LoadError::DuplicateInHeader {
            path: path.to_owned(),
            name: name.to_owned(),
        });
    }
    let mut tensors = Vec::with_capacity(entries.len());
    let mut entries: Vec<_> = entries
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let data_len = file.len() - data_start;
    for (name, value) in entries {
        let bad = |reason: String| corrupt(format!("tensor `{name}`: {reason}"));
        let info = RawInfo::deserialize(value).map_err(|e| bad(e.to_string()))?;
        let dtype = match info.dtype.as_str() {
            "F32" => StorageDtype::F32,
            "BF16" => StorageDtype::Bf16,
            "F16" => StorageDtype::F16,
            other => {
                return Err(LoadError::UnsupportedDtype {
                    path: path.to_owned(),
                    name,
                    dtype: other.to_owned(),
                })
            }
        };
        let (start, end) = info.data_offsets;
        let len = info
            .shape
            .iter()
            .try_fold(dtype.bytes(), |n, &d| n.checked_mul(d));
        match len {
            Some(len) if start <= end && end - start == len && end <= data_len => {}
            _ => {
                return Err(bad(format!(
                    "data offsets [{start}, {end}] do not hold shape {:?} of {} inside the {} \
                     data bytes",
                    info.shape,
                    dtype.name(),
                    data_len
                )))
            }
        }
        tensors.push(HeaderTensor {
            name,
            dtype,
            shape: info.shape,
            bytes: data_start + start..data_start + end,
        });
    }
    check_tiling(&tensors, data_start, file.len()).map_err(corrupt)?;
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tensors)
}

/// The tensors' byte ranges must follow one another from the start of the data to the end of
/// the file with no gap or overlap, as the format requires (and the `safetensors` crate checks).
fn check_tiling(tensors: &[HeaderTensor], data_start: usize, end: usize) -> Result<(), String> {
    let mut order: Vec<&HeaderTensor> = tensors.iter().collect();
    order.sort_by(|a, b| {
        (a.bytes.start, a.bytes.end, &a.name).cmp(&(b.bytes.start, b.bytes.end, &b.name))
    });
    let mut at = data_start;
    for t in order {
        if t.bytes.start != at {
            return Err(format!(
                "tensor `{}`: data starts at byte {} of the data, where {} was expected (gaps \
                 and overlaps are not allowed)",
                t.name,
                t.bytes.start - data_start,
                at - data_start
            ));
        }
        at = t.bytes.end;
    }
    if at != end {
        return Err(format!(
            "the tensors cover {} data bytes but the file holds {} after the header",
            at - data_start,
            end - data_start
        ));
    }
    Ok(())
}
