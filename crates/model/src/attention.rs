//! Multi-head attention with one mask vocabulary for every Transformer shape:
//! causal (GPT), prefix (bidirectional over a prefix, causal after), bidirectional
//! (encoders), optional segment ids (packed examples never see each other; padding is
//! never attended), grouped-query heads, RoPE, a KV cache, and cross-attention to an
//! encoder's output for encoder-decoders.

use ferrolm_kernels::fused_self_attention;
use candle_core::{Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::linear::Linear;

use crate::config::TransformerConfig;
use crate::mlp::linear;
use crate::norm::Norm;

// Batched single-token decoding for serving, in its own file.
mod batched;
pub use batched::{row_loop_decoding, set_row_loop_decoding};

/// Which keys a query may see, by absolute position.
#[derive(Debug, Clone, PartialEq)]
pub enum AttnMask {
    /// Query at position i sees keys at positions j ≤ i.
    Causal,
    /// Per batch row b, positions < prefix_len[b] see each other in both directions; later
    /// positions see every earlier position (and themselves), as in a prefix LM.
    Prefix(Vec<usize>),
    /// Every query sees every key (encoders, cross-attention).
    Bidirectional,
}

/// Segment id that is never attended to: use it for padding positions.
pub const PAD_SEGMENT: u32 = u32::MAX;

/// A mask kind plus optional segment ids (row-major, batch × positions). With segments a
/// query attends only to keys of the same segment, which is how packed examples are kept
/// apart; keys whose segment is [`PAD_SEGMENT`] are never attended.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskSpec {
    pub kind: AttnMask,
    pub q_segments: Option<Vec<u32>>,
    pub k_segments: Option<Vec<u32>>,
}

impl MaskSpec {
    pub fn causal() -> Self {
        Self { kind: AttnMask::Causal, q_segments: None, k_segments: None }
    }
    pub fn bidirectional() -> Self {
        Self { kind: AttnMask::Bidirectional, q_segments: None, k_segments: None }
    }
    pub fn with_segments(mut self, segments: Vec<u32>) -> Self {
        self.q_segments = Some(segments.clone());
        self.k_segments = Some(segments);
        self
    }

    fn visible(&self, b: usize, i: usize, j: usize) -> bool {
        match &self.kind {
            AttnMask::Causal => j <= i,
            AttnMask::Prefix(p) => j <= i || (i < p[b] && j < p[b]),
            AttnMask::Bidirectional => true,
        }
    }

    /// Additive bias of shape (batch, 1, tq, tk): 0 where visible, a large negative number
    /// where not (not −∞, so a fully masked padding row stays finite instead of NaN).
    /// `q_offset` is the absolute position of the first query (non-zero with a KV cache);
    /// keys start at position 0. Returns None when nothing is masked.
    pub fn bias(&self, batch: usize, tq: usize, tk: usize, q_offset: usize, device: &Device) -> Result<Option<Tensor>> {
        let segmented = self.q_segments.is_some() || self.k_segments.is_some();
        let trivially_open = match &self.kind {
            AttnMask::Bidirectional => true,
            AttnMask::Causal | AttnMask::Prefix(_) => tq == 1 && q_offset + 1 == tk,
        };
        if trivially_open && !segmented {
            return Ok(None);
        }
        if let AttnMask::Prefix(p) = &self.kind {
            if p.len() != batch {
                candle_core::bail!("prefix mask has {} lengths for a batch of {batch}", p.len());
            }
        }
        let mut bias = vec![0f32; batch * tq * tk];
        for b in 0..batch {
            for qi in 0..tq {
                let i = q_offset + qi;
                let row = &mut bias[(b * tq + qi) * tk..(b * tq + qi + 1) * tk];
                for (j, v) in row.iter_mut().enumerate() {
                    let mut ok = self.visible(b, i, j);
                    if let Some(ks) = &self.k_segments {
                        let kseg = ks[b * tk + j];
                        ok &= kseg != PAD_SEGMENT;
                        if let Some(qs) = &self.q_segments {
                            ok &= qs[b * tq + qi] == kseg;
                        }
                    }
                    if !ok {
                        *v = -1e30;
                    }
                }
            }
        }
        Tensor::from_vec(bias, (batch, 1, tq, tk), device).map(Some)
    }
}

/// Rotary position embedding (Su et al. 2021), "rotate half" layout as in Llama.
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    /// The same tables as host floats (on the CPU), for the fused rotation of a whole
    /// q/k/v projection in training ([`ferrolm_kernels::rope_qkv`]).
    host: Option<std::sync::Arc<ferrolm_kernels::RopeTables>>,
}

