//! Recurrent language models: the Elman RNN (1990) and the LSTM (Hochreiter & Schmidhuber
//! 1997, with the forget gate of Gers et al. 2000), the recurrences written out step by
//! step on candle tensors so autograd gives back-propagation through time.
//!
//! Shape of one forward pass over a window of T tokens:
//!
//! ```text
//! ids (B, T) ─ embedding ─► x (T, B, E)            time-major inside the model
//!   for each layer l:
//!     dropout(x)                                    (training only; Zaremba et al. 2014:
//!                                                    dropout on the non-recurrent connections)
//!     xw = x · W_ihᵀ + b         (T·B, G·H)          ONE GEMM for the whole window
//!     for t in 0..T:
//!       a = xw[t] + h · W_hhᵀ    (B, G·H)            one GEMM per step, all gates at once
//!       Elman: h = tanh(a)                           (G = 1)
//!       LSTM:  i, f, g, o = σ(a₀), σ(a₁), tanh(a₂), σ(a₃)   (G = 4, gate blocks of width H)
//!              c = f ⊙ c + i ⊙ g ;  h = o ⊙ tanh(c)
//!     x = [h_0 … h_{T-1}]        (T, B, H)
//! dropout(x) ─ head ─► logits (B, T, V)
//! ```
//!
//! Truncated back-propagation through time: every training window starts from a zero
//! state (h = c = 0) and gradients flow back at most `seq_len` steps. State is NOT carried
//! across windows: the trainer draws windows at random offsets (so a step is a pure
//! function of (seed, step) and resume is exact), and evaluation scores the same
//! fixed windows for every family, so a recurrent model and a Transformer see exactly the
//! same context at every scored position.
//!
//! Parameters (VarMap names): `wte.weight` (V, E); per layer `layers.{l}.w_ih` (G·H, in),
//! `layers.{l}.w_hh` (G·H, H), `layers.{l}.bias` (G·H) — one bias per gate (PyTorch keeps two,
//! b_ih + b_hh, which is the same function with H·G redundant parameters); `head.weight`
//! (V, H), `head.bias` (V). LSTM gate blocks are stacked in the order i, f, g, o.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

/// Which recurrence each layer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cell {
    /// h_t = tanh(W_ih x_t + W_hh h_{t-1} + b)
    Elman,
    /// Gated cell with input, forget, candidate and output gates.
    Lstm,
}

