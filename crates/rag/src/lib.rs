//! ferrolm-rag: the retrieval half of question answering over documents.
//!
//! Documents come from the corpus readers (folders, Markdown, text, code, JSONL, Parquet, the
//! Cargo registry) or from SQuAD-format JSON; [`chunk`] splits them into passages at
//! paragraph / heading / code-item boundaries; [`index`] keeps them in a BM25 index (tantivy)
//! with a manifest that makes re-indexing incremental; [`vectors`] is the dense-vector store an
//! encoder will fill; [`fusion`] combines rankings; [`eval`] measures retrieval on SQuAD
//! questions; [`squad_metrics`] is SQuAD 2.0's EM/F1 for readers. See README.md.

pub mod chunk;
pub mod eval;
pub mod fusion;
pub mod index;
pub mod squad;
pub mod squad_metrics;
pub mod vectors;

pub use chunk::{split_passages, ChunkOptions, Span, TextKind};
pub use eval::{evaluate_retrieval, evaluate_retrieval_with, RetrievalReport};
pub use fusion::{reciprocal_rank_fusion, weighted_reciprocal_rank_fusion, RRF_K};
pub use index::{build_index, set_vectors, IndexOptions, IndexReport, Manifest, Passage, RagIndex, RegistrySource, SearchHit, Sources, FORMAT_VERSION};
pub use vectors::{write_vector_store, VectorStore};

use std::path::PathBuf;

/// Errors of retrieval; each names the file or index it concerns.
#[derive(Debug, thiserror::Error)]
pub enum RagError {
    // The cause is a plain field, not `source`: the message already holds it, and anyhow's
    // chain would print it twice.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(transparent)]
    Corpus(#[from] ferrolm_corpus::CorpusError),
    #[error("{path}: search index: {error}")]
    Tantivy { path: PathBuf, error: tantivy::TantivyError },
    #[error(
        "{path}: index format version {found}, but this ferrolm reads version {wanted}; rebuild it with `ferrolm rag index`"
    )]
    Version { path: PathBuf, found: u32, wanted: u32 },
    #[error("{path}: built with embedding model {}, but {} was asked for; rebuild the vectors with that model or use the index's", show(.found), show(.wanted))]
    EmbeddingMismatch { path: PathBuf, found: Option<String>, wanted: Option<String> },
    #[error("{0}")]
    Config(String),
}

fn show(m: &Option<String>) -> String {
    match m {
        Some(m) => format!("{m:?}"),
        None => "none".into(),
    }
}

pub type Result<T, E = RagError> = std::result::Result<T, E>;
