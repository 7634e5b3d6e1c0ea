//! LoRA (Hu et al. 2021, "Low-Rank Adaptation of Large Language Models"): a frozen linear
//! layer W gains a trainable update (alpha / r)·B·A of rank r, A (r × in) drawn like
//! PyTorch's `nn.Linear` weights and B (out × r) zero, so training starts exactly at the
//! base model and only A and B receive gradients.
//!
//! ferrolm fuses q, k and v into one projection (`attn.qkv`); a LoRA target `q` is an
//! adapter on the q rows of that product only, exactly what PEFT's `q_proj` adapter is on
//! transformers' separate layer. Adapter variables live in the model's VarMap under
//! `<linear>.lora_a.<target>` / `<linear>.lora_b.<target>`, so checkpoints and exact resume
//! need nothing new; [`peft_tensors`] renames them for PEFT's `adapter_model.safetensors`.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::config::{BlockStyle, ModelKind, TransformerConfig};
use crate::linear::{LoraAdapter, LoraPart};
use crate::masked_lm::MaskedLm;
use crate::quant::QuantKind;
use crate::transformer::Transformer;

/// A model whose block stack can carry LoRA adapters: the decoder ([`Transformer`], stack
/// `decoder.blocks`) and the masked LM ([`MaskedLm`], stack `encoder.blocks`).
pub trait LoraHost {
    fn lora_config(&self) -> &TransformerConfig;
    fn lora_device(&self) -> &candle_core::Device;
    /// Attach adapters keyed by layer variable prefix; each one used is removed from the map.
    fn set_lora(&mut self, adapters: &mut HashMap<String, LoraAdapter>) -> candle_core::Result<()>;
    /// Detach every adapter, with its layer's variable prefix.
    fn take_lora(&mut self) -> Vec<(String, LoraAdapter)>;
    /// Freeze the linear layers' weights (no weight gradients): a base under adapters.
    fn freeze_linears(&mut self);
    /// Hold the block stack's linear weights quantized (QLoRA's base); returns the variable
    /// prefixes of the layers held quantized (now or before).
    fn quantize_base(&mut self, kind: QuantKind) -> candle_core::Result<Vec<String>>;
}

impl LoraHost for Transformer {
    fn lora_config(&self) -> &TransformerConfig {
        self.config()
    }
    fn lora_device(&self) -> &candle_core::Device {
        self.device()
    }
    fn set_lora(&mut self, adapters: &mut HashMap<String, LoraAdapter>) -> candle_core::Result<()> {
        Transformer::set_lora(self, adapters)
    }
    fn take_lora(&mut self) -> Vec<(String, LoraAdapter)> {
        Transformer::take_lora(self)
    }
    fn freeze_linears(&mut self) {
        Transformer::freeze_linears(self)
    }
    fn quantize_base(&mut self, kind: QuantKind) -> candle_core::Result<Vec<String>> {
        self.quantize_blocks(kind)
    }
}

impl LoraHost for MaskedLm {
    fn lora_config(&self) -> &TransformerConfig {
        self.config()
    }
    fn lora_device(&self) -> &candle_core::Device {
        self.device()
    }
    fn set_lora(&mut self, adapters: &mut HashMap<String, LoraAdapter>) -> candle_core::Result<()> {
        MaskedLm::set_lora(self, adapters)
    }
    fn take_lora(&mut self) -> Vec<(String, LoraAdapter)> {
        MaskedLm::take_lora(self)
    }
    fn freeze_linears(&mut self) {
        MaskedLm::freeze_linears(self)
    }
    fn quantize_base(&mut self, kind: QuantKind) -> candle_core::Result<Vec<String>> {
        self.quantize_encoder(kind)
    }
}

/// The variable prefix of the adapted block stack: `encoder.blocks` of a masked LM,
/// `decoder.blocks` of a decoder.
pub fn stack_prefix(cfg: &TransformerConfig) -> &'static str {
    if cfg.kind == ModelKind::MaskedLm {
        "encoder.blocks"
    } else {
        "decoder.blocks"
    }
}

