//! The runner: streams documents through the steps in parallel batches, accounts for every
//! document, and writes `kept/`, `excluded/`, `stats.json` and `report.md` atomically.
//!
//! Steps are grouped into segments that each start at a corpus-level (global) step. A segment
//! streams its input through its steps; the survivors are observed by the next global step and
//! spilled (to memory for in-memory runs, to a work file when streaming), then the next segment
//! reads the spill. Memory is bounded by a few batches plus the global steps' compact state
//! (hashes, signatures), so corpora larger than RAM work.

use crate::config::{PipelineConfig, SourceKind};
use crate::read::hub::HubPlan;
use std::sync::Arc;
use crate::read::cargo::cargo_registry_specs;
use crate::read::{expand_paths_filtered, DocumentStream, PathFilter, FileSpec, ReadItem, ReadOptions, ReadStats};
use crate::step::{Scoped, Verdict};
use crate::steps::{MixConfig, Mixer};
use crate::write_parquet::ParquetDocWriter;
use crate::{io_err, CorpusError, Document, Rejection, Result};
use ferrolm_common::AtomicFile;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

mod segments;
mod sources;
mod spill;
mod stats;
mod write;

use segments::*;
use spill::*;
use write::*;
pub use sources::{fetch_planned, source_plan, source_specs, PlannedFile};
use sources::MultiStream;
pub use stats::{Example, PipelineStats, SourceStats, StepStats};
use stats::Reservoir;

/// How to run: which shard, whether to redo a shard already marked complete.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// (index, count): this run handles input files `j` with `j % count == index`.
    pub shard: Option<(u32, u32)>,
    /// Rerun even if the shard's completion marker exists.
    pub force: bool,
}

impl RunOptions {
    pub fn tag(&self) -> String {
        match self.shard {
            Some((i, n)) => format!("{i:05}-of-{n:05}"),
            None => "00000".into(),
        }
    }
}

/// Parse `i/N` (0-based index).
pub fn parse_shard(s: &str) -> Result<(u32, u32)> {
    let err = || CorpusError::Config(format!("--shard {s:?}: expected i/N with 0 <= i < N, e.g. 3/16"));
    let (a, b) = s.split_once('/').ok_or_else(err)?;
    let (i, n): (u32, u32) = (a.trim().parse().map_err(|_| err())?, b.trim().parse().map_err(|_| err())?);
    if n == 0 || i >= n {
        return Err(err());
    }
    Ok((i, n))
}

/// Called with every kept document in output order (e.g. a tokenized-shard writer).
pub type Sink<'a> = &'a mut dyn FnMut(&Document) -> std::io::Result<()>;

/// Run `cfg` on documents already in memory; with `out_dir`, also write the outputs there.
/// Returns the kept documents (up-sampled ones repeated) and the statistics.
pub fn run_pipeline(docs: Vec<Document>, cfg: &PipelineConfig, out_dir: Option<&Path>) -> Result<(Vec<Document>, PipelineStats)> {
    let read = ReadStats { documents: docs.len() as u64, bytes: docs.iter().map(|d| d.text.len() as u64).sum(), ..Default::default() };
    let items = docs.into_iter().map(ReadItem::Doc);
    let mut kept = Vec::new();
    let mut sink = |d: &Document| {
        kept.push(d.clone());
        Ok(())
    };
    let stats = run_items(Box::new(items), read, cfg, out_dir, &RunOptions::default(), true, Some(&mut sink))?;
    Ok((kept, stats))
}

/// The completion marker of a run (or of its shard): `OUT/done/<tag>.json`.
pub fn done_marker(out_dir: &Path, opts: &RunOptions) -> PathBuf {
    out_dir.join("done").join(format!("{}.json", opts.tag()))
}

/// Run a configured pipeline over its sources, streaming, writing to `out_dir`.
/// With a shard, only that shard's files are read and outputs carry the shard's tag; a shard
/// whose completion marker exists is skipped (its recorded stats are returned) unless `force`.
pub fn run_configured(cfg: &PipelineConfig, out_dir: &Path, opts: &RunOptions, sink: Option<Sink>) -> Result<PipelineStats> {
    cfg.validate()?;
    if cfg.sources.is_empty() {
        return Err(CorpusError::Config("no [[source]] in the config (or --input paths)".into()));
    }
    let marker = done_marker(out_dir, opts);
    if marker.exists() && !opts.force {
        tracing_info(&format!("shard {} already complete ({}); skipping", opts.tag(), marker.display()));
        let text = std::fs::read_to_string(&marker).map_err(io_err(&marker))?;
        return serde_json::from_str(&text).map_err(|e| CorpusError::Invalid { path: marker, message: e.to_string() });
    }
    let (planned, pre) = source_plan(cfg)?;
    let planned: Vec<(PlannedFile, ReadOptions)> = match opts.shard {
        Some((i, n)) => planned.into_iter().enumerate().filter(|(j, _)| *j as u32 % n == i).map(|(_, s)| s).collect(),
        None => planned,
    };
    // Only this shard's Hub files are downloaded.
    let specs = fetch_planned(planned)?;
    let stream = MultiStream::new(specs);
    let mut read = pre;
    read.files = 0;
    run_items_stream(stream, read, cfg, Some(out_dir), opts, sink)
}

