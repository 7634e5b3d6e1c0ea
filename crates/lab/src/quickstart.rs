//! The quickstart: the whole path on the embedded default corpus — the sources and docs of
//! the crates named in this project's Cargo.lock — within a time budget:
//! corpus → clean → split → tokenizer → shards → pretrain → evaluate → samples → report.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use ferrolm_infer::{generate_any, GenerateConfig, SamplingConfig};
use ferrolm_tokenizer::{DecodeStream, Tokenizer};
use ferrolm_train::{start_run_with_tokenizer, ArchData, RunConfig};
use serde::{Deserialize, Serialize};

use crate::corpus::{gather_corpus, split_by_id, text_bytes, CorpusOptions};
use crate::prep::{padded_vocab, token_bytes, train_tokenizer, unigram_bits_per_byte, write_shards};
use crate::timing::seconds_per_step;

/// The built-in config (configs/quickstart.toml).
pub const DEFAULT_CONFIG: &str = include_str!("../../../configs/quickstart.toml");

/// What `ferrolm quickstart` takes.
#[derive(Debug, Clone)]
pub struct QuickstartOptions {
    /// Time budget for the whole run, in minutes.
    pub minutes: f64,
    /// Output folder.
    pub out: PathBuf,
    /// Extra text files or folders.
    pub data: Vec<PathBuf>,
    /// Read the Cargo registry sources named in Cargo.lock.
    pub registry: bool,
    /// A config instead of the built-in one.
    pub config: Option<PathBuf>,
    /// `key=value` overrides.
    pub overrides: Vec<String>,
}

/// The headline figures (also in `summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct QuickstartSummary {
    pub val_loss: f64,
    pub val_bits_per_byte: f64,
    pub unigram_bits_per_byte: f64,
    pub steps: usize,
    pub tokens_per_sec: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuickstartConfig {
    tokenizer: String,
    vocab_size: usize,
    val_fraction: f64,
    tokenizer_train_bytes: usize,
    reserve_fraction: f64,
}

fn load(o: &QuickstartOptions) -> Result<(QuickstartConfig, RunConfig, toml::Value)> {
    let value = crate::config::load_layered(o.config.as_deref(), DEFAULT_CONFIG, false, &o.overrides)?;
    let mut run_value = value.clone();
    let qs = run_value.as_table_mut().and_then(|t| t.remove("quickstart")).context("config lacks [quickstart]")?;
    let qs: QuickstartConfig = ferrolm_common::config::typed(&qs).context("in [quickstart]")?;
    anyhow::ensure!(qs.tokenizer == "bpe" || qs.tokenizer == "char", "quickstart.tokenizer must be \"bpe\" or \"char\"");
    anyhow::ensure!(qs.val_fraction > 0.0 && qs.val_fraction < 0.5, "quickstart.val_fraction must be in (0, 0.5)");
    let run = RunConfig::from_value(&run_value)?;
    Ok((qs, run, value))
}

struct Step {
    t0: Instant,
}
impl Step {
    fn start(name: &str) -> Self {
        eprintln!("\n== {name}");
        Self { t0: Instant::now() }
    }
    fn done(self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }
}