/// GPT-2 decoders fuse q, k and v in HF's `c_attn` too (BERT splits them).
fn fused_qkv(cfg: &TransformerConfig) -> bool {
    cfg.block == BlockStyle::Gpt2 && cfg.kind != ModelKind::MaskedLm
}

/// The targets a decoder block offers: attention q, k, v and output projections; the MLP's
/// gate, up and down projections (GPT-2 blocks: `up` is `c_fc`, `down` is `c_proj`, and
/// there is no gate).
pub const TARGETS: [&str; 7] = ["q", "k", "v", "o", "gate", "up", "down"];

/// The `[lora]` section of a fine-tuning stage. `rank = 0` (the default) trains the whole
/// model instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: usize,
    /// The update is scaled by alpha / rank (PEFT's `lora_alpha`).
    pub alpha: f64,
    /// Dropout on the adapter's input during training (PEFT's `lora_dropout`).
    pub dropout: f32,
    /// Some of [`TARGETS`], or `all` (every one the block has).
    pub targets: Vec<String>,
    /// QLoRA (Dettmers et al. 2023): hold the frozen base's block weights quantized
    /// (`q8_0`, `q4_k` or `f16`) while the adapters train in f32, so the base takes a
    /// quarter to an eighth of its f32 memory. The adapters then learn on top of the
    /// quantized base, and the run loads as that (base quantized again, adapters kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quant: Option<QuantKind>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { rank: 0, alpha: 16.0, dropout: 0.0, targets: vec!["all".into()], quant: None }
    }
}

impl LoraConfig {
    pub fn enabled(&self) -> bool {
        self.rank > 0
    }

    /// The format the base is held in while adapters train (`lora.quant`), when they do.
    pub fn base_quant(&self) -> Option<QuantKind> {
        self.quant.filter(|_| self.enabled())
    }

    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// `all` spelled out for this block style.
    pub fn resolved(&self, cfg: &TransformerConfig) -> Self {
        let mut c = self.clone();
        if c.targets.iter().any(|t| t == "all") {
            c.targets = TARGETS.iter().filter(|t| !(cfg.block == BlockStyle::Gpt2 && **t == "gate")).map(|t| t.to_string()).collect();
        }
        c
    }

    pub fn validate(&self, cfg: &TransformerConfig) -> Result<()> {
        ensure!(self.rank > 0, "lora.rank must be positive to train adapters");
        ensure!(self.alpha > 0.0 && self.alpha.is_finite(), "lora.alpha must be positive, got {}", self.alpha);
        ensure!((0.0..1.0).contains(&self.dropout), "lora.dropout must be in [0, 1), got {}", self.dropout);
        ensure!(!self.targets.is_empty(), "lora.targets is empty: name some of {TARGETS:?} or \"all\"");
        for t in &self.targets {
            if t == "all" {
                continue;
            }
            if !TARGETS.contains(&t.as_str()) {
                bail!("lora.targets: the model has no layer `{t}` (its targets are {TARGETS:?}, or \"all\")");
            }
            if t == "gate" && cfg.block == BlockStyle::Gpt2 {
                bail!("lora.targets: `gate` — GPT-2 blocks have no gate projection (their MLP is up = c_fc, down = c_proj)");
            }
        }
        let max = cfg.d_model.min(cfg.ff_dim()).min(cfg.kv_width());
        ensure!(self.rank <= max, "lora.rank {} exceeds the smallest adapted width {max}", self.rank);
        Ok(())
    }
}

/// Whether a VarMap name is a LoRA adapter variable.
pub fn is_adapter(name: &str) -> bool {
    name.contains(".lora_a.") || name.contains(".lora_b.")
}

