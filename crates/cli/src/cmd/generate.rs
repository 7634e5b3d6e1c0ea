//! `ferrolm generate --model RUN_DIR --prompt TEXT`: streams the completion to stdout.
//! The saved config decides the path: causal decoder (sliding KV cache), prefix decoder
//! (the prompt is the bidirectional prefix), encoder-decoder (the prompt is the source).
//! Runs trained on input/target pairs get the prompt as the input, followed by `<sep>`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use ferrolm_infer::{generate_any, GenerateConfig, SamplingConfig};
use ferrolm_model::ModelKind;
use ferrolm_tokenizer::DecodeStream;
use ferrolm_train::TaskTokens;

#[derive(clap::Args)]
pub struct Args {
    /// A run folder written by `ferrolm train` or `ferrolm quickstart`, a Hugging Face
    /// model folder, or hf:ORG/NAME[@REVISION].
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
    // (a .gguf file carries its tokenizer: ferrolm's tokenizer.json, or tokenizer.ggml.*)
    let tok = ferrolm_finetune::prompt::load_tokenizer(&a.model)?;
    // as transformers' `tokenizer(prompt)`: a Hugging Face tokenizer's own framing (Llama's
    // leading `<s>`) included; ferrolm's tokenizers add nothing
    let mut prompt = tok.encode_with_special_tokens(&a.prompt)?;
    anyhow::ensure!(!prompt.is_empty(), "the prompt is empty");
    let kind = loaded.spec.kind();
    // A Hugging Face model stops at its generation_config's end tokens (the first is also
    // the encoder-decoder start token); a ferrolm run at end-of-text.
    let stops = if ferrolm_model::hf::is_hf_folder(&a.model) {
        ferrolm_model::hf::generation_defaults(&a.model)?.eos_token_ids
    } else if ferrolm_finetune::prompt::is_gguf(&a.model) {
        // a GGUF file's end of sequence (llama.cpp's stop), else ferrolm's end of text
        ferrolm_finetune::prompt::gguf_eos(&a.model)?.or(tok.try_eot_id()).into_iter().collect()
    } else {
        vec![tok.eot_id()]
    };
    let eot = stops.first().copied().or_else(|| tok.try_eot_id()).unwrap_or(0);
    // a run trained on input/target pairs reads "input <sep>" and writes the target
    let on_pairs = trained_on_pairs(&a.model)?;
    if on_pairs {
        prompt.push(TaskTokens::from_tokenizer(&tok)?.sep);
    }
    let gcfg = GenerateConfig {
        max_tokens: a.max_tokens,
        stop_tokens: stops.clone(),
        sampling: SamplingConfig { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed },
    };
    let mut out = std::io::stdout().lock();
    write!(out, "{}", a.prompt)?;
    if on_pairs || kind == ModelKind::EncoderDecoder {
        writeln!(out)?;
    }
    // the text continues the prompt printed above: the space before its first word stays
    let mut stream = DecodeStream::continuation(&tok);
    let on_token = |t: u32| {
        if !stops.contains(&t) {
            let piece = stream.push(t);
            // a closed stdout (`| head`) stops generating; the final write below then fails
            // with BrokenPipe, which main turns into a quiet exit
            return write!(out, "{piece}").and_then(|_| out.flush()).is_ok();
        }
        true
    };
    // the decoder's start token (encoder-decoder only): end-of-text, as in training
    let produced = generate_any(&loaded.model, &prompt, eot, &gcfg, on_token)
        .with_context(|| format!("generating with {}", a.model.display()))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", stream.finish())?;
    if matches!(kind, ModelKind::Prefix | ModelKind::EncoderDecoder) && produced.len() < a.max_tokens && produced.last() != Some(&eot) {
        eprintln!("(stopped at the model's context of {} positions)", loaded.spec.max_seq_len());
    }
    Ok(())
}

/// Whether the run was trained on input/target pairs (its config has `[pairs]`).
fn trained_on_pairs(run_dir: &std::path::Path) -> Result<bool> {
    if ferrolm_model::hf::is_hf_folder(run_dir) || ferrolm_finetune::prompt::is_gguf(run_dir) {
        return Ok(false);
    }
    let path = run_dir.join("config.toml");
    let saved = ferrolm_train::RunConfig::from_value(&ferrolm_common::load_config(Some(&path), &[])?)
        .with_context(|| format!("in {}", path.display()))?;
    Ok(saved.pairs.is_some())
}
