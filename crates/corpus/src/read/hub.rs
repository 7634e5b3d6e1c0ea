//! Hugging Face Hub datasets as a source (`[[source]] type = "hub"`), for machines that are online.
//!
//! The file list comes from the Hub's public tree API,
//! `GET {endpoint}/api/datasets/{owner}/{name}/tree/{revision}/{path}?recursive=true`, a JSON array
//! of `{"type": "file" | "directory", "path", "size", "oid", "lfs": {"oid": sha256, "size"}}`,
//! continued page by page through the `Link: <...>; rel="next"` header. Files are fetched from
//! `{endpoint}/datasets/{owner}/{name}/resolve/{revision}/{path}` (the Hub redirects large files to
//! its CDN; the token goes with a redirect only to the same host) into a local cache, written atomically and
//! checked against the listed size and, for LFS files, the SHA-256 the listing names. A cached file
//! whose size and listed oid match is not fetched again. The downloaded files then go to the
//! ordinary readers, so accounting and rejections are those of local Parquet/JSONL files.
//!
//! Which files: explicit `files` globs over the repository paths; or `config`/`split`, read from
//! the Hub's Parquet conversion (branch `refs/convert/parquet`, files `{config}/{split}/NNNN.parquet`,
//! `{config}/partial-{split}/...` for the converted head of very large splits, and the older
//! `{config}/{name}-{split}[-NNNNN-of-NNNNN].parquet`); otherwise every JSONL/Parquet file of the
//! repository. `exclude` globs apply in every case.
//!
//! Environment, as `huggingface_hub` reads it: `HF_ENDPOINT` (base URL), `HF_TOKEN` (else
//! `HUGGING_FACE_HUB_TOKEN`, else the file `$HF_HOME/token` that `huggingface-cli login` writes),
//! `HF_HOME` (cache root, default `~/.cache/huggingface`), and `HF_HUB_OFFLINE=1`: use only what
//! the cache already holds, without contacting the Hub.

use super::{kind_for_name, FileKind, FileSpec, PathFilter};
use crate::config::SourceConfig;
use crate::{io_err, CorpusError, Result};
use ferrolm_common::AtomicFile;
use serde::Deserialize;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The branch where the Hub's dataset viewer publishes every public dataset converted to Parquet.
pub const PARQUET_REVISION: &str = "refs/convert/parquet";

/// One entry of a tree listing.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TreeEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub path: String,
    #[serde(default)]
    pub size: u64,
    /// Git blob id (changes whenever the content does).
    #[serde(default)]
    pub oid: String,
    #[serde(default)]
    pub lfs: Option<LfsInfo>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct LfsInfo {
    /// SHA-256 of the content, hex.
    pub oid: String,
    pub size: u64,
}

impl TreeEntry {
    fn is_file(&self) -> bool {
        self.kind == "file"
    }
    /// The content's size (for LFS files the real size, not the pointer's).
    pub fn content_size(&self) -> u64 {
        self.lfs.as_ref().map_or(self.size, |l| l.size)
    }
    /// What identifies this version of the file: the SHA-256 for LFS files, else the blob id.
    pub fn version(&self) -> &str {
        self.lfs.as_ref().map_or(self.oid.as_str(), |l| l.oid.as_str())
    }
}

/// The base URL: the source's `endpoint`, else `$HF_ENDPOINT`, else huggingface.co.
pub fn endpoint(configured: Option<&str>, env: impl Fn(&str) -> Option<String>) -> String {
    let e = configured.map(str::to_string).or_else(|| env("HF_ENDPOINT").filter(|v| !v.trim().is_empty())).unwrap_or_else(|| DEFAULT_ENDPOINT.into());
    e.trim().trim_end_matches('/').to_string()
}

/// `HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`, else the token file in `$HF_HOME`.
pub fn token(env: impl Fn(&str) -> Option<String>) -> Option<String> {
    let nonempty = |v: String| {
        let t = v.trim().to_string();
        (!t.is_empty()).then_some(t)
    };
    env("HF_TOKEN")
        .and_then(nonempty)
        .or_else(|| env("HUGGING_FACE_HUB_TOKEN").and_then(nonempty))
        .or_else(|| {
            let file = env("HF_TOKEN_PATH").map(PathBuf::from).or_else(|| hf_home(&env).map(|h| h.join("token")))?;
            std::fs::read_to_string(file).ok().and_then(nonempty)
        })
}

