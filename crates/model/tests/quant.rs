//! Quantized CPU inference: `AnyModel::quantize` (`--quant q8_0|q4_k|f16`), a q4_k_m GGUF's
//! Q4_K / Q6_K blocks and an f16 GGUF's halves used as stored, with no f32 copy. Token-by-token
//! decoding (few-row products on the quantized blocks) must give the prompt pass's logits (Q4_K
//! and Q6_K rows: the same integer products on more rows; Q8_0 rows on AVX-512 VNNI: 8-bit
//! tiles giving decoding's values bit for bit; elsewhere f32 products on panels of the blocks
//! widened as the product goes) up to summation order, and the quantized model must stay near
//! the f32 one.

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use ferrolm_model::attention::MaskSpec;
use ferrolm_model::gguf::{self, GgufQuant, GgufVocab};
use ferrolm_model::{init_weights, AnyModel, BlockStyle, ModelSpec, QuantKind, Transformer, TransformerConfig};

/// Rows of 256 (whole Q4_K super-blocks) everywhere, and 8 layers so that q4_k_m gives some
/// `attn_v` / `ffn_down` Q6_K.
fn cfg() -> TransformerConfig {
    TransformerConfig { vocab_size: 48, d_model: 256, n_layers: 8, n_heads: 4, n_kv_heads: 2, d_ff: 512, max_seq_len: 32, block: BlockStyle::Modern, ..Default::default() }
}

fn vocab(n: usize) -> GgufVocab {
    GgufVocab {
        tokens: (0..n).map(|i| format!("t{i}")).collect(),
        token_types: (0..n).map(|i| if i == 0 { 3 } else { 1 }).collect(),
        merges: vec!["t 1".into()],
        bos: None,
        eos: Some(0),
        chat_template: None,
        tokenizer_json: Some("{}".into()),
        ..Default::default()
    }
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

/// ‖a − b‖ / ‖b‖ over all logits.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let n = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    n(&(a - b).unwrap()) / n(b)
}

fn ids() -> Tensor {
    Tensor::new(&[[3u32, 7, 1, 47, 0, 22, 22, 5, 9, 30, 12, 40]], &Device::Cpu).unwrap()
}

fn fresh(c: &TransformerConfig, seed: u64) -> (AnyModel, candle_nn::VarMap) {
    let spec = ModelSpec::Transformer(c.clone());
    let (model, varmap) = AnyModel::build_fresh(&spec, &Device::Cpu).unwrap();
    init_weights(&spec, &varmap, seed).unwrap();
    (model, varmap)
}

/// Logits of a one-token-at-a-time decode through the KV cache (every product has one row).
fn decode_logits(m: &Transformer, ids: &Tensor) -> Vec<Tensor> {
    let mut cache = m.new_cache();
    (0..ids.dim(1).unwrap()).map(|t| m.forward(&ids.narrow(1, t, 1).unwrap(), &MaskSpec::causal(), Some(&mut cache)).unwrap().squeeze(1).unwrap()).collect()
}

/// Each decode step's logits against the prompt pass's row of the same position. Where the
/// layers round their inputs to 8 bits (Q8_0, Q4_K, Q6_K), the two passes' products give the
/// same floats on the same inputs, but the attention sums in another order in each pass, and
/// a value that this leaves on a rounding boundary can go either way and move the logits by
/// one rounding step (one such flip measured 2.7e-3). A flip at step t also moves the keys
/// and values step t leaves in the cache, so the steps after it may differ too. So: every
/// step within 1e-2, and at most `flips_allowed` flips — a step differing by 1e-4 or more
/// after a step within 1e-4 — with every step before the first flip within 1e-4, as
/// everywhere.
fn assert_decode_matches_prompt_pass(m: &Transformer, what: &str, flips_allowed: usize) -> Tensor {
    let ids = ids();
    let full = m.forward(&ids, &MaskSpec::causal(), None).unwrap();
    assert!(ids.dim(1).unwrap() > ferrolm_model::linear::QUANT_MAX_ROWS, "the prompt pass must take the many-row (panel) products");
    let (mut flips, mut previous_differs) = (0, false);
    for (t, step) in decode_logits(m, &ids).iter().enumerate() {
        let want = full.narrow(1, t, 1).unwrap().squeeze(1).unwrap();
        let d = max_abs(step, &want);
        let differs = d >= 1e-4;
        if differs && !previous_differs {
            flips += 1;
        }
        assert!(d < 1e-2 && flips <= flips_allowed, "{what}: decoding step {t} differs from the prompt pass by {d} ({flips} flips)");
        previous_differs = differs;
    }
    full
}

