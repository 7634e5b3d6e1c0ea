//! Perplexity quality filter, as CCNet (Wenzek et al. 2020) does with KenLM: a Kneser-Ney
//! n-gram model trained on text of the quality wanted (CCNet: Wikipedia) scores every
//! document; documents the model finds too surprising are removed.
//!
//! Perplexity is counted as KenLM's query counts it (ferrolm-ngram's `score_document`): each
//! line is a sentence in `<s> … </s>`, every word plus one `</s>` per line counts, unknown
//! words are scored as `<unk>`. Words are whitespace-separated, so the model must have been
//! trained on text tokenised the same way (`ferrolm ngram train` on plain text is).
//!
//! Two thresholds, usable together:
//! * `max_perplexity`: an absolute ceiling;
//! * `max_percentile`: per source, remove documents above this percentile of that source's
//!   perplexities (CCNet's head/middle/tail buckets are the 33rd and 67th percentiles per
//!   language). This needs every document's score first, so the step is then corpus-level.
//!
//! Every scored document gets `meta.perplexity`.

use crate::step::{Step, Verdict};
use crate::Document;
use ferrolm_ngram::AnyModel;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerplexityConfig {
    /// ARPA or ferrolm binary n-gram model (`ferrolm ngram train --binary`).
    pub model: PathBuf,
    /// Remove documents with a higher perplexity.
    pub max_perplexity: Option<f64>,
    /// Remove documents above this percentile (0–100) of their source's perplexities.
    pub max_percentile: Option<f64>,
    /// Lower-case the text before scoring (for models trained on lower-cased text).
    pub lowercase: bool,
}

impl Default for PerplexityConfig {
    fn default() -> Self {
        Self { model: PathBuf::new(), max_perplexity: None, max_percentile: None, lowercase: false }
    }
}

pub struct PerplexityFilter {
    cfg: PerplexityConfig,
    model: AnyModel,
    /// Perplexity of each observed document (percentile mode), by input position.
    scores: HashMap<u64, f64>,
    /// Per source: the perplexity at `max_percentile`.
    thresholds: HashMap<String, f64>,
    per_source: HashMap<String, Vec<f64>>,
    scored: AtomicU64,
    unscored: AtomicU64,
}

