//! Prompts and responses as token ids, with the chat template the model is served with.
//!
//! A sequence is `ferrolm_finetune::prompt::prompt_ids` (sequence start, then the template
//! with the assistant's opening) followed by `prompt::response_ids` (the answer and the end
//! marker) — exactly the ids SFT trains on and `chat` feeds the model, so rewards and
//! log-probabilities are computed on what the policy actually sees. Sequences longer than the
//! model's context are cut: the response to `max_response_tokens` (losing its end marker),
//! the prompt from the left after the sequence start (keeping its most recent turns and the
//! assistant opening). Every cut is counted.

use std::cell::Cell;
use std::path::Path;

use anyhow::{Context, Result};
use ferrolm_finetune::prompt;
use ferrolm_tokenizer::{ChatTemplate, Message, Tokenizer};

use crate::records::PreferencePair;

pub use ferrolm_finetune::logprob::Sequence;

/// A preference pair as two sequences that share the same prompt ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPair {
    pub chosen: Sequence,
    pub rejected: Sequence,
}

/// Counts of sequences cut to fit the context.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TruncationReport {
    pub prompts_cut: usize,
    pub responses_cut: usize,
}

pub struct Formatter {
    pub tok: Tokenizer,
    pub template: ChatTemplate,
    /// The template's end-of-turn marker: responses end with it.
    pub end_id: u32,
    /// Generation stops at any of these (the end marker, end-of-text).
    pub stop_ids: Vec<u32>,
    /// The sequence-start ids every prompt begins with.
    bos: Vec<u32>,
    pub pad_id: u32,
    /// Model context (prompt + response).
    pub max_len: usize,
    pub max_response: usize,
    prompts_cut: Cell<usize>,
    responses_cut: Cell<usize>,
}

impl Formatter {
    pub fn new(tok: Tokenizer, template: ChatTemplate, max_len: usize, max_response: usize) -> Result<Self> {
        template.check(&tok)?;
        let end_id = template.stop_token(&tok).context("the chat template's end marker is not one token")?;
        let pad_id = prompt::pad_id(&tok);
        let stop_ids = prompt::stop_tokens(&tok, &template);
        let bos = prompt::bos(&tok);
        anyhow::ensure!(
            max_response >= 1 && max_response + 2 <= max_len,
            "max_response_tokens ({max_response}) must be at least 1 and leave room for a prompt in the model's context ({max_len})"
        );
        Ok(Self { tok, template, end_id, stop_ids, bos, pad_id, max_len, max_response, prompts_cut: Cell::new(0), responses_cut: Cell::new(0) })
    }

    /// The tokenizer and chat template of a run folder (template beside tokenizer.json, or the default).
    pub fn from_run(run_dir: &Path, max_len: usize, max_response: usize) -> Result<Self> {
        let tok_path = run_dir.join("tokenizer.json");
        let tok = Tokenizer::from_file(&tok_path).with_context(|| format!("loading {}", tok_path.display()))?;
        let template = ChatTemplate::load_next_to(&tok_path)?;
        Self::new(tok, template, max_len, max_response)
    }

    pub fn truncation(&self) -> TruncationReport {
        TruncationReport { prompts_cut: self.prompts_cut.get(), responses_cut: self.responses_cut.get() }
    }

    /// Prompt ids ending with the assistant's opening, cut from the left to `budget` tokens.
    pub fn prompt_ids(&self, prompt: &[Message], budget: usize) -> Vec<u32> {
        let ids = prompt::prompt_ids(&self.tok, &self.template, prompt);
        if ids.len() > budget {
            self.prompts_cut.set(self.prompts_cut.get() + 1);
            let keep = budget.saturating_sub(self.bos.len()).max(1);
            let mut cut = self.bos.clone();
            cut.extend_from_slice(&ids[ids.len() - keep..]);
            cut
        } else {
            ids
        }
    }

    /// Response ids with the end marker, cut to `max_response` tokens.
    pub fn response_ids(&self, response: &str) -> Vec<u32> {
        let mut ids = prompt::response_ids(&self.tok, &self.template, response);
        if ids.len() > self.max_response {
            self.responses_cut.set(self.responses_cut.get() + 1);
            ids.truncate(self.max_response);
        }
        ids
    }

    pub fn sequence(&self, prompt: &[Message], response: &str) -> Sequence {
        let r = self.response_ids(response);
        let p = self.prompt_ids(prompt, self.max_len - r.len());
        join(p, r)
    }

    /// Both replies after one prompt cut to the same length, so the pair differs only in
    /// the replies.
    pub fn pair(&self, pair: &PreferencePair) -> EncodedPair {
        let c = self.response_ids(&pair.chosen);
        let r = self.response_ids(&pair.rejected);
        let p = self.prompt_ids(&pair.prompt, self.max_len - c.len().max(r.len()));
        EncodedPair { chosen: join(p.clone(), c), rejected: join(p, r) }
    }

    /// Prompt ids for generation: room is left for `max_response` new tokens.
    pub fn generation_prompt(&self, prompt: &[Message]) -> Vec<u32> {
        self.prompt_ids(prompt, self.max_len - self.max_response)
    }

    /// Decode a response for display, without its end marker.
    /// Whether a sampled response ended by itself (with a stop token) rather than at the length limit.
    pub fn ended(&self, seq: &Sequence) -> bool {
        seq.response().last().is_some_and(|t| self.stop_ids.contains(t))
    }

    pub fn decode_response(&self, ids: &[u32]) -> String {
        prompt::answer_text(&self.tok, &self.template, ids)
    }
}

fn join(mut prompt: Vec<u32>, response: Vec<u32>) -> Sequence {
    let prompt_len = prompt.len();
    prompt.extend(response);
    Sequence { ids: prompt, prompt_len }
}