#[test]
fn quantize_q4_k_decodes_as_its_dequantized_weights_and_stays_near_f32() {
    let (f32_model, _) = fresh(&cfg(), 5);
    let want = f32_model.decoder("t").unwrap().forward(&ids(), &MaskSpec::causal(), None).unwrap();
    for (kind, format, tol) in [(QuantKind::Q4K, "Q4_K", 0.3), (QuantKind::Q8_0, "Q8_0", 0.03)] {
        let (mut q, _) = fresh(&cfg(), 5);
        let s = q.quantize(kind).unwrap();
        // 8 blocks × (qkv, proj, gate, up, down) + the LM head
        assert_eq!(s.quantized.get(format), Some(&41), "{kind}: {s}");
        assert_eq!((s.kept.len(), s.unquantized), (0, 0), "{kind}: {s}");
        let got = assert_decode_matches_prompt_pass(q.decoder("t").unwrap(), &format!("--quant {kind}"), 1);
        let e = rel_err(&got, &want);
        eprintln!("--quant {kind}: logits move by {e} (relative)");
        assert!(e > 0.0 && e < tol, "{kind}: logits move by {e} (relative)");
    }
    // rows of 64 values do not fill Q4_K super-blocks: those layers fall back to Q8_0
    let narrow = TransformerConfig { d_model: 64, d_ff: 128, n_layers: 2, ..cfg() };
    let (mut q, _) = fresh(&narrow, 5);
    let s = q.quantize(QuantKind::Q4K).unwrap();
    assert_eq!(s.quantized.get("Q8_0"), Some(&11), "{s}");
    assert!(s.to_string().contains("11 Q8_0"), "{s}");
    assert_decode_matches_prompt_pass(q.decoder("t").unwrap(), "q4_k on narrow rows", 1);
}

