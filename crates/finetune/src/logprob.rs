//! Log-probability of response tokens given their prompts under a causal LM, batched and
//! differentiable: what DPO (policy and reference), PPO (per-token log-probs and KL) and
//! SFT evaluation by label scoring all need.
//!
//! Pairs are right-padded into one batch. Under causal attention a position never sees
//! later positions, so the padding after a short sequence cannot change its log-probs: the
//! batched values equal the one-by-one values (a test checks). Only the rows that predict a
//! response token go through log-softmax, so the cost of the vocabulary projection's
//! softmax is proportional to the response tokens, not to the padded batch.

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor, D};
use ferrolm_train::CausalLm;

/// Log-probabilities of a batch of responses.
#[derive(Debug, Clone)]
pub struct ResponseLogprobs {
    /// (B, R): log p(response token j | prompt, response[..j]); 0 beyond a response's length.
    /// R is the longest response in the batch.
    pub per_token: Tensor,
    /// (B, R): 1.0 on real response tokens, 0.0 on padding.
    pub mask: Tensor,
    /// (B,): sum of `per_token` over each response (the sequence log-likelihood).
    pub sum: Tensor,
    /// Response lengths in tokens.
    pub lengths: Vec<usize>,
}

/// Log-probabilities of each `(prompt, response)` pair's response tokens under `model`.
/// Prompts must be non-empty (start them with the sequence-start token, see
/// [`crate::prompt::prompt_ids`]); the whole pair must fit the model's context (see
/// [`crate::prompt::fit_pair`]). `dropout_seed` is None for evaluation and reference models.
pub fn response_logprobs(
    model: &dyn CausalLm,
    pairs: &[(Vec<u32>, Vec<u32>)],
    pad: u32,
    dropout_seed: Option<u64>,
    device: &Device,
) -> Result<ResponseLogprobs> {
    ensure!(!pairs.is_empty(), "response_logprobs: empty batch");
    for (i, (p, r)) in pairs.iter().enumerate() {
        ensure!(!p.is_empty(), "response_logprobs: pair {i} has an empty prompt (start it with the sequence-start token)");
        ensure!(!r.is_empty(), "response_logprobs: pair {i} has an empty response");
    }
    let b = pairs.len();
    let t = pairs.iter().map(|(p, r)| p.len() + r.len() - 1).max().unwrap_or(1);
    let r_max = pairs.iter().map(|(_, r)| r.len()).max().unwrap_or(1);
    let mut inputs = vec![pad; b * t];
    let mut scored = Vec::new();
    let mut targets = Vec::new();
    let mut gather = vec![0u32; b * r_max];
    let mut mask = vec![0f32; b * r_max];
    for (row, (p, r)) in pairs.iter().enumerate() {
        let seq: Vec<u32> = p.iter().chain(r.iter()).copied().collect();
        inputs[row * t..row * t + seq.len() - 1].copy_from_slice(&seq[..seq.len() - 1]);
        for (j, &tok) in r.iter().enumerate() {
            gather[row * r_max + j] = scored.len() as u32;
            mask[row * r_max + j] = 1.0;
            scored.push((row * t + p.len() - 1 + j) as u32);
            targets.push(tok);
        }
    }
    let n = scored.len();
    // Padding slots of `per_token` read an appended zero.
    for (g, &m) in gather.iter_mut().zip(&mask) {
        if m == 0.0 {
            *g = n as u32;
        }
    }
    let inputs = Tensor::from_vec(inputs, (b, t), device)?;
    let logits = model.causal_logits(&inputs, dropout_seed)?;
    let v = logits.dim(D::Minus1)?;
    let rows = logits.reshape((b * t, v))?.index_select(&Tensor::from_vec(scored, n, device)?, 0)?;
    let logp = candle_nn::ops::log_softmax(&rows, D::Minus1)?;
    let picked = logp.gather(&Tensor::from_vec(targets, (n, 1), device)?, 1)?.squeeze(1)?;
    let padded = Tensor::cat(&[&picked, &Tensor::zeros(1, picked.dtype(), device)?], 0)?;
    let per_token = padded.index_select(&Tensor::from_vec(gather, b * r_max, device)?, 0)?.reshape((b, r_max))?;
    let sum = per_token.sum(1)?;
    Ok(ResponseLogprobs {
        per_token,
        mask: Tensor::from_vec(mask, (b, r_max), device)?,
        sum,
        lengths: pairs.iter().map(|(_, r)| r.len()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use candle_nn::{VarBuilder, VarMap};
    use ferrolm_model::{Transformer, TransformerConfig};

    pub fn tiny_model(seed: u64) -> (Transformer, VarMap) {
        let cfg = TransformerConfig { vocab_size: 40, d_model: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, max_seq_len: 32, ..Default::default() };
        let vm = VarMap::new();
        let m = Transformer::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        ferrolm_model::init::init_params(&vm, 2, seed).unwrap();
        (m, vm)
    }

    #[test]
    fn batched_padded_logprobs_equal_unbatched_scores() {
        let (m, vm) = tiny_model(3);
        let pairs = vec![(vec![0, 5, 6, 7], vec![8, 9]), (vec![0, 11], vec![12, 13, 14, 15, 16]), (vec![0, 1, 2, 3, 4, 5, 6], vec![7])];
        let lp = response_logprobs(&m, &pairs, 1, None, &Device::Cpu).unwrap();
        let per: Vec<Vec<f32>> = lp.per_token.to_vec2().unwrap();
        let sums: Vec<f32> = lp.sum.to_vec1().unwrap();
        for (i, (p, r)) in pairs.iter().enumerate() {
            let seq: Vec<u32> = p.iter().chain(r).copied().collect();
            let s = ferrolm_infer::generate::score(&m, &seq).unwrap();
            let want = &s[p.len() - 1..];
            for (j, w) in want.iter().enumerate() {
                assert!((per[i][j] - w).abs() < 1e-4, "pair {i} token {j}: {} vs {w}", per[i][j]);
            }
            assert!(per[i][r.len()..].iter().all(|&x| x == 0.0));
            assert!((sums[i] - want.iter().sum::<f32>()).abs() < 1e-4);
        }
        assert_eq!(lp.mask.sum_all().unwrap().to_scalar::<f32>().unwrap(), 8.0);
        // differentiable: the sum has a gradient for the weights
        let grads = lp.sum.sum_all().unwrap().backward().unwrap();
        let any = vm.all_vars().iter().any(|v| grads.get(v).is_some_and(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0));
        assert!(any);
    }
}
