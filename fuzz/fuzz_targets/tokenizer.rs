//! The tokenizer and prompt path of `stagformer generate`: a `tokenizer.json` (bytes before
//! `common::SEP`; none when the input has no separator, which selects the byte codec) and a
//! prompt (the bytes after, as UTF-8 lossy). The prompt is encoded, checked against a model's
//! vocabulary and positions, and the ids streamed back to text; nothing may panic.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use stagformer_cli::text::{StreamPrinter, TextCodec};

fuzz_target!(|data: &[u8]| {
    let parts = common::split(data);
    let dir = common::scratch("tokenizer");
    let prompt = if parts.len() >= 2 {
        let _ = std::fs::write(dir.join("tokenizer.json"), parts[0]);
        parts[1]
    } else {
        parts[0]
    };
    let prompt = String::from_utf8_lossy(prompt);
    if let Ok(codec) = TextCodec::for_model(Some(&dir)) {
        let config = stagformer_ref::init::preset("tiny").expect("tiny preset");
        let _ = codec.vocab_warning(config.vocab_size);
        for special in [true, false] {
            let Ok(ids) = codec.encode(&prompt, special) else {
                continue;
            };
            let _ = stagformer_ref::model::check_tokens(&config, &ids, 64);
            let _ = codec.decode(&ids);
            let mut printer = StreamPrinter::new();
            for &id in &ids {
                let _ = printer.push(&codec, id);
            }
            let _ = printer.finish(&codec);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
});
