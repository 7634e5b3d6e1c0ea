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
