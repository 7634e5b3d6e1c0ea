//! Plumbing shared by every ferrolm stage. Kept tiny and dependency-light so that
//! the corpus, tokenizer and n-gram crates can use it without pulling in candle.

#![forbid(unsafe_code)]

pub mod atomic;
pub mod config;
pub mod progress;

pub use atomic::{replace_dir, write_atomic, AtomicFile};
pub use config::{apply_overrides, load_config, ConfigError};
