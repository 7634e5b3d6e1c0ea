//! RLHF with PPO, as in Ziegler et al. 2019 / InstructGPT / TRL's PPOTrainer:
//!
//! each iteration
//! 1. samples `rollout_batch` training prompts (seeded by the iteration) and a response to
//!    each from the current policy (KV-cached generation, full-distribution sampling, each
//!    response seeded by (seed, iteration, prompt));
//! 2. scores them without gradients: the policy's token log-probabilities and values (a value
//!    head on the policy's hidden states), the frozen reference's log-probabilities, and the
//!    reward model's score of the whole sequence;
//! 3. builds per-token rewards −β·(log π_old − log π_ref) with the score added on the last
//!    token, and advantages by GAE(γ, λ), whitened over the batch;
//! 4. runs `ppo_epochs` passes over the rollouts in shuffled minibatches, minimising the
//!    clipped surrogate plus `vf_coef` times the clipped value loss (minus `ent_coef` times the
//!    entropy), with AdamW, the schedule and gradient clipping of `[train]`;
//! 5. updates the KL coefficient (fixed, or adaptive towards `kl_target`), logs reward, KL,
//!    entropy, clip fractions, losses to `metrics.jsonl` and redraws `ppo.svg`.
//!
//! It runs on the shared training loop (`ferrolm_train::Trainer`, one step per iteration
//! through `TrainTask::custom_step`), so Ctrl-C, `train.time_limit_secs`, checkpoints and
//! exact resume are those of every stage. `train.max_steps` counts iterations. A checkpoint
//! (policy weights in `model.safetensors` so the folder is an ordinary run for
//! `generate`/`chat`; AdamW moments, the value head and the KL coefficient in
//! `optimizer.safetensors`) is written atomically after every `train.checkpoint_interval`
//! iterations and at the end; `--resume` continues from the last one. Since every random draw of an iteration is seeded by (seed, iteration), the resumed
//! run repeats exactly what the uninterrupted run would have done.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use ferrolm_infer::{generate, GenerateConfig, SamplingConfig};
use ferrolm_model::linear::Linear;
use ferrolm_model::lora::{self, LoraConfig};
use ferrolm_model::Transformer;
use ferrolm_tokenizer::Message;
use ferrolm_train::data::step_seed;
use ferrolm_train::{EvalResult, StepReport, TrainConfig, TrainTask, Trainer};
use serde::{Deserialize, Serialize};

use crate::encode::{Formatter, Sequence};
use crate::logprob::{entropy, hidden, response_logits, seq_batch, split_by_row, token_logprobs, SeqBatch};
use crate::losses::{gae, ppo_policy_loss, ppo_value_loss, token_rewards, whiten, KlController};
use crate::records::{read_prompts, split, PromptRecord};
use crate::reward::{LoadedReward, StageOptions};
use crate::stage::{self, DataSettings};

pub const VALUE_HEAD: &str = "value_head";
const EXTRA_PREFIX: &str = "ppo/";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PpoSettings {
    /// The SFT policy the run starts from (also the frozen reference).
    pub model_from: String,
    /// The reward-model run.
    pub reward_from: String,
    /// Prompts (and sampled responses) per iteration.
    pub rollout_batch: usize,
    /// Responses per gradient step.
    pub minibatch: usize,
    /// Passes over each rollout batch.
    pub ppo_epochs: usize,
    /// ε of the clipped surrogate.
    pub clip: f64,
    /// Clip range of the value update around the rollout's values.
    pub value_clip: f64,
    pub vf_coef: f64,
    /// Entropy bonus (0 = none; entropy is logged either way).
    pub ent_coef: f64,
    pub gamma: f64,
    pub lambda: f64,
    /// Initial KL-penalty coefficient β.
    pub kl_coef: f64,
    /// Target KL (nats per response) of the adaptive controller; 0 keeps β fixed.
    pub kl_target: f64,
    pub kl_horizon: f64,
    /// Sampling temperature of rollouts; log-probabilities use the same temperature.
    pub temperature: f32,
    pub whiten_advantages: bool,
    /// Added to the score of a response that hit the length limit without its end marker
    /// (e.g. −1; 0 = no penalty).
    pub missing_end_penalty: f64,
    /// Evaluate on held-out prompts every N iterations (and at the end); 0 = only at the end.
    pub eval_interval: usize,
}

