//! `ferrolm export --model RUN --format hf --out DIR`: a ferrolm run as a Hugging Face
//! model folder (config.json in the Llama or GPT-2 style its block style maps to,
//! model.safetensors, tokenizer.json, tokenizer_config.json with the chat template as
//! Jinja, generation_config.json) that `AutoModelForCausalLM.from_pretrained(DIR)` loads
//! with the same logits.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ferrolm_finetune::prompt::ChatFormat;
use ferrolm_tokenizer::Tokenizer;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// A transformers model folder.
    Hf,
    /// One GGUF file for llama.cpp / Ollama (modern blocks: llama, qwen2, qwen3; GPT-2-style
    /// blocks: gpt2).
    Gguf,
    /// The LoRA adapters of a run trained with `[lora]`, as a PEFT adapter folder
    /// (adapter_model.safetensors + adapter_config.json) for `PeftModel.from_pretrained`.
    Peft,
}

#[derive(clap::Args)]
pub struct Args {
    /// A ferrolm run folder (or a Hugging Face folder / hf:ORG/NAME, re-exported as f32).
    #[arg(long)]
    model: PathBuf,
    #[arg(long, value_enum)]
    format: Format,
    /// Output folder (hf) or file (gguf), replaced atomically.
    #[arg(long)]
    out: PathBuf,
    /// GGUF precision of the matrices: f32, f16, q8_0 or q4_k_m (norms stay f32).
    #[arg(long, default_value = "f16")]
    quant: ferrolm_model::gguf::GgufQuant,
    /// Fold a LoRA run's adapters into the weights (required for hf and gguf exports of a
    /// run that trained adapters; `--format peft` exports the adapters alone).
    #[arg(long)]
    merge_lora: bool,
}

pub fn run(a: Args) -> Result<()> {
    let dir = super::model_dir(&a.model)?;
    if let Some(kind) = head_run_kind(&dir) {
        return export_head_run(&dir, kind, a.format, &a.out);
    }
    let lora = ferrolm_model::lora::read_run_config(&dir)?;
    match (&lora, a.format) {
        (Some(l), Format::Peft) => return export_peft(&dir, l, &a.out),
        (None, Format::Peft) => anyhow::bail!("{} trained no LoRA adapters (no {}): nothing to export as PEFT", dir.display(), ferrolm_model::lora::RUN_FILE),
        (Some(_), _) if !a.merge_lora => anyhow::bail!(
            "{} holds LoRA adapters on a frozen base: pass --merge-lora to export the merged model, or --format peft for the adapters alone",
            dir.display()
        ),
        _ => {}
    }
    // (load_model folds a LoRA run's adapters into the weights; a QLoRA run's into its
    // base's f32 weights, as PEFT merges a QLoRA adapter into the unquantized base.)
    let loaded = ferrolm_model::registry::load_model_with(&dir, &super::device()?, true)?;
    let cfg = loaded.spec.require_transformer("export --format hf").map_err(anyhow::Error::msg)?;
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).with_context(|| format!("{} has no usable tokenizer.json", dir.display()))?;
    match a.format {
        Format::Hf => {
            // a marker template goes out as the Jinja that renders it, with end of text and
            // its end marker as the stops; any other Jinja template (Llama 2's) as it is, with
            // the model's end-of-sequence ids
            let format = ChatFormat::load(&dir, &tok)?;
            let stop = match format.marker() {
                Some(tpl) => ferrolm_tokenizer::hf_config::marker_eos_ids(&tok, tpl),
                None => format.stop_tokens().to_vec(),
            };
            let jinja = match format.marker() {
                Some(tpl) => ferrolm_tokenizer::hf_config::jinja_for(tpl),
                None => format.jinja_source(),
            };
            std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
            ferrolm_tokenizer::hf_config::write_hf_tokenizer_files(&a.out, &tok, &jinja, &stop, cfg.max_seq_len)?;
            let family = ferrolm_model::hf::export::write_checkpoint(cfg, &loaded.varmap, &a.out, None, stop.first().copied())?;
            ferrolm_model::hf::export::write_generation_config(&a.out, &stop)?;
            eprintln!("wrote {} ({} checkpoint, {} parameters)", a.out.display(), family.model_type(), loaded.spec.num_params());
        }
        Format::Peft => unreachable!("handled above"),
        Format::Gguf => {
            let v = ferrolm_tokenizer::hf_config::ggml_vocab(&tok)?;
            // llama.cpp's pre-tokenizer with the tokenizer's split regexes, so it cuts texts
            // into the same pieces (an unknown split is an error, not other ids)
            let pre = ferrolm_tokenizer::hf_config::ggml_pre(&tok).with_context(|| format!("{}: tokenizer.ggml.pre", dir.join("tokenizer.json").display()))?;
            // A Hugging Face folder's end of text and Jinja template go in as they are
            // (Llama 2's template, which no marker template renders, included); a ferrolm
            // run's are its end-of-text token and its chat template as Jinja.
            let hf_config = ferrolm_tokenizer::HfTokenizerConfig::load_from_dir(&dir)?;
            let eos = match hf_config.as_ref().and_then(|c| c.eos_token.as_deref()) {
                Some(e) => Some(tok.token_id(e).with_context(|| format!("{}: eos_token {e:?} is not in tokenizer.json", dir.join("tokenizer_config.json").display()))?),
                None => tok.try_eot_id(),
            };
            let chat_template = ChatFormat::load(&dir, &tok)?.jinja_source();
            let vocab = ferrolm_model::gguf::GgufVocab {
                model: v.model.to_string(),
                tokens: v.tokens,
                token_types: v.token_types,
                scores: v.scores,
                merges: v.merges,
                pre: pre.to_string(),
                bos: v.bos,
                eos,
                unk: v.unk,
                add_bos: v.bos.is_some(),
                add_space_prefix: v.add_space_prefix,
                chat_template: Some(chat_template),
                tokenizer_json: Some(tok.to_json_string()?),
            };
            let s = ferrolm_model::gguf::write(cfg, &loaded.varmap, &vocab, a.quant, &a.out)?;
            eprintln!("wrote {} ({} architecture, {} tensors, {:.1} MB, {:?})", a.out.display(), s.arch, s.tensors, s.bytes as f64 / 1e6, a.quant);
            for f in &s.fallbacks {
                eprintln!("  stored in another type (rows do not fill its blocks): {f}");
            }
        }
    }
    Ok(())
}

