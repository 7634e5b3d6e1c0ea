//! Exact document de-duplication and corpus-wide repeated-line removal.

use crate::step::{Step, Verdict};
use crate::text::{hash, HashMap64};
use crate::Document;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Keeps the first document (by input position) of each exact text; removes the rest.
/// Content is compared by its 128-bit xxh3 hash (collisions are out of reach at corpus sizes).
#[derive(Default)]
pub struct ExactDedup {
    first: HashMap<u128, u64>,
    observed: u64,
}

impl ExactDedup {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Step for ExactDedup {
    fn name(&self) -> &str {
        "exact_dedup"
    }
    fn is_global(&self) -> bool {
        true
    }
    fn observe(&mut self, batch: &[(u64, &Document)]) {
        use rayon::prelude::*;
        let hashes: Vec<u128> = batch.par_iter().map(|(_, d)| xxhash_rust::xxh3::xxh3_128(d.text.as_bytes())).collect();
        self.observed += batch.len() as u64;
        for ((seq, _), h) in batch.iter().zip(hashes) {
            self.first.entry(h).and_modify(|s| *s = (*s).min(*seq)).or_insert(*seq);
        }
    }
    fn apply(&self, seq: u64, doc: &mut Document) -> Verdict {
        let h = xxhash_rust::xxh3::xxh3_128(doc.text.as_bytes());
        match self.first.get(&h) {
            Some(&first) if first != seq => Verdict::remove("exact_duplicate"),
            _ => Verdict::Keep,
        }
    }
    fn summary(&self) -> serde_json::Value {
        serde_json::json!({ "documents_seen": self.observed, "distinct_texts": self.first.len() })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LineDedupConfig {
    /// "line" or "paragraph" (blocks separated by blank lines).
    pub unit: String,
    /// A unit found in at least this many documents is repeated; it stays only in the first.
    pub min_documents: u32,
    /// Shorter units (after trimming) are never removed: "}" or "fn main() {" carry no repetition signal.
    pub min_chars: usize,
}

impl Default for LineDedupConfig {
    fn default() -> Self {
        Self { unit: "line".into(), min_documents: 2, min_chars: 30 }
    }
}

/// Lines (or paragraphs) repeated across the corpus (boilerplate, navigation, licence headers)
/// are counted by document frequency and kept only in the first document that has them.
pub struct LineDedup {
    cfg: LineDedupConfig,
    /// unit hash -> (documents containing it, first document).
    counts: HashMap64<(u32, u64)>,
    removed_units: std::sync::atomic::AtomicU64,
}

impl LineDedup {
    pub fn new(cfg: LineDedupConfig) -> Self {
        Self { cfg, counts: Default::default(), removed_units: 0.into() }
    }

    fn units<'a>(&self, text: &'a str) -> Vec<&'a str> {
        if self.cfg.unit == "paragraph" {
            text.split("\n\n").collect()
        } else {
            text.split('\n').collect()
        }
    }

    fn key(&self, unit: &str) -> Option<u64> {
        let t = unit.trim();
        (t.chars().count() >= self.cfg.min_chars).then(|| hash(t))
    }
}

impl Step for LineDedup {
    fn name(&self) -> &str {
        "line_dedup"
    }
    fn is_global(&self) -> bool {
        true
    }
    fn observe(&mut self, batch: &[(u64, &Document)]) {
        use rayon::prelude::*;
        let keys: Vec<Vec<u64>> = batch
            .par_iter()
            .map(|(_, d)| {
                let mut k: Vec<u64> = self.units(&d.text).into_iter().filter_map(|u| self.key(u)).collect();
                k.sort_unstable();
                k.dedup();
                k
            })
            .collect();
        for ((seq, _), ks) in batch.iter().zip(keys) {
            for k in ks {
                let e = self.counts.entry(k).or_insert((0, *seq));
                e.0 += 1;
                e.1 = e.1.min(*seq);
            }
        }
    }
    fn apply(&self, seq: u64, doc: &mut Document) -> Verdict {
        let sep = if self.cfg.unit == "paragraph" { "\n\n" } else { "\n" };
        let units = self.units(&doc.text);
        let mut kept = Vec::with_capacity(units.len());
        let mut removed = 0;
        for u in units {
            let drop = self.key(u).and_then(|k| self.counts.get(&k)).is_some_and(|&(n, first)| n >= self.cfg.min_documents && first != seq);
            if drop {
                removed += 1;
            } else {
                kept.push(u);
            }
        }
        if removed == 0 {
            return Verdict::Keep;
        }
        self.removed_units.fetch_add(removed, std::sync::atomic::Ordering::Relaxed);
        let text = kept.join(sep);
        if text.trim().is_empty() {
            return Verdict::remove("all_units_repeated");
        }
        doc.text = text;
        Verdict::Keep
    }
    fn summary(&self) -> serde_json::Value {
        let repeated = self.counts.values().filter(|(n, _)| *n >= self.cfg.min_documents).count();
        serde_json::json!({
            "distinct_units": self.counts.len(),
            "repeated_units": repeated,
            "units_removed": self.removed_units.load(std::sync::atomic::Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_keeps_first_by_position_not_by_observation_order() {
        let mut s = ExactDedup::new();
        let a = Document::new("a", "same", "p");
        let b = Document::new("b", "same", "p");
        s.observe(&[(5, &b)]);
        s.observe(&[(2, &a)]);
        assert_eq!(s.apply(2, &mut a.clone()), Verdict::Keep);
        assert_eq!(s.apply(5, &mut b.clone()), Verdict::remove("exact_duplicate"));
    }

    #[test]
    fn repeated_lines_stay_only_in_first_document() {
        let mut s = LineDedup::new(LineDedupConfig::default());
        let banner = "Copyright 2020 The Example Project Developers";
        let a = Document::new("a", format!("{banner}\nfirst doc body line that is long enough"), "p");
        let b = Document::new("b", format!("{banner}\nsecond doc body line, also long enough"), "p");
        let c = Document::new("c", banner.to_string(), "p");
        s.observe(&[(0, &a), (1, &b), (2, &c)]);
        let (mut a2, mut b2, mut c2) = (a.clone(), b.clone(), c.clone());
        assert_eq!(s.apply(0, &mut a2), Verdict::Keep);
        assert_eq!(a2.text, a.text);
        assert_eq!(s.apply(1, &mut b2), Verdict::Keep);
        assert_eq!(b2.text, "second doc body line, also long enough");
        assert_eq!(s.apply(2, &mut c2), Verdict::remove("all_units_repeated"));
    }
}
