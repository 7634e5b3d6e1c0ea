//! Training and evaluating every `model.kind` through the shared [`Trainer`]: the
//! [`ArchTask`] turns (step, micro-step) into a batch of its kind — plain-text windows
//! with the kind's objective, or input/target pairs — and evaluates held-out target loss,
//! bits per byte over the scored targets, and target-token accuracy (for the masked LM:
//! masked-token accuracy; with `objective.nsp`, also next-sentence accuracy and loss)
//! under a fixed evaluation seed.
//!
//! A run folder of a non-causal kind (or of pair data) stores, next to `[model]`,
//! `[train]` and `[data]`, an `[objective]` section and optionally `[pairs]`;
//! [`ArchRunConfig`] reads and writes that, [`load_arch_run`] rebuilds the model of the
//! right kind from it.
//!
//! [`Trainer`]: crate::Trainer

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use ferrolm_model::ModelKind;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::config::{RunConfig, TrainConfig};
use crate::data::{eval_offsets, step_seed, train_offsets, TokenSource};
use crate::objectives::{DocIndex, MlmMasking, PrefixSplit, SpanCorruption};
use crate::pairs::PairsConfig;
use crate::task::{make_nsp_batch, make_pair_batch, make_task_batch, ArchModel, ObjectiveConfig, PairExample, TaskBatch, TaskTokens};
use crate::trainer::{EvalResult, TrainTask};

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
        let unit = |x: f64| (0.0..=1.0).contains(&x);
        if !(self.noise_density > 0.0 && self.noise_density < 1.0) || self.mean_span_length < 1.0 {
            bail!("objective.noise_density must be in (0, 1) and objective.mean_span_length ≥ 1");
        }
        if !(self.mlm_rate > 0.0 && self.mlm_rate <= 1.0) || !unit(self.mlm_mask_fraction + self.mlm_random_fraction) {
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

/// A run config for any kind: RunConfig's sections plus `[objective]` and `[pairs]`
/// (RunConfig itself keeps rejecting unknown sections).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ArchRunConfig {
    pub run: RunConfig,
    pub objective: ObjectiveSection,
    pub pairs: Option<PairsConfig>,
}

impl ArchRunConfig {
    pub fn from_value(v: &toml::Value) -> Result<Self> {
        let mut rest = v.clone();
        let table = rest.as_table_mut().context("the config is not a TOML table")?;
        let objective: ObjectiveSection = match table.remove("objective") {
            Some(o) => ferrolm_common::config::typed(&o).context("in [objective]")?,
            None => ObjectiveSection::default(),
        };
        let pairs: Option<PairsConfig> = match table.remove("pairs") {
            Some(p) => Some(ferrolm_common::config::typed(&p).context("in [pairs]")?),
            None => None,
        };
        let mut run = RunConfig::from_value(&rest)?;
        objective.validate()?;
        if objective.nsp && run.model.kind == ModelKind::MaskedLm {
            // the objective needs the head and the segment embeddings: one switch for both
            // (other kinds are refused when their task is built, so an experiment config
            // can carry the key for its masked LM)
            run.model.nsp_head = true;
        }
        if let Some(p) = &pairs {
            p.validate(run.model.max_seq_len)?;
        }
        Ok(Self { run, objective, pairs })
    }

    /// True when the plain pretraining path (`Trainer::new`) serves this config.
    pub fn is_plain_causal(&self) -> bool {
        self.run.model.kind == ModelKind::Causal && self.pairs.is_none()
    }

    pub fn to_toml(&self) -> String {
        let mut v = toml::Value::try_from(&self.run).expect("config serialises");
        let t = v.as_table_mut().expect("table");
        if !self.is_plain_causal() {
            t.insert("objective".into(), toml::Value::try_from(&self.objective).expect("serialises"));
        }
        if let Some(p) = &self.pairs {
            t.insert("pairs".into(), toml::Value::try_from(p).expect("serialises"));
        }
        toml::to_string_pretty(&v).expect("config serialises")
    }
}

/// Build the model of `cfg.kind` with fresh variables (not initialised).
pub fn build_arch_model(cfg: &ferrolm_model::TransformerConfig, device: &Device) -> Result<(ArchModel, VarMap)> {
    let varmap = VarMap::new();
    let model = ArchModel::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, device)).context("building the model")?;
    Ok((model, varmap))
}

