//! `hf:ORG/NAME[@REV]` against a local mock of the Hub's HTTP API (a std TcpListener
//! server in the test): download into Hugging Face's cache layout, reuse of the cache,
//! offline mode, a corrupted download that is never kept, HTTP errors that say what to do.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferrolm_model::hf::hub::{resolve, HubEnv, ModelId};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixture_files() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/qwen3_untied");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap()).map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())).collect();
    files.sort();
    files
}

fn sha256(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b).as_ref().iter().map(|x| format!("{x:02x}")).collect()
}

/// (path, Authorization header) of every request the mock answered.
type RequestLog = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A mock Hub serving one repository `org/tiny` at commit SHA (branch `main`). `corrupt`
/// flips a byte of the weights it sends (the listing keeps the true SHA-256).
struct MockHub {
    url: String,
    requests: RequestLog,
}

fn start(corrupt: bool) -> MockHub {
    let files = fixture_files();
    let mut routes: HashMap<String, (u16, Vec<u8>)> = HashMap::new();
    routes.insert("/api/models/org/tiny/revision/main".into(), (200, format!("{{\"id\": \"org/tiny\", \"sha\": \"{SHA}\"}}").into_bytes()));
    let mut tree = vec![serde_json::json!({"type": "directory", "path": "onnx", "oid": "ab", "size": 0})];
    for (i, (name, bytes)) in files.iter().enumerate() {
        let mut e = serde_json::json!({"type": "file", "path": name, "size": bytes.len(), "oid": format!("{:040x}", i + 1)});
        if name.ends_with(".safetensors") {
            e["lfs"] = serde_json::json!({"oid": sha256(bytes), "size": bytes.len()});
            e["size"] = serde_json::json!(134);
        }
        tree.push(e);
        let mut body = bytes.clone();
        if corrupt && name.ends_with(".safetensors") {
            let k = body.len() - 3;
            body[k] ^= 1;
        }
        routes.insert(format!("/org/tiny/resolve/{SHA}/{name}"), (200, body));
    }
    tree.push(serde_json::json!({"type": "file", "path": "onnx/model.onnx", "size": 5, "oid": "cd"}));
    routes.insert(format!("/api/models/org/tiny/tree/{SHA}?recursive=true"), (200, serde_json::to_vec(&tree).unwrap()));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests: RequestLog = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut auth = None;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                    break;
                }
                if let Some(v) = h.strip_prefix("authorization: ").or_else(|| h.strip_prefix("Authorization: ")) {
                    auth = Some(v.trim().to_string());
                }
            }
            log.lock().unwrap().push((path.clone(), auth));
            let (status, body) = routes.get(&path).cloned().unwrap_or((404, b"{\"error\": \"Repository not found\"}".to_vec()));
            let head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    MockHub { url, requests }
}

fn env(hub: &MockHub, home: &Path, offline: bool) -> HubEnv {
    HubEnv { endpoint: hub.url.clone(), token: Some("secret".into()), home: home.to_path_buf(), offline }
}

fn downloads(hub: &MockHub) -> usize {
    hub.requests.lock().unwrap().iter().filter(|(p, _)| p.contains("/resolve/")).count()
}

