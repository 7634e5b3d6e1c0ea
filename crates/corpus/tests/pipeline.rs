//! The pipeline end to end on generated documents: accounting, outputs, sharding and resume,
//! and the quality targets (near-duplicate precision/recall, privacy recall).

use ferrolm_corpus::eval::{near_duplicate_eval, privacy_eval};
use ferrolm_corpus::steps::MinHashConfig;
use ferrolm_corpus::{run_configured, run_pipeline, Document, PipelineConfig, RunOptions, SourceConfig};
use std::fs;
use std::path::Path;

fn prose(i: usize) -> String {
    let topics = ["river", "mountain", "library", "harbour", "garden", "railway", "museum", "market"];
    let t = topics[i % topics.len()];
    format!(
        "The {t} number {i} has a long history that the town keeps alive. People who live near the {t} \
         walk there in the morning, and visitors come with their families to see it. In the evening the \
         light changes and the {t} looks different again, which is why painters have come to it for {n} \
         years. The local council has worked with volunteers to protect it and to write down the stories \
         that older residents tell about it. Each chapter of those stories adds something new, and record {i} \
         is one of them.\n",
        n = 10 + i
    )
}

fn corpus() -> Vec<Document> {
    let mut docs = Vec::new();
    for i in 0..40 {
        docs.push(Document::new(format!("p{i}"), prose(i), "prose"));
    }
    // exact copies, near copies, junk, short, private data, code
    docs.push(Document::new("dup-exact", prose(3), "prose"));
    docs.push(Document::new("dup-near", prose(5).replace("morning", "early morning").replace("families", "friends"), "prose"));
    docs.push(Document::new("spam", "buy cheap watches now\n".repeat(30), "prose"));
    docs.push(Document::new("short", "Too short.", "prose"));
    docs.push(Document::new("german", "Der schnelle braune Fuchs springt über den faulen Hund und läuft dann zurück in den Wald, wo er mit seiner Familie lebt und jeden Tag spielt.", "prose"));
    docs.push(Document::new("pii", format!("{}Write to jane.doe@example.org or call +44 20 7946 0958.\n", prose(77)), "prose"));
    docs.push(Document::new("code", "fn main() {\n    println!(\"hello\");\n}\n", "code"));
    docs.push(Document::new("empty", " \n\t\n", "prose"));
    docs
}

#[test]
fn accounting_adds_up_and_outputs_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let docs = corpus();
    let n = docs.len() as u64;
    let (kept, stats) = run_pipeline(docs, &PipelineConfig::default_pipeline(), Some(&out)).unwrap();
    assert_eq!(stats.input, n);
    assert_eq!(stats.input, stats.kept + stats.removed, "{stats:#?}");
    assert!(stats.balanced());
    assert_eq!(kept.len() as u64, stats.kept);
    let ids: Vec<&str> = kept.iter().map(|d| d.id.as_str()).collect();
    for gone in ["dup-exact", "dup-near", "spam", "short", "german", "empty"] {
        assert!(!ids.contains(&gone), "{gone} should be removed: {:#?}", stats.removed_by_step);
    }
    assert!(ids.contains(&"p3") && ids.contains(&"p5") && ids.contains(&"code"));
    let pii = kept.iter().find(|d| d.id == "pii").unwrap();
    assert!(pii.text.contains("<EMAIL>") && pii.text.contains("<PHONE>") && !pii.text.contains("jane.doe"), "{}", pii.text);
    let by = &stats.removed_by_step;
    assert_eq!(by["exact_dedup"]["exact_duplicate"], 1);
    assert_eq!(by["minhash_dedup"]["near_duplicate"], 1);
    assert_eq!(by["normalize"]["empty"], 1);

    // Files: kept and excluded JSONL, stats.json with the totals, report.md with pictures.
    let kept_lines = fs::read_to_string(out.join("kept/part-00000.jsonl")).unwrap();
    assert_eq!(kept_lines.lines().count() as u64, stats.kept);
    let first: serde_json::Value = serde_json::from_str(kept_lines.lines().next().unwrap()).unwrap();
    assert!(first["text"].is_string());
    let excluded = fs::read_to_string(out.join("excluded/part-00000.jsonl")).unwrap();
    assert_eq!(excluded.lines().count() as u64, stats.removed);
    let ex: serde_json::Value = serde_json::from_str(excluded.lines().next().unwrap()).unwrap();
    assert!(ex["step"].is_string() && ex["reason"].is_string() && ex["text"].is_string());
    let sj: serde_json::Value = serde_json::from_str(&fs::read_to_string(out.join("stats.json")).unwrap()).unwrap();
    for k in ["input", "kept", "removed", "rejected"] {
        assert!(sj[k].is_u64(), "stats.json lacks {k}");
    }
    assert_eq!(sj["balanced"], true);
    let report = fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("exact_duplicate") && report.contains("plots/"));
    let svgs = fs::read_dir(out.join("plots")).unwrap().count();
    assert!(svgs >= 2, "{svgs} pictures");
}