/// A target inside a layer: (target, first output row, rows).
type TargetRows = (&'static str, usize, usize);

/// Each adaptable linear layer of a decoder: its variable prefix, its input width, and the
/// targets it holds as (target, first output row, rows).
fn layer_targets(cfg: &TransformerConfig) -> Vec<(String, usize, Vec<TargetRows>)> {
    let (d, q, kv, f) = (cfg.d_model, cfg.q_width(), cfg.kv_width(), cfg.ff_dim());
    let mut out = Vec::new();
    for i in 0..cfg.n_layers {
        let p = format!("{}.{i}", stack_prefix(cfg));
        out.push((format!("{p}.attn.qkv"), d, vec![("q", 0, q), ("k", q, kv), ("v", q + kv, kv)]));
        out.push((format!("{p}.attn.proj"), q, vec![("o", 0, d)]));
        match cfg.block {
            BlockStyle::Gpt2 => {
                out.push((format!("{p}.mlp.fc"), d, vec![("up", 0, f)]));
                out.push((format!("{p}.mlp.proj"), f, vec![("down", 0, d)]));
            }
            BlockStyle::Modern => {
                out.push((format!("{p}.mlp.gate"), d, vec![("gate", 0, f)]));
                out.push((format!("{p}.mlp.up"), d, vec![("up", 0, f)]));
                out.push((format!("{p}.mlp.proj"), f, vec![("down", 0, d)]));
            }
        }
    }
    out
}

/// Give `model` fresh adapters (A seeded from `seed`, B zero) on the configured targets,
/// their variables added to `varmap`. Returns the number of adapter parameters.
pub fn attach<M: LoraHost>(model: &mut M, varmap: &VarMap, lora: &LoraConfig, seed: u64) -> Result<usize> {
    let cfg = model.lora_config().clone();
    ensure!(
        matches!(cfg.kind, ModelKind::Causal | ModelKind::Prefix | ModelKind::MaskedLm),
        "LoRA adapters go on decoders and masked LMs, not model.kind = {:?}",
        cfg.kind
    );
    lora.validate(&cfg)?;
    let lora = lora.resolved(&cfg);
    let dev = model.lora_device().clone();
    let mut adapters: HashMap<String, LoraAdapter> = HashMap::new();
    let mut params = 0;
    let mut data = varmap.data().lock().expect("varmap lock");
    for (prefix, input, parts) in layer_targets(&cfg) {
        // (a layer held quantized has no weight variable: QLoRA's base)
        if let Some(w) = data.get(&format!("{prefix}.weight")) {
            ensure!(w.dim(1)? == input, "internal: layer {prefix} takes {} inputs, the config says {input}", w.dim(1)?);
        }
        let mut adapter = LoraAdapter { parts: Vec::new(), scale: lora.scale(), dropout: lora.dropout };
        for (target, start, rows) in parts {
            if !lora.targets.iter().any(|t| t == target) {
                continue;
            }
            let (na, nb) = (format!("{prefix}.lora_a.{target}"), format!("{prefix}.lora_b.{target}"));
            ensure!(!data.contains_key(&na), "the model already has LoRA adapters ({na})");
            // A as PyTorch initialises a Linear (kaiming-uniform with a = √5: U(±1/√in)), as PEFT does.
            let a_vals = crate::init::seeded_uniform(&na, seed, lora.rank * input, 1.0 / (input as f64).sqrt());
            let a = candle_core::Var::from_tensor(&Tensor::from_vec(a_vals, (lora.rank, input), &dev)?)?;
            let b = candle_core::Var::from_tensor(&Tensor::zeros((rows, lora.rank), DType::F32, &dev)?)?;
            params += a.elem_count() + b.elem_count();
            adapter.parts.push(LoraPart { start, a: a.as_tensor().clone(), b: b.as_tensor().clone() });
            data.insert(na, a);
            data.insert(nb, b);
        }
        if !adapter.parts.is_empty() {
            adapters.insert(prefix, adapter);
        }
    }
    drop(data);
    model.set_lora(&mut adapters)?;
    ensure!(adapters.is_empty(), "internal: adapters for unknown layers {:?}", adapters.keys().collect::<Vec<_>>());
    Ok(params)
}

/// What a LoRA stage does to its starting model: fresh adapters ([`attach`]) and the base's
/// linear weights frozen (no weight gradients for what does not train); with `lora.quant`,
/// the block stack's weights held quantized ([`quantize_base`]). Returns the number of
/// adapter parameters.
pub fn prepare<M: LoraHost>(model: &mut M, varmap: &VarMap, lora: &LoraConfig, seed: u64) -> Result<usize> {
    let n = attach(model, varmap, lora, seed)?;
    model.freeze_linears();
    if let Some(kind) = lora.quant {
        quantize_base(model, varmap, kind)?;
    }
    Ok(n)
}

/// QLoRA's base: the block stack's linear weights held quantized as `kind` asks, and their
/// f32 variables dropped from `varmap` — the memory goes, and checkpoints hold what trains
/// and what stayed f32 (embeddings, norms, biases, heads); loading such a run reads the
/// quantized weights from its base again ([`crate::registry::load_model`]). Returns the
/// prefixes of the layers quantized.
pub fn quantize_base<M: LoraHost>(model: &mut M, varmap: &VarMap, kind: QuantKind) -> Result<Vec<String>> {
    let prefixes = model.quantize_base(kind)?;
    let cfg = model.lora_config();
    ensure!(
        !prefixes.is_empty(),
        "lora.quant = \"{kind}\": no layer of this model can be held {kind} (its rows of {} and {} values do not fill blocks of 32; q4_k needs 256) — train without lora.quant",
        cfg.d_model,
        cfg.ff_dim()
    );
    let mut data = varmap.data().lock().expect("varmap lock");
    for p in &prefixes {
        // (a base loaded quantized has no such variables: `registry::load_model_quantized`)
        data.remove(&format!("{p}.weight"));
    }
    Ok(prefixes)
}

/// Fold every adapter into its base weight (W[rows] += scale·B·A), drop the adapters from
/// the model and their variables from `varmap`: the model then computes what the adapted
/// one did, at the base model's cost.
pub fn merge<M: LoraHost>(model: &mut M, varmap: &VarMap) -> Result<()> {
    let adapters = model.take_lora();
    let mut data = varmap.data().lock().expect("varmap lock");
    for (prefix, adapter) in adapters {
        let w = data.get(&format!("{prefix}.weight")).with_context(|| format!("no base weight for {prefix}"))?;
        let mut merged = w.as_tensor().copy()?;
        let cols = merged.dim(1)?;
        for p in &adapter.parts {
            let delta = (p.b.matmul(&p.a)? * adapter.scale)?.to_dtype(merged.dtype())?;
            let rows = delta.dim(0)?;
            let updated = (merged.narrow(0, p.start, rows)? + delta)?;
            merged = merged.slice_assign(&[p.start..p.start + rows, 0..cols], &updated)?;
        }
        w.set(&merged)?;
    }
    data.retain(|name, _| !is_adapter(name));
    Ok(())
}

/// The HF (transformers) module a ferrolm layer is, as PEFT keys its adapters:
/// `model.layers.3.self_attn.q_proj` (Llama family; one module per target, q/k/v split),
/// `transformer.h.3.attn.c_attn` (GPT-2; q, k and v share the fused `c_attn`),
/// `bert.encoder.layer.3.attention.self.query` (masked LMs, in BERT's naming).
/// Whose names a masked-LM body takes in the HF model: BERT's (`bert.encoder.layer.N…`,
/// `BertForSequenceClassification`) or RoBERTa's (`roberta.encoder.layer.N…`,
/// `RobertaForSequenceClassification`). The blocks are the same; decoders ignore this.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HfEncoder {
    #[default]
    Bert,
    Roberta,
}

