//! `hf:ORG/NAME[@REVISION]`: a model on the Hugging Face Hub, resolved into Hugging Face's
//! own cache layout so Python tools and ferrolm share downloads:
//!
//! ```text
//! $HF_HOME/hub/models--ORG--NAME/refs/REVISION          the commit a branch or tag points at
//! $HF_HOME/hub/models--ORG--NAME/blobs/ETAG             file contents (SHA-256 for LFS files, else the git blob id)
//! $HF_HOME/hub/models--ORG--NAME/snapshots/COMMIT/FILE  → ../../blobs/ETAG (a relative symlink)
//! ```
//!
//! Online, the revision is resolved to a commit (`GET {endpoint}/api/models/{repo}/revision/{rev}`),
//! the commit's files listed (`/api/models/{repo}/tree/{commit}?recursive=true`), and the
//! files a model folder needs (top-level `*.json` and `*.safetensors`) fetched from
//! `{endpoint}/{repo}/resolve/{commit}/{file}`: each into a temporary file, checked against
//! the listed size (and SHA-256 for LFS files), then renamed into `blobs/`, so a killed
//! download never looks complete. Environment as `huggingface_hub` reads it: `HF_HOME`
//! (default `~/.cache/huggingface`), `HF_ENDPOINT`, `HF_TOKEN` (else
//! `HUGGING_FACE_HUB_TOKEN`, else `$HF_HOME/token`), `HF_HUB_OFFLINE=1` (only the cache).
//! The HTTP client is the one the corpus crate's Hub dataset source uses (ureq, rustls).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferrolm_common::AtomicFile;
use serde::Deserialize;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where and how to reach the Hub, from the environment.
#[derive(Debug, Clone)]
pub struct HubEnv {
    pub endpoint: String,
    pub token: Option<String>,
    /// `$HF_HOME`.
    pub home: PathBuf,
    pub offline: bool,
}

impl HubEnv {
    pub fn from_process() -> Self {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// From any variable source (tests pass their own).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let nonempty = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let home = nonempty(var("HF_HOME"))
            .map(PathBuf::from)
            .or_else(|| nonempty(var("XDG_CACHE_HOME")).map(|x| PathBuf::from(x).join("huggingface")))
            .or_else(|| nonempty(var("HOME")).map(|h| PathBuf::from(h).join(".cache").join("huggingface")))
            .unwrap_or_else(|| PathBuf::from(".cache/huggingface"));
        let token = nonempty(var("HF_TOKEN"))
            .or_else(|| nonempty(var("HUGGING_FACE_HUB_TOKEN")))
            .or_else(|| nonempty(std::fs::read_to_string(home.join("token")).ok()));
        let offline = nonempty(var("HF_HUB_OFFLINE")).is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        let endpoint = nonempty(var("HF_ENDPOINT")).unwrap_or_else(|| DEFAULT_ENDPOINT.into()).trim_end_matches('/').to_string();
        Self { endpoint, token, home, offline }
    }
}

/// `ORG/NAME[@REVISION]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelId {
    pub repo: String,
    pub revision: String,
}

impl ModelId {
    pub fn parse(id: &str) -> Result<Self> {
        let (repo, revision) = match id.split_once('@') {
            Some((r, rev)) => (r, rev),
            None => (id, "main"),
        };
        let ok_part = |p: &str| !p.is_empty() && p != "." && p != ".." && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        match repo.split_once('/') {
            Some((org, name)) if ok_part(org) && ok_part(name) => {}
            _ => bail!("hf:{id}: expected hf:ORG/NAME or hf:ORG/NAME@REVISION (letters, digits, '-', '_', '.')"),
        }
        let ok_rev = !revision.is_empty() && !revision.split('/').any(|s| s.is_empty() || s == "." || s == "..") && revision.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !ok_rev {
            bail!("hf:{id}: {revision:?} is not a valid revision (a branch, tag or commit)");
        }
        Ok(Self { repo: repo.to_string(), revision: revision.to_string() })
    }

