//! One file per subcommand.
pub mod align_args;
pub mod dpo;
pub mod reward;
pub mod rlhf;
pub mod bench;
pub mod chat;
pub mod classify;
pub mod data;
pub mod eval;
pub mod experiment;
pub mod fill_mask;
pub mod generate;
pub mod ngram;
pub mod quickstart;
pub mod sft;
pub mod tokenizer;
pub mod train;
pub mod word2vec;
pub mod rag;
pub mod qa;

/// The device every command runs its model on. One place, so the CUDA build (issue 17)
/// changes this function and no call site.
pub fn device() -> candle_core::Device {
    candle_core::Device::Cpu
}