impl Rope {
    pub fn new(head_dim: usize, max_len: usize, theta: f64, device: &Device) -> Result<Self> {
        Self::from_inv_freq(&Self::inv_freq(head_dim, theta), max_len, device)
    }

    /// The unscaled inverse frequencies θ^(−2i/d), one per pair of dimensions.
    pub fn inv_freq(head_dim: usize, theta: f64) -> Vec<f64> {
        (0..head_dim / 2).map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)).collect()
    }

    /// Tables for the given inverse frequencies (scaled ones, e.g. Llama 3's).
    pub fn from_inv_freq(inv_freq: &[f64], max_len: usize, device: &Device) -> Result<Self> {
        let half = inv_freq.len();
        let inv: Vec<f32> = inv_freq.iter().map(|&f| f as f32).collect();
        let mut ang = vec![0f32; max_len * half];
        for p in 0..max_len {
            for i in 0..half {
                ang[p * half + i] = p as f32 * inv[i];
            }
        }
        let ang = Tensor::from_vec(ang, (max_len, half), device)?;
        let (cos, sin) = (ang.cos()?, ang.sin()?);
        let host = if device.is_cpu() {
            let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
            Some(std::sync::Arc::new(ferrolm_kernels::RopeTables { cos: flat(&cos)?, sin: flat(&sin)?, half }))
        } else {
            None
        };
        Ok(Self { cos, sin, host })
    }

    /// x: (batch, heads, T, head_dim), positions offset..offset+T.
    pub fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let t = x.dim(2)?;
        let max = self.cos.dim(0)?;
        if offset + t > max {
            candle_core::bail!("position {} is beyond the model's max_seq_len {max}", offset + t - 1);
        }
        let half = x.dim(D::Minus1)? / 2;
        let cos = self.cos.narrow(0, offset, t)?;
        let sin = self.sin.narrow(0, offset, t)?;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
        let r2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
        Tensor::cat(&[r1, r2], D::Minus1)
    }

    /// Each of `xs`: (batch, heads, 1, head_dim), row b at position `positions[b]`
    /// (batched decoding, rows of different lengths; queries and keys share one gather
    /// of the tables). The same arithmetic as [`Rope::apply`] row by row.
    pub fn apply_at(&self, xs: [&Tensor; 2], positions: &[usize]) -> Result<[Tensor; 2]> {
        let b = positions.len();
        let max = self.cos.dim(0)?;
        if let Some(&p) = positions.iter().find(|&&p| p >= max) {
            candle_core::bail!("position {p} is beyond the model's max_seq_len {max}");
        }
        let half = self.cos.dim(1)?;
        let idx: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        let idx = Tensor::from_vec(idx, b, self.cos.device())?;
        let cos = self.cos.index_select(&idx, 0)?.reshape((b, 1, 1, half))?;
        let sin = self.sin.index_select(&idx, 0)?.reshape((b, 1, 1, half))?;
        let rotate = |x: &Tensor| -> Result<Tensor> {
            let (xb, _, t, d) = x.dims4()?;
            if xb != b || t != 1 || d != 2 * half {
                candle_core::bail!("apply_at takes one position per row: {:?} for {b} positions of {} dims", x.dims(), 2 * half);
            }
            let x1 = x.narrow(D::Minus1, 0, half)?;
            let x2 = x.narrow(D::Minus1, half, half)?;
            let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
            let r2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
            Tensor::cat(&[r1, r2], D::Minus1)
        };
        Ok([rotate(xs[0])?, rotate(xs[1])?])
    }
}

/// Cached keys and values of one attention layer. Two forms: candle tensors (batch,
/// kv_heads, T, head_dim), which grow by concatenation (other devices, cross-attention,
/// batches of several sequences); or, for one sequence's self-attention on the CPU in f32,
/// host buffers that grow in place (`HostKv`), which batched decoding attends over
/// without copying. Which form a cache takes is decided at its first append.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    host: Option<HostKv>,
}

/// One sequence's keys and values in growable host buffers, position-major: position `p`,
/// key/value head `g` at `(p · n_kv_heads + g) · head_dim`. Appending a position writes
/// its values at the end (amortised, no copy of the earlier positions), and
/// `ferrolm_kernels::decode_attention` reads the buffers as they are.
#[derive(Debug, Clone)]
pub(crate) struct HostKv {
    pub(crate) k: Vec<f32>,
    pub(crate) v: Vec<f32>,
    pub(crate) n_kv_heads: usize,
    pub(crate) head_dim: usize,
}

