//! Mixing sources by weight to a target size: each source is down-sampled (a deterministic
//! hash of the document id decides) or up-sampled (whole repeats plus a hashed fraction).

use crate::step::{Step, Verdict};
use crate::Document;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MixConfig {
    /// Weight per source name; sources not listed pass unchanged.
    pub weights: BTreeMap<String, f64>,
    /// Target total bytes over the weighted sources (default: their current total).
    pub target_bytes: Option<u64>,
    pub seed: u64,
}

pub struct Mixer {
    cfg: MixConfig,
    bytes: BTreeMap<String, u64>,
    rates: BTreeMap<String, f64>,
}

impl Mixer {
    pub fn new(cfg: MixConfig) -> Self {
        Self { cfg, bytes: BTreeMap::new(), rates: BTreeMap::new() }
    }
}

impl Step for Mixer {
    fn name(&self) -> &str {
        "mix"
    }
    fn is_global(&self) -> bool {
        true
    }
    fn observe(&mut self, batch: &[(u64, &Document)]) {
        for (_, d) in batch {
            if self.cfg.weights.contains_key(&d.source) {
                *self.bytes.entry(d.source.clone()).or_default() += d.text.len() as u64;
            }
        }
    }
    fn finish_observe(&mut self) {
        let total: u64 = self.bytes.values().sum();
        let target = self.cfg.target_bytes.unwrap_or(total) as f64;
        let wsum: f64 = self.cfg.weights.iter().filter(|(s, _)| self.bytes.contains_key(*s)).map(|(_, w)| *w).sum();
        for (s, &b) in &self.bytes {
            let w = self.cfg.weights[s];
            let rate = if b == 0 || wsum <= 0.0 { 0.0 } else { target * w / wsum / b as f64 };
            self.rates.insert(s.clone(), rate);
        }
    }
    fn apply(&self, _seq: u64, doc: &mut Document) -> Verdict {
        let Some(&rate) = self.rates.get(&doc.source) else { return Verdict::Keep };
        let u = xxhash_rust::xxh3::xxh3_64_with_seed(doc.id.as_bytes(), self.cfg.seed) as f64 / u64::MAX as f64;
        let reps = rate.floor() as u32 + (u < rate.fract()) as u32;
        match reps {
            0 => Verdict::remove("downsampled"),
            1 => Verdict::Keep,
            n => Verdict::Repeat(n),
        }
    }
    fn summary(&self) -> serde_json::Value {
        let per: serde_json::Map<String, serde_json::Value> = self
            .bytes
            .iter()
            .map(|(s, b)| {
                let r = self.rates.get(s).copied().unwrap_or(1.0);
                (s.clone(), serde_json::json!({ "bytes_in": b, "rate": r, "expected_bytes_out": (*b as f64 * r) as u64, "sampling": if r > 1.0 { "up" } else if r < 1.0 { "down" } else { "none" } }))
            })
            .collect();
        serde_json::json!({ "sources": per })
    }
}
