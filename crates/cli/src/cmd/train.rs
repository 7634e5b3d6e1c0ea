//! `ferrolm train --config FILE [--set key=value …] [--out DIR] [--resume RUN_DIR]`

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ferrolm_tokenizer::shards::TokenShards;
use ferrolm_tokenizer::Tokenizer;
use ferrolm_train::FamilyRunConfig;

#[derive(clap::Args)]
pub struct Args {
    /// TOML config with [model], [train] and [data] sections (see configs/).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. --set train.max_steps=100 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Run folder to write (config.toml, checkpoints, metrics, plots).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its latest checkpoint.
    #[arg(long, conflicts_with = "out")]
    resume: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let (run_dir, value) = match &args.resume {
        Some(dir) => {
            // The saved config is the base; --config/--set may change optimisation settings.
            let base = args.config.clone().unwrap_or_else(|| dir.join("config.toml"));
            (dir.clone(), ferrolm_common::load_config(Some(&base), &args.overrides)?)
        }
        None => {
            let cfg = args.config.as_deref().context("--config FILE is required (or --resume RUN_DIR)")?;
            let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(default_run_name(cfg)));
            (out, ferrolm_common::load_config(Some(cfg), &args.overrides)?)
        }
    };
    let cfg = FamilyRunConfig::from_value(&value)?;
    let outcome = train_run(cfg, &run_dir, args.resume.is_some())?;
    println!("{}", serde_json::to_string_pretty(&outcome)?);
    Ok(())
}

fn default_run_name(cfg: &Path) -> String {
    cfg.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into())
}

/// Open the shards and tokenizer named in `[data]`, copy the tokenizer into the run
/// folder (so the folder alone is enough for generate/eval), and train the model of
/// `model.family` (the Transformer unless the config names another family).
pub fn train_run(fcfg: FamilyRunConfig, run_dir: &Path, resume: bool) -> Result<ferrolm_train::TrainOutcome> {
    let cfg = &fcfg.run;
    let d = &cfg.data;
    anyhow::ensure!(!d.train.is_empty() && !d.val.is_empty() && !d.tokenizer.is_empty(),
        "[data] needs train, val (token shard folders) and tokenizer (tokenizer.json)");
    let tok_path = Path::new(&d.tokenizer);
    let tokenizer = Tokenizer::from_file(tok_path)?;
    anyhow::ensure!(
        tokenizer.vocab_size() <= cfg.model.vocab_size,
        "the tokenizer has {} tokens but model.vocab_size is {}",
        tokenizer.vocab_size(),
        cfg.model.vocab_size
    );
    let train = TokenShards::open(Path::new(&d.train))?;
    let val = TokenShards::open(Path::new(&d.val))?;
    std::fs::create_dir_all(run_dir)?;
    let dest = run_dir.join("tokenizer.json");
    if tok_path.canonicalize().ok() != dest.canonicalize().ok() {
        tokenizer.save(&dest).with_context(|| format!("copying the tokenizer into {}", run_dir.display()))?;
    }
    let mut bytes = tokenizer.token_bytes();
    bytes.resize(cfg.model.vocab_size, 0);
    let mut trainer = ferrolm_train::family_trainer(&fcfg, run_dir, &train, &val, bytes, resume)?;
    eprintln!(
        "training {} on {} tokens ({} held out) into {}",
        fcfg.describe(),
        train.len(),
        val.len(),
        run_dir.display()
    );
    trainer.run()
}