impl Default for PpoSettings {
    fn default() -> Self {
        Self {
            model_from: String::new(),
            reward_from: String::new(),
            rollout_batch: 16,
            minibatch: 4,
            ppo_epochs: 4,
            clip: 0.2,
            value_clip: 0.2,
            vf_coef: 0.1,
            ent_coef: 0.0,
            gamma: 1.0,
            lambda: 0.95,
            kl_coef: 0.05,
            kl_target: 6.0,
            kl_horizon: 10_000.0,
            temperature: 1.0,
            whiten_advantages: true,
            missing_end_penalty: 0.0,
            eval_interval: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PpoConfig {
    /// `max_steps` = PPO iterations; `lr`, schedule, warmup, `grad_clip`, AdamW settings,
    /// `seed`, `checkpoint_interval`, `keep_checkpoints` as in training. `batch_size`,
    /// `grad_accum`, `eval_batches` are not used (see `[ppo]`).
    pub train: TrainConfig,
    pub data: DataSettings,
    pub ppo: PpoSettings,
    /// `lora.rank > 0`: the policy trains LoRA adapters on its frozen weights, and the
    /// reference is the same model with the adapters switched off (no second copy); the
    /// value head trains fully.
    pub lora: LoraConfig,
}

impl stage::StageConfig for PpoConfig {
    fn data_mut(&mut self) -> &mut DataSettings { &mut self.data }
    fn set_start(&mut self, model: &Path) { self.ppo.model_from = model.display().to_string(); }
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            train: TrainConfig {
                max_steps: 20,
                lr: 2e-5,
                min_lr: 2e-5,
                warmup_steps: 0,
                schedule: ferrolm_train::config::Schedule::Constant,
                weight_decay: 0.0,
                checkpoint_interval: 5,
                log_interval: 1,
                ..Default::default()
            },
            data: DataSettings { max_eval: 32, ..Default::default() },
            ppo: PpoSettings::default(),
            lora: LoraConfig::default(),
        }
    }
}

/// The policy with its value head (sharing the body, as TRL's value-head models do).
pub struct Policy {
    pub lm: Transformer,
    value_head: Linear,
    temperature: f64,
}

/// Per-token outputs of the policy on a batch: log-probabilities, values, entropies (n_tokens,).
pub struct PolicyOut {
    pub logp: Tensor,
    pub values: Tensor,
    pub entropy: Tensor,
}

impl Policy {
    pub fn forward(&self, b: &SeqBatch) -> Result<PolicyOut> {
        let h = hidden(&self.lm, b, None)?;
        let logits = response_logits(&self.lm, &h, b)?;
        let logits = if self.temperature != 1.0 { (logits / self.temperature)? } else { logits };
        let values = self.value_head.forward(&h.index_select(&b.pred_pos, 0)?)?.squeeze(1)?;
        Ok(PolicyOut { logp: token_logprobs(&logits, &b.targets)?, values, entropy: entropy(&logits)? })
    }
}

/// Token log-probabilities of `model` at `temperature`, one Vec per row.
pub fn logprobs_at(model: &Transformer, b: &SeqBatch, temperature: f64) -> Result<Vec<Vec<f32>>> {
    let h = hidden(model, b, None)?;
    let logits = response_logits(model, &h, b)?;
    let logits = if temperature != 1.0 { (logits / temperature)? } else { logits };
    Ok(split_by_row(b, &token_logprobs(&logits, &b.targets)?.to_vec1::<f32>()?))
}

/// One sampled response and everything PPO computes about it before the update.
#[derive(Debug, Clone)]
pub struct Rollout {
    pub seq: Sequence,
    pub old_logp: Vec<f32>,
    pub ref_logp: Vec<f32>,
    pub values: Vec<f32>,
    pub score: f32,
    pub advantages: Vec<f32>,
    pub returns: Vec<f32>,
    pub ended: bool,
}

/// Sample one response to `prompt_ids` from `model` (KV cache), stopping at the end marker.
pub fn sample_response(model: &Transformer, prompt_ids: &[u32], fmt: &Formatter, temperature: f32, seed: u64) -> Result<Sequence> {
    let gen = GenerateConfig {
        max_tokens: fmt.max_response,
        stop_tokens: fmt.stop_ids.clone(),
        sampling: SamplingConfig { temperature, top_k: 0, top_p: 1.0, seed },
    };
    let resp = generate(model, prompt_ids, &gen, |_| true)?;
    let mut ids = prompt_ids.to_vec();
    ids.extend(resp);
    Ok(Sequence { ids, prompt_len: prompt_ids.len() })
}

/// Summary of one iteration (also what goes into metrics.jsonl).
#[derive(Debug, Clone, Default, Serialize)]
pub struct IterStats {
    pub reward: f64,
    pub reward_std: f64,
    pub kl: f64,
    pub kl_coef: f64,
    pub entropy: f64,
    pub clipfrac: f64,
    pub value_clipfrac: f64,
    pub policy_loss: f64,
    pub value_loss: f64,
    pub approx_kl: f64,
    pub response_len: f64,
    pub ended_fraction: f64,
    pub grad_norm: f64,
    pub loss: f64,
}

/// PPO as a task of the shared training loop: one step is one iteration (rollouts, then
/// minibatch updates through the loop's optimizer), the value head and the KL coefficient
/// are saved with the optimizer state, the evaluation is the held-out reward and KL.
struct PpoTask {
    cfg: PpoConfig,
    policy: Policy,
    value_vars: VarMap,
    reference: Transformer,
    reward: LoadedReward,
    fmt: Formatter,
    train_prompts: Vec<PromptRecord>,
    val_prompts: Vec<PromptRecord>,
    kl: KlController,
    /// Only the policy's LoRA adapters (and the value head) train.
    lora: bool,
}

/// A PPO run on the shared [`Trainer`]: Ctrl-C, the time limit, checkpoints and exact
/// resume behave as in every other stage.
pub struct PpoTrainer {
    trainer: Trainer<'static>,
    out: PathBuf,
    /// LoRA: what the PEFT adapter folder is written from after the run.
    adapter: Option<(ferrolm_model::TransformerConfig, LoraConfig, VarMap, String)>,
    pub quiet: bool,
    /// Stop after this iteration (tests of resume).
    pub stop_at: Option<usize>,
}

/// The tokenizers of the policy and the reward model must be the same file's content: the
/// reward model scores the policy's token ids directly.
fn same_tokenizer(a: &Path, b: &Path) -> Result<()> {
    let ra = std::fs::read(a.join("tokenizer.json")).with_context(|| format!("reading {}/tokenizer.json", a.display()))?;
    let rb = std::fs::read(b.join("tokenizer.json")).with_context(|| format!("reading {}/tokenizer.json", b.display()))?;
    if ra != rb {
        bail!("the policy ({}) and the reward model ({}) use different tokenizers", a.display(), b.display());
    }
    Ok(())
}

impl PpoTask {
    /// Sample and score the rollouts of iteration `it`.
    pub fn rollouts(&self, it: usize) -> Result<Vec<Rollout>> {
        let p = &self.cfg.ppo;
        let seed = self.cfg.train.seed;
        let idx = stage::batch_indices(self.train_prompts.len(), seed, it, 0, 1, p.rollout_batch);
        let mut seqs = Vec::with_capacity(idx.len());
        for (k, &i) in idx.iter().enumerate() {
            let prompt = self.fmt.generation_prompt(&self.train_prompts[i].prompt);
            seqs.push(sample_response(&self.policy.lm, &prompt, &self.fmt, p.temperature, step_seed(seed, it, k, "rollout"))?);
        }
        let refs: Vec<&Sequence> = seqs.iter().collect();
        let mut out = Vec::with_capacity(seqs.len());
        for chunk in refs.chunks(p.minibatch.max(1) * 2) {
            let b = seq_batch(chunk, self.fmt.pad_id, self.policy.lm.device())?;
            let po = self.policy.forward(&b)?;
            let old = split_by_row(&b, &po.logp.to_vec1::<f32>()?);
            let values = split_by_row(&b, &po.values.to_vec1::<f32>()?);
            let reflp = logprobs_at(&self.reference, &b, self.policy.temperature)?;
            let scores = self.reward.model.score_sequences(chunk, self.fmt.pad_id, chunk.len())?;
            for (r, s) in chunk.iter().enumerate() {
                let ended = self.fmt.ended(s);
                let score = scores[r] + if ended { 0.0 } else { p.missing_end_penalty as f32 };
                let rewards = token_rewards(&old[r], &reflp[r], self.kl.coef, score);
                let (adv, ret) = gae(&rewards, &values[r], p.gamma as f32, p.lambda as f32);
                out.push(Rollout {
                    seq: (*s).clone(),
                    old_logp: old[r].clone(),
                    ref_logp: reflp[r].clone(),
                    values: values[r].clone(),
                    score,
                    advantages: adv,
                    returns: ret,
                    ended,
                });
            }
        }
        if p.whiten_advantages {
            let mut all: Vec<f32> = out.iter().flat_map(|r| r.advantages.iter().copied()).collect();
            whiten(&mut all);
            let mut it = all.into_iter();
            for r in out.iter_mut() {
                r.advantages.iter_mut().for_each(|a| *a = it.next().expect("same count"));
            }
        }
        Ok(out)
    }

