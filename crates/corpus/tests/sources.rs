//! Source selection: include/exclude globs on folder sources.

use ferrolm_corpus::read::{expand_paths_filtered, PathFilter};
use ferrolm_corpus::{run_configured, PipelineConfig, RunOptions};
use std::path::{Path, PathBuf};

/// A small tree with Markdown at several depths, a vendored copy, build output and a hidden file.
fn tree(root: &Path) {
    let files = [
        ("a.md", "alpha"),
        ("b.txt", "bravo"),
        ("notes/c.md", "charlie"),
        ("notes/deep/d.md", "delta"),
        ("notes/image.png", "not text"),
        ("src/main.rs", "fn main() {}"),
        ("src/target/y.md", "yankee"),
        ("target/x.md", "xray"),
        ("vendor/e.md", "echo"),
        ("vendor/f.jsonl", "{\"text\": \"foxtrot\"}\n"),
        (".hidden.md", "hidden"),
    ];
    for (rel, text) in files {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

fn rel_list(root: &Path, include: &[&str], exclude: &[&str]) -> (Vec<String>, u64) {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let filter = PathFilter::new(&s(include), &s(exclude)).unwrap();
    let (specs, skipped) = expand_paths_filtered(&[root.to_path_buf()], &filter).unwrap();
    let rels = specs.iter().map(|sp| sp.path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/")).collect();
    (rels, skipped)
}

#[test]
fn folder_globs_select_files_in_walk_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("corpus");
    tree(&root);

    // No globs: every supported file, sorted walk; the .png is skipped (counted), the hidden file ignored.
    let (all, skipped) = rel_list(&root, &[], &[]);
    assert_eq!(all, ["a.md", "b.txt", "notes/c.md", "notes/deep/d.md", "src/main.rs", "src/target/y.md", "target/x.md", "vendor/e.md", "vendor/f.jsonl"]);
    assert_eq!(skipped, 1);

    // `**` crosses directories, `*` does not.
    let (md, skipped) = rel_list(&root, &["**/*.md"], &[]);
    assert_eq!(md, ["a.md", "notes/c.md", "notes/deep/d.md", "src/target/y.md", "target/x.md", "vendor/e.md"]);
    assert_eq!(skipped, 0, "files left out by the globs are not 'unsupported'");
    let (top, _) = rel_list(&root, &["*.md"], &[]);
    assert_eq!(top, ["a.md"]);

    // Excluding a directory by name (root only) or at any depth prunes everything below it.
    let (picked, _) = rel_list(&root, &["**/*.md", "**/*.jsonl"], &["vendor", "**/target"]);
    assert_eq!(picked, ["a.md", "notes/c.md", "notes/deep/d.md"]);
    let (root_target_only, _) = rel_list(&root, &["**/*.md"], &["target"]);
    assert_eq!(root_target_only, ["a.md", "notes/c.md", "notes/deep/d.md", "src/target/y.md", "vendor/e.md"]);

    // Exclude alone; character classes and alternatives.
    let (no_deep, skipped) = rel_list(&root, &[], &["notes/deep/*.md", "**/*.{rs,png}"]);
    assert_eq!(no_deep, ["a.md", "b.txt", "notes/c.md", "src/target/y.md", "target/x.md", "vendor/e.md", "vendor/f.jsonl"]);
    assert_eq!(skipped, 0);
    let (class, _) = rel_list(&root, &["[ab].*"], &[]);
    assert_eq!(class, ["a.md", "b.txt"]);

    // A file named explicitly is read whatever the globs say.
    let filter = PathFilter::new(&["**/*.md".into()], &["**".into()]).unwrap();
    let (specs, _) = expand_paths_filtered(&[root.join("b.txt")], &filter).unwrap();
    assert_eq!(specs.len(), 1);
}

#[test]
fn bad_glob_is_a_config_error_naming_it() {
    let err = PathFilter::new(&["notes/[a-".into()], &[]).unwrap_err().to_string();
    assert!(err.contains("include glob") && err.contains("notes/[a-"), "{err}");
    let cfg = r#"
[[source]]
name = "web"
paths = ["x"]
exclude = ["{a,b"]
"#;
    let v = toml::Value::Table(cfg.parse().unwrap());
    let err = PipelineConfig::from_toml(&v).unwrap_err().to_string();
    assert!(err.contains("exclude glob") && err.contains("{a,b"), "{err}");
}

#[test]
fn pipeline_source_with_globs_reads_only_chosen_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("corpus");
    tree(&root);
    let out = dir.path().join("out");
    let cfg = format!(
        r#"
write_excluded = false
[[source]]
name = "docs"
paths = [{root:?}]
include = ["**/*.md", "**/*.jsonl"]
exclude = ["**/target", "notes/deep"]
"#,
        root = root.display().to_string()
    );
    let cfg = PipelineConfig::from_toml(&toml::Value::Table(cfg.parse().unwrap())).unwrap();
    let stats = run_configured(&cfg, &out, &RunOptions::default(), None).unwrap();
    assert_eq!(stats.input, 4);
    assert_eq!(stats.kept, 4);
    assert_eq!(stats.skipped_files, 0);
    let kept = std::fs::read_to_string(out.join("kept/part-00000.jsonl")).unwrap();
    let texts: Vec<String> = kept.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].as_str().unwrap().to_string()).collect();
    assert_eq!(texts, ["alpha", "charlie", "echo", "foxtrot"]);
    // The resolved config keeps the globs.
    let resolved = std::fs::read_to_string(out.join("config.resolved.toml")).unwrap();
    assert!(resolved.contains("notes/deep"), "{resolved}");
}

