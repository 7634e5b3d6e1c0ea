//! `ferrolm chat --model RUN_DIR`: an interactive conversation with the run's chat template;
//! `/rate` and `/compare` record human feedback for reward-model training and DPO.

use std::path::PathBuf;

use anyhow::Result;
use ferrolm_finetune::chat::{ChatConfig, ChatSession};
use ferrolm_finetune::prompt;
use ferrolm_infer::SamplingConfig;

#[derive(clap::Args)]
pub struct Args {
    /// A run folder (an SFT run, or any decoder run: the default template is used then), or a
    /// Hugging Face folder (its tokenizer_config.json chat template, Jinja of any shape).
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value_t = 200)]
    max_tokens: usize,
    /// 0 for greedy answers.
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// System message for the conversation.
    #[arg(long, default_value = "")]
    system: String,
    /// Where /compare appends preference pairs (default RUN_DIR/feedback/preferences.jsonl).
    #[arg(long)]
    preferences: Option<PathBuf>,
    /// Where /rate appends ratings (default RUN_DIR/feedback/ratings.jsonl).
    #[arg(long)]
    ratings: Option<PathBuf>,
    /// Quantize the weights for CPU inference: q8_0, q4_k (Q4_K on rows of whole 256-value
    /// blocks, Q8_0 on the others) or f16 (half precision). Layers a quantized or f16 GGUF
    /// stores keep its blocks.
    #[arg(long)]
    quant: Option<ferrolm_model::QuantKind>,
}

pub fn run(mut a: Args) -> Result<()> {
    a.model = super::model_dir(&a.model)?;
    let mut loaded = ferrolm_model::load_model(&a.model, &super::device()?)?;
    super::quantize(&mut loaded.model, a.quant)?;
    let model = loaded.model.into_decoder("chat")?;
    let tok = prompt::load_tokenizer(&a.model)?;
    // the folder's chat template (a marker template, or any Jinja template, as transformers
    // renders it) and the ids its answers end at
    let format = prompt::ChatFormat::load(&a.model, &tok)?;
    let feedback = a.model.join("feedback");
    let cfg = ChatConfig {
        max_tokens: a.max_tokens,
        sampling: SamplingConfig { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed },
        system: a.system,
        compare_temperature: 0.8,
        preferences: a.preferences.unwrap_or_else(|| feedback.join("preferences.jsonl")),
        ratings: a.ratings.unwrap_or_else(|| feedback.join("ratings.jsonl")),
    };
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut out = std::io::stdout().lock();
    ChatSession::new(&model, &tok, &format, cfg).run(&mut input, &mut out)?;
    Ok(())
}
