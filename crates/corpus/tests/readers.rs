//! Readers on generated fixtures: a fake Cargo registry and mixed-format folders.

use ferrolm_corpus::{cargo_registry_documents, read_paths, ReadOptions};
use std::fs;
use std::io::Write;
use std::path::Path;

fn write(p: &Path, s: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, s).unwrap();
}

fn fake_registry(home: &Path) -> std::path::PathBuf {
    let idx = home.join("registry/src/index.crates.io-0000000000000000");
    let other = home.join("registry/src/other-registry-1111");
    write(&idx.join("alpha-1.0.0/src/lib.rs"), b"//! Alpha does things.\n\n/// Adds one.\npub fn add(x: u32) -> u32 { x + 1 }\n");
    write(&idx.join("alpha-1.0.0/README.md"), b"# alpha\n\nA crate.\n");
    write(&idx.join("alpha-1.0.0/LICENSE-MIT"), b"Permission is hereby granted, free of charge\n");
    write(&idx.join("alpha-1.0.0/Cargo.toml"), b"[package]\nname='alpha'\n");
    write(&idx.join("alpha-1.0.0/.hidden.rs"), b"fn hidden() {}\n");
    write(&idx.join("alpha-0.9.0/src/lib.rs"), b"fn old() {}\n"); // not in the lockfile
    write(&other.join("beta-0.2.0/src/main.rs"), b"fn main() {}\n"); // found in a second registry dir
    write(&other.join("beta-0.2.0/src/bad.rs"), b"fn bad() { \xff }\n");
    let lock = home.join("Cargo.lock");
    write(
        &lock,
        br#"version = 4

[[package]]
name = "alpha"
version = "1.0.0"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "beta"
version = "0.2.0"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "gamma"
version = "3.0.0"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "myworkspace"
version = "0.1.0"
"#,
    );
    lock
}

#[test]
fn cargo_registry_reads_locked_crates_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let lock = fake_registry(dir.path());
    let (docs, stats) = cargo_registry_documents(&lock, dir.path()).unwrap();
    let ids: Vec<(&str, &str)> = docs.iter().map(|d| (d.id.as_str(), d.source.as_str())).collect();
    assert_eq!(
        ids,
        vec![
            ("alpha-1.0.0/LICENSE-MIT", "prose"),
            ("alpha-1.0.0/README.md", "prose"),
            ("alpha-1.0.0/src/lib.rs", "code"),
            ("alpha-1.0.0/src/lib.rs#doc", "prose"),
            ("beta-0.2.0/src/main.rs", "code"),
        ]
    );
    assert_eq!(docs[3].text, "Alpha does things.\n\nAdds one.\n");
    assert_eq!(docs[2].meta["crate"], "alpha");
    assert_eq!(stats.missing_crates, vec!["gamma-3.0.0".to_string()]);
    assert_eq!(stats.rejected, 1, "bad UTF-8 file is counted: {:?}", stats.examples);
    assert_eq!(stats.examples[0].reason, "bad_utf8");
    assert!(stats.examples[0].file.ends_with("beta-0.2.0/src/bad.rs"));
    assert_eq!(stats.documents, 5);
    // Same inputs, same corpus.
    let (again, _) = cargo_registry_documents(&lock, dir.path()).unwrap();
    assert_eq!(docs, again);
}

#[test]
fn missing_lockfile_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = cargo_registry_documents(&dir.path().join("nope.lock"), dir.path()).unwrap_err();
    assert!(err.to_string().contains("nope.lock"), "{err}");
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn read_paths_handles_formats_and_counts_every_malformed_record() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("a.txt"), b"plain text");
    write(&d.join("b.md"), b"# title");
    write(&d.join("c.rs"), b"fn c() {}");
    write(&d.join("skip.bin"), b"\x00\x01");
    write(&d.join("bad.txt"), b"ok \xc3\x28 bad");
    write(
        &d.join("d.jsonl"),
        b"{\"text\": \"one\", \"lang\": \"en\"}\n\n{broken\n{\"body\": \"no text\"}\n{\"text\": 5}\n\"str\"\n{\"text\": \"\xff\"}\n{\"text\": \"last\", \"id\": \"x7\"}\n",
    );
    let lines: String = (0..200).map(|i| format!("{{\"text\": \"gz line {i}\"}}\n")).collect();
    let full = gz(lines.as_bytes());
    write(&d.join("sub/e.jsonl.gz"), &full);
    write(&d.join("sub/f.jsonl.gz"), &full[..full.len() / 2]);
    write(&d.join("sub/g.txt.zst"), &zstd::encode_all(&b"zstd text"[..], 3).unwrap());
    write(&d.join("sub/h.txt.gz"), &gz(b"some gzipped prose")[..10]);

    let (docs, stats) = read_paths(&[d.to_path_buf()], &ReadOptions::default()).unwrap();
    let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
    assert_eq!(&texts[..6], &["plain text", "# title", "fn c() {}", "one", "last", "gz line 0"]);
    assert!(texts.contains(&"zstd text"));
    assert_eq!(docs[2].source, "code");
    assert_eq!(docs[3].meta["lang"], "en");
    assert_eq!(docs[4].id, "x7");
    assert!(docs[3].id.ends_with("d.jsonl:1"));
    assert_eq!(stats.skipped_files, 1);

    let by = &stats.rejected_by_reason;
    assert_eq!(by.get("bad_utf8"), Some(&2), "{by:?}");
    assert_eq!(by.get("broken_json"), Some(&2), "{by:?}");
    assert_eq!(by.get("missing_field"), Some(&1));
    assert_eq!(by.get("field_not_string"), Some(&1));
    assert_eq!(by.get("truncated_archive"), Some(&2), "{:?}", stats.examples);
    let broken = stats.examples.iter().find(|r| r.reason == "broken_json").unwrap();
    assert!(broken.file.ends_with("d.jsonl") && broken.line == Some(3), "{broken}");
    let trunc = stats.examples.iter().find(|r| r.file.ends_with("f.jsonl.gz")).unwrap();
    assert!(trunc.line.unwrap() > 1);
    // Accounting: every record is a document or a rejection.
    assert_eq!(stats.documents as usize, docs.len());
    let gz_kept = docs.iter().filter(|d| d.id.contains("f.jsonl.gz")).count() as u64;
    assert_eq!(gz_kept + 1, trunc.line.unwrap(), "records before the truncation are kept");
}

#[test]
fn jsonl_text_field_and_source_are_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.jsonl");
    write(&p, b"{\"content\": \"hello\", \"source\": \"web\"}\n");
    let opts = ReadOptions { text_field: "content".into(), ..Default::default() };
    let (docs, _) = read_paths(std::slice::from_ref(&p), &opts).unwrap();
    assert_eq!((docs[0].text.as_str(), docs[0].source.as_str()), ("hello", "web"));
    let opts = ReadOptions { text_field: "content".into(), source: Some("mine".into()), ..Default::default() };
    let (docs, _) = read_paths(&[p], &opts).unwrap();
    assert_eq!(docs[0].source, "mine");
}
