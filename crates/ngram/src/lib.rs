//! ferrolm-ngram: count-based n-gram language models with interpolated modified
//! Kneser-Ney smoothing estimated the way KenLM's `lmplz` does, ARPA output/input,
//! and a KenLM-compatible scorer (sentence log10 probabilities, perplexity).
//!
//! Data flow: sentences (words or token ids) → [`estimate::Estimator`] counts every
//! n-gram of orders 1..=N over `<s> w1 … wk </s>` → adjusted (continuation) counts for
//! lower orders → per-order discounts D1, D2, D3+ from count-of-counts → interpolated
//! probabilities and backoff weights → [`model::Model`] (the same structure ARPA holds).

#![forbid(unsafe_code)]

pub mod binary;
pub mod estimate;
pub mod model;
pub mod sort;
pub mod stream;

pub use binary::{arpa_to_binary, AnyModel, BinaryModel, BinaryStats};
pub use estimate::{train_ids, train_text, Discounts, TrainOptions};
pub use model::{Model, SentenceScore, BOS, EOS, UNK};
pub use stream::{parse_memory, train_files_streaming, StreamOptions, StreamReport, StreamingEstimator};