impl HfEncoder {
    /// The attribute the HF model keeps its encoder under.
    pub fn attr(self) -> &'static str {
        match self {
            HfEncoder::Bert => "bert",
            HfEncoder::Roberta => "roberta",
        }
    }
}

fn hf_module(cfg: &TransformerConfig, enc: HfEncoder, prefix: &str, target: &str) -> Result<String> {
    let layer: usize = prefix
        .strip_prefix(stack_prefix(cfg))
        .and_then(|r| r.strip_prefix('.'))
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("not a block layer: {prefix}"))?;
    if cfg.kind == ModelKind::MaskedLm {
        let m = match target {
            "q" => "attention.self.query",
            "k" => "attention.self.key",
            "v" => "attention.self.value",
            "o" => "attention.output.dense",
            "up" => "intermediate.dense",
            "down" => "output.dense",
            _ => bail!("LoRA target `{target}` has no BERT module (BERT's MLP is up = intermediate.dense, down = output.dense)"),
        };
        return Ok(format!("{}.encoder.layer.{layer}.{m}", enc.attr()));
    }
    Ok(match cfg.block {
        BlockStyle::Modern => {
            let m = match target {
                "q" | "k" | "v" | "o" => format!("self_attn.{target}_proj"),
                "gate" | "up" | "down" => format!("mlp.{target}_proj"),
                _ => bail!("unknown LoRA target {target}"),
            };
            format!("model.layers.{layer}.{m}")
        }
        BlockStyle::Gpt2 => {
            let m = match target {
                "q" | "k" | "v" => "attn.c_attn",
                "o" => "attn.c_proj",
                "up" => "mlp.c_fc",
                "down" => "mlp.c_proj",
                _ => bail!("unknown LoRA target {target} for GPT-2 blocks"),
            };
            format!("transformer.h.{layer}.{m}")
        }
    })
}

