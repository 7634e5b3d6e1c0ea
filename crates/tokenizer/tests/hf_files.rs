//! Files of Hugging Face checkpoints (the transformers-written fixtures of ferrolm-model):
//! tokenizer.json ids as the reference tokenizer gave them, pretrained-style pre-tokenizer
//! sequences, and tokenizer_config.json chat templates rendered as transformers renders them.

use std::path::{Path, PathBuf};

use ferrolm_tokenizer::{HfTokenizerConfig, Message, Role, Tokenizer, TokenizerKind};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/hf").join(name)
}

fn reference(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("reference.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn fixture_tokenizers_give_transformers_ids() {
    for name in ["qwen2_tied", "gpt2_tied"] {
        let tok = Tokenizer::from_file(&fixture(name).join("tokenizer.json")).unwrap();
        let r = reference(name);
        assert_eq!(tok.encode(r["text"].as_str().unwrap()), ids(&r["text_ids"]), "{name}");
        assert_eq!(tok.decode(&ids(&r["text_ids"])), r["text"].as_str().unwrap());
    }
}

/// Llama 3 / Qwen2 / SmolLM2 tokenizers split with a regex, then apply ByteLevel without
/// its own regex: the same byte-level BPE.
#[test]
fn a_split_then_byte_level_sequence_is_read_as_byte_level_bpe() {
    let text = std::fs::read_to_string(fixture("qwen2_tied").join("tokenizer.json")).unwrap();
    let mut json: Value = serde_json::from_str(&text).unwrap();
    let gpt2_regex = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
    json["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": gpt2_regex}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]});
    let tok = Tokenizer::from_json_str(&json.to_string()).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::Bpe);
    let r = reference("qwen2_tied");
    assert_eq!(tok.encode(r["text"].as_str().unwrap()), ids(&r["text_ids"]));
    // a sequence without the ByteLevel step is still refused
    json["pre_tokenizer"]["pretokenizers"].as_array_mut().unwrap().pop();
    assert!(Tokenizer::from_json_str(&json.to_string()).is_err());
}

#[test]
fn fixture_chat_template_renders_as_transformers_does() {
    let r = reference("qwen2_tied");
    let cfg = HfTokenizerConfig::load_from_dir(&fixture("qwen2_tied")).unwrap().unwrap();
    let msgs: Vec<Message> = r["chat"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let role: Role = serde_json::from_value(m["role"].clone()).unwrap();
            Message::new(role, m["content"].as_str().unwrap())
        })
        .collect();
    assert_eq!(cfg.render_chat(&msgs, true).unwrap(), r["chat"]["rendered"].as_str().unwrap());
    assert_eq!(cfg.eos_token.as_deref(), Some("<|im_end|>"));
    assert!(HfTokenizerConfig::load_from_dir(&fixture("gpt2_tied")).unwrap().is_none());
}

/// chat, SFT and DPO read the template beside tokenizer.json: a Hugging Face folder's Jinja
/// template arrives as the marker template that renders the same text, and checks out
/// against its tokenizer.
#[test]
fn a_hf_folder_chat_template_is_loaded_for_chat_and_training() {
    let dir = fixture("qwen2_tied");
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let tpl = ferrolm_tokenizer::ChatTemplate::load_next_to(&dir.join("tokenizer.json")).unwrap();
    tpl.check(&tok).unwrap();
    let r = reference("qwen2_tied");
    let msgs = [Message::system("Be brief."), Message::user("Hi!")];
    assert_eq!(tpl.render(&msgs, true), r["chat"]["rendered"].as_str().unwrap());
    assert_eq!(tpl.stop_token(&tok), tok.token_id("<|im_end|>"));
    assert_eq!(tok.decode(&tpl.encode(&tok, &msgs, true)), r["chat"]["rendered"].as_str().unwrap());
}