    /// Rollouts, then `ppo_epochs` of minibatch updates through the trainer's `update`;
    /// returns the iteration's figures and the tokens trained on.
    fn iteration(&mut self, it: usize, update: &mut dyn FnMut(&Tensor) -> Result<f64>) -> Result<(IterStats, usize)> {
        let rolls = self.rollouts(it)?;
        let p = self.cfg.ppo.clone();
        let tc = &self.cfg.train;
        let n = rolls.len() as f64;
        let mut st = IterStats {
            reward: rolls.iter().map(|r| r.score as f64).sum::<f64>() / n,
            kl: rolls.iter().map(|r| r.old_logp.iter().zip(&r.ref_logp).map(|(a, b)| (a - b) as f64).sum::<f64>()).sum::<f64>() / n,
            kl_coef: self.kl.coef,
            response_len: rolls.iter().map(|r| r.seq.response_len() as f64).sum::<f64>() / n,
            ended_fraction: rolls.iter().filter(|r| r.ended).count() as f64 / n,
            ..Default::default()
        };
        st.reward_std = (rolls.iter().map(|r| (r.score as f64 - st.reward).powi(2)).sum::<f64>() / n).sqrt();
        let dev = self.policy.lm.device().clone();
        let (mut updates, mut tokens) = (0usize, 0usize);
        for epoch in 0..p.ppo_epochs {
            use rand::seq::SliceRandom;
            use rand::SeedableRng;
            let mut order: Vec<usize> = (0..rolls.len()).collect();
            order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(step_seed(tc.seed, it, epoch, "minibatch")));
            for mb in order.chunks(p.minibatch) {
                let seqs: Vec<&Sequence> = mb.iter().map(|&i| &rolls[i].seq).collect();
                let b = seq_batch(&seqs, self.fmt.pad_id, &dev)?;
                let cat = |f: &dyn Fn(&Rollout) -> &Vec<f32>| -> Result<Tensor> {
                    let v: Vec<f32> = mb.iter().flat_map(|&i| f(&rolls[i]).iter().copied()).collect();
                    Ok(Tensor::from_vec(v, b.n_tokens, &dev)?)
                };
                let old_logp = cat(&|r| &r.old_logp)?;
                let adv = cat(&|r| &r.advantages)?;
                let ret = cat(&|r| &r.returns)?;
                let old_v = cat(&|r| &r.values)?;
                let po = self.policy.forward(&b)?;
                let (pg, clipfrac) = ppo_policy_loss(&po.logp, &old_logp, &adv, p.clip)?;
                let (vf, vclip) = ppo_value_loss(&po.values, &old_v, &ret, p.value_clip)?;
                let ent = po.entropy.mean_all()?;
                let mut loss = (&pg + (&vf * p.vf_coef)?)?;
                if p.ent_coef > 0.0 {
                    loss = (loss - (&ent * p.ent_coef)?)?;
                }
                let lv = loss.to_scalar::<f32>()? as f64;
                let norm = update(&loss).with_context(|| format!("PPO iteration {it} (if the loss diverged: lower train.lr or check the reward model)"))?;
                let d = (&po.logp.detach() - &old_logp)?;
                let approx_kl = ((&d * &d)?.mean_all()? * 0.5)?.to_scalar::<f32>()? as f64;
                st.policy_loss += pg.to_scalar::<f32>()? as f64;
                st.value_loss += vf.to_scalar::<f32>()? as f64;
                st.entropy += ent.to_scalar::<f32>()? as f64;
                st.clipfrac += clipfrac;
                st.value_clipfrac += vclip;
                st.approx_kl += approx_kl;
                st.grad_norm += norm;
                st.loss += lv;
                updates += 1;
                tokens += b.n_tokens;
            }
        }
        let u = updates.max(1) as f64;
        for x in [&mut st.policy_loss, &mut st.value_loss, &mut st.entropy, &mut st.clipfrac, &mut st.value_clipfrac, &mut st.approx_kl, &mut st.grad_norm, &mut st.loss] {
            *x /= u;
        }
        self.kl.update(st.kl, rolls.len());
        Ok((st, tokens))
    }

