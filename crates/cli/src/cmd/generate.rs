//! `ferrolm generate --model RUN_DIR --prompt TEXT`: streams the completion to stdout.
//! The saved config decides the path: causal decoder (sliding KV cache), prefix decoder
//! (the prompt is the bidirectional prefix), encoder-decoder (the prompt is the source).
//! Runs trained on input/target pairs get the prompt as the input, followed by `<sep>`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use candle_core::Device;
use ferrolm_infer::{generate, generate_prefix, generate_seq2seq, generate_windowed, GenerateConfig, SamplingConfig};
use ferrolm_model::ModelKind;
use ferrolm_tokenizer::{DecodeStream, Tokenizer};
use ferrolm_train::{ArchModel, CausalLm, TaskTokens};

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
    // NPLM, RNN and LSTM runs (`model.family`): no KV cache, the window is recomputed.
    let saved = ferrolm_common::load_config(Some(&a.model.join("config.toml")), &[])?;
    if saved.get("model").and_then(|m| m.get("family")).and_then(|f| f.as_str()).is_some_and(|f| f != "transformer") {
        return run_family(a);
    }
    let (cfg, model, _) = ferrolm_train::load_arch_run(&a.model, &Device::Cpu)?;
    let tok = Tokenizer::from_file(&a.model.join("tokenizer.json"))?;
    let mut prompt = tok.encode(&a.prompt);
    anyhow::ensure!(!prompt.is_empty(), "the prompt is empty");
    let kind = cfg.run.model.kind;
    let eot = tok.eot_id();
    if cfg.pairs.is_some() {
        prompt.push(TaskTokens::from_tokenizer(&tok)?.sep);
    }
    let gcfg = GenerateConfig {
        max_tokens: a.max_tokens,
        stop_tokens: vec![eot],
        sampling: SamplingConfig { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed },
    };
    let mut out = std::io::stdout().lock();
    write!(out, "{}", a.prompt)?;
    if cfg.pairs.is_some() || kind == ModelKind::EncoderDecoder {
        writeln!(out)?;
    }
    let mut stream = DecodeStream::new(&tok);
    let on_token = |t: u32| {
        if t != eot {
            let piece = stream.push(t);
            // a closed stdout (`| head`) stops generating; the final write below then fails
            // with BrokenPipe, which main turns into a quiet exit
            return write!(out, "{piece}").and_then(|_| out.flush()).is_ok();
        }
        true
    };
    let produced = match (&model, kind) {
        (ArchModel::Decoder(m), ModelKind::Causal) => generate(m, &prompt, &gcfg, on_token)?,
        (ArchModel::Decoder(m), _) => generate_prefix(m, &prompt, &gcfg, on_token)?,
        (ArchModel::EncoderDecoder(m), _) => generate_seq2seq(m, &prompt, TaskTokens::from_tokenizer(&tok)?.decoder_start, &gcfg, on_token)?,
        (ArchModel::MaskedLm(_), _) => anyhow::bail!("{} is a masked LM: it fills masks (`ferrolm fill-mask`), it does not generate", a.model.display()),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", stream.finish())?;
    if kind != ModelKind::Causal && produced.len() < a.max_tokens && produced.last() != Some(&eot) {
        eprintln!("(stopped at the model's context of {} positions)", cfg.run.model.max_seq_len);
    }
    Ok(())
}

fn run_family(a: Args) -> Result<()> {
    let (fcfg, model, _) = ferrolm_train::load_causal_lm(&a.model, &Device::Cpu)?;
    let tok = Tokenizer::from_file(&a.model.join("tokenizer.json"))?;
    let prompt = tok.encode(&a.prompt);
    anyhow::ensure!(!prompt.is_empty(), "the prompt is empty");
    let eot = tok.eot_id();
    let gcfg = GenerateConfig {
        max_tokens: a.max_tokens,
        stop_tokens: vec![eot],
        sampling: SamplingConfig { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed },
    };
    let mut out = std::io::stdout().lock();
    write!(out, "{}", a.prompt)?;
    let mut stream = DecodeStream::new(&tok);
    let next_logits = |window: &[u32]| -> Result<Vec<f32>> {
        let x = candle_core::Tensor::new(window, &Device::Cpu)?.unsqueeze(0)?;
        let logits = model.causal_logits(&x, None)?;
        let t = logits.dim(1)?;
        Ok(logits.narrow(1, t - 1, 1)?.flatten_all()?.to_vec1::<f32>()?)
    };
    let on_token = |t: u32| {
        if t != eot {
            // stop generating once stdout is closed (see run_arch)
            return write!(out, "{}", stream.push(t)).and_then(|_| out.flush()).is_ok();
        }
        true
    };
    generate_windowed(fcfg.run.model.max_seq_len, &prompt, &gcfg, next_logits, on_token)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", stream.finish())?;
    Ok(())
}
