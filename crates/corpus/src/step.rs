//! The one signature every pipeline step shares (datatrove's idea): a document goes in, comes
//! out kept (possibly rewritten) or removed with a reason; the runner keeps the statistics.
//!
//! Most steps judge one document alone and run in parallel. Corpus-level steps (de-duplication,
//! mixing) first *observe* every document that reaches them, in input order, then judge; the
//! runner gives them a full pass before applying them, spilling to disk when streaming.

use crate::Document;
use std::borrow::Cow;

/// What a step decided about one document.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Keep,
    /// Removed; the reason is a short machine-readable tag (e.g. `gopher_short_doc`).
    Remove(Cow<'static, str>),
    /// Kept and written this many times in total (mixing's up-sampling); 1 == Keep.
    Repeat(u32),
}

impl Verdict {
    pub fn remove(reason: impl Into<Cow<'static, str>>) -> Self {
        Verdict::Remove(reason.into())
    }
}

pub trait Step: Send + Sync {
    /// Name used in statistics and in the `step` field of excluded records.
    fn name(&self) -> &str;

    /// True for corpus-level steps, which get [`Step::observe`] calls for every document
    /// (in input order, batch by batch) and one [`Step::finish_observe`] before any `apply`.
    fn is_global(&self) -> bool {
        false
    }

    /// See every document that reaches this step. `seq` is the document's position in the input,
    /// stable across runs, so "keep the first" decisions are deterministic whatever the threads do.
    fn observe(&mut self, _batch: &[(u64, &Document)]) {}

    fn finish_observe(&mut self) {}

    /// Judge (and possibly rewrite) one document. Called from many threads at once.
    fn apply(&self, seq: u64, doc: &mut Document) -> Verdict;

    /// Step-specific figures for stats.json (replacements by kind, cluster sizes...).
    fn summary(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Values to draw as histograms in the report, by name (e.g. duplicate cluster sizes).
    fn histograms(&self) -> Vec<(String, Vec<f64>)> {
        Vec::new()
    }
}

/// A step restricted to some sources: documents of other sources pass it untouched.
pub struct Scoped {
    pub step: Box<dyn Step>,
    pub sources: Option<Vec<String>>,
}

impl Scoped {
    pub fn applies_to(&self, doc: &Document) -> bool {
        self.sources.as_ref().is_none_or(|s| s.iter().any(|x| x == &doc.source))
    }
}
