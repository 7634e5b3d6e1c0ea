//! Quantized weights for CPU decoding: a linear layer may keep its weights in GGUF's Q8_0,
//! Q4_K or Q6_K blocks (`ferrolm_kernels::{q8, q4k}`) or in half precision
//! (`ferrolm_kernels::f16`), and products of a few input rows — token-by-token decoding,
//! which reads every weight once per token — read those, a half to an eighth of f32's bytes.
//! Two sources: a GGUF file stored in those types (its blocks or halves used as stored, see
//! [`crate::gguf`]) and `--quant q8_0|q4_k|f16` on a model loaded in f32
//! ([`crate::AnyModel::quantize`]).

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{bail, Result};
use ferrolm_kernels::f16::F16Matrix;
use ferrolm_kernels::q4k::{KMatrix, KQuant};
use ferrolm_kernels::q8::{Q8Act, Q8Matrix};

/// `x·Wᵀ` on weights held quantized as a candle op, so that a product on quantized weights
/// has a gradient with respect to its input: dX = dY·W, W widened to f32 a panel at a time
/// ([`ferrolm_kernels::sgemm::matmul_dequantized`]). W itself is frozen (no gradient): what
/// a LoRA adapter below a quantized layer needs (QLoRA). The inputs' rounding to 8 bits of
/// Q8_0 and k-quant rows ([`QuantWeights::input_rounding`]) passes the gradient straight through, as
/// rounding in quantization-aware training does. Products of up to
/// [`crate::linear::QUANT_MAX_ROWS`] input rows read the blocks, more rows take
/// [`QuantWeights::matmul_t_panels`].
pub(crate) struct QuantProduct(pub std::sync::Arc<QuantWeights>);

/// The input gradient of [`QuantProduct`]: `dY·W`.
struct QuantProductGrad(std::sync::Arc<QuantWeights>);

impl candle_core::CustomOp1 for QuantProduct {
    fn name(&self) -> &'static str {
        "ferrolm-quant-product"
    }

    fn cpu_fwd(&self, s: &candle_core::CpuStorage, l: &candle_core::Layout) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let q = &self.0;
        let x = ferrolm_kernels::contiguous_f32(s, l, self.name())?;
        let k = l.dims().last().copied().unwrap_or(0);
        if k != q.cols() {
            candle_core::bail!("input width {k} for quantized weights of width {}", q.cols());
        }
        let y = quant_forward(q, x, x.len() / k.max(1));
        let mut dims = l.dims().to_vec();
        *dims.last_mut().expect("an input of rank >= 1 (its width was checked)") = q.rows();
        Ok((candle_core::CpuStorage::F32(y), dims.into()))
    }

    fn bwd(&self, _x: &candle_core::Tensor, _y: &candle_core::Tensor, grad: &candle_core::Tensor) -> candle_core::Result<Option<candle_core::Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&QuantProductGrad(self.0.clone()))?))
    }
}

impl candle_core::CustomOp1 for QuantProductGrad {
    fn name(&self) -> &'static str {
        "ferrolm-quant-product-grad"
    }

    fn cpu_fwd(&self, s: &candle_core::CpuStorage, l: &candle_core::Layout) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let q = &self.0;
        let dy = ferrolm_kernels::contiguous_f32(s, l, self.name())?;
        let (n, k) = (q.rows(), q.cols());
        if l.dims().last().copied() != Some(n) {
            candle_core::bail!("gradient of width {:?} for quantized weights of {n} rows", l.dims().last());
        }
        let dx = quant_input_grad(q, dy, dy.len() / n.max(1));
        let mut dims = l.dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = k;
        Ok((candle_core::CpuStorage::F32(dx), dims.into()))
    }
}

/// x·Wᵀ for `m` rows of x: decoding's few-row product, or a prompt's many-row one.
fn quant_forward(q: &QuantWeights, x: &[f32], m: usize) -> Vec<f32> {
    if m <= crate::linear::QUANT_MAX_ROWS {
        q.matmul_t(x, m)
    } else {
        q.matmul_t_panels(x, m)
    }
}

