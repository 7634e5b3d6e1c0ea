//! `ferrolm fill-mask --model RUN_DIR --text "… <|mask|> …"`: the masked LM's top-k
//! predictions at every mask. A Hugging Face BERT folder takes its own mask token
//! (`[MASK]`, from tokenizer_config.json) and frames the text with `[CLS]`/`[SEP]` as
//! transformers does; `<|mask|>` is accepted for it too.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ferrolm_tokenizer::{special, Tokenizer};
use ferrolm_model::AnyModel;

#[derive(clap::Args)]
pub struct Args {
    /// A run folder of a masked LM (`model.kind = "masked_lm"`), or a Hugging Face BERT folder.
    #[arg(long)]
    model: PathBuf,
    /// Text with one or more `<|mask|>` tokens (or the model's own, e.g. BERT's `[MASK]`).
    #[arg(long)]
    text: String,
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(mut a: Args) -> Result<()> {
    a.model = super::model_dir(&a.model)?;
    let loaded = ferrolm_model::load_model(&a.model, &super::device()?)?;
    let AnyModel::MaskedLm(m) = &loaded.model else {
        anyhow::bail!("{} is not a masked LM (model.kind = \"masked_lm\"); use `ferrolm generate`", a.model.display());
    };
    let tok = Tokenizer::from_file(&a.model.join("tokenizer.json"))?;
    let hf_cfg = ferrolm_tokenizer::hf_config::HfTokenizerConfig::load_from_dir(&a.model)?;
    let mask_token = match tok.token_id(special::MASK) {
        Some(_) => special::MASK.to_string(),
        None => hf_cfg.and_then(|c| c.mask_token).unwrap_or_else(|| "[MASK]".into()),
    };
    let mask = tok.token_id(&mask_token).with_context(|| format!("the tokenizer has no mask token ({} or {mask_token})", special::MASK))?;
    let text = a.text.replace(special::MASK, &mask_token);
    // BERT / RoBERTa texts are framed as in pre-training: [CLS] … [SEP], <s> … </s>.
    let ids = if tok.frames_encoder_texts() { tok.encode_with_special_tokens(&text)? } else { tok.encode(&text) };
    anyhow::ensure!(ids.contains(&mask), "the text has no {mask_token} token to fill");
    let filled = ferrolm_infer::fill_mask(m, &ids, mask, a.top_k.max(1))?;
    if a.json {
        let v: Vec<_> = filled
            .iter()
            .map(|(pos, top)| {
                let preds: Vec<_> = top.iter().map(|(id, p)| serde_json::json!({"token": tok.decode(&[*id]), "id": id, "probability": p})).collect();
                serde_json::json!({"position": pos, "predictions": preds})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for (n, (pos, top)) in filled.iter().enumerate() {
        println!("mask {} (token {pos}):", n + 1);
        for (id, p) in top {
            println!("  {p:.4}  {:?}", tok.decode(&[*id]));
        }
    }
    Ok(())
}
