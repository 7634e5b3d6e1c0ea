//! Classification heads on pretrained models: a linear layer on features read from the body
//! (`classify.pooling`: the decoder's hidden state at the last real token — the only
//! position that has seen the whole text —, the masked LM's pooled output
//! (tanh(dense(first position))), or the mean of the hidden states over the text's tokens).
//! Optionally a second, "wide" linear part on the text's hashed token unigrams and bigrams
//! is added to the logits (Wide & Deep, Cheng et al. 2016; fastText's hashed n-grams): the
//! body's features and the text's own tokens train together. The body is frozen, partly
//! trained (its top N blocks and final norm) or fully trained, chosen by
//! `classify.train_body` and applied through `TrainTask::trainable`.
//!
//! `classify train` also fits the bag-of-words logistic regression on the same split and
//! says when the classifier is below it.
//!
//! With a frozen body the features of every text are computed once and the head trains on
//! them: the body never changes, so this is the same optimisation at a fraction of the cost.
//!
//! A classifier run folder holds the body's `config.toml` (plain run config), its tokenizer,
//! `classify.toml` (labels, stage config, base), checkpoints with body and `cls_head.*`
//! weights, metrics, `eval.json` and `confusion.svg`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use ferrolm_model::attention::{MaskSpec, PAD_SEGMENT};
use ferrolm_model::{AnyModel, MaskedLm, ModelKind, Transformer, TransformerConfig};
use ferrolm_tokenizer::Tokenizer;
use ferrolm_train::config::RunConfig;
use ferrolm_train::data::step_seed;
use ferrolm_train::trainer::describe_eval;
use ferrolm_train::{EvalResult, TrainConfig, TrainOutcome, TrainTask, Trainer};
use serde::{Deserialize, Serialize};

use crate::baseline::{BowConfig, BowModel};
use crate::metrics::ClassReport;
use crate::records::{self, LabelledText, Located, OnBad, ReadReport};
use crate::sft::batch_rows;
use ferrolm_model::lora::{self, LoraConfig};

/// Which body parameters are trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainBody {
    Frozen,
    /// The top N blocks and the final norm (and the MLM pooler).
    Top(usize),
    Full,
}

impl std::str::FromStr for TrainBody {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "frozen" => Ok(Self::Frozen),
            "full" => Ok(Self::Full),
            _ => match s.strip_prefix("top:").map(str::parse::<usize>) {
                Some(Ok(n)) if n > 0 => Ok(Self::Top(n)),
                _ => bail!("classify.train_body must be \"frozen\", \"top:N\" (N ≥ 1) or \"full\", got {s:?}"),
            },
        }
    }
}

/// Where a text's features are read from the body's hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Decoder: last real token; masked LM: the pooler on the first position.
    Auto,
    Last,
    First,
    /// Mean over the text's real tokens.
    Mean,
}

impl std::str::FromStr for Pooling {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "last" => Ok(Self::Last),
            "first" => Ok(Self::First),
            "mean" => Ok(Self::Mean),
            _ => bail!("classify.pooling must be \"auto\", \"last\", \"first\" or \"mean\", got {s:?}"),
        }
    }
}

/// `[classify]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifyConfig {
    /// "frozen", "top:N" or "full".
    pub train_body: String,
    /// Share held out when no validation files are given (chosen by a hash of the text).
    pub val_fraction: f64,
    pub text_field: String,
    pub label_field: String,
    pub on_bad_record: OnBad,
    /// Label order; empty = the sorted distinct labels of the training data.
    pub labels: Vec<String>,
    /// Tokens per text (the beginning is kept); 0 = the model's max_seq_len.
    pub max_len: usize,
    /// "auto", "last", "first" or "mean" (see [`Pooling`]).
    pub pooling: String,
    /// Hash buckets of the wide part (token unigrams and bigrams); 0 = no wide part.
    pub ngram_buckets: usize,
    /// Fit the bag-of-words baseline on the same split and report whether the classifier
    /// is below it.
    pub compare_bow: bool,
}