/// Documents with metadata, some removed by exact dedup, so kept/ is a proper subset.
fn jsonl_input(dir: &Path, n: usize) -> PathBuf {
    let p = dir.join("in.jsonl");
    let mut s = String::new();
    for i in 0..n {
        // Every fifth document repeats the previous text: exact duplicates to remove.
        let text = if i % 5 == 4 { format!("document number {} with ünïcode ✓ and a newline\nsecond line", i - 1) } else { format!("document number {i} with ünïcode ✓ and a newline\nsecond line") };
        s.push_str(&serde_json::json!({ "id": format!("doc-{i}"), "text": text, "source": if i % 2 == 0 { "web" } else { "books" }, "score": i as f64 / 2.0, "tags": ["a", "b"] }).to_string());
        s.push('\n');
    }
    std::fs::write(&p, s).unwrap();
    p
}

#[test]
fn parquet_kept_output_round_trips_through_our_reader() {
    use ferrolm_corpus::{DocumentStream, ReadItem, ReadOptions};
    let dir = tempfile::tempdir().unwrap();
    let input = jsonl_input(dir.path(), 23);
    let out = dir.path().join("out");
    let cfg = format!(
        r#"
[[source]]
name = "auto"
paths = [{input:?}]
[[step]]
kind = "exact_dedup"
[output]
kept_format = "both"
[output.parquet]
row_group_docs = 5
compression = "zstd"
"#,
        input = input.display().to_string()
    );
    let cfg = PipelineConfig::from_toml(&toml::Value::Table(cfg.parse().unwrap())).unwrap();
    let stats = run_configured(&cfg, &out, &RunOptions::default(), None).unwrap();
    assert_eq!((stats.input, stats.kept, stats.removed), (23, 19, 4));

    let jsonl: Vec<ferrolm_corpus::Document> = std::fs::read_to_string(out.join("kept/part-00000.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(jsonl.len(), 19);
    let pq = out.join("kept-parquet/part-00000.parquet");
    // No temporaries left beside the committed files.
    let names: Vec<String> = ["kept", "kept-parquet"].iter().flat_map(|d| std::fs::read_dir(out.join(d)).unwrap()).map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");

    // Row groups of 5 documents: 19 = 5 + 5 + 5 + 4.
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(&pq).unwrap()).unwrap();
    let md = reader.metadata();
    let groups: Vec<i64> = md.row_groups().iter().map(|g| g.num_rows()).collect();
    assert_eq!(groups, [5, 5, 5, 4]);
    let cols: Vec<String> = (0..md.file_metadata().schema_descr().num_columns()).map(|i| md.file_metadata().schema_descr().column(i).name().to_string()).collect();
    assert_eq!(cols, ["id", "text", "source", "meta"]);

    // Our reader gives back the same documents, in order, with their metadata unpacked.
    let items: Vec<ReadItem> = DocumentStream::from_paths(std::slice::from_ref(&pq), ReadOptions::default()).unwrap().collect();
    assert_eq!(items.len(), 19);
    for (item, want) in items.iter().zip(&jsonl) {
        let ReadItem::Doc(got) = item else { panic!("rejected: {item:?}") };
        assert_eq!(got.id, want.id);
        assert_eq!(got.text, want.text);
        assert_eq!(got.source, want.source);
        for key in ["score", "tags", "line"] {
            assert_eq!(got.meta.get(key), want.meta.get(key), "meta {key} of {}", want.id);
        }
    }

    // Parquet only: no JSONL, same Parquet content.
    let out2 = dir.path().join("out2");
    let mut cfg2 = cfg.clone();
    cfg2.output.kept_format = ferrolm_corpus::KeptFormat::Parquet;
    cfg2.output.parquet.compression = ferrolm_corpus::ParquetCompression::Snappy;
    cfg2.output.parquet.row_group_docs = 100;
    run_configured(&cfg2, &out2, &RunOptions::default(), None).unwrap();
    assert!(!out2.join("kept/part-00000.jsonl").exists());
    // kept/ holds only JSONL, so reading the folder kept/ never gives a document twice.
    assert!(!out.join("kept/part-00000.parquet").exists());
    let again: Vec<ReadItem> = DocumentStream::from_paths(&[out2.join("kept-parquet")], ReadOptions::default()).unwrap().collect();
    // A writer dropped without commit (a failed run) leaves nothing, not even its temporary.
    let abandoned = dir.path().join("abandoned");
    let mut w = ferrolm_corpus::ParquetDocWriter::create(abandoned.join("x.parquet"), &ferrolm_corpus::ParquetWriteOptions { row_group_docs: 2, ..Default::default() }).unwrap();
    for d in &jsonl {
        w.write(d).unwrap();
    }
    drop(w);
    assert_eq!(std::fs::read_dir(&abandoned).unwrap().count(), 0);
    let texts = |v: &[ReadItem]| v.iter().map(|i| if let ReadItem::Doc(d) = i { d.text.clone() } else { panic!() }).collect::<Vec<_>>();
    assert_eq!(texts(&again), texts(&items));
}

// ---------------------------------------------------------------------------------------------
// Hugging Face Hub source against a local mock of the Hub's HTTP API (the tests never use the
// network: the mock listens on 127.0.0.1 in this process).

mod mock_hub {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    pub struct Response {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    /// Request log: (request target, Authorization header).
    pub type Log = Arc<Mutex<Vec<(String, Option<String>)>>>;

    /// Serves `routes` (keyed by request target, query included) until the process ends; anything
    /// else is a 404 with the Hub's JSON error shape.
    pub fn serve(routes: HashMap<String, Response>) -> (String, Log) {
        serve_on(TcpListener::bind("127.0.0.1:0").unwrap(), routes)
    }

    pub fn serve_on(listener: TcpListener, routes: HashMap<String, Response>) -> (String, Log) {
        let base = format!("http://{}", listener.local_addr().unwrap());
        let log: Log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        let routes = Arc::new(routes);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let target = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut auth = None;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("authorization") {
                            auth = Some(v.trim().to_string());
                        }
                    }
                }
                log2.lock().unwrap().push((target.clone(), auth));
                let not_found = Response { status: 404, headers: vec![], body: br#"{"error":"Repository not found"}"#.to_vec() };
                let r = routes.get(&target).unwrap_or(&not_found);
                let mut head = format!("HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n", r.status, r.body.len());
                for (k, v) in &r.headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&r.body);
                let _ = stream.flush();
            }
        });
        (base, log)
    }

    pub fn ok(body: Vec<u8>) -> Response {
        Response { status: 200, headers: vec![], body }
    }
}

