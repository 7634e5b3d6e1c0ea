//! `ferrolm rag`: index a folder and a SQuAD file, search, evaluate, export, re-index.

use std::process::{Command, Output};

fn ferrolm(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrolm")).args(args).output().unwrap();
    assert!(out.status.success(), "ferrolm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn index_search_eval_export_and_reindex() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("ships.md"), "# Ships\n\nLongships carried the Norse raiders up the Seine.\n").unwrap();
    let squad = dir.path().join("qa.json");
    std::fs::write(
        &squad,
        r#"{"data": [{"title": "Normans", "paragraphs": [
            {"context": "Rollo swore fealty to King Charles III.", "qas": [
              {"id": "a", "question": "Who did Rollo swear fealty to?", "answers": [{"text": "King Charles III", "answer_start": 22}]},
              {"id": "b", "answers": []}]}]}]}"#,
    )
    .unwrap();
    let idx = dir.path().join("idx");
    let (d, q, i) = (docs.to_str().unwrap(), squad.to_str().unwrap(), idx.to_str().unwrap());

    let out = ferrolm(&["rag", "index", "--docs", d, q, "--out", i, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["files_added"], 2);
    assert_eq!(report["passages"], 2);

    let out = String::from_utf8(ferrolm(&["rag", "search", "--index", i, "longships seine", "-k", "1"]).stdout).unwrap();
    assert!(out.starts_with("1. ") && out.contains("ships.md:1-3") && out.contains("Longships"), "{out}");

    let out = Command::new(env!("CARGO_BIN_EXE_ferrolm")).args(["rag", "eval", "--index", i, "--qa", q, "--json"]).output().unwrap();
    assert!(out.status.success());
    let eval: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((eval["scored"].as_u64(), eval["malformed"].as_u64()), (Some(1), Some(1)));
    assert_eq!(eval["recall_at_1"], 1.0);
    // The malformed question is named on stderr with its id and position.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("qa.json") && err.contains("id b") && err.contains("qas[1]"), "{err}");

    let jsonl = dir.path().join("p.jsonl");
    ferrolm(&["rag", "export-passages", "--index", i, "--out", jsonl.to_str().unwrap()]);
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&jsonl).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["doc"], "squad:Normans/0");

    // Unchanged inputs: nothing is read again.
    let out = ferrolm(&["rag", "index", "--docs", d, q, "--out", i, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["files_unchanged"].as_u64(), report["bytes_read"].as_u64()), (Some(2), Some(0)));

    // Errors name what is wrong.
    let out = Command::new(env!("CARGO_BIN_EXE_ferrolm")).args(["rag", "search", "--index", d, "x"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a ferrolm rag index"));
}

/// The question-answering commands wired end to end on a tiny masked LM trained for two
/// steps: `qa train|eval|baseline`, `rag index --embed`, dense and hybrid search, `rag ask`
/// and `rag eval --model`. Quality is tested in ferrolm-qa; this checks the commands.
#[test]
fn qa_train_eval_embed_ask() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let mut text = String::new();
    for i in 0..60 {
        text.push_str(&format!("Rollo swore fealty to King Charles in year {i}. The Normans raided the Seine with longships.\n\n"));
    }
    std::fs::write(p("prose.txt"), &text).unwrap();
    let squad = r#"{"data": [{"title": "Normans", "paragraphs": [
        {"context": "Rollo swore fealty to King Charles III in 911.", "qas": [
          {"id": "a", "question": "Who did Rollo swear fealty to?", "answers": [{"text": "King Charles III", "answer_start": 22}], "is_impossible": false},
          {"id": "b", "question": "When did the Danes leave?", "answers": [], "is_impossible": true}]},
        {"context": "The Normans raided the Seine with longships.", "qas": [
          {"id": "c", "question": "What did the Normans raid?", "answers": [{"text": "the Seine", "answer_start": 19}], "is_impossible": false}]}]}]}"#;
    std::fs::write(p("qa.json"), squad).unwrap();
    ferrolm(&["tokenizer", "train", "--input", &p("prose.txt"), "--out", &p("tok/tokenizer.json"), "--vocab-size", "300"]);
    ferrolm(&["tokenizer", "shards", "--tokenizer", &p("tok/tokenizer.json"), "--input", &p("prose.txt"), "--out", &p("data"), "--val-fraction", "0.1"]);
    let config = format!(
        "[data]\ntrain = {:?}\nval = {:?}\ntokenizer = {:?}\n[model]\nkind = \"masked_lm\"\nvocab_size = 300\nd_model = 32\nn_layers = 1\nn_heads = 2\nn_kv_heads = 2\nmax_seq_len = 64\n[train]\nmax_steps = 2\nbatch_size = 2\nseq_len = 32\neval_interval = 0\n",
        p("data/train"), p("data/val"), p("tok/tokenizer.json")
    );
    std::fs::write(p("mlm.toml"), config).unwrap();
    ferrolm(&["train", "--config", &p("mlm.toml"), "--out", &p("mlm")]);
    ferrolm(&["qa", "train", "--model", &p("mlm"), "--out", &p("reader"), "--data", &p("qa.json"), "--val-data", &p("qa.json"), "--set", "train.max_steps=2", "--quiet"]);
    let out = ferrolm(&["qa", "eval", "--model", &p("reader"), "--data", &p("qa.json"), "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((r["has_ans"]["n"].as_u64(), r["no_ans"]["n"].as_u64()), (Some(2), Some(1)));
    let out = String::from_utf8(ferrolm(&["qa", "baseline", "--train", &p("qa.json"), "--data", &p("qa.json")]).stdout).unwrap();
    assert!(out.contains("first sentence, HasAns"), "{out}");

    ferrolm(&["rag", "index", "--docs", &p("qa.json"), &p("prose.txt"), "--out", &p("ix"), "--embed", &p("mlm")]);
    for mode in ["dense", "hybrid"] {
        let out = String::from_utf8(ferrolm(&["rag", "search", "--index", &p("ix"), "Seine longships", "--mode", mode, "-k", "2"]).stdout).unwrap();
        assert!(out.starts_with("1. "), "{mode}: {out}");
    }
    let out = String::from_utf8(ferrolm(&["rag", "ask", "--index", &p("ix"), "--model", &p("reader"), "Who did Rollo swear fealty to?"]).stdout).unwrap();
    assert!(out.starts_with("answer: ") && out.contains("[1] "), "{out}");
    let out = ferrolm(&["rag", "eval", "--index", &p("ix"), "--qa", &p("qa.json"), "--model", &p("reader"), "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["exact_match"].is_number() && r["reader"]["has_ans"]["n"] == 2, "{r}");
    // The index's vectors are refused for another model's queries.
    let out = Command::new(env!("CARGO_BIN_EXE_ferrolm")).args(["rag", "search", "--index", &p("ix"), "x", "--mode", "dense", "--embed", &p("reader")]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("embedding model"), "{}", String::from_utf8_lossy(&out.stderr));
}
