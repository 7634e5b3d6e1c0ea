//! The one way to build, initialise and load a model of any family.
//!
//! [`ModelSpec`] (a run's `[model]`) → [`AnyModel::build`] → [`init_weights`] for a fresh
//! run, or [`load_model`] for a trained run folder (its `config.toml` and the weights of
//! its latest checkpoint). Training, generation, evaluation, fine-tuning, alignment and
//! serving all take an [`AnyModel`]; the checkpoint *reading* side lives here so inference
//! never depends on the training crate.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::attention::MaskSpec;
use crate::nplm::{init_nplm, Nplm};
use crate::rnn::{init_recurrent, RecurrentLm};
use crate::spec::ModelSpec;
use crate::{EncoderDecoder, MaskedLm, ModelKind, Transformer};

/// A built model of any family.
#[derive(Debug, Clone)]
pub enum AnyModel {
    /// The causal or prefix decoder (its `kind` says which).
    Decoder(Transformer),
    EncoderDecoder(EncoderDecoder),
    MaskedLm(MaskedLm),
    Nplm(Nplm),
    Recurrent(RecurrentLm),
}

/// A model that maps token ids (batch, T) to next-token logits (batch, T, vocab) under
/// causal attention: the Transformer decoder, and the window and recurrent LMs.
/// `dropout_seed` is `None` at evaluation.
pub trait CausalLm {
    fn causal_logits(&self, inputs: &Tensor, dropout_seed: Option<u64>) -> Result<Tensor>;
}

impl CausalLm for Transformer {
    fn causal_logits(&self, inputs: &Tensor, dropout_seed: Option<u64>) -> Result<Tensor> {
        let hidden = self.hidden(inputs, &MaskSpec::causal(), None, dropout_seed)?;
        Ok(self.logits(&hidden)?)
    }
}

impl CausalLm for Nplm {
    fn causal_logits(&self, inputs: &Tensor, dropout_seed: Option<u64>) -> Result<Tensor> {
        Ok(self.forward(inputs, dropout_seed)?)
    }
}

impl CausalLm for RecurrentLm {
    fn causal_logits(&self, inputs: &Tensor, dropout_seed: Option<u64>) -> Result<Tensor> {
        Ok(self.forward(inputs, dropout_seed)?)
    }
}

impl CausalLm for AnyModel {
    fn causal_logits(&self, inputs: &Tensor, dropout_seed: Option<u64>) -> Result<Tensor> {
        match self {
            AnyModel::Decoder(m) => m.causal_logits(inputs, dropout_seed),
            AnyModel::Nplm(m) => m.causal_logits(inputs, dropout_seed),
            AnyModel::Recurrent(m) => m.causal_logits(inputs, dropout_seed),
            AnyModel::EncoderDecoder(_) | AnyModel::MaskedLm(_) => bail!("{} is not a left-to-right language model", self.name()),
        }
    }
}

impl AnyModel {
    /// Build the model of `spec` on the variables of `vb` (not initialised).
    pub fn build(spec: &ModelSpec, vb: VarBuilder) -> Result<Self> {
        Ok(match spec {
            ModelSpec::Transformer(c) => match c.kind {
                ModelKind::Causal | ModelKind::Prefix => AnyModel::Decoder(Transformer::new(c, vb)?),
                ModelKind::EncoderDecoder => AnyModel::EncoderDecoder(EncoderDecoder::new(c, vb)?),
                ModelKind::MaskedLm => AnyModel::MaskedLm(MaskedLm::new(c, vb)?),
            },
            ModelSpec::Nplm(cfg) => AnyModel::Nplm(Nplm::new(cfg, vb)?),
            ModelSpec::Recurrent(cfg) => AnyModel::Recurrent(RecurrentLm::new(cfg, vb)?),
        })
    }

    /// Build the model of `spec` with fresh f32 variables on `device` (not initialised).
    pub fn build_fresh(spec: &ModelSpec, device: &Device) -> Result<(Self, VarMap)> {
        spec.validate().map_err(anyhow::Error::msg)?;
        let varmap = VarMap::new();
        let model = Self::build(spec, VarBuilder::from_varmap(&varmap, DType::F32, device)).context("building the model")?;
        Ok((model, varmap))
    }

