//! Generation for the other model shapes, and mask filling for the masked LM.
//!
//! - prefix decoder: the prompt is the bidirectional prefix (one forward pass under
//!   `AttnMask::Prefix`, its keys and values cached), then causal decoding one token at
//!   a time over the cache — exactly what the prefix LM was trained to compute.
//! - encoder-decoder: the source is encoded once; the decoder starts from its start token
//!   and decodes with a KV cache whose cross-attention keys/values are projected from the
//!   encoder output on the first step and reused after.
//!
//! Neither shape can slide its window like the causal decoder (the prefix or the source
//! would change meaning), so generation stops when the context is full.

use anyhow::{ensure, Result};
use candle_core::{Tensor, D};
use ferrolm_model::attention::{AttnMask, MaskSpec};
use ferrolm_model::{EncoderDecoder, MaskedLm, Transformer};

use crate::generate::GenerateConfig;
use crate::sampling::Sampler;

fn last_logits(logits: &Tensor) -> Result<Vec<f32>> {
    let t = logits.dim(1)?;
    Ok(logits.narrow(1, t - 1, 1)?.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?)
}

/// Sample up to `max_tokens` with `step(token) -> next logits`, stopping at a stop token,
/// when `on_token` returns false, or when `room` positions are used up.
fn decode_loop(
    mut next: Vec<f32>,
    cfg: &GenerateConfig,
    mut room: usize,
    mut on_token: impl FnMut(u32) -> bool,
    mut step: impl FnMut(u32) -> Result<Vec<f32>>,
) -> Result<Vec<u32>> {
    let mut sampler = Sampler::new(cfg.sampling.clone());
    let mut out = Vec::new();
    for _ in 0..cfg.max_tokens {
        let tok = sampler.sample(&next);
        out.push(tok);
        if !on_token(tok) || cfg.stop_tokens.contains(&tok) || room == 0 {
            break;
        }
        room -= 1;
        next = step(tok)?;
    }
    Ok(out)
}

/// Prefix-LM generation: `prefix` is attended bidirectionally, the continuation causally.
pub fn generate_prefix(model: &Transformer, prefix: &[u32], cfg: &GenerateConfig, on_token: impl FnMut(u32) -> bool) -> Result<Vec<u32>> {
    ensure!(!prefix.is_empty(), "generation needs a non-empty prompt (at least one token)");
    let ctx = model.config().max_seq_len;
    ensure!(prefix.len() <= ctx, "the prompt has {} tokens; the model's context is {ctx}", prefix.len());
    let dev = model.device().clone();
    let mut cache = model.new_cache();
    let mask = MaskSpec { kind: AttnMask::Prefix(vec![prefix.len()]), q_segments: None, k_segments: None };
    let logits = model.forward(&Tensor::new(prefix, &dev)?.unsqueeze(0)?, &mask, Some(&mut cache))?;
    // each sampled token but the last is fed back: ctx - prefix positions remain
    decode_loop(last_logits(&logits)?, cfg, ctx - prefix.len(), on_token, |tok| {
        let l = model.forward(&Tensor::new(&[tok], &dev)?.unsqueeze(0)?, &MaskSpec::causal(), Some(&mut cache))?;
        last_logits(&l)
    })
}

/// Encoder-decoder generation: encode `src` once, decode from `start` with a KV cache.
pub fn generate_seq2seq(
    model: &EncoderDecoder,
    src: &[u32],
    start: u32,
    cfg: &GenerateConfig,
    on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    ensure!(!src.is_empty(), "generation needs a non-empty source (at least one token)");
    let ctx = model.config().max_seq_len;
    ensure!(src.len() <= ctx, "the source has {} tokens; the model's context is {ctx}", src.len());
    let dev = model.device().clone();
    let memory = model.encode(&Tensor::new(src, &dev)?.unsqueeze(0)?, &MaskSpec::bidirectional(), None)?;
    let cross = EncoderDecoder::cross_mask(None);
    let mut cache = model.new_cache();
    let mut feed = |tok: u32| -> Result<Vec<f32>> {
        let h = model.decode_hidden(&Tensor::new(&[tok], &dev)?.unsqueeze(0)?, &memory, &MaskSpec::causal(), &cross, Some(&mut cache), None)?;
        last_logits(&model.logits(&h)?)
    };
    let first = feed(start)?;
    decode_loop(first, cfg, ctx - 1, on_token, feed)
}

/// The `k` most likely tokens (id, probability) at each position of `ids` holding
/// `mask_id`, in order of position.
pub fn fill_mask(model: &MaskedLm, ids: &[u32], mask_id: u32, k: usize) -> Result<Vec<(usize, Vec<(u32, f32)>)>> {
    let positions: Vec<usize> = ids.iter().enumerate().filter(|(_, &t)| t == mask_id).map(|(i, _)| i).collect();
    ensure!(!positions.is_empty(), "the text has no mask token to fill");
    let dev = model.device().clone();
    let h = model.hidden(&Tensor::new(ids, &dev)?.unsqueeze(0)?, &MaskSpec::bidirectional(), None)?.squeeze(0)?;
    let idx = Tensor::new(positions.iter().map(|&p| p as u32).collect::<Vec<_>>(), &dev)?;
    let probs = candle_nn::ops::softmax(&model.mlm_logits(&h.index_select(&idx, 0)?)?, D::Minus1)?;
    let rows: Vec<Vec<f32>> = probs.to_vec2()?;
    Ok(positions
        .into_iter()
        .zip(rows)
        .map(|(p, row)| {
            let mut top: Vec<(u32, f32)> = row.into_iter().enumerate().map(|(i, p)| (i as u32, p)).collect();
            top.sort_by(|a, b| b.1.total_cmp(&a.1));
            top.truncate(k);
            (p, top)
        })
        .collect())
}