    /// Held-out figures: mean reward-model score of the policy's sampled responses and the
    /// KL to the reference (Σ over response tokens of log π − log π_ref), on fixed seeds.
    fn held_out(&self) -> Result<BTreeMap<String, f64>> {
        if self.val_prompts.is_empty() {
            return Ok(BTreeMap::new());
        }
        let seed = self.cfg.train.seed;
        let mut seqs = Vec::new();
        for (k, pr) in self.val_prompts.iter().enumerate() {
            let prompt = self.fmt.generation_prompt(&pr.prompt);
            seqs.push(sample_response(&self.policy.lm, &prompt, &self.fmt, self.cfg.ppo.temperature, step_seed(seed, usize::MAX, k, "eval"))?);
        }
        let refs: Vec<&Sequence> = seqs.iter().collect();
        let (mut score, mut kl) = (0f64, 0f64);
        for chunk in refs.chunks(16) {
            let b = seq_batch(chunk, self.fmt.pad_id, self.policy.lm.device())?;
            let pl = logprobs_at(&self.policy.lm, &b, self.policy.temperature)?;
            let rl = logprobs_at(&self.reference, &b, self.policy.temperature)?;
            kl += pl.iter().zip(&rl).map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y) as f64).sum::<f64>()).sum::<f64>();
            score += self.reward.model.score_sequences(chunk, self.fmt.pad_id, chunk.len())?.iter().map(|&s| s as f64).sum::<f64>();
        }
        let n = seqs.len() as f64;
        Ok(BTreeMap::from([("reward".to_string(), score / n), ("kl".to_string(), kl / n)]))
    }

}

