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

/// A removed document shown in the report.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Example {
    pub id: String,
    pub snippet: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StepStats {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<String>>,
    pub docs_in: u64,
    pub docs_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub removed: BTreeMap<String, u64>,
    pub examples: BTreeMap<String, Vec<Example>>,
    /// Thread-seconds spent in this step's `apply` (observe passes not included).
    pub seconds: f64,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub summary: serde_json::Value,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SourceStats {
    pub input: u64,
    pub kept: u64,
    pub bytes_in: u64,
    pub bytes_kept: u64,
}

/// Totals: `input == kept + removed` over documents, and `rejected` counts malformed records
/// that never became documents. `written` includes mixing's up-sampled repeats.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PipelineStats {
    pub input: u64,
    pub kept: u64,
    pub removed: u64,
    pub rejected: u64,
    pub written: u64,
    pub bytes_in: u64,
    pub bytes_kept: u64,
    pub removed_by_step: BTreeMap<String, BTreeMap<String, u64>>,
    pub rejected_by_reason: BTreeMap<String, u64>,
    pub rejected_examples: Vec<Rejection>,
    pub skipped_files: u64,
    pub missing_crates: Vec<String>,
    pub sources: BTreeMap<String, SourceStats>,
    pub steps: Vec<StepStats>,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// Samples for the report's histograms, by name.
    #[serde(skip)]
    pub histograms: BTreeMap<String, Vec<f64>>,
}

impl PipelineStats {
    /// Every document and record that came in is accounted for.
    pub fn balanced(&self) -> bool {
        self.input == self.kept + self.removed
            && self.removed == self.removed_by_step.values().flat_map(|m| m.values()).sum::<u64>()
            && self.rejected == self.rejected_by_reason.values().sum::<u64>()
    }

    /// Add another shard's figures.
    pub fn merge(&mut self, o: &PipelineStats) {
        self.input += o.input;
        self.kept += o.kept;
        self.removed += o.removed;
        self.rejected += o.rejected;
        self.written += o.written;
        self.bytes_in += o.bytes_in;
        self.bytes_kept += o.bytes_kept;
        self.skipped_files += o.skipped_files;
        self.seconds = self.seconds.max(o.seconds);
        for (s, m) in &o.removed_by_step {
            for (r, n) in m {
                *self.removed_by_step.entry(s.clone()).or_default().entry(r.clone()).or_default() += n;
            }
        }
        for (r, n) in &o.rejected_by_reason {
            *self.rejected_by_reason.entry(r.clone()).or_default() += n;
        }
        self.rejected_examples.extend(o.rejected_examples.iter().take(20).cloned());
        for m in &o.missing_crates {
            if !self.missing_crates.contains(m) {
                self.missing_crates.push(m.clone());
            }
        }
        for (k, v) in &o.sources {
            let e = self.sources.entry(k.clone()).or_default();
            e.input += v.input;
            e.kept += v.kept;
            e.bytes_in += v.bytes_in;
            e.bytes_kept += v.bytes_kept;
        }
        if self.steps.is_empty() {
            self.steps = o.steps.clone();
        } else {
            for (a, b) in self.steps.iter_mut().zip(&o.steps) {
                a.docs_in += b.docs_in;
                a.docs_out += b.docs_out;
                a.bytes_in += b.bytes_in;
                a.bytes_out += b.bytes_out;
                a.seconds += b.seconds;
                for (r, n) in &b.removed {
                    *a.removed.entry(r.clone()).or_default() += n;
                }
                for (r, ex) in &b.examples {
                    let e = a.examples.entry(r.clone()).or_default();
                    for x in ex {
                        if e.len() < 3 {
                            e.push(x.clone());
                        }
                    }
                }
            }
        }
        for (k, v) in &o.histograms {
            self.histograms.entry(k.clone()).or_default().extend(v);
        }
    }
}

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

/// A source's file before reading: local, or on the Hub (fetched only when its shard runs).
#[derive(Debug, Clone)]
pub enum PlannedFile {
    Local(FileSpec),
    Hub { plan: Arc<HubPlan>, index: usize },
}

