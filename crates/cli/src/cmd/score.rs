//! `ferrolm score --model M --text "..." [--json]`: the log-probability of each token after
//! the first given its prefix, under a ferrolm run or a Hugging Face model (`--json`:
//! `{"token_ids": [...], "logprobs": [...]}`), the simplest way to compare ferrolm with any
//! other implementation. Text is tokenized as transformers' `tokenizer(text)` does (with
//! the tokenizer's own framing, e.g. a leading BOS); `--ids` scores ids as given.

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// A ferrolm run folder, a Hugging Face model folder, or hf:ORG/NAME[@REVISION].
    #[arg(long)]
    model: PathBuf,
    /// Text to score.
    #[arg(long, required_unless_present = "ids", conflicts_with = "ids")]
    text: Option<String>,
    /// Token ids to score, comma-separated (no tokenizer involved).
    #[arg(long, value_delimiter = ',')]
    ids: Option<Vec<u32>>,
    /// Print JSON: {"token_ids": [...], "logprobs": [...]}.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let dir = super::model_dir(&a.model)?;
    let loaded = ferrolm_model::load_model(&dir, &super::device()?)?;
    let (ids, tok) = match (a.ids, a.text) {
        (Some(ids), _) => (ids, None),
        (None, Some(text)) => {
            // (a .gguf file carries its tokenizer: ferrolm's tokenizer.json, or tokenizer.ggml.*)
            let tok = ferrolm_finetune::prompt::load_tokenizer(&dir)?;
            (tok.encode_with_special_tokens(&text)?, Some(tok))
        }
        (None, None) => anyhow::bail!("give --text or --ids"),
    };
    let vocab = loaded.spec.vocab_size();
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        anyhow::bail!("token id {bad} is outside the model's vocabulary of {vocab}");
    }
    let logprobs = ferrolm_model::registry::token_logprobs(&loaded.model, &ids)?;
    if a.json {
        println!("{}", serde_json::json!({ "token_ids": ids, "logprobs": logprobs }));
        return Ok(());
    }
    for (i, lp) in logprobs.iter().enumerate() {
        let id = ids[i + 1];
        // the token's own bytes (a SentencePiece `▁` shows as the space it is)
        let piece = tok.as_ref().map(|t| format!("{:?}", String::from_utf8_lossy(t.id_to_bytes(id).unwrap_or_default()))).unwrap_or_default();
        println!("{id:>8} {lp:>12.6} {piece}");
    }
    let total: f64 = logprobs.iter().sum();
    println!("{} tokens scored, total log-prob {total:.4}, mean {:.4}", logprobs.len(), total / logprobs.len() as f64);
    Ok(())
}
