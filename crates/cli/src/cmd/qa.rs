//! `ferrolm qa train|eval`: the extractive span reader (ferrolm-qa).

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use ferrolm_qa::train::{run_qa_eval, run_qa_train, QaStageConfig};
use ferrolm_qa::QaReport;

const DEFAULT_CONFIG: &str = include_str!("../../../../configs/qa.toml");

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Put a start/end span head on a masked LM (--model) and fine-tune it on SQuAD-format
    /// JSON; the no-answer threshold is tuned on the held-out questions.
    Train {
        /// A masked LM run folder (model.kind = "masked_lm"), or a BERT, DistilBERT or
        /// RoBERTa Hugging Face folder (or `hf:ORG/NAME`).
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// SQuAD-format JSON files (SQuAD 1.1 or 2.0).
        #[arg(long, required = true, num_args = 1..)]
        data: Vec<PathBuf>,
        /// Held-out SQuAD files (default: paragraphs split off --data by qa.val_fraction).
        #[arg(long, num_args = 1..)]
        val_data: Vec<PathBuf>,
        /// Stage config ([train], [qa], [reader]); default: the built-in configs/qa.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a config key, e.g. --set train.max_steps=200 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        #[arg(long)]
        quiet: bool,
        #[arg(long)]
        json: bool,
    },
    /// Exact match and F1 (SQuAD 2.0's official definitions), split into answerable (HasAns)
    /// and unanswerable (NoAns) questions, each question read from its own paragraph.
    Eval {
        /// A reader run folder written by `qa train`.
        #[arg(long)]
        model: PathBuf,
        #[arg(long, required = true, num_args = 1..)]
        data: Vec<PathBuf>,
        /// No-answer threshold (default: the one tuned at training).
        #[arg(long)]
        threshold: Option<f64>,
        #[arg(long)]
        json: bool,
        /// Also print every question's prediction.
        #[arg(long)]
        predictions: bool,
    },
    /// Trivial readers a trained one must beat, each question read from its paragraph: the
    /// first sentence, and the first span of the most common answer type of --train.
    Baseline {
        /// Questions whose answers choose the most common type.
        #[arg(long, required = true, num_args = 1..)]
        train: Vec<PathBuf>,
        /// Questions to answer.
        #[arg(long, required = true, num_args = 1..)]
        data: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

fn print_report(r: &QaReport) {
    println!("{:<22} {:>5} {:>7} {:>7}", "", "n", "EM", "F1");
    for (name, s) in [("all", &r.all), ("HasAns (answerable)", &r.has_ans), ("NoAns (unanswerable)", &r.no_ans), ("always no-answer", &r.always_no_answer)] {
        println!("{name:<22} {:>5} {:>7.2} {:>7.2}", s.n, s.exact_match, s.f1);
    }
    println!("no-answer threshold {:.3}; the best on these questions would be {:.3} (F1 {:.2})", r.threshold, r.best_threshold, r.best_f1);
}

pub fn run(a: Args) -> Result<()> {
    match a.cmd {
        Cmd::Train { model, out, data, val_data, config, overrides, quiet, json } => {
            let mut value = match &config {
                Some(p) => ferrolm_common::load_config(Some(p), &[])?,
                None => DEFAULT_CONFIG.parse::<toml::Table>().map(toml::Value::Table)?,
            };
            ferrolm_common::apply_overrides(&mut value, &overrides)?;
            let cfg = QaStageConfig::from_value(&value)?;
            let model = super::model_dir(&model)?;
            let rep = run_qa_train(&model, &out, &data, &val_data, cfg, quiet, &super::device()?)?;
            if json {
                let mut v = serde_json::to_value(&rep)?;
                v["val"].as_object_mut().map(|o| o.remove("predictions"));
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{}: {} training questions ({} windows), {} steps in {:.0} s; held out: {} questions",
                    out.display(), rep.train_questions, rep.train_windows, rep.outcome.steps, rep.outcome.elapsed_secs, rep.val_questions
                );
                print_report(&rep.val);
            }
        }
        Cmd::Eval { model, data, threshold, json, predictions } => {
            let r = run_qa_eval(&model, &data, threshold, &super::device()?)?;
            if json {
                let mut v = serde_json::to_value(&r)?;
                if !predictions {
                    v.as_object_mut().map(|o| o.remove("predictions"));
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_report(&r);
                if predictions {
                    for p in &r.predictions {
                        println!("{}\t{:.3}\tEM {:.0}\tF1 {:.2}\t{}", p.id, p.null_margin, p.exact_match, p.f1, p.prediction);
                    }
                }
            }
        }
        Cmd::Baseline { train, data, json } => {
            let tr = ferrolm_qa::train::read_questions(&train)?;
            let te = ferrolm_qa::train::read_questions(&data)?;
            let r = ferrolm_qa::baselines::run_baselines(&tr, &te);
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{:<34} {:>5} {:>7} {:>7}", "", "n", "EM", "F1");
                let label = format!("most common type ({:?})", r.answer_type);
                for (name, s) in [("first sentence", &r.first_sentence), (label.as_str(), &r.most_common_type)] {
                    for (part, x) in [("all", &s.0), ("HasAns", &s.1), ("NoAns", &s.2)] {
                        println!("{:<34} {:>5} {:>7.2} {:>7.2}", format!("{name}, {part}"), x.n, x.exact_match, x.f1);
                    }
                }
            }
        }
    }
    Ok(())
}
