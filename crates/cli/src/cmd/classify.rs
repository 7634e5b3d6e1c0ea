//! `ferrolm classify train|predict|eval|baseline`: classification heads on pretrained
//! models, and the bag-of-words logistic-regression baseline on the same split.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use ferrolm_finetune::baseline::{BowConfig, BowModel};
use ferrolm_finetune::classify::{self, Classifier, ClassifyStageConfig};
use ferrolm_finetune::records::{self, OnBad};

const DEFAULT_CONFIG: &str = include_str!("../../../../configs/classify.toml");

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct Common {
    /// Labelled texts: JSONL or CSV with text and label fields (see classify.text_field/label_field).
    #[arg(long, required = true, num_args = 1..)]
    data: Vec<PathBuf>,
    // [train] and [classify]; default config: configs/classify.toml.
    #[command(flatten)]
    config: super::config_args::ConfigArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a head on a pretrained run (--model) into --out.
    Train {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Held-out labelled texts (default: a hashed split of --data by classify.val_fraction).
        #[arg(long, num_args = 1..)]
        val_data: Vec<PathBuf>,
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        quiet: bool,
    },
    /// Class probabilities of texts as JSONL on stdout (labels in the data are ignored).
    Predict {
        /// A classifier run folder written by `classify train`.
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Accuracy, macro-F1 and confusion matrix of a classifier on labelled texts.
    Eval {
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        common: Common,
        /// Print {"accuracy", "macro_f1", …} as JSON.
        #[arg(long)]
        json: bool,
        /// Also draw the confusion matrix into this SVG.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Bag-of-words logistic regression (L2, L-BFGS) on the same split as `train`.
    Baseline {
        #[arg(long, num_args = 1..)]
        val_data: Vec<PathBuf>,
        #[command(flatten)]
        common: Common,
        /// Inverse L2 strength (scikit-learn's C).
        #[arg(long, default_value_t = 1.0)]
        c: f64,
        /// Unigrams only.
        #[arg(long)]
        no_bigrams: bool,
        #[arg(long)]
        json: bool,
    },
}

fn stage_config(c: &Common) -> Result<ClassifyStageConfig> {
    ClassifyStageConfig::from_value(&c.config.resolve(DEFAULT_CONFIG, "classify", Vec::new())?)
}

pub fn run(a: Args) -> Result<()> {
    match a.cmd {
        Cmd::Train { model, out, val_data, common, quiet } => {
            let cfg = stage_config(&common)?;
            let rep = classify::run_classify_train(&model, &out, &common.data, &val_data, cfg, quiet, &super::device()?)?;
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({
                "out": out, "train_body": rep.train_body, "train_examples": rep.train_examples, "val_examples": rep.val_examples,
                "accuracy_before": rep.before.accuracy, "macro_f1_before": rep.before.macro_f1,
                "accuracy": rep.after.accuracy, "macro_f1": rep.after.macro_f1,
                "steps": rep.outcome.steps, "elapsed_secs": rep.outcome.elapsed_secs, "malformed": rep.data.bad,
                "bow_baseline_accuracy": rep.bow_baseline.as_ref().map(|b| b.accuracy),
                "below_bow_baseline": rep.bow_baseline.as_ref().map(|b| rep.after.accuracy < b.accuracy),
            }))?);
        }
        Cmd::Predict { model, common } => {
            let cfg = stage_config(&common)?;
            let policy = cfg.classify.on_bad_record;
            let (clf, tok, info) = Classifier::load(&model, &super::device()?)?;
            let field = info.config.classify.text_field.clone();
            let (recs, rep) = records::read_records(&common.data, policy, |v| {
                let o = v.as_object().ok_or("expected a JSON object")?;
                records::nonempty_field(o, &field).map(str::to_string)
            })?;
            eprintln!("{}", rep.summary());
            let texts: Vec<String> = recs.into_iter().map(|r| r.value).collect();
            let probs = classify::predict_texts(&clf, &tok, info.max_len, &texts)?;
            for (t, p) in texts.iter().zip(probs) {
                let best = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0);
                let dist: serde_json::Map<String, serde_json::Value> = clf.labels.iter().zip(&p).map(|(l, &x)| (l.clone(), serde_json::json!(x))).collect();
                println!("{}", serde_json::json!({"text": t, "label": clf.labels[best], "probabilities": dist}));
            }
        }
        Cmd::Eval { model, common, json, svg } => {
            let (clf, tok, info) = Classifier::load(&model, &super::device()?)?;
            let mut cc = info.config.classify.clone();
            if let Some(p) = &common.config.on_bad_record {
                cc.on_bad_record = if p == "fail" { OnBad::Fail } else { OnBad::Skip };
            }
            let (recs, rep) = classify::read_labelled(&common.data, &cc)?;
            eprintln!("{}", rep.summary());
            let recs: Vec<_> = recs.into_iter().map(|r| r.value).collect();
            let r = classify::evaluate_texts(&clf, &tok, info.max_len, &recs)?;
            if let Some(p) = svg {
                ferrolm_common::write_atomic(&p, r.confusion_svg("confusion matrix")).with_context(|| format!("writing {}", p.display()))?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({
                    "accuracy": r.accuracy, "macro_f1": r.macro_f1, "n": r.n, "labels": r.labels, "confusion": r.confusion, "f1": r.f1,
                }))?);
            } else {
                println!("accuracy {:.4}  macro-F1 {:.4}  (n = {})", r.accuracy, r.macro_f1, r.n);
                println!("confusion (rows true, columns predicted; labels {:?}):", r.labels);
                for row in &r.confusion {
                    println!("  {row:?}");
                }
            }
        }
        Cmd::Baseline { val_data, common, c, no_bigrams, json } => {
            let cfg = stage_config(&common)?;
            let (train, val, rep) = classify::train_val(&common.data, &val_data, &cfg.classify)?;
            eprintln!("{}", rep.summary());
            let labels = classify::label_set(&cfg.classify, &train);
            let t0 = std::time::Instant::now();
            let m = BowModel::train(&train, &labels, &BowConfig { c, bigrams: !no_bigrams, ..Default::default() })?;
            let secs = t0.elapsed().as_secs_f64();
            let r = m.evaluate(&val)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({
                    "accuracy": r.accuracy, "macro_f1": r.macro_f1, "n": r.n, "train_examples": train.len(), "features": m.vocab.len(),
                    "iterations": m.iterations, "objective": m.final_objective, "train_secs": secs, "confusion": r.confusion, "labels": r.labels,
                }))?);
            } else {
                println!("bag-of-words logistic regression: {} features, {} L-BFGS iterations, {secs:.2}s", m.vocab.len(), m.iterations);
                println!("accuracy {:.4}  macro-F1 {:.4}  (n = {}, trained on {})", r.accuracy, r.macro_f1, r.n, train.len());
            }
        }
    }
    Ok(())
}
