//! The index end to end: BM25 scores against hand computation, round trip, incremental
//! updates, refusals (format version, embedding model), SQuAD sources and evaluation, bad input.

use ferrolm_rag::index::{set_vectors, MANIFEST_FILE};
use ferrolm_rag::{build_index, evaluate_retrieval, ChunkOptions, IndexOptions, RagIndex, RegistrySource, Sources};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

fn sources(paths: &[&Path]) -> Sources {
    Sources { paths: paths.iter().map(|p| p.to_path_buf()).collect(), registry: None }
}

fn opts() -> IndexOptions {
    IndexOptions { threads: 1, ..Default::default() }
}

/// tantivy's BM25, computed here in f64: idf = ln(1 + (N - n + 0.5) / (n + 0.5)),
/// tf part = tf (k1 + 1) / (tf + k1 (1 - b + b dl / avgdl)), k1 = 1.2, b = 0.75, where dl is the
/// document's token count rounded down to tantivy's field-norm table (exact up to 40, then
/// 40, 42, 44, 46, ...) and avgdl the exact mean token count.
fn bm25(tf: f64, dl_quantised: f64, n: f64, big_n: f64, avgdl: f64) -> f64 {
    let (k1, b) = (1.2, 0.75);
    let idf = (1.0 + (big_n - n + 0.5) / (n + 0.5)).ln();
    idf * tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * dl_quantised / avgdl))
}

#[test]
fn bm25_scores_match_the_hand_computed_formula() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    write(&docs, "d1.txt", "Apple banana apple");
    write(&docs, "d2.txt", "banana, CHERRY!");
    write(&docs, "d3.txt", "cherry cherry cherry apple durian");
    // 45 tokens: tantivy stores its length as 44 (the table has 44 and 46).
    let filler: Vec<String> = (0..44).map(|i| format!("filler{i}")).collect();
    write(&docs, "d4.txt", &format!("apple {}", filler.join(" ")));
    let out = tmp.path().join("index");
    let report = build_index(&out, &sources(&[&docs]), &opts()).unwrap();
    assert_eq!(report.passages, 4);
    let index = RagIndex::open(&out, None).unwrap();
    let (big_n, avgdl) = (4.0, (3.0 + 2.0 + 5.0 + 45.0) / 4.0);
    let score_of = |query: &str| -> BTreeMap<String, f64> {
        index
            .search(query, 10)
            .unwrap()
            .into_iter()
            .map(|h| (Path::new(&h.passage.doc).file_name().unwrap().to_string_lossy().into_owned(), h.score as f64))
            .collect()
    };
    let close = |got: f64, want: f64| (got - want).abs() <= 1e-5 * want.abs().max(1.0);

    // "apple": in d1 (tf 2, dl 3), d3 (tf 1, dl 5), d4 (tf 1, dl 45 -> 44); n = 3.
    let s = score_of("apple");
    assert_eq!(s.len(), 3);
    assert!(close(s["d1.txt"], bm25(2.0, 3.0, 3.0, big_n, avgdl)), "{s:?}");
    assert!(close(s["d3.txt"], bm25(1.0, 5.0, 3.0, big_n, avgdl)), "{s:?}");
    let d4 = bm25(1.0, 44.0, 3.0, big_n, avgdl);
    assert!(close(s["d4.txt"], d4), "{} vs {d4}", s["d4.txt"]);
    // The unquantised length would give a score the tolerance tells apart.
    assert!(!close(s["d4.txt"], bm25(1.0, 45.0, 3.0, big_n, avgdl)));

    // Two terms add up; case and punctuation are the tokenizer's business.
    let s = score_of("Cherry banana?");
    let d2 = bm25(1.0, 2.0, 2.0, big_n, avgdl) + bm25(1.0, 2.0, 2.0, big_n, avgdl);
    let d3 = bm25(3.0, 5.0, 2.0, big_n, avgdl);
    let d1 = bm25(1.0, 3.0, 2.0, big_n, avgdl);
    assert!(close(s["d2.txt"], d2) && close(s["d3.txt"], d3) && close(s["d1.txt"], d1), "{s:?}");
    // A repeated query word counts twice (as in rank_bm25 and Lucene's parser).
    let s = score_of("durian durian");
    assert!(close(s["d3.txt"], 2.0 * bm25(1.0, 5.0, 1.0, big_n, avgdl)), "{s:?}");
    // Ranking order follows the scores.
    let hits = index.search("apple", 3).unwrap();
    assert!(hits[0].score >= hits[1].score && hits[1].score >= hits[2].score);
    assert!(index.search("zebra", 5).unwrap().is_empty());
    assert!(index.search("  ,;  ", 5).unwrap().is_empty());
}

