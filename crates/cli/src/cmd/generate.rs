//! `ferrolm generate --model RUN_DIR --prompt TEXT`: streams the completion to stdout.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use candle_core::Device;
use ferrolm_infer::{generate, GenerateConfig, SamplingConfig};
use ferrolm_tokenizer::{DecodeStream, Tokenizer};

#[derive(clap::Args)]
pub struct Args {
    /// A run folder written by `ferrolm train` or `ferrolm quickstart`.
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 200)]
    max_tokens: usize,
    /// 0 for greedy decoding.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// 0 disables top-k filtering.
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(a: Args) -> Result<()> {
    let (_, model, _) = ferrolm_train::trainer::load_run(&a.model, &Device::Cpu)?;
    let tok = Tokenizer::from_file(&a.model.join("tokenizer.json"))?;
    let prompt = tok.encode(&a.prompt);
    anyhow::ensure!(!prompt.is_empty(), "the prompt is empty");
    let cfg = GenerateConfig {
        max_tokens: a.max_tokens,
        stop_tokens: vec![tok.eot_id()],
        sampling: SamplingConfig { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed },
    };
    let mut out = std::io::stdout().lock();
    write!(out, "{}", a.prompt)?;
    let mut stream = DecodeStream::new(&tok);
    let eot = tok.eot_id();
    generate(&model, &prompt, &cfg, |t| {
        if t != eot {
            let piece = stream.push(t);
            let _ = write!(out, "{piece}");
            let _ = out.flush();
        }
        true
    })?;
    writeln!(out, "{}", stream.finish())?;
    Ok(())
}