/// The other linear modules of the HF model (heads, pooler) that a `target_modules` name
/// must not catch.
fn hf_other_modules(cfg: &TransformerConfig, enc: HfEncoder) -> Vec<String> {
    if cfg.kind == ModelKind::MaskedLm {
        let names: &[&str] = match enc {
            HfEncoder::Bert => &["bert.pooler.dense", "cls.predictions.transform.dense", "cls.predictions.decoder", "classifier"],
            // RobertaForSequenceClassification's head is a dense layer and a projection
            HfEncoder::Roberta => &["roberta.pooler.dense", "lm_head.dense", "lm_head.decoder", "classifier.dense", "classifier.out_proj"],
        };
        names.iter().map(|s| s.to_string()).collect()
    } else {
        ["lm_head", "score"].map(String::from).to_vec()
    }
}

/// How many of q, k, v are adapted: on GPT-2 their adapters become one adapter of the
/// fused `c_attn` of that many times the rank (stacked A, block-placed B: the same update).
fn fused_qkv_parts(lora: &LoraConfig) -> usize {
    lora.targets.iter().filter(|t| matches!(t.as_str(), "q" | "k" | "v")).count()
}

/// PEFT's `target_modules` for the targets: the shortest module-name suffixes that catch
/// exactly the targeted modules of every layer (PEFT matches a name `n` when the module's
/// path is `n` or ends with `.n`): `q_proj` (Llama), `c_attn`, `c_fc`; `c_proj` when both
/// GPT-2 projections are targeted, else `attn.c_proj` / `mlp.c_proj`; BERT's `query`,
/// `intermediate.dense`, `attention.output.dense`. When no list of suffixes can say it
/// (BERT's `output.dense` without `attention.output.dense`), a regular expression over the
/// full path, which PEFT matches with `re.fullmatch`.
pub fn peft_target_modules(cfg: &TransformerConfig, lora: &LoraConfig) -> Result<serde_json::Value> {
    peft_target_modules_for(cfg, lora, HfEncoder::Bert)
}

