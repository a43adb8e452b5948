//! Small tokenizers of the three families the text path must handle, built with the
//! `tokenizers` crate so that no test needs a download: a GPT-2-style byte-level BPE, a
//! Llama-2-style BPE (Metaspace, byte fallback to `<0xNN>` tokens) and a BERT-style word-level
//! model with the WordPiece decoder. Shared by the CLI tests and the streamer's unit tests.

#![allow(dead_code)]

use ahash::AHashMap;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

/// Prompts every family must round-trip: accents, CJK, an emoji with a zero-width joiner,
/// CRLF.
pub const PROMPTS: &[&str] = &[
    "hello the world",
    "héllo wörld, ça va?",
    "你好，世界",
    "coder 👩\u{200d}💻 at work",
    "line one\r\nline two",
];

fn bpe(vocab: Vec<String>, merges: &[(&str, &str)], byte_fallback: bool) -> BPE {
    let vocab: AHashMap<String, u32> = vocab
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    let merges = merges
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(byte_fallback);
    if byte_fallback {
        builder = builder.unk_token("<unk>".into());
    }
    builder.build().expect("test BPE")
}

/// Adds `pieces` (and every merge's result) after `vocab`, without duplicates.
fn extend(vocab: &mut Vec<String>, merges: &[(&str, &str)], pieces: &[&str]) {
    let merged = merges.iter().map(|(a, b)| format!("{a}{b}"));
    for piece in pieces.iter().map(|p| p.to_string()).chain(merged) {
        if !vocab.contains(&piece) {
            vocab.push(piece);
        }
    }
}

fn bos_template(bos: &str, id: u32) -> TemplateProcessing {
    TemplateProcessing::builder()
        .try_single(format!("{bos} $A"))
        .expect("template")
        .special_tokens(vec![(bos, id)])
        .build()
        .expect("template")
}

/// GPT-2 style: every byte is a token (as its ByteLevel character), a few merges, `<s>` added
/// in front by a TemplateProcessing post-processor.
pub fn byte_level_bpe() -> Tokenizer {
    let mut vocab = vec!["<s>".to_string(), "</s>".to_string()];
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    vocab.extend(alphabet.iter().map(|c| c.to_string()));
    // "Ã©" is é (C3 A9) and "ä½" the first two bytes of 你: merges inside a character, so that
    // a token ends in the middle of one.
    let merges = [
        ("h", "e"),
        ("l", "l"),
        ("Ġ", "t"),
        ("Ġt", "he"),
        ("Ġ", "w"),
        ("o", "r"),
        ("Ã", "©"),
        ("ä", "½"),
        ("ð", "Ł"),
    ];
    extend(&mut vocab, &merges, &[]);
    let mut tok = Tokenizer::new(bpe(vocab, &merges, false));
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_decoder(Some(ByteLevel::default()))
        .with_post_processor(Some(bos_template("<s>", 0)));
    tok.add_special_tokens(&[
        AddedToken::from("<s>", true),
        AddedToken::from("</s>", true),
    ]);
    tok
}

/// Llama-2 style: `<unk> <s> </s>`, the 256 `<0xNN>` byte tokens, then pieces; characters
/// outside the vocabulary fall back to their UTF-8 bytes. The decoder is Llama-2's: ▁ → space,
/// ByteFallback, Fuse, strip one leading space.
pub fn metaspace_byte_fallback() -> Tokenizer {
    let mut vocab: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    vocab.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    let merges = [
        ("▁", "t"),
        ("h", "e"),
        ("▁t", "he"),
        ("l", "l"),
        ("▁", "h"),
        ("▁", "w"),
        ("o", "r"),
    ];
    let letters: Vec<String> = ('a'..='z').map(String::from).collect();
    let mut pieces: Vec<&str> = letters.iter().map(String::as_str).collect();
    pieces.extend(["▁", "é", ",", "?", "世"]);
    extend(&mut vocab, &merges, &pieces);
    let mut tok = Tokenizer::new(bpe(vocab, &merges, true));
    let decoder = Sequence::new(vec![
        DecoderWrapper::Replace(Replace::new("▁", " ").expect("replace")),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
        DecoderWrapper::Strip(Strip::new(' ', 1, 0)),
    ]);
    tok.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::First, false)))
        .with_decoder(Some(decoder))
        .with_post_processor(Some(bos_template("<s>", 1)));
    tok.add_special_tokens(&[
        AddedToken::from("<unk>", true),
        AddedToken::from("<s>", true),
        AddedToken::from("</s>", true),
    ]);
    tok
}

/// BERT style: whole words, `[CLS] $A [SEP]`, and the WordPiece decoder (joins with spaces,
/// glues `##` pieces, and its cleanup rewrites " ' " to "'", " ." to "." and the like).
pub fn word_level() -> Tokenizer {
    let words = [
        "[UNK]", "[CLS]", "[SEP]", "hello", "the", "world", "héllo", "wörld", "ça", "va", "你好",
        "世界", "coder", "at", "work", "line", "one", "two", "'", "s", "do", "not", "n't", "'m",
        ".", ",", "?", "!", "##s", "##ing", "##é", "a", "b",
    ];
    let vocab: AHashMap<String, u32> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i as u32))
        .collect();
    let model = WordLevel::builder()
        .vocab(vocab)
        .unk_token("[UNK]".into())
        .build()
        .expect("test WordLevel");
    let mut tok = Tokenizer::new(model);
    let template = TemplateProcessing::builder()
        .try_single("[CLS] $A [SEP]")
        .expect("template")
        .special_tokens(vec![("[CLS]", 1), ("[SEP]", 2)])
        .build()
        .expect("template");
    tok.with_pre_tokenizer(Some(Whitespace))
        .with_decoder(Some(WordPieceDecoder::new("##".into(), true)))
        .with_post_processor(Some(template));
    tok.add_special_tokens(&[
        AddedToken::from("[UNK]", true),
        AddedToken::from("[CLS]", true),
        AddedToken::from("[SEP]", true),
    ]);
    tok
}

/// The three families, by name.
pub fn all() -> Vec<(&'static str, Tokenizer)> {
    vec![
        ("byte-level", byte_level_bpe()),
        ("byte-fallback", metaspace_byte_fallback()),
        ("word-level", word_level()),
    ]
}
