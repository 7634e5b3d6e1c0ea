//! "Model + objective → loss on a batch" for every `model.kind`, so one training loop
//! serves all of them. A batch of plain-text windows becomes, per kind:
//!
//! - causal: next-token targets at every position;
//! - prefix: a random (seeded) prefix per row, `AttnMask::Prefix`, targets outside it;
//! - encoder_decoder: T5 span corruption (input → encoder, sentinel spans → decoder);
//! - masked_lm: BERT masking, loss at the chosen positions.
//!
//! `logits_and_targets` returns the scored rows of logits (N, vocab) and their targets
//! (N): the loss is then one cross-entropy call, which the trainer can swap for a fused one.
//! Randomness comes from the generator the caller seeds from (seed, step, micro, purpose).

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use ferrolm_model::attention::{AttnMask, MaskSpec};
use ferrolm_model::{AnyModel, EncoderDecoder, ModelKind};
use rand::Rng;

use crate::data::TokenSource;
use crate::objectives::{apply_span_corruption, mlm_mask, nsp_example, prefix_split_point, span_noise_mask, DocIndex, MlmMasking, PrefixSplit, SpanCorruption};

/// Token ids the objectives need from the tokenizer.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskTokens {
    /// `<|mask|>` (masked LM).
    pub mask: u32,
    /// `<|extra_0|>`, `<|extra_1|>`, … (span corruption).
    pub sentinels: Vec<u32>,
    /// First token of every decoder input (T5 uses pad; we use end-of-text, id 0).
    pub decoder_start: u32,
    /// Ids below this are special: never masked, never drawn as random replacements.
    pub first_ordinary: u32,
    /// Ends the input of an input/target pair (`<|end|>`): "input <sep> target".
    pub sep: u32,
    /// Fills the rows of a pair batch past their length (never attended, never scored).
    pub pad: u32,
    /// Closes every target of a pair (`<|endoftext|>`), so generation knows where to stop.
    pub eot: u32,
}

