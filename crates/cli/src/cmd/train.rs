//! `ferrolm train --config FILE [--set key=value …] [--out DIR] [--resume RUN_DIR]`

use std::path::{Path, PathBuf};

use ferrolm_train::distributed::Communicator;
use anyhow::{Context, Result};
use ferrolm_tokenizer::shards::TokenShards;
use ferrolm_tokenizer::Tokenizer;
use ferrolm_train::{start_run, start_run_with_tokenizer, ArchData, RunConfig, TaskTokens};

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
    let cfg = RunConfig::from_value(&value)?;
    let outcome = train_run(&cfg, &run_dir, args.resume.is_some())?;
    println!("{}", serde_json::to_string_pretty(&outcome)?);
    Ok(())
}

/// Load the tokenizer named in `[data]`, check that it fits the model's vocabulary, copy
/// it into the run folder (so the folder alone is enough for generate/eval), and return it
/// with the UTF-8 bytes each id stands for, padded to `vocab_size` (for bits per byte).
fn tokenizer_into_run(path: &str, vocab_size: usize, run_dir: &Path) -> Result<(Tokenizer, Vec<u32>)> {
    let tok_path = Path::new(path);
    let tokenizer = Tokenizer::from_file(tok_path)?;
    anyhow::ensure!(
        tokenizer.vocab_size() <= vocab_size,
        "the tokenizer has {} tokens but model.vocab_size is {vocab_size}",
        tokenizer.vocab_size()
    );
    std::fs::create_dir_all(run_dir).with_context(|| format!("cannot create the run folder {}", run_dir.display()))?;
    let dest = run_dir.join("tokenizer.json");
    if tok_path.canonicalize().ok() != dest.canonicalize().ok() {
        tokenizer.save(&dest).with_context(|| format!("copying the tokenizer into {}", run_dir.display()))?;
    }
    let mut bytes = tokenizer.token_bytes();
    bytes.resize(vocab_size, 0);
    Ok((tokenizer, bytes))
}

fn default_run_name(cfg: &Path) -> String {
    cfg.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into())
}

/// Open the data named in `[data]` (token shards) or `[pairs]` (input/target JSONL) and
/// train the run's model with its objective, fresh or resumed.
pub fn train_run(cfg: &RunConfig, run_dir: &Path, resume: bool) -> Result<ferrolm_train::TrainOutcome> {
    let d = &cfg.data;
    anyhow::ensure!(!d.tokenizer.is_empty(), "[data] needs tokenizer (tokenizer.json)");
    let (tokenizer, bytes) = tokenizer_into_run(&d.tokenizer, cfg.model.vocab_size(), run_dir)?;
    // the special ids the non-causal objectives and pair data need; a plain tokenizer
    // without them still trains next-token prediction
    let tokens = match TaskTokens::from_tokenizer(&tokenizer) {
        Ok(t) => Some(t),
        Err(_) if cfg.is_plain_causal() => None,
        Err(e) => return Err(e.context(format!("{} cannot serve this objective", d.tokenizer))),
    };
    let device = super::device()?;
    let (train_pairs, val_pairs, train_shards, val_shards);
    let (mut trainer, what) = if let Some(p) = &cfg.pairs {
        anyhow::ensure!(!p.train.is_empty() && !p.val.is_empty(), "[pairs] needs train and val (JSONL files)");
        let (tp, ts) = ferrolm_train::pairs::load_pairs(Path::new(&p.train), p, &tokenizer)?;
        let (vp, vs) = ferrolm_train::pairs::load_pairs(Path::new(&p.val), p, &tokenizer)?;
        for (name, s) in [(&p.train, &ts), (&p.val, &vs)] {
            eprintln!(
                "{name}: {} pairs; {} with an empty input or target skipped; {} inputs and {} targets truncated",
                s.pairs, s.empty, s.truncated_inputs, s.truncated_targets
            );
        }
        (train_pairs, val_pairs) = (tp, vp);
        let data = ArchData::Pairs { train: &train_pairs, val: &val_pairs };
        let t = start_run(cfg, run_dir, data, bytes, tokens, &device, resume)?;
        (t, format!("{} pairs ({} held out)", train_pairs.len(), val_pairs.len()))
    } else {
        anyhow::ensure!(!d.train.is_empty() && !d.val.is_empty(), "[data] needs train and val (token shard folders), or a [pairs] section");
        train_shards = TokenShards::open(Path::new(&d.train))?;
        val_shards = TokenShards::open(Path::new(&d.val))?;
        let data = ArchData::Stream { train: &train_shards, val: &val_shards };
        let t = start_run_with_tokenizer(cfg, run_dir, data, bytes, tokens, Some(&tokenizer), &device, resume)?;
        (t, format!("{} tokens ({} held out)", train_shards.len(), val_shards.len()))
    };
    // Data parallel when launched as torchrun / Slurm launch jobs (RANK, WORLD_SIZE, ...).
    if let Some(group) = ferrolm_train::distributed::TcpGroup::from_env()? {
        eprintln!("data parallel: rank {} of {}", group.rank(), group.world_size());
        trainer.set_communicator(Box::new(group))?;
    }
    eprintln!("training {} on {what} into {}", cfg.model.describe(), run_dir.display());
    trainer.run()
}
