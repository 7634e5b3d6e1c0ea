//! Chat template: how a conversation becomes text and token ids, and which tokens carry the
//! fine-tuning loss.
//!
//! Default rendering (each marker is a special token):
//! ```text
//! <|system|>\nYou are terse.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n
//! ```
//! With `add_generation_prompt` the text ends with `<|assistant|>\n`, and generation should stop
//! at `<|end|>` ([`ChatTemplate::stop_token`]).
//!
//! Ids are produced part by part (marker, separator, content, end marker) so the loss mask
//! falls exactly on token boundaries: content is never merged with a separator into one token.
//! `encode(render(m))` gives the same ids except when a content starts with two or more
//! whitespace characters (the pre-tokenizer would then join the separator's newline to them), so
//! inference should build prompts with [`ChatTemplate::encode`], which matches training.
//!
//! The template is stored as `chat_template.json` next to `tokenizer.json`
//! ([`ChatTemplate::save_next_to`] / [`ChatTemplate::load_next_to`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::special;
use crate::Tokenizer;

/// File name of a template stored beside a tokenizer.json.
pub const FILE_NAME: &str = "chat_template.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatTemplate {
    pub system: String,
    pub user: String,
    pub assistant: String,
    /// Closes every turn; the assistant's copy carries loss.
    pub end: String,
    /// Text between a role marker and the content.
    pub after_role: String,
    /// Text after each turn's end marker.
    pub after_end: String,
}

impl Default for ChatTemplate {
    fn default() -> Self {
        Self {
            system: special::SYSTEM.into(),
            user: special::USER.into(),
            assistant: special::ASSISTANT.into(),
            end: special::END.into(),
            after_role: "\n".into(),
            after_end: "\n".into(),
        }
    }
}

impl ChatTemplate {
    fn marker(&self, role: Role) -> &str {
        match role {
            Role::System => &self.system,
            Role::User => &self.user,
            Role::Assistant => &self.assistant,
        }
    }

