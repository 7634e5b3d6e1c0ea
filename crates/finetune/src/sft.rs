//! Supervised fine-tuning (instruction tuning) of a pretrained decoder on the shared
//! training loop: conversations → template ids with a loss flag on assistant tokens →
//! packed (or padded) rows → `SftTask` (a `TrainTask`) → `Trainer`.
//!
//! The run folder holds what `ferrolm generate`/`chat` need (config.toml as a plain run
//! config, tokenizer.json, chat_template.json, checkpoints) plus `sft.toml` (the resolved
//! stage config), `data_report.json` (records read, malformed, truncated), `sft_report.json`
//! (held-out loss and label accuracy before and after) and `samples.md` / `samples.jsonl`
//! (answers to held-out prompts before and after tuning).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use ferrolm_infer::{generate, GenerateConfig, SamplingConfig};
use ferrolm_model::attention::MaskSpec;
use ferrolm_model::lora::{self, LoraConfig};
use ferrolm_model::{ModelSpec, Transformer};
use ferrolm_tokenizer::{ChatTemplate, Message, Role, Tokenizer};
use ferrolm_train::config::RunConfig;
use ferrolm_train::data::step_seed;
use ferrolm_train::trainer::describe_eval;
use ferrolm_train::{EvalResult, TrainConfig, TrainOutcome, TrainTask, Trainer};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::pack::{make_batch, pack_rows, single_rows, Example, Row};
use crate::prompt::{self, PromptStyle};
use crate::records::{self, Conversation, InstructionFormat, LabelledText, Located, OnBad, ReadReport};

/// `[sft]`: the stage's own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftConfig {
    /// Pack several short examples into one row (segment-masked attention); false pads
    /// every example to the longest in its micro-batch.
    pub packing: bool,
    /// Share of the records held out for evaluation when no validation files are given.
    pub val_fraction: f64,
    /// At most this many held-out examples are evaluated (loss and label accuracy).
    pub max_val_examples: usize,
    pub on_bad_record: OnBad,
    /// System message for every conversation that has none ("" = none).
    pub system: String,
    /// Number of training examples (single-turn) placed as few-shot context before every
    /// task, in training, evaluation and generation. They are removed from the training set.
    pub few_shot: usize,
    /// Labelled data: the user turn, with `{text}` replaced by the text and `{labels}` by
    /// the label names joined with " or ".
    pub template: String,
    /// Allowed labels of labelled data (the assistant's answer); a record with another
    /// label is malformed. Held-out accuracy is measured by scoring each label.
    pub labels: Vec<String>,
    /// Field names of labelled data.
    pub text_field: String,
    pub label_field: String,
    /// Held-out prompts answered before and after tuning (samples.md).
    pub samples: usize,
    pub sample_max_tokens: usize,
    /// 0 = greedy.
    pub sample_temperature: f32,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            packing: true,
            val_fraction: 0.1,
            max_val_examples: 200,
            on_bad_record: OnBad::Skip,
            system: String::new(),
            few_shot: 0,
            template: "Is this review positive or negative?\n{text}".into(),
            labels: Vec::new(),
            text_field: "text".into(),
            label_field: "label".into(),
            samples: 5,
            sample_max_tokens: 64,
            sample_temperature: 0.0,
        }
    }
}

/// The whole stage config: `[train]` (the shared optimisation settings) and `[sft]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SftStageConfig {
    pub train: TrainConfig,
    pub sft: SftConfig,
    /// `lora.rank > 0`: train LoRA adapters on a frozen base instead of every weight.
    pub lora: LoraConfig,
}

impl SftStageConfig {
    pub fn from_value(v: &toml::Value) -> Result<Self> {
        let c: Self = ferrolm_common::config::typed(v)?;
        c.train.validate().map_err(|e| anyhow::anyhow!("invalid [train]: {e}"))?;
        ensure!((0.0..1.0).contains(&c.sft.val_fraction), "sft.val_fraction must be in [0, 1)");
        ensure!(c.sft.max_val_examples > 0, "sft.max_val_examples must be positive");
        Ok(c)
    }
}

