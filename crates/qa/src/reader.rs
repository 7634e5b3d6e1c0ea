//! The extractive reader: a start/end span head (one linear layer, d_model → 2) on the
//! masked LM's encoder output, as BERT's SQuAD model. Answers are chosen as in BERT's
//! `run_squad.py` for SQuAD 2.0: the best span (start ≤ end, at most `max_answer_tokens`
//! long, inside the context, starting where the window gives that token the most context)
//! by start + end logit, against the null span's score at `[CLS]`; the question gets no
//! answer when `null − best > threshold` (the threshold is tuned on held-out questions).

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use ferrolm_model::attention::{MaskSpec, PAD_SEGMENT};
use ferrolm_model::{AnyModel, MaskedLm, TransformerConfig};
use ferrolm_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};

use crate::windows::{self, EncodedContext, Window, WindowOptions};

/// VarMap prefix of the span head.
pub const HEAD: &str = "qa_head";
/// Added to the logits of positions that can never be an answer's start or end (question,
/// markers, padding), so they take no probability.
const EXCLUDED: f64 = -1e4;

/// The reader: the masked LM's body and the span head.
#[derive(Debug, Clone)]
pub struct SpanReader {
    pub body: MaskedLm,
    pub head: candle_nn::Linear,
}

/// The trained body of `base` — a ferrolm masked-LM run or a Hugging Face BERT-family
/// folder (anything `load_model` reads as a masked LM) — with its variables.
pub fn load_body(base: &Path, device: &Device) -> Result<(TransformerConfig, MaskedLm, VarMap)> {
    // the kind first: another model's weights would fail to load with a less useful message
    let spec = ferrolm_model::registry::read_spec(base)?;
    let kind = spec.require_transformer("an extractive reader").map_err(anyhow::Error::msg)?.kind;
    if kind != ferrolm_model::ModelKind::MaskedLm {
        bail!("{}: the span reader needs a masked LM body (model.kind = \"masked_lm\", or a BERT-family folder), this model is a {kind:?} Transformer", base.display());
    }
    let loaded = ferrolm_model::load_model(base, device)?;
    let cfg = loaded.spec.require_transformer("an extractive reader").map_err(anyhow::Error::msg)?.clone();
    match loaded.model {
        AnyModel::MaskedLm(m) => Ok((cfg, m, loaded.varmap)),
        other => bail!("{}: the span reader needs a masked LM body (model.kind = \"masked_lm\", or a BERT-family folder), this model is {}", base.display(), other.name()),
    }
}

/// Build a masked LM run folder's body (weights not loaded) in a new VarMap.
pub fn build_body(run_dir: &Path, device: &Device) -> Result<(TransformerConfig, MaskedLm, VarMap)> {
    let spec = ferrolm_model::registry::read_spec(run_dir)?;
    let cfg = spec.require_transformer("an extractive reader").map_err(anyhow::Error::msg)?.clone();
    let (model, vm) = AnyModel::build_fresh(&spec, device)?;
    match model {
        AnyModel::MaskedLm(m) => Ok((cfg, m, vm)),
        other => bail!(
            "{}: the span reader needs a masked LM body (model.kind = \"masked_lm\"), this run is {}",
            run_dir.display(),
            other.name()
        ),
    }
}

impl SpanReader {
    /// A new head on `body`, its variables in `vm`, initialised from `seed` (U(±1/√d), as
    /// PyTorch's `nn.Linear`, but seeded so that one seed gives one run). Loading a trained
    /// reader overwrites it.
    pub fn new(body: MaskedLm, vm: &VarMap, seed: u64) -> Result<Self> {
        let d = body.config().d_model;
        let dev = body.device().clone();
        let head = candle_nn::linear(d, 2, VarBuilder::from_varmap(vm, DType::F32, &dev).pp(HEAD))?;
        ferrolm_model::init::seed_linear(vm, HEAD, d, seed)?;
        Ok(Self { body, head })
    }

    pub fn device(&self) -> &Device {
        self.body.device()
    }

