//! `ferrolm experiment <NAME>`: experiments that run several stages and write a report.
//! One variant per experiment, each in its own file (`experiment_<name>.rs`) with its own
//! arguments; the dispatch is one line each.

#[path = "experiment_history.rs"]
pub mod history;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    experiment: Experiment,
}

#[derive(clap::Subcommand)]
pub enum Experiment {
    /// Causal vs prefix decoder vs encoder-decoder at equal size, data and steps on a
    /// real-text sequence-to-sequence task, plus the masked LM against its unigram baseline.
    Architectures(super::experiment_architectures::Args),
    /// n-gram, neural probabilistic LM, RNN, LSTM and a small Transformer on one corpus and
    /// one tokenization, each for a compute budget: held-out perplexity and bits per byte
    /// against training time and parameters (report.md, history.svg).
    History(history::Args),
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.experiment {
        Experiment::Architectures(a) => super::experiment_architectures::run(a),
        Experiment::History(h) => history::run(h),
    }
}