    /// Build the model with `values` as its variables: each becomes a variable before the
    /// model asks for it, so nothing is drawn at random and each tensor is copied once (and
    /// dropped as it is taken). Every variable the model asks for must be among `values`
    /// (`origin` names the source in the error).
    pub fn build_with(spec: &ModelSpec, mut values: HashMap<String, Tensor>, device: &Device, origin: &Path) -> Result<(Self, VarMap)> {
        spec.validate().map_err(anyhow::Error::msg)?;
        let varmap = VarMap::new();
        // Placeholders (weights a GGUF model holds only quantized) go to the builder as they
        // are — a variable would copy them into a dense matrix — and the caller must give
        // their layers the quantized weights (`Transformer::set_quantized`).
        let mut placeholders = HashMap::new();
        {
            let mut data = varmap.data().lock().expect("varmap lock");
            let names: Vec<String> = values.keys().cloned().collect();
            for name in names {
                let t = values.remove(&name).expect("listed");
                if crate::linear::is_placeholder(&t) {
                    placeholders.insert(name, t.to_device(device)?);
                    continue;
                }
                let var = candle_core::Var::from_tensor(&t.to_device(device)?.to_dtype(DType::F32)?)?;
                data.insert(name, var);
            }
        }
        let provided = varmap.data().lock().expect("varmap lock").len();
        let vb = if placeholders.is_empty() {
            VarBuilder::from_varmap(&varmap, DType::F32, device)
        } else {
            VarBuilder::from_backend(Box::new(WithPlaceholders { varmap: varmap.clone(), placeholders }), DType::F32, device.clone())
        };
        let model = Self::build(spec, vb).context("building the model")?;
        let data = varmap.data().lock().expect("varmap lock");
        if data.len() != provided {
            // The builder created variables the source did not provide (drawn at random).
            let mut missing: Vec<&String> = data.keys().collect();
            missing.sort();
            bail!("{}: the model needs {} more variables than the source provides (the first names: {:?})", origin.display(), data.len() - provided, &missing[..missing.len().min(3)]);
        }
        drop(data);
        Ok((model, varmap))
    }

    /// Quantize the model's linear layers for CPU inference (`--quant q8_0|q4_k|f16` of
    /// generate, chat, eval, serve): each layer then holds its quantized blocks instead of
    /// f32 weights (few-row products — decoding — read them; larger ones widen panels of
    /// rows as they go), so every path computes the quantized model. The model is frozen: for inference only. Layers a quantized or f16 GGUF file
    /// gave blocks keep them. Decoders only, on the CPU.
    pub fn quantize(&mut self, kind: crate::quant::QuantKind) -> Result<crate::quant::QuantSummary> {
        if !self.device().is_cpu() {
            bail!("--quant {kind}: quantized weights are for CPU inference; this model is on {:?}", self.device().location());
        }
        match self {
            AnyModel::Decoder(m) => {
                m.freeze_linears();
                Ok(m.quantize(kind)?)
            }
            other => bail!("--quant {kind} needs a Transformer decoder; this model is {}", other.name()),
        }
    }

    /// What the model is, in a word or two (for messages).
    pub fn name(&self) -> &'static str {
        match self {
            AnyModel::Decoder(_) => "a Transformer decoder",
            AnyModel::EncoderDecoder(_) => "an encoder-decoder",
            AnyModel::MaskedLm(_) => "a masked LM",
            AnyModel::Nplm(_) => "an NPLM",
            AnyModel::Recurrent(_) => "a recurrent LM",
        }
    }

    pub fn device(&self) -> &Device {
        match self {
            AnyModel::Decoder(m) => m.device(),
            AnyModel::EncoderDecoder(m) => m.device(),
            AnyModel::MaskedLm(m) => m.device(),
            AnyModel::Nplm(m) => m.device(),
            AnyModel::Recurrent(m) => m.device(),
        }
    }

    /// The Transformer decoder, or an error naming what `purpose` needs.
    pub fn decoder(&self, purpose: &str) -> Result<&Transformer> {
        match self {
            AnyModel::Decoder(m) => Ok(m),
            other => bail!("{purpose} needs a Transformer decoder (model.kind = \"causal\" or \"prefix\"); this run is {}", other.name()),
        }
    }

    pub fn into_decoder(self, purpose: &str) -> Result<Transformer> {
        match self {
            AnyModel::Decoder(m) => Ok(m),
            other => bail!("{purpose} needs a Transformer decoder (model.kind = \"causal\" or \"prefix\"); this run is {}", other.name()),
        }
    }
}

