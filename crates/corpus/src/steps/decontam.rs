//! Decontamination: remove training documents sharing a long word n-gram (13 by default, as in
//! GPT-3's paper) with an evaluation set, so benchmark scores measure generalisation.

use crate::read::{read_paths, ReadOptions};
use crate::step::{Step, Verdict};
use crate::text::{hash, HashSet64};
use crate::{Document, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DecontamConfig {
    /// Evaluation sets: files or folders in any readable format.
    pub eval_paths: Vec<PathBuf>,
    pub text_field: String,
    pub n: usize,
}

impl Default for DecontamConfig {
    fn default() -> Self {
        Self { eval_paths: Vec::new(), text_field: "text".into(), n: 13 }
    }
}

/// Lowercased alphanumeric words: punctuation and case do not hide an overlap.
fn word_hashes(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(|w| hash(&w.to_lowercase())).collect()
}

fn gram(win: &[u64]) -> u64 {
    win.iter().fold(0x2545_F491_4F6C_DD1Du64, |h, &w| (h ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(31))
}

pub struct Decontaminator {
    n: usize,
    grams: HashSet64,
    eval_docs: usize,
    /// Evaluation documents shorter than n words: their whole word sequence is the n-gram.
    short_lengths: Vec<usize>,
}

impl Decontaminator {
    pub fn new(cfg: DecontamConfig) -> Result<Self> {
        let opts = ReadOptions { text_field: cfg.text_field.clone(), ..Default::default() };
        let (docs, _) = if cfg.eval_paths.is_empty() { (Vec::new(), Default::default()) } else { read_paths(&cfg.eval_paths, &opts)? };
        Ok(Self::from_texts(docs.iter().map(|d| d.text.as_str()), cfg.n))
    }

    pub fn from_texts<'a>(texts: impl Iterator<Item = &'a str>, n: usize) -> Self {
        let mut grams = HashSet64::default();
        let mut short = std::collections::BTreeSet::new();
        let mut eval_docs = 0;
        for t in texts {
            eval_docs += 1;
            let w = word_hashes(t);
            if w.is_empty() {
                continue;
            }
            if w.len() < n {
                short.insert(w.len());
                grams.insert(gram(&w));
            } else {
                grams.extend(w.windows(n).map(gram));
            }
        }
        Self { n, grams, eval_docs, short_lengths: short.into_iter().collect() }
    }
}

impl Step for Decontaminator {
    fn name(&self) -> &str {
        "decontaminate"
    }

    fn apply(&self, _seq: u64, doc: &mut Document) -> Verdict {
        if self.grams.is_empty() {
            return Verdict::Keep;
        }
        let w = word_hashes(&doc.text);
        let hit = std::iter::once(self.n).chain(self.short_lengths.iter().copied()).any(|n| w.len() >= n && w.windows(n).any(|win| self.grams.contains(&gram(win))));
        if hit {
            Verdict::remove("eval_ngram_overlap")
        } else {
            Verdict::Keep
        }
    }

    fn summary(&self) -> serde_json::Value {
        serde_json::json!({ "eval_documents": self.eval_docs, "eval_ngrams": self.grams.len(), "n": self.n })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_documents_quoting_an_eval_item() {
        let eval = "Question: what is the capital city of the country that has the longest coastline in the world today?";
        let d = Decontaminator::from_texts([eval].into_iter(), 13);
        let quoted = format!("Some intro. {} And more.", eval.to_uppercase().replace('?', " !"));
        assert_eq!(d.apply(0, &mut Document::new("a", quoted, "p")), Verdict::remove("eval_ngram_overlap"));
        let clean = "Question: what is the capital city of the country with the most islands in the world?";
        assert_eq!(d.apply(0, &mut Document::new("b", clean, "p")), Verdict::Keep);
    }
}
