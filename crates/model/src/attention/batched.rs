//! Batched single-token decoding for serving: one query per row, each row with its own KV
//! cache of its own length (continuous batching advances sequences that started at
//! different times). The projections run once for the whole batch, and so does the
//! attention: each row's cache is padded to the longest for one batched product. Kept in its own file so the full-sequence path
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

impl Rope {
    /// RoPE for one position per batch row: `x` is (batch, heads, 1, head_dim) and row b
    /// sits at position `positions[b]`.
    fn apply_rows(&self, x: &Tensor, positions: &[usize]) -> Result<Tensor> {
        let max = self.cos.dim(0)?;
        if let Some(p) = positions.iter().find(|&&p| p >= max) {
            candle_core::bail!("position {p} is beyond the model's max_seq_len {max}");
        }
        let b = positions.len();
        let half = x.dim(D::Minus1)? / 2;
        let idx = Tensor::new(positions.iter().map(|&p| p as u32).collect::<Vec<_>>().as_slice(), x.device())?;
        let cos = self.cos.index_select(&idx, 0)?.reshape((b, 1, 1, half))?;
        let sin = self.sin.index_select(&idx, 0)?.reshape((b, 1, 1, half))?;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
        let r2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
        Tensor::cat(&[r1, r2], D::Minus1)
    }
}

impl Attention {
    /// Self-attention of one new position per row: `x` is (batch, 1, d_model), `caches[b]`
    /// holds row b's earlier keys and values (any length; the new position is its
    /// `len()`), and receives the new ones. Rows of different lengths are padded to the
    /// longest for one batched product; padded keys are masked out of the softmax.
    pub(crate) fn decode_batch(&self, x: &Tensor, rope: Option<&Rope>, caches: &mut [&mut LayerCache]) -> Result<Tensor> {
        let Some(qkv) = &self.qkv else { candle_core::bail!("batched decoding is for self-attention layers") };
        let (b, t, c) = x.dims3()?;
        if t != 1 || caches.len() != b {
            candle_core::bail!("batched decoding takes one position per row and one cache per row (got {t} positions, {b} rows, {} caches)", caches.len());
        }
        let kv_width = self.n_kv_heads * self.head_dim;
        let all = qkv.forward(x)?;
        let q = self.heads(&all.narrow(D::Minus1, 0, c)?, self.n_heads)?;
        let k = self.heads(&all.narrow(D::Minus1, c, kv_width)?, self.n_kv_heads)?;
        let v = self.heads(&all.narrow(D::Minus1, c + kv_width, kv_width)?, self.n_kv_heads)?;
        let positions: Vec<usize> = caches.iter().map(|c| c.len()).collect();
        let (q, k) = match rope {
            Some(r) => (r.apply_rows(&q, &positions)?, r.apply_rows(&k, &positions)?),
            None => (q, k),
        };
        let longest = positions.iter().max().copied().unwrap_or(0) + 1;
        let (mut ks, mut vs) = (Vec::with_capacity(b), Vec::with_capacity(b));
        for (i, cache) in caches.iter_mut().enumerate() {
            let (ki, vi) = (k.narrow(0, i, 1)?, v.narrow(0, i, 1)?);
            let ki = match &cache.k { Some(pk) => Tensor::cat(&[pk, &ki], 2)?, None => ki.contiguous()? };
            let vi = match &cache.v { Some(pv) => Tensor::cat(&[pv, &vi], 2)?, None => vi.contiguous()? };
            cache.k = Some(ki.clone());
            cache.v = Some(vi.clone());
            let pad = longest - ki.dim(2)?;
            ks.push(if pad > 0 { ki.pad_with_zeros(2, 0, pad)? } else { ki });
            vs.push(if pad > 0 { vi.pad_with_zeros(2, 0, pad)? } else { vi });
        }
        let (k, v) = (self.repeat_kv(Tensor::cat(&ks, 0)?)?, self.repeat_kv(Tensor::cat(&vs, 0)?)?);
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let att = if positions.iter().all(|&p| p + 1 == longest) {
            ferrolm_kernels::softmax_last_dim(&scores)?
        } else {
            // row b sees its positions 0..=positions[b]; the padding after them is masked
            let mask: Vec<f32> = positions.iter().flat_map(|&p| (0..longest).map(move |j| if j <= p { 0.0 } else { -1e30 })).collect();
            let mask = Tensor::from_vec(mask, (b, 1, 1, longest), x.device())?;
            ferrolm_kernels::softmax_last_dim(&scores.broadcast_add(&mask)?)?
        };
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, 1, c))?;
        self.proj.forward(&y)
    }
}
