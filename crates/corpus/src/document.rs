//! The one record every step shares.

use serde::{Deserialize, Serialize};

/// A document flowing through the pipeline. `source` names the mixture component
/// (e.g. "code", "prose", or a configured source name); `meta` carries reader- and
/// step-provided fields (crate, path, language score, quality scores...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub id: String,
    pub text: String,
    pub source: String,
    #[serde(default)]
    pub meta: serde_json::Map<String, serde_json::Value>,
}

impl Document {
    pub fn new(id: impl Into<String>, text: impl Into<String>, source: impl Into<String>) -> Self {
        Self { id: id.into(), text: text.into(), source: source.into(), meta: Default::default() }
    }
}

/// A malformed input record: counted and reported, never silently dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// File the record came from.
    pub file: String,
    /// 1-based line for line-oriented formats (JSONL), 1-based row for Parquet; None for whole files.
    pub line: Option<u64>,
    /// Machine-readable kind: bad_utf8, broken_json, missing_field, field_not_string,
    /// truncated_archive, io_error; for Parquet also broken_parquet, unsupported_compression.
    pub reason: String,
    /// Human-readable detail (the parser's message).
    pub detail: String,
    /// Input records this rejection stands for: 1, except when a whole block of records cannot
    /// be decoded (a Parquet row group whose text column is unreadable counts all its rows).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub records: u64,
}

fn one() -> u64 {
    1
}
fn is_one(n: &u64) -> bool {
    *n == 1
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {} ({})", self.file, l, self.reason, self.detail)?,
            None => write!(f, "{}: {} ({})", self.file, self.reason, self.detail)?,
        }
        if self.records != 1 {
            write!(f, " [{} records]", self.records)?;
        }
        Ok(())
    }
}