    /// The template's pieces in order, each with whether its tokens carry loss.
    fn parts<'a>(&'a self, messages: &'a [Message], add_generation_prompt: bool) -> Vec<(&'a str, bool)> {
        let mut parts = Vec::with_capacity(messages.len() * 5 + 2);
        for m in messages {
            let loss = m.role == Role::Assistant;
            parts.push((self.marker(m.role), false));
            parts.push((self.after_role.as_str(), false));
            parts.push((m.content.as_str(), loss));
            parts.push((self.end.as_str(), loss));
            parts.push((self.after_end.as_str(), false));
        }
        if add_generation_prompt {
            parts.push((self.assistant.as_str(), false));
            parts.push((self.after_role.as_str(), false));
        }
        parts
    }

    /// The conversation as text; with `add_generation_prompt`, followed by the assistant's
    /// opening so a model continues with the reply.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> String {
        self.parts(messages, add_generation_prompt).into_iter().map(|(t, _)| t).collect()
    }

    /// Token ids of the conversation, encoded part by part exactly as in training.
    pub fn encode(&self, tok: &Tokenizer, messages: &[Message], add_generation_prompt: bool) -> Vec<u32> {
        let mut ids = Vec::new();
        for (text, _) in self.parts(messages, add_generation_prompt) {
            ids.extend(tok.encode(text));
        }
        ids
    }

    /// Ids of the whole conversation and, per id, whether it carries loss: true exactly on the
    /// assistant contents' tokens and each assistant turn's closing end marker.
    pub fn encode_with_mask(&self, tok: &Tokenizer, messages: &[Message]) -> (Vec<u32>, Vec<bool>) {
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        for (text, loss) in self.parts(messages, false) {
            let part = tok.encode(text);
            mask.extend(std::iter::repeat_n(loss, part.len()));
            ids.extend(part);
        }
        (ids, mask)
    }

    /// The id generation should stop at (the end marker), if it is a single token.
    pub fn stop_token(&self, tok: &Tokenizer) -> Option<u32> {
        match tok.encode(&self.end)[..] {
            [id] => Some(id),
            _ => None,
        }
    }

    /// Error unless every marker starts with a special token of `tok` and the end marker is
    /// one (a tokenizer trained without the chat specials would spell them out as text, which
    /// works but wastes context). ferrolm's markers are one special token each; pretrained
    /// formats follow one with the role's name (`<|im_start|>user`).
    pub fn check(&self, tok: &Tokenizer) -> Result<()> {
        for marker in [&self.system, &self.user, &self.assistant, &self.end] {
            let ids = tok.encode(marker);
            let whole = marker == &self.end && ids.len() != 1;
            match ids.first() {
                Some(&id) if tok.is_special(id) && !whole => {}
                _ => anyhow::bail!(
                    "chat marker {marker:?} is not a special token of this tokenizer; train it \
                     with the default special tokens (ferrolm_tokenizer::special::defaults())"
                ),
            }
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        ferrolm_common::write_atomic(path, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("cannot write chat template {}", path.display()))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read chat template {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("invalid chat template {}", path.display()))
    }

    /// Path of the template stored beside `tokenizer_json`.
    pub fn path_next_to(tokenizer_json: &Path) -> PathBuf {
        tokenizer_json.with_file_name(FILE_NAME)
    }

    pub fn save_next_to(&self, tokenizer_json: &Path) -> Result<()> {
        self.save(&Self::path_next_to(tokenizer_json))
    }

    /// The template beside `tokenizer_json`: ferrolm's `chat_template.json`, else the Jinja
    /// `chat_template` of a Hugging Face `tokenizer_config.json` (as the marker template that
    /// renders the same text, see [`crate::hf_config::HfTokenizerConfig::marker_template`]),
    /// else the default.
    pub fn load_next_to(tokenizer_json: &Path) -> Result<Self> {
        let p = Self::path_next_to(tokenizer_json);
        if p.exists() {
            return Self::load(&p);
        }
        let dir = tokenizer_json.parent().unwrap_or(Path::new("."));
        match crate::hf_config::HfTokenizerConfig::load_from_dir(dir)? {
            Some(cfg) if cfg.chat_template.is_some() => cfg.marker_template(),
            _ => Ok(Self::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BpeTrainConfig;

    fn tok() -> Tokenizer {
        let text = "Hello there! How are you? I am fine, thank you. fn main() {}\n".repeat(30);
        Tokenizer::train_bpe(std::iter::once(text), &BpeTrainConfig { vocab_size: 350, ..Default::default() })
            .unwrap()
    }

    fn convo() -> Vec<Message> {
        vec![
            Message::system("You are terse."),
            Message::user("Hi"),
            Message::assistant("Hello!"),
            Message::user("  indented question"),
            Message::assistant("  fn main() {}\n"),
        ]
    }

    #[test]
    fn renders_the_documented_format() {
        let t = ChatTemplate::default();
        let m = &convo()[..3];
        assert_eq!(
            t.render(m, false),
            "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
        );
        assert_eq!(t.render(&m[..2], true), "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n");
    }

    #[test]
    fn mask_covers_exactly_assistant_content_and_its_end() {
        let tok = tok();
        let t = ChatTemplate::default();
        t.check(&tok).unwrap();
        let m = convo();
        let (ids, mask) = t.encode_with_mask(&tok, &m);
        assert_eq!(ids.len(), mask.len());
        assert_eq!(tok.decode(&ids), t.render(&m, false), "ids spell the rendered text");
        // Collect the maximal runs of loss-carrying tokens.
        let mut runs = Vec::new();
        let mut cur = Vec::new();
        for (&id, &on) in ids.iter().zip(&mask) {
            if on {
                cur.push(id);
            } else if !cur.is_empty() {
                runs.push(tok.decode(&std::mem::take(&mut cur)));
            }
        }
        if !cur.is_empty() {
            runs.push(tok.decode(&cur));
        }
        assert_eq!(runs, vec!["Hello!<|end|>".to_string(), "  fn main() {}\n<|end|>".to_string()]);
        let end = t.stop_token(&tok).unwrap();
        assert_eq!(end, tok.token_id(special::END).unwrap());
        // The user's <|end|> carries no loss, the assistant's does.
        let ends: Vec<bool> = ids.iter().zip(&mask).filter(|(&i, _)| i == end).map(|(_, &m)| m).collect();
        assert_eq!(ends, vec![false, false, true, false, true]);
    }

    #[test]
    fn generation_prompt_is_a_prefix_of_the_training_sequence() {
        let tok = tok();
        let t = ChatTemplate::default();
        let m = convo();
        let (ids, _) = t.encode_with_mask(&tok, &m);
        let prompt = t.encode(&tok, &m[..4], true);
        assert_eq!(&ids[..prompt.len()], &prompt[..]);
        assert_eq!(t.encode(&tok, &m, false), ids);
    }

    #[test]
    fn template_and_messages_round_trip_through_json() {
        let dir = tempfile::tempdir().unwrap();
        let tj = dir.path().join("tokenizer.json");
        assert_eq!(ChatTemplate::load_next_to(&tj).unwrap(), ChatTemplate::default());
        let t = ChatTemplate { after_end: String::new(), ..Default::default() };
        t.save_next_to(&tj).unwrap();
        assert!(dir.path().join(FILE_NAME).exists());
        assert_eq!(ChatTemplate::load_next_to(&tj).unwrap(), t);
        let m: Vec<Message> = serde_json::from_str(r#"[{"role":"user","content":"hi"}]"#).unwrap();
        assert_eq!(m, vec![Message::user("hi")]);
        std::fs::write(ChatTemplate::path_next_to(&tj), "{\"sytem\": 1}").unwrap();
        let e = format!("{:#}", ChatTemplate::load_next_to(&tj).unwrap_err());
        assert!(e.contains(FILE_NAME), "{e}");
    }

    #[test]
    fn check_rejects_a_tokenizer_without_chat_specials() {
        let tok = Tokenizer::train_char(["abc"].iter(), &[]).unwrap();
        assert!(ChatTemplate::default().check(&tok).is_err());
    }
}
