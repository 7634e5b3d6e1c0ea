//! The block's part of batched single-token decoding (see `attention/batched.rs`): norms
//! and the MLP run on the whole batch, self-attention per row over its own cache.

use super::*;

impl Block {
    pub(crate) fn decode_batch(&self, x: &Tensor, rope: Option<&Rope>, caches: &mut [&mut LayerCache]) -> Result<Tensor> {
        if self.cross.is_some() {
            candle_core::bail!("batched decoding is for decoder-only blocks (this block has cross-attention)");
        }
        let a = self.attn.decode_batch(&self.ln1.forward(x)?, rope, caches)?;
        let x = (x + a)?;
        let m = self.mlp.forward(&self.ln2.forward(&x)?)?;
        x + m
    }
}