/// Seeded initialisation by the family's own convention: GPT-2's for the Transformer,
/// PyTorch's defaults for the NPLM and the recurrent models.
pub fn init_weights(spec: &ModelSpec, varmap: &VarMap, seed: u64) -> Result<()> {
    match spec {
        ModelSpec::Transformer(c) => crate::init::init_params(varmap, c.n_layers, seed)?,
        ModelSpec::Nplm(_) => init_nplm(varmap, seed)?,
        ModelSpec::Recurrent(cfg) => init_recurrent(varmap, cfg, seed)?,
    }
    Ok(())
}

/// A trained model loaded from a run folder.
pub struct LoadedModel {
    /// The run folder's `[model]`.
    pub spec: ModelSpec,
    pub model: AnyModel,
    /// The model's variables (shared with `model`: training them changes it).
    pub varmap: VarMap,
    /// The checkpoint folder the weights came from.
    pub checkpoint: PathBuf,
}

/// Read the `[model]` section of a run folder's `config.toml` (or, for a Hugging Face
/// model folder, the model its `config.json` describes).
pub fn read_spec(run_dir: &Path) -> Result<ModelSpec> {
    if crate::hf::is_hf_folder(run_dir) {
        return Ok(ModelSpec::Transformer(crate::hf::read_config(run_dir)?.model));
    }
    let path = run_dir.join("config.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {} (is {} a ferrolm run folder?)", path.display(), run_dir.display()))?;
    let table: toml::Table = text.parse().with_context(|| format!("invalid TOML in {}", path.display()))?;
    let model = table.get("model").cloned().unwrap_or(toml::Value::Table(Default::default()));
    ModelSpec::from_value(&model).map_err(|e| anyhow::anyhow!("in [model] of {}: {e}", path.display()))
}

/// Load a trained run folder: its `[model]` and the weights of its latest checkpoint.
/// A Hugging Face model folder (`config.json` + safetensors) loads through
/// [`crate::hf::load`]: this is the one place that tells the two apart.
pub fn load_model(run_dir: &Path, device: &Device) -> Result<LoadedModel> {
    load_model_with(run_dir, device, false)
}

/// [`load_model`]; a QLoRA run (`lora.quant`) then loads as it trained — its base's block
/// weights quantized again, its adapters kept on them — unless `qlora_into_f32`: then its
/// adapters are folded into the base's f32 weights (what an export wants, as a QLoRA
/// adapter is merged into the unquantized base in PEFT).
pub fn load_model_with(run_dir: &Path, device: &Device, qlora_into_f32: bool) -> Result<LoadedModel> {
    if run_dir.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return Ok(crate::gguf::load(run_dir, device)?.loaded);
    }
    if crate::hf::is_hf_folder(run_dir) {
        return crate::hf::load(run_dir, device);
    }
    let spec = read_spec(run_dir)?;
    let checkpoint = latest_checkpoint(run_dir)?;
    let lora = crate::lora::read_run_config(run_dir)?;
    if let Some(kind) = lora.as_ref().and_then(|l| l.quant) {
        let lora = lora.as_ref().expect("a quant setting comes from a LoRA config");
        return load_qlora(run_dir, &spec, checkpoint, lora, kind, device, qlora_into_f32);
    }
    let (mut model, varmap) = AnyModel::build_fresh(&spec, device)?;
    match (&mut model, lora) {
        // A run that trained LoRA adapters: load base and adapters, then fold the adapters
        // in, so every consumer gets the adapted model at the base model's cost.
        (AnyModel::Decoder(m), Some(lora)) => {
            crate::lora::attach(m, &varmap, &lora, 0)?;
            load_weights(&varmap, &checkpoint.join("model.safetensors"))?;
            crate::lora::merge(m, &varmap)?;
        }
        (_, Some(_)) => bail!("{}: LoRA adapters are supported on decoders only", run_dir.display()),
        (_, None) => load_weights(&varmap, &checkpoint.join("model.safetensors"))?,
    }
    Ok(LoadedModel { spec, model, varmap, checkpoint })
}

