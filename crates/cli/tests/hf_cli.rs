//! `ferrolm score` and `ferrolm export --format hf` on the transformers-written fixtures of
//! ferrolm-model (no Python, no network).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/hf").join(name)
}

fn ferrolm(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrolm")).args(args).output().unwrap();
    assert!(out.status.success(), "ferrolm {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn score(model: &Path, text: &str) -> Value {
    serde_json::from_str(&ferrolm(&["score", "--model", model.to_str().unwrap(), "--text", text, "--json"])).unwrap()
}

/// `score` of a fixture folder's reference text gives transformers' ids and log-probs
/// (within 1e-4); returns the reference.
fn score_matches_reference(dir: &Path) -> Value {
    let r: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let got = score(dir, r["text"].as_str().unwrap());
    assert_eq!(got["token_ids"], r["text_ids"]);
    let (a, b) = (got["logprobs"].as_array().unwrap(), r["text_logprobs"].as_array().unwrap());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-4, "{x} vs {y}");
    }
    r
}

#[test]
fn score_gives_transformers_ids_and_logprobs() {
    let dir = fixture("qwen2_tied");
    score_matches_reference(&dir);
}

#[test]
fn export_writes_a_folder_that_scores_the_same() {
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("hf");
    let src = fixture("qwen2_tied");
    ferrolm(&["export", "--model", src.to_str().unwrap(), "--format", "hf", "--out", dest.to_str().unwrap()]);
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        assert!(dest.join(f).is_file(), "{f} missing");
    }
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(dest.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "qwen2");
    let text = "the lazy dog";
    assert_eq!(score(&src, text), score(&dest, text));
    // bad input is an error, not a panic
    let e = Command::new(env!("CARGO_BIN_EXE_ferrolm")).args(["score", "--model", "/nonexistent", "--text", "x"]).output().unwrap();
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("nonexistent"));
}

