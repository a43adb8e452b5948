//! The streaming printer against the three tokenizer families: at every step the printed text
//! is a prefix of the decode of all ids, and at the end it is exactly that decode.

use super::test_tokenizers::{self, PROMPTS};
use super::{PieceKind, StreamPrinter, TextCodec};

/// Streams `ids`, checking after every token that what was printed is a prefix of the final
/// decode (the property a reader of the stream relies on: nothing printed is ever wrong).
/// Returns the text printed before `finish`.
fn stream(codec: &TextCodec, ids: &[u32]) -> String {
    let want = codec.decode(ids).unwrap();
    let mut printer = StreamPrinter::new();
    let mut printed = String::new();
    for (i, &id) in ids.iter().enumerate() {
        printed.push_str(&printer.push(codec, id).unwrap());
        assert!(
            want.starts_with(&printed),
            "after {} of {ids:?}: printed {printed:?} is not a prefix of {want:?}",
            i + 1
        );
    }
    let streamed = printed.clone();
    let finish = printer.finish(codec).unwrap();
    assert!(!finish.diverged, "{ids:?}");
    printed.push_str(&finish.rest);
    assert_eq!(printed, want, "{ids:?}");
    streamed
}

fn codec(tok: tokenizers::Tokenizer) -> TextCodec {
    TextCodec::Tokenizer(Box::new(tok))
}

fn id(codec: &TextCodec, token: &str) -> u32 {
    match codec {
        TextCodec::Tokenizer(tok) => tok.token_to_id(token).unwrap_or_else(|| panic!("{token}")),
        TextCodec::Bytes => unreachable!(),
    }
}

#[test]
fn prompts_stream_to_their_decode_in_every_family() {
    for (name, tok) in test_tokenizers::all() {
        let codec = codec(tok);
        for prompt in PROMPTS {
            let ids = codec.encode(prompt, false).unwrap();
            let streamed = stream(&codec, &ids);
            // The stream is live, not all deferred to the end: everything but the held-back
            // last token is out once it is stable.
            if prompt.is_ascii() {
                let all_but_last = codec.decode(&ids[..ids.len() - 1]).unwrap();
                assert_eq!(streamed, all_but_last, "{name}: {prompt:?}");
            }
        }
    }
}

#[test]
fn byte_fallback_prompts_do_split_characters_into_byte_tokens() {
    // Guards the test above: the Llama-2-style tokenizer must actually fall back to bytes for
    // the non-ASCII prompts, or the streamer's hard case would go untested.
    let codec = codec(test_tokenizers::metaspace_byte_fallback());
    for prompt in PROMPTS.iter().filter(|p| !p.is_ascii()) {
        let ids = codec.encode(prompt, false).unwrap();
        assert!(
            ids.iter().any(|&i| codec.piece_kind(i) == PieceKind::Byte),
            "{prompt:?} -> {ids:?}"
        );
    }
}

#[test]
fn a_byte_run_is_held_until_it_ends() {
    let codec = codec(test_tokenizers::metaspace_byte_fallback());
    let b = |byte: u8| id(&codec, &format!("<0x{byte:02X}>"));
    let a = id(&codec, "a");
    let w = id(&codec, "▁w");
    // "AB" is valid on its own, but the 0xE4 that follows makes the whole run U+FFFD: text
    // printed after "AB" would have been wrong.
    let cases = [
        vec![b(0x41), b(0x42), b(0xE4), a],
        vec![b(0x41), b(0x42), b(0xE4), b(0xBD), b(0xA0), a],
        // 你 split over three tokens, then 👩‍💻 (4 + 3 + 4 bytes) as one run.
        vec![w, b(0xE4), b(0xBD), b(0xA0), w],
        [
            0xF0, 0x9F, 0x91, 0xA9, 0xE2, 0x80, 0x8D, 0xF0, 0x9F, 0x92, 0xBB,
        ]
        .map(b)
        .to_vec(),
        vec![b(0xFF), a, b(0xC3), w, b(0xA9)],
    ];
    for ids in &cases {
        stream(&codec, ids);
    }
    let streamed = stream(&codec, &[b(0x41), b(0x42), b(0xE4), b(0xBD), b(0xA0), a, w]);
    assert_eq!(
        streamed, "AB你a",
        "the run's text is printed once a piece ends it"
    );
}