/// A decoder whose block stack's linear weights are held quantized as `kind` asks (QLoRA's
/// base), quantized as the checkpoint is read: a layer's f32 matrix exists only until its
/// blocks are made, so the whole model is never in f32 (a Hugging Face folder's tensors are
/// read in their file's type first — half of f32 for bf16 checkpoints; a run folder's tensor
/// by tensor). The quantized layers have no variables, as after [`crate::lora::quantize_base`],
/// which then changes nothing; the layers whose rows do not fill blocks stay f32. A LoRA run
/// folder as the source is loaded merged in f32 first, then quantized.
pub fn load_model_quantized(dir: &Path, device: &Device, kind: crate::quant::QuantKind) -> Result<LoadedModel> {
    ensure_trainable_source(dir)?;
    ensure!(device.is_cpu(), "quantized weights are for the CPU (lora.quant); the model was asked on {:?}", device.location());
    if !crate::hf::is_hf_folder(dir) && crate::lora::read_run_config(dir)?.is_some() {
        let mut loaded = load_model(dir, device)?;
        let AnyModel::Decoder(m) = &mut loaded.model else { bail!("{}: quantized bases are decoders", dir.display()) };
        crate::lora::quantize_base(m, &loaded.varmap, kind)?;
        return Ok(loaded);
    }
    let mut blocks: HashMap<String, crate::quant::QuantWeights> = HashMap::new();
    let mut each = |name: &str, t: Tensor| -> Result<Tensor> {
        let Some(prefix) = block_linear(name) else { return Ok(t) };
        let (rows, cols) = t.dims2()?;
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        match crate::quant::QuantWeights::quantize(kind, &values, rows, cols) {
            Some(q) => {
                blocks.insert(prefix.to_string(), q);
                Ok(crate::linear::placeholder(&[rows, cols], &Device::Cpu)?)
            }
            None => Ok(t),
        }
    };
    let (spec, values, checkpoint) = if crate::hf::is_hf_folder(dir) {
        let (spec, values) = crate::hf::read_core(dir, Some(&mut each))?;
        (spec, values, dir.to_path_buf())
    } else {
        let spec = read_spec(dir)?;
        let checkpoint = latest_checkpoint(dir)?;
        let values = crate::hf::weights::read_safetensors_with(&checkpoint.join("model.safetensors"), &mut each)?;
        (spec, values, checkpoint)
    };
    let (mut model, varmap) = AnyModel::build_with(&spec, values, device, dir)?;
    let AnyModel::Decoder(m) = &mut model else { bail!("{}: quantized bases are decoders (this is a {})", dir.display(), model.name()) };
    m.set_quantized(|p| Ok(blocks.remove(p)))?;
    ensure!(blocks.is_empty(), "internal: quantized weights for no layer: {:?}", blocks.keys().collect::<Vec<_>>());
    Ok(LoadedModel { spec, model, varmap, checkpoint })
}

/// A LoRA stage's base: [`load_model_quantized`] when the stage holds it quantized
/// (`lora.quant`), else [`load_model`].
pub fn load_base(dir: &Path, device: &Device, quant: Option<crate::quant::QuantKind>) -> Result<LoadedModel> {
    match quant {
        Some(kind) => load_model_quantized(dir, device, kind),
        None => load_model(dir, device),
    }
}

