//! `ferrolm feedback export --db F --out prefs.jsonl`: the web page's judgements as the
//! preference pairs `ferrolm reward train` and `ferrolm dpo` read.

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Write every comparison (and each thumbs-up/thumbs-down pair of one conversation) as
    /// `{"prompt", "history", "chosen", "rejected"}` lines.
    Export {
        /// The SQLite store `ferrolm serve` wrote (RUN_DIR/feedback/feedback.db by default).
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Only judgements of answers from this served model name.
        #[arg(long)]
        model: Option<String>,
    },
}

pub fn run(a: Args) -> Result<()> {
    match a.command {
        Command::Export { db, out, model } => {
            let rep = ferrolm_serve::export_preferences(&db, &out, model.as_deref())?;
            println!(
                "{} preference pairs written to {} ({} from comparisons, {} from thumbs up/down; {} ties and {} unpaired ratings left out)",
                rep.pairs,
                out.display(),
                rep.pairs - rep.from_ratings,
                rep.from_ratings,
                rep.ties,
                rep.unpaired_ratings
            );
            Ok(())
        }
    }
}