impl TrainTask for PpoTask {
    fn trainable(&self, name: &str) -> bool {
        !self.lora || lora::is_adapter(name)
    }

    fn micro_batch_loss(&self, _step: usize, _micro: usize) -> Result<(Tensor, usize)> {
        bail!("a PPO step is an iteration of rollouts and minibatch updates (custom_step), not micro-batches")
    }

    fn evaluate(&self) -> Result<EvalResult> {
        // no loss is defined on held-out prompts: the figures are the reward and the KL
        Ok(EvalResult { loss: f64::NAN, bits_per_byte: f64::NAN, tokens: self.val_prompts.len(), bytes: 0, extra: self.held_out()? })
    }

    fn extra_vars(&self) -> Vec<(String, Var)> {
        self.value_vars.data().lock().expect("varmap lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    fn extra_state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (name, var) in self.value_vars.data().lock().expect("varmap lock").iter() {
            out.insert(format!("{EXTRA_PREFIX}{name}"), var.as_tensor().clone());
        }
        out.insert(format!("{EXTRA_PREFIX}kl_coef"), Tensor::new(&[self.kl.coef], self.policy.lm.device())?);
        Ok(out)
    }

    fn load_extra_state(&mut self, saved: &HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in self.value_vars.data().lock().expect("varmap lock").iter() {
            let t = saved.get(&format!("{EXTRA_PREFIX}{name}")).context("the checkpoint lacks the value head")?;
            var.set(&t.reshape(var.shape())?.to_device(var.device())?)?;
        }
        let coef = saved.get(&format!("{EXTRA_PREFIX}kl_coef")).context("the checkpoint lacks the KL coefficient")?;
        self.kl.coef = coef.to_vec1::<f64>()?[0];
        Ok(())
    }