/// Where the data comes from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SftSources {
    /// Instruction records (Alpaca, chat, prompt/completion).
    pub data: Vec<PathBuf>,
    /// Labelled texts turned into instructions with `sft.template`.
    pub labelled: Vec<PathBuf>,
    /// Held-out instruction records (instead of splitting `data`).
    pub val_data: Vec<PathBuf>,
    /// Held-out labelled texts (instead of splitting `labelled`).
    pub val_labelled: Vec<PathBuf>,
}

/// A conversation to train on or evaluate, with its label when it came from labelled data.
#[derive(Debug, Clone, PartialEq)]
pub struct SftRecord {
    pub conversation: Conversation,
    pub label: Option<String>,
    pub origin: records::Origin,
}

/// The user turn a labelled text becomes.
pub fn labelled_prompt(template: &str, text: &str, labels: &[String]) -> String {
    template.replace("{text}", text).replace("{labels}", &labels.join(" or "))
}

/// Read instruction files and labelled files into records; malformed ones per `on_bad`.
pub fn read_sft_records(instr: &[PathBuf], labelled: &[PathBuf], cfg: &SftConfig) -> Result<(Vec<SftRecord>, ReadReport)> {
    let mut out = Vec::new();
    let mut report = ReadReport::default();
    if !instr.is_empty() {
        let (recs, rep) = records::read_records(instr, cfg.on_bad_record, records::parse_instruction)?;
        report.merge(rep);
        out.extend(recs.into_iter().map(|r| SftRecord { conversation: r.value, label: None, origin: r.origin }));
    }
    if !labelled.is_empty() {
        ensure!(!cfg.labels.is_empty(), "labelled data needs the allowed labels (--labels a,b or sft.labels)");
        ensure!(cfg.template.contains("{text}"), "the labelled-data template must contain {{text}}: {:?}", cfg.template);
        let parse = |v: &serde_json::Value| -> Result<LabelledText, String> {
            let l = records::parse_labelled(v, &cfg.text_field, &cfg.label_field)?;
            if !cfg.labels.contains(&l.label) {
                return Err(format!("label \"{}\" is not one of {:?}", l.label, cfg.labels));
            }
            Ok(l)
        };
        let (recs, rep) = records::read_records(labelled, cfg.on_bad_record, parse)?;
        report.merge(rep);
        out.extend(recs.into_iter().map(|r: Located<LabelledText>| SftRecord {
            conversation: Conversation {
                messages: vec![Message::user(labelled_prompt(&cfg.template, &r.value.text, &cfg.labels)), Message::assistant(r.value.label.as_str())],
                format: InstructionFormat::PromptCompletion,
            },
            label: Some(r.value.label),
            origin: r.origin,
        }));
    }
    Ok((out, report))
}

/// Deterministic held-out choice by a hash of the conversation (stable across runs and
/// file orders; duplicates land on the same side).
fn is_held_out(c: &Conversation, fraction: f64) -> bool {
    let key = serde_json::to_string(&c.messages).unwrap_or_default();
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), 0x5f7);
    (h as f64 / u64::MAX as f64) < fraction
}

/// Counts of the tokenisation pass.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TokenReport {
    pub train_examples: usize,
    pub val_examples: usize,
    pub few_shot_examples: usize,
    /// Examples cut to the context length (they keep their beginning).
    pub truncated: usize,
    /// Examples dropped because no answer token was left after truncation.
    pub dropped_too_long: usize,
    pub rows: usize,
    pub train_loss_tokens: usize,
    pub train_positions: usize,
    /// Share of row positions holding a real token (packing efficiency).
    pub fill: f64,
}