/// Run the quickstart into `o.out`: quickstart.toml, corpus/, tokenizer.json, data/,
/// the run (config.toml, checkpoints, metrics.jsonl, loss.svg), samples.md, report.md,
/// summary.json.
pub fn run_quickstart(o: &QuickstartOptions, device: &Device) -> Result<QuickstartSummary> {
    let t_all = Instant::now();
    let budget = o.minutes * 60.0;
    let (qs, mut cfg, full_value) = load(o)?;
    let out = o.out.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    ferrolm_common::write_atomic(out.join("quickstart.toml"), toml::to_string_pretty(&full_value)?)?;
    let mut report = String::new();
    let mut timings: Vec<(&str, f64)> = Vec::new();

    // 1. Corpus.
    let s = Step::start("corpus: the Cargo registry sources named in Cargo.lock");
    let corpus = CorpusOptions { registry: o.registry, data: o.data.clone(), max_bytes: None, clean: true, seed: cfg.train.seed };
    let (docs, corpus_lines) = gather_corpus(&corpus, &out)?;
    timings.push(("corpus", s.done()));

    // 2. Split by document, deterministically.
    let (train_docs, val_docs) = split_by_id(docs, qs.val_fraction, cfg.train.seed)?;
    let (train_bytes, val_bytes) = (text_bytes(&train_docs), text_bytes(&val_docs));
    eprintln!("split: {} train documents ({:.1} MB), {} held-out ({:.2} MB)", train_docs.len(), train_bytes as f64 / 1e6, val_docs.len(), val_bytes as f64 / 1e6);

    // 3. Tokenizer.
    let s = Step::start("tokenizer");
    let tok = train_tokenizer(&qs.tokenizer, qs.vocab_size, qs.tokenizer_train_bytes, &train_docs)?;
    tok.save(&out.join("tokenizer.json"))?;
    cfg.model.set_vocab_size(padded_vocab(&tok));
    eprintln!("{} tokenizer with {} tokens (model vocabulary padded to {})", qs.tokenizer, tok.vocab_size(), cfg.model.vocab_size());
    timings.push(("tokenizer", s.done()));

    // 4. Shards.
    let s = Step::start("tokenize into shards");
    let data_dir = out.join("data");
    let train = write_shards(&tok, &train_docs, &data_dir.join("train"))?;
    let val = write_shards(&tok, &val_docs, &data_dir.join("val"))?;
    let bytes_per_token = train_bytes as f64 / train.len() as f64;
    eprintln!("{} train tokens, {} held-out tokens ({:.2} bytes per token)", train.len(), val.len(), bytes_per_token);
    timings.push(("shards", s.done()));
    drop(train_docs);

    // 5. The unigram baseline: what a model that ignores context achieves.
    let token_bytes = token_bytes(&tok, cfg.model.vocab_size());
    let unigram_bpb = unigram_bits_per_byte(&train, &val, &token_bytes);
    eprintln!("unigram baseline: {unigram_bpb:.4} bits per byte on the held-out split");

    // 6. Pretrain within what is left of the budget.
    let s = Step::start("pretrain");
    cfg.data = ferrolm_train::config::DataConfig {
        train: data_dir.join("train").display().to_string(),
        val: data_dir.join("val").display().to_string(),
        tokenizer: out.join("tokenizer.json").display().to_string(),
    };
    let left = budget - t_all.elapsed().as_secs_f64();
    let train_secs = (left * (1.0 - qs.reserve_fraction) - 15.0).max(10.0);
    let step_secs = seconds_per_step(&cfg, ArchData::Stream { train: &train, val: &val }, &token_bytes, device)?;
    // Evaluations cost about eval_batches forward passes each; five of them over the run.
    let steps = ((train_secs / step_secs) * 0.9) as usize;
    cfg.train.max_steps = steps.max(10);
    cfg.train.eval_interval = (cfg.train.max_steps / 5).max(1);
    cfg.train.checkpoint_interval = (cfg.train.max_steps / 2).max(1);
    cfg.train.warmup_steps = cfg.train.warmup_steps.min(cfg.train.max_steps / 10);
    cfg.train.time_limit_secs = train_secs;
    eprintln!(
        "{:.2} s per step measured; training {} steps (~{:.0} s) of {} tokens each",
        step_secs, cfg.train.max_steps, cfg.train.max_steps as f64 * step_secs, cfg.train.batch_size * cfg.seq_len()
    );
    let run_dir = out.clone();
    let mut trainer = start_run_with_tokenizer(&cfg, &run_dir, ArchData::Stream { train: &train, val: &val }, token_bytes.clone(), None, Some(&tok), device, false)?;
    let outcome = trainer.run()?;
    drop(trainer);
    // The final checkpoint holds exactly the trained weights.
    let model = ferrolm_model::load_model(&run_dir, device)?.model;
    timings.push(("pretrain", s.done()));
    let val_result = outcome.val.clone().context("training ended without an evaluation")?;
    eprintln!(
        "held-out: {:.4} nats/token, {:.4} bits per byte (unigram baseline {unigram_bpb:.4})",
        val_result.loss, val_result.bits_per_byte
    );

    // 7. Samples.
    let s = Step::start("samples");
    let prompts = [
        ("code", "fn main() {\n"),
        ("code", "pub struct "),
        ("code", "impl<T> "),
        ("code", "#[derive(Debug"),
        ("prose", "This crate provides "),
        ("prose", "# Examples\n\n"),
        ("prose", "Returns the "),
    ];
    let mut samples = String::from("# Samples\n\nTemperature 0.8, top-k 50, top-p 0.95, seed 0, 120 new tokens.\n\n");
    for (i, (kind, p)) in prompts.iter().enumerate() {
        let text = complete(&model, &tok, p, 120, i as u64)?;
        eprintln!("--- {kind} prompt {p:?}\n{p}{text}\n");
        let _ = writeln!(samples, "## {kind}: `{}`\n\n```\n{p}{text}\n```\n", p.escape_debug());
    }
    ferrolm_common::write_atomic(out.join("samples.md"), &samples)?;
    timings.push(("samples", s.done()));

    // 8. Report.
    let _ = writeln!(report, "# ferrolm quickstart report\n");
    let _ = writeln!(report, "## Corpus\n");
    for l in &corpus_lines {
        let _ = writeln!(report, "- {l}");
    }
    let _ = writeln!(report, "- split by document hash: {} train documents ({:.1} MB), {} held out ({:.2} MB)\n", train.num_docs(), train_bytes as f64 / 1e6, val.num_docs(), val_bytes as f64 / 1e6);
    let _ = writeln!(report, "## Tokenizer\n\n- {} with {} tokens; {:.2} bytes per token on the training split; {} train tokens, {} held-out tokens\n", qs.tokenizer, tok.vocab_size(), bytes_per_token, train.len(), val.len());
    let _ = writeln!(report, "## Model and training\n");
    let _ = match cfg.model.transformer() {
        Some(m) => writeln!(report, "- {:?} block, {} layers, {} heads ({} key/value), width {}, context {}: {} parameters", m.block, m.n_layers, m.n_heads, m.n_kv_heads, m.d_model, m.max_seq_len, m.num_params()),
        None => writeln!(report, "- {}, context {}", cfg.model.describe(), cfg.model.max_seq_len()),
    };
    let _ = writeln!(report, "- {} steps of {} tokens ({:?}), {:.0} tokens/s, {:.0} s", outcome.steps, cfg.train.batch_size * cfg.seq_len(), outcome.stop, outcome.tokens_per_sec, outcome.elapsed_secs);
    let _ = writeln!(report, "\n## Result\n\n| model | held-out loss (nats/token) | bits per byte |\n|---|---|---|");
    let _ = writeln!(report, "| unigram baseline (train-split token frequencies) | – | {unigram_bpb:.4} |");
    let _ = writeln!(report, "| ferrolm quickstart model | {:.4} | {:.4} |\n", val_result.loss, val_result.bits_per_byte);
    let _ = writeln!(report, "![loss curve](loss.svg)\n\nSamples: [samples.md](samples.md). Metrics per step: `metrics.jsonl`. Config: `config.toml` (model and training), `quickstart.toml` (everything).\n");
    let _ = writeln!(report, "## Time\n\n| stage | seconds |\n|---|---|");
    for (name, t) in &timings {
        let _ = writeln!(report, "| {name} | {t:.1} |");
    }
    let _ = writeln!(report, "| total | {:.1} |", t_all.elapsed().as_secs_f64());
    ferrolm_common::write_atomic(out.join("report.md"), &report)?;
    let summary = QuickstartSummary {
        val_loss: val_result.loss,
        val_bits_per_byte: val_result.bits_per_byte,
        unigram_bits_per_byte: unigram_bpb,
        steps: outcome.steps,
        tokens_per_sec: outcome.tokens_per_sec,
        seconds: t_all.elapsed().as_secs_f64(),
    };
    // Through a JSON value, so the keys are ordered as every other summary.json.
    ferrolm_common::write_atomic(out.join("summary.json"), serde_json::to_vec_pretty(&serde_json::to_value(&summary)?)?)?;
    Ok(summary)
}