/// The files a config's sources name, in order, with their reading options; Hub sources are
/// listed but not downloaded (see [`fetch_planned`]).
pub fn source_plan(cfg: &PipelineConfig) -> Result<(Vec<(PlannedFile, ReadOptions)>, ReadStats)> {
    let mut out = Vec::new();
    let mut stats = ReadStats::default();
    for s in &cfg.sources {
        let mut opts = ReadOptions { text_field: s.text_field.clone(), ..Default::default() };
        if s.source_kind()? == SourceKind::Hub {
            opts.source = (s.name != "auto").then(|| s.name.clone());
            let plan = Arc::new(crate::read::hub::plan(s)?);
            out.extend((0..plan.files.len()).map(|index| (PlannedFile::Hub { plan: plan.clone(), index }, opts.clone())));
            continue;
        }
        if let Some(lock) = &s.cargo_lock {
            let home = s.cargo_home.clone().or_else(crate::read::cargo::default_cargo_home).ok_or_else(|| CorpusError::Config("no CARGO_HOME or HOME to find the registry".into()))?;
            let (specs, missing, skipped) = cargo_registry_specs(lock, &home)?;
            stats.missing_crates.extend(missing);
            stats.skipped_files += skipped;
            out.extend(specs.into_iter().map(|sp| (PlannedFile::Local(sp), opts.clone())));
        }
        if !s.paths.is_empty() {
            opts.source = (s.name != "auto").then(|| s.name.clone());
            let filter = PathFilter::new(&s.include, &s.exclude)?;
            let (specs, skipped) = expand_paths_filtered(&s.paths, &filter)?;
            stats.skipped_files += skipped;
            out.extend(specs.into_iter().map(|sp| (PlannedFile::Local(sp), opts.clone())));
        }
    }
    Ok((out, stats))
}

/// Download the Hub files among `planned` (those not cached yet) and return every file as a
/// local reader spec, in the same order.
pub fn fetch_planned(planned: Vec<(PlannedFile, ReadOptions)>) -> Result<Vec<(FileSpec, ReadOptions)>> {
    // One download batch per Hub source: its selected files, in order.
    let mut wanted: Vec<(Arc<HubPlan>, Vec<usize>)> = Vec::new();
    for (p, _) in &planned {
        if let PlannedFile::Hub { plan, index } = p {
            match wanted.iter_mut().find(|(q, _)| Arc::ptr_eq(q, plan)) {
                Some((_, v)) => v.push(*index),
                None => wanted.push((plan.clone(), vec![*index])),
            }
        }
    }
    let token = crate::read::hub::token_from_env();
    let offline = crate::read::hub::offline_from_env();
    let mut fetched: Vec<(Arc<HubPlan>, std::collections::VecDeque<FileSpec>)> = Vec::new();
    for (plan, idx) in wanted {
        let sub = HubPlan { files: idx.iter().map(|&i| plan.files[i].clone()).collect(), ..(*plan).clone() };
        fetched.push((plan, sub.fetch(token.clone(), offline)?.into()));
    }
    let mut out = Vec::with_capacity(planned.len());
    for (p, opts) in planned {
        match p {
            PlannedFile::Local(spec) => out.push((spec, opts)),
            PlannedFile::Hub { plan, .. } => {
                let q = fetched.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &plan)).map(|(_, q)| q).expect("every Hub plan was fetched");
                out.push((q.pop_front().expect("one spec per planned file"), opts));
            }
        }
    }
    Ok(out)
}

