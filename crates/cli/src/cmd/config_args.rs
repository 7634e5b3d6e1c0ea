//! The config arguments of the fine-tuning stages (`sft`, `classify`): a TOML file or the
//! stage's built-in one, `--set` overrides, and the bad-record policy.

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ConfigArgs {
    /// Stage config (TOML); default: the stage's built-in one in configs/.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. --set train.max_steps=50 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Malformed records: skip (reported and counted) or fail.
    #[arg(long, value_parser = ["skip", "fail"])]
    pub on_bad_record: Option<String>,
}

impl ConfigArgs {
    /// The resolved config: the file (or `default`), then `first` (settings other flags
    /// imply, as `KEY=VALUE`) and `--on-bad-record` as `SECTION.on_bad_record`, then `--set`.
    pub fn resolve(&self, default: &str, section: &str, first: Vec<String>) -> Result<toml::Value> {
        let mut value = match &self.config {
            Some(p) => ferrolm_common::load_config(Some(p), &[])?,
            None => default.parse::<toml::Table>().map(toml::Value::Table)?,
        };
        let mut sets = first;
        if let Some(p) = &self.on_bad_record {
            sets.push(format!("{section}.on_bad_record=\"{p}\""));
        }
        sets.extend(self.overrides.iter().cloned());
        ferrolm_common::apply_overrides(&mut value, &sets)?;
        Ok(value)
    }
}