#[test]
fn results_do_not_depend_on_thread_count_or_batch_size() {
    let cfg = PipelineConfig::default_pipeline();
    let (a, _) = run_pipeline(corpus(), &cfg, None).unwrap();
    let small = PipelineConfig { batch_docs: 3, ..PipelineConfig::default_pipeline() };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let (b, _) = pool.install(|| run_pipeline(corpus(), &small, None).unwrap());
    assert_eq!(a, b);
}

fn write_inputs(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    for f in 0..6 {
        let lines: String = (0..10)
            .map(|i| serde_json::json!({ "text": prose(f * 10 + i) }).to_string() + "\n")
            .collect();
        fs::write(dir.join(format!("part{f}.jsonl")), format!("{lines}{{broken\n")).unwrap();
    }
    fs::write(dir.join("copy.jsonl"), serde_json::json!({ "text": prose(0) }).to_string() + "\n").unwrap();
}

#[test]
fn streaming_shards_resume_and_merge() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_inputs(&input);
    let out = dir.path().join("out");
    let cfg = PipelineConfig {
        sources: vec![SourceConfig { name: "web".into(), paths: vec![input.clone()], ..Default::default() }],
        batch_docs: 4,
        ..PipelineConfig::default_pipeline()
    };
    let mut total_in = 0;
    for i in 0..3 {
        let s = run_configured(&cfg, &out, &RunOptions { shard: Some((i, 3)), force: false }, None).unwrap();
        assert!(s.balanced());
        total_in += s.input + s.rejected;
    }
    assert_eq!(total_in, 61 + 6, "60 documents + 1 copy + 6 broken lines");
    let merged: serde_json::Value = serde_json::from_str(&fs::read_to_string(out.join("stats.json")).unwrap()).unwrap();
    assert_eq!(merged["input"], 61);
    assert_eq!(merged["rejected"], 6);
    assert_eq!(merged["rejected_by_reason"]["broken_json"], 6);
    assert_eq!(merged["balanced"], true);
    assert_eq!(fs::read_dir(out.join("kept")).unwrap().count(), 3);
    // A rerun skips completed shards (outputs untouched) ...
    let before = fs::metadata(out.join("kept/part-00001-of-00003.jsonl")).unwrap().modified().unwrap();
    let again = run_configured(&cfg, &out, &RunOptions { shard: Some((1, 3)), force: false }, None).unwrap();
    assert_eq!(fs::metadata(out.join("kept/part-00001-of-00003.jsonl")).unwrap().modified().unwrap(), before);
    assert!(again.input > 0);
    // ... and a killed run's leftovers (temp files, work folder) never look complete.
    fs::write(out.join("kept/.part-00002-of-00003.jsonl.999.tmp"), "half").unwrap();
    fs::remove_file(out.join("done/00002-of-00003.json")).unwrap();
    run_configured(&cfg, &out, &RunOptions { shard: Some((2, 3)), force: false }, None).unwrap();
    assert!(!out.join("kept/.part-00002-of-00003.jsonl.999.tmp").exists());
    assert!(!out.join(".work-00002-of-00003").exists());
}

