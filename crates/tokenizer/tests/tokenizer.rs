//! Tokenizer behaviour on small generated corpora: round trips, special tokens, persistence,
//! the character tokenizer, token byte counts, streaming decode, and identity of ferrolm's
//! encoder with the Hugging Face `tokenizers` crate.

use std::sync::OnceLock;

use ferrolm_tokenizer::{special, BpeTrainConfig, Tokenizer, TokenizerKind};
use proptest::prelude::*;

/// A deterministic mixed corpus: English-like prose, Rust-like code, numbers, other scripts,
/// odd whitespace. Small enough to train in well under a second.
fn corpus() -> Vec<String> {
    let words = [
        "the", "of", "and", "to", "in", "is", "that", "it", "was", "for", "tokenizer", "model",
        "training", "loss", "fn", "let", "mut", "impl", "struct", "self", "Vec<u32>", "String",
        "héllo", "wörld", "日本語", "テキスト", "данные", "مرحبا", "42", "3.14", "1_000", "don't",
        "we'll", "they're", "I'm", "😀", "e\u{301}", "    ", "\t", "\n", "\n\n", "==", "->", "::",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..400)
        .map(|_| {
            let n = 5 + (next() % 60) as usize;
            let mut doc = String::new();
            for _ in 0..n {
                doc.push_str(words[(next() % words.len() as u64) as usize]);
                doc.push(if next() % 5 == 0 { '\n' } else { ' ' });
            }
            doc
        })
        .collect()
}

fn bpe() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let cfg = BpeTrainConfig { vocab_size: 600, ..Default::default() };
        Tokenizer::train_bpe(corpus().into_iter(), &cfg).unwrap()
    })
}

fn chars() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::train_char(corpus().iter(), &special::defaults()).unwrap())
}

#[test]
fn bpe_trains_with_specials_first_and_fast_encoder() {
    let t = bpe();
    assert_eq!(t.kind(), TokenizerKind::Bpe);
    assert!(t.has_fast_encoder(), "trained tokenizers must use ferrolm's encoder");
    assert!(t.vocab_size() > 256 + special::defaults().len(), "merges were learned");
    assert!(t.vocab_size() <= 600);
    for (i, s) in special::defaults().iter().enumerate() {
        assert_eq!(t.token_id(s), Some(i as u32), "{s} has the i-th id");
        assert!(t.is_special(i as u32));
    }
    assert_eq!(t.eot_id(), 0);
    // Frequent words became single tokens.
    assert_eq!(t.encode(" the").len(), 1);
}

#[test]
fn special_tokens_in_text_are_matched() {
    let t = bpe();
    let eot = t.eot_id();
    let user = t.token_id(special::USER).unwrap();
    let ids = t.encode("hello<|endoftext|><|user|> the");
    assert!(ids.contains(&eot) && ids.contains(&user), "{ids:?}");
    assert_eq!(t.decode(&ids), "hello<|endoftext|><|user|> the");
    // A near miss is plain text.
    let ids = t.encode("<|endoftext|");
    assert!(!ids.contains(&eot));
    assert_eq!(t.decode(&ids), "<|endoftext|");
    // Sentinels are single tokens too.
    assert_eq!(t.encode(&special::sentinel(12)), vec![t.token_id(&special::sentinel(12)).unwrap()]);
}

