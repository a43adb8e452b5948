//! Text ↔ token ids: the model directory's `tokenizer.json` when it has one, else bytes
//! (ids 0–255; other ids are shown as `<id>`).

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use tokenizers::Tokenizer;

pub enum TextCodec {
    Tokenizer(Box<Tokenizer>),
    Bytes,
}

impl TextCodec {
    /// The tokenizer of `model_dir`, or bytes when there is none (or no directory).
    pub fn for_model(model_dir: Option<&Path>) -> Result<Self> {
        let path = model_dir.map(|d| d.join("tokenizer.json"));
        // A tokenizer.json that is there but not a regular file (a directory, a FIFO, which
        // would block, a dangling link) is an error, not a silent fall-back to bytes.
        if let Some(path) = &path {
            if std::fs::symlink_metadata(path).is_ok() {
                match std::fs::metadata(path) {
                    Ok(meta) if meta.is_file() => {}
                    Ok(meta) => bail!(
                        "{}: is {}, not a regular file",
                        path.display(),
                        stagformer_ref::files::kind(&meta)
                    ),
                    Err(e) => bail!("{}: cannot read: {e}", path.display()),
                }
            }
        }
        match path {
            Some(path) if path.is_file() => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
                // Syntax first, so that the tokenizers crate only ever sees a JSON value.
                let value: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| anyhow!("{}: invalid JSON: {e}", path.display()))?;
                let tok = without_panics(|| {
                    serde_json::from_value::<Tokenizer>(value).map_err(|e| anyhow!("{e}"))
                })
                .map_err(|e| anyhow!("{}: not a tokenizer: {e}", path.display()))?;
                Ok(TextCodec::Tokenizer(Box::new(tok)))
            }
            _ => Ok(TextCodec::Bytes),
        }
    }

    /// A warning when the tokenizer knows fewer ids than the model's `vocab_size`: the model
    /// may generate ids the tokenizer has no text for (they are left out of the decoded text).
    /// Not an error: checkpoints commonly pad the embedding past the tokenizer (Qwen2 has
    /// 151936 rows for 151665 tokens). A larger tokenizer is caught per prompt, when an id is
    /// out of the model's range.
    pub fn vocab_warning(&self, vocab_size: usize) -> Option<String> {
        let TextCodec::Tokenizer(tok) = self else {
            return None;
        };
        let known = tok.get_vocab_size(true);
        (known < vocab_size).then(|| {
            format!(
                "warning: tokenizer.json knows {known} token ids but the model's vocab_size is \
                 {vocab_size}: generated ids {known} and above have no text and are left out of \
                 the output (--print-ids shows them)"
            )
        })
    }

    /// `text` as ids. With `special_tokens` the tokenizer's post-processor adds what the model
    /// was trained to see around a sequence (a BOS, `[CLS] … [SEP]`), as Hugging Face's
    /// `encode(text, add_special_tokens=True)` does; bytes have no special tokens.
    pub fn encode(&self, text: &str, special_tokens: bool) -> Result<Vec<u32>> {
        match self {
            TextCodec::Tokenizer(tok) => without_panics(|| {
                Ok(tok
                    .encode(text, special_tokens)
                    .map_err(|e| anyhow!("{e}"))?
                    .get_ids()
                    .to_vec())
            })
            .map_err(|e| anyhow!("tokenizing the prompt: {e}")),
            TextCodec::Bytes => Ok(text.bytes().map(u32::from).collect()),
        }
    }

    /// `ids` as text, special tokens left out (`decode(ids, skip_special_tokens=True)`).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            TextCodec::Tokenizer(tok) => {
                without_panics(|| tok.decode(ids, true).map_err(|e| anyhow!("{e}")))
                    .map_err(|e| anyhow!("decoding: {e}"))
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

    /// What `id` contributes to a decode, as far as the printer needs to know.
    pub fn piece_kind(&self, id: u32) -> PieceKind {
        let TextCodec::Tokenizer(tok) = self else {
            return PieceKind::Text;
        };
        match tok.id_to_token(id) {
            None => PieceKind::Skipped,
            Some(t) if tok.get_added_vocabulary().is_special_token(&t) => PieceKind::Skipped,
            Some(t)
                if t.len() == 6
                    && t.starts_with("<0x")
                    && t.ends_with('>')
                    && t[3..5].bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                PieceKind::Byte
            }
            Some(_) => PieceKind::Text,
        }
    }
}