/// [`peft_target_modules`] with a masked-LM body's names as `enc` gives them.
pub fn peft_target_modules_for(cfg: &TransformerConfig, lora: &LoraConfig, enc: HfEncoder) -> Result<serde_json::Value> {
    let lora = lora.resolved(cfg);
    let all_targets: Vec<&str> = TARGETS.iter().copied().filter(|t| hf_module(cfg, enc, &format!("{}.0", stack_prefix(cfg)), t).is_ok()).collect();
    let layers = cfg.n_layers.max(1);
    let modules_of = |targets: &[&str]| -> Result<Vec<String>> {
        let mut v = Vec::new();
        for i in 0..layers {
            for t in targets {
                let m = hf_module(cfg, enc, &format!("{}.{i}", stack_prefix(cfg)), t)?;
                if !v.contains(&m) {
                    v.push(m);
                }
            }
        }
        Ok(v)
    };
    let chosen: Vec<&str> = lora.targets.iter().map(String::as_str).collect();
    let targeted = modules_of(&chosen)?;
    let mut every = modules_of(&all_targets)?;
    every.extend(hf_other_modules(cfg, enc));
    let catches = |suffix: &str| every.iter().filter(|m| *m == suffix || m.ends_with(&format!(".{suffix}"))).cloned().collect::<Vec<_>>();
    let mut names: Vec<String> = Vec::new();
    let mut regex = false;
    for t in &chosen {
        let full = hf_module(cfg, enc, &format!("{}.0", stack_prefix(cfg)), t)?;
        let parts: Vec<&str> = full.split('.').collect();
        let mut found = None;
        for k in 1..=parts.len() {
            let suffix = parts[parts.len() - k..].join(".");
            if suffix.split('.').any(|p| p.parse::<usize>().is_ok()) {
                break; // a layer number: the suffix would name one layer only
            }
            if catches(&suffix).iter().all(|m| targeted.contains(m)) {
                found = Some(suffix);
                break;
            }
        }
        match found {
            Some(n) if !names.contains(&n) => names.push(n),
            Some(_) => {}
            None => regex = true,
        }
    }
    if regex {
        let mut alts: Vec<String> = Vec::new();
        for t in &chosen {
            let full = hf_module(cfg, enc, &format!("{}.0", stack_prefix(cfg)), t)?;
            let pattern = full.split('.').map(|p| if p == "0" { r"\d+".to_string() } else { regex_escape(p) }).collect::<Vec<_>>().join(r"\.");
            if !alts.contains(&pattern) {
                alts.push(pattern);
            }
        }
        return Ok(serde_json::Value::String(format!("(?:{})", alts.join("|"))));
    }
    Ok(serde_json::json!(names))
}

fn regex_escape(s: &str) -> String {
    s.chars().flat_map(|c| if c.is_ascii_alphanumeric() || c == '_' { vec![c] } else { vec!['\\', c] }).collect()
}

/// The adapter tensors under PEFT's names
/// (`base_model.model.<module>.lora_A.weight`, `…lora_B.weight`).
pub fn peft_tensors(cfg: &TransformerConfig, varmap: &VarMap) -> Result<HashMap<String, Tensor>> {
    peft_tensors_for(cfg, varmap, HfEncoder::Bert)
}

