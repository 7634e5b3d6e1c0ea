//! What every alignment stage shares: its config (stage defaults ← config file ← `--set`),
//! the run folder layout, and loading a starting model into a model with extra heads.
//!
//! Run folder of a stage: `config.toml` is a plain [`RunConfig`] (the policy's `[model]`,
//! the `[train]` in force), so `ferrolm generate/eval/chat` read a DPO or PPO policy like any
//! pretrained run; `align.toml` holds the stage's full resolved config (its own section, the
//! data settings, where the starting model came from); `tokenizer.json` and
//! `chat_template.json` are copied from the starting run.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_nn::VarMap;
use ferrolm_train::config::DataConfig;
use ferrolm_train::{RunConfig, TrainConfig};
use ferrolm_model::{Transformer, TransformerConfig};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use toml::Value;

use crate::records::OnError;

pub const ALIGN_FILE: &str = "align.toml";

/// How preference/prompt data is read, split and cut to the context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSettings {
    /// The data files (set from --data).
    pub files: Vec<String>,
    /// Fraction of prompts held out (a fixed hash of the prompt, shared by all stages).
    pub val_fraction: f64,
    /// Responses are cut to this many tokens (the end marker included); prompts are cut from
    /// the left so that prompt + response fit the model's context.
    pub max_response_tokens: usize,
    /// `skip` (count and report) or `fail` on a malformed record.
    pub on_error: OnError,
    /// Use at most this many held-out records in evaluations (0 = all).
    pub max_eval: usize,
}

impl Default for DataSettings {
    fn default() -> Self {
        Self { files: Vec::new(), val_fraction: 0.1, max_response_tokens: 48, on_error: OnError::Skip, max_eval: 0 }
    }
}

impl DataSettings {
    pub fn paths(&self) -> Vec<PathBuf> {
        self.files.iter().map(PathBuf::from).collect()
    }
}

/// Deep-merge `over` into `base`: tables merge key by key, anything else replaces.
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Table(b), Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Resolve a stage config: the stage's defaults, then the config file, then `--set`.
/// Unknown keys are errors (every config struct denies them).
pub fn resolve<T: Serialize + DeserializeOwned>(defaults: &T, file: Option<&Path>, overrides: &[String]) -> Result<T> {
    let mut value = Value::try_from(defaults).context("serialising the default config")?;
    let user = ferrolm_common::load_config(file, &[])?;
    merge(&mut value, user);
    ferrolm_common::apply_overrides(&mut value, overrides)?;
    let cfg: T = ferrolm_common::config::typed(&value)?;
    Ok(cfg)
}

/// A stage's config (`align.toml`): its data settings and the run it starts from.
pub trait StageConfig: Serialize + DeserializeOwned + Default {
    fn data_mut(&mut self) -> &mut DataSettings;
    /// Record the run the stage starts from (a fresh run only).
    fn set_start(&mut self, model: &Path);
}

/// A stage run's config: the saved one when resuming (else the stage's defaults with the
/// starting run recorded), then the config file and `--set`, then the command line's data
/// files and malformed-record policy.
pub fn stage_config<T: StageConfig>(o: &crate::reward::StageOptions) -> Result<T> {
    let mut cfg: T = if o.resume {
        let saved: T = read_stage(&o.out)?;
        resolve(&saved, o.config.as_deref(), &o.overrides)?
    } else {
        let mut c = resolve(&T::default(), o.config.as_deref(), &o.overrides)?;
        c.set_start(&o.model);
        c
    };
    if !o.data.is_empty() {
        cfg.data_mut().files = o.data.iter().map(|p| p.display().to_string()).collect();
    }
    if let Some(e) = o.on_error {
        cfg.data_mut().on_error = e;
    }
    Ok(cfg)
}

/// The starting run's `[model]`: the policy's architecture, a Transformer decoder.
pub fn read_model(run_dir: &Path) -> Result<TransformerConfig> {
    let spec = ferrolm_model::registry::read_spec(run_dir)?;
    let cfg = spec.require_transformer("alignment").map_err(anyhow::Error::msg)?;
    Ok(cfg.clone())
}

/// Load the decoder of a run folder (its latest checkpoint).
pub fn load_decoder(run_dir: &Path, device: &candle_core::Device) -> Result<(TransformerConfig, Transformer, VarMap)> {
    load_decoder_with(run_dir, device, None)
}

/// [`load_decoder`]; with `quant`, the block stack's weights quantized as they are read
/// (QLoRA's base), so the model is never whole in f32.
pub fn load_decoder_with(run_dir: &Path, device: &candle_core::Device, quant: Option<ferrolm_model::QuantKind>) -> Result<(TransformerConfig, Transformer, VarMap)> {
    ferrolm_model::registry::ensure_trainable_source(run_dir)?;
    let loaded = ferrolm_model::registry::load_base(run_dir, device, quant)?;
    let model = loaded.model.into_decoder("alignment")?;
    Ok((model.config().clone(), model, loaded.varmap))
}

