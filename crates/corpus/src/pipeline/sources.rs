//! Which files a config's sources name (Hub files fetched only when their shard runs), and
//! one stream over them with each file's own read options.

use super::*;

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

/// Streams files, each with its own read options (sources differ in text field and name).
pub(super) struct MultiStream {
    pub(super) specs: std::collections::VecDeque<(FileSpec, ReadOptions)>,
    pub(super) cur: Option<DocumentStream>,
    pub(super) stats: ReadStats,
}

impl MultiStream {
    pub(super) fn new(specs: Vec<(FileSpec, ReadOptions)>) -> Self {
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
