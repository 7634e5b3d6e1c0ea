//! The quickstart pipeline end to end on a tiny budget: generated text instead of the
//! Cargo registry, a tiny model, a few steps. Checks every promised output exists and
//! that the model beats nothing it should not (the numbers are finite and reported).

use std::process::Command;

fn fixture(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let words = ["alpha", "beta", "gamma", "delta", "the", "crate", "returns", "value", "fn", "struct"];
    for d in 0..60 {
        let mut text = String::new();
        for i in 0..200 {
            text.push_str(words[(i * 7 + d * 3 + i / 5) % words.len()]);
            text.push(if i % 11 == 10 { '\n' } else { ' ' });
        }
        std::fs::write(dir.join(format!("doc{d}.txt")), text).unwrap();
    }
}

#[test]
fn quickstart_runs_end_to_end_on_a_tiny_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fixture(&data);
    let out = tmp.path().join("run");
    let status = Command::new(env!("CARGO_BIN_EXE_ferrolm"))
        .args(["quickstart", "--no-registry", "--minutes", "0.5", "--out"])
        .arg(&out)
        .arg("--data")
        .arg(&data)
        .args([
            "--set", "quickstart.vocab_size=300",
            "--set", "quickstart.val_fraction=0.1",
            "--set", "model.d_model=32",
            "--set", "model.n_layers=1",
            "--set", "model.n_heads=2",
            "--set", "model.n_kv_heads=1",
            "--set", "model.max_seq_len=32",
            "--set", "train.batch_size=4",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    for f in ["config.toml", "quickstart.toml", "tokenizer.json", "metrics.jsonl", "loss.svg", "samples.md", "report.md", "summary.json"] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let bpb = summary["val_bits_per_byte"].as_f64().unwrap();
    let uni = summary["unigram_bits_per_byte"].as_f64().unwrap();
    assert!(bpb.is_finite() && uni.is_finite() && bpb > 0.0);
    // The fixture is highly regular: even a few steps of a tiny model beat the unigram baseline.
    assert!(bpb < uni, "model {bpb} vs unigram {uni}");
    // The run folder alone is enough to generate.
    let gen = Command::new(env!("CARGO_BIN_EXE_ferrolm"))
        .args(["generate", "--max-tokens", "5", "--prompt", "the crate", "--model"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(gen.status.success(), "{}", String::from_utf8_lossy(&gen.stderr));
    assert!(String::from_utf8_lossy(&gen.stdout).starts_with("the crate"));
}

#[test]
fn invalid_config_and_missing_run_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "[model]\nd_model = 30\nn_heads = 4\n[data]\ntrain='x'\nval='y'\ntokenizer='z'\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ferrolm")).args(["train", "--config"]).arg(&cfg).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("divisible"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let o = Command::new(env!("CARGO_BIN_EXE_ferrolm")).args(["generate", "--prompt", "x", "--model"]).arg(tmp.path()).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("config.toml"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
