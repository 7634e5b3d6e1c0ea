//! Batched single-token decoding for serving: one query per row, each row with its own KV
//! cache of its own length (continuous batching advances sequences that started at
//! different times). The projections run once for the whole batch; only the attention
//! over each row's cached keys is per row. Kept in its own file so the full-sequence path
//! in `attention.rs` stays as it is; a test checks both give the same logits.

use super::*;

impl LayerCache {
    /// Number of positions cached in this layer.
    pub fn len(&self) -> usize {
        self.k.as_ref().map(|k| k.dim(2).unwrap_or(0)).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keep the first `len` positions (a shared prompt prefix reused by another request).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.len() {
            return Ok(());
        }
        if len == 0 {
            self.k = None;
            self.v = None;
            return Ok(());
        }
        self.k = self.k.as_ref().map(|k| k.narrow(2, 0, len)).transpose()?;
        self.v = self.v.as_ref().map(|v| v.narrow(2, 0, len)).transpose()?;
        Ok(())
    }
}

impl KvCache {
    /// Keep the first `len` positions of every self-attention layer (cross-attention keys
    /// are the encoder's and stay).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        self.self_attn.iter_mut().try_for_each(|c| c.truncate(len))
    }
}

impl Attention {
    /// Self-attention of one new position per row: `x` is (batch, 1, d_model), `caches[b]`
    /// holds row b's earlier keys and values (any length; the new position is its
    /// `len()`), and receives the new ones.
    pub(crate) fn decode_batch(&self, x: &Tensor, rope: Option<&Rope>, caches: &mut [&mut LayerCache]) -> Result<Tensor> {
        let Some(qkv) = &self.qkv else { candle_core::bail!("batched decoding is for self-attention layers") };
        let (b, t, _) = x.dims3()?;
        // q width: heads × head size, which need not be d_model (head_size option)
        let c = self.n_heads * self.head_dim;
        if t != 1 || caches.len() != b {
            candle_core::bail!("batched decoding takes one position per row and one cache per row (got {t} positions, {b} rows, {} caches)", caches.len());
        }
        let kv_width = self.n_kv_heads * self.head_dim;
        let all = qkv.forward(x)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let mut rows = Vec::with_capacity(b);
        for (i, cache) in caches.iter_mut().enumerate() {
            let row = all.narrow(0, i, 1)?;
            let offset = cache.len();
            let q = self.heads(&row.narrow(D::Minus1, 0, c)?, self.n_heads)?;
            let k = self.heads(&row.narrow(D::Minus1, c, kv_width)?, self.n_kv_heads)?;
            let v = self.heads(&row.narrow(D::Minus1, c + kv_width, kv_width)?, self.n_kv_heads)?;
            // q/k head norms (qk_norm) come before RoPE, as in the full-sequence path
            let (q, k) = match &self.qk_norm {
                Some((nq, nk)) => (nq.forward(&q)?, nk.forward(&k)?),
                None => (q, k),
            };
            let (q, k) = match rope {
                Some(r) => (r.apply(&q, offset)?, r.apply(&k, offset)?),
                None => (q, k),
            };
            let k = match &cache.k { Some(pk) => Tensor::cat(&[pk, &k], 2)?, None => k };
            let v = match &cache.v { Some(pv) => Tensor::cat(&[pv, &v], 2)?, None => v };
            cache.k = Some(k.clone());
            cache.v = Some(v.clone());
            let (k, v) = (self.repeat_kv(k)?, self.repeat_kv(v)?);
            // The new position sees every cached one: the causal offset is the last key.
            let att = ferrolm_kernels::scaled_softmax(&q.matmul(&k.t()?)?, scale, Some(offset))?;
            rows.push(att.matmul(&v)?.transpose(1, 2)?.reshape((1, 1, c))?);
        }
        self.proj.forward(&Tensor::cat(&rows, 0)?)
    }
}