/// dY·W for `m` rows of dY, on panels of W widened to f32.
fn quant_input_grad(q: &QuantWeights, dy: &[f32], m: usize) -> Vec<f32> {
    let mut dx = vec![0f32; m * q.cols()];
    let dequant = |first: usize, out: &mut [f32]| q.dequantize_rows_into(first, out);
    ferrolm_kernels::sgemm::matmul_dequantized(dy, m, q.rows(), q.cols(), &mut dx, &dequant);
    dx
}

/// A quantized layer as the frozen base of LoRA adapters (QLoRA): the fused adapter op
/// ([`ferrolm_kernels::lora_linear_on`]) takes its products from here.
#[derive(Debug)]
pub(crate) struct QuantFrozen {
    pub q: std::sync::Arc<QuantWeights>,
    pub bias: Option<Vec<f32>>,
}

impl ferrolm_kernels::FrozenLinear for QuantFrozen {
    fn dims(&self) -> (usize, usize) {
        (self.q.rows(), self.q.cols())
    }

    fn forward(&self, x: &[f32], rows: usize) -> candle_core::Result<Vec<f32>> {
        if x.len() != rows * self.q.cols() {
            candle_core::bail!("an input of {} values for {rows} rows of width {}", x.len(), self.q.cols());
        }
        let mut y = quant_forward(&self.q, x, rows);
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(b.len()) {
                row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
            }
        }
        Ok(y)
    }

    fn input_grad(&self, dy: &[f32], rows: usize) -> candle_core::Result<Vec<f32>> {
        if dy.len() != rows * self.q.rows() {
            candle_core::bail!("a gradient of {} values for {rows} rows of width {}", dy.len(), self.q.rows());
        }
        Ok(quant_input_grad(&self.q, dy, rows))
    }
}

/// What `--quant` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantKind {
    /// 8-bit blocks of 32 values, one scale each (8.5 bits a weight).
    Q8_0,
    /// 4-bit super-blocks of 256 values with 6-bit scales and mins per 32 (4.5 bits a
    /// weight); a layer whose rows are not whole super-blocks falls back to Q8_0.
    Q4K,
    /// IEEE half precision (16 bits a weight), every layer.
    F16,
}

impl std::str::FromStr for QuantKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "q8_0" => Self::Q8_0,
            "q4_k" => Self::Q4K,
            "f16" => Self::F16,
            other => bail!("unknown quantization {other:?}: expected q8_0, q4_k or f16"),
        })
    }
}

impl fmt::Display for QuantKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4_k",
            Self::F16 => "f16",
        })
    }
}

/// As its name in configs: `"q8_0"`, `"q4_k"`, `"f16"` (`lora.quant`).
impl serde::Serialize for QuantKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for QuantKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Rows of a layer's weights in one block format.
#[derive(Debug, Clone)]
pub enum QuantBlock {
    Q8_0(Q8Matrix),
    /// Q4_K or Q6_K.
    K(KMatrix),
    /// Half precision.
    F16(F16Matrix),
}

impl QuantBlock {
    pub fn rows(&self) -> usize {
        match self {
            Self::Q8_0(q) => q.rows,
            Self::K(q) => q.rows,
            Self::F16(q) => q.rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Self::Q8_0(q) => q.cols,
            Self::K(q) => q.cols,
            Self::F16(q) => q.cols,
        }
    }

    /// The format's name (`Q8_0`, `Q4_K`, `Q6_K`, `F16`).
    pub fn format(&self) -> &'static str {
        match self {
            Self::Q8_0(_) => "Q8_0",
            Self::K(q) => q.kind.name(),
            Self::F16(_) => "F16",
        }
    }

    /// Whether products with these rows multiply inputs rounded to 8 bits: Q8_0, Q4_K and
    /// Q6_K rows do, as llama.cpp rounds the inputs of its Q8_0 and k-quant products, so that
    /// a weight block meets its input block in an integer dot product (see
    /// [`QuantWeights::input_rounding`]); F16 rows multiply the f32 inputs.
    pub fn rounds_inputs(&self) -> bool {
        matches!(self, Self::Q8_0(_) | Self::K(_))
    }

    /// Rows `start ..` of this block in f32, into `out` (whole rows).
    pub fn dequantize_rows_into(&self, start: usize, out: &mut [f32]) {
        match self {
            Self::Q8_0(q) => q.dequantize_rows_into(start, out),
            Self::K(q) => q.dequantize_rows_into(start, out),
            Self::F16(q) => q.dequantize_rows_into(start, out),
        }
    }

    /// Rows `order[0]`, `order[1]`, … of this block.
    pub fn select_rows(&self, order: &[usize]) -> Self {
        match self {
            Self::Q8_0(q) => Self::Q8_0(q.select_rows(order)),
            Self::K(q) => Self::K(q.select_rows(order)),
            Self::F16(q) => Self::F16(q.select_rows(order)),
        }
    }
}