#[test]
fn word_pieces_stream_to_their_decode() {
    let codec = codec(test_tokenizers::word_level());
    let ids: Vec<u32> = [
        "a", "'", "b", "do", "not", ".", "##s", "'m", "n't", "[SEP]", "##é",
    ]
    .iter()
    .map(|t| id(&codec, t))
    .collect();
    stream(&codec, &ids);
}

/// A decoder that rewrites text when the next token arrives: "ab" becomes "X" once "b"
/// follows "a" (`Replace` after `Fuse` acts on the whole text).
fn rewriting() -> TextCodec {
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence;
    use tokenizers::decoders::DecoderWrapper;
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::normalizers::replace::Replace;
    let vocab: ahash::AHashMap<String, u32> = ["[UNK]", "<s>", "a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i as u32))
        .collect();
    let model = WordLevel::builder()
        .vocab(vocab)
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_decoder(Some(Sequence::new(vec![
        DecoderWrapper::Fuse(Fuse::new()),
        DecoderWrapper::Replace(Replace::new("ab", "X").unwrap()),
    ])));
    tok.add_special_tokens(&[tokenizers::AddedToken::from("<s>", true)]);
    codec(tok)
}

#[test]
fn a_rewrite_by_the_next_token_is_never_printed() {
    let codec = rewriting();
    let [s, a, b, c] = ["<s>", "a", "b", "c"].map(|t| id(&codec, t));
    assert_eq!(codec.decode(&[a]).unwrap(), "a");
    assert_eq!(codec.decode(&[a, b]).unwrap(), "X");
    for ids in [
        vec![a, b, c],
        vec![c, a, b],
        // A skipped special token between them hides nothing: the decoder still sees "ab".
        vec![a, s, b, c],
        vec![a, s, s, b],
        vec![c, a, c, a, s, b, a],
    ] {
        stream(&codec, &ids);
    }
    assert_eq!(stream(&codec, &[c, a, b, c, c]), "cXc");
}

#[test]
fn a_special_token_does_not_end_a_byte_run() {
    // The decoder never sees skipped tokens, so "<0x41> <s> <0xE4> a" decodes the run
    // "A" + 0xE4 as one: all U+FFFD.
    let codec = codec(test_tokenizers::metaspace_byte_fallback());
    let b = |byte: u8| id(&codec, &format!("<0x{byte:02X}>"));
    let [s, a] = ["<s>", "a"].map(|t| id(&codec, t));
    assert_eq!(
        codec.decode(&[b(0x41), s, b(0xE4), a]).unwrap(),
        "\u{FFFD}\u{FFFD}a"
    );
    stream(&codec, &[b(0x41), s, b(0xE4), a]);
    stream(&codec, &[b(0x41), s, s, b(0xC3), s, b(0xA9), a]);
}

/// Deterministic pseudo-random ids (an LCG; the sequence just has to vary).
fn random_ids(state: &mut u64, vocab: u32, len: usize) -> Vec<u32> {
    (0..len)
        .map(|_| {
            *state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*state >> 33) % vocab as u64) as u32
        })
        .collect()
}

#[test]
fn random_id_sequences_stream_to_their_decode() {
    // What a random model produces: any id in any order, special tokens included.
    let mut state = 7;
    for (_, tok) in test_tokenizers::all() {
        let vocab = tok.get_vocab_size(true) as u32;
        let codec = codec(tok);
        for trial in 0..200 {
            let ids = random_ids(&mut state, vocab, 1 + trial % 24);
            stream(&codec, &ids);
        }
    }
    // The bytes codec too, ids past 255 included.
    for trial in 0..200 {
        let ids = random_ids(&mut state, 300, 1 + trial % 24);
        stream(&TextCodec::Bytes, &ids);
    }
}

#[test]
fn bytes_codec_streams_split_characters() {
    let ids: Vec<u32> = "é👩\u{200d}💻\r\n".bytes().map(u32::from).collect();
    let streamed = stream(&TextCodec::Bytes, &ids);
    assert!(streamed.starts_with("é👩\u{200d}💻"), "{streamed:?}");
    stream(&TextCodec::Bytes, &[0xC3, 300, 0xA9, 0xE4, 0xBD]);
}
