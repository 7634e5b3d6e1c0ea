//! The neural probabilistic language model of Bengio, Ducharme, Vincent & Jauvin (2003):
//! the previous n−1 tokens are looked up in a shared embedding table C, concatenated into
//! x, and mapped to next-token logits
//!
//! ```text
//! y = b + W·x + U·tanh(d + H·x)        x = [C(w_{t-n+1}); …; C(w_{t-1})]   (length (n−1)·E)
//! ```
//!
//! `W` are the optional "direct connections" from the embeddings to the output (the paper
//! trains models with and without them). The context is a fixed window: a position sees
//! exactly the `context` = n−1 tokens before its target. At the start of a training
//! window there are fewer real tokens than that; those slots hold a learned padding
//! embedding (row V of the table), so the model never looks outside the window, as the
//! recurrent models and the Transformer do not either.
//!
//! Parameters (VarMap names): `wte.weight` (V+1, E), `hidden.weight` (Hd, (n−1)·E),
//! `hidden.bias` (Hd), `out.weight` (V, Hd), `out.bias` (V), and with direct connections
//! `direct.weight` (V, (n−1)·E).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder, VarMap};

use crate::rnn::{affine, dropout};

#[derive(Debug, Clone, PartialEq)]
pub struct NplmConfig {
    pub vocab_size: usize,
    /// Embedding width E (the paper's m).
    pub d_model: usize,
    /// Tokens of context, n−1.
    pub context: usize,
    /// Width of the tanh layer (the paper's h).
    pub hidden: usize,
    /// Direct connections from the concatenated embeddings to the output.
    pub direct: bool,
    /// Dropout on the concatenated embeddings and on the tanh layer (training only; the
    /// 2003 model had none, 0 reproduces it).
    pub dropout: f32,
    /// The longest training window; generation recomputes a window of this many tokens.
    pub max_seq_len: usize,
}

impl NplmConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.vocab_size == 0 || self.d_model == 0 || self.hidden == 0 || self.context == 0 || self.max_seq_len == 0 {
            return Err("model.vocab_size, d_model, hidden, context and max_seq_len must be positive".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("model.dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }

    /// Parameter count (matches the built model; a test checks).
    pub fn num_params(&self) -> usize {
        let (v, e, n, h) = (self.vocab_size, self.d_model, self.context, self.hidden);
        let direct = if self.direct { v * n * e } else { 0 };
        (v + 1) * e + h * (n * e + 1) + v * (h + 1) + direct
    }
}

#[derive(Debug, Clone)]
pub struct Nplm {
    cfg: NplmConfig,
    wte: Embedding,
    hidden_w: Tensor,
    hidden_b: Tensor,
    out_w: Tensor,
    out_b: Tensor,
    direct_w: Option<Tensor>,
}

impl Nplm {
    pub fn new(cfg: &NplmConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let (v, e, n, h) = (cfg.vocab_size, cfg.d_model, cfg.context, cfg.hidden);
        let zero = candle_nn::Init::Const(0.0);
        let kaiming = candle_nn::init::DEFAULT_KAIMING_NORMAL;
        Ok(Self {
            cfg: cfg.clone(),
            // Row V is the padding embedding for context slots before the window start.
            wte: candle_nn::embedding(v + 1, e, vb.pp("wte"))?,
            hidden_w: vb.get_with_hints((h, n * e), "hidden.weight", kaiming)?,
            hidden_b: vb.get_with_hints(h, "hidden.bias", zero)?,
            out_w: vb.get_with_hints((v, h), "out.weight", kaiming)?,
            out_b: vb.get_with_hints(v, "out.bias", zero)?,
            direct_w: if cfg.direct { Some(vb.get_with_hints((v, n * e), "direct.weight", zero)?) } else { None },
        })
    }

    pub fn config(&self) -> &NplmConfig {
        &self.cfg
    }

    pub fn device(&self) -> &candle_core::Device {
        self.out_w.device()
    }

    /// Context ids (B·T, n−1), oldest first: position t of a row sees ids[t−n+2 ..= t]
    /// (the target is ids[t+1]); slots before the window start hold the padding id V.
    fn context_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let n = self.cfg.context;
        let pad = self.cfg.vocab_size as u32;
        let rows: Vec<Vec<u32>> = ids.to_vec2()?;
        let mut out = Vec::with_capacity(b * t * n);
        for row in &rows {
            for pos in 0..t {
                for j in 0..n {
                    // slot j holds the token (n−1−j) places before position `pos`
                    let back = n - 1 - j;
                    out.push(if pos >= back { row[pos - back] } else { pad });
                }
            }
        }
        Tensor::from_vec(out, (b * t, n), ids.device())
    }

    /// Next-token logits (B, T, V) for ids (B, T). `dropout_seed`: Some in training.
    pub fn forward(&self, ids: &Tensor, dropout_seed: Option<u64>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let (v, e, n) = (self.cfg.vocab_size, self.cfg.d_model, self.cfg.context);
        let ctx = self.context_ids(ids)?;
        let x = self.wte.forward(&ctx)?.reshape((b * t, n * e))?; // concatenated embeddings
        let p = self.cfg.dropout;
        let x = dropout(&x, p, dropout_seed.map(|s| s ^ (1 << 40)))?;
        let h = affine(&x, &self.hidden_w, &self.hidden_b)?.tanh()?;
        let h = dropout(&h, p, dropout_seed.map(|s| s ^ (2 << 40)))?;
        let mut y = affine(&h, &self.out_w, &self.out_b)?;
        if let Some(w) = &self.direct_w {
            y = (y + x.matmul(&w.t()?)?)?;
        }
        y.reshape((b, t, v))
    }
}

/// Seeded initialisation: embeddings U(−0.1, 0.1); tanh-layer and output weights
/// U(−1/√fan_in, 1/√fan_in); direct connections and biases 0 (so a model with direct
/// connections starts as the same function as one without).
pub fn init_nplm(varmap: &VarMap, seed: u64) -> Result<()> {
    crate::init::init_by_name(varmap, seed, |name, shape| {
        let fan_in = shape.last().copied().unwrap_or(1) as f64;
        if name == "wte.weight" {
            crate::init::Fill::Uniform(0.1)
        } else if name.ends_with("bias") || name == "direct.weight" {
            crate::init::Fill::Const(0.0)
        } else {
            crate::init::Fill::Uniform(1.0 / fan_in.sqrt())
        }
    })
}