// The defaults of a missing key are the behaviour of classifiers trained before `pooling`
// and `ngram_buckets` existed, so their saved `classify.toml` loads unchanged; the
// recommended recipe is configs/classify.toml.
impl Default for ClassifyConfig {
    fn default() -> Self {
        Self { train_body: "frozen".into(), val_fraction: 0.1, text_field: "text".into(), label_field: "label".into(), on_bad_record: OnBad::Skip, labels: vec![], max_len: 0, pooling: "auto".into(), ngram_buckets: 0, compare_bow: true }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifyStageConfig {
    pub train: TrainConfig,
    pub classify: ClassifyConfig,
    /// `lora.rank > 0` (with `classify.train_body = "full"`): the body trains LoRA adapters
    /// on its frozen weights, the head trains fully; the run writes a PEFT SEQ_CLS adapter.
    pub lora: LoraConfig,
}

impl ClassifyStageConfig {
    pub fn from_value(v: &toml::Value) -> Result<Self> {
        let c: Self = ferrolm_common::config::typed(v)?;
        c.train.validate().map_err(|e| anyhow::anyhow!("invalid [train]: {e}"))?;
        c.classify.train_body.parse::<TrainBody>()?;
        c.classify.pooling.parse::<Pooling>()?;
        ensure!((0.0..1.0).contains(&c.classify.val_fraction), "classify.val_fraction must be in [0, 1)");
        c.check_lora()?;
        Ok(c)
    }

    /// The combinations LoRA supports: adapters are how the body trains, so
    /// `classify.train_body` must be "full"; the head must be transformers' sequence
    /// classifier (no wide part).
    pub fn check_lora(&self) -> Result<()> {
        if !self.lora.enabled() {
            return Ok(());
        }
        ensure!(self.lora.quant.is_none(), "lora.quant (a quantized base, QLoRA) is supported by sft, dpo, rlhf and reward; a classifier trains its adapters on an f32 body");
        ensure!(
            self.classify.train_body == "full",
            "lora.rank = {} trains the body through adapters: set classify.train_body = \"full\" (got {:?}; \"frozen\" trains no adapter, \"top:N\" is not supported with LoRA)",
            self.lora.rank,
            self.classify.train_body
        );
        ensure!(
            self.classify.ngram_buckets == 0,
            "classify.ngram_buckets = {}: the wide n-gram part has no place in a PEFT sequence classifier; set it to 0 with lora.rank > 0",
            self.classify.ngram_buckets
        );
        Ok(())
    }
}

/// With LoRA: the pooling transformers' `*ForSequenceClassification` uses on this body
/// (decoders: the last real token; BERT: the pooler), or a config error naming the key.
fn check_lora_pooling(kind: ModelKind, pooling: Pooling) -> Result<()> {
    match (kind, pooling) {
        (ModelKind::MaskedLm, Pooling::Auto) => Ok(()),
        (ModelKind::MaskedLm, p) => bail!("classify.pooling = {p:?} with lora.rank > 0: BertForSequenceClassification reads the pooler; use classify.pooling = \"auto\" (a masked LM without a pooler cannot take LoRA here)"),
        (_, Pooling::Auto | Pooling::Last) => Ok(()),
        (_, p) => bail!("classify.pooling = {p:?} with lora.rank > 0: *ForSequenceClassification on a decoder reads the last token; use classify.pooling = \"auto\" or \"last\""),
    }
}

/// Read labelled records.
pub fn read_labelled(paths: &[PathBuf], cfg: &ClassifyConfig) -> Result<(Vec<Located<LabelledText>>, ReadReport)> {
    records::read_records(paths, cfg.on_bad_record, |v| records::parse_labelled(v, &cfg.text_field, &cfg.label_field))
}

/// The held-out split shared by the head and the bag-of-words baseline: a hash of the text
/// decides, so the split is stable and duplicates never straddle it.
pub fn split_labelled(recs: Vec<LabelledText>, val_fraction: f64) -> (Vec<LabelledText>, Vec<LabelledText>) {
    recs.into_iter().partition(|r| {
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(r.text.as_bytes(), 0xc1a55);
        (h as f64 / u64::MAX as f64) >= val_fraction
    })
}

/// Train and held-out sets: from `val` files when given, else split from `data`.
pub fn train_val(data: &[PathBuf], val: &[PathBuf], cfg: &ClassifyConfig) -> Result<(Vec<LabelledText>, Vec<LabelledText>, ReadReport)> {
    let (recs, mut report) = read_labelled(data, cfg)?;
    let recs: Vec<LabelledText> = recs.into_iter().map(|r| r.value).collect();
    let (train, val) = if val.is_empty() {
        split_labelled(recs, cfg.val_fraction)
    } else {
        let (v, rep) = read_labelled(val, cfg)?;
        report.merge(rep);
        (recs, v.into_iter().map(|r| r.value).collect())
    };
    ensure!(!train.is_empty(), "no training records");
    ensure!(!val.is_empty(), "no held-out records: raise classify.val_fraction or give --val-data");
    Ok((train, val, report))
}

/// The labels in order: configured, or the sorted distinct training labels.
pub fn label_set(cfg: &ClassifyConfig, train: &[LabelledText]) -> Vec<String> {
    if !cfg.labels.is_empty() {
        return cfg.labels.clone();
    }
    let mut l: Vec<String> = train.iter().map(|r| r.label.clone()).collect();
    l.sort();
    l.dedup();
    l
}

/// Label indices; records whose label is not in `labels` are an error naming it.
pub fn label_ids(recs: &[LabelledText], labels: &[String]) -> Result<Vec<u32>> {
    recs.iter()
        .map(|r| labels.iter().position(|l| *l == r.label).map(|i| i as u32).with_context(|| format!("label {:?} is not one of {labels:?}", r.label)))
        .collect()
}

/// The pretrained body.
#[derive(Debug, Clone)]
// One per classifier, built once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Body {
    Decoder(Transformer),
    MaskedLm(MaskedLm),
}

impl Body {
    /// Give the body fresh LoRA adapters and freeze its linear weights (see
    /// [`lora::prepare`]); returns the number of adapter parameters.
    pub fn prepare_lora(&mut self, vm: &VarMap, l: &LoraConfig, seed: u64) -> Result<usize> {
        match self {
            Body::Decoder(m) => lora::prepare(m, vm, l, seed),
            Body::MaskedLm(m) => lora::prepare(m, vm, l, seed),
        }
    }

