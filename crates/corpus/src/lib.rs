//! ferrolm-corpus: turns raw mixed sources into a clean, de-duplicated, private-data-free corpus.
//! See README.md in this crate for the architecture (modules, data flow, invariants).

#![forbid(unsafe_code)]

pub mod config;
pub mod document;
pub mod eval;
pub mod pipeline;
pub mod read;
pub mod report;
pub mod split;
pub mod step;
pub mod steps;
pub mod text;
pub mod write_parquet;

pub use config::{KeptFormat, OutputConfig, PipelineConfig, SourceConfig, StepConfig, StepEntry};
pub use write_parquet::{ParquetCompression, ParquetDocWriter, ParquetWriteOptions};
pub use document::{Document, Rejection};
pub use pipeline::{merge_report, parse_shard, run_configured, run_pipeline, PipelineStats, RunOptions, StepStats};
pub use read::cargo::{cargo_registry_documents, cargo_registry_stream, default_cargo_home};
pub use read::{read_paths, DocumentStream, ReadItem, ReadOptions, ReadStats};
pub use split::split_by_key;
pub use step::{Step, Verdict};

/// Fatal errors: the run cannot continue (a missing input, an unreadable Cargo.lock, a bad config).
/// Malformed *records* are not errors; they are counted as [`Rejection`]s.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: std::path::PathBuf, message: String },
    #[error("{0}")]
    Config(String),
}

pub type Result<T, E = CorpusError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> CorpusError + '_ {
    move |source| CorpusError::Io { path: path.to_path_buf(), source }
}