impl HostKv {
    fn width(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    pub(crate) fn len(&self) -> usize {
        self.k.len() / self.width()
    }

    /// (1, kv_heads, T, head_dim) tensors of everything cached (copies: the full-sequence
    /// path and the per-row decoding path take tensors).
    fn tensors(&self, device: &Device) -> Result<(Tensor, Tensor)> {
        let shape = (1, self.len(), self.n_kv_heads, self.head_dim);
        let k = Tensor::from_slice(&self.k, shape, device)?.transpose(1, 2)?.contiguous()?;
        let v = Tensor::from_slice(&self.v, shape, device)?.transpose(1, 2)?.contiguous()?;
        Ok((k, v))
    }
}

/// Position-major values of a (1, kv_heads, T, head_dim) tensor.
fn position_major(x: &Tensor) -> Result<Vec<f32>> {
    x.transpose(1, 2)?.contiguous()?.flatten_all()?.to_vec1::<f32>()
}

impl LayerCache {
    /// Append keys and values (batch, kv_heads, T, head_dim) of self-attention and return
    /// everything cached, as tensors of that shape.
    pub(crate) fn append(&mut self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let host = self.host.is_some()
            || (self.k.is_none() && k.device().is_cpu() && k.dtype() == candle_core::DType::F32 && k.dim(0)? == 1 && !row_loop_decoding());
        if !host {
            let k = match &self.k { Some(pk) => Tensor::cat(&[pk, &k], 2)?, None => k };
            let v = match &self.v { Some(pv) => Tensor::cat(&[pv, &v], 2)?, None => v };
            // cached without their graph (the projections that made them): see Stack::forward
            self.k = Some(k.detach());
            self.v = Some(v.detach());
            return Ok((k, v));
        }
        let (b, n_kv_heads, _, head_dim) = k.dims4()?;
        if b != 1 {
            candle_core::bail!("a host KV cache holds one sequence, not {b}");
        }
        let device = k.device().clone();
        let h = self.host_mut(n_kv_heads, head_dim)?;
        h.k.extend_from_slice(&position_major(&k)?);
        h.v.extend_from_slice(&position_major(&v)?);
        h.tensors(&device)
    }

    /// The host form of this cache (tensors cached so far are moved into it once).
    pub(crate) fn host_mut(&mut self, n_kv_heads: usize, head_dim: usize) -> Result<&mut HostKv> {
        if self.host.is_none() {
            let mut h = HostKv { k: Vec::new(), v: Vec::new(), n_kv_heads, head_dim };
            if let (Some(k), Some(v)) = (&self.k, &self.v) {
                if k.dim(0)? != 1 {
                    candle_core::bail!("batched decoding takes one sequence per cache, this one holds {}", k.dim(0)?);
                }
                h.k = position_major(k)?;
                h.v = position_major(v)?;
                self.k = None;
                self.v = None;
            }
            self.host = Some(h);
        }
        let h = self.host.as_mut().expect("set above");
        if (h.n_kv_heads, h.head_dim) != (n_kv_heads, head_dim) {
            candle_core::bail!("KV cache of {}×{} heads used by a layer of {n_kv_heads}×{head_dim}", h.n_kv_heads, h.head_dim);
        }
        Ok(h)
    }

