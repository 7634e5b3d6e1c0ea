//! Autoregressive generation with a KV cache: the prompt is encoded in one forward pass,
//! then each new token costs one single-position pass over cached keys and values.

use anyhow::Result;
use candle_core::{Tensor, D};
use ferrolm_model::attention::MaskSpec;
use ferrolm_model::{AnyModel, CausalLm, ModelKind, Transformer};

use crate::sampling::{Sampler, SamplingConfig};

#[derive(Debug, Clone)]
pub struct GenerateConfig {
    pub max_tokens: usize,
    /// Generation stops after producing any of these (it is included in the output).
    pub stop_tokens: Vec<u32>,
    pub sampling: SamplingConfig,
}

/// Last-position logits of a one-row batch as a Vec.
pub(crate) fn last_logits(logits: &Tensor) -> Result<Vec<f32>> {
    let t = logits.dim(1)?;
    Ok(logits.narrow(1, t - 1, 1)?.squeeze(1)?.squeeze(0)?.to_dtype(candle_core::DType::F32)?.to_vec1()?)
}

/// The sampling loop every generation path shares: sample a token from `next`, hand it to
/// `on_token`, stop at a stop token (it is kept), at `max_tokens` or when `on_token`
/// returns false; otherwise `advance(token)` returns the logits after it.
pub(crate) fn decode_loop(
    cfg: &GenerateConfig,
    mut next: Vec<f32>,
    mut on_token: impl FnMut(u32) -> bool,
    mut advance: impl FnMut(u32) -> Result<Vec<f32>>,
) -> Result<Vec<u32>> {
    let mut sampler = Sampler::new(cfg.sampling.clone());
    let mut out = Vec::new();
    for _ in 0..cfg.max_tokens {
        let tok = sampler.sample(&next);
        out.push(tok);
        if !on_token(tok) || cfg.stop_tokens.contains(&tok) {
            break;
        }
        next = advance(tok)?;
    }
    Ok(out)
}

/// Generate up to `max_tokens` after `prompt`, calling `on_token` with each new token as
/// soon as it is sampled (return false from it to stop early). Returns the new tokens.
///
/// When the context fills up, the cache is rebuilt from the most recent half of the
/// window, so long generations keep going at a bounded cost.
pub fn generate(
    model: &Transformer,
    prompt: &[u32],
    cfg: &GenerateConfig,
    on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    anyhow::ensure!(!prompt.is_empty(), "generation needs a non-empty prompt (at least one token)");
    let ctx = model.config().max_seq_len;
    let mut history: Vec<u32> = prompt.to_vec();
    let keep = |h: &[u32]| h[h.len().saturating_sub(ctx / 2).max(h.len().saturating_sub(ctx))..].to_vec();
    let start = if history.len() > ctx { keep(&history) } else { history.clone() };
    let mut cache = model.new_cache();
    let dev = model.device().clone();
    let logits = model.forward_last(&Tensor::new(start.as_slice(), &dev)?.unsqueeze(0)?, &MaskSpec::causal(), Some(&mut cache))?;
    decode_loop(cfg, last_logits(&logits)?, on_token, |tok| {
        history.push(tok);
        let logits = if cache.len() + 1 > ctx {
            cache = model.new_cache();
            let window = keep(&history);
            model.forward_last(&Tensor::new(window.as_slice(), &dev)?.unsqueeze(0)?, &MaskSpec::causal(), Some(&mut cache))?
        } else {
            // One token against the cache: the batched decoding step with one row, whose
            // attention reads the cache in place (the full-sequence path copies the cache
            // into a tensor each step); equal logits (crates/model/tests/decode_step.rs).
            return Ok(model.decode_step(&[tok], &mut [&mut cache])?.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?);
        };
        last_logits(&logits)
    })
}

/// Generation for models without a KV cache (the window and recurrent LMs of the
/// history experiment): `next_logits(window)` returns the logits after the last token of
/// `window`, which holds at most `ctx` of the most recent tokens. Each new token costs a
/// pass over the window; the models it serves are small and their windows short.
pub fn generate_windowed(
    ctx: usize,
    prompt: &[u32],
    cfg: &GenerateConfig,
    mut next_logits: impl FnMut(&[u32]) -> Result<Vec<f32>>,
    on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    anyhow::ensure!(!prompt.is_empty(), "generation needs a non-empty prompt (at least one token)");
    anyhow::ensure!(ctx > 0, "the model's context is empty");
    let mut history: Vec<u32> = prompt.to_vec();
    let first = next_logits(&history[history.len().saturating_sub(ctx)..])?;
    decode_loop(cfg, first, on_token, |tok| {
        history.push(tok);
        next_logits(&history[history.len().saturating_sub(ctx)..])
    })
}

/// Log-probability of each continuation token given the text before it (no cache; for
/// scoring and tests).
pub fn score(model: &Transformer, ids: &[u32]) -> Result<Vec<f32>> {
    let dev = model.device();
    let x = Tensor::new(&ids[..ids.len() - 1], dev)?.unsqueeze(0)?;
    let y = Tensor::new(&ids[1..], dev)?.unsqueeze(0)?;
    let logp = candle_nn::ops::log_softmax(&model.forward(&x, &MaskSpec::causal(), None)?, D::Minus1)?;
    Ok(logp.gather(&y.unsqueeze(D::Minus1)?, D::Minus1)?.flatten_all()?.to_vec1()?)
}

/// Generation for a model of any family, by the path its shape needs: the causal decoder
/// with a sliding KV cache, the prefix decoder with the prompt as its bidirectional
/// prefix, the encoder-decoder with the prompt as its source (decoding from
/// `decoder_start`), the window and recurrent LMs by recomputing their window. A masked
/// LM does not generate (it fills masks).
pub fn generate_any(
    model: &AnyModel,
    prompt: &[u32],
    decoder_start: u32,
    cfg: &GenerateConfig,
    on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    match model {
        AnyModel::Decoder(m) if m.config().kind == ModelKind::Causal => generate(m, prompt, cfg, on_token),
        AnyModel::Decoder(m) => crate::arch::generate_prefix(m, prompt, cfg, on_token),
        AnyModel::EncoderDecoder(m) => crate::arch::generate_seq2seq(m, prompt, decoder_start, cfg, on_token),
        AnyModel::Nplm(m) => generate_windowed(m.config().max_seq_len, prompt, cfg, |w| window_logits(model, w, m.device()), on_token),
        AnyModel::Recurrent(m) => generate_windowed(m.config().max_seq_len, prompt, cfg, |w| window_logits(model, w, m.device()), on_token),
        AnyModel::MaskedLm(_) => anyhow::bail!("a masked LM fills masks (`ferrolm fill-mask`); it does not generate"),
    }
}

fn window_logits(model: &AnyModel, window: &[u32], dev: &candle_core::Device) -> Result<Vec<f32>> {
    let x = Tensor::new(window, dev)?.unsqueeze(0)?;
    let logits = model.causal_logits(&x, None)?;
    last_logits(&logits)
}