/// Load a run folder of any kind: its config and the model of its latest checkpoint.
pub fn load_arch_run(run_dir: &Path, device: &Device) -> Result<(ArchRunConfig, ArchModel, VarMap)> {
    let cfg_path = run_dir.join("config.toml");
    let value = ferrolm_common::load_config(Some(&cfg_path), &[])?;
    let cfg = ArchRunConfig::from_value(&value).with_context(|| format!("in {}", cfg_path.display()))?;
    let ckpt = crate::checkpoint::latest(run_dir)?;
    let (model, varmap) = build_arch_model(&cfg.run.model, device)?;
    crate::checkpoint::load_weights(&varmap, &ckpt.join("model.safetensors"))?;
    Ok((cfg, model, varmap))
}

/// Where an [`ArchTask`] draws its examples from.
pub enum ArchData<'a> {
    /// Plain text: windows of `seq_len + 1` tokens, corrupted by the kind's objective.
    Stream { train: &'a dyn TokenSource, val: &'a dyn TokenSource },
    /// Input/target pairs (causal, prefix and encoder-decoder only).
    Pairs { train: &'a [PairExample], val: &'a [PairExample] },
}

/// One task for every kind; see the module docs.
pub struct ArchTask<'a> {
    pub model: ArchModel,
    kind: ModelKind,
    data: ArchData<'a>,
    tokens: TaskTokens,
    objective: ObjectiveConfig,
    vocab: u32,
    token_bytes: Vec<u32>,
    seq_len: usize,
    batch_size: usize,
    eval_examples: usize,
    seed: u64,
    eval_seed: u64,
    /// Next-sentence prediction: the documents of the training and held-out streams.
    nsp_index: Option<(DocIndex, DocIndex)>,
}

