//! The quickstart's corpus: sources of the crates a Cargo.lock names, from the local registry.
//!
//! Limiting to the lockfile's crates makes the corpus identical on every machine that built the
//! same lockfile, whatever else its registry holds. Order: packages sorted by (name, version),
//! files sorted by path; for each .rs file the code document comes before its doc-comment one.

use super::{DocumentStream, FileKind, FileSpec, ReadOptions, ReadStats};
use crate::{io_err, CorpusError, Document, Result};
use std::path::{Path, PathBuf};

/// A registry package named by a lockfile.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LockedCrate {
    pub name: String,
    pub version: String,
}

/// Registry packages (crates.io or sparse registries) in a Cargo.lock; path and git packages are
/// not in `registry/src` and are left out.
pub fn locked_registry_crates(lockfile: &Path) -> Result<Vec<LockedCrate>> {
    let text = std::fs::read_to_string(lockfile).map_err(io_err(lockfile))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| CorpusError::Invalid { path: lockfile.into(), message: e.to_string() })?;
    let packages = table.get("package").and_then(|p| p.as_array()).ok_or_else(|| CorpusError::Invalid {
        path: lockfile.into(),
        message: "no [[package]] entries; is this a Cargo.lock?".into(),
    })?;
    let mut out = Vec::new();
    for p in packages {
        let get = |k: &str| p.get(k).and_then(|v| v.as_str());
        let (Some(name), Some(version)) = (get("name"), get("version")) else {
            return Err(CorpusError::Invalid { path: lockfile.into(), message: format!("package without name/version: {p}") });
        };
        let registry = get("source").is_some_and(|s| s.starts_with("registry+") || s.starts_with("sparse+"));
        if registry {
            out.push(LockedCrate { name: name.into(), version: version.into() });
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Which files of a crate become documents, and how. Licence files are included on purpose:
/// they are the corpus's most common exact and near duplicates, which de-duplication removes.
fn classify(rel: &str) -> Option<FileKind> {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    let lower = name.to_ascii_lowercase();
    let (stem, ext) = match lower.rsplit_once('.') {
        Some((s, e)) => (s, e),
        None => (lower.as_str(), ""),
    };
    if ext == "rs" {
        return Some(FileKind::RustWithDocs);
    }
    if matches!(ext, "md" | "markdown") {
        return Some(FileKind::Whole { source: "prose".into() });
    }
    let texty = matches!(ext, "" | "txt") || stem.starts_with("license") || stem.starts_with("licence");
    let named = ["readme", "license", "licence", "copying", "copyright", "notice"].iter().any(|p| stem.starts_with(p));
    (named && texty).then(|| FileKind::Whole { source: "prose".into() })
}

/// The registry source folders (`$CARGO_HOME/registry/src/*`), sorted.
fn registry_dirs(cargo_home: &Path) -> Result<Vec<PathBuf>> {
    let src = cargo_home.join("registry").join("src");
    let rd = std::fs::read_dir(&src).map_err(io_err(&src))?;
    let mut dirs: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    Ok(dirs)
}

/// The files to read for the crates of `lockfile`, and the crates not found in the registry.
pub fn cargo_registry_specs(lockfile: &Path, cargo_home: &Path) -> Result<(Vec<FileSpec>, Vec<String>, u64)> {
    let crates = locked_registry_crates(lockfile)?;
    let dirs = registry_dirs(cargo_home)?;
    let mut specs = Vec::new();
    let mut missing = Vec::new();
    let mut skipped = 0;
    for c in &crates {
        let folder = format!("{}-{}", c.name, c.version);
        let Some(root) = dirs.iter().map(|d| d.join(&folder)).find(|p| p.is_dir()) else {
            missing.push(folder);
            continue;
        };
        for entry in walkdir::WalkDir::new(&root).sort_by_file_name() {
            let entry = entry.map_err(|e| CorpusError::Invalid { path: root.clone(), message: e.to_string() })?;
            if !entry.file_type().is_file() {
                continue;
            }
            let rel = entry.path().strip_prefix(&root).expect("walk stays under root");
            let rel = rel.to_string_lossy().replace('\\', "/");
            if rel.split('/').any(|part| part.starts_with('.') || part == "target") {
                continue;
            }
            let Some(kind) = classify(&rel) else {
                skipped += 1;
                continue;
            };
            let mut meta = serde_json::Map::new();
            meta.insert("crate".into(), c.name.clone().into());
            meta.insert("version".into(), c.version.clone().into());
            meta.insert("path".into(), rel.clone().into());
            specs.push(FileSpec { path: entry.path().to_path_buf(), kind, id: format!("{folder}/{rel}"), meta });
        }
    }
    Ok((specs, missing, skipped))
}

/// Streaming form of [`cargo_registry_documents`].
pub fn cargo_registry_stream(lockfile: &Path, cargo_home: &Path) -> Result<DocumentStream> {
    let (specs, missing, skipped) = cargo_registry_specs(lockfile, cargo_home)?;
    let mut s = DocumentStream::from_specs(specs, ReadOptions::default());
    s.stats_mut().missing_crates = missing;
    s.stats_mut().skipped_files = skipped;
    Ok(s)
}

/// Sources of the crates named in `lockfile` (a Cargo.lock) found under the registry source dirs
/// (`$CARGO_HOME/registry/src/*/<name>-<version>/`). Rust files -> source "code"; Markdown,
/// README and licence files and the `//!` / `///` doc comments extracted from .rs files -> source
/// "prose". Deterministic order. Crates absent from the registry are listed in
/// `ReadStats::missing_crates`; unreadable files are counted as rejections.
pub fn cargo_registry_documents(lockfile: &Path, cargo_home: &Path) -> Result<(Vec<Document>, ReadStats)> {
    let mut stream = cargo_registry_stream(lockfile, cargo_home)?;
    let docs = stream
        .by_ref()
        .filter_map(|i| if let super::ReadItem::Doc(d) = i { Some(d) } else { None })
        .collect();
    Ok((docs, stream.into_stats()))
}

/// `$CARGO_HOME`, else `~/.cargo`.
pub fn default_cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}
