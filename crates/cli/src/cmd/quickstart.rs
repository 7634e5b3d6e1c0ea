//! `ferrolm quickstart`: the whole path on the embedded default corpus within a time
//! budget (`ferrolm_lab::quickstart`): corpus → clean → split → tokenizer → shards →
//! pretrain → evaluate → samples → report.

use std::path::PathBuf;

use anyhow::Result;
use ferrolm_lab::{run_quickstart, QuickstartOptions};

#[derive(clap::Args)]
pub struct Args {
    /// Time budget for the whole run, in minutes.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Output folder.
    #[arg(long, default_value = "runs/quickstart")]
    out: PathBuf,
    /// Extra text to add: files or folders (.txt, .md, .jsonl with `text`, optionally .gz/.zst). Repeatable.
    #[arg(long)]
    data: Vec<PathBuf>,
    /// Use only extra --data, not the Cargo registry.
    #[arg(long)]
    no_registry: bool,
    /// A config to start from instead of the built-in configs/quickstart.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. --set model.n_layers=2 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

pub fn run(a: Args) -> Result<()> {
    let o = QuickstartOptions { minutes: a.minutes, out: a.out, data: a.data, registry: !a.no_registry, config: a.config, overrides: a.overrides };
    let s = run_quickstart(&o, &super::device()?)?;
    println!(
        "\nquickstart finished in {:.0} s: held-out {:.4} bits per byte vs unigram {:.4}; report: {}",
        s.seconds,
        s.val_bits_per_byte,
        s.unigram_bits_per_byte,
        o.out.join("report.md").display()
    );
    Ok(())
}
