//! Batched forward passes over (prompt, response) sequences: per-token log-probabilities of
//! the response given the prompt, their per-sequence sums, entropies, and the hidden state
//! of each sequence's last token (for scalar heads). What SFT's label scoring, DPO (policy
//! and reference), PPO (per-token log-probs, KL, entropy) and the reward model all need;
//! one implementation serves them.
//!
//! Sequences are right-padded to the longest in the batch; under causal attention a
//! position never sees the padding after it, so no mask is needed. Only the hidden states
//! that predict response tokens go through the LM head: prompts are usually longer than
//! responses and their logits are never used.

use anyhow::Result;
use candle_core::{Device, Tensor, D};
use ferrolm_model::attention::MaskSpec;
use ferrolm_model::Transformer;

/// A prompt followed by its response, as one id sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
}

impl Sequence {
    pub fn new(prompt: &[u32], response: &[u32]) -> Self {
        Self { ids: prompt.iter().chain(response).copied().collect(), prompt_len: prompt.len() }
    }

    pub fn response(&self) -> &[u32] {
        &self.ids[self.prompt_len..]
    }

    pub fn response_len(&self) -> usize {
        self.ids.len() - self.prompt_len
    }
}

pub struct SeqBatch {
    /// Token ids (rows, t), right-padded.
    pub ids: Tensor,
    pub rows: usize,
    pub t: usize,
    /// Flat (row·t + position) indices of the hidden states that predict each response token.
    pub pred_pos: Tensor,
    /// The response tokens, in the same order (n_tokens,).
    pub targets: Tensor,
    /// Which row each response token belongs to.
    pub token_row: Vec<usize>,
    /// (rows, n_tokens) 0/1 matrix: row sums of per-token values are one matmul.
    pub row_sum: Tensor,
    /// Flat index of each row's last real token (rows,).
    pub last_pos: Tensor,
    pub n_tokens: usize,
}

pub fn seq_batch(seqs: &[&Sequence], pad_id: u32, device: &Device) -> Result<SeqBatch> {
    anyhow::ensure!(!seqs.is_empty(), "empty batch");
    let rows = seqs.len();
    let t = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(1);
    let mut ids = vec![pad_id; rows * t];
    let (mut pred, mut targets, mut token_row, mut last) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (b, s) in seqs.iter().enumerate() {
        anyhow::ensure!(s.prompt_len >= 1, "a sequence needs at least one prompt token");
        ids[b * t..b * t + s.ids.len()].copy_from_slice(&s.ids);
        for p in s.prompt_len..s.ids.len() {
            pred.push((b * t + p - 1) as u32);
            targets.push(s.ids[p]);
            token_row.push(b);
        }
        last.push((b * t + s.ids.len() - 1) as u32);
    }
    let n = targets.len();
    let mut sum = vec![0f32; rows * n];
    for (j, &b) in token_row.iter().enumerate() {
        sum[b * n + j] = 1.0;
    }
    Ok(SeqBatch {
        ids: Tensor::from_vec(ids, (rows, t), device)?,
        rows,
        t,
        pred_pos: Tensor::from_vec(pred, n, device)?,
        targets: Tensor::from_vec(targets, n, device)?,
        token_row,
        row_sum: Tensor::from_vec(sum, (rows, n), device)?,
        last_pos: Tensor::from_vec(last, rows, device)?,
        n_tokens: n,
    })
}

/// Final hidden states flattened to (rows·t, d_model).
pub fn hidden(model: &Transformer, b: &SeqBatch, dropout_seed: Option<u64>) -> Result<Tensor> {
    let h = model.hidden(&b.ids, &MaskSpec::causal(), None, dropout_seed)?;
    let d = h.dim(D::Minus1)?;
    Ok(h.reshape((b.rows * b.t, d))?)
}

/// Logits (n_tokens, vocab) of the positions that predict response tokens.
pub fn response_logits(model: &Transformer, hidden_flat: &Tensor, b: &SeqBatch) -> Result<Tensor> {
    let sel = hidden_flat.index_select(&b.pred_pos, 0)?;
    Ok(model.logits(&sel)?)
}

/// log p(target) per row of `logits` (n, vocab) → (n,).
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok(logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?)
}

/// Entropy of each row's distribution (n,): −Σ p log p.
pub fn entropy(logits: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok((logp.exp()? * &logp)?.sum(D::Minus1)?.neg()?)
}

