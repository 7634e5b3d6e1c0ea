//! The reward model: the decoder body of a pretrained (or SFT) run with a scalar head on the
//! final hidden state of the sequence's last token (the response's end marker), trained on
//! preference pairs with the Bradley-Terry loss; evaluated by held-out pairwise accuracy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use ferrolm_model::linear::Linear;
use ferrolm_model::lora::{self, LoraConfig};
use ferrolm_model::{Transformer, TransformerConfig};
use ferrolm_tokenizer::Message;
use ferrolm_train::data::step_seed;
use ferrolm_train::{EvalResult, TrainConfig, TrainOutcome, TrainTask, Trainer};
use serde::{Deserialize, Serialize};

use crate::encode::{EncodedPair, Formatter, Sequence};
use crate::logprob::{hidden, seq_batch, SeqBatch};
use crate::losses::bradley_terry_loss;
use crate::records::{read_preferences, split, OnError, ReadReport};
use crate::stage::{self, DataSettings};

pub const HEAD: &str = "reward_head";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardSettings {
    /// The run the body was initialised from.
    pub model_from: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardConfig {
    pub train: TrainConfig,
    pub data: DataSettings,
    pub reward: RewardSettings,
    /// `lora.rank > 0`: LoRA adapters on the frozen body; the scalar head trains fully
    /// (its weight only: its bias stays 0, as transformers' `score` has none).
    pub lora: LoraConfig,
}

impl stage::StageConfig for RewardConfig {
    fn data_mut(&mut self) -> &mut DataSettings { &mut self.data }
    fn set_start(&mut self, model: &Path) { self.reward.model_from = model.display().to_string(); }
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            train: TrainConfig {
                max_steps: 200,
                batch_size: 8,
                lr: 1e-4,
                min_lr: 1e-5,
                warmup_steps: 10,
                weight_decay: 0.0,
                eval_interval: 50,
                checkpoint_interval: 100,
                log_interval: 5,
                ..Default::default()
            },
            data: DataSettings::default(),
            reward: RewardSettings::default(),
            lora: LoraConfig::default(),
        }
    }
}

pub struct RewardModel {
    pub body: Transformer,
    head: Linear,
}

impl RewardModel {
    /// Build the body and a (d_model → 1) head named `reward_head` in `vb`.
    pub fn new(cfg: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        let body = Transformer::new(cfg, vb.clone())?;
        let head = Linear::load(cfg.d_model, 1, true, vb.pp(HEAD))?;
        Ok(Self { body, head })
    }

    /// The body of `start` held quantized as `kind` (QLoRA's base: its block weights
    /// quantized as they are read, so it is never whole in f32) and a new head at 0, both
    /// in the returned VarMap.
    pub fn quantized_start(start: &Path, kind: ferrolm_model::QuantKind, device: &Device) -> Result<(Self, VarMap)> {
        let (cfg, body, varmap) = stage::load_decoder_with(start, device, Some(kind))?;
        let head = Linear::load(cfg.d_model, 1, true, VarBuilder::from_varmap(&varmap, DType::F32, device).pp(HEAD))?;
        stage::zero_vars(&varmap, HEAD)?;
        Ok((Self { body, head }, varmap))
    }

    /// The head as PEFT's SEQ_CLS saves it (`modules_to_save = ["score"]`): its weight
    /// (1 × d_model); transformers' `score` has no bias, and a LoRA run keeps ferrolm's at 0.
    pub fn peft_head(&self) -> lora::PeftTask {
        let module = lora::PeftTask::seq_cls_module(self.body.config()).to_string();
        lora::PeftTask { seq_cls: Some(lora::SeqClsHead { module, tensors: vec![("weight".into(), self.head.weight().clone())] }), ..Default::default() }
    }

    /// Scalar reward of each row's full sequence (rows,).
    pub fn scores(&self, b: &SeqBatch, dropout_seed: Option<u64>) -> Result<Tensor> {
        let h = hidden(&self.body, b, dropout_seed)?;
        let last = h.index_select(&b.last_pos, 0)?;
        Ok(self.head.forward(&last)?.squeeze(1)?)
    }

