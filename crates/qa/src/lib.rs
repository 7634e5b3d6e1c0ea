//! ferrolm-qa: question answering on ferrolm's own models, on top of ferrolm-rag's retrieval.
//!
//! - [`windows`]: SQuAD questions and contexts → `[CLS] question [SEP] context [SEP]` windows
//!   with word-aligned answer targets (BERT's preprocessing, sliding windows included);
//! - [`reader`]: the extractive span reader (start/end head on the masked LM) and its answer
//!   choice with the SQuAD 2.0 null span;
//! - [`train`]: `qa train` on the shared training loop, `qa eval`;
//! - [`data`]: preparation and EM/F1 (HasAns/NoAns) with the no-answer threshold search;
//! - [`baselines`]: first sentence of the passage, most common answer type;
//! - [`embed`]: passage/query embeddings into rag's vector store (dense retrieval);
//! - [`ask`]: retrieve (BM25, dense, hybrid) then read (extractive or generative with
//!   citations).
//!
//! ferrolm-rag has no candle; everything that runs a model lives here. See README.md.

pub mod ask;
pub mod baselines;
pub mod data;
pub mod embed;
pub mod reader;
pub mod train;
pub mod windows;

pub use ask::{Answer, Mode, Reader, Retriever};
pub use data::{EmF1, QaReport};
pub use embed::{embed_index, Embedder, Pooling};
pub use reader::{LoadedReader, ReaderConfig, SpanReader};
pub use train::{run_qa_eval, run_qa_train, QaStageConfig};