    /// Start and end logits (B, T) each of right-padded windows; positions that cannot
    /// start or end an answer get [`EXCLUDED`] added (only `[CLS]` and context tokens stay).
    pub fn span_logits(&self, batch: &[&Window], pad: u32, dropout_seed: Option<u64>) -> Result<(Tensor, Tensor)> {
        let dev = self.device();
        let t = batch.iter().map(|w| w.ids.len()).max().unwrap_or(1);
        let b = batch.len();
        let mut ids = vec![pad; b * t];
        let mut types = vec![0u32; b * t];
        let mut segs = vec![PAD_SEGMENT; b * t];
        let mut allowed = vec![EXCLUDED as f32; b * t];
        for (i, w) in batch.iter().enumerate() {
            let row = i * t;
            ids[row..row + w.ids.len()].copy_from_slice(&w.ids);
            types[row..row + w.ids.len()].copy_from_slice(&w.types);
            segs[row..row + w.ids.len()].iter_mut().for_each(|s| *s = 0);
            allowed[row] = 0.0;
            allowed[row + w.ctx_pos..row + w.ctx_pos + w.ctx_len].iter_mut().for_each(|a| *a = 0.0);
        }
        let ids = Tensor::from_vec(ids, (b, t), dev)?;
        let mask = MaskSpec::bidirectional().with_segments(segs);
        let h = if self.body.has_segments() {
            // a body with one token type (RoBERTa) gives every position type 0
            let types = if self.body.config().token_types() < 2 { vec![0; types.len()] } else { types };
            let types = Tensor::from_vec(types, (b, t), dev)?;
            self.body.hidden_segments(&ids, Some(&types), &mask, dropout_seed)?
        } else {
            self.body.hidden(&ids, &mask, dropout_seed)?
        };
        let logits = self.head.forward(&h)?; // (B, T, 2)
        let allowed = Tensor::from_vec(allowed, (b, t), dev)?;
        let start = (logits.narrow(2, 0, 1)?.squeeze(2)? + &allowed)?;
        let end = (logits.narrow(2, 1, 1)?.squeeze(2)? + &allowed)?;
        Ok((start, end))
    }

    /// Mean of the start and end cross-entropies against the windows' targets.
    pub fn loss(&self, batch: &[&Window], pad: u32, dropout_seed: Option<u64>) -> Result<Tensor> {
        let (s, e) = self.span_logits(batch, pad, dropout_seed)?;
        let dev = self.device();
        let ys = Tensor::from_vec(batch.iter().map(|w| w.start as u32).collect::<Vec<_>>(), batch.len(), dev)?;
        let ye = Tensor::from_vec(batch.iter().map(|w| w.end as u32).collect::<Vec<_>>(), batch.len(), dev)?;
        let ls = candle_nn::loss::cross_entropy(&s, &ys)?;
        let le = candle_nn::loss::cross_entropy(&e, &ye)?;
        Ok(((ls + le)? * 0.5)?)
    }

    /// Start and end logits of every window, without dropout, `batch` windows at a time.
    pub fn window_logits(&self, ws: &[Window], pad: u32, batch: usize) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
        let mut out = Vec::with_capacity(ws.len());
        for chunk in ws.chunks(batch.max(1)) {
            let refs: Vec<&Window> = chunk.iter().collect();
            let (s, e) = self.span_logits(&refs, pad, None)?;
            let (s, e): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (s.to_vec2()?, e.to_vec2()?);
            for ((w, mut s), mut e) in chunk.iter().zip(s).zip(e) {
                s.truncate(w.ids.len());
                e.truncate(w.ids.len());
                out.push((s, e));
            }
        }
        Ok(out)
    }
}

/// The reader's inference settings, saved in the run folder's `qa.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReaderConfig {
    /// Tokens per window; 0 = the model's max_seq_len.
    pub max_len: usize,
    pub max_query_len: usize,
    pub doc_stride: usize,
    /// Longest answer, in tokens.
    pub max_answer_tokens: usize,
    /// Best starts and ends considered per window.
    pub n_best: usize,
    /// No answer when null score − best span score exceeds this.
    pub null_threshold: f64,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        Self { max_len: 0, max_query_len: 32, doc_stride: 48, max_answer_tokens: 30, n_best: 20, null_threshold: 0.0 }
    }
}

impl ReaderConfig {
    pub fn windows(&self, model_max: usize) -> WindowOptions {
        let max_len = if self.max_len == 0 { model_max } else { self.max_len.min(model_max) };
        WindowOptions { max_len, max_query_len: self.max_query_len, doc_stride: self.doc_stride }
    }
}

/// The reader's verdict on one question over one or more contexts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpanAnswer {
    /// The best span's text ("" when there is none at all, e.g. empty contexts).
    pub text: String,
    /// Which context (of those given) it comes from.
    pub context: usize,
    /// Character range in that context.
    pub char_start: usize,
    pub char_end: usize,
    /// start + end logit of the best span, and of the null span (the lowest over windows).
    pub score: f64,
    pub null_score: f64,
}

impl SpanAnswer {
    /// null − best: the reader says "no answer" when this exceeds the threshold.
    pub fn null_margin(&self) -> f64 {
        self.null_score - self.score
    }
}

