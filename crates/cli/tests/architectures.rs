//! `ferrolm experiment architectures --quick` on a generated fixture of Rust sources
//! (no network, no registry), then the run folders it leaves through `train` (pairs,
//! resume), `generate`, `eval` and `fill-mask`.

use std::path::Path;
use std::process::Command;

/// Rust files whose doc comments determine their item's signature, plus some prose.
fn fixture(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let adj = ["small", "quick", "quiet", "heavy", "bright", "old", "new", "strange", "simple", "careful", "green", "broken"];
    let noun = ["parser", "river", "teacher", "window", "garden", "engine", "letter", "mountain", "city", "value", "table", "socket"];
    let ty = ["u32", "u64", "i32", "String", "bool", "f64"];
    let mut state = 2024u64;
    let mut pick = |n: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as usize % n
    };
    for d in 0..40 {
        let mut code = String::new();
        for _ in 0..12 {
            let (a, n, t) = (adj[pick(adj.len())], noun[pick(noun.len())], ty[pick(ty.len())]);
            code.push_str(&format!(
                "/// Returns the {a} {n} as a {t}.\n///\n/// The {n} is checked first.\npub fn {a}_{n}(&self) -> {t} {{\n    self.{n}.{a}()\n}}\n\n"
            ));
        }
        std::fs::write(dir.join(format!("lib{d}.rs")), code).unwrap();
    }
    for d in 0..10 {
        let mut text = String::new();
        for _ in 0..30 {
            text.push_str(&format!("The {} {} is near the {} {}. ", adj[pick(adj.len())], noun[pick(noun.len())], adj[pick(adj.len())], noun[pick(noun.len())]));
        }
        std::fs::write(dir.join(format!("notes{d}.txt")), text).unwrap();
    }
}

fn ferrolm(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrolm")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    assert!(out.status.success(), "ferrolm {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn experiment_architectures_quick_then_every_command_on_its_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("src");
    fixture(&data);
    let out = tmp.path().join("exp");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/experiment-architectures.toml");
    ferrolm(&[
        "experiment", "architectures", "--quick",
        "--config", config.to_str().unwrap(),
        "--out", out.to_str().unwrap(),
        "--data", data.to_str().unwrap(),
        "--set", "experiment.val_fraction=0.2",
    ]);
    for f in ["report.md", "architectures.svg", "summary.json", "tokenizer.json", "data/train.jsonl", "data/val.jsonl"] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let kinds = s["kinds"].as_array().unwrap();
    assert_eq!(kinds.iter().map(|k| k["kind"].as_str().unwrap()).collect::<Vec<_>>(), ["causal", "prefix", "encoder_decoder"]);
    let params: Vec<f64> = kinds.iter().map(|k| k["params"].as_f64().unwrap()).collect();
    let (lo, hi) = (params.iter().cloned().fold(f64::MAX, f64::min), params.iter().cloned().fold(0.0, f64::max));
    assert!(hi / lo < 1.05, "parameter counts not matched: {params:?}");
    for k in kinds {
        let loss = k["val_target_loss"].as_f64().unwrap();
        // far below a uniform guess over the 512-token vocabulary (ln 512 = 6.2)
        assert!(loss.is_finite() && loss < 3.0, "{k}");
        assert_eq!(k["steps"].as_u64().unwrap(), 100);
        let em = k["exact_match"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&em));
    }
    let mlm = &s["masked_lm"];
    let (acc, uni) = (mlm["masked_accuracy"].as_f64().unwrap(), mlm["unigram_accuracy"].as_f64().unwrap());
    // 100 steps on the tiny fixture sometimes end on the unigram plateau (predicting the most
    // frequent token), so the quick run only pins "not clearly below"; the above-baseline
    // claim is the full experiment's, on real text. On the plateau, rayon's work stealing
    // (float sums in another order on a loaded machine) has moved the accuracy by a few
    // masked tokens either side of the baseline (seen: 0.1256 vs 0.1293); a broken masked LM
    // guesses among 512 tokens (~0.002), far below the 0.01 margin.
    assert!(acc >= uni - 0.01, "masked LM {acc} below the unigram baseline {uni}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| causal |") && report.contains("| encoder_decoder |") && report.contains("unigram baseline"));
    assert!(std::fs::read_to_string(out.join("architectures.svg")).unwrap().contains("<svg"));

    // `ferrolm train` on the experiment's pair files, as a prefix decoder, then resumed.
    let run = tmp.path().join("prefix-run");
    let prefix_cfg = out.join("prefix/config.toml");
    ferrolm(&["train", "--config", prefix_cfg.to_str().unwrap(), "--out", run.to_str().unwrap(), "--set", "train.max_steps=4", "--set", "train.eval_interval=0"]);
    ferrolm(&["train", "--resume", run.to_str().unwrap(), "--set", "train.max_steps=6"]);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"step\":6"), "{metrics}");

    // generate picks the path from the saved config, for each generating kind
    for kind in ["causal", "prefix", "encoder_decoder"] {
        let g = ferrolm(&["generate", "--model", out.join(kind).to_str().unwrap(), "--prompt", "Returns the quick parser as a u32.", "--temperature", "0", "--max-tokens", "12"]);
        let text = String::from_utf8_lossy(&g.stdout);
        assert!(text.starts_with("Returns the quick parser as a u32."), "{kind}: {text}");
    }
    let e = ferrolm(&["eval", "--model", out.join("encoder_decoder").to_str().unwrap(), "--pairs", out.join("data/val.jsonl").to_str().unwrap(), "--json"]);
    let ev: serde_json::Value = serde_json::from_slice(&e.stdout).unwrap();
    assert!(ev["loss"].as_f64().unwrap().is_finite() && ev["target_accuracy"].as_f64().is_some(), "{ev}");
    let e = ferrolm(&["eval", "--model", out.join("masked_lm").to_str().unwrap(), "--data", data.join("notes0.txt").to_str().unwrap(), "--json"]);
    let ev: serde_json::Value = serde_json::from_slice(&e.stdout).unwrap();
    assert!(ev["masked_accuracy"].as_f64().is_some(), "{ev}");
    let f = ferrolm(&["fill-mask", "--model", out.join("masked_lm").to_str().unwrap(), "--text", "The quick <|mask|> is near the old river.", "--json"]);
    let fm: serde_json::Value = serde_json::from_slice(&f.stdout).unwrap();
    assert_eq!(fm.as_array().unwrap().len(), 1);
    assert_eq!(fm[0]["predictions"].as_array().unwrap().len(), 5);
    // a masked LM does not generate: a clear error
    let g = Command::new(env!("CARGO_BIN_EXE_ferrolm")).args(["generate", "--model", out.join("masked_lm").to_str().unwrap(), "--prompt", "x"]).output().unwrap();
    assert!(!g.status.success() && String::from_utf8_lossy(&g.stderr).contains("fill-mask"));
}
