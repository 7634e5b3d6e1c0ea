//! The core of a run: steps grouped into segments, each streamed in parallel batches,
//! global steps observing the survivors, every document accounted for.

use super::*;

#[allow(clippy::too_many_arguments)]
pub(super) fn run_items(
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
