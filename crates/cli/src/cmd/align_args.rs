//! Arguments shared by `ferrolm reward train`, `ferrolm dpo` and `ferrolm rlhf`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ferrolm_align::{OnError, StageOptions};

#[derive(clap::Args)]
pub struct StageArgs {
    /// The run folder to start from (pretrained or SFT; or a Hugging Face model folder or
    /// hf:ORG/NAME[@REVISION]); not needed with --resume.
    #[arg(long, required_unless_present = "resume")]
    pub model: Option<PathBuf>,
    /// Preference (or prompt) files: JSONL with (instruction, input, chosen, rejected),
    /// (prompt, chosen, rejected) or HH (chosen, rejected) dialogues.
    #[arg(long, num_args = 1.., required_unless_present = "resume")]
    pub data: Vec<PathBuf>,
    /// Output run folder.
    // (an Option, required all the same: `rlhf compare` lifts the requirement, and clap
    // cannot flatten these arguments as an `Option<StageArgs>` — its group of a struct with
    // a nested flatten is empty, so it was always None, clap issue 4697)
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
    /// Stage config (TOML with [train], [data] and the stage's section; defaults built in),
    /// `--set` overrides, the bad-record policy.
    #[command(flatten)]
    pub common: super::config_args::ConfigArgs,
    /// Continue the run in --out from its latest checkpoint (its align.toml is the base config).
    #[arg(long)]
    pub resume: bool,
    /// Plain progress lines instead of a bar.
    #[arg(long)]
    pub quiet: bool,
}

impl StageArgs {
    pub fn options(&self) -> Result<StageOptions> {
        Ok(StageOptions {
            // an hf:ORG/NAME id becomes its cached snapshot, like every other --model
            model: match &self.model {
                Some(m) => super::model_dir(m)?,
                None => PathBuf::new(),
            },
            data: self.data.clone(),
            out: self.out.clone().context("--out is required")?,
            config: self.common.config.clone(),
            overrides: self.common.overrides.clone(),
            on_error: self.common.on_bad_record.as_deref().map(parse_on_error).transpose()?,
            resume: self.resume,
            quiet: self.quiet,
            device: super::device()?,
        })
    }
}

pub fn parse_on_error(s: &str) -> Result<OnError> {
    s.parse::<OnError>().map_err(|e| anyhow::anyhow!("--on-bad-record: {e}"))
}
