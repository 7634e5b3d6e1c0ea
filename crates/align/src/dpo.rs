//! Direct preference optimisation (Rafailov et al. 2023): the policy starts as the given
//! run; the reference is a frozen copy of it. Reference log-probabilities are computed once
//! per example (on first use) and cached. Evaluation logs the held-out DPO loss, preference
//! accuracy and the implicit reward margin β·[(log π − log π_ref)(y_w) − (log π − log π_ref)(y_l)].

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::Tensor;
use ferrolm_model::Transformer;
use ferrolm_train::data::step_seed;
use ferrolm_train::{EvalResult, TrainConfig, TrainOutcome, TrainTask, Trainer};
use serde::{Deserialize, Serialize};

use crate::encode::{EncodedPair, Formatter, Sequence};
use crate::logprob::{seq_batch, sequence_logprobs};
use crate::losses::{dpo_loss, DpoStats};
use crate::reward::{load_pairs, StageOptions};
use crate::stage::{self, DataSettings};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpoSettings {
    /// The starting policy, which is also the frozen reference.
    pub model_from: String,
    /// Strength of the implicit KL constraint: higher stays closer to the reference.
    pub beta: f64,
}

impl Default for DpoSettings {
    fn default() -> Self {
        Self { model_from: String::new(), beta: 0.1 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpoConfig {
    pub train: TrainConfig,
    pub data: DataSettings,
    pub dpo: DpoSettings,
    /// `lora.rank > 0`: train LoRA adapters on the frozen policy instead of every weight.
    pub lora: ferrolm_model::lora::LoraConfig,
}

impl stage::StageConfig for DpoConfig {
    fn data_mut(&mut self) -> &mut DataSettings { &mut self.data }
    fn set_start(&mut self, model: &Path) { self.dpo.model_from = model.display().to_string(); }
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            train: TrainConfig {
                max_steps: 200,
                batch_size: 8,
                lr: 5e-5,
                min_lr: 5e-6,
                warmup_steps: 10,
                weight_decay: 0.0,
                eval_interval: 50,
                checkpoint_interval: 100,
                log_interval: 5,
                ..Default::default()
            },
            data: DataSettings::default(),
            dpo: DpoSettings::default(),
            lora: Default::default(),
        }
    }
}

pub struct DpoTask {
    pub policy: Transformer,
    reference: Transformer,
    train: Vec<EncodedPair>,
    val: Vec<EncodedPair>,
    pad_id: u32,
    beta: f64,
    batch_size: usize,
    grad_accum: usize,
    seed: u64,
    /// (held out?, index) → reference (log π_ref(chosen), log π_ref(rejected)).
    ref_cache: RefCell<HashMap<(bool, usize), (f32, f32)>>,
    /// Only LoRA adapters train.
    pub lora: bool,
}

impl DpoTask {
    pub fn new(policy: Transformer, reference: Transformer, train: Vec<EncodedPair>, val: Vec<EncodedPair>, pad_id: u32, beta: f64, tc: &TrainConfig) -> Self {
        Self { policy, reference, train, val, pad_id, beta, batch_size: tc.batch_size, grad_accum: tc.grad_accum, seed: tc.seed, ref_cache: RefCell::new(HashMap::new()), lora: false }
    }

    /// Reference log-probabilities of the pairs `idx` of the train or held-out split.
    fn reference_logprobs(&self, held_out: bool, idx: &[usize]) -> Result<(Vec<f32>, Vec<f32>)> {
        let data = if held_out { &self.val } else { &self.train };
        let missing: Vec<usize> = {
            let cache = self.ref_cache.borrow();
            let mut m: Vec<usize> = idx.iter().copied().filter(|i| !cache.contains_key(&(held_out, *i))).collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        if !missing.is_empty() {
            let seqs: Vec<&Sequence> =
                missing.iter().map(|&i| &data[i].chosen).chain(missing.iter().map(|&i| &data[i].rejected)).collect();
            let b = seq_batch(&seqs, self.pad_id, self.reference.device())?;
            let lp: Vec<f32> = sequence_logprobs(&self.reference, &b, None)?.to_vec1()?;
            let mut cache = self.ref_cache.borrow_mut();
            for (k, &i) in missing.iter().enumerate() {
                cache.insert((held_out, i), (lp[k], lp[missing.len() + k]));
            }
        }
        let cache = self.ref_cache.borrow();
        Ok(idx.iter().map(|i| cache[&(held_out, *i)]).unzip())
    }

    /// DPO loss and statistics of pairs `idx` under the current policy.
    fn batch_loss(&self, held_out: bool, idx: &[usize], dropout_seed: Option<u64>) -> Result<(Tensor, DpoStats, usize)> {
        let data = if held_out { &self.val } else { &self.train };
        let (rc, rr) = self.reference_logprobs(held_out, idx)?;
        let seqs: Vec<&Sequence> = idx.iter().map(|&i| &data[i].chosen).chain(idx.iter().map(|&i| &data[i].rejected)).collect();
        let tokens = seqs.iter().map(|s| s.ids.len()).sum();
        let b = seq_batch(&seqs, self.pad_id, self.policy.device())?;
        let lp = sequence_logprobs(&self.policy, &b, dropout_seed)?;
        let n = idx.len();
        let dev = self.policy.device();
        let (loss, stats) = dpo_loss(
            &lp.narrow(0, 0, n)?,
            &lp.narrow(0, n, n)?,
            &Tensor::new(rc.as_slice(), dev)?,
            &Tensor::new(rr.as_slice(), dev)?,
            self.beta,
        )?;
        Ok((loss, stats, tokens))
    }
}

impl TrainTask for DpoTask {
    fn micro_batch_loss(&self, step: usize, micro: usize) -> Result<(Tensor, usize)> {
        let idx = stage::batch_indices(self.train.len(), self.seed, step, micro, self.grad_accum, self.batch_size);
        let (loss, _, tokens) = self.batch_loss(false, &idx, Some(step_seed(self.seed, step, micro, "dropout")))?;
        Ok((loss, tokens))
    }