impl PerplexityFilter {
    pub fn new(cfg: PerplexityConfig) -> crate::Result<Self> {
        if cfg.max_perplexity.is_none() && cfg.max_percentile.is_none() {
            return Err(crate::CorpusError::Config("perplexity: set max_perplexity and/or max_percentile".into()));
        }
        if let Some(p) = cfg.max_percentile {
            if !(0.0..=100.0).contains(&p) {
                return Err(crate::CorpusError::Config(format!("perplexity: max_percentile {p} is not within 0..=100")));
            }
        }
        if cfg.max_perplexity.is_some_and(|x| x.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)) {
            return Err(crate::CorpusError::Config("perplexity: max_perplexity must be positive".into()));
        }
        let model = AnyModel::open(&cfg.model).map_err(|e| crate::CorpusError::Invalid { path: cfg.model.clone(), message: format!("perplexity model: {e:#}") })?;
        Ok(Self {
            cfg,
            model,
            scores: HashMap::new(),
            thresholds: HashMap::new(),
            per_source: HashMap::new(),
            scored: AtomicU64::new(0),
            unscored: AtomicU64::new(0),
        })
    }

    /// The document's perplexity (NaN for a document without any line).
    pub fn perplexity(&self, text: &str) -> f64 {
        if self.cfg.lowercase {
            self.model.score_document(&text.to_lowercase())
        } else {
            self.model.score_document(text)
        }
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Step for PerplexityFilter {
    fn name(&self) -> &str {
        "perplexity"
    }

    fn is_global(&self) -> bool {
        self.cfg.max_percentile.is_some()
    }

    fn observe(&mut self, batch: &[(u64, &Document)]) {
        let ppl: Vec<f64> = batch.par_iter().map(|(_, d)| self.perplexity(&d.text)).collect();
        for ((seq, d), p) in batch.iter().zip(ppl) {
            self.scores.insert(*seq, p);
            if p.is_finite() {
                self.per_source.entry(d.source.clone()).or_default().push(p);
            }
        }
    }

    fn finish_observe(&mut self) {
        let pct = self.cfg.max_percentile.unwrap_or(100.0);
        for (src, v) in self.per_source.iter_mut() {
            v.sort_by(|a, b| a.total_cmp(b));
            self.thresholds.insert(src.clone(), percentile(v, pct));
        }
    }

    fn apply(&self, seq: u64, doc: &mut Document) -> Verdict {
        let p = match self.scores.get(&seq) {
            Some(&p) => p,
            None => self.perplexity(&doc.text),
        };
        if !p.is_finite() {
            // no line to score (empty text): nothing to judge; other filters handle emptiness
            self.unscored.fetch_add(1, Ordering::Relaxed);
            return Verdict::Keep;
        }
        self.scored.fetch_add(1, Ordering::Relaxed);
        doc.meta.insert("perplexity".into(), p.into());
        if self.cfg.max_perplexity.is_some_and(|m| p > m) {
            return Verdict::remove("perplexity_above_max");
        }
        if let Some(&t) = self.thresholds.get(&doc.source) {
            if p > t {
                return Verdict::remove("perplexity_above_percentile");
            }
        }
        Verdict::Keep
    }

    fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "scored": self.scored.load(Ordering::Relaxed),
            "unscored_empty": self.unscored.load(Ordering::Relaxed),
            "percentile_thresholds": self.thresholds,
            "config": self.cfg,
        })
    }

    fn histograms(&self) -> Vec<(String, Vec<f64>)> {
        let all: Vec<f64> = self.per_source.values().flatten().copied().collect();
        if all.is_empty() {
            Vec::new()
        } else {
            vec![("perplexity".into(), all)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolm_ngram::{train_text, TrainOptions};

    /// English-like sentences from a small grammar, and word salad from the same vocabulary.
    fn sentences(n: usize, seed: u64, salad: bool) -> Vec<String> {
        let subj = ["the cat", "a dog", "the old man", "my sister", "the teacher", "a child"];
        let verb = ["sees", "likes", "finds", "wants", "reads", "takes"];
        let obj = ["the book", "a red ball", "the green apple", "some bread", "the letter", "a small house"];
        let mut s = seed;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as usize
        };
        (0..n)
            .map(|_| {
                let t = format!("{} {} {} today", subj[next() % 6], verb[next() % 6], obj[next() % 6]);
                if salad {
                    let mut w: Vec<&str> = t.split(' ').collect();
                    for i in (1..w.len()).rev() {
                        w.swap(i, next() % (i + 1));
                    }
                    w.join(" ")
                } else {
                    t
                }
            })
            .collect()
    }

    fn filter(dir: &std::path::Path, cfg: impl FnOnce(PathBuf) -> PerplexityConfig) -> PerplexityFilter {
        let text = sentences(2000, 1, false);
        let m = train_text(text.iter().map(|s| s.as_str()), &TrainOptions { order: 3, discount_fallback: true }).unwrap();
        let arpa = dir.join("m.arpa");
        m.write_arpa(&arpa).unwrap();
        let bin = dir.join("m.bin");
        ferrolm_ngram::arpa_to_binary(&arpa, &bin).unwrap();
        PerplexityFilter::new(cfg(bin)).unwrap()
    }

    #[test]
    fn removes_word_salad_and_keeps_fluent_text_by_absolute_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let f = filter(dir.path(), |model| PerplexityConfig { model, max_perplexity: Some(30.0), ..Default::default() });
        let good = sentences(5, 2, false).join("\n");
        let bad = sentences(5, 3, true).join("\n");
        let mut g = Document::new("g", good, "web");
        let mut b = Document::new("b", bad, "web");
        let (pg, pb) = (f.perplexity(&g.text), f.perplexity(&b.text));
        assert!(pg < 10.0 && pb > 30.0, "fluent {pg}, salad {pb}");
        assert_eq!(f.apply(0, &mut g), Verdict::Keep);
        assert_eq!(f.apply(1, &mut b), Verdict::remove("perplexity_above_max"));
        assert!((g.meta["perplexity"].as_f64().unwrap() - pg).abs() < 1e-9);
        // empty text is not judged
        assert_eq!(f.apply(2, &mut Document::new("e", "", "web")), Verdict::Keep);
        assert!(PerplexityFilter::new(PerplexityConfig { model: dir.path().join("m.bin"), ..Default::default() }).is_err());
        let e = PerplexityFilter::new(PerplexityConfig { model: dir.path().join("missing.arpa"), max_perplexity: Some(1.0), ..Default::default() }).err().unwrap();
        assert!(e.to_string().contains("missing.arpa"), "{e}");
    }

    #[test]
    fn percentile_threshold_is_per_source() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = filter(dir.path(), |model| PerplexityConfig { model, max_percentile: Some(50.0), ..Default::default() });
        assert!(f.is_global());
        // source "a": 10 fluent + 10 salad documents; source "b": 20 salad documents
        let mut docs: Vec<Document> = Vec::new();
        for i in 0..20u64 {
            docs.push(Document::new(format!("a{i}"), sentences(3, 100 + i, i >= 10).join("\n"), "a"));
        }
        for i in 0..20u64 {
            docs.push(Document::new(format!("b{i}"), sentences(3, 200 + i, true).join("\n"), "b"));
        }
        let batch: Vec<(u64, &Document)> = docs.iter().enumerate().map(|(i, d)| (i as u64, d)).collect();
        f.observe(&batch);
        f.finish_observe();
        let verdicts: Vec<Verdict> = docs.iter_mut().enumerate().map(|(i, d)| f.apply(i as u64, d)).collect();
        // in "a" exactly the salad half goes; in "b" half goes although all are salad
        for (i, v) in verdicts.iter().enumerate().take(20) {
            assert_eq!(*v == Verdict::Keep, i < 10, "a{i}");
        }
        assert_eq!(verdicts[20..].iter().filter(|v| **v == Verdict::Keep).count(), 10);
    }

    #[test]
    fn configured_from_a_pipeline_step_table() {
        let dir = tempfile::tempdir().unwrap();
        let _ = filter(dir.path(), |model| PerplexityConfig { model, max_perplexity: Some(1.0), ..Default::default() });
        let toml = format!("kind = \"perplexity\"\nmodel = {:?}\nmax_percentile = 67.0\nsources = [\"web\"]\n", dir.path().join("m.bin"));
        let entry: crate::config::StepEntry = toml::from_str(&toml).unwrap();
        let scoped = entry.build().unwrap();
        assert_eq!(scoped.step.name(), "perplexity");
        assert!(scoped.step.is_global());
    }
}