    /// Scores of sequences as numbers, in batches of `batch`.
    pub fn score_sequences(&self, seqs: &[&Sequence], pad_id: u32, batch: usize) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(batch.max(1)) {
            let b = seq_batch(chunk, pad_id, self.body.device())?;
            out.extend(self.scores(&b, None)?.to_vec1::<f32>()?);
        }
        Ok(out)
    }
}

/// A trained reward model with the formatter it was trained with.
pub struct LoadedReward {
    pub model: RewardModel,
    pub fmt: Formatter,
    pub cfg: RewardConfig,
}

/// Load a reward run folder (its latest checkpoint); a LoRA run's adapters are folded into
/// the body's weights.
pub fn load(run_dir: &Path, device: &Device) -> Result<LoadedReward> {
    load_with(run_dir, device, true)
}

/// [`load`], with a LoRA run's adapters folded in (`merge`) or kept as adapters. A QLoRA
/// run (`lora.quant`) loads as it trained — its start's body weights quantized again, the
/// adapters kept on them — whatever `merge` says.
pub fn load_with(run_dir: &Path, device: &Device, merge: bool) -> Result<LoadedReward> {
    let model_cfg = stage::read_model(run_dir)?;
    let cfg: RewardConfig = stage::read_stage(run_dir)?;
    let merge = merge && cfg.lora.quant.is_none();
    let (mut model, varmap) = if let Some(kind) = cfg.lora.quant {
        let start = PathBuf::from(&cfg.reward.model_from);
        let (mut model, varmap) = RewardModel::quantized_start(&start, kind, device)
            .with_context(|| format!("{} trained on a quantized body (lora.quant): reading it from its start {}", run_dir.display(), start.display()))?;
        lora::prepare(&mut model.body, &varmap, &cfg.lora, 0)?;
        (model, varmap)
    } else {
        let varmap = VarMap::new();
        (RewardModel::new(&model_cfg, VarBuilder::from_varmap(&varmap, DType::F32, device))?, varmap)
    };
    if cfg.lora.enabled() && cfg.lora.quant.is_none() {
        lora::attach(&mut model.body, &varmap, &cfg.lora, 0)?;
    }
    let ckpt = ferrolm_train::checkpoint::latest(run_dir)?;
    ferrolm_train::checkpoint::load_weights(&varmap, &ckpt.join("model.safetensors"))
        .with_context(|| format!("{} is not a reward-model run", run_dir.display()))?;
    if cfg.lora.enabled() && merge {
        lora::merge(&mut model.body, &varmap)?;
    }
    let fmt = Formatter::from_run(run_dir, model_cfg.max_seq_len, cfg.data.max_response_tokens)?;
    Ok(LoadedReward { model, fmt, cfg })
}

impl LoadedReward {
    pub fn score(&self, prompt: &[Message], response: &str) -> Result<f32> {
        let s = self.fmt.sequence(prompt, response);
        Ok(self.model.score_sequences(&[&s], self.fmt.pad_id, 1)?[0])
    }
}

/// Pairwise figures of a reward model on encoded pairs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PairwiseEval {
    pub pairs: usize,
    /// Fraction of pairs scored chosen > rejected (ties count one half).
    pub pairwise_accuracy: f64,
    /// Mean Bradley-Terry loss.
    pub loss: f64,
    pub mean_margin: f64,
    pub mean_chosen: f64,
    pub mean_rejected: f64,
}

pub fn pairwise_eval(model: &RewardModel, pairs: &[EncodedPair], pad_id: u32, batch: usize) -> Result<PairwiseEval> {
    anyhow::ensure!(!pairs.is_empty(), "no pairs to evaluate");
    let (mut acc, mut loss, mut margin, mut sc, mut sr) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for chunk in pairs.chunks(batch.max(1)) {
        let seqs: Vec<&Sequence> = chunk.iter().map(|p| &p.chosen).chain(chunk.iter().map(|p| &p.rejected)).collect();
        let s = model.score_sequences(&seqs, pad_id, seqs.len())?;
        let (c, r) = s.split_at(chunk.len());
        for (&c, &r) in c.iter().zip(r) {
            let d = (c - r) as f64;
            acc += if d > 0.0 { 1.0 } else if d == 0.0 { 0.5 } else { 0.0 };
            loss += (1.0 + (-d).exp()).ln();
            margin += d;
            sc += c as f64;
            sr += r as f64;
        }
    }
    let n = pairs.len() as f64;
    Ok(PairwiseEval {
        pairs: pairs.len(),
        pairwise_accuracy: acc / n,
        loss: loss / n,
        mean_margin: margin / n,
        mean_chosen: sc / n,
        mean_rejected: sr / n,
    })
}

