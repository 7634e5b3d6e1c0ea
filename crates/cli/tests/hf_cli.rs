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
