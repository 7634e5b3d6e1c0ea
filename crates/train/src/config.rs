//! The run config: `[model]` (the architecture, any family), `[train]` (the optimisation),
//! `[data]`, and the objective's and pair data's sections.
//! Written back as `config.toml` in every run folder exactly as resolved.

use anyhow::{bail, Context, Result};
use ferrolm_kernels::MatmulPrecision;
use ferrolm_model::{ModelKind, ModelSpec, TransformerConfig};
use serde::{Deserialize, Serialize};

use crate::fim::FimLevel;
use crate::objectives::{MlmMasking, PrefixSplit, SpanCorruption};
use crate::pairs::PairsConfig;
use crate::task::ObjectiveConfig;

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
    /// Fill-in-the-middle (Bavarian et al. 2022, see `fim`): the share of documents turned
    /// into prefix/suffix/middle examples; 0 (default) is plain next-token prediction.
    /// Next-token prediction on a token stream only; needs the FIM special tokens.
    pub fim_rate: f64,
    /// Share of the FIM examples laid out suffix-first (SPM); the rest are PSM.
    pub fim_spm_rate: f64,
    /// "context" (default, the paper's recommendation: applied inside each drawn window) or
    /// "document" (applied to documents before they are packed into the stream).
    pub fim_level: FimLevel,
    /// Share of the FIM examples whose two cuts fall at line starts (and a piece's ends)
    /// instead of at any character: an editor's cursor at the start of a line gives a middle
    /// that starts at a line start, which character-level cuts (the paper's) almost never
    /// train. 0 (default): character level only.
    pub fim_line_rate: f64,
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
            fim_rate: 0.0,
            fim_spm_rate: 0.5,
            fim_level: FimLevel::Context,
            fim_line_rate: 0.0,
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
        if !(0.0..=1.0).contains(&self.fim_rate) || !(0.0..=1.0).contains(&self.fim_spm_rate) || !(0.0..=1.0).contains(&self.fim_line_rate) {
            return Err(format!(
                "train.fim_rate ({}), train.fim_spm_rate ({}) and train.fim_line_rate ({}) must be in [0, 1]",
                self.fim_rate, self.fim_spm_rate, self.fim_line_rate
            ));
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

/// `[objective]`: the parameters of the non-causal objectives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectiveSection {
    /// Prefix LM on plain text: fewest prefix / target tokens of a window.
    pub prefix_min: usize,
    pub prefix_min_target: usize,
    /// Fraction of the window that is prefix; 0 draws the split point uniformly.
    pub prefix_fraction: f64,
    /// Span corruption (encoder-decoder on plain text).
    pub noise_density: f64,
    pub mean_span_length: f64,
    /// Masked LM: rate of masked positions and the 80/10/10 replacement split.
    pub mlm_rate: f64,
    pub mlm_mask_fraction: f64,
    pub mlm_random_fraction: f64,
    /// Masked LM: train on sentence pairs `[CLS] A [SEP] B [SEP]` (B the true next text
    /// half the time, text from another document otherwise) with next-sentence prediction
    /// on the pooled `[CLS]` output; loss = MLM + NSP. Sets `model.nsp_head`.
    pub nsp: bool,
    /// Seed of the evaluation's masking/corruption/split draws: fixed so evaluations at
    /// different steps and of different runs score the same positions.
    pub eval_seed: u64,
}

impl Default for ObjectiveSection {
    fn default() -> Self {
        let (s, m) = (SpanCorruption::default(), MlmMasking::default());
        Self {
            prefix_min: 1,
            prefix_min_target: 1,
            prefix_fraction: 0.0,
            noise_density: s.noise_density,
            mean_span_length: s.mean_span_length,
            mlm_rate: m.rate,
            mlm_mask_fraction: m.mask_fraction,
            mlm_random_fraction: m.random_fraction,
            nsp: false,
            eval_seed: 0x5eed,
        }
    }
}

impl ObjectiveSection {
    pub fn validate(&self) -> Result<()> {
        // written so that NaN fails every check
        let unit = |x: f64| (0.0..=1.0).contains(&x);
        let open_unit = |x: f64| x > 0.0 && x < 1.0;
        let rate = |x: f64| x > 0.0 && x <= 1.0;
        if !open_unit(self.noise_density) || self.mean_span_length.is_nan() || self.mean_span_length < 1.0 {
            bail!("objective.noise_density must be in (0, 1) and objective.mean_span_length ≥ 1");
        }
        if !rate(self.mlm_rate) || !unit(self.mlm_mask_fraction + self.mlm_random_fraction) {
            bail!("objective.mlm_rate must be in (0, 1] and mlm_mask_fraction + mlm_random_fraction ≤ 1");
        }
        if !(0.0..1.0).contains(&self.prefix_fraction) {
            bail!("objective.prefix_fraction must be in [0, 1) (0 = random split point)");
        }
        Ok(())
    }