    /// Everything cached as (1, kv_heads, T, head_dim) tensors on `device`, the host form
    /// turned back into tensors (for the per-row decoding path).
    pub(crate) fn tensor_form(&mut self, device: &Device) -> Result<()> {
        if let Some(h) = self.host.take() {
            if h.len() > 0 {
                let (k, v) = h.tensors(device)?;
                self.k = Some(k);
                self.v = Some(v);
            }
        }
        Ok(())
    }
}

/// Per-layer caches for incremental decoding; `self_attn[i]` for block i's
/// self-attention, `cross_attn[i]` for its cross-attention (encoder keys, computed once).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub self_attn: Vec<LayerCache>,
    pub cross_attn: Vec<LayerCache>,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        Self { self_attn: vec![LayerCache::default(); n_layers], cross_attn: vec![LayerCache::default(); n_layers] }
    }
    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.self_attn.first().map(|c| c.len()).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The q/k head norms when the config asks for them (named `ln_q`/`ln_k` so the seeded
/// initialisation gives them unit gains, as every other norm).
fn qk_norm(cfg: &TransformerConfig, vb: &VarBuilder) -> Result<Option<(Norm, Norm)>> {
    if !cfg.qk_norm {
        return Ok(None);
    }
    let hd = cfg.head_dim();
    Ok(Some((Norm::rms(hd, cfg.norm_eps, vb.pp("ln_q"))?, Norm::rms(hd, cfg.norm_eps, vb.pp("ln_k"))?)))
}

#[derive(Debug, Clone)]
pub struct Attention {
    /// Self-attention: one fused projection to q, k, v. Cross-attention: q from the
    /// decoder, k and v from the encoder output.
    q: Option<Linear>,
    kv: Option<Linear>,
    qkv: Option<Linear>,
    proj: Linear,
    /// Per-head RMSNorm of queries and keys (Qwen3), applied before RoPE.
    qk_norm: Option<(Norm, Norm)>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    dropout: f32,
}

/// Everything one attention call needs besides its input.
pub struct AttnInput<'a> {
    pub bias: Option<&'a Tensor>,
    pub offset: usize,
    pub rope: Option<&'a Rope>,
    pub cache: Option<&'a mut LayerCache>,
    /// Encoder output for cross-attention.
    pub memory: Option<&'a Tensor>,
    /// Seed for the dropout stream of this call when training with dropout.
    pub dropout_seed: Option<u64>,
    /// Seed for LoRA adapter dropout (Some in training, whatever the model's dropout).
    pub lora_seed: Option<u64>,
    /// Plain causal masking done inside the softmax kernel (no bias tensor); used when the
    /// mask is causal without segments.
    pub causal: bool,
}

impl Attention {
    pub fn new_self(cfg: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        let (d, q, kv) = (cfg.d_model, cfg.q_width(), cfg.kv_width());
        let qkv = linear(d, q + 2 * kv, cfg.has_qkv_bias(), vb.pp("qkv"))?;
        Ok(Self {
            q: None,
            kv: None,
            qkv: Some(qkv),
            proj: linear(q, d, cfg.has_attn_out_bias(), vb.pp("proj"))?,
            qk_norm: qk_norm(cfg, &vb)?,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim(),
            dropout: cfg.dropout,
        })
    }

    pub fn new_cross(cfg: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        let (d, q, kv) = (cfg.d_model, cfg.q_width(), cfg.kv_width());
        let bias = cfg.has_qkv_bias();
        Ok(Self {
            q: Some(linear(d, q, bias, vb.pp("q"))?),
            kv: Some(linear(d, 2 * kv, bias, vb.pp("kv"))?),
            qkv: None,
            proj: linear(q, d, cfg.has_attn_out_bias(), vb.pp("proj"))?,
            qk_norm: qk_norm(cfg, &vb)?,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim(),
            dropout: cfg.dropout,
        })
    }

    pub fn dropout_p(&self) -> f32 {
        self.dropout
    }

    /// The layers LoRA may adapt (self-attention's fused q/k/v and output projections).
    pub(crate) fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        let mut v: Vec<(&'static str, &mut Linear)> = Vec::new();
        if let Some(qkv) = self.qkv.as_mut() {
            v.push(("attn.qkv", qkv));
        }
        v.push(("attn.proj", &mut self.proj));
        v
    }