#[test]
fn fill_in_the_middle_tokens_are_single_special_ids_never_split_or_merged() {
    for t in [bpe(), chars()] {
        let fim = [special::FIM_PREFIX, special::FIM_SUFFIX, special::FIM_MIDDLE].map(|s| t.token_id(s).unwrap_or_else(|| panic!("{s} missing")));
        for (s, &id) in [special::FIM_PREFIX, special::FIM_SUFFIX, special::FIM_MIDDLE].iter().zip(&fim) {
            assert!(t.is_special(id));
            assert_eq!(t.encode(s), vec![id], "{s} alone");
            // glued to code on both sides, with no space: still exactly that one id
            for (before, after) in [("fn", "self"), ("impl", "::"), ("", "\n"), ("let mut", "")] {
                let text = format!("{before}{s}{after}");
                let ids = t.encode(&text);
                assert_eq!(ids.iter().filter(|&&i| i == id).count(), 1, "{text:?} -> {ids:?}");
                assert_eq!(t.decode(&ids), text);
                let (b, a) = (t.encode(before), t.encode(after));
                assert_eq!(ids, [b, vec![id], a].concat(), "the text around a FIM token is encoded on its own: {text:?}");
            }
            assert_eq!(t.token_bytes()[id as usize], 0, "{s} stands for no text");
        }
        // a whole PSM example: three sentinels, each once, in order
        let ids = t.encode("<|fim_prefix|>fn self<|fim_suffix|>::\n<|fim_middle|>    the\n");
        let pos: Vec<usize> = fim.iter().map(|id| ids.iter().position(|i| i == id).unwrap()).collect();
        assert!(pos[0] < pos[1] && pos[1] < pos[2], "{ids:?}");
        // a near miss is plain text
        assert!(!t.encode("<|fim_middle|").iter().any(|i| fim.contains(i)));
    }
}

#[test]
fn token_bytes_sum_to_text_length_and_specials_count_zero() {
    let t = bpe();
    let tb = t.token_bytes();
    assert_eq!(tb.len(), t.vocab_size());
    for text in corpus().iter().take(50) {
        let ids = t.encode(text);
        let sum: u64 = ids.iter().map(|&i| tb[i as usize] as u64).sum();
        assert_eq!(sum, text.len() as u64);
    }
    assert_eq!(tb[t.eot_id() as usize], 0);
    let c = chars();
    let ctb = c.token_bytes();
    let text = &corpus()[3];
    let sum: u64 = c.encode(text).iter().map(|&i| ctb[i as usize] as u64).sum();
    assert_eq!(sum, text.len() as u64);
}

#[test]
fn save_and_load_give_the_same_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    for t in [bpe(), chars()] {
        let p = dir.path().join("tokenizer.json");
        t.save(&p).unwrap();
        let u = Tokenizer::from_file(&p).unwrap();
        assert_eq!(u.kind(), t.kind());
        assert_eq!(u.vocab_size(), t.vocab_size());
        assert_eq!(u.token_bytes(), t.token_bytes());
        assert_eq!(u.to_json_string().unwrap(), t.to_json_string().unwrap());
        for text in corpus().iter().take(30) {
            assert_eq!(u.encode(text), t.encode(text));
        }
    }
}

#[test]
fn missing_or_corrupt_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nope.json");
    let e = format!("{:#}", Tokenizer::from_file(&p).unwrap_err());
    assert!(e.contains("nope.json"), "{e}");
    let full = bpe().to_json_string().unwrap();
    let cut = (full.len() / 2..).find(|&i| full.is_char_boundary(i)).unwrap();
    std::fs::write(&p, &full[..cut]).unwrap();
    let e = format!("{:#}", Tokenizer::from_file(&p).unwrap_err());
    assert!(e.contains("nope.json") && e.contains("JSON"), "{e}");
    std::fs::write(&p, r#"{"model": {"type": "Unigram"}}"#).unwrap();
    let e = format!("{:#}", Tokenizer::from_file(&p).unwrap_err());
    assert!(e.contains("nope.json"), "{e}");
}

#[test]
fn char_tokenizer_is_nanogpt_style() {
    let t = Tokenizer::train_char(["hello world\n"].iter(), &[]).unwrap();
    assert_eq!(t.kind(), TokenizerKind::Char);
    assert!(t.has_fast_encoder());
    // sorted(set(text)): '\n', ' ', 'd', 'e', 'h', 'l', 'o', 'r', 'w', then <|unk|>
    assert_eq!(t.vocab_size(), 10);
    assert_eq!(t.encode("hello"), vec![4, 3, 5, 5, 6]);
    assert_eq!(t.encode("\n "), vec![0, 1]);
    assert_eq!(t.decode(&[4, 3, 5, 5, 6]), "hello");
    // Unseen characters become <|unk|> (nothing is dropped).
    let unk = t.token_id(special::UNK).unwrap();
    assert_eq!(unk, 9);
    assert_eq!(t.encode("hax"), vec![4, unk, unk]);
    assert!(t.try_eot_id().is_none());
}