/// `n` sampled tokens after `prompt` (temperature 0.8, top-k 50, top-p 0.95), as text.
fn complete(model: &ferrolm_model::AnyModel, tok: &Tokenizer, prompt: &str, n: usize, seed: u64) -> Result<String> {
    let ids = tok.encode(prompt);
    // a fill-in-the-middle sentinel ends a left-to-right sample as end-of-text does (the
    // model was trained with FIM examples and may start one)
    let fim = [ferrolm_tokenizer::special::FIM_PREFIX, ferrolm_tokenizer::special::FIM_SUFFIX, ferrolm_tokenizer::special::FIM_MIDDLE];
    let cfg = GenerateConfig {
        max_tokens: n,
        stop_tokens: std::iter::once(tok.eot_id()).chain(fim.iter().filter_map(|s| tok.token_id(s))).collect(),
        sampling: SamplingConfig { temperature: 0.8, top_k: 50, top_p: 0.95, seed },
    };
    let eot = tok.eot_id();
    let mut stream = DecodeStream::continuation(tok);
    let mut text = String::new();
    generate_any(model, &ids, eot, &cfg, |t| {
        if !cfg.stop_tokens.contains(&t) {
            text.push_str(&stream.push(t));
        }
        true
    })?;
    text.push_str(&stream.finish());
    Ok(text)
}
