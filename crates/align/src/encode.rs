//! Prompts and responses as token ids, with the chat template the model is served with.
//!
//! A sequence is `template.encode(prompt, add_generation_prompt = true)` followed by the
//! response's tokens and the template's end marker — exactly the ids an SFT model was trained
//! on and the ids `chat`/`generate` feed it, so rewards and log-probabilities are computed on
//! what the policy actually sees. Sequences longer than the model's context are cut: the
//! response to `max_response_tokens` (losing its end marker), the prompt from the left
//! (keeping its most recent turns and the assistant opening). Every cut is counted.

use std::cell::Cell;
use std::path::Path;

use anyhow::{Context, Result};
use ferrolm_tokenizer::{ChatTemplate, Message, Tokenizer};

use crate::records::PreferencePair;

/// Prompt ids followed by response ids; the response is `ids[prompt_len..]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
}

impl Sequence {
    pub fn response(&self) -> &[u32] {
        &self.ids[self.prompt_len..]
    }
    pub fn response_len(&self) -> usize {
        self.ids.len() - self.prompt_len
    }
}

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
    /// The template's end-of-turn marker: generation stops there, responses end with it.
    pub end_id: u32,
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
        let pad_id = tok.token_id(ferrolm_tokenizer::special::PAD).unwrap_or(end_id);
        anyhow::ensure!(
            max_response >= 1 && max_response < max_len,
            "max_response_tokens ({max_response}) must be at least 1 and below the model's context ({max_len})"
        );
        Ok(Self { tok, template, end_id, pad_id, max_len, max_response, prompts_cut: Cell::new(0), responses_cut: Cell::new(0) })
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
        let ids = self.template.encode(&self.tok, prompt, true);
        if ids.len() > budget {
            self.prompts_cut.set(self.prompts_cut.get() + 1);
            ids[ids.len() - budget..].to_vec()
        } else {
            ids
        }
    }

    /// Response ids with the end marker, cut to `max_response` tokens.
    pub fn response_ids(&self, response: &str) -> Vec<u32> {
        let mut ids = self.tok.encode(response);
        ids.push(self.end_id);
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
    pub fn decode_response(&self, ids: &[u32]) -> String {
        let ids = match ids.last() {
            Some(&l) if l == self.end_id => &ids[..ids.len() - 1],
            _ => ids,
        };
        self.tok.decode(ids)
    }
}

fn join(mut prompt: Vec<u32>, response: Vec<u32>) -> Sequence {
    let prompt_len = prompt.len();
    prompt.extend(response);
    Sequence { ids: prompt, prompt_len }
}