/// Sum over each row of per-token values (n,) → (rows,).
pub fn per_row_sum(b: &SeqBatch, per_token: &Tensor) -> Result<Tensor> {
    Ok(b.row_sum.matmul(&per_token.unsqueeze(1)?)?.squeeze(1)?)
}

/// log π(response | prompt) per sequence (rows,), differentiable.
pub fn sequence_logprobs(model: &Transformer, b: &SeqBatch, dropout_seed: Option<u64>) -> Result<Tensor> {
    let h = hidden(model, b, dropout_seed)?;
    let lp = token_logprobs(&response_logits(model, &h, b)?, &b.targets)?;
    per_row_sum(b, &lp)
}

/// Per-token log-probabilities of the responses as plain numbers, one Vec per row
/// (evaluation, reference models, rollouts).
pub fn token_logprobs_by_row(model: &Transformer, b: &SeqBatch) -> Result<Vec<Vec<f32>>> {
    let h = hidden(model, b, None)?;
    let lp: Vec<f32> = token_logprobs(&response_logits(model, &h, b)?, &b.targets)?.to_vec1()?;
    Ok(split_by_row(b, &lp))
}

pub fn split_by_row(b: &SeqBatch, values: &[f32]) -> Vec<Vec<f32>> {
    let mut out = vec![Vec::new(); b.rows];
    for (v, &r) in values.iter().zip(&b.token_row) {
        out[r].push(*v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use candle_nn::{VarBuilder, VarMap};
    use ferrolm_model::TransformerConfig;

    fn tiny() -> Transformer {
        let cfg = TransformerConfig { vocab_size: 40, d_model: 16, n_layers: 1, n_heads: 2, n_kv_heads: 2, max_seq_len: 32, ..Default::default() };
        let vm = VarMap::new();
        let m = Transformer::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        ferrolm_model::init::init_params(&vm, 1, 7).unwrap();
        m
    }

    #[test]
    fn response_logprobs_match_full_scoring_and_ignore_padding() {
        let m = tiny();
        let a = Sequence { ids: vec![1, 5, 9, 3, 7, 2], prompt_len: 3 };
        let b = Sequence { ids: vec![4, 8, 6, 11, 12, 13, 14, 15, 16, 17], prompt_len: 2 };
        // reference: every next-token log-prob of the whole sequence, unbatched
        let want = |s: &Sequence| -> Vec<f32> { ferrolm_infer::generate::score(&m, &s.ids).unwrap()[s.prompt_len - 1..].to_vec() };
        let batch = seq_batch(&[&a, &b], 0, &Device::Cpu).unwrap();
        assert_eq!(batch.n_tokens, 3 + 8);
        let got = token_logprobs_by_row(&m, &batch).unwrap();
        for (g, w) in got.iter().zip([want(&a), want(&b)]) {
            assert_eq!(g.len(), w.len());
            for (x, y) in g.iter().zip(&w) {
                assert!((x - y).abs() < 1e-4, "{x} vs {y}");
            }
        }
        let sums: Vec<f32> = sequence_logprobs(&m, &batch, None).unwrap().to_vec1().unwrap();
        assert!((sums[0] - want(&a).iter().sum::<f32>()).abs() < 1e-4);
        assert!((sums[1] - want(&b).iter().sum::<f32>()).abs() < 1e-4);
        // entropies are between 0 and ln(vocab)
        let h = hidden(&m, &batch, None).unwrap();
        let e: Vec<f32> = entropy(&response_logits(&m, &h, &batch).unwrap()).unwrap().to_vec1().unwrap();
        assert!(e.iter().all(|&x| x > 0.0 && x <= (40f32).ln() + 1e-4));
    }

    #[test]
    fn sequence_logprobs_are_differentiable() {
        let cfg = TransformerConfig { vocab_size: 40, d_model: 16, n_layers: 1, n_heads: 2, n_kv_heads: 2, max_seq_len: 32, ..Default::default() };
        let vm = VarMap::new();
        let m = Transformer::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        ferrolm_model::init::init_params(&vm, 1, 3).unwrap();
        let seqs = [Sequence::new(&[0, 5, 6, 7], &[8, 9]), Sequence::new(&[0, 11], &[12, 13, 14, 15, 16])];
        let batch = seq_batch(&seqs.iter().collect::<Vec<_>>(), 1, &Device::Cpu).unwrap();
        let grads = sequence_logprobs(&m, &batch, None).unwrap().sum_all().unwrap().backward().unwrap();
        let moved = vm.all_vars().iter().any(|v| grads.get(v).is_some_and(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0));
        assert!(moved);
    }
}