#[test]
fn round_trip_keeps_sources_lines_and_text() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    let md = "# Normans\n\nThe Normans were descended from Norse raiders.\n\n## Rollo\n\nRollo was their leader and swore fealty to Charles III.\n";
    write(&docs, "history.md", md);
    write(&docs, "src/lib.rs", "/// Returns the answer.\npub fn answer() -> u32 {\n    42\n}\n\npub struct Viking;\n");
    write(&docs, "notes.jsonl", "{\"id\": \"n1\", \"text\": \"Frankish nobles and Viking settlers\"}\n{\"id\": \"n2\", \"text\": \"a second note\"}\n");
    let out = tmp.path().join("index");
    let chunk = ChunkOptions { passage_chars: 80, overlap: 0 };
    let report = build_index(&out, &sources(&[&docs]), &IndexOptions { chunk, threads: 1, ..Default::default() }).unwrap();
    assert_eq!((report.files, report.files_added, report.read.rejected), (3, 3, 0));
    let index = RagIndex::open(&out, None).unwrap();
    let passages = index.passages().unwrap();
    assert_eq!(passages.len() as u64, report.passages);
    // Every passage of a whole file is the file's text between its recorded lines.
    for p in &passages {
        if p.doc.ends_with("history.md") || p.doc.ends_with("lib.rs") {
            let file = std::fs::read_to_string(&p.doc).unwrap();
            let lines: Vec<&str> = file.lines().collect();
            let span = lines[p.line_start as usize - 1..p.line_end as usize].join("\n");
            assert_eq!(span.trim(), p.text, "passage {} of {}", p.id, p.doc);
        }
    }
    let hit = &index.search("who swore fealty", 1).unwrap()[0];
    assert!(hit.passage.doc.ends_with("history.md"));
    assert!(hit.passage.text.starts_with("## Rollo"), "{:?}", hit.passage.text);
    assert_eq!((hit.passage.line_start, hit.passage.line_end), (5, 7));
    let hit = &index.search("answer", 1).unwrap()[0];
    assert!(hit.passage.doc.ends_with("lib.rs") && hit.passage.text.starts_with("/// Returns"));
    let hit = &index.search("frankish", 1).unwrap()[0];
    assert_eq!(hit.passage.doc, "n1");
    assert_eq!(index.passage(hit.passage.id).unwrap().unwrap(), hit.passage);
    assert!(index.passage(10_000).unwrap().is_none());
}

/// (document, text) of every passage with its id.
fn by_doc(index: &RagIndex) -> Vec<(u64, String, String)> {
    index.passages().unwrap().into_iter().map(|p| (p.id, p.doc, p.text)).collect()
}