    fn custom_step(&mut self, step: usize, update: &mut dyn FnMut(&Tensor) -> Result<f64>) -> Option<Result<StepReport>> {
        Some(self.iteration(step, update).map(|(st, tokens)| StepReport {
            loss: st.loss,
            grad_norm: st.grad_norm,
            tokens,
            figures: [
                ("reward", st.reward),
                ("reward_std", st.reward_std),
                ("kl", st.kl),
                ("kl_coef", st.kl_coef),
                ("entropy", st.entropy),
                ("clipfrac", st.clipfrac),
                ("value_clipfrac", st.value_clipfrac),
                ("policy_loss", st.policy_loss),
                ("value_loss", st.value_loss),
                ("approx_kl", st.approx_kl),
                ("response_len", st.response_len),
                ("ended_fraction", st.ended_fraction),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        }))
    }
}

impl PpoTrainer {
    pub fn new(o: &StageOptions, reward_dir: Option<&Path>) -> Result<Self> {
        let mut cfg: PpoConfig = stage::stage_config(o)?;
        if !o.resume {
            cfg.ppo.reward_from = reward_dir.context("--reward REWARD_RUN is required")?.display().to_string();
        }
        let p = &cfg.ppo;
        anyhow::ensure!(p.rollout_batch >= 1 && p.minibatch >= 1 && p.ppo_epochs >= 1, "ppo.rollout_batch, minibatch and ppo_epochs must be positive");
        anyhow::ensure!(p.clip > 0.0 && p.value_clip > 0.0, "ppo.clip and ppo.value_clip must be positive");
        anyhow::ensure!(p.temperature > 0.0, "ppo.temperature must be positive (rollouts sample from the policy)");
        cfg.train.validate().map_err(|e| anyhow::anyhow!("invalid [train]: {e}"))?;
        let start = PathBuf::from(&cfg.ppo.model_from);
        let reward_dir = PathBuf::from(&cfg.ppo.reward_from);
        same_tokenizer(&start, &reward_dir)?;
        let model_cfg = stage::read_model(&start)?;
        let fmt = Formatter::from_run(&start, model_cfg.max_seq_len, cfg.data.max_response_tokens)?;
        let reward = crate::reward::load(&reward_dir, &o.device)?;
        anyhow::ensure!(
            reward.fmt.max_len >= fmt.max_len,
            "the reward model's context ({}) is shorter than the policy's ({})",
            reward.fmt.max_len,
            fmt.max_len
        );

        let (prompts, report) = read_prompts(&cfg.data.paths(), cfg.data.on_error)?;
        let (train_prompts, mut val_prompts) = split(&prompts, |p| &p.prompt, cfg.data.val_fraction);
        if cfg.data.max_eval > 0 {
            val_prompts.truncate(cfg.data.max_eval);
        }
        eprintln!(
            "{} prompts read ({} malformed, skipped), {} for rollouts, {} held out",
            report.kept,
            report.bad,
            train_prompts.len(),
            val_prompts.len()
        );
        for e in &report.examples {
            eprintln!("  malformed: {e}");
        }
        anyhow::ensure!(!train_prompts.is_empty(), "no training prompts");

        let dev = &o.device;
        let (mut lm, policy_vars) = match cfg.lora.quant {
            // QLoRA: the start's block weights quantized as they are read, so the policy is
            // never whole in f32; its checkpoints hold no quantized weights, so on resume too
            Some(kind) => {
                let (_, lm, vars) = stage::load_decoder_with(&start, dev, Some(kind))?;
                (lm, vars)
            }
            None => {
                let vars = VarMap::new();
                let lm = Transformer::new(&model_cfg, VarBuilder::from_varmap(&vars, DType::F32, dev))?;
                if !o.resume {
                    let (origin, weights) = stage::start_weights(&start)?;
                    stage::set_with_new_heads(&vars, weights, &origin, &[])?;
                }
                (lm, vars)
            }
        };
        let value_vars = VarMap::new();
        let value_head = Linear::load(model_cfg.d_model, 1, true, VarBuilder::from_varmap(&value_vars, DType::F32, dev).pp(VALUE_HEAD))?;
        stage::zero_vars(&value_vars, VALUE_HEAD)?;

        let kl = KlController {
            coef: cfg.ppo.kl_coef,
            target: (cfg.ppo.kl_target > 0.0).then_some(cfg.ppo.kl_target),
            horizon: cfg.ppo.kl_horizon,
        };
        let reference = if cfg.lora.enabled() {
            lora::peft_target_modules(&model_cfg, &cfg.lora)?;
            // after the start's weights are in; a resumed run's checkpoint then sets base
            // and adapters in place
            let n = lora::prepare(&mut lm, &policy_vars, &cfg.lora, cfg.train.seed)?;
            eprintln!("LoRA rank {} (alpha {}) on {:?}: {n} adapter parameters train; the reference is the policy with its adapters off", cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets);
            // the same weight tensors, adapters off: the policy's base is frozen, so this
            // is the starting model throughout
            lm.without_lora()
        } else {
            stage::load_decoder(&start, dev)?.1
        };
        stage::write_run_files(&o.out, &start, &model_cfg, &cfg.train, &cfg)?;
        if cfg.lora.enabled() {
            // read back by load_model (generate, chat, compare), which folds the adapters in
            lora::write_run_config(&o.out, &cfg.lora, &start)?;
        }
        let adapter = cfg.lora.enabled().then(|| (model_cfg.clone(), cfg.lora.clone(), policy_vars.clone(), start.display().to_string()));
        let lora_on = cfg.lora.enabled();
        let temperature = cfg.ppo.temperature as f64;
        // one PPO iteration is one step of the shared loop; its evaluations follow [ppo]
        let mut tc = cfg.train.clone();
        tc.eval_interval = cfg.ppo.eval_interval;
        let task = PpoTask { policy: Policy { lm, value_head, temperature }, value_vars, reference, reward, fmt, train_prompts, val_prompts, kl, cfg, lora: lora_on };
        let mut trainer = if o.resume {
            let t = Trainer::resume_task(tc, &o.out, policy_vars, Box::new(task))?;
            eprintln!("resuming {} after iteration {}", o.out.display(), t.step());
            t
        } else {
            Trainer::from_task(tc, &o.out, policy_vars, Box::new(task))?
        };
        trainer.title = "RLHF with PPO: loss".into();
        Ok(Self { trainer, out: o.out.clone(), adapter, quiet: o.quiet, stop_at: None })
    }

