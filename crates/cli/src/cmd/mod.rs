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
pub mod score;
pub mod export;

/// The device every command runs its model on. One place, so the CUDA build (issue 17)
/// changes this function and no call site.
pub fn device() -> candle_core::Device {
    candle_core::Device::Cpu
}

/// What `--model` names, as a folder: a ferrolm run folder or a Hugging Face model folder
/// as given, or `hf:ORG/NAME[@REVISION]` resolved into the Hugging Face cache (downloaded
/// when missing). The one place every command's `--model` goes through;
/// `ferrolm_model::load_model` then tells run folders and HF folders apart.
pub fn model_dir(model: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    ferrolm_model::hf::resolve_model_arg(model)
}