/// [`peft_tensors`] with a masked-LM body's names as `enc` gives them.
pub fn peft_tensors_for(cfg: &TransformerConfig, varmap: &VarMap, enc: HfEncoder) -> Result<HashMap<String, Tensor>> {
    let data = varmap.data().lock().expect("varmap lock");
    let cpu = |v: &candle_core::Var| -> Result<Tensor> { Ok(v.as_tensor().to_dtype(DType::F32)?.to_device(&candle_core::Device::Cpu)?) };
    let mut out = HashMap::new();
    for (prefix, _, parts) in layer_targets(cfg) {
        let mut found: Vec<(&str, usize, usize, Tensor, Tensor)> = Vec::new();
        for &(t, start, rows) in &parts {
            if let (Some(a), Some(b)) = (data.get(&format!("{prefix}.lora_a.{t}")), data.get(&format!("{prefix}.lora_b.{t}"))) {
                found.push((t, start, rows, cpu(a)?, cpu(b)?));
            }
        }
        if found.is_empty() {
            continue;
        }
        if fused_qkv(cfg) && prefix.ends_with("attn.qkv") {
            // One c_attn adapter: A = [A_q; A_k; A_v] (k·r × in); B puts each B_s in its
            // rows and its own r columns, zero elsewhere.
            let module = hf_module(cfg, enc, &prefix, "q")?;
            let r = found[0].3.dim(0)?;
            let total_rows: usize = parts.iter().map(|p| p.2).sum();
            let a = Tensor::cat(&found.iter().map(|f| f.3.clone()).collect::<Vec<_>>(), 0)?;
            let mut b = Tensor::zeros((total_rows, r * found.len()), DType::F32, &candle_core::Device::Cpu)?;
            for (j, (_, start, rows, _, bs)) in found.iter().enumerate() {
                b = b.slice_assign(&[*start..start + rows, j * r..(j + 1) * r], bs)?;
            }
            out.insert(format!("base_model.model.{module}.lora_A.weight"), a);
            out.insert(format!("base_model.model.{module}.lora_B.weight"), b);
            continue;
        }
        for (t, _, _, a, b) in found {
            let module = hf_module(cfg, enc, &prefix, t)?;
            out.insert(format!("base_model.model.{module}.lora_A.weight"), a);
            out.insert(format!("base_model.model.{module}.lora_B.weight"), b);
        }
    }
    ensure!(!out.is_empty(), "the model has no LoRA adapters");
    Ok(out)
}

/// What PEFT's model class is: `CAUSAL_LM` (the LM head is the base's), or `SEQ_CLS`
/// (transformers' `*ForSequenceClassification`: a head that trains fully and is saved
/// whole, PEFT's `modules_to_save`).
#[derive(Debug, Clone, Default)]
pub struct PeftTask {
    /// `None`: CAUSAL_LM.
    pub seq_cls: Option<SeqClsHead>,
    /// A masked-LM body's HF names (BERT's unless the base is RoBERTa).
    pub encoder: HfEncoder,
}

/// A sequence-classification head saved beside the adapters.
#[derive(Debug, Clone)]
pub struct SeqClsHead {
    /// The head's module in the HF model: `score` (decoders), `classifier` (BERT).
    pub module: String,
    /// Its tensors by parameter name (`weight`, `bias`; RoBERTa's `dense.weight`, …,
    /// `out_proj.bias`).
    pub tensors: Vec<(String, Tensor)>,
}

impl PeftTask {
    pub fn causal_lm() -> Self {
        Self { seq_cls: None, encoder: HfEncoder::Bert }
    }

    /// The HF head module of a sequence classifier on this body: `score` on decoders
    /// (no bias in transformers), `classifier` on BERT.
    pub fn seq_cls_module(cfg: &TransformerConfig) -> &'static str {
        if cfg.kind == ModelKind::MaskedLm {
            "classifier"
        } else {
            "score"
        }
    }
}

/// PEFT's `adapter_config.json` for these adapters on the base model `base` (a causal LM).
pub fn peft_config(cfg: &TransformerConfig, lora: &LoraConfig, base: &str) -> Result<serde_json::Value> {
    peft_config_for(cfg, lora, base, &PeftTask::causal_lm())
}

/// PEFT's `adapter_config.json` for these adapters, as the model class of `task`.
pub fn peft_config_for(cfg: &TransformerConfig, lora: &LoraConfig, base: &str, task: &PeftTask) -> Result<serde_json::Value> {
    let lora = lora.resolved(cfg);
    let (mut rank_pattern, mut alpha_pattern) = (serde_json::Map::new(), serde_json::Map::new());
    let k = fused_qkv_parts(&lora);
    if fused_qkv(cfg) && k > 1 {
        // c_attn's stacked adapter has k·r ranks; k·alpha keeps the scale alpha / r.
        rank_pattern.insert("c_attn".into(), serde_json::json!(k * lora.rank));
        alpha_pattern.insert("c_attn".into(), serde_json::json!(k as f64 * lora.alpha));
    }
    let (task_type, modules_to_save) = match &task.seq_cls {
        Some(h) => ("SEQ_CLS", serde_json::json!([h.module])),
        None => ("CAUSAL_LM", serde_json::Value::Null),
    };
    Ok(serde_json::json!({
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": peft_target_modules_for(cfg, &lora, task.encoder)?,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "bias": "none",
        // GPT-2's Conv1D stores W transposed; PEFT then transposes the update itself.
        "fan_in_fan_out": fused_qkv(cfg),
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": modules_to_save,
        "revision": null,
    }))
}