/// The best span and the null score of one question over windows of its contexts
/// (`windows[i]` belongs to context `window_context[i]`).
pub fn best_span(
    contexts: &[(&str, &EncodedContext)],
    windows: &[Window],
    window_context: &[usize],
    logits: &[(Vec<f32>, Vec<f32>)],
    cfg: &ReaderConfig,
) -> SpanAnswer {
    let mut best: Option<(f64, usize, usize, usize)> = None; // score, context, first word, last word
    let mut null = f64::INFINITY;
    for ((w, &ci), (s, e)) in windows.iter().zip(window_context).zip(logits) {
        null = null.min(f64::from(s[0] + e[0]));
        let ctx = contexts[ci].1;
        let top = |v: &[f32]| {
            let mut idx: Vec<usize> = (w.ctx_pos..w.ctx_pos + w.ctx_len).collect();
            idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
            idx.truncate(cfg.n_best.max(1));
            idx
        };
        for &a in &top(s) {
            if !w.max_context[a - w.ctx_pos] {
                continue;
            }
            for &b in &top(e) {
                if b < a || b - a + 1 > cfg.max_answer_tokens {
                    continue;
                }
                let score = f64::from(s[a] + e[b]);
                if best.is_none_or(|x| score > x.0) {
                    let ta = w.ctx_token_start + a - w.ctx_pos;
                    let tb = w.ctx_token_start + b - w.ctx_pos;
                    best = Some((score, ci, ctx.token_word[ta], ctx.token_word[tb]));
                }
            }
        }
    }
    if null.is_infinite() {
        null = 0.0;
    }
    match best {
        Some((score, ci, wa, wb)) => {
            let (text, ctx) = contexts[ci];
            let (a, b) = (&ctx.words[wa], &ctx.words[wb]);
            SpanAnswer { text: text[a.byte_start..b.byte_end].to_string(), context: ci, char_start: a.char_start, char_end: b.char_end, score, null_score: null }
        }
        None => SpanAnswer { text: String::new(), context: 0, char_start: 0, char_end: 0, score: f64::NEG_INFINITY, null_score: null },
    }
}

/// A trained reader run folder: body + head, tokenizer, settings.
pub struct LoadedReader {
    pub reader: SpanReader,
    pub tok: Tokenizer,
    pub info: ReaderRunInfo,
    pub model_max: usize,
}

/// `qa.toml` of a reader run folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReaderRunInfo {
    pub base: String,
    pub reader: ReaderConfig,
    pub stage: crate::train::QaStageConfig,
}

impl ReaderRunInfo {
    pub const FILE: &'static str = "qa.toml";

    pub fn load(run_dir: &Path) -> Result<Self> {
        let p = run_dir.join(Self::FILE);
        let text = std::fs::read_to_string(&p).with_context(|| format!("{} is not a reader run folder (no {})", run_dir.display(), Self::FILE))?;
        toml::from_str(&text).with_context(|| format!("invalid {}", p.display()))
    }

    pub fn save(&self, run_dir: &Path) -> Result<()> {
        ferrolm_common::write_atomic(run_dir.join(Self::FILE), toml::to_string_pretty(self)?)?;
        Ok(())
    }
}

/// Whether `dir` is a reader run folder (has `qa.toml`).
pub fn is_reader(dir: &Path) -> bool {
    dir.join(ReaderRunInfo::FILE).is_file()
}

impl LoadedReader {
    pub fn load(run_dir: &Path, device: &Device) -> Result<Self> {
        let info = ReaderRunInfo::load(run_dir)?;
        let (cfg, body, vm) = build_body(run_dir, device)?;
        let reader = SpanReader::new(body, &vm, 0)?;
        let ckpt = ferrolm_model::registry::latest_checkpoint(run_dir)?;
        ferrolm_model::registry::load_weights(&vm, &ckpt.join("model.safetensors"))?;
        let tok = ferrolm_finetune::prompt::load_tokenizer(run_dir)?;
        Ok(Self { reader, tok, info, model_max: cfg.max_seq_len })
    }

    /// Answer `question` from `contexts` (one or more passages): the best span over all of
    /// them, and the null score.
    pub fn answer(&self, question: &str, contexts: &[&str]) -> Result<SpanAnswer> {
        let markers = windows::markers(&self.tok)?;
        let o = self.info.reader.windows(self.model_max);
        let q = self.tok.encode(question);
        let enc: Vec<EncodedContext> = contexts.iter().map(|c| windows::encode_context(&self.tok, c)).collect();
        let mut ws = Vec::new();
        let mut owner = Vec::new();
        for (ci, e) in enc.iter().enumerate() {
            if e.ids.is_empty() {
                continue;
            }
            let w = windows::make_windows(0, &q, e, None, markers, &o)?;
            owner.extend(std::iter::repeat_n(ci, w.len()));
            ws.extend(w);
        }
        let logits = self.reader.window_logits(&ws, ferrolm_finetune::prompt::pad_id(&self.tok), 32)?;
        let pairs: Vec<(&str, &EncodedContext)> = contexts.iter().copied().zip(enc.iter()).collect();
        Ok(best_span(&pairs, &ws, &owner, &logits, &self.info.reader))
    }

    /// The answer text under the run's threshold: "" for no answer.
    pub fn decide(&self, a: &SpanAnswer) -> String {
        decide(a, self.info.reader.null_threshold)
    }
}

/// The prediction under `threshold`: the span, or "" when the null span wins by more.
pub fn decide(a: &SpanAnswer, threshold: f64) -> String {
    if a.text.is_empty() || a.null_margin() > threshold {
        String::new()
    } else {
        a.text.clone()
    }
}
