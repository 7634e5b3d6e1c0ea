//! ferrolm-corpus: turns raw mixed sources into a clean, de-duplicated, private-data-free corpus.
//! See README.md in this crate for the architecture (modules, data flow, invariants).

pub mod document;
pub mod read;

pub use document::{Document, Rejection};
pub use read::cargo::{cargo_registry_documents, cargo_registry_stream, default_cargo_home};
pub use read::{read_paths, DocumentStream, ReadItem, ReadOptions, ReadStats};

/// Fatal errors: the run cannot continue (a missing input, an unreadable Cargo.lock).
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