impl<'a> ArchTask<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: ArchModel,
        cfg: &ArchRunConfig,
        data: ArchData<'a>,
        tokens: TaskTokens,
        token_bytes: Vec<u32>,
    ) -> Result<Self> {
        let (m, tc): (&ferrolm_model::TransformerConfig, &TrainConfig) = (&cfg.run.model, &cfg.run.train);
        let seq_len = cfg.run.seq_len();
        match &data {
            ArchData::Stream { train, val } => {
                let need = seq_len + 2;
                if train.len() < need || val.len() < need {
                    bail!(
                        "training data has {} and held-out data {} tokens; each needs at least {need} for one window of train.seq_len {seq_len}",
                        train.len(),
                        val.len()
                    );
                }
            }
            ArchData::Pairs { train, val } => {
                if m.kind == ModelKind::MaskedLm {
                    bail!("model.kind = masked_lm trains on plain text (masked tokens), not on input/target pairs");
                }
                if train.is_empty() || val.is_empty() {
                    bail!("pair data needs at least one training and one held-out pair ({} and {})", train.len(), val.len());
                }
                let longest = train.iter().chain(val.iter()).map(|p| p.input.len() + p.target.len() + 2).max().unwrap_or(0);
                if longest > m.max_seq_len {
                    bail!("a pair of {longest} tokens (with <sep> and <eot>) exceeds model.max_seq_len {}", m.max_seq_len);
                }
            }
        }
        if m.kind == ModelKind::EncoderDecoder && tokens.sentinels.is_empty() {
            bail!("span corruption needs sentinel tokens in the tokenizer");
        }
        let nsp_index = match (&data, cfg.objective.nsp) {
            (_, false) => None,
            (ArchData::Stream { train, val }, true) => {
                if m.kind != ModelKind::MaskedLm || !m.nsp_head {
                    bail!("objective.nsp = true needs model.kind = \"masked_lm\" with model.nsp_head = true");
                }
                if seq_len < 5 {
                    bail!("next-sentence prediction needs train.seq_len ≥ 5 ([CLS] A [SEP] B [SEP]), got {seq_len}");
                }
                let (ti, vi) = (DocIndex::new(*train, tokens.eot, seq_len - 3), DocIndex::new(*val, tokens.eot, seq_len - 3));
                for (name, ix) in [("training", &ti), ("held-out", &vi)] {
                    if ix.len() < 2 {
                        bail!(
                            "next-sentence prediction needs two {name} documents of at least {} tokens (train.seq_len − 3); the {name} data has {} documents, {} of them shorter",
                            seq_len - 3, ix.total_docs, ix.short_docs
                        );
                    }
                }
                Some((ti, vi))
            }
            (ArchData::Pairs { .. }, true) => bail!("objective.nsp = true trains on plain text, not on input/target pairs"),
        };
        Ok(Self {
            nsp_index,
            model,
            kind: m.kind,
            data,
            tokens,
            objective: cfg.objective.objective(),
            vocab: m.vocab_size as u32,
            token_bytes,
            seq_len,
            batch_size: tc.batch_size,
            eval_examples: tc.eval_batches * tc.batch_size,
            seed: tc.seed,
            eval_seed: cfg.objective.eval_seed,
        })
    }

    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// The held-out batches of every evaluation: fixed windows (or the first pairs) and
    /// objective draws seeded by `objective.eval_seed`, so every evaluation scores the
    /// same targets.
    pub fn for_each_eval_batch(&self, mut f: impl FnMut(&TaskBatch) -> Result<()>) -> Result<()> {
        match &self.data {
            ArchData::Stream { val, .. } if self.nsp_index.is_some() => {
                let (_, index) = self.nsp_index.as_ref().expect("checked");
                let mut left = self.eval_examples.max(1);
                let mut i = 0;
                while left > 0 {
                    let rows = left.min(self.batch_size);
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(step_seed(self.eval_seed, i, 0, "eval-nsp"));
                    f(&make_nsp_batch(*val, index, rows, self.seq_len, &self.objective, &self.tokens, self.vocab, &mut rng, &Device::Cpu)?)?;
                    (left, i) = (left - rows, i + 1);
                }
            }
            ArchData::Stream { val, .. } => {
                let offsets = eval_offsets(*val, self.eval_examples, self.seq_len);
                for (i, chunk) in offsets.chunks(self.batch_size).enumerate() {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(step_seed(self.eval_seed, i, 0, "eval-objective"));
                    f(&self.batch(chunk, &mut rng, Some(*val), None)?)?;
                }
            }
            ArchData::Pairs { val, .. } => {
                let idx: Vec<usize> = (0..val.len().min(self.eval_examples)).collect();
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.eval_seed);
                for chunk in idx.chunks(self.batch_size) {
                    f(&self.batch(chunk, &mut rng, None, Some(val))?)?;
                }
            }
        }
        Ok(())
    }

    /// The targets every evaluation scores, in order (for baselines such as "always
    /// predict the most frequent token").
    pub fn eval_targets(&self) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        self.for_each_eval_batch(|b| {
            let t = match b {
                TaskBatch::Decoder { targets, .. } | TaskBatch::EncoderDecoder { targets, .. } | TaskBatch::MaskedLm { targets, .. } => targets,
            };
            out.extend(t.to_vec1::<u32>()?);
            Ok(())
        })?;
        Ok(out)
    }

    fn batch(&self, offsets_or_idx: &[usize], rng: &mut impl Rng, src: Option<&dyn TokenSource>, pairs: Option<&[PairExample]>) -> Result<TaskBatch> {
        match (src, pairs) {
            (Some(src), _) => make_task_batch(self.kind, src, offsets_or_idx, self.seq_len, &self.objective, &self.tokens, self.vocab, rng, &Device::Cpu),
            (None, Some(p)) => {
                let rows: Vec<&PairExample> = offsets_or_idx.iter().map(|&i| &p[i]).collect();
                make_pair_batch(self.kind, &rows, &self.tokens, &Device::Cpu)
            }
            _ => unreachable!("a batch comes from a stream or from pairs"),
        }
    }

    fn inputs_len(batch: &TaskBatch) -> usize {
        match batch {
            TaskBatch::Decoder { inputs, .. } | TaskBatch::MaskedLm { inputs, .. } => inputs.elem_count(),
            TaskBatch::EncoderDecoder { src, tgt_in, .. } => src.elem_count() + tgt_in.elem_count(),
        }
    }
}

/// Negative log-likelihood and argmax-correctness of each scored target.
fn scored_nll(logits: &Tensor, targets: &Tensor) -> Result<(Vec<f32>, Vec<bool>)> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll: Vec<f32> = logp.gather(&targets.unsqueeze(1)?, 1)?.flatten_all()?.to_vec1::<f32>()?.iter().map(|l| -l).collect();
    let pred: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
    let tgt: Vec<u32> = targets.to_vec1()?;
    Ok((nll, pred.iter().zip(&tgt).map(|(p, t)| p == t).collect()))
}