    /// `$HF_HOME/hub/models--ORG--NAME`.
    pub fn cache_dir(&self, env: &HubEnv) -> PathBuf {
        env.home.join("hub").join(format!("models--{}", self.repo.replace('/', "--")))
    }
}

fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit())
}

/// The snapshot folder of `id` (`ORG/NAME[@REVISION]`), downloading what is missing unless
/// offline.
pub fn resolve(id: &str, env: &HubEnv) -> Result<PathBuf> {
    let id = ModelId::parse(id)?;
    if env.offline {
        return cached_snapshot(&id, env);
    }
    download_snapshot(&id, env)
}

/// The cached snapshot of `id`, without the network.
pub fn cached_snapshot(id: &ModelId, env: &HubEnv) -> Result<PathBuf> {
    let root = id.cache_dir(env);
    let commit = if is_commit(&id.revision) {
        id.revision.clone()
    } else {
        let r = root.join("refs").join(&id.revision);
        let text = std::fs::read_to_string(&r).with_context(|| {
            format!("hf:{}@{}: not in the cache ({} is missing) and HF_HUB_OFFLINE is set; download it once online", id.repo, id.revision, r.display())
        })?;
        text.trim().to_string()
    };
    let snap = root.join("snapshots").join(&commit);
    if !snap.join("config.json").is_file() {
        bail!("hf:{}@{}: the cached snapshot {} has no config.json (HF_HUB_OFFLINE is set, so nothing is downloaded)", id.repo, id.revision, snap.display());
    }
    Ok(snap)
}

#[derive(Debug, Deserialize)]
struct RevisionInfo {
    sha: String,
}

#[derive(Debug, Clone, Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    oid: String,
    #[serde(default)]
    lfs: Option<Lfs>,
}

#[derive(Debug, Clone, Deserialize)]
struct Lfs {
    oid: String,
    size: u64,
}

impl TreeEntry {
    fn size(&self) -> u64 {
        self.lfs.as_ref().map_or(self.size, |l| l.size)
    }
    /// The cache's blob name: SHA-256 for LFS files, the git blob id otherwise (as huggingface_hub names them).
    fn etag(&self) -> &str {
        self.lfs.as_ref().map_or(self.oid.as_str(), |l| l.oid.as_str())
    }
    /// The files of a model folder: top-level JSON (config, tokenizer, generation config,
    /// shard index) and safetensors weights; other formats (pytorch .bin, ONNX, GGUF) are skipped.
    fn wanted(&self) -> bool {
        self.kind == "file" && !self.path.contains('/') && (self.path.ends_with(".json") || self.path.ends_with(".safetensors"))
    }
}

struct Client<'a> {
    env: &'a HubEnv,
    agent: ureq::Agent,
}

impl<'a> Client<'a> {
    fn new(env: &'a HubEnv) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // the token follows a redirect only to the same host, never to the CDN
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_resolve(Some(Duration::from_secs(20)))
            .timeout_per_read(Some(Duration::from_secs(120)))
            .user_agent(format!("ferrolm-model/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self { env, agent }
    }

    fn get(&self, url: &str) -> Result<ureq::http::Response<ureq::Body>> {
        let mut req = self.agent.get(url);
        if let Some(t) = &self.env.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let resp = req.call().map_err(|e| {
            anyhow::anyhow!("GET {url}: {e}. Is this machine online? Set HF_ENDPOINT for a mirror, or HF_HUB_OFFLINE=1 to use the cache only")
        })?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        let hint = match status {
            401 | 403 if self.env.token.is_none() => "the model is private or gated: set HF_TOKEN (or log in with `huggingface-cli login`)",
            401 | 403 => "the token (HF_TOKEN) was refused or lacks access to this model (gated models need their terms accepted on the Hub)",
            404 => "no such model, revision or file",
            429 => "rate-limited by the Hub; retry later or set HF_TOKEN",
            _ => "the Hub answered with an error",
        };
        bail!("GET {url}: HTTP {status}: {hint}")
    }

    fn json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T> {
        let mut resp = self.get(url)?;
        let body = resp.body_mut().with_config().limit(64 << 20).read_to_string().with_context(|| format!("GET {url}: reading the answer"))?;
        serde_json::from_str(&body).with_context(|| format!("GET {url}: not the JSON the Hub API answers"))
    }

    /// Fetch one file into `dest` atomically, checking size and (LFS) SHA-256 first.
    fn download(&self, url: &str, e: &TreeEntry, dest: &Path) -> Result<()> {
        let mut resp = self.get(url)?;
        let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
        let mut out = AtomicFile::create(dest).with_context(|| format!("cannot create {}", dest.display()))?;
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => bail!("GET {url}: the download broke off after {n} bytes: {err}"),
            };
            sha.update(&buf[..k]);
            out.write_all(&buf[..k]).with_context(|| format!("cannot write {}", dest.display()))?;
            n += k as u64;
        }
        if n != e.size() {
            bail!("GET {url}: got {n} bytes, the listing says {}; not kept", e.size());
        }
        if let Some(lfs) = &e.lfs {
            let got: String = sha.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
            if !got.eq_ignore_ascii_case(&lfs.oid) {
                bail!("GET {url}: SHA-256 {got} does not match the listed {}; not kept", lfs.oid);
            }
        }
        out.commit().with_context(|| format!("cannot write {}", dest.display()))
    }
}