/// The adapters of a LoRA run as a PEFT folder; the base named in it is the run's base
/// (its `sft.toml`), which PEFT needs in Hugging Face form (`ferrolm export --format hf`
/// of that base, or the Hub id it came from).
fn export_peft(dir: &std::path::Path, lora: &ferrolm_model::lora::LoraConfig, out: &std::path::Path) -> Result<()> {
    let spec = ferrolm_model::registry::read_spec(dir)?;
    let cfg = spec.require_transformer("LoRA").map_err(anyhow::Error::msg)?;
    let ckpt = ferrolm_model::registry::latest_checkpoint(dir)?;
    let (model, varmap) = ferrolm_model::AnyModel::build_fresh(&spec, &candle_core::Device::Cpu)?;
    let ferrolm_model::AnyModel::Decoder(mut m) = model else { anyhow::bail!("LoRA adapters are supported on decoders only") };
    ferrolm_model::lora::attach(&mut m, &varmap, lora, 0)?;
    if lora.quant.is_some() {
        // a QLoRA checkpoint holds the adapters and what stayed f32, not the base's block weights
        ferrolm_model::registry::load_some_weights(&varmap, &ckpt.join("model.safetensors"))?;
    } else {
        ferrolm_model::registry::load_weights(&varmap, &ckpt.join("model.safetensors"))?;
    }
    let base = run_base(dir);
    ferrolm_model::lora::write_peft(out, cfg, lora, &varmap, &base)?;
    eprintln!("wrote {} (PEFT LoRA adapter, rank {}, on base {base:?})", out.display(), lora.rank);
    Ok(())
}

/// The base a fine-tuning run started from: `sft.toml`'s `base`, or the `model_from` of
/// an alignment stage's `align.toml` (`[dpo]`, `[ppo]`); empty when neither says.
fn run_base(dir: &std::path::Path) -> String {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok().and_then(|t| t.parse::<toml::Table>().ok());
    if let Some(b) = read("sft.toml").and_then(|t| t.get("base").and_then(|b| b.as_str()).map(str::to_string)) {
        return b;
    }
    read("align.toml")
        .and_then(|t| t.values().filter_map(|v| v.as_table()).find_map(|s| s.get("model_from").and_then(|b| b.as_str()).map(str::to_string)))
        .unwrap_or_default()
}

/// A run whose model is a body with a sequence-classification head (a reward model, a
/// classifier): not a causal LM, so not an hf/gguf export.
fn head_run_kind(dir: &std::path::Path) -> Option<&'static str> {
    if dir.join("classify.toml").is_file() {
        return Some("classifier");
    }
    let align = std::fs::read_to_string(dir.join("align.toml")).ok()?.parse::<toml::Table>().ok()?;
    align.contains_key("reward").then_some("reward-model")
}

/// `--format peft` of a reward-model or classifier run: the PEFT SEQ_CLS adapter it wrote
/// (LoRA adapters and the head as `modules_to_save`); other formats are refused.
fn export_head_run(dir: &std::path::Path, kind: &str, format: Format, out: &std::path::Path) -> Result<()> {
    let adapter = dir.join("adapter");
    match format {
        Format::Peft => {
            anyhow::ensure!(
                adapter.join("adapter_config.json").is_file() && adapter.join("adapter_model.safetensors").is_file(),
                "{} is a {kind} run without LoRA adapters (no adapter/ folder; train it with --set lora.rank=N): nothing to export as PEFT",
                dir.display()
            );
            std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
            for f in ["adapter_model.safetensors", "adapter_config.json"] {
                let bytes = std::fs::read(adapter.join(f)).with_context(|| format!("reading {}", adapter.join(f).display()))?;
                ferrolm_common::write_atomic(out.join(f), bytes).with_context(|| format!("writing {}", out.join(f).display()))?;
            }
            eprintln!("wrote {} (PEFT SEQ_CLS LoRA adapter of the {kind} run {})", out.display(), dir.display());
            Ok(())
        }
        Format::Hf | Format::Gguf => anyhow::bail!(
            "{} is a {kind} run (a body with a sequence-classification head), and --format hf/gguf (with or without --merge-lora) writes causal LMs: \
             export its LoRA adapter and head with --format peft (PEFT SEQ_CLS, for AutoModelForSequenceClassification + PeftModel.from_pretrained)",
            dir.display()
        ),
    }
}
