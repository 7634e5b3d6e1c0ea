//! Batched single-token decoding for serving: one query per row, each row with its own KV
//! cache of its own length (continuous batching advances sequences that started at
//! different times). The projections, norms and RoPE run once for the whole batch; the
//! attention over every row's cache is one call of `ferrolm_kernels::decode_attention`
//! per layer, which reads the rows' host caches in place after appending the new
//! position to each. Kept in its own file so the full-sequence path in `attention.rs`
//! stays as it is; a test checks both give the same logits.
//!
//! The earlier path (a loop of small candle ops per row, caches grown by concatenation)
//! is kept for other devices and dtypes, and selectable on the CPU for comparison
//! ([`set_row_loop_decoding`], or `FERROLM_DECODE_ATTENTION=rows`).

use super::*;
use std::sync::atomic::{AtomicU8, Ordering};

/// 0: not yet decided (read the environment), 1: fused kernel, 2: per-row loop.
static DECODE_PATH: AtomicU8 = AtomicU8::new(0);

/// Use the per-row loop of candle ops (and concatenated tensor caches) for batched
/// decoding instead of the fused kernel: for benchmarks comparing the two. Caches filled
/// before the switch are converted when next used.
pub fn set_row_loop_decoding(on: bool) {
    DECODE_PATH.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// Whether batched decoding takes the per-row loop (see [`set_row_loop_decoding`]); the
/// default is the fused kernel unless `FERROLM_DECODE_ATTENTION=rows`.
pub fn row_loop_decoding() -> bool {
    match DECODE_PATH.load(Ordering::Relaxed) {
        0 => {
            let rows = std::env::var("FERROLM_DECODE_ATTENTION").is_ok_and(|v| v == "rows");
            DECODE_PATH.store(if rows { 2 } else { 1 }, Ordering::Relaxed);
            rows
        }
        p => p == 2,
    }
}

impl LayerCache {
    /// Number of positions cached in this layer.
    pub fn len(&self) -> usize {
        match &self.host {
            Some(h) => h.len(),
            None => self.k.as_ref().map(|k| k.dim(2).unwrap_or(0)).unwrap_or(0),
        }
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
            self.host = None;
            return Ok(());
        }
        if let Some(h) = &mut self.host {
            let n = len * h.n_kv_heads * h.head_dim;
            h.k.truncate(n);
            h.v.truncate(n);
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
        if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && !row_loop_decoding() {
            self.decode_batch_fused(x, rope, caches)
        } else {
            self.decode_batch_rows(x, rope, caches)
        }
    }

    /// Both paths' start: the checks, then the fused q/k/v projection of every row, with the
    /// row count, the q width (heads × head size, which need not be d_model: head_size
    /// option) and the k/v width.
    fn batched_qkv(&self, x: &Tensor, n_caches: usize) -> Result<(Tensor, usize, usize, usize)> {
        let Some(qkv) = &self.qkv else { candle_core::bail!("batched decoding is for self-attention layers") };
        let (b, t, _) = x.dims3()?;
        if t != 1 || n_caches != b {
            candle_core::bail!("batched decoding takes one position per row and one cache per row (got {t} positions, {b} rows, {n_caches} caches)");
        }
        Ok((qkv.forward(x)?, b, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim))
    }

    /// The fused path: every step batched, one kernel call for the attention of all rows.
    fn decode_batch_fused(&self, x: &Tensor, rope: Option<&Rope>, caches: &mut [&mut LayerCache]) -> Result<Tensor> {
        let (all, b, c, kv_width) = self.batched_qkv(x, caches.len())?;
        // (batch, heads, 1, head_dim): the shape the head norms and RoPE take
        let q = self.heads(&all.narrow(D::Minus1, 0, c)?, self.n_heads)?;
        let k = self.heads(&all.narrow(D::Minus1, c, kv_width)?, self.n_kv_heads)?;
        let (q, k) = match &self.qk_norm {
            Some((nq, nk)) => (nq.forward(&q)?, nk.forward(&k)?),
            None => (q, k),
        };
        let offsets: Vec<usize> = caches.iter().map(|c| c.len()).collect();
        let (q, k) = match rope {
            Some(r) => {
                let [q, k] = r.apply_at([&q, &k], &offsets)?;
                (q, k)
            }
            None => (q, k),
        };
        // with one position per row, (batch, heads, 1, head_dim) is already position-major
        let q = q.flatten_all()?.to_vec1::<f32>()?;
        let k = k.flatten_all()?.to_vec1::<f32>()?;
        let v = all.narrow(D::Minus1, c + kv_width, kv_width)?.flatten_all()?.to_vec1::<f32>()?;
        for (i, cache) in caches.iter_mut().enumerate() {
            let h = cache.host_mut(self.n_kv_heads, self.head_dim)?;
            h.k.extend_from_slice(&k[i * kv_width..][..kv_width]);
            h.v.extend_from_slice(&v[i * kv_width..][..kv_width]);
        }
        let rows: Vec<ferrolm_kernels::RowKv> = caches
            .iter()
            .map(|c| {
                let h = c.host.as_ref().expect("host cache set above");
                ferrolm_kernels::RowKv { k: &h.k, v: &h.v }
            })
            .collect();
        let heads = ferrolm_kernels::DecodeHeads {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            scale: (1.0 / (self.head_dim as f64).sqrt()) as f32,
        };
        let y = ferrolm_kernels::decode_attention(&q, &rows, heads)?;
        self.proj.forward(&Tensor::from_vec(y, (b, 1, c), x.device())?)
    }

    /// The per-row path: the projections batched, the attention a loop of candle ops per
    /// row over concatenated tensor caches (any device and dtype).
    fn decode_batch_rows(&self, x: &Tensor, rope: Option<&Rope>, caches: &mut [&mut LayerCache]) -> Result<Tensor> {
        let (all, b, c, kv_width) = self.batched_qkv(x, caches.len())?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let mut rows = Vec::with_capacity(b);
        for (i, cache) in caches.iter_mut().enumerate() {
            cache.tensor_form(x.device())?;
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
