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

#[test]
fn score_gives_transformers_ids_and_logprobs() {
    let dir = fixture("qwen2_tied");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let got = score(&dir, r["text"].as_str().unwrap());
    assert_eq!(got["token_ids"], r["text_ids"]);
    let (a, b) = (got["logprobs"].as_array().unwrap(), r["text_logprobs"].as_array().unwrap());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-4, "{x} vs {y}");
    }
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
