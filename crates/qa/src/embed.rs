//! Passage and query embeddings from a ferrolm encoder for ferrolm-rag's dense retrieval:
//! the mean of the last hidden states over a text's tokens, or the masked LM's pooled
//! output (tanh(dense(first position))). A Hugging Face BERT folder embeds as
//! sentence-transformers does: `[CLS] text [SEP]`, the mean over all of them.
//!
//! A model's id, recorded in the index, is `ferrolm:<run folder>#<pooling>#<weights hash>`:
//! queries must be embedded by the same weights as the passages, so an index whose vectors
//! came from other weights (or another pooling) is refused, and `--mode dense` finds the
//! model again from the index alone.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use ferrolm_model::attention::{MaskSpec, PAD_SEGMENT};
use ferrolm_model::AnyModel;
use ferrolm_rag::{RagIndex, VectorStore};
use ferrolm_tokenizer::Tokenizer;

/// How a text's vector is made from the hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the text's tokens (masked LM: bidirectional; decoder: causal).
    Mean,
    /// The masked LM's pooler on the first position.
    Pooled,
}

impl std::str::FromStr for Pooling {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Self::Mean),
            "pooled" => Ok(Self::Pooled),
            _ => bail!("pooling must be \"mean\" or \"pooled\", got {s:?}"),
        }
    }
}

impl Pooling {
    fn name(self) -> &'static str {
        match self {
            Self::Mean => "mean",
            Self::Pooled => "pooled",
        }
    }
}

/// An encoder ready to embed texts.
pub struct Embedder {
    model: AnyModel,
    tok: Tokenizer,
    pooling: Pooling,
    max_len: usize,
    id: String,
    /// Ids put before and after every text: the sequence-start marker, or the
    /// tokenizer's own frame (BERT's `[CLS]` … `[SEP]`).
    frame: (Vec<u32>, Vec<u32>),
    /// Whether the mean includes the frame (BERT, as sentence-transformers pools) or skips
    /// the sequence-start marker (ferrolm's own runs).
    mean_over_frame: bool,
}

/// Tokens per text embedded (the beginning is kept).
const EMBED_MAX_TOKENS: usize = 256;

impl Embedder {
    /// Load the encoder of a run folder (a masked LM, a decoder, or a reader's body).
    pub fn load(run_dir: &Path, pooling: Pooling, device: &Device) -> Result<Self> {
        // A reader's or classifier's checkpoint also holds head weights: only the body's are read.
        let loaded = load_body_only(run_dir, device)?;
        let max_seq = match &loaded.0 {
            AnyModel::MaskedLm(m) => m.config().max_seq_len,
            AnyModel::Decoder(m) => m.config().max_seq_len,
            other => bail!("{}: embeddings need a masked LM or a Transformer decoder, this run is {}", run_dir.display(), other.name()),
        };
        match &loaded.0 {
            AnyModel::MaskedLm(m) if pooling == Pooling::Pooled && !m.has_pooler() => {
                bail!("{}: pooling \"pooled\" needs the masked LM's pooler, and this one has none; use \"mean\"", run_dir.display())
            }
            AnyModel::MaskedLm(_) => {}
            _ if pooling == Pooling::Pooled => bail!("pooling \"pooled\" needs a masked LM (it uses the MLM's pooler); use \"mean\""),
            _ => {}
        }
        let tok = ferrolm_finetune::prompt::load_tokenizer(run_dir)?;
        let dir = std::fs::canonicalize(run_dir).with_context(|| format!("resolving {}", run_dir.display()))?;
        let id = format!("ferrolm:{}#{}#{:016x}", dir.display(), pooling.name(), loaded.1);
        let mean_over_frame = tok.frames_encoder_texts();
        let frame = if mean_over_frame { tok.special_frame()? } else { (ferrolm_finetune::prompt::bos(&tok), Vec::new()) };
        Ok(Self { model: loaded.0, tok, pooling, max_len: max_seq.min(EMBED_MAX_TOKENS), id, frame, mean_over_frame })
    }