impl TaskTokens {
    /// The ids from a ferrolm tokenizer, which registers its special tokens first
    /// (`special::defaults`), so they occupy the lowest ids.
    pub fn from_tokenizer(tok: &ferrolm_tokenizer::Tokenizer) -> Result<Self> {
        use ferrolm_tokenizer::special;
        let id = |name: &str| tok.token_id(name).ok_or_else(|| anyhow::anyhow!("the tokenizer lacks the special token {name}"));
        let sentinels = (0..special::NUM_SENTINELS).map(|i| id(&special::sentinel(i))).collect::<Result<Vec<_>>>()?;
        let specials = tok.special_ids();
        let first_ordinary = specials.iter().max().map(|m| m + 1).unwrap_or(0);
        if (0..first_ordinary).any(|i| !tok.is_special(i)) {
            bail!("the tokenizer's special tokens are not the lowest ids; the objectives need them to be");
        }
        let eot = id(special::EOT)?;
        Ok(Self { mask: id(special::MASK)?, sentinels, decoder_start: eot, first_ordinary, sep: id(special::END)?, pad: id(special::PAD)?, eot })
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ObjectiveConfig {
    pub prefix: PrefixSplit,
    pub span: SpanCorruption,
    pub mlm: MlmMasking,
    /// Masked LM: train on sentence pairs with next-sentence prediction as well.
    pub nsp: bool,
}

/// One batch, ready for the model of its kind.
pub enum TaskBatch {
    Decoder { inputs: Tensor, mask: MaskSpec, scored: Tensor, targets: Tensor },
    /// `src_segments`: per source position 0, or `PAD_SEGMENT` for padding (pair batches).
    EncoderDecoder { src: Tensor, src_segments: Option<Vec<u32>>, tgt_in: Tensor, scored: Tensor, targets: Tensor },
    /// `segments`: per position 0 or 1 (sentence pairs only). `nsp_labels`: per row 0 (B
    /// follows A) or 1 (B is from another document), for next-sentence prediction.
    MaskedLm { inputs: Tensor, scored: Tensor, targets: Tensor, segments: Option<Tensor>, nsp_labels: Option<Tensor> },
}

/// Build a batch of `kind` from windows of `seq_len + 1` tokens at `offsets`.
#[allow(clippy::too_many_arguments)]
pub fn make_task_batch(
    kind: ModelKind,
    src: &dyn TokenSource,
    offsets: &[usize],
    seq_len: usize,
    obj: &ObjectiveConfig,
    tok: &TaskTokens,
    vocab: u32,
    rng: &mut impl Rng,
    device: &Device,
) -> Result<TaskBatch> {
    let b = offsets.len();
    let mut window = vec![0u32; seq_len + 1];
    let (mut x, mut y, mut scored, mut prefixes) = (Vec::new(), Vec::new(), Vec::<u32>::new(), Vec::new());
    let (mut tgt_in, mut tgt_len, mut src_len) = (Vec::new(), 0usize, 0usize);
    for (row, &o) in offsets.iter().enumerate() {
        src.read(o, &mut window);
        match kind {
            ModelKind::Causal | ModelKind::Prefix => {
                let p = if kind == ModelKind::Prefix { prefix_split_point(seq_len, &obj.prefix, rng).map_err(anyhow::Error::msg)? } else { 0 };
                prefixes.push(p);
                x.extend_from_slice(&window[..seq_len]);
                for t in 0..seq_len {
                    if t + 1 >= p {
                        scored.push((row * seq_len + t) as u32);
                        y.push(window[t + 1]);
                    }
                }
            }
            ModelKind::EncoderDecoder => {
                let w = &window[..seq_len];
                let m = span_noise_mask(w.len(), &obj.span, rng);
                let (inp, tgt) = apply_span_corruption(w, &m, &tok.sentinels).map_err(anyhow::Error::msg)?;
                // lengths depend only on seq_len and the parameters, so rows line up
                if row > 0 && (inp.len() != src_len || tgt.len() != tgt_len) {
                    bail!("span corruption produced rows of different lengths");
                }
                (src_len, tgt_len) = (inp.len(), tgt.len());
                x.extend_from_slice(&inp);
                tgt_in.push(tok.decoder_start);
                tgt_in.extend_from_slice(&tgt[..tgt.len() - 1]);
                for (t, &id) in tgt.iter().enumerate() {
                    scored.push((row * tgt.len() + t) as u32);
                    y.push(id);
                }
            }
            ModelKind::MaskedLm => {
                let w = &window[..seq_len];
                let ex = mlm_mask(w, |t| t >= tok.first_ordinary, &obj.mlm, tok.mask, tok.first_ordinary..vocab, rng);
                x.extend_from_slice(&ex.input);
                for (i, orig) in ex.labels {
                    scored.push((row * seq_len + i) as u32);
                    y.push(orig);
                }
            }
        }
    }
    let n = scored.len();
    let scored = Tensor::from_vec(scored, n, device)?;
    let targets = Tensor::from_vec(y, n, device)?;
    Ok(match kind {
        ModelKind::Causal => TaskBatch::Decoder { inputs: Tensor::from_vec(x, (b, seq_len), device)?, mask: MaskSpec::causal(), scored, targets },
        ModelKind::Prefix => TaskBatch::Decoder {
            inputs: Tensor::from_vec(x, (b, seq_len), device)?,
            mask: MaskSpec { kind: AttnMask::Prefix(prefixes), q_segments: None, k_segments: None },
            scored,
            targets,
        },
        ModelKind::EncoderDecoder => TaskBatch::EncoderDecoder {
            src: Tensor::from_vec(x, (b, src_len), device)?,
            src_segments: None,
            tgt_in: Tensor::from_vec(tgt_in, (b, tgt_len), device)?,
            scored,
            targets,
        },
        ModelKind::MaskedLm => TaskBatch::MaskedLm { inputs: Tensor::from_vec(x, (b, seq_len), device)?, scored, targets, segments: None, nsp_labels: None },
    })
}

/// A masked-LM batch of `rows` sentence pairs (`[CLS] A [SEP] B [SEP]`, `seq_len` tokens
/// each) for masked LM + next-sentence prediction: pairs from [`nsp_example`], then BERT
/// masking of the ordinary tokens (`[CLS]` and `[SEP]` are special, never masked).
/// `[CLS]` is `<|endoftext|>` and `[SEP]` is `<|end|>` (the ferrolm tokenizer's specials).
#[allow(clippy::too_many_arguments)]
pub fn make_nsp_batch(
    src: &dyn TokenSource,
    index: &DocIndex,
    rows: usize,
    seq_len: usize,
    obj: &ObjectiveConfig,
    tok: &TaskTokens,
    vocab: u32,
    rng: &mut impl Rng,
    device: &Device,
) -> Result<TaskBatch> {
    let (mut x, mut seg, mut labels, mut scored, mut y) = (Vec::new(), Vec::new(), Vec::new(), Vec::<u32>::new(), Vec::new());
    for row in 0..rows {
        let ex = nsp_example(src, index, seq_len, tok.eot, tok.sep, rng).map_err(anyhow::Error::msg)?;
        let m = mlm_mask(&ex.tokens, |t| t >= tok.first_ordinary, &obj.mlm, tok.mask, tok.first_ordinary..vocab, rng);
        x.extend_from_slice(&m.input);
        seg.extend_from_slice(&ex.segments);
        labels.push(ex.label);
        for (i, orig) in m.labels {
            scored.push((row * seq_len + i) as u32);
            y.push(orig);
        }
    }
    let n = scored.len();
    Ok(TaskBatch::MaskedLm {
        inputs: Tensor::from_vec(x, (rows, seq_len), device)?,
        scored: Tensor::from_vec(scored, n, device)?,
        targets: Tensor::from_vec(y, n, device)?,
        segments: Some(Tensor::from_vec(seg, (rows, seq_len), device)?),
        nsp_labels: Some(Tensor::from_vec(labels, rows, device)?),
    })
}

/// One input/target pair, tokenized (the target without its closing end-of-text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairExample {
    pub input: Vec<u32>,
    pub target: Vec<u32>,
}

/// Build a batch of input/target pairs for a generating kind; rows are right-padded to
/// the longest row, and only target tokens are scored.
///
/// - causal: `input <sep> target <eot>` under a causal mask;
/// - prefix: the same tokens, `input <sep>` is the bidirectional prefix;
/// - encoder_decoder: `input <sep>` → encoder (padding masked by segment ids), decoder
///   input `<start> target`, decoder targets `target <eot>`.
///
/// The scored targets are identical for all three kinds: every target token and the
/// closing `<eot>`, each predicted from the full input and the earlier target tokens.
pub fn make_pair_batch(kind: ModelKind, pairs: &[&PairExample], tok: &TaskTokens, device: &Device) -> Result<TaskBatch> {
    let b = pairs.len();
    if b == 0 {
        bail!("a pair batch needs at least one pair");
    }
    let (mut scored, mut y) = (Vec::<u32>::new(), Vec::<u32>::new());
    match kind {
        ModelKind::Causal | ModelKind::Prefix => {
            // x = input <sep> target (the model's inputs), next tokens = ... target <eot>
            let t = pairs.iter().map(|p| p.input.len() + p.target.len() + 1).max().unwrap_or(0);
            let mut x = vec![tok.pad; b * t];
            let mut prefixes = Vec::with_capacity(b);
            for (row, p) in pairs.iter().enumerate() {
                let seq: Vec<u32> = p.input.iter().copied().chain([tok.sep]).chain(p.target.iter().copied()).chain([tok.eot]).collect();
                let n = seq.len() - 1;
                x[row * t..row * t + n].copy_from_slice(&seq[..n]);
                // position input.len() holds <sep> and predicts the first target token
                for pos in p.input.len()..n {
                    scored.push((row * t + pos) as u32);
                    y.push(seq[pos + 1]);
                }
                prefixes.push(p.input.len() + 1);
            }
            let mask = if kind == ModelKind::Prefix {
                MaskSpec { kind: AttnMask::Prefix(prefixes), q_segments: None, k_segments: None }
            } else {
                MaskSpec::causal()
            };
            let n = scored.len();
            Ok(TaskBatch::Decoder {
                inputs: Tensor::from_vec(x, (b, t), device)?,
                mask,
                scored: Tensor::from_vec(scored, n, device)?,
                targets: Tensor::from_vec(y, n, device)?,
            })
        }
        ModelKind::EncoderDecoder => {
            let s = pairs.iter().map(|p| p.input.len() + 1).max().unwrap_or(0);
            let t = pairs.iter().map(|p| p.target.len() + 1).max().unwrap_or(0);
            let mut src = vec![tok.pad; b * s];
            let mut seg = vec![ferrolm_model::attention::PAD_SEGMENT; b * s];
            let mut tgt_in = vec![tok.pad; b * t];
            for (row, p) in pairs.iter().enumerate() {
                for (i, &id) in p.input.iter().chain([&tok.sep]).enumerate() {
                    src[row * s + i] = id;
                    seg[row * s + i] = 0;
                }
                tgt_in[row * t] = tok.decoder_start;
                tgt_in[row * t + 1..row * t + 1 + p.target.len()].copy_from_slice(&p.target);
                for (pos, &id) in p.target.iter().chain([&tok.eot]).enumerate() {
                    scored.push((row * t + pos) as u32);
                    y.push(id);
                }
            }
            let n = scored.len();
            Ok(TaskBatch::EncoderDecoder {
                src: Tensor::from_vec(src, (b, s), device)?,
                src_segments: Some(seg),
                tgt_in: Tensor::from_vec(tgt_in, (b, t), device)?,
                scored: Tensor::from_vec(scored, n, device)?,
                targets: Tensor::from_vec(y, n, device)?,
            })
        }
        ModelKind::MaskedLm => bail!("model.kind = masked_lm trains on plain text (masked tokens), not on input/target pairs"),
    }
}

/// What a batch produces: the scored token logits (N, vocab) and their targets (N), and
/// for next-sentence prediction the pair logits (rows, 2) and labels (rows).
pub struct BatchOutputs {
    pub logits: Tensor,
    pub targets: Tensor,
    pub nsp: Option<(Tensor, Tensor)>,
}

impl BatchOutputs {
    /// The training loss: token cross-entropy, plus the next-sentence cross-entropy when
    /// the batch has sentence pairs (BERT's sum of the two).
    pub fn loss(&self) -> Result<Tensor> {
        let mlm = ferrolm_kernels::cross_entropy(&self.logits, &self.targets)?;
        Ok(match &self.nsp {
            Some((l, y)) => (mlm + ferrolm_kernels::cross_entropy(l, y)?)?,
            None => mlm,
        })
    }
}

/// What a model computes on a [`TaskBatch`] of its kind (implemented for
/// [`AnyModel`]: the Transformer shapes; the window and recurrent LMs train through
/// `LmTask` instead).
pub trait TaskModel {
    /// Every output of a batch, next-sentence logits included.
    fn outputs(&self, batch: &TaskBatch, dropout_seed: Option<u64>) -> Result<BatchOutputs>;