/// Tokenise one conversation; None when no answer token fits in `seq_len + 1` ids.
fn tokenize(tok: &Tokenizer, tpl: &ChatTemplate, style: &PromptStyle, c: &Conversation, seq_len: usize, truncated: &mut usize) -> Option<Example> {
    let (msgs, ctx) = style.apply(&c.messages);
    let (mut ids, mut loss) = prompt::encode_for_training(tok, tpl, &msgs, ctx);
    if ids.len() > seq_len + 1 {
        *truncated += 1;
        ids.truncate(seq_len + 1);
        loss.truncate(seq_len + 1);
    }
    let ex = Example { ids, loss };
    (ex.loss_tokens() > 0).then_some(ex)
}

/// A held-out example: its ids for the loss, and for labelled data the prompt and label.
#[derive(Debug, Clone)]
pub struct ValExample {
    pub example: Example,
    /// History up to the last answer (with the prompt style applied).
    pub prompt: Vec<Message>,
    pub reference: String,
    pub label: Option<String>,
}

/// Fine-tuning a causal decoder on assistant tokens.
pub struct SftTask {
    pub model: Transformer,
    pub rows: Vec<Row>,
    pub packed: bool,
    pub val: Vec<ValExample>,
    pub labels: Vec<String>,
    pub tok: Tokenizer,
    pub tpl: ChatTemplate,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub seed: u64,
    pub pad: u32,
    pub seq_len: usize,
    /// Only LoRA adapters train.
    pub lora: bool,
}

/// Which rows form micro-batch (step, micro): consecutive slices of a sequence of epochs,
/// each a permutation of all rows seeded by (seed, epoch). A function of (step, micro)
/// only, so a resumed run sees the same batches; every row is used once per epoch.
pub fn batch_rows(n_rows: usize, seed: u64, step: usize, micro: usize, grad_accum: usize, batch: usize) -> Vec<usize> {
    let first = (step * grad_accum + micro) * batch;
    let mut out = Vec::with_capacity(batch);
    let mut cached: Option<(usize, Vec<usize>)> = None;
    for k in first..first + batch {
        let epoch = k / n_rows;
        if cached.as_ref().map(|c| c.0) != Some(epoch) {
            let mut perm: Vec<usize> = (0..n_rows).collect();
            perm.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(step_seed(seed, epoch, 0, "sft-epoch")));
            cached = Some((epoch, perm));
        }
        out.push(cached.as_ref().expect("set above").1[k % n_rows]);
    }
    out
}

/// Loss-carrying logits of a batch: hidden states for every position, then the LM head
/// only on the scored positions.
pub fn scored_logits(model: &Transformer, inputs: &Tensor, mask: &MaskSpec, scored: &Tensor, dropout_seed: Option<u64>) -> Result<Tensor> {
    let h = model.hidden(inputs, mask, None, dropout_seed)?;
    let d = h.dim(2)?;
    Ok(model.logits(&h.reshape(((), d))?.index_select(scored, 0)?)?)
}

impl SftTask {
    /// Mean loss on assistant tokens of held-out examples (one per row, padded).
    pub fn val_loss(&self) -> Result<(f64, usize)> {
        let (mut sum, mut n) = (0f64, 0usize);
        let rows = single_rows(&self.val.iter().map(|v| v.example.clone()).collect::<Vec<_>>());
        for chunk in rows.chunks(self.batch_size.max(1)) {
            let refs: Vec<&Row> = chunk.iter().collect();
            let b = make_batch(&refs, false, self.pad, self.model.device())?;
            if b.n_scored == 0 {
                continue;
            }
            let logits = scored_logits(&self.model, &b.inputs, &b.mask, &b.scored, None)?;
            let l = ferrolm_kernels::cross_entropy(&logits, &b.targets)?.to_scalar::<f32>()? as f64;
            sum += l * b.n_scored as f64;
            n += b.n_scored;
        }
        Ok((sum / n.max(1) as f64, n))
    }

