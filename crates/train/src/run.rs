//! Starting or resuming a training run of any model, one way: validate the config,
//! check that a resumed run's saved `[model]` is the one asked for, build the model
//! through the registry, pick the task (next-token prediction on a stream for every
//! family, or the kind's objective / pair data), write `config.toml`, and initialise
//! the weights from the seed or load the latest checkpoint.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use ferrolm_model::{init_weights, AnyModel, Family};
use ferrolm_tokenizer::Tokenizer;

use crate::arch_task::{kind_name, ArchData, ArchTask};
use crate::config::RunConfig;
use crate::task::TaskTokens;
use crate::trainer::{LmTask, TrainTask, Trainer};

/// A trainer for the run in `run_dir`: fresh (`resume` false: writes `config.toml`,
/// initialises the weights from `train.seed`) or continued from its latest checkpoint
/// (the saved `[model]` must equal `cfg.model`; optimisation settings may change).
///
/// `tokens` (the tokenizer's special ids) is needed by every objective except plain
/// next-token prediction; `token_bytes` (UTF-8 bytes per id) makes bits per byte.
/// A run with `train.fim_rate` > 0 needs the tokenizer: [`start_run_with_tokenizer`].
pub fn start_run<'a>(
    cfg: &RunConfig,
    run_dir: &Path,
    data: ArchData<'a>,
    token_bytes: Vec<u32>,
    tokens: Option<TaskTokens>,
    device: &Device,
    resume: bool,
) -> Result<Trainer<'a>> {
    start_run_with_tokenizer(cfg, run_dir, data, token_bytes, tokens, None, device, resume)
}

/// [`start_run`] with the data's tokenizer, which fill-in-the-middle training
/// (`train.fim_rate` > 0) needs to split documents at characters and re-tokenize the
/// pieces.
#[allow(clippy::too_many_arguments)]
pub fn start_run_with_tokenizer<'a>(
    cfg: &RunConfig,
    run_dir: &Path,
    data: ArchData<'a>,
    token_bytes: Vec<u32>,
    tokens: Option<TaskTokens>,
    tokenizer: Option<&'a Tokenizer>,
    device: &Device,
    resume: bool,
) -> Result<Trainer<'a>> {
    cfg.validate()?;
    if cfg.train.fim_rate > 0.0 {
        if !(cfg.is_plain_causal() && matches!(data, ArchData::Stream { .. })) {
            bail!("train.fim_rate applies to next-token prediction on a token stream (model.kind = \"causal\", no [pairs]); set it to 0 for this run");
        }
        if tokenizer.is_none() {
            bail!("train.fim_rate > 0 needs the data's tokenizer (to re-tokenize the prefix, middle and suffix)");
        }
    }
    if resume {
        crate::checkpoint::latest(run_dir)?;
        let saved_path = run_dir.join("config.toml");
        let saved = RunConfig::from_value(&ferrolm_common::load_config(Some(&saved_path), &[])?)
            .with_context(|| format!("in {}", saved_path.display()))?;
        if saved.model != cfg.model {
            bail!("cannot resume {}: the [model] section differs from the saved config.toml", run_dir.display());
        }
    }
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let (model, varmap) = AnyModel::build_fresh(&cfg.model, device)?;
    let task: Box<dyn TrainTask + 'a> = match data {
        ArchData::Stream { train, val } if cfg.is_plain_causal() => {
            let task = LmTask::new(model, train, val, token_bytes, cfg.seq_len(), &cfg.train, device)?;
            Box::new(match tokenizer {
                Some(tok) => task.with_fim(&cfg.train, tok)?,
                None => task,
            })
        }
        data => {
            let tokens = tokens.context("this objective needs the tokenizer's special tokens (TaskTokens)")?;
            Box::new(ArchTask::new(model, cfg, data, tokens, token_bytes, device)?)
        }
    };
    ferrolm_common::write_atomic(run_dir.join("config.toml"), cfg.to_toml())?;
    let mut t = if resume {
        Trainer::resume_task(cfg.train.clone(), run_dir, varmap, task)?
    } else {
        init_weights(&cfg.model, &varmap, cfg.train.seed)?;
        Trainer::from_task(cfg.train.clone(), run_dir, varmap, task)?
    };
    t.title = match cfg.model.family() {
        Family::Transformer => format!("ferrolm training ({})", kind_name(cfg.model.kind())),
        f => format!("ferrolm {}", f.name()),
    };
    Ok(t)
}