fn hf_home(env: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    env("HF_HOME")
        .map(PathBuf::from)
        .or_else(|| env("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("huggingface")))
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache").join("huggingface")))
}

/// The download cache: the source's `cache_dir`, else `$HF_HOME/ferrolm/datasets`.
pub fn cache_root(configured: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<PathBuf> {
    if let Some(c) = configured {
        return Ok(c.to_path_buf());
    }
    hf_home(&env)
        .map(|h| h.join("ferrolm").join("datasets"))
        .ok_or_else(|| CorpusError::Config("hub source: no cache_dir, HF_HOME or HOME to keep downloads in".into()))
}

fn std_env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// Percent-encode one URL path segment (everything but RFC 3986's unreserved characters).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A repository path (`/`-separated) with each segment encoded.
fn encode_path(p: &str) -> String {
    p.split('/').map(encode_segment).collect::<Vec<_>>().join("/")
}

/// A blocking client for the Hub's public HTTP API.
pub struct HubClient {
    endpoint: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl HubClient {
    pub fn new(endpoint: &str, token: Option<String>) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            // Statuses are turned into errors here, with the URL and what they mean for a dataset.
            .http_status_as_error(false)
            // The token follows a redirect only to the same host (a renamed repository), never to
            // the CDN host that serves large files through signed URLs.
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_resolve(Some(Duration::from_secs(20)))
            // Per read, not per file: a multi-GB file may take long, a stalled one may not.
            .timeout_per_read(Some(Duration::from_secs(120)))
            .user_agent(format!("ferrolm-corpus/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self { endpoint: endpoint.trim_end_matches('/').to_string(), token, agent }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn tree_url(&self, repo: &str, revision: &str, path: &str) -> String {
        let mut url = format!("{}/api/datasets/{}/tree/{}", self.endpoint, encode_path(repo), encode_segment(revision));
        if !path.is_empty() {
            url.push('/');
            url.push_str(&encode_path(path.trim_matches('/')));
        }
        url.push_str("?recursive=true");
        url
    }

    pub fn resolve_url(&self, repo: &str, revision: &str, path: &str) -> String {
        format!("{}/datasets/{}/resolve/{}/{}", self.endpoint, encode_path(repo), encode_segment(revision), encode_path(path))
    }

    fn get(&self, url: &str) -> Result<ureq::http::Response<ureq::Body>> {
        let mut req = self.agent.get(url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let resp = req.call().map_err(|e| self.transport_error(url, e))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        let mut resp = resp;
        let body = resp.body_mut().with_config().limit(4096).read_to_string().unwrap_or_default();
        let detail = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| body.chars().take(200).collect());
        let hint = match status {
            401 | 403 if self.token.is_none() => "the dataset is private or gated: set HF_TOKEN (or log in with `huggingface-cli login`)",
            401 | 403 => "the token (HF_TOKEN) was refused or lacks access to this dataset (gated datasets need their terms accepted on the Hub)",
            404 => "no such dataset, revision or path (check `repo`, `revision`, `config`/`split`)",
            429 => "rate-limited by the Hub; retry later or set HF_TOKEN",
            _ => "the Hub answered with an error",
        };
        Err(CorpusError::Config(format!("GET {url}: HTTP {status}: {hint}{}", if detail.is_empty() { String::new() } else { format!(" ({detail})") })))
    }

    fn transport_error(&self, url: &str, e: ureq::Error) -> CorpusError {
        let why = match &e {
            ureq::Error::HostNotFound => "cannot resolve the host: this machine seems to be offline (or has no DNS)".to_string(),
            ureq::Error::ConnectionFailed => "cannot connect: this machine seems to be offline, or the endpoint is down".to_string(),
            ureq::Error::Io(io) if matches!(io.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NetworkUnreachable | std::io::ErrorKind::HostUnreachable) => {
                format!("cannot connect ({io}): this machine seems to be offline, or the endpoint is down")
            }
            ureq::Error::Timeout(t) => format!("timed out ({t}): the network is slow or this machine is offline"),
            other => other.to_string(),
        };
        CorpusError::Config(format!(
            "GET {url}: {why}. The Hub source needs network access; set HF_ENDPOINT for a mirror, or HF_HUB_OFFLINE=1 to use files already in the cache"
        ))
    }

    /// Every entry under `path` (recursive), following the listing's pages.
    pub fn list_tree(&self, repo: &str, revision: &str, path: &str) -> Result<Vec<TreeEntry>> {
        let mut url = self.tree_url(repo, revision, path);
        let mut out = Vec::new();
        for _page in 0..100_000 {
            let mut resp = self.get(&url)?;
            let next = resp.headers().get("link").and_then(|v| v.to_str().ok()).and_then(next_link);
            let body = resp.body_mut().with_config().limit(256 << 20).read_to_string().map_err(|e| self.transport_error(&url, e))?;
            let page: Vec<TreeEntry> = serde_json::from_str(&body)
                .map_err(|e| CorpusError::Config(format!("GET {url}: the tree listing is not the expected JSON array of entries: {e}")))?;
            out.extend(page);
            match next {
                // The next page's URL is absolute on the Hub; a relative one is taken from the endpoint.
                Some(n) if n.starts_with("http://") || n.starts_with("https://") => url = n,
                Some(n) => url = format!("{}/{}", self.endpoint, n.trim_start_matches('/')),
                None => return Ok(out),
            }
        }
        Err(CorpusError::Config(format!("GET {url}: the tree listing did not end after 100000 pages")))
    }

    /// Download one file to `dest` (atomically), checking its size and, for LFS files, its SHA-256.
    pub fn download(&self, repo: &str, revision: &str, entry: &TreeEntry, dest: &Path) -> Result<u64> {
        let url = self.resolve_url(repo, revision, &entry.path);
        let mut resp = self.get(&url)?;
        let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
        let mut out = AtomicFile::create(dest).map_err(io_err(dest))?;
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CorpusError::Config(format!("GET {url}: the download broke off after {n} bytes: {e}"))),
            };
            sha.update(&buf[..k]);
            out.write_all(&buf[..k]).map_err(io_err(dest))?;
            n += k as u64;
        }
        let want = entry.content_size();
        if n != want {
            return Err(CorpusError::Config(format!("GET {url}: got {n} bytes, the listing says {want}; not kept")));
        }
        if let Some(lfs) = &entry.lfs {
            let got: String = sha.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
            if !got.eq_ignore_ascii_case(&lfs.oid) {
                return Err(CorpusError::Config(format!("GET {url}: SHA-256 {got} does not match the listed {}; not kept", lfs.oid)));
            }
        }
        out.commit().map_err(io_err(dest))?;
        Ok(n)
    }
}

/// The URL of `rel="next"` in a `Link` header.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find(|part| part.contains("rel=\"next\"") || part.contains("rel=next")).and_then(|part| {
        let (a, b) = (part.find('<')?, part.find('>')?);
        (a < b).then(|| part[a + 1..b].to_string())
    })
}