/// Write `adapter_model.safetensors` and `adapter_config.json` (each atomically) into `dir`.
pub fn write_peft(dir: &std::path::Path, cfg: &TransformerConfig, lora: &LoraConfig, varmap: &VarMap, base: &str) -> Result<()> {
    write_peft_for(dir, cfg, lora, varmap, base, &PeftTask::causal_lm())
}

/// [`write_peft`] for the model class of `task`: a SEQ_CLS head's tensors are saved as
/// PEFT saves `modules_to_save`, `base_model.model.<module>.<param>` (`…score.weight`).
pub fn write_peft_for(dir: &std::path::Path, cfg: &TransformerConfig, lora: &LoraConfig, varmap: &VarMap, base: &str, task: &PeftTask) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tensors = peft_tensors_for(cfg, varmap, task.encoder)?;
    if let Some(h) = &task.seq_cls {
        for (name, t) in &h.tensors {
            tensors.insert(format!("base_model.model.{}.{name}", h.module), t.to_dtype(DType::F32)?.to_device(&candle_core::Device::Cpu)?);
        }
    }
    let tmp = dir.join(".adapter_model.safetensors.tmp");
    candle_core::safetensors::save(&tensors, &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join("adapter_model.safetensors"))?;
    crate::hf::export::write_json(&dir.join("adapter_config.json"), &peft_config_for(cfg, lora, base, task)?)
}

/// `lora.toml` of a run folder that trained adapters: their settings, read back when the
/// run is loaded.
pub const RUN_FILE: &str = "lora.toml";

pub fn read_run_config(run_dir: &std::path::Path) -> Result<Option<LoraConfig>> {
    Ok(read_run_file(run_dir)?.map(|(c, _)| c))
}

/// The base a QLoRA run (`lora.quant`) trained on, as its `lora.toml` records it: loading
/// the run quantizes that base's weights again.
pub fn read_run_base(run_dir: &std::path::Path) -> Result<Option<std::path::PathBuf>> {
    Ok(read_run_file(run_dir)?.and_then(|(_, b)| b))
}

fn read_run_file(run_dir: &std::path::Path) -> Result<Option<(LoraConfig, Option<std::path::PathBuf>)>> {
    let p = run_dir.join(RUN_FILE);
    if !p.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let mut table: toml::Table = toml::from_str(&text).with_context(|| format!("invalid {}", p.display()))?;
    let base = match table.remove("base") {
        Some(toml::Value::String(b)) => Some(std::path::PathBuf::from(b)),
        Some(other) => bail!("{}: `base` must be a path, got {other}", p.display()),
        None => None,
    };
    let c: LoraConfig = toml::Value::Table(table).try_into().with_context(|| format!("invalid {}", p.display()))?;
    Ok(Some((c, base)))
}

/// Write `lora.toml`: the adapters' settings and, for a QLoRA run, the base it trained on
/// (made absolute, so the run loads from anywhere).
pub fn write_run_config(run_dir: &std::path::Path, lora: &LoraConfig, base: &std::path::Path) -> Result<()> {
    let mut table = toml::Table::try_from(lora)?;
    if lora.quant.is_some() {
        let abs = std::fs::canonicalize(base).with_context(|| format!("cannot resolve the base {}", base.display()))?;
        table.insert("base".into(), toml::Value::String(abs.display().to_string()));
    }
    ferrolm_common::write_atomic(run_dir.join(RUN_FILE), toml::to_string_pretty(&table)?).with_context(|| format!("cannot write {}", run_dir.join(RUN_FILE).display()))
}