    /// Run iterations until `train.max_steps`, the time limit, Ctrl-C or `stop_at`; then
    /// the checkpoint, the held-out figures, `metrics.jsonl`, `loss.svg` and `ppo.svg`.
    pub fn run(&mut self) -> Result<PpoOutcome> {
        self.trainer.quiet = self.quiet;
        self.trainer.stop_at = self.stop_at;
        let outcome = self.trainer.run()?;
        if let Some((cfg, l, vars, base)) = &self.adapter {
            lora::write_peft(&self.out.join(crate::reward::ADAPTER_DIR), cfg, l, vars, base)?;
        }
        let records = ferrolm_train::metrics::read(&self.out.join("metrics.jsonl"))?;
        crate::plot::ppo_curves(&records, &self.out.join("ppo.svg"))?;
        let last = records.iter().rev().find(|r| r.loss.is_some()).map(|r| r.extra.clone()).unwrap_or_default();
        Ok(PpoOutcome {
            iterations: outcome.steps,
            last,
            val: outcome.val.map(|v| v.extra).unwrap_or_default(),
            checkpoint: outcome.checkpoint,
            elapsed_secs: outcome.elapsed_secs,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PpoOutcome {
    pub iterations: usize,
    /// The last iteration's figures (reward, KL, entropy, clip fraction, losses, …).
    pub last: BTreeMap<String, f64>,
    /// Held-out `reward` and `kl` at the end.
    pub val: BTreeMap<String, f64>,
    pub checkpoint: PathBuf,
    pub elapsed_secs: f64,
}

/// `ferrolm rlhf`.
pub fn train(o: &StageOptions, reward_dir: Option<&Path>) -> Result<PpoOutcome> {
    let mut t = PpoTrainer::new(o, reward_dir)?;
    t.run()
}

/// A prompt as messages (for tests and embedders).
pub fn user_prompt(text: &str) -> Vec<Message> {
    vec![Message::user(text)]
}