    /// The id recorded in an index built with this encoder.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dim(&self) -> usize {
        match &self.model {
            AnyModel::MaskedLm(m) => m.config().d_model,
            AnyModel::Decoder(m) => m.config().d_model,
            _ => 0,
        }
    }

    fn device(&self) -> &Device {
        self.model.device()
    }

    /// The longest input (sequence-start marker included) the encoder takes.
    pub fn max_seq_len(&self) -> usize {
        match &self.model {
            AnyModel::MaskedLm(m) => m.config().max_seq_len,
            AnyModel::Decoder(m) => m.config().max_seq_len,
            _ => 0,
        }
    }

    /// The tokenizer's ids of `text` (without the sequence-start marker or frame the encoder adds).
    pub fn tokens(&self, text: &str) -> Vec<u32> {
        self.tok.encode(text)
    }

    /// Tokens put around every input: the sequence-start marker, or BERT's `[CLS]` and `[SEP]`.
    pub fn bos_len(&self) -> usize {
        self.frame.0.len() + self.frame.1.len()
    }

    pub fn vocab_size(&self) -> usize {
        match &self.model {
            AnyModel::MaskedLm(m) => m.config().vocab_size,
            AnyModel::Decoder(m) => m.config().vocab_size,
            _ => 0,
        }
    }

    /// Vectors of `texts`, one row of `dim()` values each, in order; each text is cut to
    /// the first 256 tokens (or the model's context).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let limit = self.max_len.max(1);
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| self.tok.encode(t)).collect();
        self.embed_tokens(&ids, limit)
    }

    /// Vectors of token sequences (each framed: the sequence-start marker first, or BERT's
    /// `[CLS]` … `[SEP]`, the text cut so that all fits in `limit` tokens), one row of
    /// `dim()` values each, in order.
    pub fn embed_tokens(&self, tokens: &[Vec<u32>], limit: usize) -> Result<Vec<Vec<f32>>> {
        ensure!(limit >= 1 && limit <= self.max_seq_len(), "embedding limit {limit} is outside 1..={}", self.max_seq_len());
        let (bos, post) = &self.frame;
        let room = limit.saturating_sub(bos.len() + post.len());
        let ids: Vec<Vec<u32>> = tokens
            .iter()
            .map(|t| {
                let mut v = bos.clone();
                v.extend_from_slice(&t[..t.len().min(room)]);
                v.extend_from_slice(post);
                v.truncate(limit);
                v
            })
            .collect();
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut out = vec![Vec::new(); ids.len()];
        let pad = ferrolm_finetune::prompt::pad_id(&self.tok);
        for chunk in order.chunks(32) {
            let t = chunk.iter().map(|&i| ids[i].len()).max().unwrap_or(1);
            let b = chunk.len();
            let mut x = vec![pad; b * t];
            let mut w = vec![0f32; b * t];
            let mut segs = vec![PAD_SEGMENT; b * t];
            for (r, &i) in chunk.iter().enumerate() {
                let n = ids[i].len();
                x[r * t..r * t + n].copy_from_slice(&ids[i]);
                // the sequence-start marker carries no content: the mean skips it
                let first = usize::from(!self.mean_over_frame && n > bos.len() && !bos.is_empty());
                w[r * t + first..r * t + n].iter_mut().for_each(|v| *v = 1.0 / (n - first) as f32);
                segs[r * t..r * t + n].iter_mut().for_each(|s| *s = 0);
            }
            let x = Tensor::from_vec(x, (b, t), self.device())?;
            let h = match &self.model {
                AnyModel::MaskedLm(m) => m.hidden(&x, &MaskSpec::bidirectional().with_segments(segs), None)?,
                AnyModel::Decoder(m) => m.hidden(&x, &MaskSpec::causal(), None, None)?,
                _ => unreachable!("checked at load"),
            };
            let v = match (self.pooling, &self.model) {
                (Pooling::Pooled, AnyModel::MaskedLm(m)) => m.pooled(&h)?,
                _ => {
                    let w = Tensor::from_vec(w, (b, t, 1), self.device())?;
                    h.broadcast_mul(&w)?.sum(1)?
                }
            };
            let rows: Vec<Vec<f32>> = v.to_dtype(DType::F32)?.to_vec2()?;
            for (&i, row) in chunk.iter().zip(rows) {
                out[i] = row;
            }
        }
        Ok(out)
    }
}

