//! `ferrolm sft --model BASE_RUN --data FILE… --out DIR [--config FILE] [--set k=v …]`:
//! instruction tuning on Alpaca / chat / prompt-completion records, or on a labelled set
//! turned into instructions (`--from-labelled FILE --template "…{text}…" --labels a,b`).

use std::path::PathBuf;

use anyhow::Result;
use ferrolm_finetune::sft::{run_sft, SftRun, SftSources, SftStageConfig};

const DEFAULT_CONFIG: &str = include_str!("../../../../configs/sft.toml");

#[derive(clap::Args)]
pub struct Args {
    /// The pretrained run folder to start from.
    #[arg(long)]
    model: PathBuf,
    /// Instruction records: JSONL (or a .json array, or .csv) of Alpaca, chat or prompt/completion records.
    #[arg(long, num_args = 1..)]
    data: Vec<PathBuf>,
    /// Labelled texts (text, label) turned into instructions with --template.
    #[arg(long, num_args = 1..)]
    from_labelled: Vec<PathBuf>,
    /// User turn for labelled texts: {text} is the text, {labels} the labels joined by " or ".
    #[arg(long)]
    template: Option<String>,
    /// Allowed labels, comma-separated (e.g. positive,negative).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Held-out instruction records (default: a hashed split of --data by sft.val_fraction).
    #[arg(long, num_args = 1..)]
    val_data: Vec<PathBuf>,
    /// Held-out labelled texts.
    #[arg(long, num_args = 1..)]
    val_labelled: Vec<PathBuf>,
    /// Output run folder.
    #[arg(long)]
    out: PathBuf,
    // [train] and [sft]; default config: configs/sft.toml.
    #[command(flatten)]
    config: super::config_args::ConfigArgs,
    /// Plain progress lines instead of a bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(mut a: Args) -> Result<()> {
    a.model = super::model_dir(&a.model)?;
    let mut implied = Vec::new();
    if !a.labels.is_empty() {
        implied.push(format!("sft.labels={}", toml::Value::try_from(&a.labels)?));
    }
    if let Some(t) = &a.template {
        implied.push(format!("sft.template={}", toml::Value::String(t.clone())));
    }
    let cfg = SftStageConfig::from_value(&a.config.resolve(DEFAULT_CONFIG, "sft", implied)?)?;
    let sources = SftSources { data: a.data, labelled: a.from_labelled, val_data: a.val_data, val_labelled: a.val_labelled };
    let rep = run_sft(SftRun { base: &a.model, out: &a.out, sources, cfg, quiet: a.quiet, device: &super::device()? })?;
    println!("{}", serde_json::to_string_pretty(&serde_json::json!({
        "out": a.out,
        "val_loss_before": rep.val_loss_before,
        "val_loss_after": rep.val_loss_after,
        "label_accuracy_before": rep.label_accuracy_before,
        "label_accuracy_after": rep.label_accuracy_after,
        "steps": rep.outcome.steps,
        "elapsed_secs": rep.outcome.elapsed_secs,
        "records": rep.data.records,
        "malformed": rep.data.bad,
    }))?);
    Ok(())
}
