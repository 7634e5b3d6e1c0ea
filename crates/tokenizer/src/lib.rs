//! ferrolm-tokenizer: byte-level BPE and character tokenizers stored as Hugging Face
//! `tokenizer.json`, a fast encoder that reproduces the `tokenizers` crate id for id, a chat
//! template, and memory-mapped token shards. See README.md in this crate.

#![forbid(unsafe_code)]

mod bpe;
pub mod chat;
pub mod bytelevel;
mod encoder;
pub mod hf_config;
mod pretok;
pub mod shards;
pub mod special;
mod tokenizer;

pub use chat::{ChatTemplate, Message, Role};
pub use hf_config::HfTokenizerConfig;
pub use shards::{ShardIndex, ShardWriter, TokenShards};
pub use tokenizer::{BpeTrainConfig, DecodeStream, Tokenizer, TokenizerConfig, TokenizerKind};