/// `decoder.blocks.3.attn.qkv` for `decoder.blocks.3.attn.qkv.weight`: the variable of a
/// block's linear layer (q/k/v, output projection, MLP), the layers a quantized base holds
/// in blocks; None for any other variable.
fn block_linear(name: &str) -> Option<&str> {
    let prefix = name.strip_prefix("decoder.blocks.")?.strip_suffix(".weight")?;
    let (layer, linear) = prefix.split_once('.')?;
    (layer.parse::<usize>().is_ok() && matches!(linear, "attn.qkv" | "attn.proj" | "mlp.gate" | "mlp.up" | "mlp.fc" | "mlp.proj")).then(|| &name[..name.len() - ".weight".len()])
}

/// A QLoRA run: its checkpoint holds the adapters and the variables that stayed f32, not
/// the quantized block weights, which come from the base its `lora.toml` names.
fn load_qlora(run_dir: &Path, spec: &ModelSpec, checkpoint: PathBuf, lora: &crate::lora::LoraConfig, kind: crate::quant::QuantKind, device: &Device, into_f32: bool) -> Result<LoadedModel> {
    let lora_file = run_dir.join(crate::lora::RUN_FILE);
    let base = crate::lora::read_run_base(run_dir)?.with_context(|| format!("{}: lora.quant = {kind:?} but no `base` (the model whose quantized weights the adapters trained on)", lora_file.display()))?;
    let loaded = if into_f32 { load_model(&base, device) } else { load_model_quantized(&base, device, kind) }
        .with_context(|| format!("loading the base {} of the QLoRA run {} (named in {})", base.display(), run_dir.display(), lora_file.display()))?;
    let (want, got) = (spec.require_transformer("QLoRA").map_err(anyhow::Error::msg)?, loaded.spec.require_transformer("QLoRA").map_err(anyhow::Error::msg)?);
    ensure!(
        want.d_model == got.d_model && want.n_layers == got.n_layers && want.vocab_size == got.vocab_size && want.ff_dim() == got.ff_dim() && want.kv_width() == got.kv_width(),
        "{}: the base {} is not the model this run trained ({} layers × {} wide vs the run's {} × {})",
        run_dir.display(),
        base.display(),
        got.n_layers,
        got.d_model,
        want.n_layers,
        want.d_model
    );
    let AnyModel::Decoder(mut m) = loaded.model else { bail!("{}: QLoRA adapters are supported on decoders only", run_dir.display()) };
    let varmap = loaded.varmap;
    crate::lora::attach(&mut m, &varmap, lora, 0)?;
    let weights = checkpoint.join("model.safetensors");
    if into_f32 {
        // every variable of the checkpoint (adapters and what stayed f32) over the base's
        load_some_weights(&varmap, &weights)?;
        crate::lora::merge(&mut m, &varmap)?;
    } else {
        m.freeze_linears();
        crate::lora::quantize_base(&mut m, &varmap, kind)?;
        load_weights(&varmap, &weights)?;
    }
    Ok(LoadedModel { spec: spec.clone(), model: AnyModel::Decoder(m), varmap, checkpoint })
}

/// [`load_weights`] for a checkpoint that holds some of the variables: each of its tensors
/// must be a variable of the model, of its shape.
pub fn load_some_weights(varmap: &VarMap, path: &Path) -> Result<()> {
    set_weights(varmap, &load_tensors(path)?, path, |_| true, false)
}

/// Training stages start from run folders and Hugging Face checkpoints; a `.gguf` file is
/// holds its matrices quantized (or in f16), frozen, for inference only.
pub fn ensure_trainable_source(path: &Path) -> Result<()> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        bail!("{}: GGUF files are for inference (generate, chat, serve, score); fine-tune the ferrolm run or Hugging Face model it was exported from", path.display());
    }
    Ok(())
}

