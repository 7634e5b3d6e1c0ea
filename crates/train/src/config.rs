//! The run config: `[model]` (the architecture) and `[train]` (the optimisation).
//! Written back as `config.toml` in every run folder exactly as resolved.

use ferrolm_kernels::MatmulPrecision;
use ferrolm_model::TransformerConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Linear warmup, then half-cosine decay to `min_lr`.
    Cosine,
    /// Linear warmup, then linear decay to `min_lr`.
    Linear,
    /// Linear warmup, then constant.
    Constant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub seed: u64,
    /// Upper bound on optimizer steps (every training command honours it).
    pub max_steps: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Tokens per sequence; 0 means the model's max_seq_len.
    pub seq_len: usize,
    /// Micro-batches whose gradients are summed before one optimizer step.
    pub grad_accum: usize,
    pub lr: f64,
    /// Floor of the decay.
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub schedule: Schedule,
    pub weight_decay: f64,
    /// Apply weight decay to embeddings too (nanoGPT does; the default follows common
    /// practice and exempts them, with norms and biases).
    pub decay_embeddings: bool,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Clip the global gradient norm to this value; 0 disables.
    pub grad_clip: f64,
    /// Evaluate every N steps (and at the end); 0 only at the end.
    pub eval_interval: usize,
    /// Batches of held-out windows per evaluation.
    pub eval_batches: usize,
    /// Checkpoint every N steps (and at the end); 0 only at the end.
    pub checkpoint_interval: usize,
    /// How many checkpoints to keep (oldest removed first).
    pub keep_checkpoints: usize,
    pub log_interval: usize,
    /// Stop after this many seconds of training (0 = no limit); the quickstart uses it.
    pub time_limit_secs: f64,
    /// "f32" (default) or "bf16": matrix products with operands rounded to bf16 and f32
    /// sums, on AMX tiles (Intel Sapphire Rapids and later); other CPUs stay at f32 with a
    /// warning. Everything else (weights, optimizer, norms, softmax) stays f32.
    pub matmul_precision: MatmulPrecision,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 1337,
            max_steps: 1000,
            batch_size: 16,
            seq_len: 0,
            grad_accum: 1,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 100,
            schedule: Schedule::Cosine,
            weight_decay: 0.1,
            decay_embeddings: false,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            eval_interval: 250,
            eval_batches: 20,
            checkpoint_interval: 500,
            keep_checkpoints: 2,
            log_interval: 10,
            time_limit_secs: 0.0,
            matmul_precision: MatmulPrecision::F32,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_size == 0 || self.grad_accum == 0 {
            return Err("train.batch_size and train.grad_accum must be positive".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("train.lr must be a positive number, got {}", self.lr));
        }
        if self.min_lr < 0.0 || self.min_lr > self.lr {
            return Err(format!("train.min_lr ({}) must be between 0 and train.lr ({})", self.min_lr, self.lr));
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return Err("train.beta1 and train.beta2 must be in [0, 1)".into());
        }
        if self.eval_batches == 0 {
            return Err("train.eval_batches must be positive".into());
        }
        Ok(())
    }
}

/// Where the token data comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Folder of token shards for training (written by `ferrolm tokenizer shards` or `ferrolm data build`).
    pub train: String,
    /// Folder of held-out token shards.
    pub val: String,
    /// tokenizer.json used to make the shards.
    pub tokenizer: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub model: TransformerConfig,
    pub train: TrainConfig,
    pub data: DataConfig,
}

impl RunConfig {
    pub fn from_value(v: &toml::Value) -> anyhow::Result<Self> {
        let cfg: RunConfig = ferrolm_common::config::typed(v)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.model.validate().map_err(|e| anyhow::anyhow!("invalid [model]: {e}"))?;
        self.train.validate().map_err(|e| anyhow::anyhow!("invalid [train]: {e}"))?;
        if self.seq_len() > self.model.max_seq_len {
            anyhow::bail!(
                "train.seq_len ({}) exceeds model.max_seq_len ({})",
                self.train.seq_len,
                self.model.max_seq_len
            );
        }
        Ok(())
    }

    pub fn seq_len(&self) -> usize {
        if self.train.seq_len == 0 {
            self.model.max_seq_len
        } else {
            self.train.seq_len
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}
