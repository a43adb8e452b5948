//! The `stagformer` Python module: StagFormer checkpoints loaded, scored, generated from and
//! batch-decoded from Python, on the CPU reference (`device="cpu"`) or the kernel decoder
//! (`"emu"`: the CUDA kernels emulated on the host; `"cuda"`: a GPU).
//!
//! Built with maturin (`crates/stagformer-py/pyproject.toml`) into an abi3 wheel for CPython
//! ≥ 3.9. Everything here is glue over the libraries: `stagformer_ref` (the reference model,
//! its batch decoder, sampling and `init`) and `stagformer` (the kernel decoder). Errors become
//! Python exceptions ([`errors`]); long calls release the GIL.

#![warn(missing_docs)]

pub mod args;
pub mod decoder;
pub mod errors;
pub mod model;

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{bad_request, to_py};

/// Writes a checkpoint with seeded random weights to `out_dir` (created if missing; its
/// config.json and safetensors files are replaced), as `stagformer init` does: the shape is
/// the built-in `preset` or the `config` dict (config.json keys), never both.
///
/// `seed` draws the weights, `dtype` ("f32", "bf16" or "f16") is their storage, `shards` the
/// number of safetensors files. Returns nothing; load the result with `stagformer.load`.
#[pyfunction]
#[pyo3(signature = (out_dir, preset=None, config=None, seed=0, dtype="f32", shards=1))]
fn init(
    py: Python<'_>,
    out_dir: PathBuf,
    preset: Option<&str>,
    config: Option<&Bound<'_, PyDict>>,
    seed: u64,
    dtype: &str,
    shards: usize,
) -> PyResult<()> {
    let config = match (preset, config) {
        (Some(_), Some(_)) => return Err(bad_request("give preset or config, not both")),
        (Some(name), None) => args::preset_config(name)?,
        (None, Some(dict)) => {
            let text = args::json_dumps(py, dict.as_any())?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| bad_request(format!("config: not JSON: {e}")))?;
            stagformer_ref::Config::from_json(&value).map_err(to_py)?
        }
        (None, None) => return Err(bad_request("give preset=NAME or config=dict")),
    };
    let dtype = args::storage_dtype(dtype)?;
    if shards == 0 {
        return Err(bad_request("shards must be at least 1"));
    }
    py.allow_threads(|| {
        stagformer_ref::init::write_random_checkpoint(&config, seed, dtype, shards, &out_dir)
    })
    .map_err(|e| errors::with_context(format!("writing {}", out_dir.display()), e))
}

/// StagFormer checkpoints from Python: `load(path, device, dtype)` returns a `Model` that
/// scores (numpy float32 logits), generates and makes batch `Decoder`s; `init(out_dir, ...)`
/// writes a checkpoint with random weights. Bad requests raise `ValueError`, other failures
/// `stagformer.Error`.
#[pymodule]
#[pyo3(name = "stagformer")]
fn stagformer_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("Error", m.py().get_type::<errors::Error>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(model::load, m)?)?;
    m.add_function(wrap_pyfunction!(init, m)?)?;
    m.add_class::<model::Model>()?;
    m.add_class::<decoder::Decoder>()?;
    Ok(())
}
