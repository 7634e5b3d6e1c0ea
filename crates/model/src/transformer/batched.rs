//! One decoding step for many independent sequences in one forward pass, the step a
//! serving scheduler runs (continuous batching). Each sequence keeps its own [`KvCache`],
//! so sequences of different lengths, admitted at different times, share every matrix
//! product; their results equal decoding each sequence alone (tests/decode_step.rs).

use super::*;
use crate::attention::LayerCache;

impl Transformer {
    /// Logits (batch, vocab) of the position after `tokens[b]` for each row `b`, where
    /// `caches[b]` holds row b's earlier positions (filled by [`Transformer::forward`] with a
    /// cache, or by earlier steps) and receives this position. Causal decoders only.
    pub fn decode_step(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        if self.cfg.kind != crate::config::ModelKind::Causal {
            candle_core::bail!("batched decoding needs a causal decoder, not {:?}", self.cfg.kind);
        }
        if tokens.len() != caches.len() || tokens.is_empty() {
            candle_core::bail!("decode_step takes one token per cache ({} tokens, {} caches)", tokens.len(), caches.len());
        }
        if tokens.len() >= ferrolm_kernels::prompt_linear::PROMPT_ROWS {
            // A prompt's many rows take other products (register tiles: a plain sum over k
            // per output, where decoding's kernels sum in 16 lanes), so a batch that large
            // goes in parts below it: each sequence then multiplies as it would alone.
            let part = ferrolm_kernels::prompt_linear::PROMPT_ROWS - 1;
            let logits = tokens.chunks(part).zip(caches.chunks_mut(part)).map(|(t, c)| self.decode_step(t, c)).collect::<Result<Vec<_>>>()?;
            return Tensor::cat(&logits, 0);
        }
        let dev = self.device();
        let mut x = if crate::attention::row_loop_decoding() {
            // the earlier path, kept for comparison: one lookup per row
            let rows = tokens
                .iter()
                .zip(caches.iter())
                .map(|(&t, c)| self.pos.embed(&self.wte, &Tensor::new(&[t], dev)?.unsqueeze(0)?, c.len()))
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&rows, 0)?
        } else {
            let positions: Vec<usize> = caches.iter().map(|c| c.len()).collect();
            let ids = Tensor::from_vec(tokens.to_vec(), (tokens.len(), 1), dev)?;
            self.pos.embed_rows(&self.wte, &ids, &positions)?
        };
        for (i, block) in self.decoder.blocks.iter().enumerate() {
            let mut layer: Vec<&mut LayerCache> = caches.iter_mut().map(|c| &mut c.self_attn[i]).collect();
            // inference: no graph kept across blocks (see `Stack::forward`)
            x = block.decode_batch(&x, self.rope.as_ref(), &mut layer)?.detach();
        }
        self.logits(&self.decoder.final_norm(&x)?)?.squeeze(1)
    }
}
