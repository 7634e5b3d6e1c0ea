//! `ferrolm experiment <name>`: experiments that run several stages and write a report.
//! Each experiment lives in its own file (`experiment_<name>.rs`).

use anyhow::Result;

#[path = "experiment_history.rs"]
pub mod history;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    which: Experiment,
}

#[derive(clap::Subcommand)]
enum Experiment {
    /// n-gram, neural probabilistic LM, RNN, LSTM and a small Transformer on one corpus and
    /// one tokenization, each for a compute budget: held-out perplexity and bits per byte
    /// against training time and parameters (report.md, history.svg).
    History(history::Args),
}

pub fn run(a: Args) -> Result<()> {
    match a.which {
        Experiment::History(h) => history::run(h),
    }
}