/// The files a config's sources name, in order, with their reading options (Hub files downloaded).
pub fn source_specs(cfg: &PipelineConfig) -> Result<(Vec<(FileSpec, ReadOptions)>, ReadStats)> {
    let (planned, stats) = source_plan(cfg)?;
    Ok((fetch_planned(planned)?, stats))
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

/// Streams files, each with its own read options (sources differ in text field and name).
struct MultiStream {
    specs: std::collections::VecDeque<(FileSpec, ReadOptions)>,
    cur: Option<DocumentStream>,
    stats: ReadStats,
}

impl MultiStream {
    fn new(specs: Vec<(FileSpec, ReadOptions)>) -> Self {
        Self { specs: specs.into(), cur: None, stats: ReadStats::default() }
    }
}

impl Iterator for MultiStream {
    type Item = ReadItem;
    fn next(&mut self) -> Option<ReadItem> {
        loop {
            if let Some(s) = &mut self.cur {
                if let Some(it) = s.next() {
                    return Some(it);
                }
                let done = self.cur.take().unwrap();
                self.stats.merge(&done.into_stats(), 1000);
            }
            let (spec, opts) = self.specs.pop_front()?;
            // Consecutive files with the same options share one stream.
            let mut group = vec![spec];
            while self.specs.front().is_some_and(|(_, o)| o.text_field == opts.text_field && o.source == opts.source) {
                group.push(self.specs.pop_front().unwrap().0);
                if group.len() >= 256 {
                    break;
                }
            }
            self.cur = Some(DocumentStream::from_specs(group, opts));
        }
    }
}

fn run_items_stream(mut stream: MultiStream, read: ReadStats, cfg: &PipelineConfig, out_dir: Option<&Path>, opts: &RunOptions, sink: Option<Sink>) -> Result<PipelineStats> {
    // Reading statistics are only complete after the stream ends; collect them through a cell.
    let cell = std::cell::RefCell::new(ReadStats::default());
    let items = std::iter::from_fn(|| {
        let it = stream.next();
        if it.is_none() {
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

type SpillIter = Box<dyn Iterator<Item = Result<(u64, Document)>>>;

/// Where surviving documents go between segments.
enum Spill {
    Mem(Vec<(u64, Document)>),
    File { path: PathBuf, w: BufWriter<std::fs::File> },
}

#[derive(Serialize, Deserialize)]
struct SpillRec {
    seq: u64,
    doc: Document,
}

impl Spill {
    /// Add a batch of survivors. File spills serialize the batch in parallel, then write it.
    fn push_batch(&mut self, batch: Vec<(u64, Document)>) -> Result<()> {
        match self {
            Spill::Mem(v) => v.extend(batch),
            Spill::File { path, w } => {
                let lines: Vec<std::result::Result<Vec<u8>, serde_json::Error>> = batch
                    .into_par_iter()
                    .map(|(seq, doc)| {
                        let mut line = serde_json::to_vec(&SpillRec { seq, doc })?;
                        line.push(b'\n');
                        Ok(line)
                    })
                    .collect();
                for l in lines {
                    let l = l.map_err(|e| CorpusError::Invalid { path: path.clone(), message: e.to_string() })?;
                    w.write_all(&l).map_err(io_err(path))?;
                }
            }
        }
        Ok(())
    }

    fn into_iter(self) -> Result<SpillIter> {
        Ok(match self {
            Spill::Mem(v) => Box::new(v.into_iter().map(Ok)),
            Spill::File { path, w } => {
                w.into_inner().map_err(|e| io_err(&path)(e.into_error()))?;
                let f = std::fs::File::open(&path).map_err(io_err(&path))?;
                let _ = std::fs::remove_file(&path); // unlinked now; the open handle still reads it
                Box::new(SpillReader { path, r: BufReader::with_capacity(1 << 20, f), ready: Default::default(), done: false })
            }
        })
    }
}

/// Reads a spill file back in blocks of lines, parsing each block in parallel, in order.
struct SpillReader {
    path: PathBuf,
    r: BufReader<std::fs::File>,
    ready: std::collections::VecDeque<Result<(u64, Document)>>,
    done: bool,
}

impl SpillReader {
    const BLOCK: usize = 16 << 20;

    fn fill(&mut self) {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut bytes = 0;
        while bytes < Self::BLOCK {
            let mut l = Vec::new();
            match self.r.read_until(b'\n', &mut l) {
                Ok(0) => {
                    self.done = true;
                    break;
                }
                Ok(n) => {
                    bytes += n;
                    lines.push(l);
                }
                Err(e) => {
                    self.ready.push_back(Err(io_err(&self.path)(e)));
                    self.done = true;
                    return;
                }
            }
        }
        let path = &self.path;
        let parsed: Vec<Result<(u64, Document)>> = lines
            .into_par_iter()
            .map(|l| {
                let r: SpillRec = serde_json::from_slice(&l).map_err(|e| CorpusError::Invalid { path: path.clone(), message: e.to_string() })?;
                Ok((r.seq, r.doc))
            })
            .collect();
        self.ready.extend(parsed);
    }
}

impl Iterator for SpillReader {
    type Item = Result<(u64, Document)>;
    fn next(&mut self) -> Option<Self::Item> {
        while self.ready.is_empty() && !self.done {
            self.fill();
        }
        self.ready.pop_front()
    }
}

/// Output writers for one run (or shard): kept and excluded JSONL, committed at the end.
struct Writers {
    kept: Option<AtomicFile>,
    kept_parquet: Option<ParquetDocWriter>,
    excluded: Option<AtomicFile>,
}

#[derive(Serialize)]
struct ExcludedRec<'a> {
    id: &'a str,
    source: &'a str,
    step: &'a str,
    reason: &'a str,
    text: &'a str,
    meta: &'a serde_json::Map<String, serde_json::Value>,
}

enum Outcome {
    Kept { seq: u64, doc: Document, repeat: u32 },
    Removed { doc: Document, step: usize, reason: std::borrow::Cow<'static, str> },
}

struct Traced {
    outcome: Outcome,
    /// The document's output line (kept JSONL, or excluded JSONL), serialized on the worker
    /// thread so the ordered writing loop only copies bytes.
    line: Option<Vec<u8>>,
    source: String,
    bytes_in: u64,
    /// (step index, bytes in, bytes out) for the steps that saw the document.
    trace: Vec<(u16, u32, u32)>,
}

/// One JSONL line. Documents and excluded records always serialize (string keys, finite values).
fn json_line<T: Serialize>(v: &T) -> Vec<u8> {
    let mut l = serde_json::to_vec(v).expect("documents serialize to JSON");
    l.push(b'\n');
    l
}

fn snippet(s: &str) -> String {
    let s = crate::steps::language::prefix_at_boundary(s, 160);
    s.replace('\n', " ⏎ ")
}

/// A deterministic reservoir sample (bounded memory for histograms over huge corpora).
struct Reservoir {
    v: Vec<f64>,
    seen: u64,
    rng: u64,
}
impl Reservoir {
    const CAP: usize = 100_000;
    fn new() -> Self {
        Self { v: Vec::new(), seen: 0, rng: 0x1234_5678_9ABC_DEF1 }
    }
    fn push(&mut self, x: f64) {
        self.seen += 1;
        if self.v.len() < Self::CAP {
            self.v.push(x);
        } else {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let j = (self.rng % self.seen) as usize;
            if j < Self::CAP {
                self.v[j] = x;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_items(
    items: Box<dyn Iterator<Item = ReadItem> + '_>,
    read: ReadStats,
    cfg: &PipelineConfig,
    out_dir: Option<&Path>,
    opts: &RunOptions,
    in_memory: bool,
    mut sink: Option<Sink>,
) -> Result<PipelineStats> {
    let t0 = Instant::now();
    let mut steps: Vec<Scoped> = cfg.steps.iter().map(|s| s.build()).collect::<Result<_>>()?;
    if cfg.mix {
        let weights = cfg.sources.iter().map(|s| (s.name.clone(), s.weight)).collect();
        steps.push(Scoped { step: Box::new(Mixer::new(MixConfig { weights, target_bytes: cfg.mix_target_bytes, seed: 0 })), sources: None });
    }
    let n_steps = steps.len();
    let step_names: Vec<String> = steps.iter().map(|s| s.step.name().to_string()).collect();
    let tag = opts.tag();
    let mut stats = PipelineStats {
        rejected: read.rejected,
        rejected_by_reason: read.rejected_by_reason.clone(),
        rejected_examples: read.examples.clone(),
        skipped_files: read.skipped_files,
        missing_crates: read.missing_crates.clone(),
        shard: opts.shard.map(|_| tag.clone()),
        steps: steps.iter().map(|s| StepStats { name: s.step.name().to_string(), sources: s.sources.clone(), ..Default::default() }).collect(),
        ..Default::default()
    };
    let nanos: Vec<AtomicU64> = (0..n_steps).map(|_| AtomicU64::new(0)).collect();
    let mut writers = Writers { kept: None, kept_parquet: None, excluded: None };
    let work_dir = out_dir.map(|d| d.join(format!(".work-{tag}")));
    if let Some(dir) = out_dir {
        clean_stale(dir, &tag)?;
        if cfg.output.kept_format.jsonl() {
            writers.kept = Some(AtomicFile::create(dir.join("kept").join(format!("part-{tag}.jsonl"))).map_err(io_err(dir))?);
        }
        if cfg.output.kept_format.parquet() {
            // A folder of its own: kept/ stays JSONL only, so a stage reading the folder kept/
            // (e.g. `minhash signatures --input OUT/kept`) never sees every document twice.
            writers.kept_parquet = Some(ParquetDocWriter::create(dir.join("kept-parquet").join(format!("part-{tag}.parquet")), &cfg.output.parquet)?);
        }
        if cfg.write_excluded {
            writers.excluded = Some(AtomicFile::create(dir.join("excluded").join(format!("part-{tag}.jsonl"))).map_err(io_err(dir))?);
        }
    }
    // Segment k runs steps bounds[k]..bounds[k+1]; every segment after the first starts at a global step.
    let mut bounds = vec![0];
    for (i, s) in steps.iter().enumerate() {
        if s.step.is_global() && i > 0 {
            bounds.push(i);
        }
    }
    bounds.push(n_steps);
    let n_segments = bounds.len() - 1;
    if n_steps > 0 && steps[0].step.is_global() {
        // A leading global step needs a pass before anything: make an empty first segment.
        bounds.insert(0, 0);
    }
    let n_segments = if n_steps > 0 && steps[0].step.is_global() { n_segments + 1 } else { n_segments };

    let mut lengths = Reservoir::new();
    let mut meta_hist: BTreeMap<&'static str, Reservoir> = BTreeMap::new();
    let mut seq_counter = 0u64;
    let mut input: Box<dyn Iterator<Item = Result<(u64, Document)>> + '_> = Box::new(items.filter_map(move |it| match it {
        ReadItem::Doc(d) => {
            let s = seq_counter;
            seq_counter += 1;
            Some(Ok((s, d)))
        }
        ReadItem::Rejected(_) => None, // counted by the reader's statistics
    }));
    let pb = ferrolm_common::progress::bar(read.documents, "corpus");

    for seg in 0..n_segments {
        let (lo, hi) = (bounds[seg], bounds[seg + 1]);
        let last = seg + 1 == n_segments;
        let mut spill = if last {
            None
        } else if in_memory || work_dir.is_none() {
            Some(Spill::Mem(Vec::new()))
        } else {
            let wd = work_dir.as_ref().unwrap();
            std::fs::create_dir_all(wd).map_err(io_err(wd))?;
            let path = wd.join(format!("segment-{seg}.jsonl"));
            let f = std::fs::File::create(&path).map_err(io_err(&path))?;
            Some(Spill::File { path, w: BufWriter::with_capacity(1 << 20, f) })
        };
        let (before, after) = steps.split_at_mut(hi);
        let seg_steps = &before[lo..];
        let mut next_global = after.first_mut();
        let mut batch: Vec<(u64, Document)> = Vec::with_capacity(cfg.batch_docs);
        let mut exhausted = false;
        while !exhausted {
            batch.clear();
            let mut batch_bytes = 0usize;
            while batch.len() < cfg.batch_docs && batch_bytes < cfg.batch_bytes {
                match input.next() {
                    Some(r) => {
                        let (s, d) = r?;
                        batch_bytes += d.text.len();
                        batch.push((s, d));
                    }
                    None => {
                        exhausted = true;
                        break;
                    }
                }
            }
            if batch.is_empty() {
                break;
            }
            let want_kept = last && writers.kept.is_some();
            let want_excluded = writers.excluded.is_some();
            let step_names = &step_names;
            let results: Vec<Traced> = std::mem::take(&mut batch)
                .into_par_iter()
                .map(|(seq, mut doc)| {
                    let source = doc.source.clone();
                    let bytes_in = doc.text.len() as u64;
                    let mut trace = Vec::with_capacity(seg_steps.len());
                    let mut repeat = 1;
                    for (k, s) in seg_steps.iter().enumerate() {
                        if !s.applies_to(&doc) {
                            continue;
                        }
                        let idx = lo + k;
                        let b_in = doc.text.len() as u32;
                        let t = Instant::now();
                        let v = s.step.apply(seq, &mut doc);
                        nanos[idx].fetch_add(t.elapsed().as_nanos() as u64, Relaxed);
                        match v {
                            Verdict::Keep => trace.push((idx as u16, b_in, doc.text.len() as u32)),
                            Verdict::Repeat(n) => {
                                repeat = n;
                                trace.push((idx as u16, b_in, doc.text.len() as u32));
                            }
                            Verdict::Remove(reason) => {
                                trace.push((idx as u16, b_in, 0));
                                let line = want_excluded.then(|| {
                                    let rec = ExcludedRec { id: &doc.id, source: &doc.source, step: &step_names[idx], reason: &reason, text: &doc.text, meta: &doc.meta };
                                    json_line(&rec)
                                });
                                return Traced { outcome: Outcome::Removed { doc, step: idx, reason }, line, source, bytes_in, trace };
                            }
                        }
                    }
                    let line = (want_kept && repeat == 1).then(|| json_line(&doc));
                    Traced { outcome: Outcome::Kept { seq, doc, repeat }, line, source, bytes_in, trace }
                })
                .collect();

            let mut observed: Vec<(u64, Document)> = Vec::new();
            for r in results {
                if seg == 0 {
                    stats.input += 1;
                    stats.bytes_in += r.bytes_in;
                    let s = stats.sources.entry(r.source.clone()).or_default();
                    s.input += 1;
                    s.bytes_in += r.bytes_in;
                    pb.inc(1);
                }
                let removed_at = match &r.outcome {
                    Outcome::Removed { step, .. } => Some(*step),
                    Outcome::Kept { .. } => None,
                };
                for &(k, bi, bo) in &r.trace {
                    let st = &mut stats.steps[k as usize];
                    st.docs_in += 1;
                    st.bytes_in += bi as u64;
                    st.bytes_out += bo as u64;
                    if removed_at != Some(k as usize) {
                        st.docs_out += 1;
                    }
                }
                let line = r.line;
                match r.outcome {
                    Outcome::Removed { doc, step, reason } => {
                        stats.removed += 1;
                        let st = &mut stats.steps[step];
                        *st.removed.entry(reason.to_string()).or_default() += 1;
                        let ex = st.examples.entry(reason.to_string()).or_default();
                        if ex.len() < cfg.examples_per_reason {
                            ex.push(Example { id: doc.id.clone(), snippet: snippet(&doc.text) });
                        }
                        *stats.removed_by_step.entry(st.name.clone()).or_default().entry(reason.to_string()).or_default() += 1;
                        if let (Some(w), Some(line)) = (&mut writers.excluded, &line) {
                            w.write_all(line).map_err(io_err(out_dir.unwrap()))?;
                        }
                    }
                    Outcome::Kept { seq, doc, repeat } => {
                        if spill.is_some() {
                            observed.push((seq, doc));
                            continue;
                        }
                        stats.kept += 1;
                        stats.bytes_kept += doc.text.len() as u64;
                        let s = stats.sources.entry(doc.source.clone()).or_default();
                        s.kept += 1;
                        s.bytes_kept += doc.text.len() as u64;
                        lengths.push(doc.text.len() as f64);
                        for key in ["quality_score", "language_score"] {
                            if let Some(x) = doc.meta.get(key).and_then(|v| v.as_f64()) {
                                meta_hist.entry(key).or_insert_with(Reservoir::new).push(x);
                            }
                        }
                        for rep in 0..repeat {
                            let mut d = doc.clone();
                            if rep > 0 {
                                d.id = format!("{}#rep{rep}", doc.id);
                            }
                            stats.written += 1;
                            if let Some(w) = &mut writers.kept {
                                match (&line, rep) {
                                    (Some(l), 0) => w.write_all(l),
                                    _ => w.write_all(&json_line(&d)),
                                }
                                .map_err(io_err(out_dir.unwrap()))?;
                            }
                            if let Some(w) = &mut writers.kept_parquet {
                                w.write(&d)?;
                            }
                            if let Some(sk) = sink.as_mut() {
                                sk(&d).map_err(|e| CorpusError::Io { path: PathBuf::from("<sink>"), source: e })?;
                            }
                        }
                    }
                }
            }
            if !observed.is_empty() {
                let g = next_global.as_mut().expect("a spill implies a next global step");
                let refs: Vec<(u64, &Document)> = observed.iter().filter(|(_, d)| g.applies_to(d)).map(|(s, d)| (*s, d)).collect();
                g.step.observe(&refs);
                spill.as_mut().unwrap().push_batch(observed)?;
            }
        }
        if let Some(g) = next_global.as_mut() {
            g.step.finish_observe();
        }
        if let Some(sp) = spill {
            input = sp.into_iter()?;
        }
    }
    pb.finish_and_clear();
    for (i, s) in steps.iter().enumerate() {
        stats.steps[i].seconds = nanos[i].load(Relaxed) as f64 * 1e-9;
        stats.steps[i].summary = s.step.summary();
        for (name, v) in s.step.histograms() {
            stats.histograms.insert(name, v);
        }
    }
    stats.histograms.insert("document length (bytes, kept)".into(), lengths.v);
    for (k, r) in meta_hist {
        stats.histograms.insert(format!("{k} (kept)"), r.v);
    }
    stats.seconds = t0.elapsed().as_secs_f64();
    if let Some(wd) = &work_dir {
        let _ = std::fs::remove_dir_all(wd);
    }
    if let Some(w) = writers.kept.take() {
        w.commit().map_err(io_err(out_dir.unwrap()))?;
    }
    if let Some(w) = writers.kept_parquet.take() {
        w.commit()?;
    }
    if let Some(w) = writers.excluded.take() {
        w.commit().map_err(io_err(out_dir.unwrap()))?;
    }
    if in_memory {
        if let Some(dir) = out_dir {
            finish_outputs(&mut stats, cfg, dir, opts)?;
        }
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
