//! `ferrolm reward train|score|eval`: a scalar reward head on a decoder, trained on
//! preference pairs with the Bradley-Terry loss.

use std::path::PathBuf;

use anyhow::Result;
use ferrolm_align::records::read_preferences;
use ferrolm_tokenizer::Message;

use super::align_args::{parse_on_error, StageArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Train a reward model: `--model RUN --data PREFS… --out DIR [--set train.max_steps=N]`.
    Train(StageArgs),
    /// Score responses: one --prompt/--response, or every pair of --data (JSONL to stdout).
    Score(ScoreArgs),
    /// Pairwise accuracy on every pair of --data (with --held-out: only the pairs the
    /// training run held out of the same files).
    Eval(EvalArgs),
}

#[derive(clap::Args)]
struct ScoreArgs {
    /// The reward-model run folder.
    #[arg(long)]
    model: PathBuf,
    #[arg(long, requires = "response", conflicts_with = "data")]
    prompt: Option<String>,
    #[arg(long)]
    response: Option<String>,
    /// Preference files whose chosen and rejected answers are scored.
    #[arg(long, num_args = 1..)]
    data: Vec<PathBuf>,
    #[arg(long, value_parser = ["skip", "fail"], default_value = "skip")]
    on_bad_record: String,
}

#[derive(clap::Args)]
struct EvalArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, num_args = 1.., required = true)]
    data: Vec<PathBuf>,
    /// Score only the pairs the reward model's training held out of these files (its
    /// split rule and data.val_fraction); by default every pair is scored.
    #[arg(long)]
    held_out: bool,
    #[arg(long, value_parser = ["skip", "fail"], default_value = "skip")]
    on_bad_record: String,
    /// Print JSON (pairwise_accuracy, loss, margins).
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    match a.cmd {
        Sub::Train(s) => {
            let out = ferrolm_align::reward::train(&s.options()?)?;
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Sub::Score(s) => {
            let rm = ferrolm_align::reward::load(&s.model, &super::device()?)?;
            if let (Some(p), Some(r)) = (&s.prompt, &s.response) {
                println!("{}", rm.score(&[Message::user(p.as_str())], r)?);
            } else {
                anyhow::ensure!(!s.data.is_empty(), "give --prompt and --response, or --data FILE…");
                let (pairs, report) = read_preferences(&s.data, parse_on_error(&s.on_bad_record)?)?;
                eprintln!("{}", report.summary());
                for p in &pairs {
                    let (c, r) = (rm.score(&p.prompt, &p.chosen)?, rm.score(&p.prompt, &p.rejected)?);
                    println!("{}", serde_json::json!({"origin": p.origin, "chosen_score": c, "rejected_score": r}));
                }
            }
        }
        Sub::Eval(e) => {
            let r = ferrolm_align::reward::eval(&e.model, &e.data, parse_on_error(&e.on_bad_record)?, e.held_out, &super::device()?)?;
            if e.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{} pairs scored{}: pairwise accuracy {:.4}, loss {:.4}, mean margin {:.4} (chosen {:.4}, rejected {:.4})",
                    r.pairs, if e.held_out { " (the training run's held-out split)" } else { "" }, r.pairwise_accuracy, r.loss, r.mean_margin, r.mean_chosen, r.mean_rejected
                );
            }
        }
    }
    Ok(())
}
