//! LoRA adapters: a fresh adapter leaves the model unchanged (B = 0); a trained one changes
//! exactly the adapted rows; merging gives the unmerged logits; gradients of A and B match
//! finite differences; PEFT names and shapes; bad targets are clear errors.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use ferrolm_model::attention::MaskSpec;
use ferrolm_model::lora::{self, LoraConfig};
use ferrolm_model::{init::init_params, BlockStyle, Transformer, TransformerConfig};

fn cfg(block: BlockStyle) -> TransformerConfig {
    TransformerConfig { vocab_size: 29, d_model: 32, n_layers: 2, n_heads: 4, n_kv_heads: if block == BlockStyle::Modern { 2 } else { 4 }, max_seq_len: 24, block, ..Default::default() }
}

fn model(c: &TransformerConfig) -> (Transformer, VarMap) {
    let vm = VarMap::new();
    let m = Transformer::new(c, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    init_params(&vm, 2, 11).unwrap();
    (m, vm)
}

fn logits(m: &Transformer) -> Vec<f32> {
    let ids = Tensor::new(&[3u32, 7, 1, 20, 5, 9], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    m.forward(&ids, &MaskSpec::causal(), None).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Give every B non-zero values, as training would.
fn perturb_b(vm: &VarMap) {
    let data = vm.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().filter(|n| n.contains(".lora_b.")).collect();
    names.sort();
    for (i, n) in names.into_iter().enumerate() {
        let v = &data[n];
        let vals = ferrolm_model::init::seeded_uniform(n, 5 + i as u64, v.elem_count(), 0.3);
        v.set(&Tensor::from_vec(vals, v.shape(), &Device::Cpu).unwrap()).unwrap();
    }
}

fn lora(rank: usize, targets: &[&str]) -> LoraConfig {
    LoraConfig { rank, alpha: 2.0 * rank as f64, dropout: 0.0, targets: targets.iter().map(|s| s.to_string()).collect(), quant: None }
}

#[test]
fn fresh_adapters_change_nothing_trained_ones_merge_exactly() {
    for block in [BlockStyle::Modern, BlockStyle::Gpt2] {
        let c = cfg(block);
        let targets: &[&str] = if block == BlockStyle::Modern { &lora::TARGETS } else { &["q", "v", "o", "up", "down"] };
        let (mut m, vm) = model(&c);
        let base = logits(&m);
        let n_base = vm.all_vars().len();
        let n = lora::attach(&mut m, &vm, &lora(4, targets), 3).unwrap();
        assert!(n > 0 && vm.all_vars().len() == n_base + 2 * targets.len() * c.n_layers, "{block:?}: one A and one B per target and layer");
        assert_eq!(max_diff(&base, &logits(&m)), 0.0, "{block:?}: B = 0 at the start leaves the model as it was");
        perturb_b(&vm);
        let adapted = logits(&m);
        assert!(max_diff(&base, &adapted) > 1e-3, "{block:?}: trained adapters change the output");
        lora::merge(&mut m, &vm).unwrap();
        assert_eq!(vm.all_vars().len(), n_base, "merging removes the adapter variables");
        let merged = logits(&m);
        assert!(max_diff(&adapted, &merged) < 1e-4, "{block:?}: merged {}", max_diff(&adapted, &merged));
    }
}

#[test]
fn an_adapter_on_q_changes_only_the_q_rows_of_the_fused_projection() {
    let c = cfg(BlockStyle::Modern);
    let (mut m, vm) = model(&c);
    let before = vm.data().lock().unwrap()["decoder.blocks.0.attn.qkv.weight"].as_tensor().copy().unwrap();
    lora::attach(&mut m, &vm, &lora(2, &["q"]), 1).unwrap();
    perturb_b(&vm);
    lora::merge(&mut m, &vm).unwrap();
    let after = vm.data().lock().unwrap()["decoder.blocks.0.attn.qkv.weight"].as_tensor().copy().unwrap();
    let q = c.q_width();
    let rows = |t: &Tensor, s: usize, n: usize| t.narrow(0, s, n).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(max_diff(&rows(&before, 0, q), &rows(&after, 0, q)) > 1e-4, "q rows changed");
    let kv = 2 * c.kv_width();
    assert_eq!(max_diff(&rows(&before, q, kv), &rows(&after, q, kv)), 0.0, "k and v rows untouched");
}

#[test]
fn adapter_gradients_match_finite_differences() {
    let c = cfg(BlockStyle::Modern);
    let (mut m, vm) = model(&c);
    lora::attach(&mut m, &vm, &lora(2, &["k", "o", "down"]), 9).unwrap();
    perturb_b(&vm);
    let ids = Tensor::new(&[3u32, 7, 1, 20, 5], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let targets = Tensor::new(&[7u32, 1, 20, 5, 2], &Device::Cpu).unwrap();
    let loss = |m: &Transformer| -> Tensor {
        let l = m.forward(&ids, &MaskSpec::causal(), None).unwrap().squeeze(0).unwrap();
        candle_nn::loss::cross_entropy(&l, &targets).unwrap()
    };
    let grads = loss(&m).backward().unwrap();
    let data = vm.data().lock().unwrap();
    let vars: Vec<(String, Var)> = ["decoder.blocks.1.attn.qkv.lora_a.k", "decoder.blocks.0.attn.proj.lora_b.o", "decoder.blocks.1.mlp.proj.lora_a.down"]
        .iter()
        .map(|n| (n.to_string(), data[*n].clone()))
        .collect();
    drop(data);
    for (name, var) in vars {
        let g: Vec<f32> = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name} has no gradient")).flatten_all().unwrap().to_vec1().unwrap();
        let orig: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for &i in &[0usize, 3, orig.len() / 2, orig.len() - 1] {
            let eps = 1e-2f32;
            let at = |d: f32| -> f64 {
                let mut v = orig.clone();
                v[i] += d;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()).unwrap();
                loss(&m).to_scalar::<f32>().unwrap() as f64
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            var.set(&Tensor::from_vec(orig.clone(), var.shape(), &Device::Cpu).unwrap()).unwrap();
            assert!((fd - g[i] as f64).abs() < 2e-3 + 2e-2 * fd.abs(), "{name}[{i}]: autograd {} vs finite differences {fd}", g[i]);
        }
    }
}

#[test]
fn a_frozen_base_gets_no_weight_gradients_and_the_same_adapter_gradients() {
    let c = cfg(BlockStyle::Modern);
    let ids = Tensor::new(&[3u32, 7, 1, 20, 5], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let targets = Tensor::new(&[7u32, 1, 20, 5, 2], &Device::Cpu).unwrap();
    // with adapter dropout in training (a seed given), the composed path (unfrozen base)
    // and the fused op (frozen base) draw the same masks
    let run = |freeze: bool, dropout: f32| {
        let (mut m, vm) = model(&c);
        lora::attach(&mut m, &vm, &LoraConfig { dropout, ..lora(2, &["q", "o", "up"]) }, 9).unwrap();
        perturb_b(&vm);
        if freeze {
            m.freeze_linears();
        }
        let seed = (dropout > 0.0).then_some(77);
        let l = m.logits(&m.hidden(&ids, &MaskSpec::causal(), None, seed).unwrap()).unwrap().squeeze(0).unwrap();
        let loss = ferrolm_kernels::cross_entropy(&l, &targets).unwrap();
        let grads = loss.backward().unwrap();
        let data = vm.data().lock().unwrap();
        let g = |n: &str| grads.get(data[n].as_tensor()).map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        (loss.to_scalar::<f32>().unwrap(), g("decoder.blocks.0.attn.qkv.lora_a.q"), g("decoder.blocks.1.mlp.up.lora_b.up"), g("decoder.blocks.0.attn.qkv.weight"), g("decoder.blocks.1.mlp.proj.weight"))
    };
    let d = |x: Vec<f32>, y: Vec<f32>| x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let mut losses = Vec::new();
    for dropout in [0.0, 0.3] {
        let (l0, a0, b0, w0, p0) = run(false, dropout);
        let (l1, a1, b1, w1, p1) = run(true, dropout);
        assert!((l0 - l1).abs() < 1e-6, "dropout {dropout}: loss {l0} vs {l1}");
        assert!(w0.is_some() && p0.is_some(), "unfrozen base weights get gradients");
        assert!(w1.is_none() && p1.is_none(), "frozen base weights get none");
        assert!(d(a0.unwrap(), a1.unwrap()) < 1e-6 && d(b0.unwrap(), b1.unwrap()) < 1e-6, "dropout {dropout}: adapter gradients unchanged");
        losses.push(l1);
    }
    assert_ne!(losses[0], losses[1], "adapter dropout changes the training loss");
}

#[test]
fn peft_names_shapes_and_config() {
    let c = cfg(BlockStyle::Modern);
    let (mut m, vm) = model(&c);
    let l = lora(4, &["q", "v", "gate"]);
    lora::attach(&mut m, &vm, &l, 3).unwrap();
    let t = lora::peft_tensors(&c, &vm).unwrap();
    assert_eq!(t.len(), 2 * 3 * c.n_layers);
    assert_eq!(t["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"].dims(), &[4, c.d_model]);
    assert_eq!(t["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"].dims(), &[c.kv_width(), 4]);
    assert_eq!(t["base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight"].dims(), &[c.ff_dim(), 4]);
    let j = lora::peft_config(&c, &l, "base").unwrap();
    assert_eq!(j["target_modules"], serde_json::json!(["q_proj", "v_proj", "gate_proj"]));
    assert_eq!((j["r"].as_u64(), j["lora_alpha"].as_f64(), j["peft_type"].as_str()), (Some(4), Some(8.0), Some("LORA")));
    // GPT-2: q and v adapters become one c_attn adapter of twice the rank whose update is
    // theirs (stacked A, B in their rows), with rank/alpha patterns keeping the scale.
    let g = cfg(BlockStyle::Gpt2);
    let (mut m2, vm2) = model(&g);
    let l2 = lora(2, &["q", "v", "o"]);
    lora::attach(&mut m2, &vm2, &l2, 3).unwrap();
    perturb_b(&vm2);
    let t2 = lora::peft_tensors(&g, &vm2).unwrap();
    let (a, b) = (&t2["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"], &t2["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]);
    assert_eq!((a.dims(), b.dims()), (&[4, g.d_model][..], &[3 * g.d_model, 4][..]));
    let fused = b.matmul(a).unwrap();
    let data = vm2.data().lock().unwrap();
    let own = |t: &str| data[&format!("decoder.blocks.0.attn.qkv.lora_b.{t}")].as_tensor().matmul(data[&format!("decoder.blocks.0.attn.qkv.lora_a.{t}")].as_tensor()).unwrap();
    let d = g.d_model;
    let diff = |x: &Tensor, y: &Tensor| (x - y).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(diff(&fused.narrow(0, 0, d).unwrap(), &own("q")) < 1e-6);
    assert_eq!(fused.narrow(0, d, d).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap(), 0.0, "k rows untouched");
    assert!(diff(&fused.narrow(0, 2 * d, d).unwrap(), &own("v")) < 1e-6);
    assert!(t2.contains_key("base_model.model.transformer.h.1.attn.c_proj.lora_B.weight"));
    let j2 = lora::peft_config(&g, &l2, "base").unwrap();
    // the shortest names that catch exactly the targeted modules: `c_attn` is unique, but
    // `c_proj` would also catch mlp.c_proj, which is not targeted
    assert_eq!(j2["target_modules"], serde_json::json!(["c_attn", "attn.c_proj"]));
    assert_eq!(lora::peft_target_modules(&g, &lora(2, &["o", "down", "up"])).unwrap(), serde_json::json!(["c_proj", "c_fc"]));
    assert_eq!(lora::peft_target_modules(&g, &lora(2, &["down"])).unwrap(), serde_json::json!(["mlp.c_proj"]));
    assert_eq!(lora::peft_target_modules(&c, &lora(2, &["all"])).unwrap(), serde_json::json!(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]));
    assert_eq!((j2["rank_pattern"]["c_attn"].as_u64(), j2["alpha_pattern"]["c_attn"].as_f64()), (Some(4), Some(8.0)));
    assert_eq!(j2["fan_in_fan_out"], true);
}

#[test]
fn bad_targets_and_settings_are_clear_errors() {
    let (mut m, vm) = model(&cfg(BlockStyle::Gpt2));
    let err = |l: LoraConfig, m: &mut Transformer| lora::attach(m, &vm, &l, 0).unwrap_err().to_string();
    assert!(err(lora(2, &["qq"]), &mut m).contains("no layer `qq`"));
    assert!(err(lora(2, &["gate"]), &mut m).contains("no gate projection"));
    assert!(err(lora(999, &["q"]), &mut m).contains("exceeds"));
    assert!(err(LoraConfig { dropout: 1.5, ..lora(2, &["q"]) }, &mut m).contains("dropout"));
    assert!(err(lora(2, &[]), &mut m).contains("empty"));
    lora::attach(&mut m, &vm, &lora(2, &["q"]), 0).unwrap();
    assert!(err(lora(2, &["q"]), &mut m).contains("already has LoRA"));
}

fn bert_cfg() -> TransformerConfig {
    TransformerConfig { kind: ferrolm_model::ModelKind::MaskedLm, block: BlockStyle::Gpt2, post_norm: true, pooler: true, ..cfg(BlockStyle::Gpt2) }
}

/// Masked-LM (BERT-family) bodies take adapters on their attention and MLP linears; merged
/// hidden states equal the adapted ones; only adapters get gradients; PEFT keys and
/// `target_modules` use BERT's names.
#[test]
fn masked_lm_adapters_merge_train_alone_and_use_bert_names() {
    let c = bert_cfg();
    let vm = VarMap::new();
    let mut m = ferrolm_model::MaskedLm::new(&c, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    init_params(&vm, 2, 11).unwrap();
    let ids = Tensor::new(&[3u32, 7, 1, 20, 5, 9], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let hidden = |m: &ferrolm_model::MaskedLm| -> Vec<f32> { m.hidden(&ids, &MaskSpec::bidirectional(), None).unwrap().flatten_all().unwrap().to_vec1().unwrap() };
    let base = hidden(&m);
    let n = lora::prepare(&mut m, &vm, &lora(2, &["all"]), 3).unwrap();
    assert_eq!(n, c.n_layers * 2 * (3 * (c.d_model + c.d_model) + (c.d_model + c.d_model) + (c.d_model + c.ff_dim()) + (c.ff_dim() + c.d_model)));
    assert!(vm.data().lock().unwrap().contains_key("encoder.blocks.1.attn.qkv.lora_a.q"));
    assert_eq!(max_diff(&base, &hidden(&m)), 0.0);
    // gradients reach the adapters, not the frozen base
    let h = m.hidden(&ids, &MaskSpec::bidirectional(), Some(1)).unwrap();
    let grads = h.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let data = vm.data().lock().unwrap();
    assert!(grads.get(data["encoder.blocks.0.attn.qkv.lora_b.q"].as_tensor()).is_some());
    assert!(grads.get(data["encoder.blocks.0.attn.qkv.weight"].as_tensor()).is_none());
    assert!(grads.get(data["encoder.blocks.1.mlp.proj.weight"].as_tensor()).is_none());
    drop(data);
    perturb_b(&vm);
    let adapted = hidden(&m);
    assert!(max_diff(&base, &adapted) > 1e-3);
    let t = lora::peft_tensors(&c, &vm).unwrap();
    assert_eq!(t.len(), 2 * 6 * c.n_layers);
    for k in ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense", "intermediate.dense", "output.dense"] {
        assert!(t.contains_key(&format!("base_model.model.bert.encoder.layer.1.{k}.lora_A.weight")), "{k}");
    }
    assert_eq!(t["base_model.model.bert.encoder.layer.0.attention.self.key.lora_B.weight"].dims(), &[c.d_model, 2]);
    let l = lora(2, &["all"]);
    assert_eq!(lora::peft_target_modules(&c, &l).unwrap(), serde_json::json!(["query", "key", "value", "output.dense", "intermediate.dense"]));
    assert_eq!(lora::peft_target_modules(&c, &lora(2, &["q", "o"])).unwrap(), serde_json::json!(["query", "attention.output.dense"]));
    // BERT's `output.dense` alone has no suffix that misses attention.output.dense: a regex
    assert_eq!(lora::peft_target_modules(&c, &lora(2, &["down"])).unwrap(), serde_json::json!(r"(?:bert\.encoder\.layer\.\d+\.output\.dense)"));
    let j = lora::peft_config(&c, &l, "base").unwrap();
    assert_eq!(j["fan_in_fan_out"], false);
    lora::merge(&mut m, &vm).unwrap();
    assert!(max_diff(&adapted, &hidden(&m)) < 1e-4);
    assert!(vm.data().lock().unwrap().keys().all(|k| !lora::is_adapter(k)));
}

/// QLoRA: with `lora.quant`, the base's block weights are held quantized (their f32
/// variables gone from the VarMap), and the adapters train as they would on an f32 base
/// whose weights are the quantized values — the same logits and adapter gradients (F16:
/// to float rounding; Q8_0, whose products round their inputs to 8 bits: closely, the
/// gradient passing the rounding straight through). Adapters below quantized layers get
/// their gradients through those layers' input gradient.
#[test]
fn qlora_adapters_on_a_quantized_base_train_as_on_its_dequantized_weights() {
    use ferrolm_model::{QuantKind, QuantWeights};
    let c = cfg(BlockStyle::Modern);
    let ids = Tensor::new(&[3u32, 7, 1, 20, 5, 9, 11, 2, 4, 8, 13], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let targets = Tensor::new(&[7u32, 1, 20, 5, 9, 11, 2, 4, 8, 13, 6], &Device::Cpu).unwrap();
    let watched = ["decoder.blocks.0.attn.qkv.lora_a.q", "decoder.blocks.0.mlp.gate.lora_b.gate", "decoder.blocks.1.attn.proj.lora_a.o", "decoder.blocks.1.mlp.proj.lora_b.down"];
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let run = |m: &Transformer, vm: &VarMap| -> (Vec<f32>, Vec<Vec<f32>>) {
        let l = m.forward(&ids, &MaskSpec::causal(), None).unwrap().squeeze(0).unwrap();
        let loss = ferrolm_kernels::cross_entropy(&l, &targets).unwrap();
        let grads = loss.backward().unwrap();
        let data = vm.data().lock().unwrap();
        let g = watched.iter().map(|n| flat(grads.get(data[*n].as_tensor()).unwrap_or_else(|| panic!("{n} has no gradient")))).collect();
        (flat(&l), g)
    };
    for kind in [QuantKind::F16, QuantKind::Q8_0] {
        let l = LoraConfig { quant: Some(kind), ..lora(2, &["all"]) };
        // the QLoRA model
        let (mut q, vq) = model(&c);
        let f32_vars = vq.all_vars().len();
        lora::prepare(&mut q, &vq, &l, 3).unwrap();
        perturb_b(&vq);
        {
            let data = vq.data().lock().unwrap();
            assert!(!data.contains_key("decoder.blocks.0.attn.qkv.weight") && !data.contains_key("decoder.blocks.1.mlp.proj.weight"), "{kind}: the quantized weights' f32 variables are dropped");
            assert!(data.contains_key("lm_head.weight") || c.tie_embeddings, "{kind}: the LM head stays f32");
            assert_eq!(data.len(), f32_vars - 5 * c.n_layers + 2 * 7 * c.n_layers, "{kind}: five linears a block quantized, an A and a B per target");
        }
        // an f32 model with the quantized values as its weights, the same adapters
        let (mut d, vd) = model(&c);
        {
            let data = vd.data().lock().unwrap();
            for (name, v) in data.iter() {
                if name.starts_with("decoder.blocks.") && name.ends_with(".weight") && v.rank() == 2 {
                    let (r, k) = v.dims2().unwrap();
                    let w = QuantWeights::quantize(kind, &flat(v.as_tensor()), r, k).unwrap();
                    v.set(&Tensor::from_vec(w.dequantize(), (r, k), &Device::Cpu).unwrap()).unwrap();
                }
            }
        }
        lora::prepare(&mut d, &vd, &lora(2, &["all"]), 3).unwrap();
        perturb_b(&vd);
        let ((lq, gq), (ld, gd)) = (run(&q, &vq), run(&d, &vd));
        let tol = if kind == QuantKind::F16 { 1e-4 } else { 3e-2 };
        assert!(max_diff(&lq, &ld) < tol, "{kind}: logits differ by {}", max_diff(&lq, &ld));
        for (n, (a, b)) in watched.iter().zip(gq.iter().zip(&gd)) {
            let norm = b.iter().map(|x| x.abs()).fold(0f32, f32::max);
            assert!(norm > 0.0, "{kind}: {n} has a zero gradient");
            let rel = max_diff(a, b) / norm;
            assert!(rel < if kind == QuantKind::F16 { 1e-3 } else { 0.1 }, "{kind}: {n}'s gradient differs by {rel} of its largest value");
        }
    }
}

/// A QLoRA base loaded quantized as it is read (a Hugging Face folder, streamed tensor by
/// tensor) is the model an f32 load quantized afterwards is — the same logits, bit for bit —
/// with no f32 variables for its quantized layers; a model none of whose layers fill the
/// blocks is a clear error, not a silent f32 LoRA.
#[test]
fn a_base_quantized_while_read_equals_one_quantized_after_loading() {
    use ferrolm_model::QuantKind;
    let c = TransformerConfig { d_ff: 64, ..cfg(BlockStyle::Modern) };
    let (_, vm) = model(&c);
    let dir = tempfile::tempdir().unwrap();
    ferrolm_model::hf::export::write_checkpoint(&c, &vm, dir.path(), None, None).unwrap();
    let q = ferrolm_model::registry::load_model_quantized(dir.path(), &Device::Cpu, QuantKind::Q8_0).unwrap();
    assert!(!q.varmap.data().lock().unwrap().contains_key("decoder.blocks.1.mlp.proj.weight"), "no f32 variable for a quantized layer");
    assert!(q.varmap.data().lock().unwrap().contains_key("wte.weight"));
    let mut quantized = q.model.into_decoder("t").unwrap();
    let mut after = ferrolm_model::load_model(dir.path(), &Device::Cpu).unwrap().model.into_decoder("t").unwrap();
    let before = logits(&after);
    assert_eq!(after.quantize_blocks(QuantKind::Q8_0).unwrap().len(), 5 * c.n_layers);
    assert_eq!(quantized.quantize_blocks(QuantKind::Q8_0).unwrap().len(), 5 * c.n_layers, "every block layer already held quantized");
    assert_eq!(logits(&quantized), logits(&after));
    assert!(max_diff(&before, &logits(&after)) > 0.0, "quantized, the model computes something else");
    // lora.quant on a model too narrow for blocks
    let narrow = TransformerConfig { d_model: 16, n_heads: 2, n_kv_heads: 1, d_ff: 40, ..cfg(BlockStyle::Modern) };
    let (mut m, vm) = model(&narrow);
    let err = lora::prepare(&mut m, &vm, &LoraConfig { quant: Some(QuantKind::Q8_0), ..lora(2, &["all"]) }, 0).unwrap_err().to_string();
    assert!(err.contains("no layer of this model can be held q8_0"), "{err}");
}