impl Cell {
    /// Gate blocks per layer (rows of W_ih are `gates() * hidden`).
    pub fn gates(self) -> usize {
        match self {
            Cell::Elman => 1,
            Cell::Lstm => 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecurrentConfig {
    pub cell: Cell,
    pub vocab_size: usize,
    /// Embedding width E.
    pub d_model: usize,
    /// State width H of every layer.
    pub hidden: usize,
    pub n_layers: usize,
    /// Dropout on each layer's input and on the last layer's output (training only).
    pub dropout: f32,
    /// The longest training window (every window starts from a zero state); generation
    /// recomputes a window of this many tokens.
    pub max_seq_len: usize,
}

impl RecurrentConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.vocab_size == 0 || self.d_model == 0 || self.hidden == 0 || self.n_layers == 0 || self.max_seq_len == 0 {
            return Err("model.vocab_size, d_model, hidden, n_layers and max_seq_len must be positive".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("model.dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }

    /// Parameter count (matches the built model; a test checks).
    pub fn num_params(&self) -> usize {
        let (v, e, h, g) = (self.vocab_size, self.d_model, self.hidden, self.cell.gates());
        let layers: usize = (0..self.n_layers).map(|l| {
            let input = if l == 0 { e } else { h };
            g * h * (input + h + 1)
        }).sum();
        v * e + layers + v * h + v
    }
}

/// One recurrent layer's weights.
#[derive(Debug, Clone)]
pub struct RecurrentLayer {
    cell: Cell,
    hidden: usize,
    w_ih: Tensor,
    w_hh: Tensor,
    bias: Tensor,
}

impl RecurrentLayer {
    pub fn new(cell: Cell, input: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let g = cell.gates() * hidden;
        let bound = 1.0 / (hidden as f64).sqrt();
        let uni = candle_nn::Init::Uniform { lo: -bound, up: bound };
        Ok(Self {
            cell,
            hidden,
            w_ih: vb.get_with_hints((g, input), "w_ih", uni)?,
            w_hh: vb.get_with_hints((g, hidden), "w_hh", uni)?,
            bias: vb.get_with_hints(g, "bias", candle_nn::Init::Const(0.0))?,
        })
    }

    /// Run the recurrence over a time-major sequence `x` (T, B, in) from a zero state;
    /// returns every step's hidden state (T, B, H). The input projection is one GEMM; the
    /// recurrence runs in [`RecurrenceOp`], which does exactly what [`Self::forward_stepwise`]
    /// spells out, with a hand-written backward pass through time (tests check the two agree).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (t_len, b, input) = x.dims3()?;
        let xw = affine(&x.reshape((t_len * b, input))?, &self.w_ih, &self.bias)?;
        let xw = xw.reshape((t_len, b, self.cell.gates() * self.hidden))?;
        if !xw.device().is_cpu() {
            return self.forward_stepwise(x);
        }
        xw.contiguous()?.apply_op2(&self.w_hh.contiguous()?, RecurrenceOp::new(self.cell, t_len, b, self.hidden))
    }

    /// The recurrence as plain candle ops, one time step after another — the readable
    /// definition, differentiated by candle's autograd. It is slow to train with: autograd
    /// turns each per-step slice of the precomputed projection into a zero-padded
    /// full-window gradient (quadratic in T), and accumulates W_hh's gradient in T small
    /// GEMMs; [`RecurrenceOp`] avoids both.
    pub fn forward_stepwise(&self, x: &Tensor) -> Result<Tensor> {
        let (t_len, b, input) = x.dims3()?;
        let h_dim = self.hidden;
        // The input projection of the whole window: one GEMM instead of T small ones.
        let xw = affine(&x.reshape((t_len * b, input))?, &self.w_ih, &self.bias)?;
        let xw = xw.reshape((t_len, b, self.cell.gates() * h_dim))?;
        let w_hh_t = self.w_hh.t()?;
        let mut h: Option<Tensor> = None;
        let mut c: Option<Tensor> = None;
        let mut outs = Vec::with_capacity(t_len);
        for t in 0..t_len {
            // Pre-activations of all gates: x_t·W_ihᵀ + b (precomputed) + h_{t-1}·W_hhᵀ.
            // The state starts at zero, so step 0 has no recurrent term.
            let x_t = xw.get(t)?;
            let a = match &h {
                Some(h) => (x_t + h.matmul(&w_hh_t)?)?,
                None => x_t,
            };
            let h_new = match self.cell {
                Cell::Elman => a.tanh()?,
                Cell::Lstm => {
                    let i = candle_nn::ops::sigmoid(&a.narrow(1, 0, h_dim)?)?;
                    let f = candle_nn::ops::sigmoid(&a.narrow(1, h_dim, h_dim)?)?;
                    let g = a.narrow(1, 2 * h_dim, h_dim)?.tanh()?;
                    let o = candle_nn::ops::sigmoid(&a.narrow(1, 3 * h_dim, h_dim)?)?;
                    let c_new = match &c {
                        Some(c) => ((f * c)? + (i * g)?)?,
                        None => (i * g)?, // f ⊙ 0 vanishes
                    };
                    let h_new = (o * c_new.tanh()?)?;
                    c = Some(c_new);
                    h_new
                }
            };
            outs.push(h_new.clone());
            h = Some(h_new);
        }
        Tensor::stack(&outs, 0)
    }
}

/// A float type the fused recurrence runs in (f32 for training, f64 for gradient checks).
trait Real: candle_core::WithDType {
    fn sigmoid(self) -> Self;
    fn tanh(self) -> Self;
}

impl Real for f32 {
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
    fn tanh(self) -> Self {
        f32::tanh(self)
    }
}

impl Real for f64 {
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
}

/// The whole recurrence of one layer as one differentiable op: inputs the precomputed
/// projections `xw` (T, B, G·H) and `w_hh` (G·H, H); output the hidden states (T, B, H).
///
/// Forward, per step: a = xw[t] + h_{t−1}·W_hhᵀ (one GEMM), then the gate nonlinearities
/// and the cell update element-wise; the activated gates and cells are kept for backward.
/// Backward, per step from the last: dh = ∂L/∂h_t + (dA_{t+1}·W_hh), then
///   LSTM: dc = dc_{t+1}·f_{t+1} + dh·o·(1−tanh²c);  dA = [dc·g·i(1−i), dc·c_{t−1}·f(1−f),
///         dc·i·(1−g²), dh·tanh(c)·o(1−o)]
///   Elman: dA = dh·(1−h²)
/// and ∂L/∂xw = dA; after the loop ∂L/∂W_hh = Σ_t dA_tᵀ·h_{t−1} as ONE GEMM over all steps.
pub struct RecurrenceOp {
    cell: Cell,
    t: usize,
    b: usize,
    h: usize,
    /// Activated gates (T, B, G·H) and cells (T, B, H) of the forward pass.
    saved: std::sync::Mutex<Option<(Tensor, Tensor)>>,
}

impl RecurrenceOp {
    pub fn new(cell: Cell, t: usize, b: usize, h: usize) -> Self {
        Self { cell, t, b, h, saved: std::sync::Mutex::new(None) }
    }

    fn fwd<T: Real>(&self, xw: &[T], w_hh: &[T]) -> Result<Vec<T>> {
        let (tl, b, h, gh) = (self.t, self.b, self.h, self.cell.gates() * self.h);
        let dev = candle_core::Device::Cpu;
        let w_t = Tensor::from_slice(w_hh, (gh, h), &dev)?.t()?;
        let mut acts = xw.to_vec();
        let mut hs = vec![T::from_f64(0.0); tl * b * h];
        let mut cells = vec![T::from_f64(0.0); if self.cell == Cell::Lstm { tl * b * h } else { 0 }];
        for t in 0..tl {
            let a = &mut acts[t * b * gh..(t + 1) * b * gh];
            if t > 0 {
                let rec: Vec<T> = Tensor::from_slice(&hs[(t - 1) * b * h..t * b * h], (b, h), &dev)?.matmul(&w_t)?.flatten_all()?.to_vec1()?;
                a.iter_mut().zip(&rec).for_each(|(a, &r)| *a += r);
            }
            for bi in 0..b {
                let row = &mut a[bi * gh..(bi + 1) * gh];
                let out = t * b * h + bi * h;
                match self.cell {
                    Cell::Elman => {
                        for j in 0..h {
                            row[j] = row[j].tanh();
                            hs[out + j] = row[j];
                        }
                    }
                    Cell::Lstm => {
                        for j in 0..h {
                            let i = row[j].sigmoid();
                            let f = row[h + j].sigmoid();
                            let g = row[2 * h + j].tanh();
                            let o = row[3 * h + j].sigmoid();
                            let c_prev = if t > 0 { cells[out - b * h + j] } else { T::from_f64(0.0) };
                            let c = f * c_prev + i * g;
                            row[j] = i;
                            row[h + j] = f;
                            row[2 * h + j] = g;
                            row[3 * h + j] = o;
                            cells[out + j] = c;
                            hs[out + j] = o * c.tanh();
                        }
                    }
                }
            }
        }
        let acts = Tensor::from_vec(acts, (tl, b, gh), &dev)?;
        let cells = Tensor::from_vec(cells, (if self.cell == Cell::Lstm { tl } else { 0 }, b, h), &dev)?;
        *self.saved.lock().expect("saved lock") = Some((acts, cells));
        Ok(hs)
    }

    fn bwd_impl<T: Real>(&self, w_hh: &Tensor, hs: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
        let (tl, b, h, gh) = (self.t, self.b, self.h, self.cell.gates() * self.h);
        let dev = candle_core::Device::Cpu;
        let (acts, cells) = self.saved.lock().expect("saved lock").clone().ok_or_else(|| candle_core::Error::Msg("recurrence backward before forward".into()))?;
        let acts: Vec<T> = acts.flatten_all()?.to_vec1()?;
        let cells: Vec<T> = cells.flatten_all()?.to_vec1()?;
        let hs_v: Vec<T> = hs.flatten_all()?.to_vec1()?;
        let dout: Vec<T> = grad.flatten_all()?.to_vec1()?;
        let w_hh = w_hh.contiguous()?;
        let zero = T::from_f64(0.0);
        let one = T::from_f64(1.0);
        let mut da = vec![zero; tl * b * gh];
        let mut dh_next = vec![zero; b * h];
        let mut dc_next = vec![zero; b * h];
        for t in (0..tl).rev() {
            for bi in 0..b {
                let a = &acts[t * b * gh + bi * gh..t * b * gh + (bi + 1) * gh];
                let d = &mut da[t * b * gh + bi * gh..t * b * gh + (bi + 1) * gh];
                let base = t * b * h + bi * h;
                for j in 0..h {
                    let dh = dout[base + j] + dh_next[bi * h + j];
                    match self.cell {
                        Cell::Elman => {
                            let y = a[j];
                            d[j] = dh * (one - y * y);
                        }
                        Cell::Lstm => {
                            let (i, f, g, o) = (a[j], a[h + j], a[2 * h + j], a[3 * h + j]);
                            let c = cells[base + j];
                            let c_prev = if t > 0 { cells[base - b * h + j] } else { zero };
                            let tc = c.tanh();
                            let dc = dc_next[bi * h + j] + dh * o * (one - tc * tc);
                            d[j] = dc * g * i * (one - i);
                            d[h + j] = dc * c_prev * f * (one - f);
                            d[2 * h + j] = dc * i * (one - g * g);
                            d[3 * h + j] = dh * tc * o * (one - o);
                            dc_next[bi * h + j] = dc * f;
                        }
                    }
                }
            }
            if t > 0 {
                let d_t = Tensor::from_slice(&da[t * b * gh..(t + 1) * b * gh], (b, gh), &dev)?;
                dh_next = d_t.matmul(&w_hh)?.flatten_all()?.to_vec1()?;
            }
        }
        let d_w_hh = if tl > 1 {
            let d_rest = Tensor::from_slice(&da[b * gh..], ((tl - 1) * b, gh), &dev)?;
            let h_prev = Tensor::from_slice(&hs_v[..(tl - 1) * b * h], ((tl - 1) * b, h), &dev)?;
            d_rest.t()?.matmul(&h_prev)?
        } else {
            Tensor::zeros((gh, h), T::DTYPE, &dev)?
        };
        Ok((Tensor::from_vec(da, (tl, b, gh), &dev)?, d_w_hh))
    }
}

impl candle_core::CustomOp2 for RecurrenceOp {
    fn name(&self) -> &'static str {
        "ferrolm-recurrence"
    }

    fn cpu_fwd(&self, s1: &candle_core::CpuStorage, l1: &candle_core::Layout, s2: &candle_core::CpuStorage, l2: &candle_core::Layout) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage as S;
        let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("{}: inputs must be contiguous", self.name());
        };
        let shape = candle_core::Shape::from((self.t, self.b, self.h));
        match (s1, s2) {
            (S::F32(x), S::F32(w)) => Ok((S::F32(self.fwd(&x[a0..a1], &w[b0..b1])?), shape)),
            (S::F64(x), S::F64(w)) => Ok((S::F64(self.fwd(&x[a0..a1], &w[b0..b1])?), shape)),
            _ => candle_core::bail!("{}: f32 or f64 inputs of one dtype expected", self.name()),
        }
    }

    fn bwd(&self, _xw: &Tensor, w_hh: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = match w_hh.dtype() {
            DType::F32 => self.bwd_impl::<f32>(w_hh, res, grad)?,
            DType::F64 => self.bwd_impl::<f64>(w_hh, res, grad)?,
            dt => candle_core::bail!("{}: unsupported dtype {dt:?}", self.name()),
        };
        Ok((Some(dx), Some(dw)))
    }
}

/// `x · wᵀ + b` for rows of x; the fused bias kernel for f32 on the CPU, plain broadcast
/// otherwise (the f64 gradient checks).
pub(crate) fn affine(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let y = x.matmul(&w.t()?)?;
    if y.dtype() == DType::F32 && y.device().is_cpu() {
        ferrolm_kernels::add_bias(&y, b)
    } else {
        y.broadcast_add(b)
    }
}

/// Dropout for any float dtype (the mask is drawn as f32 from the seeded stream).
pub(crate) fn dropout(x: &Tensor, p: f32, seed: Option<u64>) -> Result<Tensor> {
    match seed {
        Some(s) if p > 0.0 => {
            if x.dtype() == DType::F32 {
                ferrolm_kernels::dropout(x, p, s)
            } else {
                let ones = Tensor::ones(x.shape(), DType::F32, x.device())?;
                x * ferrolm_kernels::dropout(&ones, p, s)?.to_dtype(x.dtype())?
            }
        }
        _ => Ok(x.clone()),
    }
}

/// A stack of recurrent layers between a token embedding and a softmax head.
#[derive(Debug, Clone)]
pub struct RecurrentLm {
    cfg: RecurrentConfig,
    wte: Embedding,
    layers: Vec<RecurrentLayer>,
    head_w: Tensor,
    head_b: Tensor,
}

impl RecurrentLm {
    pub fn new(cfg: &RecurrentConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let wte = candle_nn::embedding(cfg.vocab_size, cfg.d_model, vb.pp("wte"))?;
        let layers = (0..cfg.n_layers)
            .map(|l| {
                let input = if l == 0 { cfg.d_model } else { cfg.hidden };
                RecurrentLayer::new(cfg.cell, input, cfg.hidden, vb.pp(format!("layers.{l}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let head_w = vb.get_with_hints((cfg.vocab_size, cfg.hidden), "head.weight", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
        let head_b = vb.get_with_hints(cfg.vocab_size, "head.bias", candle_nn::Init::Const(0.0))?;
        Ok(Self { cfg: cfg.clone(), wte, layers, head_w, head_b })
    }

    pub fn config(&self) -> &RecurrentConfig {
        &self.cfg
    }

    pub fn device(&self) -> &candle_core::Device {
        self.head_w.device()
    }

    /// Next-token logits (B, T, V) for ids (B, T). `dropout_seed`: Some in training.
    pub fn forward(&self, ids: &Tensor, dropout_seed: Option<u64>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let p = self.cfg.dropout;
        let seed_for = |k: u64| dropout_seed.map(|s| s ^ ((k + 1) << 40));
        let mut x = self.wte.forward(&ids.t()?.contiguous()?)?; // (T, B, E)
        for (l, layer) in self.layers.iter().enumerate() {
            x = dropout(&x, p, seed_for(l as u64))?;
            x = layer.forward(&x)?;
        }
        let x = dropout(&x, p, seed_for(self.layers.len() as u64))?;
        // Back to batch-major before the head (H is much smaller than V).
        let x = x.transpose(0, 1)?.contiguous()?.reshape((b * t, self.cfg.hidden))?;
        affine(&x, &self.head_w, &self.head_b)?.reshape((b, t, self.cfg.vocab_size))
    }
}

/// Initialise a recurrent LM's variables deterministically from `seed` (each variable from
/// its own stream keyed by name): embeddings U(−0.1, 0.1), recurrent and head weights
/// U(−1/√fan_in, 1/√fan_in) (PyTorch's nn.LSTM/nn.Linear defaults), biases 0 except the
/// LSTM forget-gate block, which starts at 1 so the cell remembers by default early in
/// training (Gers et al. 2000; Jozefowicz et al. 2015).
pub fn init_recurrent(varmap: &VarMap, cfg: &RecurrentConfig, seed: u64) -> Result<()> {
    crate::init::init_by_name(varmap, seed, |name, shape| {
        let fan_in = shape.last().copied().unwrap_or(1) as f64;
        if name == "wte.weight" {
            crate::init::Fill::Uniform(0.1)
        } else if name.ends_with("bias") {
            if cfg.cell == Cell::Lstm && name.starts_with("layers.") {
                let h = cfg.hidden;
                crate::init::Fill::Values((0..4 * h).map(|k| if (h..2 * h).contains(&k) { 1.0 } else { 0.0 }).collect())
            } else {
                crate::init::Fill::Const(0.0)
            }
        } else {
            crate::init::Fill::Uniform(1.0 / fan_in.sqrt())
        }
    })
}