/// A Hugging Face BERT folder: `fill-mask` gives transformers' top tokens and
/// probabilities (with `[MASK]` or `<|mask|>` in the text), and `classify train` puts a head
/// on its pooled output, leaving a classifier folder that `classify predict` reads.
#[test]
fn a_bert_folder_fills_masks_and_carries_a_classifier() {
    let dir = fixture("bert_tiny");
    let d = dir.to_str().unwrap();
    let r: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let text = r["texts"][1]["text"].as_str().unwrap();
    assert!(text.contains("[MASK]"));
    let out = ferrolm(&["fill-mask", "--model", d, "--text", text, "--top-k", "3", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let pos = r["texts"][1]["input_ids"].as_array().unwrap().iter().position(|x| x == 4).unwrap();
    assert_eq!((v.as_array().unwrap().len(), v[0]["position"].as_u64()), (1, Some(pos as u64)), "{v}");
    // transformers' logits at the mask: the same three tokens, the same probabilities
    let t = candle_core::safetensors::load(dir.join("reference.safetensors"), &candle_core::Device::Cpu).unwrap();
    let logits: Vec<Vec<f32>> = t["logits.1"].to_vec2().unwrap();
    let row = &logits[pos];
    let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    for (k, p) in v[0]["predictions"].as_array().unwrap().iter().enumerate() {
        assert_eq!(p["id"].as_u64(), Some(order[k] as u64), "{v}");
        let want = (row[order[k]] as f64).exp() / z;
        assert!((p["probability"].as_f64().unwrap() - want).abs() < 1e-4, "{p} vs {want}");
    }
    assert_eq!(ferrolm(&["fill-mask", "--model", d, "--text", &text.replace("[MASK]", "<|mask|>"), "--top-k", "3", "--json"]), out);

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.jsonl");
    let mut lines = String::new();
    for i in 0..24 {
        let (t, l) = if i % 2 == 0 { ("the quick brown fox jumps", "fox") } else { ("the lazy dog is fine today", "dog") };
        lines.push_str(&serde_json::json!({"text": format!("{t} {i}"), "label": l}).to_string());
        lines.push('\n');
    }
    std::fs::write(&data, lines).unwrap();
    let clf = tmp.path().join("clf");
    let rep: Value = serde_json::from_str(&ferrolm(&[
        "classify", "train", "--model", d, "--out", clf.to_str().unwrap(), "--data", data.to_str().unwrap(), "--quiet",
        "--set", "train.max_steps=30", "--set", "classify.pooling=\"auto\"", "--set", "classify.ngram_buckets=0", "--set", "classify.val_fraction=0.25",
    ]))
    .unwrap();
    assert!(rep["accuracy"].as_f64().is_some(), "{rep}");
    let saved = std::fs::read_to_string(clf.join("config.toml")).unwrap();
    assert!(saved.contains("post_norm = true") && saved.contains("exact_gelu = true"), "{saved}");
    let pred = ferrolm(&["classify", "predict", "--model", clf.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    assert_eq!(pred.lines().count(), 24);
}

/// A Llama 2-family folder (SentencePiece BPE tokenizer): `score` gives the ids and
/// log-probs transformers gave (a leading `<s>`, byte tokens for characters outside the
/// vocabulary), and `generate` continues a prompt greedily with transformers' tokens.
#[test]
fn a_sentencepiece_llama_folder_scores_and_generates_as_transformers() {
    let dir = fixture("llama2_spm");
    score_matches_reference(&dir);
    // the table form shows each token's own text, `▁` as a space
    let table = ferrolm(&["score", "--model", dir.to_str().unwrap(), "--text", "Hello world"]);
    assert!(table.contains("\" world\""), "{table}");
}

fn gguf_meta(path: &Path) -> std::collections::HashMap<String, candle_core::quantized::gguf_file::Value> {
    let mut f = std::fs::File::open(path).unwrap();
    candle_core::quantized::gguf_file::Content::read(&mut f).unwrap().metadata
}

/// `export --format gguf` of a Llama 2-family folder writes llama.cpp's SentencePiece
/// vocabulary ("llama": pieces, SentencePiece's scores, token types, bos/eos/unk, add_bos,
/// add_space_prefix) and the folder's own Jinja chat template; the file scores as the
/// folder does, and so does the file without ferrolm's stored tokenizer.json (as llama.cpp's
/// converter writes files), its tokenizer rebuilt from the `tokenizer.ggml.*` keys.
#[test]
fn a_sentencepiece_model_exports_to_gguf_and_a_bare_gguf_carries_its_tokenizer() {
    use candle_core::quantized::gguf_file;
    let src = fixture("llama2_spm");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(src.join("reference.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("llama2.gguf");
    ferrolm(&["export", "--model", src.to_str().unwrap(), "--format", "gguf", "--quant", "f32", "--out", file.to_str().unwrap()]);
    let m = gguf_meta(&file);
    let text = |k: &str| m[k].to_string().unwrap().clone();
    assert_eq!(text("tokenizer.ggml.model"), "llama");
    let tokenizer: Value = serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer.json")).unwrap()).unwrap();
    let tokens: Vec<String> = m["tokenizer.ggml.tokens"].to_vec().unwrap().iter().map(|t| t.to_string().unwrap().clone()).collect();
    for (piece, id) in tokenizer["model"]["vocab"].as_object().unwrap() {
        assert_eq!(&tokens[id.as_u64().unwrap() as usize], piece);
    }
    let scores: Vec<f64> = m["tokenizer.ggml.scores"].to_vec().unwrap().iter().map(|s| s.to_f32().unwrap() as f64).collect();
    let want: Vec<f64> = r["spm"]["scores"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).collect();
    assert_eq!(scores, want);
    let types: Vec<i32> = m["tokenizer.ggml.token_type"].to_vec().unwrap().iter().map(|t| t.to_i32().unwrap()).collect();
    assert_eq!(&types[..4], &[2, 3, 3, 6]);
    assert_eq!(types.iter().filter(|&&t| t == 6).count(), 256);
    let id = |k: &str| m[k].to_u32().unwrap();
    assert_eq!((id("tokenizer.ggml.unknown_token_id"), id("tokenizer.ggml.bos_token_id"), id("tokenizer.ggml.eos_token_id")), (0, 1, 2));
    assert!(m["tokenizer.ggml.add_bos_token"].to_bool().unwrap() && m["tokenizer.ggml.add_space_prefix"].to_bool().unwrap());
    assert!(!m.contains_key("tokenizer.ggml.merges"));
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(text("tokenizer.chat_template"), cfg["chat_template"].as_str().unwrap());

    let sentence = r["text"].as_str().unwrap();
    let want = score(&src, sentence);
    let close = |got: &Value| {
        assert_eq!(got["token_ids"], want["token_ids"]);
        for (x, y) in got["logprobs"].as_array().unwrap().iter().zip(want["logprobs"].as_array().unwrap()) {
            assert!((x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-4, "{x} vs {y}");
        }
    };
    close(&score(&file, sentence));
    // the same file without ferrolm's tokenizer.json: what llama.cpp's converter writes
    let bare = tmp.path().join("bare.gguf");
    {
        let mut f = std::fs::File::open(&file).unwrap();
        let c = gguf_file::Content::read(&mut f).unwrap();
        let meta: Vec<(&str, &gguf_file::Value)> = c.metadata.iter().filter(|(k, _)| !k.starts_with("ferrolm.")).map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(String, candle_core::quantized::QTensor)> = c.tensor_infos.keys().map(|n| (n.clone(), c.tensor(&mut f, n, &candle_core::Device::Cpu).unwrap())).collect();
        let refs: Vec<(&str, &candle_core::quantized::QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        gguf_file::write(&mut std::fs::File::create(&bare).unwrap(), &meta, &refs).unwrap();
    }
    assert!(!gguf_meta(&bare).contains_key("ferrolm.tokenizer_json"));
    close(&score(&bare, sentence));
    // greedy generation through the bare file continues the prompt as the folder does
    let gen = |m: &Path| ferrolm(&["generate", "--model", m.to_str().unwrap(), "--prompt", "Hello world", "--max-tokens", "8", "--temperature", "0"]);
    assert_eq!(gen(&bare), gen(&src));
}
