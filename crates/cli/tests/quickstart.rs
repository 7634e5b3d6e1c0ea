//! The quickstart pipeline end to end on a tiny budget: generated text instead of the
//! Cargo registry, a tiny model, a few steps. Checks every promised output exists and
//! that the model beats nothing it should not (the numbers are finite and reported).

use std::process::Command;

/// Generated English-like prose and Rust code: varied enough to pass the corpus
/// pipeline's language and repetition filters, regular enough to learn in seconds.
fn fixture(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let adj = ["small", "quick", "quiet", "heavy", "bright", "old", "new", "strange", "simple", "careful", "green", "broken"];
    let noun = ["parser", "river", "teacher", "window", "garden", "function", "engine", "letter", "mountain", "city", "value", "table"];
    let verb = ["reads", "moves", "finds", "builds", "opens", "returns", "follows", "changes", "keeps", "writes"];
    let prep = ["near", "under", "with", "before", "after", "inside", "behind", "across"];
    let mut state = 12345u64;
    let mut pick = |n: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as usize % n
    };
    for d in 0..40 {
        let mut text = String::new();
        for p in 0..4 {
            for _ in 0..6 {
                text.push_str(&format!(
                    "The {} {} {} the {} {} {} the {}. ",
                    adj[pick(adj.len())], noun[pick(noun.len())], verb[pick(verb.len())],
                    adj[pick(adj.len())], noun[pick(noun.len())], prep[pick(prep.len())], noun[pick(noun.len())]
                ));
            }
            text.push_str(if p < 3 { "\n\n" } else { "\n" });
        }
        std::fs::write(dir.join(format!("doc{d}.txt")), text).unwrap();
    }
    for d in 0..10 {
        let mut code = String::new();
        for f in 0..8 {
            let (a, b) = (noun[pick(noun.len())], noun[pick(noun.len())]);
            code.push_str(&format!(
                "/// Returns the {} {} for the given {}.\npub fn {a}_{f}_{d}(x: u32) -> u32 {{\n    let {b} = x + {};\n    {b} * {}\n}}\n\n",
                adj[pick(adj.len())], a, b, pick(100), pick(9) + 1
            ));
        }
        std::fs::write(dir.join(format!("lib{d}.rs")), code).unwrap();
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
    // ... and to evaluate on other text.
    let ev = Command::new(env!("CARGO_BIN_EXE_ferrolm"))
        .args(["eval", "--json", "--model"])
        .arg(&out)
        .arg("--data")
        .arg(data.join("doc3.txt"))
        .output()
        .unwrap();
    assert!(ev.status.success(), "{}", String::from_utf8_lossy(&ev.stderr));
    let r: serde_json::Value = serde_json::from_slice(&ev.stdout).unwrap();
    let eval_bpb = r["bits_per_byte"].as_f64().unwrap();
    assert!(eval_bpb > 0.0 && eval_bpb < uni, "eval bpb {eval_bpb}");
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