/// A Hub source resolved to files: where each lives remotely and where it goes in the cache.
#[derive(Debug, Clone)]
pub struct HubPlan {
    pub repo: String,
    pub revision: String,
    pub endpoint: String,
    pub files: Vec<(TreeEntry, PathBuf)>,
}

/// Which revision a source reads.
fn revision_of(s: &SourceConfig) -> String {
    match (&s.revision, s.config.is_some() || s.split.is_some()) {
        (Some(r), _) => r.clone(),
        (None, true) => PARQUET_REVISION.into(),
        (None, false) => "main".into(),
    }
}

/// The files of a listing that a source selects, sorted by path.
pub fn select_files(s: &SourceConfig, entries: Vec<TreeEntry>) -> Result<Vec<TreeEntry>> {
    let exclude = PathFilter::new(&[], &s.exclude)?;
    let mut files: Vec<TreeEntry> = entries.into_iter().filter(|e| e.is_file() && exclude.accepts(&e.path)).collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let name_of = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
    if s.config.is_some() || s.split.is_some() {
        let config = s.config.clone().unwrap_or_else(|| "default".into());
        let split = s.split.clone().unwrap_or_else(|| "train".into());
        let in_split = |p: &str| {
            let Some(rest) = p.strip_prefix(&format!("{config}/")) else { return false };
            if !rest.ends_with(".parquet") {
                return false;
            }
            match rest.split_once('/') {
                Some((dir, file)) => !file.contains('/') && (dir == split || dir == format!("partial-{split}")),
                // Older layout: {config}/{dataset}-{split}.parquet or ...-{split}-00000-of-00002.parquet.
                None => {
                    let stem = rest.trim_end_matches(".parquet");
                    stem.ends_with(&format!("-{split}")) || stem.contains(&format!("-{split}-"))
                }
            }
        };
        let chosen: Vec<TreeEntry> = files.iter().filter(|e| in_split(&e.path)).cloned().collect();
        if chosen.is_empty() {
            let mut seen: Vec<String> = files.iter().filter_map(|e| e.path.strip_prefix(&format!("{config}/")).and_then(|r| r.split_once('/')).map(|(d, _)| d.to_string())).collect();
            seen.dedup();
            return Err(CorpusError::Config(format!(
                "hub source {:?}: no Parquet files for config {config:?}, split {split:?} at revision {:?} (splits found: {})",
                s.repo.as_deref().unwrap_or(""),
                revision_of(s),
                if seen.is_empty() { "none".to_string() } else { seen.join(", ") }
            )));
        }
        return Ok(chosen);
    }
    if !s.files.is_empty() {
        let globs = PathFilter::new(&s.files, &[])?;
        let chosen: Vec<TreeEntry> = files.into_iter().filter(|e| globs.accepts(&e.path) && kind_for_name(&name_of(&e.path)).is_some()).collect();
        if chosen.is_empty() {
            return Err(CorpusError::Config(format!("hub source {:?}: no supported file matches files = {:?}", s.repo.as_deref().unwrap_or(""), s.files)));
        }
        return Ok(chosen);
    }
    // Everything that is data: JSONL and Parquet (README.md and scripts are not documents).
    let chosen: Vec<TreeEntry> = files.into_iter().filter(|e| matches!(kind_for_name(&name_of(&e.path)), Some(FileKind::Jsonl | FileKind::Parquet))).collect();
    if chosen.is_empty() {
        return Err(CorpusError::Config(format!(
            "hub source {:?}: the repository has no JSONL or Parquet files at revision {:?}; choose files with `files = [...]` or read the Parquet conversion with `config`/`split`",
            s.repo.as_deref().unwrap_or(""),
            revision_of(s)
        )));
    }
    Ok(chosen)
}