    /// Attach adapters (their values to be loaded from a checkpoint).
    pub fn attach_lora(&mut self, vm: &VarMap, l: &LoraConfig) -> Result<usize> {
        match self {
            Body::Decoder(m) => lora::attach(m, vm, l, 0),
            Body::MaskedLm(m) => lora::attach(m, vm, l, 0),
        }
    }

    /// Fold the adapters into the weights.
    pub fn merge_lora(&mut self, vm: &VarMap) -> Result<()> {
        match self {
            Body::Decoder(m) => lora::merge(m, vm),
            Body::MaskedLm(m) => lora::merge(m, vm),
        }
    }

    pub fn config(&self) -> &TransformerConfig {
        match self {
            Body::Decoder(m) => m.config(),
            Body::MaskedLm(m) => m.config(),
        }
    }
}

/// The classifier: a body and a linear head, and optionally the wide part's table
/// (buckets × labels).
#[derive(Debug, Clone)]
pub struct Classifier {
    pub body: Body,
    pub head: candle_nn::Linear,
    pub wide: Option<Tensor>,
    pub pooling: Pooling,
    pub labels: Vec<String>,
    pub n_layers: usize,
    pub kind: ModelKind,
}

/// Build a run folder's body (any decoder or masked LM) in a new VarMap (weights not loaded:
/// a classifier's checkpoint holds its head too, which joins the VarMap first).
pub fn load_body(run_dir: &Path, device: &Device) -> Result<(TransformerConfig, Body, VarMap)> {
    let spec = ferrolm_model::registry::read_spec(run_dir)?;
    let cfg = spec.require_transformer("a classification head").map_err(anyhow::Error::msg)?.clone();
    let (model, vm) = AnyModel::build_fresh(&spec, device)?;
    Ok((cfg, body_of(model, run_dir)?, vm))
}

fn body_of(model: AnyModel, run_dir: &Path) -> Result<Body> {
    Ok(match model {
        AnyModel::Decoder(m) => Body::Decoder(m),
        AnyModel::MaskedLm(m) => Body::MaskedLm(m),
        other => bail!("{}: classification heads support decoders and masked LMs, not {}", run_dir.display(), other.name()),
    })
}

fn load_latest(run_dir: &Path, vm: &VarMap) -> Result<()> {
    let ckpt = ferrolm_model::registry::latest_checkpoint(run_dir)?;
    ferrolm_model::registry::load_weights(vm, &ckpt.join("model.safetensors"))
}

impl Classifier {
    /// A new head on the pretrained body of `run_dir`, initialised from `seed` (PyTorch's
    /// `nn.Linear` rule, U(±1/√d_model), but seeded: the same seed gives the same run).
    /// `run_dir` may also be a Hugging Face model folder (e.g. BERT, whose pooled output
    /// the head reads), loaded through the model registry.
    pub fn from_pretrained(run_dir: &Path, labels: Vec<String>, cc: &ClassifyConfig, seed: u64, device: &Device) -> Result<(TransformerConfig, Self, VarMap)> {
        let (cfg, body, vm) = if ferrolm_model::hf::is_hf_folder(run_dir) {
            let loaded = ferrolm_model::load_model(run_dir, device)?;
            let cfg = loaded.spec.require_transformer("a classification head").map_err(anyhow::Error::msg)?.clone();
            (cfg, body_of(loaded.model, run_dir)?, loaded.varmap)
        } else {
            let (cfg, body, vm) = load_body(run_dir, device)?;
            load_latest(run_dir, &vm)?;
            (cfg, body, vm)
        };
        if let (Body::MaskedLm(m), Pooling::Auto) = (&body, cc.pooling.parse()?) {
            ensure!(m.has_pooler(), "{}: this masked LM has no pooler (classify.pooling = \"auto\" reads it); set classify.pooling = \"mean\" or \"first\"", run_dir.display());
        }
        let (head, wide) = new_heads(&vm, cfg.d_model, labels.len(), cc.ngram_buckets, device)?;
        // (the head's tensors share storage with the VarMap's variables: set in place)
        ferrolm_model::init::seed_linear(&vm, "cls_head", cfg.d_model, seed)?;
        Ok((cfg.clone(), Self { body, head, wide, pooling: cc.pooling.parse()?, labels, n_layers: cfg.n_layers, kind: cfg.kind }, vm))
    }

    /// A trained classifier run folder (body and head from its latest checkpoint); a LoRA
    /// run's adapters are folded into the body's weights.
    pub fn load(run_dir: &Path, device: &Device) -> Result<(Self, Tokenizer, ClassifyRunInfo)> {
        Self::load_with(run_dir, device, true)
    }

