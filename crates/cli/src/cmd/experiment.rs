//! `ferrolm experiment <NAME>`: experiments that run several stages and write a report,
//! in `ferrolm_lab`. Both take `--config FILE` (default: the built-in
//! configs/experiment-<name>.toml), `--quick` (the config's `[quick]` table of overrides)
//! and `--set key=value`.

use std::path::PathBuf;

use anyhow::Result;
use ferrolm_lab::{run_architectures, run_completion_experiment, run_history, ArchitecturesOptions, CompletionExperimentOptions, HistoryOptions};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    experiment: Experiment,
}

#[derive(clap::Subcommand)]
pub enum Experiment {
    /// Causal vs prefix decoder vs encoder-decoder at equal size, data and steps on a
    /// real-text sequence-to-sequence task, plus the masked LM against its unigram baseline.
    Architectures(ArchitecturesArgs),
    /// n-gram, neural probabilistic LM, RNN, LSTM and a small Transformer on one corpus and
    /// one tokenization, each for a compute budget: held-out perplexity and bits per byte
    /// against training time and parameters (report.md, history.svg).
    History(HistoryArgs),
    /// Code completion on held-out crates: the same model trained with and without
    /// fill-in-the-middle, next-line and infilling exact match and edit similarity, the
    /// n-gram baseline, held-out bits per byte, latency (report.md, completion.svg).
    Completion(CompletionArgs),
}

#[derive(clap::Args)]
pub struct CompletionArgs {
    /// The experiment's config: [experiment], [model], [train], [quick] (default: the
    /// built-in configs/experiment-completion.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A run of a few minutes (the [quick] overrides), same report.
    #[arg(long)]
    quick: bool,
    /// Override a config key (after [quick]), e.g. --set train.max_steps=500.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    #[arg(long)]
    out: Option<PathBuf>,
    /// Read these files/folders instead of the Cargo registry sources named in Cargo.lock.
    #[arg(long, num_args = 1..)]
    data: Vec<PathBuf>,
}

#[derive(clap::Args)]
pub struct ArchitecturesArgs {
    /// The experiment's config: [experiment], [pairs], [objective], [model], [train], [quick]
    /// (default: the built-in configs/experiment-architectures.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A run of a few minutes (the [quick] overrides): exercises every kind, same report.
    #[arg(long)]
    quick: bool,
    /// Override a config key (after [quick]), e.g. --set train.max_steps=500.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    #[arg(long)]
    out: Option<PathBuf>,
    /// Read these files/folders instead of the Cargo registry sources named in Cargo.lock.
    #[arg(long, num_args = 1..)]
    data: Vec<PathBuf>,
}

#[derive(clap::Args)]
pub struct HistoryArgs {
    /// Every family in a few minutes (applies the config's [quick] overrides first).
    #[arg(long)]
    quick: bool,
    /// A config to start from instead of the built-in configs/experiment-history.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Text files or folders to use as the corpus instead of the Cargo registry.
    #[arg(long, num_args = 1..)]
    data: Vec<PathBuf>,
    #[arg(long, default_value = "runs/history")]
    out: PathBuf,
    /// Override a config key (after [quick]), e.g. --set lstm.seconds=60 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

pub fn run(a: Args) -> Result<()> {
    match a.experiment {
        Experiment::Architectures(a) => {
            let o = ArchitecturesOptions { config: a.config, quick: a.quick, overrides: a.overrides, out: a.out, data: a.data };
            let report = run_architectures(&o, &super::device()?)?;
            println!("{report}");
        }
        Experiment::History(a) => {
            let o = HistoryOptions { quick: a.quick, config: a.config, data: a.data, out: a.out, overrides: a.overrides };
            let r = run_history(&o, &super::device()?)?;
            println!("\nexperiment history finished in {:.0} s; report: {}", r.seconds, r.report.display());
        }
        Experiment::Completion(a) => {
            let o = CompletionExperimentOptions { config: a.config, quick: a.quick, overrides: a.overrides, out: a.out, data: a.data };
            let (s, report) = run_completion_experiment(&o, &super::device()?)?;
            println!("\nexperiment completion finished in {:.0} s; report: {}", s.seconds, report.display());
        }
    }
    Ok(())
}
