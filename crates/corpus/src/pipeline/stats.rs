//! What a run counts: per step, per source and in total (every document accounted for),
//! and the bounded samples behind the report's histograms.

use super::*;

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

/// A deterministic reservoir sample (bounded memory for histograms over huge corpora).
pub(super) struct Reservoir {
    pub(super) v: Vec<f64>,
    pub(super) seen: u64,
    pub(super) rng: u64,
}
impl Reservoir {
    const CAP: usize = 100_000;
    pub(super) fn new() -> Self {
        Self { v: Vec::new(), seen: 0, rng: 0x1234_5678_9ABC_DEF1 }
    }
    pub(super) fn push(&mut self, x: f64) {
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
