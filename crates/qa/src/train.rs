//! `ferrolm qa train`: fine-tune a span head and the masked LM's body on SQuAD-format
//! questions with the shared training loop, tune the no-answer threshold on the held-out
//! questions, and write a reader run folder.
//!
//! The folder holds the body's `config.toml`, its tokenizer, `qa.toml` (base, reader
//! settings with the tuned threshold, stage config), checkpoints with body and `qa_head.*`
//! weights, metrics and `eval.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use ferrolm_finetune::sft::batch_rows;
use ferrolm_rag::squad::{load_questions, Question};
use ferrolm_train::config::RunConfig;
use ferrolm_train::data::step_seed;
use ferrolm_train::{EvalResult, TrainConfig, TrainOutcome, TrainTask, Trainer};
use serde::{Deserialize, Serialize};

use crate::data::{answer_all, prepare, score, Prepared, QaReport};
use crate::reader::{load_body, LoadedReader, ReaderConfig, ReaderRunInfo, SpanReader, HEAD};

/// `[qa]`: what is held out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QaSplitConfig {
    /// Share of paragraphs held out when no validation file is given (by a hash of the
    /// paragraph id, so the questions of one paragraph never straddle the split).
    pub val_fraction: f64,
}

impl Default for QaSplitConfig {
    fn default() -> Self {
        Self { val_fraction: 0.1 }
    }
}

/// The stage config: `[train]`, `[qa]`, `[reader]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct QaStageConfig {
    pub train: TrainConfig,
    pub qa: QaSplitConfig,
    pub reader: ReaderConfig,
}

impl QaStageConfig {
    pub fn from_value(v: &toml::Value) -> Result<Self> {
        let c: Self = ferrolm_common::config::typed(v)?;
        c.train.validate().map_err(|e| anyhow::anyhow!("invalid [train]: {e}"))?;
        ensure!((0.0..1.0).contains(&c.qa.val_fraction), "qa.val_fraction must be in [0, 1)");
        ensure!(c.reader.max_query_len >= 1 && c.reader.doc_stride >= 1 && c.reader.max_answer_tokens >= 1, "reader.max_query_len, doc_stride and max_answer_tokens must be ≥ 1");
        Ok(c)
    }
}

/// Split questions by a hash of their paragraph.
pub fn split_by_paragraph(qs: Vec<Question>, val_fraction: f64) -> (Vec<Question>, Vec<Question>) {
    qs.into_iter().partition(|q| {
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(q.paragraph.as_bytes(), 0x5a_0ad);
        (h as f64 / u64::MAX as f64) >= val_fraction
    })
}

/// Read SQuAD files; malformed questions are reported on stderr with their position.
pub fn read_questions(paths: &[PathBuf]) -> Result<Vec<Question>> {
    let mut out = Vec::new();
    for p in paths {
        let (qs, problems) = load_questions(p)?;
        for pr in &problems {
            eprintln!("{}: malformed question {pr}", p.display());
        }
        out.extend(qs);
    }
    Ok(out)
}

/// Training the span head and body.
pub struct QaTask {
    pub reader: SpanReader,
    train: Prepared,
    val: Prepared,
    cfg: ReaderConfig,
    pad: u32,
    batch_size: usize,
    grad_accum: usize,
    seed: u64,
}

impl QaTask {
    #[allow(clippy::too_many_arguments)]
    pub fn new(reader: SpanReader, train: Prepared, val: Prepared, cfg: ReaderConfig, pad: u32, tc: &TrainConfig) -> Result<Self> {
        ensure!(!train.windows.is_empty(), "no training windows (no questions with non-empty contexts)");
        Ok(Self { reader, train, val, cfg, pad, batch_size: tc.batch_size, grad_accum: tc.grad_accum, seed: tc.seed })
    }

    /// EM/F1 of the held-out questions under `threshold`.
    pub fn val_report(&self, threshold: f64) -> Result<QaReport> {
        let answers = answer_all(&self.reader, &self.val, self.pad, &self.cfg)?;
        Ok(score(&self.val.questions, &answers, threshold))
    }
}

impl TrainTask for QaTask {
    fn micro_batch_loss(&self, step: usize, micro: usize) -> Result<(Tensor, usize)> {
        let idx = batch_rows(self.train.windows.len(), self.seed, step, micro, self.grad_accum, self.batch_size);
        let batch: Vec<_> = idx.iter().map(|&i| &self.train.windows[i]).collect();
        let tokens = batch.iter().map(|w| w.ids.len()).sum();
        let loss = self.reader.loss(&batch, self.pad, Some(step_seed(self.seed, step, micro, "dropout")))?;
        Ok((loss, tokens))
    }

    fn evaluate(&self) -> Result<EvalResult> {
        let mut total = 0.0;
        let mut n = 0usize;
        for chunk in self.val.windows.chunks(32) {
            let refs: Vec<_> = chunk.iter().collect();
            total += self.reader.loss(&refs, self.pad, None)?.to_scalar::<f32>()? as f64 * chunk.len() as f64;
            n += chunk.len();
        }
        let r = self.val_report(self.cfg.null_threshold)?;
        let mut extra = BTreeMap::new();
        extra.insert("exact_match".to_string(), r.all.exact_match);
        extra.insert("f1".to_string(), r.all.f1);
        extra.insert("has_ans_f1".to_string(), r.has_ans.f1);
        extra.insert("best_f1".to_string(), r.best_f1);
        Ok(EvalResult { loss: if n > 0 { total / n as f64 } else { f64::NAN }, bits_per_byte: f64::NAN, tokens: n, bytes: 0, extra })
    }

