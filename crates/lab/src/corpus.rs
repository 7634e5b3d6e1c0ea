//! The one corpus gathering of the quickstart and the experiments: the Cargo registry
//! sources named in this project's Cargo.lock (which every user already has in their
//! Cargo registry, so the corpus is the same on every machine) and/or `--data` files and
//! folders, optionally sampled down by a hash of the document id, optionally cleaned by the
//! corpus pipeline.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ferrolm_corpus::Document;

/// This project's own lock file: the corpus is the same on every machine.
pub const CARGO_LOCK: &str = include_str!("../../../Cargo.lock");

/// What to gather.
#[derive(Debug, Clone, Default)]
pub struct CorpusOptions {
    /// Read the Cargo registry sources named in the embedded Cargo.lock.
    pub registry: bool,
    /// Extra files or folders (any format `ferrolm_corpus::read_paths` reads).
    pub data: Vec<PathBuf>,
    /// Sample down to about this many bytes (whole documents, chosen by a seeded hash of
    /// their id, so the sample is the same on every machine) before cleaning.
    pub max_bytes: Option<usize>,
    /// Run the corpus pipeline with the quickstart's defaults (report in `out/corpus/`).
    pub clean: bool,
    pub seed: u64,
}

/// The documents of `o` and the report lines that describe them (also printed). The
/// embedded Cargo.lock is written to `out/Cargo.lock` when the registry is read.
pub fn gather_corpus(o: &CorpusOptions, out: &Path) -> Result<(Vec<Document>, Vec<String>)> {
    let mut docs: Vec<Document> = Vec::new();
    let mut lines = Vec::new();
    if o.registry {
        let lock = out.join("Cargo.lock");
        ferrolm_common::write_atomic(&lock, CARGO_LOCK)?;
        let home = ferrolm_corpus::default_cargo_home().context("cannot find the Cargo home (set CARGO_HOME or HOME)")?;
        let (d, st) = ferrolm_corpus::cargo_registry_documents(&lock, &home)?;
        lines.push(format!(
            "Cargo registry ({}): {} documents, {:.1} MB from {} files; {} crates of Cargo.lock not in the registry; {} malformed files rejected",
            home.display(), st.documents, st.bytes as f64 / 1e6, st.files, st.missing_crates.len(), st.rejected
        ));
        docs.extend(d);
    }
    if !o.data.is_empty() {
        let (d, st) = ferrolm_corpus::read_paths(&o.data, &Default::default())?;
        lines.push(format!(
            "--data: {} documents, {:.1} MB; {} malformed records rejected {:?}",
            st.documents, st.bytes as f64 / 1e6, st.rejected, st.rejected_by_reason
        ));
        docs.extend(d);
    }
    anyhow::ensure!(!docs.is_empty(), "no documents: the Cargo registry is empty and no --data was given (build the project first: `cargo build --release`)");
    let total: usize = docs.iter().map(|d| d.text.len()).sum();
    if let Some(max) = o.max_bytes.filter(|&m| m < total) {
        let threshold = (max as f64 / total as f64 * u64::MAX as f64) as u64;
        let before = docs.len();
        docs.retain(|d| xxhash_rust::xxh3::xxh3_64_with_seed(d.id.as_bytes(), o.seed ^ 0x5a4d_504c) < threshold);
        let kept: usize = docs.iter().map(|d| d.text.len()).sum();
        lines.push(format!("sampled {} of {before} documents ({:.1} of {:.1} MB) by a hash of their id", docs.len(), kept as f64 / 1e6, total as f64 / 1e6));
    }
    for l in &lines {
        eprintln!("{l}");
    }
    if !o.clean {
        return Ok((docs, lines));
    }
    let (docs, clean_lines) = clean(docs, out)?;
    for l in &clean_lines {
        eprintln!("{l}");
    }
    lines.extend(clean_lines);
    Ok((docs, lines))
}

/// The corpus pipeline with the quickstart's defaults (code rules for code, prose rules
/// for prose, exact and near-duplicate removal, privacy scrubbing); its report,
/// statistics and excluded documents go to `out/corpus/`.
fn clean(docs: Vec<Document>, out: &Path) -> Result<(Vec<Document>, Vec<String>)> {
    let cfg = ferrolm_corpus::PipelineConfig::quickstart_default();
    let dir = out.join("corpus");
    let (kept, st) = ferrolm_corpus::run_pipeline(docs, &cfg, Some(&dir))?;
    let mut lines = vec![format!(
        "cleaning: {} documents in, {} kept ({:.1} MB of {:.1} MB), {} removed, {} rejected; report in {}",
        st.input,
        st.kept,
        st.bytes_kept as f64 / 1e6,
        st.bytes_in as f64 / 1e6,
        st.removed,
        st.rejected,
        dir.join("report.md").display()
    )];
    for (step, reasons) in &st.removed_by_step {
        let total: u64 = reasons.values().sum();
        if total > 0 {
            let detail: Vec<String> = reasons.iter().map(|(r, n)| format!("{r}: {n}")).collect();
            lines.push(format!("removed by {step}: {total} ({})", detail.join(", ")));
        }
    }
    Ok((kept, lines))
}

/// Split documents into (train, held-out) by a seeded hash of their id: the quickstart's
/// and `experiment history`'s rule ([`ferrolm_corpus::split_by_key`] keyed by id).
pub fn split_by_id(docs: Vec<Document>, val_fraction: f64, seed: u64) -> Result<(Vec<Document>, Vec<Document>)> {
    Ok(ferrolm_corpus::split_by_key(docs, |d| d.id.clone(), val_fraction, seed)?)
}

/// Total UTF-8 bytes of the documents' text.
pub fn text_bytes(docs: &[Document]) -> usize {
    docs.iter().map(|d| d.text.len()).sum()
}

/// The documents of files and folders, read by [`ferrolm_corpus::read_paths`] (every
/// format it knows). Malformed records are counted and reported on standard error (by
/// reason, with the first examples), not dropped silently; no document at all is an error.
pub fn read_documents(paths: &[PathBuf]) -> Result<Vec<Document>> {
    let (docs, st) = ferrolm_corpus::read_paths(paths, &Default::default())?;
    if st.rejected > 0 {
        eprintln!("warning: {} malformed records were skipped: {:?}", st.rejected, st.rejected_by_reason);
        for r in st.examples.iter().take(5) {
            eprintln!("  {r}");
        }
    }
    anyhow::ensure!(!docs.is_empty(), "no documents found in {:?}", paths);
    Ok(docs)
}
