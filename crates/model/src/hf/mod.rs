//! Hugging Face checkpoints as first-class models: a folder with `config.json` and
//! safetensors weights (one file or shards with an index) loads through the one registry
//! ([`crate::registry::load_model`] decides run folder vs HF folder) onto the existing
//! Transformer core. `config` maps config.json to a [`TransformerConfig`], `weights` maps
//! tensors to the core's variables, `export` writes the reverse.

pub mod config;
pub mod export;
pub mod hub;
pub mod weights;

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Device;

pub use config::{parse_config, read_config, HfConfig, HfFamily};

use crate::registry::{AnyModel, LoadedModel};
use crate::spec::ModelSpec;

/// Defaults for generation from `generation_config.json` (falling back on config.json's
/// token ids): what transformers' `generate` uses when the caller says nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationDefaults {
    /// Generation stops at any of these.
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub max_new_tokens: Option<usize>,
}

/// The generation defaults of a Hugging Face model folder.
pub fn generation_defaults(dir: &Path) -> Result<GenerationDefaults> {
    let cfg = read_config(dir)?;
    let mut d = GenerationDefaults { eos_token_ids: cfg.eos_token_ids, bos_token_id: cfg.bos_token_id, ..Default::default() };
    let path = dir.join("generation_config.json");
    if !path.is_file() {
        return Ok(d);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let bad = |k: &str| anyhow::anyhow!("{}: `{k}` has the wrong type ({})", path.display(), v[k]);
    let id = |x: &serde_json::Value| x.as_u64().filter(|&n| n <= u32::MAX as u64).map(|n| n as u32);
    let present = |k: &str| v.get(k).filter(|x| !x.is_null());
    if let Some(e) = present("eos_token_id") {
        d.eos_token_ids = match e {
            serde_json::Value::Array(a) => a.iter().map(|x| id(x).ok_or_else(|| bad("eos_token_id"))).collect::<Result<_>>()?,
            x => vec![id(x).ok_or_else(|| bad("eos_token_id"))?],
        };
    }
    if let Some(x) = present("bos_token_id") {
        d.bos_token_id = Some(id(x).ok_or_else(|| bad("bos_token_id"))?);
    }
    if let Some(x) = present("pad_token_id") {
        d.pad_token_id = Some(id(x).ok_or_else(|| bad("pad_token_id"))?);
    }
    if let Some(x) = present("do_sample") {
        d.do_sample = Some(x.as_bool().ok_or_else(|| bad("do_sample"))?);
    }
    if let Some(x) = present("temperature") {
        d.temperature = Some(x.as_f64().ok_or_else(|| bad("temperature"))? as f32);
    }
    if let Some(x) = present("top_k") {
        d.top_k = Some(x.as_u64().ok_or_else(|| bad("top_k"))? as usize);
    }
    if let Some(x) = present("top_p") {
        d.top_p = Some(x.as_f64().ok_or_else(|| bad("top_p"))? as f32);
    }
    if let Some(x) = present("max_new_tokens") {
        d.max_new_tokens = Some(x.as_u64().ok_or_else(|| bad("max_new_tokens"))? as usize);
    }
    Ok(d)
}

/// A `--model` argument as a folder: `hf:ORG/NAME[@REVISION]` is resolved in the Hugging
/// Face cache (see [`hub`]); anything else is a folder path, returned as given.
pub fn resolve_model_arg(arg: &Path) -> Result<std::path::PathBuf> {
    match arg.to_str().and_then(|s| s.strip_prefix("hf:")) {
        Some(id) => hub::resolve(id, &hub::HubEnv::from_process()),
        None => Ok(arg.to_path_buf()),
    }
}

/// A Hugging Face model folder: `config.json` and no ferrolm `config.toml`.
pub fn is_hf_folder(dir: &Path) -> bool {
    dir.join("config.json").is_file() && !dir.join("config.toml").exists()
}

/// A Hugging Face checkpoint folder's model and its tensors as the core's variables, each
/// passed through `each` as it is made (see [`weights::to_core_with`]).
pub fn read_core(dir: &Path, each: Option<&mut weights::EachTensor<'_>>) -> Result<(ModelSpec, std::collections::HashMap<String, candle_core::Tensor>)> {
    let cfg = read_config(dir)?;
    let tensors = weights::read_checkpoint(dir)?;
    let values = weights::to_core_with(cfg.family, &cfg.model, tensors, cfg.position_offset, each)
        .with_context(|| format!("loading the {} checkpoint in {}", cfg.family.model_type(), dir.display()))?;
    Ok((ModelSpec::Transformer(cfg.model), values))
}

/// Load a Hugging Face checkpoint folder into the Transformer core (f32).
pub fn load(dir: &Path, device: &Device) -> Result<LoadedModel> {
    let (spec, values) = read_core(dir, None)?;
    // The mapping produces exactly the core's variables; a gap is a bug here, not bad input.
    let (model, varmap) = AnyModel::build_with(&spec, values, device, dir)?;
    Ok(LoadedModel { spec, model, varmap, checkpoint: dir.to_path_buf() })
}