    /// Scored logits (N, vocab) and targets (N) of a batch; the loss is
    /// `cross_entropy(logits, targets)` (next-sentence outputs, if any, are dropped: see
    /// [`TaskModel::outputs`]).
    fn logits_and_targets(&self, batch: &TaskBatch, dropout_seed: Option<u64>) -> Result<(Tensor, Tensor)> {
        let o = self.outputs(batch, dropout_seed)?;
        Ok((o.logits, o.targets))
    }
}

impl TaskModel for AnyModel {
    fn outputs(&self, batch: &TaskBatch, dropout_seed: Option<u64>) -> Result<BatchOutputs> {
        if let (AnyModel::MaskedLm(m), TaskBatch::MaskedLm { inputs, scored, targets, segments, nsp_labels }) = (self, batch) {
            let h = m.hidden_segments(inputs, segments.as_ref(), &MaskSpec::bidirectional(), dropout_seed)?;
            let nsp = match nsp_labels {
                Some(y) => Some((m.nsp_logits(&m.pooled(&h)?)?, y.clone())),
                None => None,
            };
            let d = h.dim(2)?;
            let logits = m.mlm_logits(&h.reshape(((), d))?.index_select(scored, 0)?)?;
            return Ok(BatchOutputs { logits, targets: targets.clone(), nsp });
        }
        let (logits, targets) = token_logits(self, batch, dropout_seed)?;
        Ok(BatchOutputs { logits, targets, nsp: None })
    }
}

fn token_logits(model: &AnyModel, batch: &TaskBatch, dropout_seed: Option<u64>) -> Result<(Tensor, Tensor)> {
        let flat = |h: Tensor| -> candle_core::Result<Tensor> {
            let d = h.dim(2)?;
            h.reshape(((), d))
        };
        Ok(match (model, batch) {
            (AnyModel::Decoder(m), TaskBatch::Decoder { inputs, mask, scored, targets }) => {
                let h = flat(m.hidden(inputs, mask, None, dropout_seed)?)?.index_select(scored, 0)?;
                (m.logits(&h)?, targets.clone())
            }
            (AnyModel::EncoderDecoder(m), TaskBatch::EncoderDecoder { src, src_segments, tgt_in, scored, targets }) => {
                let enc_mask = match src_segments {
                    Some(seg) => MaskSpec::bidirectional().with_segments(seg.clone()),
                    None => MaskSpec::bidirectional(),
                };
                let mem = m.encode(src, &enc_mask, dropout_seed.map(|s| s ^ 1))?;
                let h = m.decode_hidden(tgt_in, &mem, &MaskSpec::causal(), &EncoderDecoder::cross_mask(src_segments.clone()), None, dropout_seed)?;
                (m.logits(&flat(h)?.index_select(scored, 0)?)?, targets.clone())
            }
            _ => bail!("{} cannot take this batch: the batch kind does not match the model kind", model.name()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use candle_nn::{Optimizer, VarBuilder, VarMap};
    use ferrolm_model::TransformerConfig;
    use rand::SeedableRng;

    #[test]
    fn every_kind_trains_through_one_loss_call() {
        let data: Vec<u32> = (0..400).map(|i| (5 + (i * 7 + i / 3) % 20) as u32).collect();
        let tok = TaskTokens { mask: 1, sentinels: (30..46).collect(), decoder_start: 0, first_ordinary: 5, sep: 2, pad: 3, eot: 0 };
        for kind in [ModelKind::Causal, ModelKind::Prefix, ModelKind::EncoderDecoder, ModelKind::MaskedLm] {
            let cfg = TransformerConfig { kind, vocab_size: 48, d_model: 32, n_layers: 2, n_heads: 4, n_kv_heads: 4, max_seq_len: 24, ..Default::default() };
            let vm = VarMap::new();
            let m = AnyModel::build(&cfg.clone().into(), VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
            ferrolm_model::init::init_params(&vm, 2, 1).unwrap();
            let mut opt = candle_nn::AdamW::new_lr(vm.all_vars(), 1e-2).unwrap();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
            let batch = make_task_batch(kind, &data, &[0, 50, 100, 150], 20, &ObjectiveConfig::default(), &tok, 48, &mut rng, &Device::Cpu).unwrap();
            let mut losses = vec![];
            for _ in 0..40 {
                let (l, t) = m.logits_and_targets(&batch, None).unwrap();
                let loss = candle_nn::loss::cross_entropy(&l, &t).unwrap();
                losses.push(loss.to_scalar::<f32>().unwrap());
                opt.backward_step(&loss).unwrap();
            }
            assert!(losses[39] < 0.2 * losses[0], "{kind:?} did not overfit: {losses:?}");
        }
    }
}