/// The decoders the GGUF tests write: llama with tied and untied embeddings, qwen2 (q/k/v biases).
fn gguf_cases() -> [(&'static str, TransformerConfig); 3] {
    let base = cfg();
    [
        ("llama tied", base.clone()),
        ("llama untied", TransformerConfig { tie_embeddings: false, ..base.clone() }),
        ("qwen2", TransformerConfig { qkv_bias: Some(true), ..base }),
    ]
}

/// A fresh model (seed 9) of `c`: its f32 logits on `ids()`, and the model written to a
/// GGUF file at `quant` and loaded back.
fn gguf_round_trip(c: &TransformerConfig, quant: GgufQuant) -> (Tensor, gguf::GgufModel) {
    let (model, varmap) = fresh(c, 9);
    let want = model.decoder("t").unwrap().forward(&ids(), &MaskSpec::causal(), None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    gguf::write(c, &varmap, &vocab(48), quant, &path).unwrap();
    (want, gguf::load(&path, &Device::Cpu).unwrap())
}

#[test]
fn a_q4_k_m_gguf_decodes_on_its_own_q4_k_and_q6_k_blocks() {
    for (what, c) in gguf_cases() {
        let (want, mut back) = gguf_round_trip(&c, GgufQuant::Q4KM);
        // only norms (and biases) are f32 variables: every matrix and the token table are
        // held as the file's blocks, with no f32 copy
        let f32_values: usize = back.loaded.varmap.all_vars().iter().map(|v| v.elem_count()).sum();
        let norms = (2 * c.n_layers + 1) * c.d_model + if c.has_qkv_bias() { c.n_layers * (c.q_width() + 2 * c.kv_width()) } else { 0 };
        assert_eq!(f32_values, norms, "{what}: f32 values held");
        assert_eq!(back.tensor_types["blk.1.attn_q.weight"], GgmlDType::Q4K);
        assert_eq!(back.tensor_types["blk.0.attn_v.weight"], GgmlDType::Q6K);
        assert_eq!(back.tensor_types["blk.0.ffn_down.weight"], GgmlDType::Q6K);
        // the output matrix is Q6_K, as llama.cpp's quantizer makes it: the tied token
        // embedding too
        let out = if c.tie_embeddings { "token_embd.weight" } else { "output.weight" };
        assert_eq!(back.tensor_types[out], GgmlDType::Q6K);
        // Asking for q8_0 on top keeps every layer's blocks from the file: Q4_K, and Q6_K
        // for attn_v / ffn_down in layers 0, 3, 6, 7 and the output matrix (the LM head).
        let s = back.loaded.model.quantize(QuantKind::Q8_0).unwrap();
        assert!(s.quantized.is_empty() && s.unquantized == 0, "{what}: {s}");
        let k = |f: &str| s.kept.get(f).copied().unwrap_or(0);
        assert_eq!(k("Q4_K+Q6_K"), 4, "{what}: q and k Q4_K, v Q6_K in one fused layer: {s}");
        assert_eq!(k("Q6_K"), 4 + 1, "{what}: {s}");
        assert_eq!(k("Q4_K"), 8 * 5 + 1 - 8 - 1, "{what}: {s}");
        let got = assert_decode_matches_prompt_pass(back.loaded.model.decoder("t").unwrap(), what, 1);
        let e = rel_err(&got, &want);
        eprintln!("{what}: q4_k_m logits move by {e} (relative)");
        assert!(e > 0.0 && e < 0.3, "{what}: q4_k_m logits move by {e} (relative)");
    }
}

#[test]
fn quantize_f16_decodes_as_its_rounded_weights_on_any_width() {
    // rows of 256 and 512, and rows of 72 and 136 (tails of 8 and 8 past 64 and 128; of
    // 8 past 16-lane chunks) where no block format fits
    let odd = TransformerConfig { d_model: 72, d_ff: 136, n_layers: 2, ..cfg() };
    for (c, layers) in [(cfg(), 41), (odd, 11)] {
        let (f32_model, _) = fresh(&c, 5);
        let want = f32_model.decoder("t").unwrap().forward(&ids(), &MaskSpec::causal(), None).unwrap();
        let (mut q, _) = fresh(&c, 5);
        let s = q.quantize(QuantKind::F16).unwrap();
        assert_eq!(s.quantized.get("F16"), Some(&layers), "{s}");
        assert_eq!((s.quantized.len(), s.kept.len(), s.unquantized), (1, 0, 0), "{s}");
        assert!(s.to_string().contains(&format!("quantized {layers} F16")), "{s}");
        let got = assert_decode_matches_prompt_pass(q.decoder("t").unwrap(), &format!("--quant f16, d_model {}", c.d_model), 0);
        let e = rel_err(&got, &want);
        eprintln!("--quant f16 (d_model {}): logits move by {e} (relative)", c.d_model);
        assert!(e > 0.0 && e < 2e-3, "f16: logits move by {e} (relative)");
    }
}

#[test]
fn an_f16_gguf_decodes_on_its_own_halves() {
    for (what, c) in gguf_cases() {
        let (want, mut back) = gguf_round_trip(&c, GgufQuant::F16);
        assert_eq!(back.tensor_types["blk.1.attn_q.weight"], GgmlDType::F16);
        assert_eq!(back.tensor_types["token_embd.weight"], GgmlDType::F16);
        // every layer kept the file's halves (q, k, v merged into one F16 block), the LM
        // head too (tied: the token embedding's); asking for q8_0 on top changes nothing
        let s = back.loaded.model.quantize(QuantKind::Q8_0).unwrap();
        assert!(s.quantized.is_empty() && s.unquantized == 0, "{what}: {s}");
        assert_eq!(s.kept.get("F16"), Some(&41), "{what}: {s}");
        assert_eq!(s.kept.len(), 1, "{what}: {s}");
        let got = assert_decode_matches_prompt_pass(back.loaded.model.decoder("t").unwrap(), what, 1);
        let e = rel_err(&got, &want);
        eprintln!("{what}: f16 GGUF logits move by {e} (relative)");
        assert!(e > 0.0 && e < 2e-3, "{what}: f16 logits move by {e} (relative)");
        // the same model rounded by --quant f16 is near (not equal: --quant keeps the token
        // embedding f32, the file stores it f16)
        let (mut q, _) = fresh(&c, 9);
        q.quantize(QuantKind::F16).unwrap();
        let mine = q.decoder("t").unwrap().forward(&ids(), &MaskSpec::causal(), None).unwrap();
        let e = rel_err(&mine, &got);
        assert!(e < 2e-3, "{what}: --quant f16 vs the f16 GGUF: {e} (relative)");
    }
}

#[test]
fn quantize_refuses_other_models() {
    let spec = ModelSpec::Nplm(ferrolm_model::NplmConfig { vocab_size: 10, d_model: 32, context: 2, hidden: 32, direct: false, dropout: 0.0, max_seq_len: 8 });
    let (mut m, _) = AnyModel::build_fresh(&spec, &Device::Cpu).unwrap();
    let err = m.quantize(QuantKind::Q4K).unwrap_err().to_string();
    assert!(err.contains("needs a Transformer decoder"), "{err}");
}
