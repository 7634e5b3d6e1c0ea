//! `ferrolm experiment <NAME>`: one variant per experiment, each in its own file
//! (`experiment_<name>.rs`) with its own arguments; the dispatch is one line each.

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
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.experiment {
        Experiment::Architectures(a) => super::experiment_architectures::run(a),
    }
}
