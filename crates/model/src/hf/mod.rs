//! Hugging Face checkpoints as first-class models: a folder with `config.json` and
//! safetensors weights (one file or shards with an index) loads through the one registry
//! ([`crate::registry::load_model`] decides run folder vs HF folder) onto the existing
//! Transformer core. `config` maps config.json to a [`TransformerConfig`], `weights` maps
//! tensors to the core's variables, `export` writes the reverse.

pub mod config;
pub mod export;
pub mod weights;

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Device;

pub use config::{parse_config, read_config, HfConfig, HfFamily};

use crate::registry::{AnyModel, LoadedModel};
use crate::spec::ModelSpec;

/// A Hugging Face model folder: `config.json` and no ferrolm `config.toml`.
pub fn is_hf_folder(dir: &Path) -> bool {
    dir.join("config.json").is_file() && !dir.join("config.toml").exists()
}

/// Load a Hugging Face checkpoint folder into the Transformer core (f32).
pub fn load(dir: &Path, device: &Device) -> Result<LoadedModel> {
    let cfg = read_config(dir)?;
    let tensors = weights::read_checkpoint(dir)?;
    let values = weights::to_core(cfg.family, &cfg.model, tensors).with_context(|| format!("loading the {} checkpoint in {}", cfg.family.model_type(), dir.display()))?;
    let spec = ModelSpec::Transformer(cfg.model.clone());
    let (model, varmap) = AnyModel::build_fresh(&spec, device)?;
    {
        let data = varmap.data().lock().expect("varmap lock");
        for (name, var) in data.iter() {
            // The mapping produces exactly the core's variables; a gap is a bug here, not bad input.
            let t = values.get(name).with_context(|| format!("internal: no checkpoint tensor maps to the core's variable {name}"))?;
            var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
        }
    }
    Ok(LoadedModel { spec, model, varmap, checkpoint: dir.to_path_buf() })
}