    /// [`Self::load`], with a LoRA run's adapters folded in (`merge`) or kept as adapters.
    pub fn load_with(run_dir: &Path, device: &Device, merge: bool) -> Result<(Self, Tokenizer, ClassifyRunInfo)> {
        let info = ClassifyRunInfo::load(run_dir)?;
        let (cfg, mut body, vm) = load_body(run_dir, device)?;
        let cc = &info.config.classify;
        let (head, wide) = new_heads(&vm, cfg.d_model, info.labels.len(), cc.ngram_buckets, device)?;
        let l = &info.config.lora;
        if l.enabled() {
            body.attach_lora(&vm, l)?;
        }
        load_latest(run_dir, &vm)?;
        if l.enabled() && merge {
            body.merge_lora(&vm)?;
        }
        let tok = crate::prompt::load_tokenizer(run_dir)?;
        let pooling = cc.pooling.parse()?;
        Ok((Self { body, head, wide, pooling, labels: info.labels.clone(), n_layers: cfg.n_layers, kind: cfg.kind }, tok, info))
    }

    pub fn device(&self) -> &Device {
        match &self.body {
            Body::Decoder(m) => m.device(),
            Body::MaskedLm(m) => m.device(),
        }
    }

    pub fn max_seq_len(&self) -> usize {
        match &self.body {
            Body::Decoder(m) => m.config().max_seq_len,
            Body::MaskedLm(m) => m.config().max_seq_len,
        }
    }

    /// Sentence features (B, d_model) of right-padded ids (B, T) with real lengths `lens`.
    pub fn features(&self, ids: &Tensor, lens: &[usize], dropout_seed: Option<u64>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let dev = ids.device();
        let last = |h: &Tensor| -> Result<Tensor> {
            let d = h.dim(2)?;
            let last: Vec<u32> = lens.iter().enumerate().map(|(i, &l)| (i * t + l - 1) as u32).collect();
            Ok(h.reshape((b * t, d))?.index_select(&Tensor::from_vec(last, b, dev)?, 0)?)
        };
        let mean = |h: &Tensor| -> Result<Tensor> {
            let w: Vec<f32> = lens.iter().flat_map(|&l| (0..t).map(move |j| if j < l { 1.0 / l as f32 } else { 0.0 })).collect();
            Ok(h.broadcast_mul(&Tensor::from_vec(w, (b, t, 1), dev)?)?.sum(1)?)
        };
        let first = |h: &Tensor| -> Result<Tensor> { Ok(h.narrow(1, 0, 1)?.squeeze(1)?) };
        match &self.body {
            Body::Decoder(m) => {
                // Causal attention: right padding never reaches the real tokens.
                let h = m.hidden(ids, &MaskSpec::causal(), None, dropout_seed)?;
                match self.pooling {
                    Pooling::Auto | Pooling::Last => last(&h),
                    Pooling::Mean => mean(&h),
                    Pooling::First => first(&h),
                }
            }
            Body::MaskedLm(m) => {
                // Bidirectional: padding must be masked out explicitly.
                let segs: Vec<u32> = lens.iter().flat_map(|&l| (0..t).map(move |j| if j < l { 0 } else { PAD_SEGMENT })).collect();
                let h = m.hidden(ids, &MaskSpec::bidirectional().with_segments(segs), dropout_seed)?;
                match self.pooling {
                    Pooling::Auto => Ok(m.pooled(&h)?),
                    Pooling::Last => last(&h),
                    Pooling::Mean => mean(&h),
                    Pooling::First => first(&h),
                }
            }
        }
    }

    /// Logits (B, C) of features (B, d_model) and, with a wide part, the texts' hashed
    /// n-gram ids ([`ngram_ids`]).
    pub fn logits(&self, features: &Tensor, grams: &[&[u32]]) -> Result<Tensor> {
        let deep = self.head.forward(features)?;
        let Some(table) = &self.wide else { return Ok(deep) };
        let n: usize = grams.iter().map(|g| g.len()).sum();
        if n == 0 {
            return Ok(deep);
        }
        // Sum of the table rows of each text's n-grams: a (B, n) selection matrix times
        // the (n, C) rows gathered once.
        let b = grams.len();
        let mut sel = vec![0f32; b * n];
        let mut at = 0;
        for (i, g) in grams.iter().enumerate() {
            for _ in g.iter() {
                sel[i * n + at] = 1.0;
                at += 1;
            }
        }
        let dev = features.device();
        let rows = table.index_select(&Tensor::from_vec(grams.concat(), n, dev)?, 0)?;
        Ok((deep + Tensor::from_vec(sel, (b, n), dev)?.matmul(&rows)?)?)
    }

    /// Hash buckets of the wide part (0 without one).
    pub fn ngram_buckets(&self) -> usize {
        self.wide.as_ref().map_or(0, |w| w.dim(0).unwrap_or(0))
    }