pub struct RewardTask {
    pub model: RewardModel,
    train: Vec<EncodedPair>,
    val: Vec<EncodedPair>,
    pad_id: u32,
    batch_size: usize,
    grad_accum: usize,
    seed: u64,
    /// Only the LoRA adapters and the head's weight train.
    lora: bool,
}

impl TrainTask for RewardTask {
    fn trainable(&self, name: &str) -> bool {
        !self.lora || lora::is_adapter(name) || name == format!("{HEAD}.weight")
    }

    fn micro_batch_loss(&self, step: usize, micro: usize) -> Result<(Tensor, usize)> {
        let idx = stage::batch_indices(self.train.len(), self.seed, step, micro, self.grad_accum, self.batch_size);
        let seqs: Vec<&Sequence> =
            idx.iter().map(|&i| &self.train[i].chosen).chain(idx.iter().map(|&i| &self.train[i].rejected)).collect();
        let tokens = seqs.iter().map(|s| s.ids.len()).sum();
        let b = seq_batch(&seqs, self.pad_id, self.model.body.device())?;
        let s = self.model.scores(&b, Some(step_seed(self.seed, step, micro, "dropout")))?;
        let n = idx.len();
        let loss = bradley_terry_loss(&s.narrow(0, 0, n)?, &s.narrow(0, n, n)?)?;
        Ok((loss, tokens))
    }

    fn evaluate(&self) -> Result<EvalResult> {
        let e = pairwise_eval(&self.model, &self.val, self.pad_id, self.batch_size)?;
        let extra = BTreeMap::from([
            ("pairwise_accuracy".to_string(), e.pairwise_accuracy),
            ("margin".to_string(), e.mean_margin),
            ("chosen_score".to_string(), e.mean_chosen),
            ("rejected_score".to_string(), e.mean_rejected),
        ]);
        Ok(EvalResult { loss: e.loss, bits_per_byte: f64::NAN, tokens: 0, bytes: 0, extra })
    }
}

/// Read, split and encode preference pairs; cap the held-out split at `max_eval`.
pub fn load_pairs(data: &DataSettings, fmt: &Formatter) -> Result<(Vec<EncodedPair>, Vec<EncodedPair>, ReadReport)> {
    let (pairs, report) = read_preferences(&data.paths(), data.on_error)?;
    let (train, mut val) = split(&pairs, |p| &p.prompt, data.val_fraction);
    if data.max_eval > 0 {
        val.truncate(data.max_eval);
    }
    let enc = |v: &[crate::records::PreferencePair]| v.iter().map(|p| fmt.pair(p)).collect::<Vec<_>>();
    Ok((enc(&train), enc(&val), report))
}

pub struct StageOptions {
    pub model: PathBuf,
    pub data: Vec<PathBuf>,
    pub out: PathBuf,
    pub config: Option<PathBuf>,
    pub overrides: Vec<String>,
    pub on_error: Option<OnError>,
    pub resume: bool,
    pub quiet: bool,
    /// Where the models live and train.
    pub device: Device,
}

fn report_data(report: &ReadReport, fmt: &Formatter, train: usize, val: usize) {
    let t = fmt.truncation();
    eprintln!(
        "{} pairs read ({} malformed, skipped), {train} for training, {val} held out; cut to the context: {} prompts, {} responses",
        report.kept, report.bad, t.prompts_cut, t.responses_cut
    );
    for e in &report.examples {
        eprintln!("  malformed: {e}");
    }
}