    fn heads(&self, x: &Tensor, n: usize) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        x.reshape((b, t, n, self.head_dim))?.transpose(1, 2)?.contiguous()
    }

    fn repeat_kv(&self, x: Tensor) -> Result<Tensor> {
        let rep = self.n_heads / self.n_kv_heads;
        if rep == 1 {
            return Ok(x);
        }
        let (b, h, t, d) = x.dims4()?;
        x.unsqueeze(2)?.expand((b, h, rep, t, d))?.reshape((b, h * rep, t, d))
    }

    pub fn forward(&self, x: &Tensor, inp: AttnInput) -> Result<Tensor> {
        // Training-shaped self-attention (no cache, no mask bias, no attention dropout, no
        // q/k norm) takes the fused CPU kernel: same result, a fraction of the copies.
        let attn_dropout = inp.dropout_seed.is_some() && self.dropout > 0.0;
        let lora_seed = |k: u64| inp.lora_seed.map(|s| s.wrapping_mul(0xbf58_476d_1ce4_e5b9).wrapping_add(k));
        // RoPE models rotate the projection's queries and keys in one pass first.
        let rope_tables = match inp.rope {
            Some(r) => r.host.as_ref().map(Some),
            None => Some(None),
        };
        if let (Some(qkv), None, None, Some(rope_tables), None, false, None) = (&self.qkv, inp.memory, inp.bias, rope_tables, inp.cache.as_ref(), attn_dropout, &self.qk_norm) {
            if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
                let mut all = qkv.forward_t(x, lora_seed(1))?;
                if let Some(tables) = rope_tables {
                    all = ferrolm_kernels::rope_qkv(&all, tables, self.n_heads, self.n_kv_heads, self.head_dim, inp.offset)?;
                }
                let y = fused_self_attention(&all, self.n_heads, self.n_kv_heads, self.head_dim, inp.causal)?;
                let y = self.proj.forward_t(&y, lora_seed(2))?;
                return match inp.dropout_seed {
                    Some(seed) => ferrolm_kernels::dropout(&y, self.dropout, seed ^ 0x9e37_79b9_7f4a_7c15),
                    None => Ok(y),
                };
            }
        }
        let (b, t, _) = x.dims3()?;
        let c = self.n_heads * self.head_dim;
        let kv_width = self.n_kv_heads * self.head_dim;
        let (q, k, v) = match (&self.qkv, inp.memory) {
            (Some(qkv), None) => {
                let all = qkv.forward_t(x, lora_seed(1))?;
                let q = self.heads(&all.narrow(D::Minus1, 0, c)?, self.n_heads)?;
                let k = self.heads(&all.narrow(D::Minus1, c, kv_width)?, self.n_kv_heads)?;
                let v = self.heads(&all.narrow(D::Minus1, c + kv_width, kv_width)?, self.n_kv_heads)?;
                let (q, k) = match &self.qk_norm {
                    Some((nq, nk)) => (nq.forward(&q)?, nk.forward(&k)?),
                    None => (q, k),
                };
                let (q, k) = match inp.rope {
                    Some(r) => (r.apply(&q, inp.offset)?, r.apply(&k, inp.offset)?),
                    None => (q, k),
                };
                // Append to the cache: keys for earlier positions are reused, not recomputed.
                let (k, v) = match inp.cache {
                    Some(cache) => cache.append(k, v)?,
                    None => (k, v),
                };
                (q, k, v)
            }
            (None, Some(memory)) => {
                let q = self.heads(&self.q.as_ref().expect("cross attention has q").forward(x)?, self.n_heads)?;
                let q = match &self.qk_norm {
                    Some((nq, _)) => nq.forward(&q)?,
                    None => q,
                };
                // The encoder output is fixed during decoding: project it once and cache.
                let cached = inp.cache.as_ref().and_then(|c| c.k.clone().zip(c.v.clone()));
                let (k, v) = match cached {
                    Some(kv) => kv,
                    None => {
                        let kv = self.kv.as_ref().expect("cross attention has kv").forward(memory)?;
                        let k = self.heads(&kv.narrow(D::Minus1, 0, kv_width)?, self.n_kv_heads)?;
                        let v = self.heads(&kv.narrow(D::Minus1, kv_width, kv_width)?, self.n_kv_heads)?;
                        let k = match &self.qk_norm {
                            Some((_, nk)) => nk.forward(&k)?,
                            None => k,
                        };
                        if let Some(cache) = inp.cache {
                            cache.k = Some(k.clone());
                            cache.v = Some(v.clone());
                        }
                        (k, v)
                    }
                };
                (q, k, v)
            }
            _ => candle_core::bail!("attention layer called with the wrong inputs (self vs cross)"),
        };
        let (k, v) = (self.repeat_kv(k)?, self.repeat_kv(v)?);
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = q.matmul(&k.t()?)?;
        let mut att = match inp.bias {
            // A general mask (prefix, segments, padding) is an additive bias.
            Some(bias) => ferrolm_kernels::softmax_last_dim(&(scores * scale)?.broadcast_add(bias)?)?,
            None => {
                let causal = inp.causal.then(|| k.dim(2).unwrap_or(0) - q.dim(2).unwrap_or(0));
                ferrolm_kernels::scaled_softmax(&scores, scale, causal)?
            }
        };
        if let Some(seed) = inp.dropout_seed {
            att = ferrolm_kernels::dropout(&att, self.dropout, seed)?;
        }
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, c))?;
        let y = self.proj.forward_t(&y, lora_seed(2))?;
        match inp.dropout_seed {
            Some(seed) => ferrolm_kernels::dropout(&y, self.dropout, seed ^ 0x9e37_79b9_7f4a_7c15),
            None => Ok(y),
        }
    }
}