impl TrainTask for ArchTask<'_> {
    fn micro_batch_loss(&self, step: usize, micro: usize) -> Result<(Tensor, usize)> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(step_seed(self.seed, step, micro, "objective"));
        let batch = match &self.data {
            ArchData::Stream { train, .. } if self.nsp_index.is_some() => {
                let (index, _) = self.nsp_index.as_ref().expect("checked");
                make_nsp_batch(*train, index, self.batch_size, self.seq_len, &self.objective, &self.tokens, self.vocab, &mut rng, &Device::Cpu)?
            }
            ArchData::Stream { train, .. } => {
                let offsets = train_offsets(*train, self.seed, step, micro, self.batch_size, self.seq_len);
                self.batch(&offsets, &mut rng, Some(*train), None)?
            }
            ArchData::Pairs { train, .. } => {
                let mut pick = rand_chacha::ChaCha8Rng::seed_from_u64(step_seed(self.seed, step, micro, "batch"));
                let idx: Vec<usize> = (0..self.batch_size).map(|_| pick.random_range(0..train.len())).collect();
                self.batch(&idx, &mut rng, None, Some(train))?
            }
        };
        let dropout_seed = Some(step_seed(self.seed, step, micro, "dropout"));
        let loss = self.model.outputs(&batch, dropout_seed)?.loss()?;
        Ok((loss, Self::inputs_len(&batch)))
    }

    fn evaluate(&self) -> Result<EvalResult> {
        let (mut nll_all, mut nll_text, mut bytes, mut n, mut correct) = (0f64, 0f64, 0u64, 0usize, 0usize);
        let (mut nsp_nll, mut nsp_correct, mut nsp_n) = (0f64, 0usize, 0usize);
        let mut account = |batch: &TaskBatch| -> Result<()> {
            let out = self.model.outputs(batch, None)?;
            if let Some((l, y)) = &out.nsp {
                let (nll, ok) = scored_nll(l, y)?;
                nsp_nll += nll.iter().map(|&x| x as f64).sum::<f64>();
                nsp_correct += ok.iter().filter(|&&b| b).count();
                nsp_n += nll.len();
            }
            let (logits, targets) = (out.logits, out.targets);
            let (nll, ok) = scored_nll(&logits, &targets)?;
            let tgt: Vec<u32> = targets.to_vec1()?;
            for ((&l, &hit), &t) in nll.iter().zip(&ok).zip(&tgt) {
                nll_all += l as f64;
                let b = self.token_bytes.get(t as usize).copied().unwrap_or(0) as u64;
                if b > 0 {
                    nll_text += l as f64;
                    bytes += b;
                }
                correct += hit as usize;
            }
            n += nll.len();
            Ok(())
        };
        self.for_each_eval_batch(&mut account)?;
        if n == 0 {
            bail!("the evaluation scored no target");
        }
        let name = if self.kind == ModelKind::MaskedLm { "masked_accuracy" } else { "target_accuracy" };
        let mut extra = BTreeMap::from([(name.to_string(), correct as f64 / n as f64)]);
        if nsp_n > 0 {
            extra.insert("nsp_accuracy".into(), nsp_correct as f64 / nsp_n as f64);
            extra.insert("nsp_loss".into(), nsp_nll / nsp_n as f64);
        }
        Ok(EvalResult {
            loss: nll_all / n as f64,
            bits_per_byte: if bytes > 0 { nll_text / std::f64::consts::LN_2 / bytes as f64 } else { f64::NAN },
            tokens: n,
            bytes,
            extra,
        })
    }
}

/// A trainer for any kind on the shared loop: fresh (writes `config.toml`, initialises
/// the weights from `train.seed`) or resumed from the run folder's latest checkpoint
/// (the saved `[model]` must match).
pub fn arch_trainer<'a>(
    cfg: &ArchRunConfig,
    run_dir: &Path,
    data: ArchData<'a>,
    tokens: TaskTokens,
    token_bytes: Vec<u32>,
    resume: bool,
) -> Result<crate::Trainer<'a>> {
    cfg.run.validate()?;
    if resume {
        crate::checkpoint::latest(run_dir)?;
        let saved = ferrolm_common::load_config(Some(&run_dir.join("config.toml")), &[])?;
        let saved = ArchRunConfig::from_value(&saved)?;
        if saved.run.model != cfg.run.model {
            bail!("cannot resume {}: the [model] section differs from the saved config.toml", run_dir.display());
        }
    }
    let (model, varmap) = build_arch_model(&cfg.run.model, &Device::Cpu)?;
    let task = ArchTask::new(model, cfg, data, tokens, token_bytes)?;
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    ferrolm_common::write_atomic(run_dir.join("config.toml"), cfg.to_toml())?;
    let mut t = if resume {
        crate::Trainer::resume_task(cfg.run.train.clone(), run_dir, varmap, Box::new(task))?
    } else {
        ferrolm_model::init::init_params(&varmap, cfg.run.model.n_layers, cfg.run.train.seed)?;
        crate::Trainer::from_task(cfg.run.train.clone(), run_dir, varmap, Box::new(task))?
    };
    t.title = format!("ferrolm training ({})", kind_name(cfg.run.model.kind));
    Ok(t)
}

/// The config spelling of a kind.
pub fn kind_name(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::Causal => "causal",
        ModelKind::Prefix => "prefix",
        ModelKind::EncoderDecoder => "encoder_decoder",
        ModelKind::MaskedLm => "masked_lm",
    }
}