    /// Held-out accuracy on labelled examples by scoring every label as the answer and
    /// taking the most likely (the answer format is then never an issue).
    pub fn label_accuracy(&self) -> Result<Option<(f64, usize)>> {
        let labelled: Vec<&ValExample> = self.val.iter().filter(|v| v.label.is_some()).collect();
        if labelled.is_empty() || self.labels.is_empty() {
            return Ok(None);
        }
        let predictions = predict_labels(&self.model, &self.tok, &self.tpl, &labelled.iter().map(|v| v.prompt.clone()).collect::<Vec<_>>(), &self.labels, self.seq_len + 1)?;
        let correct = labelled.iter().zip(&predictions).filter(|(v, &p)| v.label.as_deref() == Some(self.labels[p].as_str())).count();
        Ok(Some((correct as f64 / labelled.len() as f64, labelled.len())))
    }
}

/// For each prompt, the index of the label whose answer tokens are most likely.
pub fn predict_labels(model: &Transformer, tok: &Tokenizer, tpl: &ChatTemplate, prompts: &[Vec<Message>], labels: &[String], max_len: usize) -> Result<Vec<usize>> {
    let answers: Vec<Vec<u32>> = labels.iter().map(|l| prompt::response_ids(tok, tpl, l)).collect();
    let pad = prompt::pad_id(tok);
    // the whole sequence (the last answer token included) goes through the model
    let max_len = max_len.min(model.config().max_seq_len);
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(8) {
        let mut seqs = Vec::new();
        for p in chunk {
            let ids = prompt::prompt_ids(tok, tpl, p);
            for a in &answers {
                let (p2, a2) = prompt::fit_pair(&ids, a, max_len).context("a label's answer does not fit the context")?;
                seqs.push(crate::logprob::Sequence::new(&p2, &a2));
            }
        }
        let batch = crate::logprob::seq_batch(&seqs.iter().collect::<Vec<_>>(), pad, model.device())?;
        let sums: Vec<f32> = crate::logprob::sequence_logprobs(model, &batch, None)?.to_vec1()?;
        for row in sums.chunks(labels.len()) {
            out.push(row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0));
        }
    }
    Ok(out)
}

impl TrainTask for SftTask {
    fn micro_batch_loss(&self, step: usize, micro: usize) -> Result<(Tensor, usize)> {
        let idx = batch_rows(self.rows.len(), self.seed, step, micro, self.grad_accum, self.batch_size);
        let rows: Vec<&Row> = idx.iter().map(|&i| &self.rows[i]).collect();
        let b = make_batch(&rows, self.packed, self.pad, self.model.device())?;
        ensure!(b.n_scored > 0, "micro-batch {micro} of step {step} has no answer tokens");
        let dropout = Some(step_seed(self.seed, step, micro, "dropout"));
        let logits = scored_logits(&self.model, &b.inputs, &b.mask, &b.scored, dropout)?;
        let loss = ferrolm_kernels::cross_entropy(&logits, &b.targets)?;
        Ok((loss, b.n_tokens))
    }

    fn evaluate(&self) -> Result<EvalResult> {
        let (loss, tokens) = self.val_loss()?;
        let mut extra = BTreeMap::new();
        if let Some((acc, _)) = self.label_accuracy()? {
            extra.insert("label_accuracy".to_string(), acc);
        }
        Ok(EvalResult { loss, bits_per_byte: f64::NAN, tokens, bytes: 0, extra })
    }

    fn trainable(&self, name: &str) -> bool {
        !self.lora || lora::is_adapter(name)
    }
}

/// Everything `run_sft` needs.
pub struct SftRun<'a> {
    pub base: &'a Path,
    pub out: &'a Path,
    pub sources: SftSources,
    pub cfg: SftStageConfig,
    pub quiet: bool,
    /// Where the model lives and trains.
    pub device: &'a Device,
}

/// What `run_sft` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SftReport {
    pub base: String,
    pub val_loss_before: f64,
    pub val_loss_after: f64,
    pub val_tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_accuracy_before: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_accuracy_after: Option<f64>,
    pub data: ReadReport,
    pub tokens: TokenReport,
    pub outcome: TrainOutcome,
}

/// One generated sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub prompt: String,
    pub reference: String,
    pub before: String,
    pub after: String,
}