fn download_snapshot(id: &ModelId, env: &HubEnv) -> Result<PathBuf> {
    let client = Client::new(env);
    let api = format!("{}/api/models/{}", env.endpoint, id.repo);
    let info: RevisionInfo = client.json(&format!("{api}/revision/{}", id.revision))?;
    if !is_commit(&info.sha) {
        bail!("{api}/revision/{}: the Hub named the commit {:?}, which is not a commit id", id.revision, info.sha);
    }
    let tree: Vec<TreeEntry> = client.json(&format!("{api}/tree/{}?recursive=true", info.sha))?;
    let mut files: Vec<&TreeEntry> = tree.iter().filter(|e| e.wanted()).collect();
    // config.json is linked last: a snapshot interrupted before the end has none, and is
    // never taken for a model folder
    files.sort_by_key(|e| (e.path == "config.json", e.path.clone()));
    if !files.iter().any(|e| e.path == "config.json") {
        bail!("hf:{}@{}: the repository has no config.json at its top level (not a transformers model?)", id.repo, id.revision);
    }
    let root = id.cache_dir(env);
    let snap = root.join("snapshots").join(&info.sha);
    std::fs::create_dir_all(&snap).with_context(|| format!("cannot create {}", snap.display()))?;
    std::fs::create_dir_all(root.join("blobs"))?;
    for e in files {
        let etag = e.etag();
        if etag.is_empty() || !etag.chars().all(|c| c.is_ascii_hexdigit()) {
            bail!("hf:{}: the listing gives {} no usable id ({etag:?})", id.repo, e.path);
        }
        let blob = root.join("blobs").join(etag);
        // a blob is only ever renamed into place complete and checked, so its presence with
        // the listed size means it is done
        let done = std::fs::metadata(&blob).map(|m| m.len() == e.size()).unwrap_or(false);
        if !done {
            eprintln!("downloading {}/{} ({} bytes)", id.repo, e.path, e.size());
            client.download(&format!("{}/{}/resolve/{}/{}", env.endpoint, id.repo, info.sha, e.path), e, &blob)?;
        }
        let link = snap.join(&e.path);
        if std::fs::read_link(&link).ok().as_deref() != Some(Path::new(&format!("../../blobs/{etag}"))) {
            let tmp = snap.join(format!(".{}.link.tmp", e.path));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(format!("../../blobs/{etag}"), &tmp).with_context(|| format!("cannot link {}", tmp.display()))?;
            std::fs::rename(&tmp, &link).with_context(|| format!("cannot link {}", link.display()))?;
        }
    }
    if id.revision != info.sha {
        ferrolm_common::write_atomic(root.join("refs").join(&id.revision), &info.sha).with_context(|| format!("cannot write the ref {}", id.revision))?;
    }
    Ok(snap)
}