/// Build a run folder's model and load only the variables it has from the latest checkpoint
/// (a reader's or classifier's file also holds its head). Returns the model and a hash of
/// the weights file.
fn load_body_only(run_dir: &Path, device: &Device) -> Result<(AnyModel, u64)> {
    if ferrolm_model::hf::is_hf_folder(run_dir) {
        // A Hugging Face folder (e.g. BERT) through the one registry; the hash covers every
        // weights file.
        let loaded = ferrolm_model::load_model(run_dir, device)?;
        let mut h = Vec::new();
        for f in ferrolm_model::hf::weights::weight_files(run_dir)? {
            h.extend(hash_file(&f)?.to_le_bytes());
        }
        return Ok((loaded.model, xxhash_rust::xxh3::xxh3_64(&h)));
    }
    let spec = ferrolm_model::registry::read_spec(run_dir)?;
    let ckpt = ferrolm_model::registry::latest_checkpoint(run_dir)?;
    let path = ckpt.join("model.safetensors");
    let tensors = ferrolm_model::registry::load_tensors(&path)?;
    let (model, vm) = AnyModel::build_fresh(&spec, device)?;
    // (the checkpoint may hold more than the body: a reader's or classifier's head)
    ferrolm_model::registry::set_weights(&vm, &tensors, &path, |_| false, true)?;
    Ok((model, hash_file(&path)?))
}

fn hash_file(path: &Path) -> Result<u64> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(xxhash_rust::xxh3::xxh3_64(&bytes))
}

/// The run folder named by an embedding model id (`ferrolm:<dir>#<pooling>#<hash>`).
pub fn model_of_id(id: &str) -> Result<(PathBuf, Pooling)> {
    let rest = id.strip_prefix("ferrolm:").with_context(|| format!("embedding model id {id:?} was not written by this version of ferrolm"))?;
    let mut parts = rest.rsplitn(3, '#');
    let (_hash, pooling, dir) = (parts.next(), parts.next(), parts.next());
    match (pooling, dir) {
        (Some(p), Some(d)) => Ok((PathBuf::from(d), p.parse()?)),
        _ => bail!("malformed embedding model id {id:?}"),
    }
}

/// Embed the passages of `index_dir` that have no vector yet with `embedder` and store
/// them. An index whose vectors came from another model is refused (by ferrolm-rag).
/// Returns (passages embedded now, passages with vectors in all).
pub fn embed_index(index_dir: &Path, embedder: &Embedder, batch: usize) -> Result<(usize, usize)> {
    let ix = RagIndex::open(index_dir, None)?;
    if let Some(found) = &ix.manifest().embedding_model {
        if found != embedder.id() && ix.vectors().is_some() {
            bail!(ferrolm_rag::RagError::EmbeddingMismatch {
                path: index_dir.join("manifest.json"),
                found: Some(found.clone()),
                wanted: Some(embedder.id().to_string()),
            });
        }
    }
    let mut have: std::collections::HashMap<u64, Vec<f32>> = std::collections::HashMap::new();
    if let Some(v) = ix.vectors() {
        let v: &VectorStore = v;
        for i in 0..v.len() {
            have.insert(v.id(i), v.vector(i).to_vec());
        }
    }
    let passages = ix.passages()?;
    let todo: Vec<&ferrolm_rag::Passage> = passages.iter().filter(|p| !have.contains_key(&p.id)).collect();
    let bar = ferrolm_common::progress::bar(todo.len() as u64, "passages embedded");
    for chunk in todo.chunks(batch.max(1)) {
        let texts: Vec<&str> = chunk.iter().map(|p| p.text.as_str()).collect();
        for (p, v) in chunk.iter().zip(embedder.embed(&texts)?) {
            have.insert(p.id, v);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    drop(ix);
    let ids: Vec<u64> = passages.iter().map(|p| p.id).collect();
    let dim = embedder.dim();
    let mut flat = Vec::with_capacity(ids.len() * dim);
    for id in &ids {
        let v = &have[id];
        ensure!(v.len() == dim, "stored vector of passage {id} has dimension {}, the model gives {dim}", v.len());
        flat.extend_from_slice(v);
    }
    ferrolm_rag::set_vectors(index_dir, embedder.id(), dim, &ids, &flat)?;
    Ok((todo.len(), ids.len()))
}
