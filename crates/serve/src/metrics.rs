//! Counters, gauges and histograms for `GET /metrics`, written in Prometheus' text
//! exposition format (version 0.0.4) by hand: a dozen series do not need a client library.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A cumulative histogram with fixed upper bounds in seconds.
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Self {
        Self { bounds: bounds.to_vec(), counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(), count: AtomicU64::new(0), sum_micros: AtomicU64::new(0) }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if s <= *b {
                c.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", c.load(Relaxed));
        }
        let n = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {n}");
    }
}

const LATENCY_BOUNDS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Everything the server counts. Shared by the HTTP handlers and the scheduler thread.
#[derive(Debug)]
pub struct Metrics {
    /// HTTP requests by (route, status).
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub prefix_reused_tokens: AtomicU64,
    /// Sequences dropped because their client went away.
    pub cancelled: AtomicU64,
    /// Requests refused with 429 because the queue was full.
    pub rejected: AtomicU64,
    /// Sequences waiting for a slot (shared with the engine, which admits them).
    pub queued: Arc<AtomicUsize>,
    /// Sequences being decoded.
    pub active: AtomicUsize,
    /// Batched decode steps run, and rows they advanced (rows / steps = mean batch).
    pub decode_steps: AtomicU64,
    pub decode_rows: AtomicU64,
    /// Allowed-token masks computed for constrained sequences, and the time they took.
    pub grammar_masks: AtomicU64,
    pub grammar_mask_micros: AtomicU64,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            prefix_reused_tokens: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            queued: Arc::new(AtomicUsize::new(0)),
            active: AtomicUsize::new(0),
            decode_steps: AtomicU64::new(0),
            decode_rows: AtomicU64::new(0),
            grammar_masks: AtomicU64::new(0),
            grammar_mask_micros: AtomicU64::new(0),
            ttft: Histogram::new(&LATENCY_BOUNDS),
            itl: Histogram::new(&LATENCY_BOUNDS),
            e2e: Histogram::new(&LATENCY_BOUNDS),
        }
    }
}

impl Metrics {
    pub fn count_request(&self, route: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((route.to_string(), status)).or_insert(0) += 1;
    }

    pub fn render(&self, model_loaded: bool) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP ferrolm_requests_total HTTP requests by route and status.\n# TYPE ferrolm_requests_total counter");
        for ((route, status), n) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "ferrolm_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
        }
        let counters: [(&str, &str, u64); 8] = [
            ("ferrolm_prompt_tokens_total", "Prompt tokens processed (tokens in).", self.prompt_tokens.load(Relaxed)),
            ("ferrolm_completion_tokens_total", "Tokens generated (tokens out).", self.completion_tokens.load(Relaxed)),
            ("ferrolm_prefix_cache_reused_tokens_total", "Prompt tokens served from the shared-prefix KV cache.", self.prefix_reused_tokens.load(Relaxed)),
            ("ferrolm_cancelled_sequences_total", "Sequences dropped because the client disconnected.", self.cancelled.load(Relaxed)),
            ("ferrolm_rejected_requests_total", "Requests refused with 429 (queue full).", self.rejected.load(Relaxed)),
            ("ferrolm_decode_steps_total", "Batched decode steps (one forward pass each).", self.decode_steps.load(Relaxed)),
            ("ferrolm_decode_rows_total", "Sequence positions advanced by decode steps.", self.decode_rows.load(Relaxed)),
            ("ferrolm_grammar_masks_total", "Allowed-token masks computed for constrained sequences (response_format, forced tool calls).", self.grammar_masks.load(Relaxed)),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let name = "ferrolm_grammar_mask_seconds_total";
        let secs = self.grammar_mask_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "# HELP {name} Time spent computing allowed-token masks.\n# TYPE {name} counter\n{name} {secs}");
        let gauges: [(&str, &str, u64); 3] = [
            ("ferrolm_queue_depth", "Sequences waiting for a decoding slot.", self.queued.load(Relaxed) as u64),
            ("ferrolm_active_sequences", "Sequences being decoded.", self.active.load(Relaxed) as u64),
            ("ferrolm_model_loaded", "1 when the model is loaded and the scheduler runs.", u64::from(model_loaded)),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        self.ttft.render(&mut out, "ferrolm_time_to_first_token_seconds", "From arrival to the first generated token.");
        self.itl.render(&mut out, "ferrolm_inter_token_latency_seconds", "Between consecutive tokens of a sequence.");
        self.e2e.render(&mut out, "ferrolm_sequence_duration_seconds", "From arrival to the last token of a sequence.");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[0.01, 0.1, 1.0]);
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(5));
        let mut s = String::new();
        h.render(&mut s, "x", "y");
        assert!(s.contains("x_bucket{le=\"0.01\"} 1\n"));
        assert!(s.contains("x_bucket{le=\"0.1\"} 2\n"));
        assert!(s.contains("x_bucket{le=\"1\"} 2\n"));
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"));
        assert!(s.contains("x_count 3\n"));
        assert!(s.contains("x_sum 5.055\n"));
    }
}