fn sha256_hex(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b).as_ref().iter().map(|x| format!("{x:02x}")).collect()
}

/// A Parquet file of `n` documents written by our own writer (columns id, text, source, meta).
fn parquet_bytes(dir: &Path, n: usize, prefix: &str) -> Vec<u8> {
    let p = dir.join(format!("{prefix}.parquet"));
    let mut w = ferrolm_corpus::ParquetDocWriter::create(&p, &Default::default()).unwrap();
    for i in 0..n {
        let mut d = ferrolm_corpus::Document::new(format!("{prefix}-{i}"), format!("{prefix} document {i}: some words of text"), "web");
        d.meta.insert("n".into(), i.into());
        w.write(&d).unwrap();
    }
    w.commit().unwrap();
    std::fs::read(p).unwrap()
}

fn lfs_entry(path: &str, body: &[u8]) -> serde_json::Value {
    serde_json::json!({ "type": "file", "oid": format!("blob-{}", body.len()), "size": 134, "path": path, "lfs": { "oid": sha256_hex(body), "size": body.len(), "pointerSize": 134 } })
}

fn plain_entry(path: &str, body: &[u8]) -> serde_json::Value {
    serde_json::json!({ "type": "file", "oid": format!("blob-{}", sha256_hex(body)), "size": body.len(), "path": path })
}