#[test]
fn reindexing_touches_only_changed_files() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    write(&docs, "a.md", "Alpha keeps its passages.\n\nA second alpha paragraph.\n");
    write(&docs, "b.md", "Bravo before the change.\n");
    write(&docs, "c.md", "Charlie will be removed.\n");
    let out = tmp.path().join("index");
    build_index(&out, &sources(&[&docs]), &opts()).unwrap();
    let before = by_doc(&RagIndex::open(&out, None).unwrap());

    // Nothing changed: nothing read, nothing added.
    let r = build_index(&out, &sources(&[&docs]), &opts()).unwrap();
    assert_eq!((r.files_unchanged, r.passages_added, r.passages_removed, r.bytes_read), (3, 0, 0, 0));
    assert_eq!(by_doc(&RagIndex::open(&out, None).unwrap()), before);

    write(&docs, "b.md", "Bravo after the change, with delta words.\n");
    std::fs::remove_file(docs.join("c.md")).unwrap();
    write(&docs, "d.md", "Delta is new here.\n");
    let r = build_index(&out, &sources(&[&docs]), &opts()).unwrap();
    assert_eq!((r.files_unchanged, r.files_updated, r.files_removed, r.files_added), (1, 1, 1, 1));
    let b_bytes = std::fs::metadata(docs.join("b.md")).unwrap().len();
    let d_bytes = std::fs::metadata(docs.join("d.md")).unwrap().len();
    assert_eq!(r.bytes_read, b_bytes + d_bytes, "only the changed and new files are read");
    let index = RagIndex::open(&out, None).unwrap();
    let after = by_doc(&index);
    // a.md's passages are the same passages (same ids), b's are new, c's are gone.
    let of = |v: &[(u64, String, String)], f: &str| v.iter().filter(|p| p.1.ends_with(f)).cloned().collect::<Vec<_>>();
    assert_eq!(of(&before, "a.md"), of(&after, "a.md"));
    assert!(of(&after, "c.md").is_empty());
    let (old_b, new_b) = (of(&before, "b.md"), of(&after, "b.md"));
    assert_eq!(new_b.len(), 1);
    assert!(new_b[0].0 > before.iter().map(|p| p.0).max().unwrap(), "new passages get new ids");
    assert_ne!(old_b[0].2, new_b[0].2);
    assert!(index.search("charlie", 5).unwrap().is_empty());
    assert!(index.search("before", 5).unwrap().is_empty());
    assert_eq!(index.search("delta", 5).unwrap().len(), 2);

    // Scores equal those of a fresh build of the same files: deleted passages no longer count
    // in BM25's statistics.
    let fresh = tmp.path().join("fresh");
    build_index(&fresh, &sources(&[&docs]), &opts()).unwrap();
    let fresh = RagIndex::open(&fresh, None).unwrap();
    for q in ["alpha passages", "delta", "bravo change"] {
        let a: Vec<(String, f32)> = index.search(q, 5).unwrap().into_iter().map(|h| (h.passage.doc, h.score)).collect();
        let b: Vec<(String, f32)> = fresh.search(q, 5).unwrap().into_iter().map(|h| (h.passage.doc, h.score)).collect();
        assert_eq!(a, b, "query {q:?}");
    }

    // Other passage sizes re-make every passage.
    let other = IndexOptions { chunk: ChunkOptions { passage_chars: 500, overlap: 50 }, threads: 1, ..Default::default() };
    let r = build_index(&out, &sources(&[&docs]), &other).unwrap();
    assert_eq!((r.files_added, r.files_unchanged), (3, 0));
}

#[test]
fn other_format_versions_and_embedding_models_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    write(&docs, "a.txt", "one passage about longships");
    write(&docs, "b.txt", "another passage about fjords");
    let out = tmp.path().join("index");
    build_index(&out, &sources(&[&docs]), &opts()).unwrap();
    let ids: Vec<u64> = RagIndex::open(&out, None).unwrap().passages().unwrap().iter().map(|p| p.id).collect();

    // No vectors yet: asking for a model is refused, naming both sides.
    let err = RagIndex::open(&out, Some("enc-small")).err().unwrap().to_string();
    assert!(err.contains("none") && err.contains("enc-small") && err.contains(MANIFEST_FILE), "{err}");

    set_vectors(&out, "enc-small", 2, &ids, &[1.0, 0.0, 0.0, 1.0]).unwrap();
    let index = RagIndex::open(&out, Some("enc-small")).unwrap();
    assert_eq!(index.dense(&[0.1, 0.9], 1).unwrap()[0].0, ids[1]);
    let fused = index.hybrid("longships", &[0.1, 0.9], 2).unwrap();
    // a.txt: first by BM25 (b.txt lacks the word), second by cosine; b.txt: first by cosine.
    assert_eq!(fused.len(), 2);
    assert_eq!(fused[0].0, ids[0]);
    assert!((fused[0].1 - (1.0 / 61.0 + 1.0 / 62.0)).abs() < 1e-12);
    assert!((fused[1].1 - 1.0 / 61.0).abs() < 1e-12);
    let err = RagIndex::open(&out, Some("enc-large")).err().unwrap().to_string();
    assert!(err.contains("enc-small") && err.contains("enc-large"), "{err}");
    // Vectors of another model cannot silently replace these.
    assert!(set_vectors(&out, "enc-large", 2, &ids, &[1.0, 0.0, 0.0, 1.0]).is_err());
    // Re-indexing a changed file drops the vector of its old passage.
    write(&docs, "b.txt", "changed passage");
    build_index(&out, &sources(&[&docs]), &opts()).unwrap();
    let index = RagIndex::open(&out, Some("enc-small")).unwrap();
    assert_eq!(index.vectors().unwrap().len(), 1);

    // A manifest from another format version is refused by search and by indexing.
    let path = out.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"format_version\": 1", "\"format_version\": 999")).unwrap();
    let err = RagIndex::open(&out, None).err().unwrap().to_string();
    assert!(err.contains("version 999") && err.contains("rebuild"), "{err}");
    assert!(build_index(&out, &sources(&[&docs]), &opts()).is_err());
}

