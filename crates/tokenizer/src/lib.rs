//! Tokenizers and token shards.
//!
//! - [`Tokenizer`]: byte-level BPE trained and stored with Hugging Face `tokenizers`
//!   (a standard `tokenizer.json`), or a character vocabulary (nanoGPT's Shakespeare
//!   setup). Both expose the same encode/decode and the bytes each token stands for,
//!   which bits-per-byte needs.
//! - [`shards`]: token ids written as raw little-endian u16/u32 files with an
//!   `index.json` written last, read back through memory maps.

pub mod bytelevel;
pub mod shards;
pub mod special;
mod tokenizer;

pub use tokenizer::{BpeTrainConfig, DecodeStream, Tokenizer, TokenizerKind};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {message}")]
    File { path: std::path::PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Hf(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;