    fn evaluate(&self) -> Result<EvalResult> {
        let (mut loss, mut s) = (0f64, DpoStats::default());
        let n = self.val.len();
        let all: Vec<usize> = (0..n).collect();
        for chunk in all.chunks(self.batch_size.max(1)) {
            let (l, st, _) = self.batch_loss(true, chunk, None)?;
            let w = chunk.len() as f64;
            loss += l.to_scalar::<f32>()? as f64 * w;
            s.accuracy += st.accuracy * w;
            s.margin += st.margin * w;
            s.chosen_reward += st.chosen_reward * w;
            s.rejected_reward += st.rejected_reward * w;
        }
        let n = n as f64;
        let extra = BTreeMap::from([
            ("preference_accuracy".to_string(), s.accuracy / n),
            ("reward_margin".to_string(), s.margin / n),
            ("chosen_reward".to_string(), s.chosen_reward / n),
            ("rejected_reward".to_string(), s.rejected_reward / n),
        ]);
        Ok(EvalResult { loss: loss / n, bits_per_byte: f64::NAN, tokens: 0, bytes: 0, extra })
    }

    fn trainable(&self, name: &str) -> bool {
        !self.lora || ferrolm_model::lora::is_adapter(name)
    }
}

/// `ferrolm dpo`.
pub fn train(o: &StageOptions) -> Result<TrainOutcome> {
    let cfg: DpoConfig = stage::stage_config(o)?;
    anyhow::ensure!(cfg.dpo.beta > 0.0, "dpo.beta must be positive, got {}", cfg.dpo.beta);
    let start = PathBuf::from(&cfg.dpo.model_from);
    ferrolm_model::registry::ensure_trainable_source(&start)?;
    let (model_cfg, mut policy, varmap) = stage::load_decoder_with(&start, &o.device, cfg.lora.base_quant())?;
    if cfg.lora.enabled() {
        let n = ferrolm_model::lora::prepare(&mut policy, &varmap, &cfg.lora, cfg.train.seed)?;
        eprintln!("LoRA rank {} (alpha {}) on {:?}: {n} adapter parameters train; the base stays frozen", cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets);
    }
    // With adapters, the reference is the policy with them off (the same weight tensors:
    // the base is frozen, quantized or not); without, a second copy of the start.
    let reference = if cfg.lora.enabled() { policy.without_lora() } else { stage::load_decoder(&start, &o.device)?.1 };
    let fmt = Formatter::from_run(&start, model_cfg.max_seq_len, cfg.data.max_response_tokens)?;
    let (train, val, report) = load_pairs(&cfg.data, &fmt)?;
    let t = fmt.truncation();
    eprintln!(
        "{} pairs read ({} malformed, skipped), {} for training, {} held out; cut to the context: {} prompts, {} responses",
        report.kept, report.bad, train.len(), val.len(), t.prompts_cut, t.responses_cut
    );
    for e in &report.examples {
        eprintln!("  malformed: {e}");
    }
    anyhow::ensure!(!train.is_empty(), "no training pairs");
    anyhow::ensure!(!val.is_empty(), "no held-out pairs: raise data.val_fraction or add data");
    stage::write_run_files(&o.out, &start, &model_cfg, &cfg.train, &cfg)?;
    if cfg.lora.enabled() {
        ferrolm_model::lora::write_run_config(&o.out, &cfg.lora, &start)?;
    }
    let mut task = DpoTask::new(policy, reference, train, val, fmt.pad_id, cfg.dpo.beta, &cfg.train);
    task.lora = cfg.lora.enabled();
    let adapter_vars = varmap.clone();
    let mut trainer = if o.resume {
        Trainer::resume_task(cfg.train.clone(), &o.out, varmap, Box::new(task))?
    } else {
        Trainer::from_task(cfg.train.clone(), &o.out, varmap, Box::new(task))?
    };
    trainer.quiet = o.quiet;
    trainer.title = format!("DPO (β = {})", cfg.dpo.beta);
    let outcome = trainer.run()?;
    if cfg.lora.enabled() {
        ferrolm_model::lora::write_peft(&o.out.join("adapter"), &model_cfg, &cfg.lora, &adapter_vars, &start.display().to_string())?;
    }
    Ok(outcome)
}