/// `run_dir/checkpoints`.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// The newest complete checkpoint of a run, or a clear error.
pub fn latest_checkpoint(run_dir: &Path) -> Result<PathBuf> {
    let root = checkpoints_dir(run_dir);
    let pointer = root.join("latest");
    let name = fs::read_to_string(&pointer).with_context(|| {
        format!("{} has no checkpoint (missing {}); was it trained with `ferrolm train`?", run_dir.display(), pointer.display())
    })?;
    let dir = root.join(name.trim());
    for f in ["model.safetensors", "optimizer.safetensors", "state.json"] {
        if !dir.join(f).is_file() {
            bail!("checkpoint {} is incomplete: {f} is missing", dir.display());
        }
    }
    Ok(dir)
}

/// Every tensor of a safetensors file, on the CPU.
pub fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("{} is missing or corrupt (not a readable safetensors file)", path.display()))
}

/// Load weights into an already-built model's variables; every variable must be present
/// with the right shape, and no unknown tensors may be in the file.
pub fn load_weights(varmap: &VarMap, path: &Path) -> Result<()> {
    set_weights(varmap, &load_tensors(path)?, path, |_| false, false)
}

/// Set each variable from the tensor of its name (read from `path`, for messages), each of
/// the shape of its variable. A variable without a tensor is an error unless `may_lack`
/// says it may keep its value (a new head, a partial checkpoint); a tensor without a
/// variable is an error unless `may_have_more` (a body read out of a larger model).
pub fn set_weights(varmap: &VarMap, tensors: &HashMap<String, Tensor>, path: &Path, may_lack: impl Fn(&str) -> bool, may_have_more: bool) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    if let Some(name) = data.keys().find(|name| !tensors.contains_key(*name) && !may_lack(name)) {
        bail!("{} lacks the weight {name}", path.display());
    }
    if !may_have_more {
        if let Some(extra) = tensors.keys().find(|k| !data.contains_key(*k)) {
            bail!("{} holds a weight `{extra}` this model does not have (another configuration, or another kind of run?)", path.display());
        }
    }
    for (name, t) in tensors {
        let Some(var) = data.get(name) else { continue };
        if t.shape() != var.shape() {
            bail!("{}: weight {name} has shape {:?}, the model expects {:?}", path.display(), t.shape(), var.shape());
        }
        var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// The log-probability of each token after the first given its prefix (`ids.len() − 1`
/// values), under any left-to-right model; one forward pass, softmax in f64.
pub fn token_logprobs(model: &AnyModel, ids: &[u32]) -> Result<Vec<f64>> {
    if ids.len() < 2 {
        bail!("scoring needs at least two tokens (the first is only context), got {}", ids.len());
    }
    let input = Tensor::new(ids, model.device())?.unsqueeze(0)?;
    let logits = model.causal_logits(&input, None)?.squeeze(0)?.to_dtype(DType::F64)?;
    let lp = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?;
    let targets = Tensor::new(&ids[1..], model.device())?.unsqueeze(1)?;
    let picked = lp.narrow(0, 0, ids.len() - 1)?.gather(&targets, 1)?.squeeze(1)?;
    Ok(picked.to_vec1::<f64>()?)
}

/// The variables of a [`VarMap`] plus placeholders served as they are (see
/// [`AnyModel::build_with`]).
struct WithPlaceholders {
    varmap: VarMap,
    placeholders: HashMap<String, candle_core::Tensor>,
}

impl candle_nn::var_builder::SimpleBackend for WithPlaceholders {
    fn get(&self, s: candle_core::Shape, name: &str, h: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<candle_core::Tensor> {
        match self.placeholders.get(name) {
            Some(t) if t.shape() == &s => Ok(t.clone()),
            Some(t) => Err(candle_core::Error::UnexpectedShape { msg: format!("shape mismatch for {name}"), expected: s, got: t.shape().clone() }.bt()),
            None => candle_nn::var_builder::SimpleBackend::get(&self.varmap, s, name, h, dtype, dev),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<candle_core::Tensor> {
        match self.placeholders.get(name) {
            Some(t) => Ok(t.clone()),
            None => candle_nn::var_builder::SimpleBackend::get_unchecked(&self.varmap, name, dtype, dev),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.placeholders.contains_key(name) || candle_nn::var_builder::SimpleBackend::contains_tensor(&self.varmap, name)
    }
}
