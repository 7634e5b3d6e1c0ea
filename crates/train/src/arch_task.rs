//! Training and evaluating every `model.kind` through the shared [`Trainer`]: the
//! [`ArchTask`] turns (step, micro-step) into a batch of its kind — plain-text windows
//! with the kind's objective, or input/target pairs — and evaluates held-out target loss,
//! bits per byte over the scored targets, and target-token accuracy (for the masked LM:
//! masked-token accuracy; with `objective.nsp`, also next-sentence accuracy and loss)
//! under a fixed evaluation seed.
//!
//! A run folder of a non-causal kind (or of pair data) stores, next to `[model]`,
//! `[train]` and `[data]`, an `[objective]` section and optionally `[pairs]` (see
//! [`RunConfig`]); [`crate::start_run`] builds the task, `ferrolm_model::load_model` the
//! model of the right kind.
//!
//! [`Trainer`]: crate::Trainer

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor, D};
use ferrolm_model::{AnyModel, ModelKind};
use rand::{Rng, SeedableRng};

use crate::config::{RunConfig, TrainConfig};
use crate::data::{eval_offsets, step_seed, train_offsets, TokenSource};
use crate::objectives::DocIndex;
use crate::task::{make_nsp_batch, make_pair_batch, make_task_batch, ObjectiveConfig, PairExample, TaskBatch, TaskModel, TaskTokens};
use crate::trainer::{EvalResult, TrainTask};

/// Where an [`ArchTask`] draws its examples from.
pub enum ArchData<'a> {
    /// Plain text: windows of `seq_len + 1` tokens, corrupted by the kind's objective.
    Stream { train: &'a dyn TokenSource, val: &'a dyn TokenSource },
    /// Input/target pairs (causal, prefix and encoder-decoder only).
    Pairs { train: &'a [PairExample], val: &'a [PairExample] },
}

/// One task for every kind; see the module docs.
pub struct ArchTask<'a> {
    pub model: AnyModel,
    kind: ModelKind,
    device: Device,
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
        model: AnyModel,
        cfg: &RunConfig,
        data: ArchData<'a>,
        tokens: TaskTokens,
        token_bytes: Vec<u32>,
        device: &Device,
    ) -> Result<Self> {
        let m = cfg.model.require_transformer("this objective").map_err(anyhow::Error::msg)?;
        let tc: &TrainConfig = &cfg.train;
        let seq_len = cfg.seq_len();
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
            device: device.clone(),
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
                    f(&make_nsp_batch(*val, index, rows, self.seq_len, &self.objective, &self.tokens, self.vocab, &mut rng, &self.device)?)?;
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
            (Some(src), _) => make_task_batch(self.kind, src, offsets_or_idx, self.seq_len, &self.objective, &self.tokens, self.vocab, rng, &self.device),
            (None, Some(p)) => {
                let rows: Vec<&PairExample> = offsets_or_idx.iter().map(|&i| &p[i]).collect();
                make_pair_batch(self.kind, &rows, &self.tokens, &self.device)
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
                make_nsp_batch(*train, index, self.batch_size, self.seq_len, &self.objective, &self.tokens, self.vocab, &mut rng, &self.device)?
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
        let (mut acc, mut correct) = (crate::bpb::BitsPerByte::default(), 0usize);
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
                acc.add_target(l as f64, t, &self.token_bytes);
                correct += hit as usize;
            }
            Ok(())
        };
        self.for_each_eval_batch(&mut account)?;
        let n = acc.tokens;
        if n == 0 {
            bail!("the evaluation scored no target");
        }
        let name = if self.kind == ModelKind::MaskedLm { "masked_accuracy" } else { "target_accuracy" };
        let mut extra = BTreeMap::from([(name.to_string(), correct as f64 / n as f64)]);
        if nsp_n > 0 {
            extra.insert("nsp_accuracy".into(), nsp_correct as f64 / nsp_n as f64);
            extra.insert("nsp_loss".into(), nsp_nll / nsp_n as f64);
        }
        Ok(EvalResult { loss: acc.loss(), bits_per_byte: acc.bits_per_byte(), tokens: n, bytes: acc.bytes, extra })
    }
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