/// A layer's weights (rows × cols) quantized: row blocks top to bottom, each in one format
/// (a fused q/k/v layer from a q4_k_m file holds Q4_K rows for q and k and may hold Q6_K rows
/// for v). Neighbouring blocks of one format are merged.
#[derive(Debug, Clone)]
pub struct QuantWeights {
    blocks: Vec<QuantBlock>,
}

impl QuantWeights {
    pub fn new(first: QuantBlock) -> Self {
        Self { blocks: vec![first] }
    }

    /// Append rows below; an error when the widths differ.
    pub fn push(&mut self, below: QuantBlock) -> Result<()> {
        if below.cols() != self.cols() {
            bail!("quantized row blocks of different widths ({} and {})", self.cols(), below.cols());
        }
        let last = self.blocks.pop().expect("at least one block");
        let merged = match (last, &below) {
            (QuantBlock::Q8_0(a), QuantBlock::Q8_0(b)) => vec![QuantBlock::Q8_0(a.stack(b).expect("same width"))],
            (QuantBlock::K(a), QuantBlock::K(b)) if a.kind == b.kind => vec![QuantBlock::K(a.stack(b).expect("same kind and width"))],
            (QuantBlock::F16(a), QuantBlock::F16(b)) => vec![QuantBlock::F16(a.stack(b).expect("same width"))],
            (a, _) => vec![a, below],
        };
        self.blocks.extend(merged);
        Ok(())
    }

    /// The row blocks, top to bottom.
    pub fn blocks(&self) -> &[QuantBlock] {
        &self.blocks
    }

    pub fn rows(&self) -> usize {
        self.blocks.iter().map(QuantBlock::rows).sum()
    }

    pub fn cols(&self) -> usize {
        self.blocks[0].cols()
    }

    /// The formats top to bottom, `+`-joined (`Q4_K`, `Q4_K+Q6_K`).
    pub fn format(&self) -> String {
        self.blocks.iter().map(QuantBlock::format).collect::<Vec<_>>().join("+")
    }

    /// Bytes the blocks take (for reports).
    pub fn bytes(&self) -> usize {
        self.blocks
            .iter()
            .map(|b| match b {
                QuantBlock::Q8_0(q) => q.quants.len() + 2 * q.scales.len(),
                QuantBlock::K(q) => q.bytes().len(),
                QuantBlock::F16(q) => 2 * q.bits.len(),
            })
            .sum()
    }

