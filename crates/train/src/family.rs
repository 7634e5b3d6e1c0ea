//! `model.family`: which causal LM a run trains — the Transformer (default), Bengio's
//! neural probabilistic LM, an Elman RNN or an LSTM — built, initialised, trained by the
//! shared [`Trainer`] (through [`LmTask`]) and loaded back for evaluation.
//!
//! The older families reuse the `[model]` keys that mean the same thing
//! (`vocab_size`, `d_model` = embedding width, `n_layers` = recurrent layers, `dropout`) and
//! add four keys of their own: `family`, `hidden`, `context` (NPLM's n−1) and `direct`
//! (NPLM's direct connections). Those four are taken out of `[model]` before the rest is
//! parsed as [`RunConfig`] as before, so a typo in any key is still an error, and
//! `--set model.family=lstm` turns any Transformer config into an LSTM run (the
//! attention-only keys such as `n_heads` are then unused).
//!
//! Truncated BPTT: every training window starts from a zero state (see `ferrolm_model::rnn`);
//! windows are drawn at seeded random offsets, so resume stays exact.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use ferrolm_model::nplm::{init_nplm, Nplm, NplmConfig};
use ferrolm_model::rnn::{init_recurrent, Cell, RecurrentConfig, RecurrentLm};
use ferrolm_model::Transformer;
use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::config::RunConfig;
use crate::data::TokenSource;
use crate::trainer::{CausalLm, LmTask, Trainer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    #[default]
    Transformer,
    Nplm,
    Rnn,
    Lstm,
}

impl Family {
    pub const ALL: [Family; 4] = [Family::Transformer, Family::Nplm, Family::Rnn, Family::Lstm];

    pub fn name(self) -> &'static str {
        match self {
            Family::Transformer => "transformer",
            Family::Nplm => "nplm",
            Family::Rnn => "rnn",
            Family::Lstm => "lstm",
        }
    }
}

/// The `[model]` keys only the older families read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FamilyFields {
    pub family: Family,
    /// RNN/LSTM state width, NPLM tanh-layer width; 0 = `d_model`.
    pub hidden: usize,
    /// NPLM: tokens of context (n−1 for an n-gram-like window).
    pub context: usize,
    /// NPLM: direct connections from the embeddings to the output.
    pub direct: bool,
}

impl Default for FamilyFields {
    fn default() -> Self {
        Self { family: Family::Transformer, hidden: 0, context: 5, direct: false }
    }
}

const FAMILY_KEYS: [&str; 4] = ["family", "hidden", "context", "direct"];

/// A run config with its model family: [`RunConfig`] plus the family keys of `[model]`.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyRunConfig {
    pub run: RunConfig,
    pub family: FamilyFields,
}