/// Runs `f`, turning a panic into an error. The `tokenizers` crate panics on some malformed
/// tokenizer.json files (`expect("Helper")` in its decoder deserializer, `expect("Precompiled")`
/// for a bad precompiled normalizer, found by fuzz/ `tokenizer`) and may on odd splits while
/// encoding; a bad file is the user's error, not a crash. The panic hook is silenced while `f`
/// runs, so the panic's own message is not printed beside the error; the CLI is
/// single-threaded where it calls this.
fn without_panics<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    match out {
        Ok(result) => result,
        Err(payload) => {
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            bail!("the tokenizers library failed on it ({why})")
        }
    }
}

/// How a token takes part in a decode with special tokens skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    /// A byte-fallback token (`<0xNN>`). A run of them is decoded as one UTF-8 byte string,
    /// and a single bad byte turns the whole run into U+FFFD, so the run's text is not final
    /// until a text piece ends it.
    Byte,
    /// Left out of the decode (a special token, or an id the tokenizer does not know). It
    /// does not end a byte run: the decoder never sees it.
    Skipped,
    /// Any other piece.
    Text,
}

/// Prints generated text as it is produced such that everything printed is always a prefix of
/// the decode of all ids, and at the end equals it exactly.
///
/// Each token, it decodes all ids (the truth so far) and the ids before a held-back tail (the
/// candidate). The tail is the latest token that shows text, because decoders may rewrite
/// text when the next token arrives (a `Replace` after `Fuse` can turn "a" into "X" once "b"
/// follows), and any byte-fallback run not yet ended. The candidate is printed, as far as not
/// printed yet, when it extends what was printed, is a prefix of the truth, and does not end
/// in U+FFFD (an incomplete character that later bytes may complete). Otherwise the printer
/// waits; `finish` prints what is left. A rewrite reaching back past the latest token is not
/// caught; `finish` reports it.
///
/// Every token decodes all ids so far, twice: quadratic in the output length, which is
/// negligible next to a model step for the lengths a context holds.
pub struct StreamPrinter {
    ids: Vec<u32>,
    /// Index of the latest token that is not skipped in decoding.
    last_shown: Option<usize>,
    /// Start of the byte-fallback run still open at the end of `ids`.
    open_byte_run: Option<usize>,
    printed: String,
}

/// What is left to print at the end.
pub struct Finish {
    /// The text still to print.
    pub rest: String,
    /// Set when the printed text is not a prefix of the final decode (a decoder rewrote text
    /// the printer had judged stable); `rest` then completes the final decode's tail only.
    pub diverged: bool,
}

impl Default for StreamPrinter {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamPrinter {
    pub fn new() -> Self {
        StreamPrinter {
            ids: Vec::new(),
            last_shown: None,
            open_byte_run: None,
            printed: String::new(),
        }
    }

    /// The text to print after `id`.
    pub fn push(&mut self, codec: &TextCodec, id: u32) -> Result<String> {
        let index = self.ids.len();
        self.ids.push(id);
        match codec.piece_kind(id) {
            PieceKind::Skipped => {}
            PieceKind::Byte => {
                self.last_shown = Some(index);
                self.open_byte_run.get_or_insert(index);
            }
            PieceKind::Text => {
                self.last_shown = Some(index);
                self.open_byte_run = None;
            }
        }
        let held = self.last_shown.unwrap_or(0);
        let stable = self.open_byte_run.map_or(held, |start| start.min(held));
        if stable == 0 {
            return Ok(String::new());
        }
        let candidate = codec.decode(&self.ids[..stable])?;
        if candidate.len() <= self.printed.len()
            || !candidate.starts_with(&self.printed)
            || candidate.ends_with('\u{FFFD}')
        {
            return Ok(String::new());
        }
        let truth = codec.decode(&self.ids)?;
        if !truth.starts_with(&candidate) {
            return Ok(String::new());
        }
        let new = candidate[self.printed.len()..].to_owned();
        self.printed = candidate;
        Ok(new)
    }

    /// Whatever is left once no more tokens come.
    pub fn finish(&mut self, codec: &TextCodec) -> Result<Finish> {
        let text = codec.decode(&self.ids)?;
        let finish = match text.strip_prefix(self.printed.as_str()) {
            Some(rest) => Finish {
                rest: rest.to_owned(),
                diverged: false,
            },
            None => {
                let common = common_prefix_len(&text, &self.printed);
                Finish {
                    rest: text[common..].to_owned(),
                    diverged: true,
                }
            }
        };
        self.printed = text;
        Ok(finish)
    }

    /// The generated ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

/// Length in bytes of the longest common prefix of `a` and `b`, on a character boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, ca), cb)| ca != cb)
        .map(|((i, _), _)| i)
        .unwrap_or_else(|| a.len().min(b.len()))
}

#[cfg(test)]
#[path = "../tests/support/tokenizers.rs"]
mod test_tokenizers;

#[cfg(test)]
mod tests;