    /// The values in f32, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows() * self.cols());
        for b in &self.blocks {
            match b {
                QuantBlock::Q8_0(q) => out.extend(q.dequantize()),
                QuantBlock::K(q) => out.extend(q.dequantize()),
                QuantBlock::F16(q) => out.extend(q.dequantize()),
            }
        }
        out
    }

    /// `x·Wᵀ` for x (m × cols, row-major) into a new (m × rows) buffer: the few-row product.
    /// The input is rounded to 8 bits once for all the blocks that multiply it so.
    pub fn matmul_t(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (self.rows(), self.cols());
        assert_eq!(x.len(), m * k, "quantized matmul: x has {} values, expected {m} × {k}", x.len());
        let act = self.blocks.iter().any(QuantBlock::rounds_inputs).then(|| Q8Act::quantize(x, m, k));
        let mut y = vec![0f32; m * n];
        let mut col = 0;
        for b in &self.blocks {
            match (b, &act) {
                (QuantBlock::Q8_0(q), Some(act)) => q.matmul_q8_into(act, &mut y, n, col),
                (QuantBlock::K(q), Some(act)) => q.matmul_q8_into(act, &mut y, n, col),
                (QuantBlock::F16(q), _) => q.matmul_t_into(x, m, &mut y, n, col),
                (QuantBlock::Q8_0(_) | QuantBlock::K(_), None) => unreachable!("these rows round their inputs"),
            }
            col += b.rows();
        }
        y
    }

    /// Rows `start .. start + out.len() / cols` in f32, into `out` (whole rows, across
    /// blocks): embedding rows, and panels for the f32 products over widened rows.
    pub fn dequantize_rows_into(&self, start: usize, out: &mut [f32]) {
        let k = self.cols();
        assert!(out.len().is_multiple_of(k) && start + out.len() / k <= self.rows(), "quantized rows {start}.. out of range");
        let (mut row, mut out) = (start, out);
        let mut at = 0;
        for b in &self.blocks {
            let (lo, hi) = (at, at + b.rows());
            at = hi;
            if out.is_empty() {
                break;
            }
            if row >= hi {
                continue;
            }
            let take = (hi - row).min(out.len() / k);
            let (head, rest) = out.split_at_mut(take * k);
            b.dequantize_rows_into(row - lo, head);
            row += take;
            out = rest;
        }
    }

    /// Rows `ids` (each < rows) in f32, one after another: an embedding lookup on a table
    /// held quantized. An id out of range is an error naming it.
    pub fn gather_rows(&self, ids: &[u32]) -> anyhow::Result<Vec<f32>> {
        let k = self.cols();
        let mut out = vec![0f32; ids.len() * k];
        for (o, &id) in out.chunks_exact_mut(k).zip(ids) {
            if id as usize >= self.rows() {
                bail!("token id {id} is outside the model's token table of {} rows: the tokenizer has tokens the model lacks — do the tokenizer and the weights belong together?", self.rows());
            }
            self.dequantize_rows_into(id as usize, o);
        }
        Ok(out)
    }

    /// `x·Wᵀ` for x (m × cols) with many rows (a prompt pass), computing what the few-row
    /// product computes for each row ([`Self::input_rounding`]):
    /// - Q4_K and Q6_K rows: the same integer products on the inputs rounded to 8 bits
    ///   ([`KMatrix::matmul_q8_into`]), so decoding gives the prompt pass's floats bit for
    ///   bit. Widening panels to f32 instead was 7 % faster on a q4_k_m model's 128-token
    ///   prompt (AMD EPYC Zen 4, 1 thread), but the float order then differs between the
    ///   passes, and a difference on a rounding boundary of a later layer's 8-bit input moved
    ///   a test model's first decoded logits by 1.2e-2;
    /// - Q8_0 rows, where the CPU has AVX-512 VNNI: 8-bit products in tiles on the rounded
    ///   inputs' blocks ([`Q8Matrix::matmul_q8_tiles_into`]), again bit for bit; elsewhere
    ///   panels of rows widened to f32 as the product goes
    ///   ([`ferrolm_kernels::sgemm::matmul_t_dequantized`]) times the rounded inputs;
    /// - F16 rows: widened panels times the f32 inputs.
    ///
    /// No dense f32 copy of the weights is kept.
    pub fn matmul_t_panels(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (self.rows(), self.cols());
        assert_eq!(x.len(), m * k, "quantized matmul: x has {} values, expected {m} × {k}", x.len());
        let tiles = ferrolm_kernels::q8::tiles_available();
        let integer = |b: &QuantBlock| matches!(b, QuantBlock::K(_)) || (tiles && matches!(b, QuantBlock::Q8_0(_)));
        let act = self.blocks.iter().any(integer).then(|| Q8Act::quantize(x, m, k));
        let rounded = self.blocks.iter().any(|b| b.rounds_inputs() && !integer(b)).then(|| {
            let mut r = x.to_vec();
            ferrolm_kernels::q8::round_activations(&mut r, k);
            r
        });
        let mut y = vec![0f32; m * n];
        let mut col = 0;
        for b in &self.blocks {
            match (b, &act) {
                (QuantBlock::Q8_0(q), Some(act)) if tiles => assert!(q.matmul_q8_tiles_into(act, &mut y, n, col), "the tiles were available"),
                (QuantBlock::K(q), Some(act)) => q.matmul_q8_into(act, &mut y, n, col),
                _ => {
                    let input = match &rounded {
                        Some(r) if b.rounds_inputs() => r.as_slice(),
                        _ => x,
                    };
                    let dequant = |first: usize, out: &mut [f32]| b.dequantize_rows_into(first, out);
                    ferrolm_kernels::sgemm::matmul_t_dequantized(input, m, k, b.rows(), &mut y, n, col, &dequant);
                }
            }
            col += b.rows();
        }
        y
    }

    /// Which output rows multiply inputs rounded to 8 bits: (first row, rows, rounded) runs,
    /// top to bottom. Q8_0, Q4_K and Q6_K rows do ([`ferrolm_kernels::q8::Q8Act`], as
    /// llama.cpp rounds the inputs of its Q8_0 and k-quant products); F16 rows multiply the
    /// f32 inputs. A many-row product follows the same plan so that it computes what the
    /// few-row products compute.
    pub fn input_rounding(&self) -> Vec<(usize, usize, bool)> {
        let mut runs: Vec<(usize, usize, bool)> = Vec::new();
        let mut at = 0;
        for b in &self.blocks {
            let rounded = b.rounds_inputs();
            match runs.last_mut() {
                Some(last) if last.2 == rounded => last.1 += b.rows(),
                _ => runs.push((at, b.rows(), rounded)),
            }
            at += b.rows();
        }
        runs
    }

    /// Quantize row-major f32 values as `kind` asks: Q4_K needs rows of whole 256-value
    /// super-blocks and falls back to Q8_0 (blocks of 32); None when not even that fits.
    /// F16 (each value rounded to the nearest half) fits any width.
    pub fn quantize(kind: QuantKind, values: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if kind == QuantKind::F16 {
            return F16Matrix::from_f32(values, rows, cols).map(|q| Self::new(QuantBlock::F16(q)));
        }
        if kind == QuantKind::Q4K {
            if let Some(q) = KMatrix::quantize(KQuant::Q4K, values, rows, cols) {
                return Some(Self::new(QuantBlock::K(q)));
            }
        }
        Q8Matrix::quantize(values, rows, cols).map(|q| Self::new(QuantBlock::Q8_0(q)))
    }
}