/// `ferrolm reward train`.
pub fn train(o: &StageOptions) -> Result<TrainOutcome> {
    let mut cfg: RewardConfig = stage::stage_config(o)?;
    if cfg.lora.quant.is_some() {
        // A QLoRA run's checkpoints hold no quantized body weights: loading the run reads
        // them from its start again, wherever it is loaded from.
        let abs = std::fs::canonicalize(&cfg.reward.model_from).with_context(|| format!("cannot resolve the start {}", cfg.reward.model_from))?;
        cfg.reward.model_from = abs.display().to_string();
    }
    let start = PathBuf::from(&cfg.reward.model_from);
    let model_cfg = stage::read_model(&start)?;
    let fmt = Formatter::from_run(&start, model_cfg.max_seq_len, cfg.data.max_response_tokens)?;
    let (train, val, report) = load_pairs(&cfg.data, &fmt)?;
    report_data(&report, &fmt, train.len(), val.len());
    anyhow::ensure!(!train.is_empty(), "no training pairs");
    anyhow::ensure!(!val.is_empty(), "no held-out pairs: raise data.val_fraction or add data");

    if cfg.lora.enabled() {
        // the adapters must be expressible in PEFT's names (checked before training)
        lora::peft_target_modules(&model_cfg, &cfg.lora)?;
    }
    let (mut model, varmap) = match cfg.lora.quant {
        // (the start also on resume: QLoRA checkpoints hold no quantized body weights)
        Some(kind) => RewardModel::quantized_start(&start, kind, &o.device)?,
        None => {
            let varmap = VarMap::new();
            let model = RewardModel::new(&model_cfg, VarBuilder::from_varmap(&varmap, DType::F32, &o.device))?;
            if !o.resume {
                let (origin, weights) = stage::start_weights(&start)?;
                stage::set_with_new_heads(&varmap, weights, &origin, &[HEAD])?;
                stage::zero_vars(&varmap, HEAD)?;
            }
            (model, varmap)
        }
    };
    stage::write_run_files(&o.out, &start, &model_cfg, &cfg.train, &cfg)?;
    if cfg.lora.enabled() {
        // after the base's weights are in (a resumed run's checkpoint then holds the adapters)
        let n = lora::prepare(&mut model.body, &varmap, &cfg.lora, cfg.train.seed)?;
        eprintln!("LoRA rank {} (alpha {}) on {:?}: {n} adapter parameters and the head's {} weights train; the body stays frozen", cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets, model_cfg.d_model);
    }
    let adapter = cfg.lora.enabled().then(|| (varmap.clone(), model.peft_head()));
    let task = RewardTask {
        model,
        train,
        val,
        pad_id: fmt.pad_id,
        batch_size: cfg.train.batch_size,
        grad_accum: cfg.train.grad_accum,
        seed: cfg.train.seed,
        lora: cfg.lora.enabled(),
    };
    let mut trainer = if o.resume {
        Trainer::resume_task(cfg.train.clone(), &o.out, varmap, Box::new(task))?
    } else {
        Trainer::from_task(cfg.train.clone(), &o.out, varmap, Box::new(task))?
    };
    trainer.quiet = o.quiet;
    trainer.title = "reward model (Bradley-Terry)".into();
    let outcome = trainer.run()?;
    if let Some((vars, head)) = adapter {
        // PEFT SEQ_CLS: the adapters and `score` (modules_to_save), for
        // AutoModelForSequenceClassification + PeftModel.from_pretrained on the base
        lora::write_peft_for(&o.out.join(ADAPTER_DIR), &model_cfg, &cfg.lora, &vars, &start.display().to_string(), &head)?;
    }
    Ok(outcome)
}

/// Where a LoRA stage writes its PEFT adapter folder inside the run.
pub const ADAPTER_DIR: &str = "adapter";

/// `ferrolm reward eval`: pairwise accuracy on every pair of `data`, or with `held_out`
/// only on the pairs the training run held out of the same files (its split rule and
/// `data.val_fraction`).
pub fn eval(run_dir: &Path, data: &[PathBuf], on_error: OnError, held_out: bool, device: &Device) -> Result<PairwiseEval> {
    let rm = load(run_dir, device)?;
    let (pairs, report) = read_preferences(data, on_error)?;
    let pairs = if held_out { split(&pairs, |p| &p.prompt, rm.cfg.data.val_fraction).1 } else { pairs };
    let enc: Vec<EncodedPair> = pairs.iter().map(|p| rm.fmt.pair(p)).collect();
    report_data(&report, &rm.fmt, 0, enc.len());
    pairwise_eval(&rm.model, &enc, rm.fmt.pad_id, 16)
}