/// The cache folder of one repository revision.
fn revision_dir(cache: &Path, repo: &str, revision: &str) -> PathBuf {
    let safe = |s: &str| s.replace('/', "--");
    cache.join(safe(repo)).join(safe(revision))
}

/// Marker beside a cached file recording which version (listing oid) it holds.
fn version_marker(local: &Path) -> PathBuf {
    let name = local.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    local.with_file_name(format!(".{name}.version"))
}

/// List a Hub source's files (no download yet). Offline (`HF_HUB_OFFLINE=1`), the listing is what
/// an earlier run left in the cache.
pub fn plan(s: &SourceConfig) -> Result<HubPlan> {
    plan_with_env(s, std_env)
}

pub fn plan_with_env(s: &SourceConfig, env: impl Fn(&str) -> Option<String> + Copy) -> Result<HubPlan> {
    let repo = s.repo.clone().ok_or_else(|| CorpusError::Config(format!("source {:?}: type = \"hub\" needs `repo`", s.name)))?;
    let revision = revision_of(s);
    let endpoint = endpoint(s.endpoint.as_deref(), env);
    let cache = cache_root(s.cache_dir.as_deref(), env)?;
    let dir = revision_dir(&cache, &repo, &revision);
    let offline = env("HF_HUB_OFFLINE").is_some_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes" | "ON" | "on"));
    let entries = if offline {
        cached_entries(&dir)?
    } else {
        let client = HubClient::new(&endpoint, token(env));
        let prefix = match (&s.config, &s.split) {
            (None, None) => String::new(),
            (c, _) => c.clone().unwrap_or_else(|| "default".into()),
        };
        client.list_tree(&repo, &revision, &prefix)?
    };
    let files = select_files(s, entries)?;
    let files = files
        .into_iter()
        .map(|e| {
            let local = dir.join(e.path.split('/').collect::<PathBuf>());
            (e, local)
        })
        .collect();
    Ok(HubPlan { repo, revision, endpoint, files })
}

