//! Python arguments read into the libraries' types, each refused with a `ValueError` that
//! names the argument.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use stagformer::ExecMode;
use stagformer_ref::{init, Config, SamplingParams, StorageDtype};

use crate::errors::bad_request;

/// Where a model runs (`device=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The CPU reference.
    Cpu,
    /// The CUDA kernels emulated on the host.
    Emu,
    /// A GPU (device 0).
    Cuda,
    /// A GPU when there is one, else the CPU reference.
    Auto,
}

/// `device=`: "cpu", "emu", "cuda" or "auto".
pub fn device(name: &str) -> PyResult<DeviceChoice> {
    Ok(match name {
        "cpu" => DeviceChoice::Cpu,
        "emu" => DeviceChoice::Emu,
        "cuda" => DeviceChoice::Cuda,
        "auto" => DeviceChoice::Auto,
        _ => {
            return Err(bad_request(format!(
                "device {name:?}: expected \"cpu\", \"emu\", \"cuda\" or \"auto\""
            )))
        }
    })
}

/// `dtype=` of `load` on the kernel devices: `Some(true)` for bf16, `Some(false)` for f32,
/// `None` for "auto" (bf16 on cuda, f32 on emu, as the CLI's `--dtype auto`).
pub fn activation_dtype(name: &str) -> PyResult<Option<bool>> {
    Ok(match name {
        "auto" => None,
        "f32" => Some(false),
        "bf16" => Some(true),
        _ => {
            return Err(bad_request(format!(
                "dtype {name:?}: expected \"f32\", \"bf16\" or \"auto\""
            )))
        }
    })
}

/// `dtype=` of `init`: the storage of the written tensors.
pub fn storage_dtype(name: &str) -> PyResult<StorageDtype> {
    Ok(match name {
        "f32" => StorageDtype::F32,
        "bf16" => StorageDtype::Bf16,
        "f16" => StorageDtype::F16,
        _ => {
            return Err(bad_request(format!(
                "dtype {name:?}: expected \"f32\", \"bf16\" or \"f16\""
            )))
        }
    })
}

/// `mode=` of `Model.decoder`: how the kernel decoder schedules a step's sections.
pub fn exec_mode(name: &str) -> PyResult<ExecMode> {
    Ok(match name {
        "staggered" => ExecMode::Staggered,
        "sequential" => ExecMode::Sequential,
        "batched" => ExecMode::Batched,
        "grouped" => ExecMode::Grouped,
        _ => {
            return Err(bad_request(format!(
                "mode {name:?}: expected \"staggered\", \"sequential\", \"batched\" or \
                 \"grouped\""
            )))
        }
    })
}

/// A preset's config, or a `ValueError` listing the known names (the CLI's message).
pub fn preset_config(name: &str) -> PyResult<Config> {
    init::preset(name).ok_or_else(|| {
        let aliases: Vec<String> = init::PRESET_ALIASES
            .iter()
            .map(|(old, new)| format!("{old} for {new}"))
            .collect();
        bad_request(format!(
            "unknown preset {name:?}; known: {} (also accepted: {})",
            init::PRESETS.join(", "),
            aliases.join(", ")
        ))
    })
}

/// `json.dumps(value)`: Python values as JSON text, for the libraries' JSON readers.
pub fn json_dumps(py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<String> {
    let json = py.import("json")?;
    json.call_method1("dumps", (value,))
        .map_err(|e| bad_request(format!("not JSON-serializable: {e}")))?
        .extract()
}

/// Sampling settings from keyword values, checked by [`SamplingParams::validate`].
pub fn sampling(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> PyResult<SamplingParams> {
    let params = SamplingParams {
        temperature,
        top_k,
        top_p,
        seed,
    };
    params.validate().map_err(crate::errors::to_py)?;
    Ok(params)
}

/// Sampling settings from a dict with the keys `temperature` (default 0), `top_k` (0), `top_p`
/// (1) and `seed` (0); another key is refused.
pub fn sampling_dict(dict: &Bound<'_, PyDict>) -> PyResult<SamplingParams> {
    let mut p = SamplingParams::GREEDY;
    for (key, value) in dict.iter() {
        let key: String = key.extract()?;
        let field = |e: PyErr| bad_request(format!("sampling[{key:?}]: {e}"));
        match key.as_str() {
            "temperature" => p.temperature = value.extract().map_err(field)?,
            "top_k" => p.top_k = value.extract().map_err(field)?,
            "top_p" => p.top_p = value.extract().map_err(field)?,
            "seed" => p.seed = value.extract().map_err(field)?,
            _ => {
                return Err(bad_request(format!(
                    "sampling: unknown key {key:?} (temperature, top_k, top_p, seed)"
                )))
            }
        }
    }
    sampling(p.temperature, p.top_k, p.top_p, p.seed)
}