#[test]
fn char_tokenizer_round_trips_and_matches_hf() {
    let t = chars();
    for text in corpus().iter().take(100) {
        let ids = t.encode(text);
        assert_eq!(ids.len(), text.chars().count());
        assert_eq!(t.decode(&ids), *text);
        assert_eq!(ids, t.encode_reference(text));
    }
    let with_special = "the<|endoftext|>model<|unk|>z";
    assert_eq!(t.encode(with_special), t.encode_reference(with_special));
    assert_eq!(t.decode(&t.encode("the<|end|>")), "the<|end|>");
}

#[test]
fn decode_stream_matches_decode_even_inside_characters() {
    let t = bpe();
    // Rare multi-byte characters are split into byte tokens, so streaming must hold them back.
    let text = "a 😀 б 日本 \u{10FFFF} e\u{301} <|endoftext|> done";
    let ids = t.encode(text);
    let mut stream = t.decode_stream();
    let mut got = String::new();
    let mut held_back = false;
    for &id in &ids {
        let piece = stream.push(id);
        held_back |= stream.pending_bytes() > 0;
        got.push_str(&piece);
    }
    got.push_str(&stream.finish());
    assert_eq!(got, text);
    assert!(held_back, "some character spanned several tokens");
    // Invalid sequences give U+FFFD exactly as decode does.
    let byte = |b: u8| t.token_id(&ferrolm_tokenizer::bytelevel::bytes_to_token(&[b])).unwrap();
    let ids = [byte(0xF0), byte(0x9F), byte(b'a'), byte(0xE6), byte(0x97)];
    let mut stream = t.decode_stream();
    let mut got: String = ids.iter().map(|&i| stream.push(i)).collect();
    got.push_str(&stream.finish());
    assert_eq!(got, t.decode(&ids));
    assert_eq!(got, "\u{FFFD}a\u{FFFD}");
}

#[test]
fn encode_batch_equals_encode() {
    let t = bpe();
    let docs = corpus();
    let refs: Vec<&str> = docs.iter().map(|s| s.as_str()).collect();
    let batch = t.encode_batch(&refs);
    for (d, ids) in refs.iter().zip(&batch) {
        assert_eq!(&t.encode(d), ids);
    }
}

#[test]
fn fast_encoder_matches_hf_on_the_corpus() {
    let t = bpe();
    for text in corpus() {
        assert_eq!(t.encode(&text), t.encode_reference(&text), "{text:?}");
    }
}

/// Text from pieces that exercise every pre-tokenizer rule and the special tokens.
fn tricky_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("'s".to_string()), Just("'re".to_string()), Just("'ll".to_string()), Just("'".to_string()),
        Just(" ".to_string()), Just("  ".to_string()), Just("\n".to_string()), Just("\t ".to_string()),
        Just("\u{a0}".to_string()), Just("\u{3000}".to_string()), Just("<|endoftext|>".to_string()),
        Just("<|user|>".to_string()), Just("the".to_string()), Just(" model".to_string()),
        Just("123".to_string()), Just("٣".to_string()), Just("Ⅻ".to_string()), Just("日本".to_string()),
        Just("😀".to_string()), Just("e\u{301}".to_string()), Just("==".to_string()), Just("{}".to_string()),
        "[a-z]{1,6}", "\\PC{1,4}", any::<char>().prop_map(|c| c.to_string()),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn byte_level_round_trip_on_arbitrary_utf8(s in any::<String>()) {
        let t = bpe();
        prop_assert_eq!(t.decode(&t.encode(&s)), s);
    }

    #[test]
    fn fast_encoder_matches_hf_on_arbitrary_text(s in any::<String>()) {
        let t = bpe();
        prop_assert_eq!(t.encode(&s), t.encode_reference(&s));
    }

    #[test]
    fn fast_encoder_matches_hf_on_tricky_text(s in tricky_text()) {
        let t = bpe();
        prop_assert_eq!(t.encode(&s), t.encode_reference(&s));
        prop_assert_eq!(t.decode(&t.encode(&s)), s.clone());
        let c = chars();
        prop_assert_eq!(c.encode(&s), c.encode_reference(&s));
    }

    #[test]
    fn decode_stream_concatenation_equals_decode(ids in prop::collection::vec(0u32..700, 0..40)) {
        let t = bpe();
        let mut stream = t.decode_stream();
        let mut got: String = ids.iter().map(|&i| stream.push(i)).collect();
        got.push_str(&stream.finish());
        prop_assert_eq!(got, t.decode(&ids));
    }
}