#[test]
fn hub_source_lists_downloads_caches_and_reads() {
    use mock_hub::*;
    let dir = tempfile::tempdir().unwrap();
    let pq = parquet_bytes(dir.path(), 7, "pq");
    // Two good lines and a broken one: the rejection names the cached file and its line.
    let jsonl = b"{\"text\": \"first json line\", \"id\": \"j1\"}\n{not json\n{\"text\": \"second json line\"}\n".to_vec();
    let readme = b"# A dataset card, not a document\n".to_vec();
    let mut routes = std::collections::HashMap::new();
    let tree = "/api/datasets/someone/tiny-set/tree/main?recursive=true";
    // Page 1 links to page 2 (the Hub paginates long listings through the Link header).
    let page2 = "/api/datasets/someone/tiny-set/tree/main?recursive=true&cursor=p2";
    routes.insert(
        tree.to_string(),
        Response {
            status: 200,
            headers: vec![("Link".into(), format!("<{page2}>; rel=\"next\""))],
            body: serde_json::to_vec(&serde_json::json!([
                { "type": "directory", "oid": "d1", "size": 0, "path": "data" },
                lfs_entry("data/train-00000-of-00001.parquet", &pq),
                plain_entry("README.md", &readme),
            ]))
            .unwrap(),
        },
    );
    routes.insert(page2.to_string(), ok(serde_json::to_vec(&serde_json::json!([plain_entry("extra/more.jsonl", &jsonl)])).unwrap()));
    routes.insert("/datasets/someone/tiny-set/resolve/main/data/train-00000-of-00001.parquet".into(), ok(pq.clone()));
    routes.insert("/datasets/someone/tiny-set/resolve/main/extra/more.jsonl".into(), ok(jsonl.clone()));
    routes.insert("/datasets/someone/tiny-set/resolve/main/README.md".into(), ok(readme));
    let (base, log) = serve(routes);

    let cache = dir.path().join("cache");
    let cfg_text = format!(
        r#"
[[source]]
type = "hub"
name = "hubtext"
repo = "someone/tiny-set"
endpoint = "{base}"
cache_dir = {cache:?}
"#,
        cache = cache.display().to_string()
    );
    let cfg = PipelineConfig::from_toml(&toml::Value::Table(cfg_text.parse().unwrap())).unwrap();
    let out = dir.path().join("out");
    let stats = run_configured(&cfg, &out, &RunOptions::default(), None).unwrap();
    assert_eq!((stats.input, stats.kept, stats.rejected), (9, 9, 1), "7 Parquet rows + 2 JSONL lines, 1 broken line");
    assert_eq!(stats.rejected_by_reason.get("broken_json"), Some(&1));
    let rej = &stats.rejected_examples[0];
    assert!(rej.file.ends_with("more.jsonl") && rej.line == Some(2), "{rej:?}");
    assert_eq!(stats.sources.keys().collect::<Vec<_>>(), ["hubtext"]);
    let kept: Vec<serde_json::Value> = std::fs::read_to_string(out.join("kept/part-00000.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ids: Vec<&str> = kept.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids[0], "pq-0");
    assert_eq!(ids[7], "j1");
    assert_eq!(ids[8], "hf://datasets/someone/tiny-set@main/extra/more.jsonl:3");
    assert_eq!(kept[0]["meta"]["path"], "hf://datasets/someone/tiny-set@main/data/train-00000-of-00001.parquet");
    // The cache holds the files under repo/revision/path; README.md was never fetched.
    let cached = cache.join("someone--tiny-set/main/data/train-00000-of-00001.parquet");
    assert_eq!(std::fs::read(&cached).unwrap(), pq);
    let downloads = |log: &Log| log.lock().unwrap().iter().filter(|(t, _)| t.contains("/resolve/")).count();
    assert_eq!(downloads(&log), 2);
    assert!(log.lock().unwrap().iter().all(|(t, _)| !t.ends_with("README.md")));

    // A second run lists again but downloads nothing: the cache is complete and current.
    let out2 = dir.path().join("out2");
    let again = run_configured(&cfg, &out2, &RunOptions::default(), None).unwrap();
    assert_eq!(again.kept, 9);
    assert_eq!(downloads(&log), 2);

    // A cached file of another version (the listing's oid changed) is fetched again.
    std::fs::write(cache.join("someone--tiny-set/main/extra/.more.jsonl.version"), "blob-old").unwrap();
    run_configured(&cfg, &dir.path().join("out3"), &RunOptions::default(), None).unwrap();
    assert_eq!(downloads(&log), 3);

    // Shards download only their own files: shard 1 of 2 gets the second file (the JSONL).
    let cache_b = dir.path().join("cache-b");
    let mut cfg_b = cfg.clone();
    cfg_b.sources[0].cache_dir = Some(cache_b.clone());
    let s1 = run_configured(&cfg_b, &dir.path().join("out4"), &RunOptions { shard: Some((1, 2)), force: false }, None).unwrap();
    assert_eq!(s1.input, 2);
    assert!(cache_b.join("someone--tiny-set/main/extra/more.jsonl").exists());
    assert!(!cache_b.join("someone--tiny-set/main/data").exists());
}

#[test]
fn hub_source_parquet_conversion_by_config_and_split_with_token() {
    use ferrolm_corpus::read::hub::{plan_with_env, HubClient};
    use mock_hub::*;
    let dir = tempfile::tempdir().unwrap();
    let train0 = parquet_bytes(dir.path(), 3, "train0");
    let train1 = parquet_bytes(dir.path(), 2, "train1");
    let test0 = parquet_bytes(dir.path(), 4, "test0");
    let mut routes = std::collections::HashMap::new();
    routes.insert(
        "/api/datasets/org/conv/tree/refs%2Fconvert%2Fparquet/en?recursive=true".to_string(),
        ok(serde_json::to_vec(&serde_json::json!([
            lfs_entry("en/test/0000.parquet", &test0),
            lfs_entry("en/train/0001.parquet", &train1),
            lfs_entry("en/train/0000.parquet", &train0),
        ]))
        .unwrap()),
    );
    // The first train file is served by another host (as the Hub's CDN serves LFS files): a
    // redirect there must not carry the token. 127.0.0.2 is another host name on Linux loopback.
    let cdn = match std::net::TcpListener::bind("127.0.0.2:0") {
        Ok(l) => {
            let mut cdn_routes = std::collections::HashMap::new();
            cdn_routes.insert("/signed/train0?sig=x".to_string(), ok(train0.clone()));
            Some(serve_on(l, cdn_routes))
        }
        Err(e) => {
            eprintln!("no second loopback address ({e}); the redirect part of this test is skipped");
            None
        }
    };
    let train0_route = match &cdn {
        Some((cdn_base, _)) => Response { status: 302, headers: vec![("Location".into(), format!("{cdn_base}/signed/train0?sig=x"))], body: vec![] },
        None => ok(train0.clone()),
    };
    routes.insert("/datasets/org/conv/resolve/refs%2Fconvert%2Fparquet/en/train/0000.parquet".into(), train0_route);
    // The second train file arrives corrupted: its SHA-256 does not match the listing.
    let mut bad = train1.clone();
    bad[10] ^= 0xff;
    routes.insert("/datasets/org/conv/resolve/refs%2Fconvert%2Fparquet/en/train/0001.parquet".into(), ok(bad));
    let (base, log) = serve(routes);
    let cache = dir.path().join("cache");
    let s = ferrolm_corpus::SourceConfig {
        kind: Some("hub".into()),
        repo: Some("org/conv".into()),
        config: Some("en".into()),
        split: Some("train".into()),
        endpoint: Some(base.clone()),
        cache_dir: Some(cache.clone()),
        ..Default::default()
    };
    let env = |k: &str| (k == "HF_TOKEN").then(|| "hf_secret".to_string());
    let plan = plan_with_env(&s, env).unwrap();
    assert_eq!(plan.revision, "refs/convert/parquet");
    let paths: Vec<&str> = plan.files.iter().map(|(e, _)| e.path.as_str()).collect();
    assert_eq!(paths, ["en/train/0000.parquet", "en/train/0001.parquet"]);
    // The token goes with every request.
    assert!(log.lock().unwrap().iter().all(|(_, a)| a.as_deref() == Some("Bearer hf_secret")));

    let err = plan.fetch(Some("hf_secret".into()), false).unwrap_err().to_string();
    assert!(err.contains("SHA-256") && err.contains("0001.parquet"), "{err}");
    let local1 = &plan.files[1].1;
    assert!(!local1.exists(), "a corrupt download must not be kept");
    let leftovers: Vec<_> = std::fs::read_dir(local1.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(leftovers.iter().all(|n| !n.to_string_lossy().ends_with(".tmp")), "{leftovers:?}");
    // The good file before it was kept and is valid.
    assert_eq!(std::fs::read(&plan.files[0].1).unwrap(), train0);
    if let Some((_, cdn_log)) = &cdn {
        let seen = cdn_log.lock().unwrap().clone();
        assert_eq!(seen, [("/signed/train0?sig=x".to_string(), None)], "the CDN got the request, without the token");
    }

    // Unknown repository: HTTP 404 named with its URL and meaning.
    let missing = ferrolm_corpus::SourceConfig { repo: Some("org/none".into()), config: None, split: None, ..s.clone() };
    let err = plan_with_env(&missing, |_| None).unwrap_err().to_string();
    assert!(err.contains("/api/datasets/org/none/tree/main") && err.contains("404") && err.contains("no such dataset"), "{err}");
    let _ = HubClient::new(&base, None);
}

#[test]
fn hub_source_offline_error_names_url_and_cache_works_offline() {
    use ferrolm_corpus::read::hub::plan_with_env;
    // A port nobody listens on: connection refused, as on a machine without network.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let s = ferrolm_corpus::SourceConfig {
        kind: Some("hub".into()),
        repo: Some("someone/set".into()),
        endpoint: Some(format!("http://{addr}")),
        cache_dir: Some(dir.path().join("cache")),
        ..Default::default()
    };
    let err = plan_with_env(&s, |_| None).unwrap_err().to_string();
    assert!(err.contains(&format!("http://{addr}/api/datasets/someone/set/tree/main")), "{err}");
    assert!(err.contains("offline"), "{err}");

    // HF_HUB_OFFLINE=1 reads what an earlier run cached, without any request.
    let offline = |k: &str| (k == "HF_HUB_OFFLINE").then(|| "1".to_string());
    let err = plan_with_env(&s, offline).unwrap_err().to_string();
    assert!(err.contains("HF_HUB_OFFLINE") && err.contains("cache"), "{err}");
    let cached = dir.path().join("cache/someone--set/main/data/a.jsonl");
    std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
    std::fs::write(&cached, "{\"text\": \"cached line\"}\n").unwrap();
    let plan = plan_with_env(&s, offline).unwrap();
    let specs = plan.fetch(None, true).unwrap();
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].path, cached);
}

