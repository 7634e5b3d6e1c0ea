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