#[test]
fn tokenizer_and_shards_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<ferrolm_tokenizer::TokenShards>();
    assert_send_sync::<ferrolm_tokenizer::ChatTemplate>();
}

#[test]
fn bpe_training_is_deterministic() {
    let cfg = BpeTrainConfig { vocab_size: 600, ..Default::default() };
    for _ in 0..3 {
        let again = Tokenizer::train_bpe(corpus().into_iter(), &cfg).unwrap();
        assert_eq!(again.to_json_string().unwrap(), bpe().to_json_string().unwrap());
    }
}

#[test]
fn one_config_section_trains_either_kind() {
    use ferrolm_tokenizer::TokenizerConfig;
    let cfg: TokenizerConfig = serde_json::from_str(r#"{"kind": "char", "special_tokens": []}"#).unwrap();
    let t = Tokenizer::train(["ab"].into_iter(), &cfg).unwrap();
    assert_eq!((t.kind(), t.vocab_size()), (TokenizerKind::Char, 3));
    let cfg = TokenizerConfig { vocab_size: 300, ..Default::default() };
    let t = Tokenizer::train(corpus().into_iter(), &cfg).unwrap();
    assert_eq!(t.kind(), TokenizerKind::Bpe);
    assert_eq!(t.vocab_size(), 300);
    assert!(serde_json::from_str::<TokenizerConfig>(r#"{"vocab": 3}"#).is_err(), "typos are errors");
}

#[test]
fn a_tokenizer_json_with_sparse_ids_is_refused_before_allocating() {
    // Issue 18. Before the fix: id tables were sized by the highest id, so one token with
    // id 4e9 asked for ~80 GB (abort).
    let tok = ferrolm_tokenizer::Tokenizer::train_char(["abc"].into_iter(), &[]).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&tok.to_json_string().unwrap()).unwrap();
    let vocab = v["model"]["vocab"].as_object_mut().unwrap();
    let key = vocab.keys().find(|k| k.as_str() == "b").unwrap().clone();
    vocab.insert(key, 4_000_000_000u64.into());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    std::fs::write(&p, v.to_string()).unwrap();
    let Err(e) = ferrolm_tokenizer::Tokenizer::from_file(&p) else { panic!("must be refused") };
    let e = format!("{e:#}");
    assert!(e.contains("tokenizer.json") && e.contains("not dense"), "{e}");
}

#[test]
fn a_char_tokenizer_whose_unk_token_is_not_in_its_vocabulary_is_refused() {
    // Issue 18, found by fuzzing: loaded fine, then the first unknown character made
    // `encode` panic ("WordLevel error: Missing [UNK] token from the vocabulary").
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/tokenizer_json/char-unk-token-not-in-vocab.json");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    std::fs::copy(&src, &p).unwrap();
    let Err(e) = ferrolm_tokenizer::Tokenizer::from_file(&p) else { panic!("must be refused") };
    let e = format!("{e:#}");
    assert!(e.contains("tokenizer.json") && e.contains("unk_token"), "{e}");
}