    /// Whether VarMap entry `name` is trained under `mode`. The head always is; body
    /// parameters outside the classification path (LM/MLM/NSP heads) never are.
    pub fn trainable(&self, name: &str, mode: TrainBody) -> bool {
        if name.starts_with("cls_head.") || name.starts_with("cls_wide.") {
            return true;
        }
        if name.starts_with("lm_head.") || name.starts_with("mlm.") || name.starts_with("nsp.") {
            return false;
        }
        match mode {
            TrainBody::Frozen => false,
            TrainBody::Full => true,
            TrainBody::Top(n) => {
                let first = self.n_layers.saturating_sub(n);
                if name.starts_with("pooler.") || name.contains("ln_f.") {
                    return true;
                }
                name.split('.')
                    .collect::<Vec<_>>()
                    .windows(2)
                    .find(|w| w[0] == "blocks")
                    .and_then(|w| w[1].parse::<usize>().ok())
                    .is_some_and(|i| i >= first)
            }
        }
    }
}

fn new_heads(vm: &VarMap, d_model: usize, labels: usize, buckets: usize, device: &Device) -> Result<(candle_nn::Linear, Option<Tensor>)> {
    let vb = VarBuilder::from_varmap(vm, DType::F32, device);
    let head = candle_nn::linear(d_model, labels, vb.pp("cls_head"))?;
    let wide = if buckets > 0 { Some(vb.pp("cls_wide").get_with_hints((buckets, labels), "weight", candle_nn::Init::Const(0.0))?) } else { None };
    Ok((head, wide))
}

/// The wide part's features of a text: its distinct token unigrams and bigrams (the
/// sequence-start marker left out), hashed into `buckets`.
pub fn ngram_ids(ids: &[u32], skip: usize, buckets: usize) -> Vec<u32> {
    if buckets == 0 {
        return Vec::new();
    }
    let ids = &ids[skip.min(ids.len())..];
    let h = |key: &[u32]| {
        let bytes: Vec<u8> = key.iter().flat_map(|x| x.to_le_bytes()).collect();
        (xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, key.len() as u64) % buckets as u64) as u32
    };
    let mut out: Vec<u32> = ids.iter().map(|&t| h(&[t])).chain(ids.windows(2).map(h)).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Token ids of a text for classification: the sequence start, then the text, cut to `max_len`.
/// A BERT (RoBERTa) text is framed as transformers frames it, `[CLS] text [SEP]`
/// (`<s> text </s>`), the text cut so that the frame fits.
pub fn encode_text(tok: &Tokenizer, text: &str, max_len: usize) -> Vec<u32> {
    if tok.frames_encoder_texts() {
        let (mut ids, post) = tok.special_frame().unwrap_or_default();
        let room = max_len.max(ids.len() + post.len() + 1) - ids.len() - post.len();
        ids.extend(tok.encode(text).into_iter().take(room));
        ids.extend(post);
        return ids;
    }
    let mut ids = crate::prompt::bos(tok);
    ids.extend(tok.encode(text));
    ids.truncate(max_len.max(1));
    ids
}

fn pad_batch(seqs: &[&Vec<u32>], pad: u32, device: &Device) -> Result<(Tensor, Vec<usize>)> {
    let t = seqs.iter().map(|s| s.len()).max().unwrap_or(1);
    let mut v = vec![pad; seqs.len() * t];
    for (i, s) in seqs.iter().enumerate() {
        v[i * t..i * t + s.len()].copy_from_slice(s);
    }
    Ok((Tensor::from_vec(v, (seqs.len(), t), device)?, seqs.iter().map(|s| s.len()).collect()))
}

/// Logits (N, C) of many texts, in batches, without dropout. `skip`: leading ids that are
/// the sequence-start marker (left out of the wide part's n-grams).
pub fn classify_ids(c: &Classifier, ids: &[Vec<u32>], pad: u32, batch: usize, skip: usize) -> Result<Tensor> {
    let feats = features_of(c, ids, pad, batch)?;
    let grams: Vec<Vec<u32>> = ids.iter().map(|x| ngram_ids(x, skip, c.ngram_buckets())).collect();
    logits_in_batches(c, &feats, &grams, batch)
}

/// Logits of cached features, `batch` rows at a time (the wide part's selection matrix
/// grows with the batch).
fn logits_in_batches(c: &Classifier, feats: &Tensor, grams: &[Vec<u32>], batch: usize) -> Result<Tensor> {
    let n = grams.len();
    let mut parts = Vec::new();
    let mut start = 0;
    while start < n {
        let len = batch.max(1).min(n - start);
        let g: Vec<&[u32]> = grams[start..start + len].iter().map(Vec::as_slice).collect();
        parts.push(c.logits(&feats.narrow(0, start, len)?, &g)?);
        start += len;
    }
    Ok(Tensor::cat(&parts, 0)?)
}

fn features_of(c: &Classifier, ids: &[Vec<u32>], pad: u32, batch: usize) -> Result<Tensor> {
    let mut parts = Vec::new();
    // Sorting by length keeps padding small; the order is restored afterwards.
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    for chunk in order.chunks(batch.max(1)) {
        let seqs: Vec<&Vec<u32>> = chunk.iter().map(|&i| &ids[i]).collect();
        let (x, lens) = pad_batch(&seqs, pad, c.device())?;
        parts.push(c.features(&x, &lens, None)?.detach());
    }
    let sorted = Tensor::cat(&parts, 0)?;
    let mut inverse = vec![0u32; ids.len()];
    for (pos, &i) in order.iter().enumerate() {
        inverse[i] = pos as u32;
    }
    Ok(sorted.index_select(&Tensor::from_vec(inverse, ids.len(), c.device())?, 0)?)
}

/// Fine-tuning a classification head (and optionally the body).
pub struct ClassifyTask {
    pub clf: Classifier,
    pub mode: TrainBody,
    train_ids: Vec<Vec<u32>>,
    train_y: Vec<u32>,
    val_ids: Vec<Vec<u32>>,
    val_y: Vec<u32>,
    /// The wide part's n-gram ids of each text (empty without a wide part).
    train_grams: Vec<Vec<u32>>,
    val_grams: Vec<Vec<u32>>,
    /// Frozen body: features computed once.
    cached: Option<(Tensor, Tensor)>,
    pad: u32,
    /// Leading ids of every text that are the sequence-start marker.
    skip: usize,
    batch_size: usize,
    grad_accum: usize,
    seed: u64,
    /// Only the body's LoRA adapters and the head train (a decoder's head without its bias,
    /// as transformers' `score`).
    pub lora: bool,
    /// Under LoRA the pooler trains too (RoBERTa's `classifier.dense`).
    pub lora_pooler: bool,
}

impl ClassifyTask {
    #[allow(clippy::too_many_arguments)]
    pub fn new(clf: Classifier, mode: TrainBody, train_ids: Vec<Vec<u32>>, train_y: Vec<u32>, val_ids: Vec<Vec<u32>>, val_y: Vec<u32>, pad: u32, skip: usize, tc: &TrainConfig) -> Result<Self> {
        let cached = if mode == TrainBody::Frozen {
            eprintln!("frozen body: computing features of {} + {} texts once", train_ids.len(), val_ids.len());
            Some((features_of(&clf, &train_ids, pad, 64)?, features_of(&clf, &val_ids, pad, 64)?))
        } else {
            None
        };
        let grams = |ids: &[Vec<u32>]| ids.iter().map(|x| ngram_ids(x, skip, clf.ngram_buckets())).collect::<Vec<_>>();
        let (train_grams, val_grams) = (grams(&train_ids), grams(&val_ids));
        Ok(Self { clf, mode, train_ids, train_y, val_ids, val_y, train_grams, val_grams, cached, pad, skip, batch_size: tc.batch_size, grad_accum: tc.grad_accum, seed: tc.seed, lora: false, lora_pooler: false })
    }