/// BERT's WordPiece tokenizer.json (normalizer, BERT pre-tokenizer, `##` pieces, `[UNK]`,
/// the `[CLS]`/`[SEP]` template): the ids transformers' BertTokenizer gave for each text.
#[test]
fn bert_wordpiece_gives_transformers_ids_with_cls_and_sep() {
    let tok = Tokenizer::from_file(&fixture("bert_tiny").join("tokenizer.json")).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::WordPiece);
    let r = reference("bert_tiny");
    let (cls, sep) = (tok.token_id("[CLS]").unwrap(), tok.token_id("[SEP]").unwrap());
    assert_eq!(tok.special_frame().unwrap(), (vec![cls], vec![sep]));
    for t in r["texts"].as_array().unwrap() {
        let (text, want) = (t["text"].as_str().unwrap(), ids(&t["input_ids"]));
        assert_eq!(tok.encode_with_special_tokens(text).unwrap(), want, "{text:?}");
        // the bare ids are the framed ones without [CLS] and [SEP]
        assert_eq!(tok.encode(text), want[1..want.len() - 1], "{text:?}");
        let pieces: Vec<String> = want.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
        let tokens: Vec<String> = t["tokens"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect();
        assert_eq!(pieces, tokens);
    }
    // `[MASK]` in the text is the mask token; accents and case are normalised; unknown
    // words are [UNK]
    assert!(tok.encode("the [MASK] is").contains(&tok.token_id("[MASK]").unwrap()));
    assert!(tok.encode("☃").contains(&tok.token_id("[UNK]").unwrap()));
    // a sentence pair: [CLS] A [SEP] B [SEP] with token types 0 then 1
    let pair = &r["pair"];
    let texts: Vec<&str> = pair["texts"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    let enc = tok.hf().encode((texts[0], texts[1]), true).unwrap();
    assert_eq!(enc.get_ids(), ids(&pair["input_ids"]));
    assert_eq!(enc.get_type_ids(), ids(&pair["token_type_ids"]));
    // decoding joins the pieces back into words
    assert_eq!(tok.decode(&tok.encode("Foxes jumped over lazier thinking dogs")), "foxes jumped over lazier thinking dogs");
    assert_eq!(tok.decode(&[tok.token_id("fox").unwrap(), 100_000]), "fox \u{FFFD}");
    // special tokens of tokenizer_config.json, the mask token included
    let cfg = HfTokenizerConfig::load_from_dir(&fixture("bert_tiny")).unwrap().unwrap();
    assert_eq!(cfg.mask_token.as_deref(), Some("[MASK]"));
    // a WordPiece file whose unk token is not in its vocabulary is refused, not a panic later
    let text = std::fs::read_to_string(fixture("bert_tiny").join("tokenizer.json")).unwrap();
    let mut json: Value = serde_json::from_str(&text).unwrap();
    json["model"]["unk_token"] = "[NOPE]".into();
    let e = Tokenizer::from_json_str(&json.to_string()).map(|_| ()).unwrap_err();
    assert!(format!("{e:#}").contains("[NOPE]"), "{e:#}");
    // the tokenizer.json written back reads as the same WordPiece tokenizer
    let again = Tokenizer::from_json_str(&tok.to_json_string().unwrap()).unwrap();
    assert_eq!(again.encode_with_special_tokens("the lazy dog").unwrap(), tok.encode_with_special_tokens("the lazy dog").unwrap());
}

#[test]
fn unsupported_tokenizer_models_are_named_in_the_error() {
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true},
        "post_processor": null, "decoder": null,
        "model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["a", -1.0]], "byte_fallback": false}
    });
    let e = Tokenizer::from_json_str(&json.to_string()).map(|_| ()).unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("Unigram") && e.contains("WordPiece"), "{e}");
}

// ---- SentencePiece BPE (Llama 2, Mistral v0.1, TinyLlama, CodeLlama) ----