/// With HF_HUB_OFFLINE: the cached files of a revision as a listing (oid = the recorded version).
fn cached_entries(dir: &Path) -> Result<Vec<TreeEntry>> {
    if !dir.is_dir() {
        return Err(CorpusError::Config(format!("HF_HUB_OFFLINE is set and nothing of this dataset revision is cached in {}", dir.display())));
    }
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.map_err(|e| CorpusError::Invalid { path: dir.to_path_buf(), message: e.to_string() })?;
        if !e.file_type().is_file() || e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let rel = super::relative_slash(e.path(), dir);
        let size = e.metadata().map(|m| m.len()).unwrap_or(0);
        let oid = std::fs::read_to_string(version_marker(e.path())).unwrap_or_default();
        out.push(TreeEntry { kind: "file".into(), path: rel, size, oid, lfs: None });
    }
    Ok(out)
}

impl HubPlan {
    /// Download what the cache lacks (or holds in another version) and return the local files as
    /// reader specs, in listing order. Document ids are `hf://datasets/{repo}@{revision}/{path}`
    /// (plus `:row`/`:line`), and `meta.path` is that URL.
    pub fn fetch(&self, token: Option<String>, offline: bool) -> Result<Vec<FileSpec>> {
        let client = HubClient::new(&self.endpoint, token);
        let missing: Vec<&(TreeEntry, PathBuf)> = self.files.iter().filter(|(e, local)| !offline && !is_cached(e, local)).collect();
        if !missing.is_empty() {
            let total: u64 = missing.iter().map(|(e, _)| e.content_size()).sum();
            let pb = ferrolm_common::progress::bytes_bar(total, "hub download");
            for (e, local) in missing {
                if let Some(parent) = local.parent() {
                    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
                }
                let n = client.download(&self.repo, &self.revision, e, local)?;
                ferrolm_common::write_atomic(version_marker(local), e.version()).map_err(io_err(local))?;
                pb.inc(n);
            }
            pb.finish_and_clear();
        }
        let mut specs = Vec::with_capacity(self.files.len());
        for (e, local) in &self.files {
            let name = local.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let kind = kind_for_name(&name).unwrap_or(FileKind::Whole { source: "prose".into() });
            let url = format!("hf://datasets/{}@{}/{}", self.repo, self.revision, e.path);
            let mut meta = serde_json::Map::new();
            meta.insert("path".into(), url.clone().into());
            specs.push(FileSpec { path: local.clone(), kind, id: url, meta });
        }
        Ok(specs)
    }
}

/// A cached copy is complete (it was renamed into place after its checks) and of the listed
/// version (same size, same recorded oid).
fn is_cached(e: &TreeEntry, local: &Path) -> bool {
    let Ok(md) = std::fs::metadata(local) else { return false };
    if md.len() != e.content_size() {
        return false;
    }
    match std::fs::read_to_string(version_marker(local)) {
        Ok(v) => e.version().is_empty() || v.trim() == e.version(),
        Err(_) => false,
    }
}

/// `HF_HUB_OFFLINE` is set to a true value.
pub fn offline_from_env() -> bool {
    std_env("HF_HUB_OFFLINE").is_some_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes" | "ON" | "on"))
}