    /// Predicted label indices and the mean cross-entropy on the held-out set.
    pub fn predict_val(&self) -> Result<(Vec<usize>, f64)> {
        let logits = match &self.cached {
            Some((_, v)) => logits_in_batches(&self.clf, v, &self.val_grams, 64)?,
            None => classify_ids(&self.clf, &self.val_ids, self.pad, 64, self.skip)?,
        };
        let y = Tensor::from_vec(self.val_y.clone(), self.val_y.len(), self.clf.device())?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()? as f64;
        let pred: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
        Ok((pred.into_iter().map(|p| p as usize).collect(), loss))
    }

    pub fn val_report(&self) -> Result<(ClassReport, f64)> {
        let (pred, loss) = self.predict_val()?;
        let truth: Vec<usize> = self.val_y.iter().map(|&y| y as usize).collect();
        Ok((ClassReport::new(&self.clf.labels, &truth, &pred), loss))
    }
}

impl TrainTask for ClassifyTask {
    fn micro_batch_loss(&self, step: usize, micro: usize) -> Result<(Tensor, usize)> {
        let idx = batch_rows(self.train_ids.len(), self.seed, step, micro, self.grad_accum, self.batch_size);
        let y: Vec<u32> = idx.iter().map(|&i| self.train_y[i]).collect();
        let y = Tensor::from_vec(y, idx.len(), self.clf.device())?;
        let (feats, tokens) = match &self.cached {
            Some((train, _)) => {
                let sel = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), self.clf.device())?;
                (train.index_select(&sel, 0)?, idx.len())
            }
            None => {
                let seqs: Vec<&Vec<u32>> = idx.iter().map(|&i| &self.train_ids[i]).collect();
                let (x, lens) = pad_batch(&seqs, self.pad, self.clf.device())?;
                let dropout = Some(step_seed(self.seed, step, micro, "dropout"));
                (self.clf.features(&x, &lens, dropout)?, lens.iter().sum())
            }
        };
        let grams: Vec<&[u32]> = idx.iter().map(|&i| self.train_grams[i].as_slice()).collect();
        let loss = candle_nn::loss::cross_entropy(&self.clf.logits(&feats, &grams)?, &y)?;
        Ok((loss, tokens))
    }

    fn evaluate(&self) -> Result<EvalResult> {
        let (r, loss) = self.val_report()?;
        let mut extra = BTreeMap::new();
        extra.insert("accuracy".to_string(), r.accuracy);
        extra.insert("macro_f1".to_string(), r.macro_f1);
        Ok(EvalResult { loss, bits_per_byte: f64::NAN, tokens: r.n, bytes: 0, extra })
    }

    fn trainable(&self, name: &str) -> bool {
        if self.lora {
            return lora::is_adapter(name)
                || name == "cls_head.weight"
                || (name == "cls_head.bias" && self.clf.kind == ModelKind::MaskedLm)
                || (self.lora_pooler && name.starts_with("pooler."));
        }
        self.clf.trainable(name, self.mode)
    }
}

