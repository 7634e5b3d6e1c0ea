//! The core of a run: steps grouped into segments, each streamed in parallel batches,
//! global steps observing the survivors, every document accounted for.
//!
//! A segment runs the steps up to the next global step (dedup, mixing: steps that must see
//! every survivor before deciding). Its survivors are spilled (to memory or `.work-TAG/`)
//! while the global step observes them, and the spill is the next segment's input. The last
//! segment writes the outputs.

use super::*;

type DocStream<'a> = Box<dyn Iterator<Item = Result<(u64, Document)>> + 'a>;

#[allow(clippy::too_many_arguments)]
pub(super) fn run_items(
    items: Box<dyn Iterator<Item = ReadItem> + '_>,
    read: ReadStats,
    cfg: &PipelineConfig,
    out_dir: Option<&Path>,
    opts: &RunOptions,
    in_memory: bool,
    sink: Option<Sink>,
) -> Result<PipelineStats> {
    let t0 = Instant::now();
    let mut steps = build_steps(cfg)?;
    let tag = opts.tag();
    let mut acc = Accounts::new(initial_stats(&read, opts, &steps), cfg, out_dir, sink);
    let nanos: Vec<AtomicU64> = (0..steps.len()).map(|_| AtomicU64::new(0)).collect();
    let mut writers = open_writers(cfg, out_dir, &tag)?;
    let work_dir = out_dir.map(|d| d.join(format!(".work-{tag}")));
    let bounds = segment_bounds(&steps);
    let n_segments = bounds.len() - 1;

    let mut seq_counter = 0u64;
    let mut input: DocStream = Box::new(items.filter_map(move |it| match it {
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
        let mut spill = if last { None } else { Some(open_spill(in_memory, work_dir.as_deref(), seg)?) };
        let (before, after) = steps.split_at_mut(hi);
        let segment = Segment { steps: &before[lo..], first: lo, nanos: &nanos, want_kept: last && writers.kept.is_some(), want_excluded: writers.excluded.is_some() };
        let mut next_global = after.first_mut();
        let mut exhausted = false;
        while !exhausted {
            let batch;
            (batch, exhausted) = next_batch(&mut input, cfg)?;
            if batch.is_empty() {
                break;
            }
            let results: Vec<Traced> = batch.into_par_iter().map(|(seq, doc)| segment.apply(seq, doc, &acc.step_names)).collect();
            let mut observed: Vec<(u64, Document)> = Vec::new();
            for r in results {
                if seg == 0 {
                    acc.count_input(&r);
                    pb.inc(1);
                }
                acc.count_trace(&r);
                let line = r.line;
                match r.outcome {
                    Outcome::Removed { doc, step, reason } => acc.removed(&doc, step, &reason, line.as_deref(), &mut writers)?,
                    Outcome::Kept { seq, doc, .. } if spill.is_some() => observed.push((seq, doc)),
                    Outcome::Kept { doc, repeat, .. } => acc.kept(doc, repeat, line.as_deref(), &mut writers)?,
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
    let mut stats = acc.finish(&steps, &nanos);
    stats.seconds = t0.elapsed().as_secs_f64();
    if let Some(wd) = &work_dir {
        let _ = std::fs::remove_dir_all(wd);
    }
    commit_writers(writers, out_dir)?;
    if in_memory {
        if let Some(dir) = out_dir {
            finish_outputs(&mut stats, cfg, dir, opts)?;
        }
    }
    Ok(stats)
}

/// The configured steps, then the mixer when sources are mixed by weight.
fn build_steps(cfg: &PipelineConfig) -> Result<Vec<Scoped>> {
    let mut steps: Vec<Scoped> = cfg.steps.iter().map(|s| s.build()).collect::<Result<_>>()?;
    if cfg.mix {
        let weights = cfg.sources.iter().map(|s| (s.name.clone(), s.weight)).collect();
        steps.push(Scoped { step: Box::new(Mixer::new(MixConfig { weights, target_bytes: cfg.mix_target_bytes, seed: 0 })), sources: None });
    }
    Ok(steps)
}

/// The run's statistics before any document: the reader's rejections and one entry a step.
fn initial_stats(read: &ReadStats, opts: &RunOptions, steps: &[Scoped]) -> PipelineStats {
    PipelineStats {
        rejected: read.rejected,
        rejected_by_reason: read.rejected_by_reason.clone(),
        rejected_examples: read.examples.clone(),
        skipped_files: read.skipped_files,
        missing_crates: read.missing_crates.clone(),
        shard: opts.shard.map(|_| opts.tag()),
        steps: steps.iter().map(|s| StepStats { name: s.step.name().to_string(), sources: s.sources.clone(), ..Default::default() }).collect(),
        ..Default::default()
    }
}

/// The run's output files (temporary until [`commit_writers`]); none without an output folder.
fn open_writers(cfg: &PipelineConfig, out_dir: Option<&Path>, tag: &str) -> Result<Writers> {
    let mut writers = Writers { kept: None, kept_parquet: None, excluded: None };
    let Some(dir) = out_dir else { return Ok(writers) };
    clean_stale(dir, tag)?;
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
    Ok(writers)
}

fn commit_writers(mut writers: Writers, out_dir: Option<&Path>) -> Result<()> {
    if let Some(w) = writers.kept.take() {
        w.commit().map_err(io_err(out_dir.unwrap()))?;
    }
    if let Some(w) = writers.kept_parquet.take() {
        w.commit()?;
    }
    if let Some(w) = writers.excluded.take() {
        w.commit().map_err(io_err(out_dir.unwrap()))?;
    }
    Ok(())
}

/// Segment k runs steps `bounds[k]..bounds[k+1]`; every segment after the first starts at a
/// global step. A leading global step needs a pass before anything: an empty first segment.
fn segment_bounds(steps: &[Scoped]) -> Vec<usize> {
    let mut bounds = vec![0];
    for (i, s) in steps.iter().enumerate() {
        if s.step.is_global() && i > 0 {
            bounds.push(i);
        }
    }
    bounds.push(steps.len());
    if steps.first().is_some_and(|s| s.step.is_global()) {
        bounds.insert(0, 0);
    }
    bounds
}

/// Where a segment's survivors wait for the next one: memory, or `.work-TAG/segment-N.jsonl`.
fn open_spill(in_memory: bool, work_dir: Option<&Path>, seg: usize) -> Result<Spill> {
    let Some(wd) = work_dir.filter(|_| !in_memory) else { return Ok(Spill::Mem(Vec::new())) };
    std::fs::create_dir_all(wd).map_err(io_err(wd))?;
    let path = wd.join(format!("segment-{seg}.jsonl"));
    let f = std::fs::File::create(&path).map_err(io_err(&path))?;
    Ok(Spill::File { path, w: BufWriter::with_capacity(1 << 20, f) })
}

/// The next batch: up to `batch_docs` documents or `batch_bytes` of text, and whether the
/// input ended. The input is never asked again once it has ended: the streaming reader
/// hands over its final statistics on its first `None`.
fn next_batch(input: &mut DocStream, cfg: &PipelineConfig) -> Result<(Vec<(u64, Document)>, bool)> {
    let mut batch = Vec::with_capacity(cfg.batch_docs);
    let mut batch_bytes = 0usize;
    while batch.len() < cfg.batch_docs && batch_bytes < cfg.batch_bytes {
        let Some(r) = input.next() else { return Ok((batch, true)) };
        let (s, d) = r?;
        batch_bytes += d.text.len();
        batch.push((s, d));
    }
    Ok((batch, false))
}

/// The steps of one segment, applied to one document at a time on the worker threads.
struct Segment<'a> {
    steps: &'a [Scoped],
    /// Index of `steps[0]` among all steps.
    first: usize,
    nanos: &'a [AtomicU64],
    want_kept: bool,
    want_excluded: bool,
}

impl Segment<'_> {
    /// Run the document through the segment's steps until one removes it; the output line
    /// is serialized here, on the worker thread.
    fn apply(&self, seq: u64, mut doc: Document, step_names: &[String]) -> Traced {
        let source = doc.source.clone();
        let bytes_in = doc.text.len() as u64;
        let mut trace = Vec::with_capacity(self.steps.len());
        let mut repeat = 1;
        for (k, s) in self.steps.iter().enumerate() {
            if !s.applies_to(&doc) {
                continue;
            }
            let idx = self.first + k;
            let b_in = doc.text.len() as u32;
            let t = Instant::now();
            let v = s.step.apply(seq, &mut doc);
            self.nanos[idx].fetch_add(t.elapsed().as_nanos() as u64, Relaxed);
            match v {
                Verdict::Keep => trace.push((idx as u16, b_in, doc.text.len() as u32)),
                Verdict::Repeat(n) => {
                    repeat = n;
                    trace.push((idx as u16, b_in, doc.text.len() as u32));
                }
                Verdict::Remove(reason) => {
                    trace.push((idx as u16, b_in, 0));
                    let line = self.want_excluded.then(|| {
                        let rec = ExcludedRec { id: &doc.id, source: &doc.source, step: &step_names[idx], reason: &reason, text: &doc.text, meta: &doc.meta };
                        json_line(&rec)
                    });
                    return Traced { outcome: Outcome::Removed { doc, step: idx, reason }, line, source, bytes_in, trace };
                }
            }
        }
        let line = (self.want_kept && repeat == 1).then(|| json_line(&doc));
        Traced { outcome: Outcome::Kept { seq, doc, repeat }, line, source, bytes_in, trace }
    }
}

/// The accounting of a run, in document order on the calling thread: every document that
/// enters is counted once as input, and once as removed (with its step and reason) or kept.
struct Accounts<'a, 's> {
    stats: PipelineStats,
    step_names: Vec<String>,
    lengths: Reservoir,
    meta_hist: BTreeMap<&'static str, Reservoir>,
    examples_per_reason: usize,
    out_dir: Option<&'a Path>,
    sink: Option<Sink<'s>>,
}

impl<'a, 's> Accounts<'a, 's> {
    fn new(stats: PipelineStats, cfg: &PipelineConfig, out_dir: Option<&'a Path>, sink: Option<Sink<'s>>) -> Self {
        let step_names = stats.steps.iter().map(|s| s.name.clone()).collect();
        Self { stats, step_names, lengths: Reservoir::new(), meta_hist: BTreeMap::new(), examples_per_reason: cfg.examples_per_reason, out_dir, sink }
    }

    fn count_input(&mut self, r: &Traced) {
        self.stats.input += 1;
        self.stats.bytes_in += r.bytes_in;
        let s = self.stats.sources.entry(r.source.clone()).or_default();
        s.input += 1;
        s.bytes_in += r.bytes_in;
    }

    /// Documents and bytes in and out of each step that saw the document.
    fn count_trace(&mut self, r: &Traced) {
        let removed_at = match &r.outcome {
            Outcome::Removed { step, .. } => Some(*step),
            Outcome::Kept { .. } => None,
        };
        for &(k, bi, bo) in &r.trace {
            let st = &mut self.stats.steps[k as usize];
            st.docs_in += 1;
            st.bytes_in += bi as u64;
            st.bytes_out += bo as u64;
            if removed_at != Some(k as usize) {
                st.docs_out += 1;
            }
        }
    }

    fn removed(&mut self, doc: &Document, step: usize, reason: &str, line: Option<&[u8]>, writers: &mut Writers) -> Result<()> {
        self.stats.removed += 1;
        let st = &mut self.stats.steps[step];
        *st.removed.entry(reason.to_string()).or_default() += 1;
        let ex = st.examples.entry(reason.to_string()).or_default();
        if ex.len() < self.examples_per_reason {
            ex.push(Example { id: doc.id.clone(), snippet: snippet(&doc.text) });
        }
        *self.stats.removed_by_step.entry(st.name.clone()).or_default().entry(reason.to_string()).or_default() += 1;
        if let (Some(w), Some(line)) = (&mut writers.excluded, line) {
            w.write_all(line).map_err(io_err(self.out_dir.unwrap()))?;
        }
        Ok(())
    }

    /// A survivor of the last segment: counted, measured, and written `repeat` times (the
    /// mixer's upsampling; copies after the first get `#repN` ids).
    fn kept(&mut self, doc: Document, repeat: u32, line: Option<&[u8]>, writers: &mut Writers) -> Result<()> {
        let stats = &mut self.stats;
        stats.kept += 1;
        stats.bytes_kept += doc.text.len() as u64;
        let s = stats.sources.entry(doc.source.clone()).or_default();
        s.kept += 1;
        s.bytes_kept += doc.text.len() as u64;
        self.lengths.push(doc.text.len() as f64);
        for key in ["quality_score", "language_score"] {
            if let Some(x) = doc.meta.get(key).and_then(|v| v.as_f64()) {
                self.meta_hist.entry(key).or_insert_with(Reservoir::new).push(x);
            }
        }
        for rep in 0..repeat {
            let mut d = doc.clone();
            if rep > 0 {
                d.id = format!("{}#rep{rep}", doc.id);
            }
            stats.written += 1;
            if let Some(w) = &mut writers.kept {
                match (line, rep) {
                    (Some(l), 0) => w.write_all(l),
                    _ => w.write_all(&json_line(&d)),
                }
                .map_err(io_err(self.out_dir.unwrap()))?;
            }
            if let Some(w) = &mut writers.kept_parquet {
                w.write(&d)?;
            }
            if let Some(sk) = self.sink.as_mut() {
                sk(&d).map_err(|e| CorpusError::Io { path: PathBuf::from("<sink>"), source: e })?;
            }
        }
        Ok(())
    }

    /// The statistics with each step's time, summary and histograms, and the kept documents'.
    fn finish(self, steps: &[Scoped], nanos: &[AtomicU64]) -> PipelineStats {
        let mut stats = self.stats;
        for (i, s) in steps.iter().enumerate() {
            stats.steps[i].seconds = nanos[i].load(Relaxed) as f64 * 1e-9;
            stats.steps[i].summary = s.step.summary();
            for (name, v) in s.step.histograms() {
                stats.histograms.insert(name, v);
            }
        }
        stats.histograms.insert("document length (bytes, kept)".into(), self.lengths.v);
        for (k, r) in self.meta_hist {
            stats.histograms.insert(format!("{k} (kept)"), r.v);
        }
        stats
    }
}