#[test]
fn near_duplicates_meet_precision_and_recall_targets() {
    let r = near_duplicate_eval(40, 300, &MinHashConfig::default(), 7);
    eprintln!("{r:#?}");
    let long = near_duplicate_eval(10, 1500, &MinHashConfig::default(), 8);
    eprintln!("{long:#?}");
    assert!(r.true_pairs > 100, "{r:?}");
    assert!(r.recall >= 0.95, "recall {}", r.recall);
    assert!(r.precision >= 0.95, "precision {}", r.precision);
    // Long documents: the sketch cannot decide pairs near 0.8; exact verification must.
    assert!(long.exact_checks > 0, "{long:?}");
    assert!(long.recall >= 0.95 && long.precision >= 0.95, "{long:?}");
}

#[test]
fn privacy_recall_per_kind_and_clean_control() {
    let r = privacy_eval(200, 11);
    eprintln!("{r:#?}");
    for (kind, (_, _, rec)) in &r.recall {
        assert!(*rec >= 0.95, "{kind}: recall {rec}");
    }
    assert_eq!(r.control_replacements, 0, "{:#?}", r.control_examples);
}

#[test]
fn quickstart_preset_on_a_fake_registry_removes_licence_copies_and_emails() {
    let dir = tempfile::tempdir().unwrap();
    let idx = dir.path().join("registry/src/index.crates.io-0000000000000000");
    let mit = "MIT License\n\nPermission is hereby granted, free of charge, to any person obtaining a copy of this software and associated documentation files (the \"Software\"), to deal in the Software without restriction, including without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software.\n\nTHE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY.\n";
    let mut lock = String::from("version = 4\n");
    for (i, name) in ["alpha", "beta", "gamma"].iter().enumerate() {
        let root = idx.join(format!("{name}-1.0.{i}"));
        fs::create_dir_all(root.join("src")).unwrap();
        fs::write(root.join("LICENSE-MIT"), format!("Copyright (c) 20{i}0 The {name} authors\n\n{mit}")).unwrap();
        fs::write(
            root.join("README.md"),
            format!("# {name}\n\nThe {name} crate parses configuration files quickly and reports errors with their line numbers. Written by Jane Roe <jane.roe{i}@example.com>; see the documentation for the full list of supported formats and options.\n"),
        )
        .unwrap();
        fs::write(root.join("src/lib.rs"), format!("//! The {name} crate.\n\n/// Parses one entry of {name} format, returning the key and the value it holds.\npub fn parse_{name}(s: &str) -> Option<(&str, &str)> {{\n    s.split_once('=')\n}}\n")).unwrap();
        lock.push_str(&format!("\n[[package]]\nname = \"{name}\"\nversion = \"1.0.{i}\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n"));
    }
    fs::write(dir.path().join("Cargo.lock"), lock).unwrap();
    let (docs, _) = ferrolm_corpus::cargo_registry_documents(&dir.path().join("Cargo.lock"), dir.path()).unwrap();
    let (kept, stats) = run_pipeline(docs, &PipelineConfig::quickstart_default(), None).unwrap();
    assert!(stats.balanced());
    let licences = kept.iter().filter(|d| d.id.ends_with("LICENSE-MIT")).count();
    assert_eq!(licences, 1, "near-duplicate licences collapse to one: {:#?}", stats.removed_by_step);
    assert_eq!(kept.iter().filter(|d| d.id.ends_with("src/lib.rs")).count(), 3, "code is kept");
    let readmes: Vec<_> = kept.iter().filter(|d| d.id.ends_with("README.md")).collect();
    assert_eq!(readmes.len(), 3);
    for r in readmes {
        assert!(r.text.contains("<EMAIL>") && !r.text.contains("@example.com"), "{}", r.text);
    }
}