/// Write `config.toml` (plain RunConfig with `train`), `align.toml` (the stage config) and
/// copy the tokenizer and chat template (a Hugging Face start's `tokenizer_config.json`
/// too) from `start` into `out`.
pub fn write_run_files<T: Serialize>(out: &Path, start: &Path, model: &TransformerConfig, train: &TrainConfig, stage: &T) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let tok_dest = out.join("tokenizer.json");
    copy_if_different(&start.join("tokenizer.json"), &tok_dest)?;
    let tmpl = ferrolm_tokenizer::chat::ChatTemplate::path_next_to(&start.join("tokenizer.json"));
    if tmpl.exists() {
        copy_if_different(&tmpl, &ferrolm_tokenizer::chat::ChatTemplate::path_next_to(&tok_dest))?;
    }
    // A Hugging Face start's Jinja chat template and special tokens (the run then formats
    // conversations as its training did; without it, scoring fell back to marker tokens the
    // tokenizer lacks)
    let hf_tok_config = start.join("tokenizer_config.json");
    if hf_tok_config.is_file() {
        copy_if_different(&hf_tok_config, &out.join("tokenizer_config.json"))?;
    }
    let run = RunConfig::transformer(model.clone(), train.clone(), DataConfig { tokenizer: tok_dest.display().to_string(), ..Default::default() });
    ferrolm_common::write_atomic(out.join("config.toml"), run.to_toml())?;
    ferrolm_common::write_atomic(out.join(ALIGN_FILE), toml::to_string_pretty(stage)?)?;
    Ok(())
}

fn copy_if_different(src: &Path, dest: &Path) -> Result<()> {
    if src.canonicalize().ok() == dest.canonicalize().ok() {
        return Ok(());
    }
    let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    ferrolm_common::write_atomic(dest, bytes).with_context(|| format!("writing {}", dest.display()))?;
    Ok(())
}

/// The saved stage config of a run folder (for resume and for loading its heads).
pub fn read_stage<T: DeserializeOwned>(run_dir: &Path) -> Result<T> {
    let p = run_dir.join(ALIGN_FILE);
    let v = ferrolm_common::load_config(Some(&p), &[])?;
    ferrolm_common::config::typed(&v).with_context(|| format!("in {}", p.display()))
}

/// Load the weights in `path` into `varmap`, where variables whose name starts with one of
/// `new_prefixes` (heads this stage adds) may be absent from the file and keep their
/// initial values. Any other missing weight, shape mismatch or unknown weight is an error.
pub fn load_with_new_heads(varmap: &VarMap, path: &Path, new_prefixes: &[&str]) -> Result<()> {
    set_with_new_heads(varmap, ferrolm_train::checkpoint::load_tensors(path)?, path, new_prefixes)
}

/// The weights a stage starts from, by the core's variable names: a run folder's latest
/// checkpoint, or a Hugging Face folder's tensors mapped onto the core (what `load_model`
/// reads; `--model` of every stage takes both).
pub fn start_weights(start: &Path) -> Result<(PathBuf, std::collections::HashMap<String, candle_core::Tensor>)> {
    if ferrolm_model::hf::is_hf_folder(start) {
        let loaded = ferrolm_model::load_model(start, &candle_core::Device::Cpu)?;
        let data = loaded.varmap.data().lock().expect("varmap lock");
        return Ok((start.to_path_buf(), data.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect()));
    }
    let path = ferrolm_train::checkpoint::latest(start)?.join("model.safetensors");
    let t = ferrolm_train::checkpoint::load_tensors(&path)?;
    Ok((path, t))
}

/// Set `varmap`'s variables from `tensors` (read from `origin`, for messages); variables
/// under `new_prefixes` may be missing (new heads), any other gap or surplus is an error.
pub fn set_with_new_heads(varmap: &VarMap, tensors: std::collections::HashMap<String, candle_core::Tensor>, origin: &Path, new_prefixes: &[&str]) -> Result<()> {
    ferrolm_model::registry::set_weights(varmap, &tensors, origin, |name| new_prefixes.iter().any(|p| name.starts_with(p)), false)
}

/// Set every variable under `prefix` to zero (new scalar heads start neutral: a zero reward
/// or value everywhere, so the first updates come from the data, not from a random head).
pub fn zero_vars(varmap: &VarMap, prefix: &str) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    for (name, var) in data.iter().filter(|(n, _)| n.starts_with(prefix)) {
        var.set(&var.as_tensor().zeros_like()?).with_context(|| format!("zeroing {name}"))?;
    }
    Ok(())
}

/// Index of example `i` of micro-batch `micro` in step `step`: the data are visited in
/// epochs, each a fresh permutation seeded by (seed, epoch), so training sees every example
/// once per epoch and the order depends only on the step (exact resume).
pub fn epoch_index(n: usize, seed: u64, global: usize) -> usize {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let epoch = global / n;
    let pos = global % n;
    let mut perm: Vec<usize> = (0..n).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(ferrolm_train::data::step_seed(seed, epoch, 0, "epoch"));
    perm.shuffle(&mut rng);
    perm[pos]
}

/// The example indices of one micro-batch.
pub fn batch_indices(n: usize, seed: u64, step: usize, micro: usize, grad_accum: usize, batch: usize) -> Vec<usize> {
    let first = (step * grad_accum + micro) * batch;
    (first..first + batch).map(|g| epoch_index(n, seed, g)).collect()
}