/// The token from the process environment (see [`token`]).
pub fn token_from_env() -> Option<String> {
    token(std_env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_revision_and_path() {
        let c = HubClient::new("http://h:1/", None);
        assert_eq!(c.tree_url("o/n", "refs/convert/parquet", "default"), "http://h:1/api/datasets/o/n/tree/refs%2Fconvert%2Fparquet/default?recursive=true");
        assert_eq!(c.tree_url("o/n", "main", ""), "http://h:1/api/datasets/o/n/tree/main?recursive=true");
        assert_eq!(c.resolve_url("o/n", "v1.0", "data/a b+c.parquet"), "http://h:1/datasets/o/n/resolve/v1.0/data/a%20b%2Bc.parquet");
    }

    #[test]
    fn link_header_next_page() {
        let h = r#"<https://huggingface.co/api/datasets/o/n/tree/main?recursive=true&cursor=ZXlK>; rel="next""#;
        assert_eq!(next_link(h).as_deref(), Some("https://huggingface.co/api/datasets/o/n/tree/main?recursive=true&cursor=ZXlK"));
        assert_eq!(next_link(r#"<http://a/x>; rel="prev""#), None);
    }

    #[test]
    fn environment_like_huggingface_hub() {
        let dir = std::env::temp_dir().join(format!("ferrolm-hub-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "hf_fromfile\n").unwrap();
        let home = dir.display().to_string();
        let env = |vars: &'static [(&'static str, &'static str)]| move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        assert_eq!(endpoint(None, env(&[])), DEFAULT_ENDPOINT);
        assert_eq!(endpoint(None, env(&[("HF_ENDPOINT", "https://hf-mirror.example/")])), "https://hf-mirror.example");
        assert_eq!(endpoint(Some("http://127.0.0.1:9"), env(&[("HF_ENDPOINT", "https://x")])), "http://127.0.0.1:9");
        assert_eq!(token(env(&[("HF_TOKEN", " hf_a "), ("HUGGING_FACE_HUB_TOKEN", "hf_b")])).as_deref(), Some("hf_a"));
        assert_eq!(token(env(&[("HUGGING_FACE_HUB_TOKEN", "hf_b")])).as_deref(), Some("hf_b"));
        let with_home = |k: &str| (k == "HF_HOME").then(|| home.clone());
        assert_eq!(token(with_home).as_deref(), Some("hf_fromfile"));
        assert_eq!(token(env(&[("HOME", "/nonexistent-ferrolm")])), None);
        assert_eq!(cache_root(None, with_home).unwrap(), dir.join("ferrolm").join("datasets"));
        assert_eq!(cache_root(None, env(&[("HOME", "/home/u")])).unwrap(), PathBuf::from("/home/u/.cache/huggingface/ferrolm/datasets"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn entry(path: &str) -> TreeEntry {
        TreeEntry { kind: "file".into(), path: path.into(), size: 1, oid: "x".into(), lfs: None }
    }

    #[test]
    fn selection_by_split_files_and_default() {
        let listing = || {
            vec![
                entry("default/train/0001.parquet"),
                entry("default/train/0000.parquet"),
                entry("default/partial-train/0000.parquet"),
                entry("default/test/0000.parquet"),
                entry("other/train/0000.parquet"),
                entry("default/old-train.parquet"),
                entry("default/old-train-00000-of-00002.parquet"),
                entry("default/old-test.parquet"),
                TreeEntry { kind: "directory".into(), path: "default/train".into(), size: 0, oid: String::new(), lfs: None },
            ]
        };
        let mut s = SourceConfig { repo: Some("o/n".into()), split: Some("train".into()), ..Default::default() };
        let paths = |v: Vec<TreeEntry>| v.into_iter().map(|e| e.path).collect::<Vec<_>>();
        assert_eq!(
            paths(select_files(&s, listing()).unwrap()),
            ["default/old-train-00000-of-00002.parquet", "default/old-train.parquet", "default/partial-train/0000.parquet", "default/train/0000.parquet", "default/train/0001.parquet"]
        );
        s.split = Some("validation".into());
        let err = select_files(&s, listing()).unwrap_err().to_string();
        assert!(err.contains("\"validation\"") && err.contains("train") && err.contains("test"), "{err}");

        let repo = || vec![entry("README.md"), entry("data/b.jsonl.gz"), entry("data/a.parquet"), entry("scripts/x.py"), entry("extra/c.jsonl")];
        let s = SourceConfig { repo: Some("o/n".into()), exclude: vec!["extra/**".into()], ..Default::default() };
        assert_eq!(paths(select_files(&s, repo()).unwrap()), ["data/a.parquet", "data/b.jsonl.gz"]);
        let s = SourceConfig { repo: Some("o/n".into()), files: vec!["**/*.md".into(), "data/*.parquet".into()], ..Default::default() };
        assert_eq!(paths(select_files(&s, repo()).unwrap()), ["README.md", "data/a.parquet"]);
        let s = SourceConfig { repo: Some("o/n".into()), files: vec!["nothing/*".into()], ..Default::default() };
        assert!(select_files(&s, repo()).unwrap_err().to_string().contains("nothing/*"));
    }
}
