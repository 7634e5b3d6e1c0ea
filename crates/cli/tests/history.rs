//! `ferrolm experiment history --quick` end to end on a generated corpus with tiny budgets,
//! and `ferrolm train/eval` with `model.family = "lstm"`.

use std::process::Command;

/// Generated prose and code (varied enough for the corpus filters, regular enough to learn).
fn fixture(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let adj = ["small", "quick", "quiet", "heavy", "bright", "old", "new", "strange", "simple", "careful"];
    let noun = ["parser", "river", "teacher", "window", "garden", "function", "engine", "letter", "mountain", "table"];
    let verb = ["reads", "moves", "finds", "builds", "opens", "returns", "follows", "changes", "keeps", "writes"];
    let mut state = 777u64;
    let mut pick = |n: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as usize % n
    };
    for d in 0..40 {
        let mut text = String::new();
        for p in 0..4 {
            for _ in 0..6 {
                text.push_str(&format!(
                    "The {} {} {} the {} {} near the {}. ",
                    adj[pick(10)], noun[pick(10)], verb[pick(10)], adj[pick(10)], noun[pick(10)], noun[pick(10)]
                ));
            }
            text.push_str(if p < 3 { "\n\n" } else { "\n" });
        }
        std::fs::write(dir.join(format!("doc{d}.txt")), text).unwrap();
    }
}

fn ferrolm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferrolm"))
}

#[test]
fn history_experiment_runs_every_family_and_writes_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fixture(&data);
    let out = tmp.path().join("history");
    let o = ferrolm()
        .args(["experiment", "history", "--quick", "--out"])
        .arg(&out)
        .arg("--data")
        .arg(&data)
        .args([
            "--set", "experiment.vocab_size=300",
            "--set", "experiment.val_fraction=0.1",
            "--set", "experiment.seq_len=16",
            "--set", "experiment.eval_windows=32",
            "--set", "experiment.ngram_order=3",
            "--set", "train.batch_size=4",
            "--set", "train.warmup_steps=2",
            "--set", "nplm.seconds=1.5",
            "--set", "nplm.model.d_model=16",
            "--set", "nplm.model.hidden=32",
            "--set", "rnn.seconds=1.5",
            "--set", "rnn.model.d_model=16",
            "--set", "rnn.model.hidden=32",
            "--set", "lstm.seconds=1.5",
            "--set", "lstm.model.d_model=16",
            "--set", "lstm.model.hidden=32",
            "--set", "transformer.seconds=1.5",
            "--set", "transformer.model.d_model=32",
            "--set", "transformer.model.n_layers=1",
            "--set", "transformer.model.max_seq_len=16",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["report.md", "history.svg", "summary.json", "experiment.toml", "tokenizer.json", "lstm/config.toml", "transformer/metrics.jsonl"] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let rows = summary["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["family"].as_str().unwrap()).collect();
    assert_eq!(names, ["ngram", "nplm", "rnn", "lstm", "transformer"]);
    let unigram = summary["unigram_bits_per_byte"].as_f64().unwrap();
    let eval_tokens = rows[0]["eval_tokens"].as_u64().unwrap();
    for r in rows {
        let bpb = r["bits_per_byte"].as_f64().unwrap();
        assert!(bpb.is_finite() && bpb > 0.0, "{r}");
        assert!(r["params"].as_u64().unwrap() > 0);
        // Every family is scored on the same held-out targets.
        assert_eq!(r["eval_tokens"].as_u64().unwrap(), eval_tokens, "{r}");
    }
    // The fixture is a small grammar: the trigram model and the trained LSTM beat unigram statistics.
    assert!(rows[0]["bits_per_byte"].as_f64().unwrap() < unigram);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| LSTM | LSTM (1 layers") && report.contains("What the numbers show"), "{report}");
    let svg = std::fs::read_to_string(out.join("history.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("NPLM"));

    // The experiment's LSTM run folder is an ordinary run: `ferrolm eval` loads it.
    let ev = ferrolm().args(["eval", "--json", "--model"]).arg(out.join("lstm")).arg("--data").arg(data.join("doc3.txt")).output().unwrap();
    assert!(ev.status.success(), "{}", String::from_utf8_lossy(&ev.stderr));
    let r: serde_json::Value = serde_json::from_slice(&ev.stdout).unwrap();
    assert!(r["bits_per_byte"].as_f64().unwrap() > 0.0);

    // ... and `ferrolm generate` samples from it (no KV cache: the window is recomputed).
    for family in ["lstm", "nplm"] {
        let g = ferrolm()
            .args(["generate", "--max-tokens", "12", "--seed", "3", "--prompt", "The model", "--model"])
            .arg(out.join(family))
            .output()
            .unwrap();
        assert!(g.status.success(), "{family}: {}", String::from_utf8_lossy(&g.stderr));
        let text = String::from_utf8_lossy(&g.stdout);
        assert!(text.starts_with("The model") && text.trim_end().len() > "The model".len(), "{family}: {text:?}");
    }

    // `ferrolm train --set model.family=lstm` trains through the shared trainer and resumes.
    let cfg = tmp.path().join("lstm.toml");
    std::fs::write(
        &cfg,
        format!(
            "[model]\nfamily = \"lstm\"\nvocab_size = 320\nd_model = 16\nhidden = 24\nn_layers = 2\nn_heads = 2\nn_kv_heads = 2\nmax_seq_len = 16\n\
             [train]\nmax_steps = 6\nbatch_size = 4\neval_interval = 0\ncheckpoint_interval = 3\nwarmup_steps = 1\neval_batches = 2\n\
             [data]\ntrain = {:?}\nval = {:?}\ntokenizer = {:?}\n",
            out.join("data/train").display().to_string(),
            out.join("data/val").display().to_string(),
            out.join("tokenizer.json").display().to_string()
        ),
    )
    .unwrap();
    let run = tmp.path().join("run-lstm");
    let t = ferrolm().args(["train", "--config"]).arg(&cfg).arg("--out").arg(&run).args(["--set", "train.max_steps=3"]).output().unwrap();
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains("family = \"lstm\""), "{saved}");
    let t = ferrolm().args(["train", "--resume"]).arg(&run).args(["--set", "train.max_steps=6"]).output().unwrap();
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    let outcome: serde_json::Value = serde_json::from_slice(&t.stdout).unwrap();
    assert_eq!(outcome["steps"].as_u64().unwrap(), 6);
}
