//! The config parser: `config.json` bytes read from a file (the size bound and UTF-8 check
//! included), then everything derived from a valid config before weights exist (parameter
//! counts, the tensor list, head sizes, RoPE frequencies), which must not overflow or panic.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use stagformer_ref::Config;

fuzz_target!(|data: &[u8]| {
    let dir = common::scratch("config");
    let path = dir.join("config.json");
    let _ = std::fs::write(&path, data);
    if let Ok(config) = Config::from_file(&path) {
        let _ = stagformer_ref::init::ParamCounts::of(&config).total();
        let _ = (config.q_dim(), config.kv_dim(), config.layers_per_section());
        let _ = config.rope_inv_freq();
        let _ = config.self_window_start(config.max_position_embeddings - 1);
        let _ = config.recurrent_unsupported_reason();
        // Bounded by the validated limits (MAX_TENSORS); cheap enough for small configs.
        if config.stored_layers() <= 64 {
            let _ = stagformer_ref::weights::expected_tensors(&config);
        }
        // The written form is a valid config again.
        let again = Config::from_json(&config.to_json()).expect("to_json output is valid");
        let _ = again;
    }
    let _ = std::fs::remove_dir_all(&dir);
});