#[test]
fn example_config_in_configs_folder_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/corpus-example.toml");
    let v = ferrolm_common::load_config(Some(&path), &["output.parquet.row_group_docs=500".to_string()]).unwrap();
    let cfg = PipelineConfig::from_toml(&v).unwrap();
    assert_eq!(cfg.sources.len(), 3);
    assert_eq!(cfg.sources[0].include, ["**/*.md", "**/*.txt"]);
    assert_eq!(cfg.sources[1].source_kind().unwrap(), ferrolm_corpus::config::SourceKind::Hub);
    assert_eq!(cfg.output.kept_format, ferrolm_corpus::KeptFormat::Both);
    assert_eq!(cfg.output.parquet.row_group_docs, 500, "--set reaches [output.parquet]");
    // The resolved config (written next to the outputs) parses back to the same settings.
    let again = PipelineConfig::from_toml(&toml::Value::Table(cfg.to_toml().parse().unwrap())).unwrap();
    assert_eq!(again.output, cfg.output);
    assert_eq!(again.sources[1].files, cfg.sources[1].files);
}

#[test]
fn source_keys_of_the_wrong_kind_are_config_errors() {
    let parse = |t: &str| PipelineConfig::from_toml(&toml::Value::Table(t.parse().unwrap())).map(|_| ()).unwrap_err().to_string();
    let e = parse("[[source]]\nname = \"h\"\ntype = \"hub\"\nrepo = \"o/n\"\npaths = [\"x\"]\n");
    assert!(e.contains("files") && e.contains("paths"), "{e}");
    let e = parse("[[source]]\nname = \"h\"\ntype = \"hub\"\nrepo = \"noslash\"\n");
    assert!(e.contains("owner/name") && e.contains("noslash"), "{e}");
    let e = parse("[[source]]\nname = \"h\"\ntype = \"hub\"\nrepo = \"o/n\"\nfiles = [\"a\"]\nsplit = \"train\"\n");
    assert!(e.contains("either `files` or `config`/`split`"), "{e}");
    let e = parse("[[source]]\nname = \"f\"\npaths = [\"x\"]\nsplit = \"train\"\n");
    assert!(e.contains("`split`") && e.contains("hub"), "{e}");
    let e = parse("[[source]]\nname = \"f\"\ntype = \"ftp\"\npaths = [\"x\"]\n");
    assert!(e.contains("ftp"), "{e}");
}
