//! One file per subcommand.
pub mod align_args;
pub mod dpo;
pub mod reward;
pub mod rlhf;
pub mod bench;
pub mod chat;
pub mod classify;
pub mod config_args;
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
pub mod serve;
pub mod feedback;
pub mod complete;
pub mod qa;

static DEVICE_CHOICE: std::sync::OnceLock<ferrolm_model::DeviceChoice> = std::sync::OnceLock::new();
static DEVICE: std::sync::OnceLock<candle_core::Device> = std::sync::OnceLock::new();

/// Records the global `--device` (before any command runs).
pub fn choose_device(choice: ferrolm_model::DeviceChoice) {
    let _ = DEVICE_CHOICE.set(choice);
}

/// The device every command runs its model on, opened on first use (so commands without a
/// model never touch a GPU). One place, so the CUDA build changes no call site; asking for
/// CUDA where this build or machine has none is a clear error here.
pub fn device() -> anyhow::Result<candle_core::Device> {
    if let Some(d) = DEVICE.get() {
        return Ok(d.clone());
    }
    let opened = DEVICE_CHOICE.get().copied().unwrap_or(ferrolm_model::DeviceChoice::Cpu).open()?;
    Ok(DEVICE.get_or_init(|| opened).clone())
}

/// `--quant` of the inference commands: quantize the loaded model's linear layers through
/// the model crate's one function and say what it did.
pub fn quantize(model: &mut ferrolm_model::AnyModel, quant: Option<ferrolm_model::QuantKind>) -> anyhow::Result<()> {
    if let Some(kind) = quant {
        let summary = model.quantize(kind)?;
        eprintln!("--quant {kind}: {summary}");
    }
    Ok(())
}

/// What `--model` names, as a folder: a ferrolm run folder or a Hugging Face model folder
/// as given, or `hf:ORG/NAME[@REVISION]` resolved into the Hugging Face cache (downloaded
/// when missing). The one place every command's `--model` goes through;
/// `ferrolm_model::load_model` then tells run folders and HF folders apart.
pub fn model_dir(model: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    ferrolm_model::hf::resolve_model_arg(model)
}