/// What [`crate::AnyModel::quantize`] did: layers by the format they hold now.
#[derive(Debug, Clone, Default)]
pub struct QuantSummary {
    /// Layers quantized now, by format.
    pub quantized: BTreeMap<String, usize>,
    /// Layers that already held quantized weights (a quantized GGUF file's), kept, by format.
    pub kept: BTreeMap<String, usize>,
    /// Layers left in f32 (rows not whole blocks of 32).
    pub unquantized: usize,
    /// Bytes of all quantized weights.
    pub bytes: usize,
}

impl QuantSummary {
    pub(crate) fn add(&mut self, outcome: Option<(String, usize, bool)>) {
        match outcome {
            Some((format, bytes, fresh)) => {
                *(if fresh { &mut self.quantized } else { &mut self.kept }).entry(format).or_default() += 1;
                self.bytes += bytes;
            }
            None => self.unquantized += 1,
        }
    }
}

impl fmt::Display for QuantSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |m: &BTreeMap<String, usize>| m.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ");
        let mut parts = Vec::new();
        if !self.quantized.is_empty() {
            parts.push(format!("quantized {}", list(&self.quantized)));
        }
        if !self.kept.is_empty() {
            parts.push(format!("kept the file's {}", list(&self.kept)));
        }
        if self.unquantized > 0 {
            parts.push(format!("{} left f32", self.unquantized));
        }
        write!(f, "linear layers: {} ({:.1} MB of quantized weights)", parts.join("; "), self.bytes as f64 / 1e6)
    }
}