/// `classify.toml` of a classifier run folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifyRunInfo {
    pub base: String,
    pub labels: Vec<String>,
    pub max_len: usize,
    pub config: ClassifyStageConfig,
}

impl ClassifyRunInfo {
    pub fn load(run_dir: &Path) -> Result<Self> {
        let p = run_dir.join("classify.toml");
        let text = std::fs::read_to_string(&p).with_context(|| format!("{} is not a classifier run (no classify.toml)", run_dir.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid {}", p.display()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifyTrainReport {
    pub train_body: String,
    pub train_examples: usize,
    pub val_examples: usize,
    pub before: ClassReport,
    pub after: ClassReport,
    /// The bag-of-words logistic regression (uni+bigrams, C = 1) on the same split.
    pub bow_baseline: Option<ClassReport>,
    pub data: ReadReport,
    pub outcome: TrainOutcome,
}

/// Train a classifier on the body of `base` into `out`.
pub fn run_classify_train(base: &Path, out: &Path, data: &[PathBuf], val: &[PathBuf], cfg: ClassifyStageConfig, quiet: bool, device: &Device) -> Result<ClassifyTrainReport> {
    let cc = &cfg.classify;
    let mode: TrainBody = cc.train_body.parse()?;
    let (train, val_recs, report) = train_val(data, val, cc)?;
    eprintln!("{}", report.summary());
    let labels = label_set(cc, &train);
    ensure!(labels.len() >= 2, "classification needs at least two labels, found {labels:?}");
    let train_y = label_ids(&train, &labels)?;
    let val_y = label_ids(&val_recs, &labels).context("in the held-out data")?;
    let tok = crate::prompt::load_tokenizer(base)?;
    cfg.check_lora()?;
    let (body_cfg, mut clf, vm) = Classifier::from_pretrained(base, labels.clone(), cc, cfg.train.seed, device)?;
    let peft_head = if cfg.lora.enabled() {
        check_lora_pooling(body_cfg.kind, clf.pooling)?;
        let encoder = if ferrolm_model::hf::is_hf_folder(base) && ferrolm_model::hf::read_config(base)?.family == ferrolm_model::hf::HfFamily::Roberta {
            lora::HfEncoder::Roberta
        } else {
            lora::HfEncoder::Bert
        };
        // the adapters must be expressible in PEFT's names (checked before training)
        lora::peft_target_modules_for(&body_cfg, &cfg.lora, encoder)?;
        let n = clf.body.prepare_lora(&vm, &cfg.lora, cfg.train.seed)?;
        let module = lora::PeftTask::seq_cls_module(&body_cfg).to_string();
        let mut tensors = vec![("weight".to_string(), clf.head.weight().clone())];
        if encoder == lora::HfEncoder::Roberta {
            // RobertaForSequenceClassification's head on the first position is
            // classifier.dense + tanh + classifier.out_proj: ferrolm's pooler and head. PEFT
            // trains that whole module (modules_to_save), so the pooler trains here too.
            let Body::MaskedLm(m) = &mut clf.body else { bail!("{}: a RoBERTa checkpoint that is not a masked LM", base.display()) };
            m.thaw_pooler(&vm)?;
            let data = vm.data().lock().expect("varmap lock");
            let var = |n: &str| data.get(n).map(|v| v.as_tensor().clone()).with_context(|| format!("the classifier has no variable {n}"));
            tensors = vec![
                ("dense.weight".into(), var("pooler.weight")?),
                ("dense.bias".into(), var("pooler.bias")?),
                ("out_proj.weight".into(), var("cls_head.weight")?),
                ("out_proj.bias".into(), var("cls_head.bias")?),
            ];
        } else if body_cfg.kind == ModelKind::MaskedLm {
            tensors.push(("bias".to_string(), clf.head.bias().context("the head has a bias")?.clone()));
        } else {
            // transformers' `score` on a decoder has no bias: keep ours at 0, frozen
            let data = vm.data().lock().expect("varmap lock");
            let b = data.get("cls_head.bias").context("the head has a bias")?;
            b.set(&b.as_tensor().zeros_like()?)?;
        }
        let head_desc = if encoder == lora::HfEncoder::Roberta { "the head (RoBERTa's classifier.dense, ferrolm's pooler, and out_proj)" } else { "the head" };
        eprintln!("LoRA rank {} (alpha {}) on {:?}: {n} adapter parameters and {head_desc} train; the body's weights stay frozen", cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets);
        Some(lora::PeftTask { seq_cls: Some(lora::SeqClsHead { module, tensors }), encoder })
    } else {
        None
    };
    let max_len = if cc.max_len == 0 { body_cfg.max_seq_len } else { cc.max_len.min(body_cfg.max_seq_len) };
    let enc = |recs: &[LabelledText]| recs.iter().map(|r| encode_text(&tok, &r.text, max_len)).collect::<Vec<_>>();
    let (train_ids, val_ids) = (enc(&train), enc(&val_recs));
    eprintln!("{} training texts, {} held out, labels {labels:?}, body {}", train_ids.len(), val_ids.len(), cc.train_body);

    std::fs::create_dir_all(out)?;
    let out_cfg = RunConfig::transformer(body_cfg.clone(), cfg.train.clone(), Default::default());
    ferrolm_common::write_atomic(out.join("config.toml"), out_cfg.to_toml())?;
    let info = ClassifyRunInfo { base: base.display().to_string(), labels: labels.clone(), max_len, config: cfg.clone() };
    ferrolm_common::write_atomic(out.join("classify.toml"), toml::to_string_pretty(&info)?)?;
    tok.save(&out.join("tokenizer.json"))?;
    ferrolm_common::write_atomic(out.join("data_report.json"), serde_json::to_vec_pretty(&report)?)?;

    let mut task = ClassifyTask::new(clf, mode, train_ids.clone(), train_y, val_ids, val_y, crate::prompt::pad_id(&tok), crate::prompt::bos(&tok).len(), &cfg.train)?;
    task.lora = cfg.lora.enabled();
    task.lora_pooler = peft_head.as_ref().is_some_and(|h| h.encoder == lora::HfEncoder::Roberta);
    let (before, _) = task.val_report()?;
    let adapter_vars = vm.clone();
    let mut trainer = Trainer::from_task(cfg.train.clone(), out, vm, Box::new(task))?;
    trainer.quiet = quiet;
    trainer.title = format!("ferrolm classify ({}{})", cc.train_body, if cfg.lora.enabled() { ", LoRA" } else { "" });
    let outcome = trainer.run()?;
    if let Some(head) = &peft_head {
        // PEFT SEQ_CLS: the adapters and the head (modules_to_save), for
        // AutoModelForSequenceClassification + PeftModel.from_pretrained on the base
        lora::write_peft_for(&out.join("adapter"), &body_cfg, &cfg.lora, &adapter_vars, &base.display().to_string(), head)?;
    }
    eprintln!("{}", describe_eval(outcome.val.as_ref().context("no final evaluation")?));
    // Re-load the saved classifier: the figures are those of the folder's weights.
    let (clf, tok, info) = Classifier::load(out, device)?;
    let after = evaluate_texts(&clf, &tok, info.max_len, &val_recs)?;
    ferrolm_common::write_atomic(out.join("eval.json"), serde_json::to_vec_pretty(&after)?)?;
    ferrolm_common::write_atomic(out.join("confusion.svg"), after.confusion_svg(&format!("held-out confusion matrix ({})", cc.train_body)))?;
    // The bar a user will compare with: bag-of-words on the same split.
    let bow_baseline = if cc.compare_bow {
        let m = BowModel::train(&train, &labels, &BowConfig::default())?;
        let r = m.evaluate(&val_recs)?;
        if after.accuracy < r.accuracy {
            eprintln!(
                "note: the classifier's held-out accuracy {:.4} is below the bag-of-words logistic regression's {:.4} on the same split (`ferrolm classify baseline`)",
                after.accuracy, r.accuracy
            );
        }
        ferrolm_common::write_atomic(out.join("bow_baseline.json"), serde_json::to_vec_pretty(&r)?)?;
        Some(r)
    } else {
        None
    };
    Ok(ClassifyTrainReport { train_body: cc.train_body.clone(), train_examples: train_ids.len(), val_examples: val_recs.len(), before, after, bow_baseline, data: report, outcome })
}

/// Accuracy, macro-F1 and confusion of a classifier on labelled texts.
pub fn evaluate_texts(clf: &Classifier, tok: &Tokenizer, max_len: usize, recs: &[LabelledText]) -> Result<ClassReport> {
    let truth: Vec<usize> = label_ids(recs, &clf.labels)?.into_iter().map(|y| y as usize).collect();
    let ids: Vec<Vec<u32>> = recs.iter().map(|r| encode_text(tok, &r.text, max_len)).collect();
    let pred: Vec<u32> = classify_ids(clf, &ids, crate::prompt::pad_id(tok), 64, crate::prompt::bos(tok).len())?.argmax(D::Minus1)?.to_vec1()?;
    Ok(ClassReport::new(&clf.labels, &truth, &pred.into_iter().map(|p| p as usize).collect::<Vec<_>>()))
}

/// Class probabilities of texts, one row per text in label order.
pub fn predict_texts(clf: &Classifier, tok: &Tokenizer, max_len: usize, texts: &[String]) -> Result<Vec<Vec<f32>>> {
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| encode_text(tok, t, max_len)).collect();
    let logits = classify_ids(clf, &ids, crate::prompt::pad_id(tok), 64, crate::prompt::bos(tok).len())?;
    Ok(candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec2()?)
}