    pub fn objective(&self) -> ObjectiveConfig {
        ObjectiveConfig {
            prefix: PrefixSplit {
                min_prefix: self.prefix_min,
                min_target: self.prefix_min_target,
                fixed_fraction: (self.prefix_fraction > 0.0).then_some(self.prefix_fraction),
            },
            span: SpanCorruption { noise_density: self.noise_density, mean_span_length: self.mean_span_length },
            mlm: MlmMasking { rate: self.mlm_rate, mask_fraction: self.mlm_mask_fraction, random_fraction: self.mlm_random_fraction },
            nsp: self.nsp,
        }
    }
}

/// A run's config: `[model]` (any family, [`ModelSpec`]), `[train]`, `[data]`, and for the
/// non-causal objectives `[objective]`, for input/target pair data `[pairs]`. Every
/// training command reads it, and `config.toml` in every run folder is it, resolved.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunConfig {
    pub model: ModelSpec,
    pub train: TrainConfig,
    pub data: DataConfig,
    pub objective: ObjectiveSection,
    pub pairs: Option<PairsConfig>,
}

/// The sections with a plain serde shape.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct PlainSections {
    train: TrainConfig,
    data: DataConfig,
}

impl RunConfig {
    /// A causal Transformer run with default objective settings and no pairs.
    pub fn transformer(model: TransformerConfig, train: TrainConfig, data: DataConfig) -> Self {
        Self { model: ModelSpec::Transformer(model), train, data, ..Default::default() }
    }

    pub fn from_value(v: &toml::Value) -> anyhow::Result<Self> {
        let mut rest = v.as_table().cloned().context("the config is not a TOML table")?;
        let model = ModelSpec::from_value(&rest.remove("model").unwrap_or(toml::Value::Table(Default::default())))
            .map_err(|e| anyhow::anyhow!("invalid [model]: {e}"))?;
        let objective: ObjectiveSection = match rest.remove("objective") {
            Some(o) => ferrolm_common::config::typed(&o).context("in [objective]")?,
            None => ObjectiveSection::default(),
        };
        let pairs: Option<PairsConfig> = match rest.remove("pairs") {
            Some(p) => Some(ferrolm_common::config::typed(&p).context("in [pairs]")?),
            None => None,
        };
        let PlainSections { train, data } = ferrolm_common::config::typed(&toml::Value::Table(rest))?;
        let mut cfg = Self { model, train, data, objective, pairs };
        if let Some(m) = cfg.model.transformer_mut() {
            if cfg.objective.nsp && m.kind == ModelKind::MaskedLm {
                // the objective needs the head and the segment embeddings: one switch for both
                // (other kinds are refused when their task is built, so an experiment config
                // can carry the key for its masked LM)
                m.nsp_head = true;
            }
        }
        cfg.validate()?;
        // The token limits of `[pairs]` are checked when pairs are read from files;
        // pairs handed over in code are checked against the context when the task is built.
        if let Some(p) = &cfg.pairs {
            p.validate(cfg.model.max_seq_len())?;
        }
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.model.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        self.train.validate().map_err(|e| anyhow::anyhow!("invalid [train]: {e}"))?;
        if self.seq_len() > self.model.max_seq_len() {
            anyhow::bail!(
                "train.seq_len ({}) exceeds model.max_seq_len ({})",
                self.train.seq_len,
                self.model.max_seq_len()
            );
        }
        self.objective.validate()?;
        Ok(())
    }

    pub fn seq_len(&self) -> usize {
        if self.train.seq_len == 0 {
            self.model.max_seq_len()
        } else {
            self.train.seq_len
        }
    }

    /// True when the run is next-token prediction on a token stream (any family), which
    /// `LmTask` trains; every other kind and pair data train through `ArchTask`.
    pub fn is_plain_causal(&self) -> bool {
        self.model.kind() == ModelKind::Causal && self.pairs.is_none()
    }

    /// The resolved config as written to `config.toml`: `[objective]` only where an
    /// objective other than next-token prediction uses it, `[pairs]` only for pair data.
    pub fn to_toml(&self) -> String {
        let mut t = toml::Table::new();
        t.insert("model".into(), self.model.to_value());
        t.insert("train".into(), toml::Value::try_from(&self.train).expect("config serialises"));
        t.insert("data".into(), toml::Value::try_from(&self.data).expect("config serialises"));
        if !self.is_plain_causal() {
            t.insert("objective".into(), toml::Value::try_from(&self.objective).expect("config serialises"));
        }
        if let Some(p) = &self.pairs {
            t.insert("pairs".into(), toml::Value::try_from(p).expect("config serialises"));
        }
        toml::to_string_pretty(&t).expect("config serialises")
    }
}