fn tracing_info(msg: &str) {
    eprintln!("{msg}");
}

fn run_items_stream(mut stream: MultiStream, read: ReadStats, cfg: &PipelineConfig, out_dir: Option<&Path>, opts: &RunOptions, sink: Option<Sink>) -> Result<PipelineStats> {
    // Reading statistics are only complete after the stream ends; collect them through a cell.
    let cell = std::cell::RefCell::new(ReadStats::default());
    let mut ended = false;
    let items = std::iter::from_fn(|| {
        let it = stream.next();
        if it.is_none() && !std::mem::replace(&mut ended, true) {
            let mut s = std::mem::take(&mut stream.stats);
            if let Some(c) = stream.cur.take() {
                s.merge(&c.into_stats(), 1000);
            }
            *cell.borrow_mut() = s;
        }
        it
    });
    let mut stats = run_items(Box::new(items), read, cfg, out_dir, opts, false, sink)?;
    let r = cell.into_inner();
    stats.rejected = r.rejected;
    stats.rejected_by_reason = r.rejected_by_reason.clone();
    stats.rejected_examples = r.examples.iter().take(50).cloned().collect();
    if let Some(dir) = out_dir {
        finish_outputs(&mut stats, cfg, dir, opts)?;
    }
    Ok(stats)
}

/// Remove what a killed earlier run of this shard left: temporaries and the work folder.
fn clean_stale(dir: &Path, tag: &str) -> Result<()> {
    for sub in ["kept", "excluded", "kept-parquet"] {
        let d = dir.join(sub);
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let temporary = [format!(".part-{tag}.jsonl."), format!(".part-{tag}.parquet.")].iter().any(|p| name.starts_with(p.as_str()));
                if temporary && name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir.join(format!(".work-{tag}")));
    Ok(())
}

/// stats (per shard), the completion marker, then the combined stats.json and report.md.
fn finish_outputs(stats: &mut PipelineStats, cfg: &PipelineConfig, dir: &Path, opts: &RunOptions) -> Result<()> {
    let tag = opts.tag();
    ferrolm_common::write_atomic(dir.join("config.resolved.toml"), cfg.to_toml()).map_err(io_err(dir))?;
    let json = serde_json::to_string_pretty(stats).expect("stats serialize");
    let hist_path = dir.join("stats").join(format!("histograms-{tag}.json"));
    ferrolm_common::write_atomic(&hist_path, serde_json::to_vec(&stats.histograms).expect("histograms serialize")).map_err(io_err(&hist_path))?;
    let shard_path = dir.join("stats").join(format!("{tag}.json"));
    ferrolm_common::write_atomic(&shard_path, &json).map_err(io_err(&shard_path))?;
    let marker = dir.join("done").join(format!("{tag}.json"));
    ferrolm_common::write_atomic(&marker, &json).map_err(io_err(&marker))?;
    merge_report(dir)?;
    Ok(())
}

/// Combine every completed shard's statistics in `dir` into `stats.json` and `report.md`
/// (with histogram pictures in `plots/`). Run after all shards of a distributed job.
pub fn merge_report(dir: &Path) -> Result<PipelineStats> {
    let done = dir.join("done");
    let mut tags: Vec<String> = std::fs::read_dir(&done)
        .map_err(io_err(&done))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
        .map(|n| n.trim_end_matches(".json").to_string())
        .collect();
    tags.sort();
    let mut total = PipelineStats::default();
    for t in &tags {
        let p = dir.join("stats").join(format!("{t}.json"));
        let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
        let mut s: PipelineStats = serde_json::from_str(&text).map_err(|e| CorpusError::Invalid { path: p.clone(), message: e.to_string() })?;
        let hp = dir.join("stats").join(format!("histograms-{t}.json"));
        if let Ok(h) = std::fs::read(&hp) {
            s.histograms = serde_json::from_slice(&h).unwrap_or_default();
        }
        total.merge(&s);
    }
    total.shard = (tags.len() > 1 || tags.first().is_some_and(|t| t.contains("-of-"))).then(|| format!("{} shard(s): {}", tags.len(), tags.join(", ")));
    let mut json = serde_json::to_value(&total).expect("stats serialize");
    if let Some(o) = json.as_object_mut() {
        o.insert("balanced".into(), total.balanced().into());
    }
    ferrolm_common::write_atomic(dir.join("stats.json"), serde_json::to_string_pretty(&json).unwrap()).map_err(io_err(dir))?;
    let report = crate::report::render(&total, dir)?;
    ferrolm_common::write_atomic(dir.join("report.md"), report).map_err(io_err(dir))?;
    Ok(total)
}
