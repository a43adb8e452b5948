//! The checkpoint loader from bytes: `config.json`, then either `model.safetensors` or
//! `model.safetensors.index.json` and its shards (`model-0000N-of-0000M.safetensors`), split
//! by `common::SEP`. Whatever the bytes, opening, converting and (for a model that fits the
//! input) running one token must return, never panic, hang or allocate without bound.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use stagformer_ref::{Checkpoint, Model, TensorSource};

fuzz_target!(|data: &[u8]| {
    let parts = common::split(data);
    let dir = common::scratch("checkpoint");
    let _ = std::fs::write(dir.join("config.json"), parts[0]);
    match &parts[1..] {
        [] => {}
        [single] => {
            let _ = std::fs::write(dir.join("model.safetensors"), single);
        }
        [index, shards @ ..] => {
            let _ = std::fs::write(dir.join("model.safetensors.index.json"), index);
            for (i, shard) in shards.iter().enumerate() {
                let name = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards.len());
                let _ = std::fs::write(dir.join(name), shard);
            }
        }
    }
    let _ = stagformer_ref::checkpoint::read_tensors(&dir, |_, _| {});
    if let Ok(ckpt) = Checkpoint::open(&dir) {
        for t in ckpt
            .tensors()
            .map(|t| t.name.to_owned())
            .collect::<Vec<_>>()
        {
            let _ = ckpt.read::<f32>(&t);
            let _ = ckpt.read::<half::bf16>(&t);
        }
        if let Ok(model) = Model::from_checkpoint(&ckpt) {
            let v = model.config.vocab_size as u32;
            let _ = stagformer_ref::score(&model, &[0, 1 % v], stagformer_ref::ScoreMode::Forward);
            let _ = stagformer_ref::score(
                &model,
                &[0, 1 % v, 2 % v],
                stagformer_ref::ScoreMode::Decode { prompt_len: 1 },
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
});
