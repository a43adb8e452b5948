//! Text ↔ token ids: the model directory's `tokenizer.json` when it has one, else bytes
//! (ids 0–255; other ids are shown as `<id>`).

use std::path::Path;

use anyhow::{anyhow, Result};
use tokenizers::Tokenizer;

pub enum TextCodec {
    Tokenizer(Box<Tokenizer>),
    Bytes,
}

impl TextCodec {
    /// The tokenizer of `model_dir`, or bytes when there is none (or no directory).
    pub fn for_model(model_dir: Option<&Path>) -> Result<Self> {
        match model_dir.map(|d| d.join("tokenizer.json")) {
            Some(path) if path.is_file() => {
                let tok =
                    Tokenizer::from_file(&path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
                Ok(TextCodec::Tokenizer(Box::new(tok)))
            }
            _ => Ok(TextCodec::Bytes),
        }
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            TextCodec::Tokenizer(tok) => Ok(tok
                .encode(text, false)
                .map_err(|e| anyhow!("tokenizing the prompt: {e}"))?
                .get_ids()
                .to_vec()),
            TextCodec::Bytes => Ok(text.bytes().map(u32::from).collect()),
        }
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            TextCodec::Tokenizer(tok) => {
                tok.decode(ids, true).map_err(|e| anyhow!("decoding: {e}"))
            }
            TextCodec::Bytes => {
                let mut out = String::new();
                let mut bytes = Vec::new();
                for &id in ids {
                    if id < 256 {
                        bytes.push(id as u8);
                    } else {
                        out.push_str(&String::from_utf8_lossy(&std::mem::take(&mut bytes)));
                        out.push_str(&format!("<{id}>"));
                    }
                }
                out.push_str(&String::from_utf8_lossy(&bytes));
                Ok(out)
            }
        }
    }
}

/// Prints only the text added by each new token: decodes the whole output each time and emits
/// the new suffix once it no longer ends in an incomplete character.
pub struct StreamPrinter {
    ids: Vec<u32>,
    printed: usize,
}

impl StreamPrinter {
    pub fn new() -> Self {
        StreamPrinter {
            ids: Vec::new(),
            printed: 0,
        }
    }

    /// The text to print after `id`.
    pub fn push(&mut self, codec: &TextCodec, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = codec.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}')
            || text.len() < self.printed
            || !text.is_char_boundary(self.printed)
        {
            return Ok(String::new());
        }
        let new = text[self.printed..].to_owned();
        self.printed = text.len();
        Ok(new)
    }

    /// Whatever is left (e.g. a trailing incomplete character).
    pub fn finish(&mut self, codec: &TextCodec) -> Result<String> {
        let text = codec.decode(&self.ids)?;
        Ok(text.get(self.printed..).unwrap_or_default().to_owned())
    }
}