const SQUAD: &str = r#"{"version": "v2.0", "data": [
 {"title": "Normans", "paragraphs": [
   {"context": "The Normans gave their name to Normandy, a region in France. They were descended from Norse raiders.",
    "qas": [
      {"id": "q1", "question": "In what country is Normandy located?", "answers": [{"text": "France", "answer_start": 55}], "is_impossible": false},
      {"id": "q2", "question": "Who gave their name to Normandy in the 1000s?", "answers": [], "is_impossible": true}
    ]},
   {"context": "Rollo swore fealty to King Charles III of West Francia after the siege of Chartres.",
    "qas": [
      {"id": "q3", "question": "Who did Rollo swear fealty to?", "answers": [{"text": "King Charles III", "answer_start": 22}], "is_impossible": false},
      {"id": "q4", "answers": [{"text": "x", "answer_start": 0}]},
      {"id": "q5", "question": "Broken answers?", "answers": "France", "is_impossible": false}
    ]},
   {"context": "   ", "qas": []}
 ]},
 {"title": "Complexity", "paragraphs": [
   {"context": "Computational complexity theory classifies problems by their inherent difficulty.",
    "qas": [{"id": "q6", "question": "What does complexity theory classify problems by?", "answers": [{"text": "inherent difficulty", "answer_start": 60}]}]}
 ]}
]}"#;

#[test]
fn squad_paragraphs_are_documents_and_retrieval_is_evaluated() {
    let tmp = tempfile::tempdir().unwrap();
    let squad = write(tmp.path(), "dev.json", SQUAD);
    let out = tmp.path().join("index");
    let r = build_index(&out, &sources(&[&squad]), &opts()).unwrap();
    assert_eq!(r.read.documents, 3);
    assert_eq!(r.read.rejected_by_reason.get("empty_document"), Some(&1));
    assert!(r.read.examples.iter().any(|e| e.detail.contains("data[0].paragraphs[2]")), "{:?}", r.read.examples);
    let index = RagIndex::open(&out, None).unwrap();
    let docs: Vec<String> = index.passages().unwrap().into_iter().map(|p| p.doc).collect();
    assert_eq!(docs, ["squad:Normans/0", "squad:Normans/1", "squad:Complexity/0"]);

    let qa = write(tmp.path(), "qa.json", SQUAD);
    let rep = evaluate_retrieval(&index, &out, &qa).unwrap();
    // q4 (no question) and q5 (answers not an array) are reported with id and position.
    assert_eq!(rep.malformed, 2);
    assert!(rep.problems.iter().any(|p| p.id.as_deref() == Some("q4") && p.position == "data[0].paragraphs[1].qas[1]"));
    assert!(rep.problems.iter().any(|p| p.id.as_deref() == Some("q5") && p.reason.contains("not an array")));
    assert_eq!((rep.questions, rep.scored, rep.not_indexed), (4, 4, 0));
    assert_eq!((rep.answerable.scored, rep.unanswerable.scored), (3, 1));
    // Each question's own paragraph ranks first on this toy set.
    assert_eq!(rep.all.recall_at_1, 1.0);
    assert_eq!(rep.all.mrr, 1.0);

    // Questions on paragraphs the index lacks are counted, not scored.
    let docs = tmp.path().join("docs");
    write(&docs, "x.txt", "Normandy France Rollo");
    let other = tmp.path().join("other");
    build_index(&other, &sources(&[&docs]), &opts()).unwrap();
    let rep = evaluate_retrieval(&RagIndex::open(&other, None).unwrap(), &other, &qa).unwrap();
    assert_eq!((rep.scored, rep.not_indexed), (0, 4));
}