    fn trainable(&self, name: &str) -> bool {
        // The MLM/NSP heads and the pooler are not on the span path: they get no gradient.
        name.starts_with(HEAD) || !(name.starts_with("mlm.") || name.starts_with("lm_head.") || name.starts_with("nsp.") || name.starts_with("pooler."))
    }
}

/// What `qa train` did.
#[derive(Debug, Clone, Serialize)]
pub struct QaTrainReport {
    pub train_questions: usize,
    pub train_windows: usize,
    pub val_questions: usize,
    pub unlocated_answers: usize,
    pub threshold: f64,
    pub val: QaReport,
    pub outcome: TrainOutcome,
}

/// Train a reader on the masked LM of `base` into `out`.
pub fn run_qa_train(base: &Path, out: &Path, data: &[PathBuf], val: &[PathBuf], mut cfg: QaStageConfig, quiet: bool, device: &Device) -> Result<QaTrainReport> {
    let all = read_questions(data)?;
    let (train_q, val_q) = if val.is_empty() { split_by_paragraph(all, cfg.qa.val_fraction) } else { (all, read_questions(val)?) };
    ensure!(!train_q.is_empty(), "no training questions");
    ensure!(!val_q.is_empty(), "no held-out questions: raise qa.val_fraction or give --val-data");
    let tok = ferrolm_finetune::prompt::load_tokenizer(base)?;
    let (body_cfg, body, vm) = load_body(base, device)?;
    let reader = SpanReader::new(body, &vm, cfg.train.seed)?;
    let o = cfg.reader.windows(body_cfg.max_seq_len);
    let train = prepare(&tok, train_q, &o, true)?;
    let val_p = prepare(&tok, val_q, &o, true)?;
    if !train.unlocated.is_empty() {
        eprintln!("{} answerable training questions left out: answer_start does not point at the answer text", train.unlocated.len());
    }
    eprintln!(
        "{} training questions in {} windows of ≤ {} tokens; {} held out",
        train.questions.len(), train.windows.len(), o.max_len, val_p.questions.len()
    );

    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let out_cfg = RunConfig::transformer(body_cfg, cfg.train.clone(), Default::default());
    ferrolm_common::write_atomic(out.join("config.toml"), out_cfg.to_toml())?;
    tok.save(&out.join("tokenizer.json"))?;
    let info = ReaderRunInfo { base: base.display().to_string(), reader: cfg.reader.clone(), stage: cfg.clone() };
    info.save(out)?;

    let pad = ferrolm_finetune::prompt::pad_id(&tok);
    let (train_questions, train_windows, unlocated) = (train.questions.len(), train.windows.len(), train.unlocated.len());
    let task = QaTask::new(reader, train, val_p, cfg.reader.clone(), pad, &cfg.train)?;
    let mut trainer = Trainer::from_task(cfg.train.clone(), out, vm, Box::new(task))?;
    trainer.quiet = quiet;
    trainer.title = "ferrolm qa train (span reader)".into();
    let outcome = trainer.run()?;
    drop(trainer);

    // Tune the no-answer threshold on the held-out questions with the saved weights.
    let loaded = LoadedReader::load(out, device)?;
    let val_q = if val.is_empty() { split_by_paragraph(read_questions(data)?, cfg.qa.val_fraction).1 } else { read_questions(val)? };
    let p = prepare(&loaded.tok, val_q, &o, false)?;
    let answers = answer_all(&loaded.reader, &p, pad, &cfg.reader)?;
    let tuned = score(&p.questions, &answers, 0.0).best_threshold;
    cfg.reader.null_threshold = tuned;
    let info = ReaderRunInfo { base: base.display().to_string(), reader: cfg.reader.clone(), stage: cfg.clone() };
    info.save(out)?;
    let val_report = score(&p.questions, &answers, tuned);
    ferrolm_common::write_atomic(out.join("eval.json"), serde_json::to_vec_pretty(&val_report)?)?;
    Ok(QaTrainReport { train_questions, train_windows, val_questions: p.questions.len(), unlocated_answers: unlocated, threshold: tuned, val: val_report, outcome })
}

/// `ferrolm qa eval`: the reader on every question of SQuAD files, under the run's
/// threshold (or `threshold`).
pub fn run_qa_eval(run_dir: &Path, data: &[PathBuf], threshold: Option<f64>, device: &Device) -> Result<QaReport> {
    let r = LoadedReader::load(run_dir, device)?;
    let qs = read_questions(data)?;
    ensure!(!qs.is_empty(), "no questions to evaluate");
    let o = r.info.reader.windows(r.model_max);
    let p = prepare(&r.tok, qs, &o, false)?;
    let answers = answer_all(&r.reader, &p, ferrolm_finetune::prompt::pad_id(&r.tok), &r.info.reader)?;
    Ok(score(&p.questions, &answers, threshold.unwrap_or(r.info.reader.null_threshold)))
}
