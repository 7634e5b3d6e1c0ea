//! Generation for the other model shapes, and mask filling for the masked LM.
//!
//! - prefix decoder: the prompt is the bidirectional prefix (one forward pass under
//!   `AttnMask::Prefix`, its keys and values cached), then causal decoding one token at
//!   a time over the cache — exactly what the prefix LM was trained to compute.
//! - encoder-decoder: the source is encoded once; the decoder starts from its start token
//!   and decodes with a KV cache whose cross-attention keys/values are projected from the
//!   encoder output on the first step and reused after.
//!
//! Both slide past the context like the causal decoder: the prefix decoder re-encodes the
//! most recent half window (prompt tokens in it stay the bidirectional prefix), the
//! encoder-decoder re-encodes its decoder side only (start token + recent output) and
//! keeps the encoder output. Inside one window, cached decoding equals recomputation.

use anyhow::{ensure, Result};
use candle_core::{Tensor, D};
use ferrolm_model::attention::{AttnMask, MaskSpec};
use ferrolm_model::{EncoderDecoder, MaskedLm, Transformer};

use crate::generate::{decode_loop, last_logits, GenerateConfig};

/// Where a window slides to when it is full: the most recent `ctx / 2` tokens are kept
/// (the same rule as the causal decoder's [`crate::generate`]), so each re-encode buys
/// `ctx / 2` cached steps before the next one.
fn slide_start(len: usize, ctx: usize) -> usize {
    len - (ctx / 2).max(1).min(len)
}

/// Prefix-LM generation: `prefix` is attended bidirectionally, the continuation causally.
///
/// The prompt is one forward pass under `AttnMask::Prefix` into the KV cache, then each
/// token is one cached causal step. Past the context the window slides: when the next
/// token would not fit, the cache is rebuilt from the most recent `max_seq_len / 2`
/// tokens of prompt + output, and every token keeps the role it had: prompt tokens still
/// in the window are the bidirectional prefix (they see each other), generated tokens
/// stay causal. Once the prompt has slid out, the window is plain causal text, which the
/// prefix LM also saw in training (its split point is random). A prompt longer than the
/// context keeps its last `max_seq_len / 2` tokens, as the causal decoder does.
pub fn generate_prefix(model: &Transformer, prefix: &[u32], cfg: &GenerateConfig, on_token: impl FnMut(u32) -> bool) -> Result<Vec<u32>> {
    ensure!(!prefix.is_empty(), "generation needs a non-empty prompt (at least one token)");
    let ctx = model.config().max_seq_len;
    let dev = model.device().clone();
    let mut history: Vec<u32> = prefix.to_vec();
    // absolute index into `history` of the window's first token
    let mut start = if history.len() > ctx { slide_start(history.len(), ctx) } else { 0 };
    let mut cache = model.new_cache();
    let encode = |cache: &mut ferrolm_model::KvCache, history: &[u32], start: usize| -> Result<Vec<f32>> {
        let window = &history[start..];
        let mask = MaskSpec { kind: AttnMask::Prefix(vec![prefix.len().saturating_sub(start)]), q_segments: None, k_segments: None };
        last_logits(&model.forward_last(&Tensor::new(window, &dev)?.unsqueeze(0)?, &mask, Some(cache))?)
    };
    let first = encode(&mut cache, &history, start)?;
    decode_loop(cfg, first, on_token, |tok| {
        history.push(tok);
        if cache.len() + 1 > ctx {
            start = slide_start(history.len(), ctx);
            cache = model.new_cache();
            encode(&mut cache, &history, start)
        } else {
            last_logits(&model.forward_last(&Tensor::new(&[tok], &dev)?.unsqueeze(0)?, &MaskSpec::causal(), Some(&mut cache))?)
        }
    })
}

/// Encoder-decoder generation: encode `src` once, decode from `start` with a KV cache.
///
/// The source must fit the context (it is the input, not something to truncate
/// silently). The decoder's side slides past the context: when the next token would not
/// fit, its self-attention cache is rebuilt from `start` followed by the most recent
/// `max_seq_len / 2 − 1` generated tokens (position 0 always holds the start token, as in
/// training); the encoder output and its cross-attention keys/values are kept.
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
    let feed = |cache: &mut ferrolm_model::KvCache, toks: &[u32]| -> Result<Vec<f32>> {
        let h = model.decode_hidden(&Tensor::new(toks, &dev)?.unsqueeze(0)?, &memory, &MaskSpec::causal(), &cross, Some(cache), None)?;
        last_logits(&model.logits(&h)?)
    };
    let first = feed(&mut cache, &[start])?;
    let mut out: Vec<u32> = Vec::new();
    decode_loop(cfg, first, on_token, |tok| {
        out.push(tok);
        if cache.len() + 1 > ctx {
            // keep the cross-attention keys/values (the encoder output is unchanged)
            cache.self_attn.iter_mut().for_each(|c| *c = Default::default());
            let keep = slide_start(out.len() + 1, ctx);
            let window: Vec<u32> = std::iter::once(start).chain(out[keep..].iter().copied()).collect();
            feed(&mut cache, &window)
        } else {
            feed(&mut cache, &[tok])
        }
    })
}

/// A masked position and its most likely tokens (id, probability), most likely first.
pub type FilledMask = (usize, Vec<(u32, f32)>);

/// The `k` most likely tokens (id, probability) at each position of `ids` holding
/// `mask_id`, in order of position.
pub fn fill_mask(model: &MaskedLm, ids: &[u32], mask_id: u32, k: usize) -> Result<Vec<FilledMask>> {
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