/// Answer a conversation with the model (greedy at temperature 0).
pub fn answer(model: &Transformer, tok: &Tokenizer, tpl: &ChatTemplate, history: &[Message], max_tokens: usize, sampling: SamplingConfig) -> Result<String> {
    let mut ids = prompt::prompt_ids(tok, tpl, history);
    let ctx = model.config().max_seq_len;
    if ids.len() + max_tokens > ctx {
        let keep = ctx.saturating_sub(max_tokens).max(1);
        ids = ids[ids.len().saturating_sub(keep)..].to_vec();
    }
    let cfg = GenerateConfig { max_tokens, stop_tokens: prompt::stop_tokens(tok, tpl), sampling };
    let out = generate(model, &ids, &cfg, |_| true)?;
    Ok(prompt::answer_text(tok, tpl, &out))
}

/// Load a run folder's decoder (config.toml + latest checkpoint) into a fresh VarMap.
pub fn load_decoder(run_dir: &Path, device: &Device) -> Result<(ModelSpec, Transformer, candle_nn::VarMap)> {
    load_decoder_with(run_dir, device, None)
}

/// [`load_decoder`]; with `quant`, the block stack's weights quantized as they are read
/// (QLoRA's base: `registry::load_model_quantized`), so the model is never whole in f32.
pub fn load_decoder_with(run_dir: &Path, device: &Device, quant: Option<ferrolm_model::QuantKind>) -> Result<(ModelSpec, Transformer, candle_nn::VarMap)> {
    ferrolm_model::registry::ensure_trainable_source(run_dir)?;
    let loaded = ferrolm_model::registry::load_base(run_dir, device, quant).with_context(|| format!("loading the model of {}", run_dir.display()))?;
    let model = loaded.model.into_decoder("instruction tuning")?;
    Ok((loaded.spec, model, loaded.varmap))
}

