//! The run's output writers (kept and excluded JSONL, committed at the end) and the records
//! they write.

use super::*;

/// Output writers for one run (or shard): kept and excluded JSONL, committed at the end.
pub(super) struct Writers {
    pub(super) kept: Option<AtomicFile>,
    pub(super) kept_parquet: Option<ParquetDocWriter>,
    pub(super) excluded: Option<AtomicFile>,
}

#[derive(Serialize)]
pub(super) struct ExcludedRec<'a> {
    pub(super) id: &'a str,
    pub(super) source: &'a str,
    pub(super) step: &'a str,
    pub(super) reason: &'a str,
    pub(super) text: &'a str,
    pub(super) meta: &'a serde_json::Map<String, serde_json::Value>,
}

pub(super) enum Outcome {
    Kept { seq: u64, doc: Document, repeat: u32 },
    Removed { doc: Document, step: usize, reason: std::borrow::Cow<'static, str> },
}

pub(super) struct Traced {
    pub(super) outcome: Outcome,
    /// The document's output line (kept JSONL, or excluded JSONL), serialized on the worker
    /// thread so the ordered writing loop only copies bytes.
    pub(super) line: Option<Vec<u8>>,
    pub(super) source: String,
    pub(super) bytes_in: u64,
    /// (step index, bytes in, bytes out) for the steps that saw the document.
    pub(super) trace: Vec<(u16, u32, u32)>,
}

/// One JSONL line. Documents and excluded records always serialize (string keys, finite values).
pub(super) fn json_line<T: Serialize>(v: &T) -> Vec<u8> {
    let mut l = serde_json::to_vec(v).expect("documents serialize to JSON");
    l.push(b'\n');
    l
}

pub(super) fn snippet(s: &str) -> String {
    let s = crate::steps::language::prefix_at_boundary(s, 160);
    s.replace('\n', " ⏎ ")
}