#[test]
fn malformed_qa_files_are_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    write(&docs, "a.txt", "text");
    let out = tmp.path().join("index");
    build_index(&out, &sources(&[&docs]), &opts()).unwrap();
    let index = RagIndex::open(&out, None).unwrap();
    let broken = write(tmp.path(), "broken.json", "{\"data\": [");
    let err = evaluate_retrieval(&index, &out, &broken).err().unwrap().to_string();
    assert!(err.contains("broken.json") && err.contains("not valid JSON"), "{err}");
    let nodata = write(tmp.path(), "nodata.json", "{\"version\": 2}");
    let err = evaluate_retrieval(&index, &out, &nodata).err().unwrap().to_string();
    assert!(err.contains("nodata.json") && err.contains("\"data\""), "{err}");
    let missing = tmp.path().join("missing.json");
    let err = evaluate_retrieval(&index, &out, &missing).err().unwrap().to_string();
    assert!(err.contains("missing.json"), "{err}");
}

#[test]
fn empty_and_unreadable_documents_are_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    write(&docs, "good.txt", "a good document");
    write(&docs, "empty.txt", "");
    write(&docs, "blank.md", " \n\n\t\n");
    std::fs::write(docs.join("latin1.txt"), b"caf\xe9").unwrap();
    write(&docs, "lines.jsonl", "{\"text\": \"fine\"}\n{broken\n{\"text\": \"\"}\n");
    write(&docs, "image.png", "not read");
    let out = tmp.path().join("index");
    let r = build_index(&out, &sources(&[&docs]), &opts()).unwrap();
    let reasons = &r.read.rejected_by_reason;
    assert_eq!(reasons.get("empty_document"), Some(&3), "{reasons:?}");
    assert_eq!(reasons.get("bad_utf8"), Some(&1), "{reasons:?}");
    assert_eq!(reasons.get("broken_json"), Some(&1), "{reasons:?}");
    assert_eq!(r.read.rejected, 5);
    assert_eq!(r.read.documents, 2);
    assert_eq!(r.read.skipped_files, 1);
    assert_eq!(r.passages, 2);
    assert!(r.read.examples.iter().any(|e| e.file.ends_with("latin1.txt")));
    // No inputs at all is an error, not an empty index.
    let none = tmp.path().join("none");
    std::fs::create_dir_all(&none).unwrap();
    assert!(build_index(&tmp.path().join("i2"), &sources(&[&none]), &opts()).is_err());
    assert!(build_index(&tmp.path().join("i3"), &sources(&[&tmp.path().join("nope")]), &opts()).unwrap_err().to_string().contains("nope"));
}

#[test]
fn the_cargo_registry_is_a_source() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("cargo");
    write(&home, "registry/src/index.example-1/tinycrate-0.1.0/src/lib.rs", "//! Tiny crate docs.\n\n/// Sums.\npub fn sum(a: u8, b: u8) -> u8 { a + b }\n");
    write(&home, "registry/src/index.example-1/tinycrate-0.1.0/README.md", "# tinycrate\n\nAdds small numbers.\n");
    let lock = write(tmp.path(), "Cargo.lock", "version = 4\n\n[[package]]\nname = \"tinycrate\"\nversion = \"0.1.0\"\nsource = \"registry+https://example.invalid/index\"\n\n[[package]]\nname = \"absent\"\nversion = \"1.0.0\"\nsource = \"registry+https://example.invalid/index\"\n");
    let out = tmp.path().join("index");
    let srcs = Sources { paths: vec![], registry: Some(RegistrySource { lockfile: lock, cargo_home: home }) };
    let r = build_index(&out, &srcs, &opts()).unwrap();
    assert_eq!(r.files, 2);
    assert_eq!(r.read.missing_crates, ["absent-1.0.0"]);
    let index = RagIndex::open(&out, None).unwrap();
    let hit = &index.search("sums", 1).unwrap()[0];
    assert!(hit.passage.doc.starts_with("tinycrate-0.1.0/src/lib.rs"), "{}", hit.passage.doc);
    assert!(!index.search("small numbers", 1).unwrap().is_empty());
}