/// The `llama2_spm` fixture's tokenizer files: tokenizer.json in the legacy form Llama 2
/// repos hold (normalizer Prepend + Replace) and tokenizer_metaspace.json, the newer form
/// (Metaspace pre-tokenizer). Each with the field of reference.json holding its ids.
fn spm_files() -> [(Tokenizer, &'static str); 2] {
    let dir = fixture("llama2_spm");
    [
        (Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap(), "ids"),
        (Tokenizer::from_file(&dir.join("tokenizer_metaspace.json")).unwrap(), "metaspace_ids"),
    ]
}

fn spm_reference() -> Value {
    reference("llama2_spm")["spm"].clone()
}

/// Every text's ids equal the `tokenizers` library's on the same file (transformers 4's fast
/// tokenizer; for plain text also sentencepiece's own), decode equals its decode, and the
/// pieces of a streaming decode join to the whole decode.
#[test]
fn sentencepiece_bpe_gives_the_reference_ids_and_decodes_on_tricky_texts() {
    let r = spm_reference();
    let texts = r["texts"].as_array().unwrap();
    for (tok, field) in spm_files() {
        assert_eq!(tok.kind(), TokenizerKind::SentencePiece);
        assert_eq!(tok.strip_leading_spaces(), 1);
        assert!(!tok.has_fast_encoder());
        let (mut same_transformers, mut same_sentencepiece) = (0, 0);
        for t in texts {
            let text = t["text"].as_str().unwrap();
            let want = ids(&t[field]);
            let got = tok.encode(text);
            assert_eq!(got, want, "{field}: {text:?}");
            same_transformers += usize::from(got == ids(&t["transformers_ids"]));
            same_sentencepiece += usize::from(got == ids(&t["sentencepiece_ids"]));
            if field == "ids" {
                assert_eq!(tok.encode_with_special_tokens(text).unwrap(), ids(&t["framed"]), "{text:?}");
                assert_eq!(tok.decode(&want), t["decoded"].as_str().unwrap(), "{text:?}");
                assert_eq!(tok.decode(&ids(&t["framed"])), t["decoded_framed"].as_str().unwrap(), "{text:?}");
                let pieces: Vec<String> = want.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
                let names: Vec<&str> = t["pieces"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
                assert_eq!(pieces, names, "{text:?}");
            }
            // decode is the tokenizers crate's decode of the same ids; text without
            // special-token strings comes back whole (the Metaspace form puts no `▁` before a
            // text that starts with a space, so its decode loses that space, as HF's does)
            assert_eq!(tok.decode(&got), tok.hf().decode(&got, false).unwrap(), "{field}: {text:?}");
            if !text.contains("<s>") && (field == "ids" || !text.starts_with(' ')) {
                assert_eq!(tok.decode(&got), text, "{field}: {text:?}");
            }
            for framed in [got.clone(), tok.encode_with_special_tokens(text).unwrap()] {
                let mut stream = tok.decode_stream();
                let mut joined: String = framed.iter().map(|&i| stream.push(i)).collect();
                joined.push_str(&stream.finish());
                assert_eq!(joined, tok.decode(&framed), "{field}: stream of {text:?}");
            }
        }
        eprintln!(
            "{field}: {n} texts equal the tokenizers library's ids; {same_transformers} equal transformers {}'s AutoTokenizer, {same_sentencepiece} sentencepiece's",
            reference("llama2_spm")["transformers"],
            n = texts.len()
        );
    }
    // odd id lists: a byte-token space first, a lone `▁`, special tokens between pieces
    let (tok, _) = &spm_files()[0];
    for d in r["decodes"].as_array().unwrap() {
        assert_eq!(tok.decode(&ids(&d["ids"])), d["decoded"].as_str().unwrap(), "{d}");
    }
}

/// Characters outside the vocabulary are byte tokens: each id's bytes are that byte, a
/// streaming decode holds them until the character is complete, and `▁` is a space.
#[test]
fn sentencepiece_byte_fallback_tokens_are_bytes_and_stream_whole_characters() {
    let (tok, _) = &spm_files()[0];
    let crab = tok.encode("🦀");
    // `▁` then one token per byte of the crab's four
    assert_eq!(crab.len(), 5, "{crab:?}");
    assert_eq!(tok.id_to_bytes(crab[0]).unwrap(), b" ");
    let bytes: Vec<u8> = crab[1..].iter().flat_map(|&i| tok.id_to_bytes(i).unwrap().to_vec()).collect();
    assert_eq!(bytes, "🦀".as_bytes());
    for (&id, &b) in crab[1..].iter().zip("🦀".as_bytes()) {
        assert_eq!(tok.id_to_token(id).unwrap(), format!("<0x{b:02X}>"));
    }
    let mut stream = tok.decode_stream();
    let out: Vec<String> = crab.iter().map(|&i| stream.push(i)).collect();
    assert_eq!(out, ["", "", "", "", "🦀"]);
    // a continuation keeps the space before its first word; a whole text does not
    let hello = tok.encode("Hello");
    let mut cont = tok.continuation_stream();
    let text: String = hello.iter().map(|&i| cont.push(i)).collect();
    assert_eq!(text, " Hello");
    assert_eq!(tok.decode(&hello), "Hello");
    // bits per byte: a piece counts its text's bytes (`▁` one), a byte token one, special tokens none
    let tb = tok.token_bytes();
    let the = tok.token_id("▁the").unwrap();
    assert_eq!(tb[the as usize], 4);
    assert_eq!(tb[crab[1] as usize], 1);
    for s in ["<unk>", "<s>", "</s>"] {
        let id = tok.token_id(s).unwrap();
        assert!(tok.is_special(id), "{s}");
        assert_eq!(tb[id as usize], 0);
        assert_eq!(tok.id_to_bytes(id).unwrap(), s.as_bytes());
    }
    // `<s>` frames a text as the post-processor says
    assert_eq!(tok.special_frame().unwrap(), (vec![tok.token_id("<s>").unwrap()], vec![]));
    // the tokenizer.json written back reads as the same tokenizer
    let again = Tokenizer::from_json_str(&tok.to_json_string().unwrap()).unwrap();
    assert_eq!(again.kind(), TokenizerKind::SentencePiece);
    assert_eq!(again.encode(" emoji 🦀 <s>x"), tok.encode(" emoji 🦀 <s>x"));
}

/// SentencePiece files of a shape ferrolm does not decode exactly are refused, naming what.
#[test]
fn sentencepiece_files_of_other_shapes_are_refused_or_read_as_they_say() {
    let text = std::fs::read_to_string(fixture("llama2_spm").join("tokenizer.json")).unwrap();
    let base: Value = serde_json::from_str(&text).unwrap();
    let err = |json: &Value| format!("{:#}", Tokenizer::from_json_str(&json.to_string()).map(|_| ()).unwrap_err());
    // no byte fallback
    let mut j = base.clone();
    j["model"]["byte_fallback"] = false.into();
    assert!(err(&j).contains("byte_fallback"), "{}", err(&j));
    // a byte token missing
    let mut j = base.clone();
    j["model"]["vocab"].as_object_mut().unwrap().remove("<0x41>");
    assert!(err(&j).contains("<0x41>"), "{}", err(&j));
    // a decoder that would not give the bytes ferrolm decodes
    let mut j = base.clone();
    j["decoder"] = serde_json::json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true});
    assert!(err(&j).contains("decoder") && err(&j).contains("Metaspace"), "{}", err(&j));
    // without the Strip step nothing is stripped (as the tokenizers library decodes it)
    let mut j = base.clone();
    j["decoder"]["decoders"].as_array_mut().unwrap().pop();
    let tok = Tokenizer::from_json_str(&j.to_string()).unwrap();
    assert_eq!(tok.strip_leading_spaces(), 0);
    assert_eq!(tok.decode(&tok.encode("Hello")), " Hello");
    assert_eq!(tok.hf().decode(&tok.encode("Hello"), false).unwrap(), " Hello");
}

