//! `ferrolm complete --model RUN --file F --line N [--col C] [--max-tokens K] [--json]`:
//! code completion at a cursor, from the code before and after it (fill-in-the-middle).

use std::path::PathBuf;

use anyhow::Result;
use ferrolm_infer::fim::{PromptLayout, Scope};
use ferrolm_infer::SamplingConfig;
use ferrolm_lab::{complete_file, CompleteFileOptions};

#[derive(clap::Args)]
pub struct Args {
    /// A trained run folder (config.toml, tokenizer.json, checkpoints/).
    #[arg(long)]
    model: PathBuf,
    /// The source file.
    #[arg(long)]
    file: PathBuf,
    /// The cursor's line (1-based).
    #[arg(long)]
    line: usize,
    /// The cursor's column in characters (1-based); default: the end of the line.
    #[arg(long)]
    col: Option<usize>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// How much to complete: the rest of the line, or the rest of the block.
    #[arg(long, value_enum, default_value_t = ScopeArg::Line)]
    scope: ScopeArg,
    /// The prompt: psm, spm, or l2r (the code before the cursor only). Default: psm for a
    /// model trained with fill-in-the-middle, l2r otherwise.
    #[arg(long, value_enum)]
    layout: Option<LayoutArg>,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON: the completion, why it stopped, tokens, time to first token and total (ms).
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ScopeArg {
    Line,
    Block,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LayoutArg {
    Psm,
    Spm,
    L2r,
}

pub fn run(a: Args) -> Result<()> {
    let o = CompleteFileOptions {
        model: a.model,
        file: a.file,
        line: a.line,
        col: a.col,
        max_tokens: a.max_tokens,
        scope: match a.scope {
            ScopeArg::Line => Scope::Line,
            ScopeArg::Block => Scope::Block,
        },
        layout: a.layout.map(|l| match l {
            LayoutArg::Psm => PromptLayout::Psm,
            LayoutArg::Spm => PromptLayout::Spm,
            LayoutArg::L2r => PromptLayout::LeftToRight,
        }),
        sampling: SamplingConfig { temperature: a.temperature, top_k: if a.temperature > 0.0 { 50 } else { 0 }, top_p: if a.temperature > 0.0 { 0.95 } else { 1.0 }, seed: a.seed },
    };
    let r = complete_file(&o, &super::device()?)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("{}", r.completion.text);
        eprintln!(
            "({:?} prompt, stopped: {:?}, {} tokens, first token {:.0} ms, total {:.0} ms)",
            r.layout, r.completion.stop, r.completion.tokens, r.completion.time_to_first_token_ms, r.completion.total_ms
        );
    }
    Ok(())
}