/// Instruction-tune the decoder in `run.base` into `run.out`.
pub fn run_sft(run: SftRun) -> Result<SftReport> {
    let SftRun { base, out, sources, cfg, quiet, device } = run;
    let sc = &cfg.sft;
    ensure!(!sources.data.is_empty() || !sources.labelled.is_empty(), "no training data: give --data FILE… and/or --from-labelled FILE");
    // the base's weights, loaded into the variables that train
    ferrolm_model::registry::ensure_trainable_source(base)?;
    let (base_spec, mut model, varmap) = load_decoder_with(base, device, cfg.lora.base_quant())?;
    if cfg.lora.enabled() {
        let total: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
        let n = lora::prepare(&mut model, &varmap, &cfg.lora, cfg.train.seed)?;
        eprintln!(
            "LoRA rank {} (alpha {}) on {:?}: {n} adapter parameters train, {:.2}% of the base's {total}",
            cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets, 100.0 * n as f64 / total as f64
        );
    }
    let max_seq_len = base_spec.max_seq_len();
    let tok = prompt::load_tokenizer(base)?;
    let tpl = prompt::load_template(base)?;
    if let Err(e) = tpl.check(&tok) {
        tracing::warn!("{e:#}: the chat markers will be spelled out as ordinary text");
    }
    let seq_len = if cfg.train.seq_len == 0 { max_seq_len } else { cfg.train.seq_len };
    ensure!(seq_len <= max_seq_len, "train.seq_len {seq_len} exceeds the model's max_seq_len {max_seq_len}");

    // ---- records, split, few-shot
    let (records, mut report) = read_sft_records(&sources.data, &sources.labelled, sc)?;
    let explicit_val = !sources.val_data.is_empty() || !sources.val_labelled.is_empty();
    let (mut train, mut val): (Vec<SftRecord>, Vec<SftRecord>) = if explicit_val {
        let (v, rep) = read_sft_records(&sources.val_data, &sources.val_labelled, sc)?;
        report.merge(rep);
        (records, v)
    } else {
        records.into_iter().partition(|r| !is_held_out(&r.conversation, sc.val_fraction))
    };
    eprintln!("{}", report.summary());
    ensure!(!train.is_empty(), "no training records left (see the malformed-record report above)");
    ensure!(!val.is_empty(), "no held-out records: raise sft.val_fraction or give --val-data");
    // A seeded shuffle so the few-shot examples and the evaluated subset are a fair draw.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.train.seed);
    train.shuffle(&mut rng);
    val.shuffle(&mut rng);
    let mut style = PromptStyle { system: sc.system.clone(), few_shot: vec![] };
    if sc.few_shot > 0 {
        let mut keep = Vec::with_capacity(train.len());
        for r in train.drain(..) {
            let m = &r.conversation.messages;
            if style.few_shot.len() < sc.few_shot && m.len() == 2 && m[0].role == Role::User {
                style.few_shot.push((m[0].content.clone(), m[1].content.clone()));
            } else {
                keep.push(r);
            }
        }
        train = keep;
        ensure!(style.few_shot.len() == sc.few_shot, "sft.few_shot = {} but only {} single-turn training records", sc.few_shot, style.few_shot.len());
    }
    val.truncate(sc.max_val_examples);

    // ---- tokens
    let mut tr = TokenReport { few_shot_examples: style.few_shot.len(), ..Default::default() };
    let mut train_ex = Vec::with_capacity(train.len());
    for r in &train {
        match tokenize(&tok, &tpl, &style, &r.conversation, seq_len, &mut tr.truncated) {
            Some(e) => train_ex.push(e),
            None => {
                tr.dropped_too_long += 1;
                tracing::warn!("{}: no answer token fits in {seq_len} tokens; dropped", r.origin);
            }
        }
    }
    let mut val_ex = Vec::with_capacity(val.len());
    for r in &val {
        match tokenize(&tok, &tpl, &style, &r.conversation, seq_len, &mut tr.truncated) {
            Some(example) => {
                let (hist, reference) = r.conversation.split_last_answer();
                let (prompt_msgs, _) = style.apply(hist);
                val_ex.push(ValExample { example, prompt: prompt_msgs, reference: reference.to_string(), label: r.label.clone() });
            }
            None => tr.dropped_too_long += 1,
        }
    }
    ensure!(!train_ex.is_empty() && !val_ex.is_empty(), "no example fits the context of {seq_len} tokens");
    let rows = if sc.packing { pack_rows(&train_ex, seq_len) } else { single_rows(&train_ex) };
    tr.train_examples = train_ex.len();
    tr.val_examples = val_ex.len();
    tr.rows = rows.len();
    tr.train_loss_tokens = rows.iter().map(|r| r.loss_tokens()).sum();
    tr.train_positions = rows.iter().map(|r| r.len()).sum();
    tr.fill = tr.train_positions as f64 / (rows.len() * if sc.packing { seq_len } else { rows.iter().map(|r| r.len()).max().unwrap_or(1) }) as f64;
    eprintln!(
        "{} training examples in {} rows ({:.0}% filled), {} answer tokens; {} held out; {} truncated, {} dropped as too long",
        tr.train_examples, tr.rows, 100.0 * tr.fill, tr.train_loss_tokens, tr.val_examples, tr.truncated, tr.dropped_too_long
    );

    // ---- model and run folder
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut run_cfg = RunConfig { model: base_spec, train: cfg.train.clone(), ..Default::default() };
    run_cfg.train.seq_len = seq_len;
    run_cfg.validate()?;
    ferrolm_common::write_atomic(out.join("config.toml"), run_cfg.to_toml())?;
    let mut stage = toml::Table::new();
    stage.insert("base".into(), toml::Value::String(base.display().to_string()));
    stage.insert("sources".into(), toml::Value::try_from(&sources)?);
    let resolved = toml::to_string_pretty(&cfg)?;
    ferrolm_common::write_atomic(out.join("sft.toml"), format!("{}\n{resolved}", toml::to_string_pretty(&stage)?))?;
    tok.save(&out.join("tokenizer.json"))?;
    tpl.save_next_to(&out.join("tokenizer.json"))?;
    ferrolm_common::write_atomic(out.join("data_report.json"), serde_json::to_vec_pretty(&report)?)?;
    if cfg.lora.enabled() {
        // Read back by `load_model`, which folds the adapters into the base weights.
        lora::write_run_config(out, &cfg.lora, base)?;
    }

    let sampling = SamplingConfig { temperature: sc.sample_temperature, seed: cfg.train.seed, ..Default::default() };
    let sample_set: Vec<&ValExample> = val_ex.iter().take(sc.samples).collect();
    let before: Vec<String> = sample_set.iter().map(|v| answer(&model, &tok, &tpl, &v.prompt, sc.sample_max_tokens, sampling.clone())).collect::<Result<_>>()?;
    let task = SftTask {
        model: model.clone(),
        rows,
        packed: sc.packing,
        val: val_ex.clone(),
        labels: sc.labels.clone(),
        tok: tok.clone(),
        tpl: tpl.clone(),
        batch_size: cfg.train.batch_size,
        grad_accum: cfg.train.grad_accum,
        seed: cfg.train.seed,
        pad: prompt::pad_id(&tok),
        seq_len,
        lora: cfg.lora.enabled(),
    };
    let ev0 = task.evaluate()?;
    eprintln!("before tuning: {}", describe_eval(&ev0));
    let adapter_vars = varmap.clone();
    let mut trainer = Trainer::from_task(cfg.train.clone(), out, varmap, Box::new(task))?;
    trainer.quiet = quiet;
    trainer.title = "ferrolm sft".into();
    let outcome = trainer.run()?;
    let ev1 = outcome.val.clone().context("the run ended without an evaluation")?;
    eprintln!("after tuning: {}", describe_eval(&ev1));

    // `model` shares its variables with the trained ones.
    let after: Vec<String> = sample_set.iter().map(|v| answer(&model, &tok, &tpl, &v.prompt, sc.sample_max_tokens, sampling.clone())).collect::<Result<_>>()?;
    let samples: Vec<Sample> = sample_set
        .iter()
        .zip(before.into_iter().zip(after))
        .map(|(v, (b, a))| Sample { prompt: v.prompt.last().map(|m| m.content.clone()).unwrap_or_default(), reference: v.reference.clone(), before: b, after: a })
        .collect();
    write_samples(out, &samples)?;
    if cfg.lora.enabled() {
        // PEFT's adapter files, for loading onto the base with `PeftModel.from_pretrained`.
        let spec = run_cfg.model.require_transformer("LoRA").map_err(anyhow::Error::msg)?;
        lora::write_peft(&out.join("adapter"), spec, &cfg.lora, &adapter_vars, &base.display().to_string())?;
    }
    let rep = SftReport {
        base: base.display().to_string(),
        val_loss_before: ev0.loss,
        val_loss_after: ev1.loss,
        val_tokens: ev0.tokens,
        label_accuracy_before: ev0.extra.get("label_accuracy").copied(),
        label_accuracy_after: ev1.extra.get("label_accuracy").copied(),
        data: report,
        tokens: tr,
        outcome,
    };
    ferrolm_common::write_atomic(out.join("sft_report.json"), serde_json::to_vec_pretty(&rep)?)?;
    Ok(rep)
}

fn write_samples(out: &Path, samples: &[Sample]) -> Result<()> {
    let mut md = String::from("# Answers to held-out prompts, before and after instruction tuning\n");
    let mut jl = String::new();
    for (i, s) in samples.iter().enumerate() {
        md.push_str(&format!(
            "\n## {}\n\n**prompt**\n\n```\n{}\n```\n\n**reference**\n\n```\n{}\n```\n\n**before**\n\n```\n{}\n```\n\n**after**\n\n```\n{}\n```\n",
            i + 1, s.prompt, s.reference, s.before, s.after
        ));
        jl.push_str(&serde_json::to_string(s)?);
        jl.push('\n');
    }
    ferrolm_common::write_atomic(out.join("samples.md"), md)?;
    ferrolm_common::write_atomic(out.join("samples.jsonl"), jl)?;
    Ok(())
}