/// Llama 2 chat's template ([INST], <<SYS>>, bos/eos, raise_exception on a bad role order)
/// renders as transformers renders it; the rendered text's ids are the file's.
#[test]
fn llama2_chat_template_renders_as_transformers_does() {
    let r = spm_reference();
    let dir = fixture("llama2_spm");
    let cfg = HfTokenizerConfig::load_from_dir(&dir).unwrap().unwrap();
    assert_eq!((cfg.bos_token.as_deref(), cfg.eos_token.as_deref(), cfg.add_bos_token), (Some("<s>"), Some("</s>"), true));
    let (tok, _) = &spm_files()[0];
    for c in r["chat"].as_array().unwrap() {
        let msgs: Vec<Message> = c["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Message::new(serde_json::from_value(m["role"].clone()).unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let rendered = cfg.render_chat(&msgs, true).unwrap();
        assert_eq!(rendered, c["rendered"].as_str().unwrap());
        assert_eq!(tok.encode(&rendered), ids(&c["ids"]), "{rendered:?}");
    }
    let e = format!("{:#}", cfg.render_chat(&[Message::user("a"), Message::user("b")], true).unwrap_err());
    assert!(e.contains(r["chat_bad_order_error"].as_str().unwrap()), "{e}");
    assert!(e.contains("tokenizer_config.json"), "{e}");
}

/// GGUF's "llama" vocabulary of a SentencePiece tokenizer: the pieces by id, llama.cpp's
/// token types, and the scores SentencePiece itself gave the pieces (llama.cpp merges by
/// them); a byte-level BPE stays "gpt2" with its merges.
#[test]
fn sentencepiece_ggml_vocab_has_sentencepiece_scores_and_llama_cpp_types() {
    use ferrolm_tokenizer::hf_config::{ggml_vocab, GGML_BYTE, GGML_CONTROL, GGML_NORMAL, GGML_UNKNOWN};
    let r = spm_reference();
    for (tok, _) in spm_files() {
        let v = ggml_vocab(&tok).unwrap();
        assert_eq!(v.model, "llama");
        assert_eq!(v.tokens.len(), tok.vocab_size());
        assert!(v.merges.is_empty());
        let want: Vec<f32> = r["scores"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap() as f32).collect();
        assert_eq!(v.scores, want);
        assert_eq!((v.token_types[0], v.token_types[1], v.token_types[2]), (GGML_UNKNOWN, GGML_CONTROL, GGML_CONTROL));
        assert_eq!(v.token_types.iter().filter(|&&t| t == GGML_BYTE).count(), 256);
        let a = tok.token_id("<0x41>").unwrap() as usize;
        assert_eq!((v.tokens[a].as_str(), v.token_types[a]), ("<0x41>", GGML_BYTE));
        let the = tok.token_id("▁the").unwrap() as usize;
        assert_eq!((v.tokens[the].as_str(), v.token_types[the]), ("▁the", GGML_NORMAL));
        assert_eq!((v.bos, v.unk, v.add_space_prefix), (tok.token_id("<s>"), tok.token_id("<unk>"), true));
    }
    let (tok, _) = (Tokenizer::from_file(&fixture("qwen2_tied").join("tokenizer.json")).unwrap(), ());
    let v = ggml_vocab(&tok).unwrap();
    assert_eq!((v.model, v.scores.len(), v.bos, v.unk), ("gpt2", 0, None, None));
    assert!(!v.merges.is_empty());
}

/// A .gguf file without a tokenizer.json: the tokenizer rebuilt from the `tokenizer.ggml.*`
/// keys ferrolm writes encodes and decodes as the tokenizer.json it came from, for
/// SentencePiece ("llama": merges recovered from the scores) and byte-level BPE ("gpt2").
/// GGUF's "llama" vocabulary has one way to put `▁` before a text, llama.cpp's: the legacy
/// form's (and SentencePiece's), so a Metaspace-form file comes back the same only on the
/// texts where the two forms agree (not on leading spaces, nor after special tokens).
#[test]
fn a_tokenizer_rebuilt_from_ggml_keys_gives_the_same_ids() {
    use ferrolm_tokenizer::hf_config::{ggml_vocab, tokenizer_from_ggml};
    let r = spm_reference();
    let all = r["texts"].as_array().unwrap();
    let text_of = |t: &Value| t["text"].as_str().unwrap().to_string();
    let mut texts: Vec<String> = all.iter().map(text_of).collect();
    texts.push(reference("qwen2_tied")["text"].as_str().unwrap().to_string());
    let agreeing: Vec<String> = all.iter().filter(|t| t["ids"] == t["metaspace_ids"]).map(text_of).collect();
    assert!(agreeing.len() >= 20, "{}", agreeing.len());
    let files = [
        (fixture("llama2_spm").join("tokenizer.json"), &texts),
        (fixture("llama2_spm").join("tokenizer_metaspace.json"), &agreeing),
        (fixture("qwen2_tied").join("tokenizer.json"), &texts),
    ];
    for (file, texts) in files {
        let tok = Tokenizer::from_file(&file).unwrap();
        let back = tokenizer_from_ggml(&ggml_vocab(&tok).unwrap(), "default").unwrap();
        assert_eq!(back.kind(), tok.kind(), "{}", file.display());
        for text in texts {
            let ids = tok.encode_with_special_tokens(text).unwrap();
            assert_eq!(back.encode_with_special_tokens(text).unwrap(), ids, "{}: {text:?}", file.display());
            assert_eq!(back.decode(&ids), tok.decode(&ids), "{}: {text:?}", file.display());
        }
    }
    // an unknown pre-tokenizer name is refused, naming the key
    let tok = Tokenizer::from_file(&fixture("qwen2_tied").join("tokenizer.json")).unwrap();
    let e = format!("{:#}", tokenizer_from_ggml(&ggml_vocab(&tok).unwrap(), "falcon").map(|_| ()).unwrap_err());
    assert!(e.contains("tokenizer.ggml.pre") && e.contains("falcon"), "{e}");
}

/// RoBERTa's byte-level BPE framed by its RobertaProcessing post-processor (`<s>` … `</s>`),
/// with its `<mask>` token: the ids transformers gives for the fixture's texts.
#[test]
fn roberta_tokenizer_gives_transformers_ids_framed_with_its_post_processor() {
    let dir = fixture("roberta_tiny");
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::Bpe);
    let r: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    for text in r["texts"].as_array().unwrap() {
        let want = ids(&text["input_ids"]);
        assert_eq!(tok.encode_with_special_tokens(text["text"].as_str().unwrap()).unwrap(), want, "{}", text["text"]);
    }
    let (before, after) = tok.special_frame().unwrap();
    assert_eq!((before, after), (vec![0], vec![2]));
}