impl FamilyRunConfig {
    pub fn from_value(v: &toml::Value) -> Result<Self> {
        let mut rest = v.clone();
        let mut fam = toml::Table::new();
        if let Some(model) = rest.get_mut("model").and_then(|m| m.as_table_mut()) {
            for k in FAMILY_KEYS {
                if let Some(x) = model.remove(k) {
                    fam.insert(k.to_string(), x);
                }
            }
        }
        let family: FamilyFields = ferrolm_common::config::typed(&toml::Value::Table(fam)).context("in [model]")?;
        let run = RunConfig::from_value(&rest)?;
        let cfg = Self { run, family };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn kind(&self) -> Family {
        self.family.family
    }

    fn hidden(&self) -> usize {
        if self.family.hidden == 0 {
            self.run.model.d_model
        } else {
            self.family.hidden
        }
    }

    pub fn recurrent(&self) -> Option<RecurrentConfig> {
        let cell = match self.kind() {
            Family::Rnn => Cell::Elman,
            Family::Lstm => Cell::Lstm,
            _ => return None,
        };
        let m = &self.run.model;
        Some(RecurrentConfig { cell, vocab_size: m.vocab_size, d_model: m.d_model, hidden: self.hidden(), n_layers: m.n_layers, dropout: m.dropout })
    }

    pub fn nplm(&self) -> Option<NplmConfig> {
        (self.kind() == Family::Nplm).then(|| {
            let m = &self.run.model;
            NplmConfig { vocab_size: m.vocab_size, d_model: m.d_model, context: self.family.context, hidden: self.hidden(), direct: self.family.direct, dropout: m.dropout }
        })
    }

    pub fn validate(&self) -> Result<()> {
        let r = match self.kind() {
            Family::Transformer => Ok(()),
            Family::Nplm => self.nplm().expect("nplm").validate(),
            Family::Rnn | Family::Lstm => self.recurrent().expect("recurrent").validate(),
        };
        r.map_err(|e| anyhow::anyhow!("invalid [model] for family {}: {e}", self.kind().name()))
    }

    pub fn num_params(&self) -> usize {
        match self.kind() {
            Family::Transformer => self.run.model.num_params(),
            Family::Nplm => self.nplm().expect("nplm").num_params(),
            Family::Rnn | Family::Lstm => self.recurrent().expect("recurrent").num_params(),
        }
    }

    /// One line naming the architecture and its size.
    pub fn describe(&self) -> String {
        let m = &self.run.model;
        match self.kind() {
            Family::Transformer => format!(
                "Transformer ({:?} block), {} layers, {} heads, width {}: {} parameters",
                m.block, m.n_layers, m.n_heads, m.d_model, self.num_params()
            ),
            Family::Nplm => format!(
                "NPLM, {} tokens of context, embeddings {}, tanh layer {}{}: {} parameters",
                self.family.context, m.d_model, self.hidden(), if self.family.direct { ", direct connections" } else { "" }, self.num_params()
            ),
            Family::Rnn | Family::Lstm => format!(
                "{} ({} layers, embeddings {}, state {}): {} parameters",
                if self.kind() == Family::Lstm { "LSTM" } else { "Elman RNN" },
                m.n_layers, m.d_model, self.hidden(), self.num_params()
            ),
        }
    }

    /// The resolved config as TOML; the family keys sit in `[model]` (omitted for the
    /// Transformer, so its config.toml stays exactly what [`RunConfig`] writes).
    pub fn to_toml(&self) -> String {
        if self.kind() == Family::Transformer {
            return self.run.to_toml();
        }
        let mut v = toml::Value::try_from(&self.run).expect("config serialises");
        let fam = toml::Value::try_from(&self.family).expect("family serialises");
        if let (Some(model), Some(fam)) = (v.get_mut("model").and_then(|m| m.as_table_mut()), fam.as_table()) {
            for (k, x) in fam {
                model.insert(k.clone(), x.clone());
            }
        }
        toml::to_string_pretty(&v).expect("config serialises")
    }
}

/// A causal LM of any family behind one trait object.
impl<T: CausalLm + ?Sized> CausalLm for Box<T> {
    fn causal_logits(&self, inputs: &Tensor, dropout_seed: Option<u64>) -> Result<Tensor> {
        (**self).causal_logits(inputs, dropout_seed)
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

/// Build the model of `cfg` with fresh (uninitialised) variables.
pub fn build_causal_lm(cfg: &FamilyRunConfig, device: &Device) -> Result<(Box<dyn CausalLm>, VarMap)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let model: Box<dyn CausalLm> = match cfg.kind() {
        Family::Transformer => Box::new(Transformer::new(&cfg.run.model, vb)?),
        Family::Nplm => Box::new(Nplm::new(&cfg.nplm().expect("nplm"), vb)?),
        Family::Rnn | Family::Lstm => Box::new(RecurrentLm::new(&cfg.recurrent().expect("recurrent"), vb)?),
    };
    Ok((model, varmap))
}

/// Seeded initialisation by the family's own convention.
pub fn init_causal_lm(cfg: &FamilyRunConfig, varmap: &VarMap, seed: u64) -> Result<()> {
    match cfg.kind() {
        Family::Transformer => ferrolm_model::init::init_params(varmap, cfg.run.model.n_layers, seed)?,
        Family::Nplm => init_nplm(varmap, seed)?,
        Family::Rnn | Family::Lstm => init_recurrent(varmap, &cfg.recurrent().expect("recurrent"), seed)?,
    }
    Ok(())
}

/// Load a run folder of any family: its config and the weights of its latest checkpoint.
pub fn load_causal_lm(run_dir: &Path, device: &Device) -> Result<(FamilyRunConfig, Box<dyn CausalLm>, VarMap)> {
    let cfg_path = run_dir.join("config.toml");
    let value = ferrolm_common::load_config(Some(&cfg_path), &[])?;
    let cfg = FamilyRunConfig::from_value(&value).with_context(|| format!("in {}", cfg_path.display()))?;
    let ckpt = checkpoint::latest(run_dir)?;
    let (model, varmap) = build_causal_lm(&cfg, device)?;
    checkpoint::load_weights(&varmap, &ckpt.join("model.safetensors"))?;
    Ok((cfg, model, varmap))
}

/// A trainer for a causal-LM pretraining run of any family: fresh (writes `config.toml`,
/// initialises from `train.seed`) or resumed from the latest checkpoint in `run_dir` (the
/// saved model and family must be the ones in `cfg`).
pub fn family_trainer<'a>(
    cfg: &FamilyRunConfig,
    run_dir: &Path,
    train: &'a dyn TokenSource,
    val: &'a dyn TokenSource,
    token_bytes: Vec<u32>,
    resume: bool,
) -> Result<Trainer<'a>> {
    let device = Device::Cpu;
    if cfg.kind() == Family::Transformer {
        // The Transformer keeps its established entry points.
        return if resume {
            Trainer::resume(cfg.run.clone(), run_dir, train, val, token_bytes, &device)
        } else {
            Trainer::new(cfg.run.clone(), run_dir, train, val, token_bytes, &device)
        };
    }
    cfg.run.validate()?;
    cfg.validate()?;
    if resume {
        checkpoint::latest(run_dir)?;
        let saved_path = run_dir.join("config.toml");
        let saved = FamilyRunConfig::from_value(&ferrolm_common::load_config(Some(&saved_path), &[])?)
            .with_context(|| format!("in {}", saved_path.display()))?;
        if saved.run.model != cfg.run.model || saved.family != cfg.family {
            bail!("cannot resume {}: the [model] section differs from the saved config.toml", run_dir.display());
        }
    }
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let (model, varmap) = build_causal_lm(cfg, &device)?;
    let task = LmTask::new(model, train, val, token_bytes, cfg.run.seq_len(), &cfg.run.train)?;
    ferrolm_common::write_atomic(run_dir.join("config.toml"), cfg.to_toml())?;
    let mut t = if resume {
        Trainer::resume_task(cfg.run.train.clone(), run_dir, varmap, Box::new(task))?
    } else {
        init_causal_lm(cfg, &varmap, cfg.run.train.seed)?;
        Trainer::from_task(cfg.run.train.clone(), run_dir, varmap, Box::new(task))?
    };
    t.title = format!("ferrolm {}", cfg.kind().name());
    Ok(t)
}