#[test]
fn downloads_into_the_hf_cache_layout_then_reuses_it_and_works_offline() {
    let hub = start(false);
    let home = tempfile::tempdir().unwrap();
    let snap = resolve("org/tiny", &env(&hub, home.path(), false)).unwrap();
    let repo = home.path().join("hub/models--org--tiny");
    assert_eq!(snap, repo.join("snapshots").join(SHA));
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap(), SHA);
    // snapshot files are relative symlinks into blobs/, named as huggingface_hub names them
    let weights = std::fs::read("tests/fixtures/hf/qwen3_untied/model.safetensors").unwrap();
    assert_eq!(std::fs::read_link(snap.join("model.safetensors")).unwrap(), PathBuf::from(format!("../../blobs/{}", sha256(&weights))));
    assert!(!snap.join("onnx").exists(), "only the files a model folder needs are fetched");
    // the token went with every request
    assert!(hub.requests.lock().unwrap().iter().all(|(_, a)| a.as_deref() == Some("Bearer secret")));
    // the snapshot is a model folder the registry loads
    let m = ferrolm_model::load_model(&snap, &candle_core::Device::Cpu).unwrap();
    assert_eq!(m.spec.vocab_size(), 64);

    let n = downloads(&hub);
    assert_eq!(n, fixture_files().len());
    assert_eq!(resolve("org/tiny@main", &env(&hub, home.path(), false)).unwrap(), snap);
    assert_eq!(downloads(&hub), n, "a complete cache is not downloaded again");

    let requests = hub.requests.lock().unwrap().len();
    assert_eq!(resolve("org/tiny", &env(&hub, home.path(), true)).unwrap(), snap);
    assert_eq!(resolve(&format!("org/tiny@{SHA}"), &env(&hub, home.path(), true)).unwrap(), snap);
    assert_eq!(hub.requests.lock().unwrap().len(), requests, "offline means no request");
    let empty = tempfile::tempdir().unwrap();
    let e = format!("{:#}", resolve("org/tiny", &env(&hub, empty.path(), true)).unwrap_err());
    assert!(e.contains("HF_HUB_OFFLINE") && e.contains("not in the cache"), "{e}");
}

#[test]
fn a_corrupted_download_is_an_error_and_never_enters_the_cache() {
    let hub = start(true);
    let home = tempfile::tempdir().unwrap();
    let e = format!("{:#}", resolve("org/tiny", &env(&hub, home.path(), false)).unwrap_err());
    assert!(e.contains("SHA-256") && e.contains("not kept"), "{e}");
    let blobs = home.path().join("hub/models--org--tiny/blobs");
    for entry in std::fs::read_dir(&blobs).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "a temporary file was left behind: {name}");
        let weights = std::fs::read("tests/fixtures/hf/qwen3_untied/model.safetensors").unwrap();
        assert_ne!(name, sha256(&weights), "the corrupt weights were kept");
    }
    assert!(!home.path().join("hub/models--org--tiny/refs/main").exists());
}

#[test]
fn http_errors_and_bad_ids_say_what_to_do() {
    let hub = start(false);
    let home = tempfile::tempdir().unwrap();
    let e = format!("{:#}", resolve("org/missing", &env(&hub, home.path(), false)).unwrap_err());
    assert!(e.contains("HTTP 404") && e.contains("no such model"), "{e}");
    let offline_hub = HubEnv { endpoint: "http://127.0.0.1:1".into(), token: None, home: home.path().to_path_buf(), offline: false };
    let e = format!("{:#}", resolve("org/tiny", &offline_hub).unwrap_err());
    assert!(e.contains("HF_HUB_OFFLINE"), "{e}");
    for bad in ["tiny", "org/../x", "org/tiny@", "org/tiny@a/../b", "a/b/c"] {
        assert!(ModelId::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(ModelId::parse("Qwen/Qwen3-0.6B@v1.0").unwrap(), ModelId { repo: "Qwen/Qwen3-0.6B".into(), revision: "v1.0".into() });
}

#[test]
fn the_environment_is_read_as_huggingface_hub_reads_it() {
    let vars: HashMap<&str, &str> = [("HF_HOME", "/x/hf"), ("HF_ENDPOINT", "http://mirror/"), ("HF_HUB_OFFLINE", "1"), ("HUGGING_FACE_HUB_TOKEN", "t")].into();
    let e = HubEnv::from_vars(|k| vars.get(k).map(|v| v.to_string()));
    assert_eq!((e.home, e.endpoint.as_str(), e.offline, e.token.as_deref()), (PathBuf::from("/x/hf"), "http://mirror", true, Some("t")));
    let e = HubEnv::from_vars(|k| (k == "HOME").then(|| "/home/u".to_string()));
    assert_eq!((e.home, e.endpoint.as_str(), e.offline), (PathBuf::from("/home/u/.cache/huggingface"), "https://huggingface.co", false));
}
