//! Turning conversations into token ids with the chat template, identically for training,
//! evaluation, generation, chat and alignment.
//!
//! Every sequence starts with the end-of-text token, the document boundary the model saw
//! before every document in pretraining (it plays the role of a BOS token). Then the
//! template's parts follow, encoded part by part ([`ChatTemplate::encode`]), so that
//! `prompt_ids(history) ++ response_ids(answer)` is exactly the prefix of the training
//! sequence of `history + [answer]` — the log-probability a DPO/PPO step computes is of the
//! very tokens SFT trained on.
//!
//! A [`PromptStyle`] adds an optional system message and few-shot examples (user/assistant
//! pairs placed before the task). Few-shot answers are context: they carry no loss.

use std::path::Path;

use anyhow::{Context, Result};
use ferrolm_tokenizer::{special, ChatTemplate, HfTokenizerConfig, Message, Role, Tokenizer};
use serde::{Deserialize, Serialize};

/// The chat template of a run folder (`chat_template.json` beside its `tokenizer.json`),
/// or the default template when the folder has none (e.g. a pretraining run). A Hugging Face
/// folder's Jinja template is read as the marker template that renders the same text; one
/// of another shape (Llama 2's `[INST]`) is an error here, since the stages that call this
/// (SFT, DPO, the reward model, PPO) encode conversations part by part to put the loss on
/// the assistant's turns. Inference reads any template through [`ChatFormat`].
pub fn load_template(run_dir: &Path) -> Result<ChatTemplate> {
    ChatTemplate::load_next_to(&run_dir.join("tokenizer.json"))
}

/// How a conversation becomes a prompt and where an answer ends: the one rule `chat` and
/// `serve` follow (and the chat template `export` writes).
///
/// A marker template (ferrolm's `chat_template.json`, a Hugging Face Jinja template of that
/// shape, or the default) builds prompts with [`prompt_ids`], exactly as training encodes
/// them, and an answer ends at the end marker or end of text. Any other Jinja template
/// (Llama 2's `[INST] … [/INST]` with `<<SYS>>`, which checks the role order with
/// `raise_exception`) is rendered as transformers' `apply_chat_template(messages,
/// add_generation_prompt=True, tokenize=True)` does — `bos_token`/`eos_token` as variables,
/// the text encoded as it is, the special tokens it spells (`<s>`, `</s>`) as their ids — and
/// an answer ends at the model's end-of-sequence ids (generation_config.json's, else
/// config.json's, and the tokenizer_config.json `eos_token`). A .gguf file's
/// `tokenizer.chat_template` and `tokenizer.ggml.eos_token_id` are read the same way.
#[derive(Debug, Clone)]
pub struct ChatFormat {
    /// The marker template; None for a Jinja template of another shape.
    marker: Option<ChatTemplate>,
    /// The folder's Jinja template (tokenizer_config.json, when no `chat_template.json`
    /// overrides it). Beside a marker template it renders requests with tools.
    jinja: Option<HfTokenizerConfig>,
    stops: Vec<u32>,
}

impl ChatFormat {
    /// A marker template's format.
    pub fn from_marker(tpl: ChatTemplate, tok: &Tokenizer) -> Self {
        let stops = stop_tokens(tok, &tpl);
        Self { marker: Some(tpl), jinja: None, stops }
    }

    /// The format of a run folder, a Hugging Face folder or a .gguf file (its
    /// `tokenizer.chat_template`, its `tokenizer.ggml.eos_token_id`).
    pub fn load(dir: &Path, tok: &Tokenizer) -> Result<Self> {
        if is_gguf(dir) {
            let Some(v) = ferrolm_model::gguf::read_tokenizer(dir)?.vocab else { return Ok(Self::from_marker(ChatTemplate::default(), tok)) };
            let Some(source) = v.chat_template.clone() else { return Ok(Self::from_marker(ChatTemplate::default(), tok)) };
            let name = |id: Option<u32>| id.and_then(|i| v.tokens.get(i as usize).cloned());
            let cfg = HfTokenizerConfig { chat_template: Some(source), bos_token: name(v.bos), eos_token: name(v.eos), path: dir.to_path_buf(), ..Default::default() };
            return match cfg.marker_template() {
                // (tools then go to the system message, as before the file's template was read)
                Ok(tpl) => Ok(Self::from_marker(tpl, tok)),
                Err(_) => Self::from_jinja(cfg, v.eos.into_iter().collect(), tok),
            };
        }
        let own = ChatTemplate::path_next_to(&dir.join("tokenizer.json"));
        if own.exists() {
            return Ok(Self::from_marker(load_template(dir)?, tok));
        }
        let Some(cfg) = HfTokenizerConfig::load_from_dir(dir)?.filter(|c| c.chat_template.is_some()) else {
            return Ok(Self::from_marker(ChatTemplate::default(), tok));
        };
        match cfg.marker_template() {
            Ok(tpl) => Ok(Self { jinja: Some(cfg), ..Self::from_marker(tpl, tok) }),
            // the model's end-of-sequence ids, as transformers' generate stops at them
            Err(_) => Self::from_jinja(cfg, if ferrolm_model::hf::is_hf_folder(dir) { ferrolm_model::hf::generation_defaults(dir)?.eos_token_ids } else { vec![] }, tok),
        }
    }

    /// A Jinja template of no marker shape, answers ending at `eos` and the template's
    /// `eos_token` (and end of text where the tokenizer has it).
    fn from_jinja(cfg: HfTokenizerConfig, mut stops: Vec<u32>, tok: &Tokenizer) -> Result<Self> {
        if let Some(e) = cfg.eos_token.as_deref() {
            let id = tok.token_id(e).with_context(|| format!("{}: eos_token {e:?} is not a token of the tokenizer", cfg.path.display()))?;
            stops.push(id);
        }
        stops.extend(tok.try_eot_id());
        let mut seen = Vec::new();
        stops.retain(|id| {
            let new = !seen.contains(id);
            seen.push(*id);
            new
        });
        anyhow::ensure!(
            !stops.is_empty(),
            "{}: the chat template is not a marker template and the model names no end-of-sequence token (eos_token, generation_config.json), so an answer would never end",
            cfg.path.display()
        );
        Ok(Self { marker: None, jinja: Some(cfg), stops })
    }

    /// The marker template; None for a Jinja template of another shape.
    pub fn marker(&self) -> Option<&ChatTemplate> {
        self.marker.as_ref()
    }

    /// The folder's Jinja template, if it has one.
    pub fn jinja(&self) -> Option<&HfTokenizerConfig> {
        self.jinja.as_ref()
    }

    /// The chat template as Jinja, for files other tools read (tokenizer_config.json, GGUF):
    /// the folder's own, else the marker template's equivalent.
    pub fn jinja_source(&self) -> String {
        match (&self.jinja, &self.marker) {
            (Some(j), _) => j.chat_template.clone().unwrap_or_default(),
            (None, Some(t)) => ferrolm_tokenizer::hf_config::jinja_for(t),
            (None, None) => unreachable!("a format has a marker or a Jinja template"),
        }
    }

    /// The ids at which an answer ends (not part of its text).
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stops
    }

    /// Prompt ids of a conversation, ending where the assistant's answer begins. A Jinja
    /// template that refuses the conversation (`raise_exception`) is an error with its
    /// message.
    pub fn prompt(&self, tok: &Tokenizer, messages: &[Message]) -> Result<Vec<u32>> {
        match (&self.marker, &self.jinja) {
            (Some(t), _) => Ok(prompt_ids(tok, t, messages)),
            (None, Some(j)) => Ok(tok.encode(&j.render_chat(messages, true)?)),
            (None, None) => unreachable!("a format has a marker or a Jinja template"),
        }
    }

    /// Whether OpenAI-style messages with tools and tool calls go through the Jinja template
    /// ([`ChatFormat::prompt_json`]): a marker format's Jinja template, or a Jinja template
    /// that mentions tools. Otherwise the tools are described in the system message and tool
    /// turns are written as text ([`ChatFormat::prompt`]).
    pub fn renders_tools(&self) -> bool {
        match (&self.marker, &self.jinja) {
            (Some(_), j) => j.is_some(),
            (None, Some(j)) => j.chat_template.as_deref().is_some_and(|s| s.contains("tool")),
            (None, None) => false,
        }
    }

    /// Prompt ids of OpenAI-style JSON messages rendered by the Jinja template with `tools`
    /// in its context. Beside a marker template the sequence starts as [`prompt_ids`] starts
    /// it ([`bos`]); a template of its own is encoded as it renders.
    pub fn prompt_json(&self, tok: &Tokenizer, messages: &[serde_json::Value], tools: Option<&[serde_json::Value]>) -> Result<Vec<u32>> {
        let j = self.jinja.as_ref().context("this model has no Jinja chat template")?;
        let text = j.render_chat_json(messages, tools, true)?;
        if self.marker.is_none() {
            return Ok(tok.encode(&text));
        }
        let text = match j.bos_token.as_deref().filter(|b| !b.is_empty()) {
            Some(b) => text.strip_prefix(b).unwrap_or(&text).to_string(),
            None => text,
        };
        let mut ids = bos(tok);
        ids.extend(tok.encode(&text));
        Ok(ids)
    }

    /// The text of generated answer ids: cut at the first stop id, trimmed.
    pub fn answer_text(&self, tok: &Tokenizer, ids: &[u32]) -> String {
        let end = ids.iter().position(|t| self.stops.contains(t)).unwrap_or(ids.len());
        tok.decode(&ids[..end]).trim().to_string()
    }
}

/// The tokenizer of a run folder or Hugging Face folder (its tokenizer.json), or of a .gguf
/// file (see [`gguf_tokenizer`]).
pub fn load_tokenizer(run_dir: &Path) -> Result<Tokenizer> {
    if is_gguf(run_dir) {
        return gguf_tokenizer(run_dir);
    }
    let p = run_dir.join("tokenizer.json");
    Tokenizer::from_file(&p).with_context(|| format!("{} has no usable tokenizer.json", run_dir.display()))
}

/// Whether `path` names a GGUF file (which `ferrolm_model::load_model` loads too).
pub fn is_gguf(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// The tokenizer of a .gguf file: the tokenizer.json ferrolm stored in it, else the one its
/// `tokenizer.ggml.*` keys describe (llama.cpp's "gpt2" and "llama" vocabularies, as
/// converted from Hugging Face checkpoints), so a bare .gguf needs no tokenizer.json.
pub fn gguf_tokenizer(path: &Path) -> Result<Tokenizer> {
    let t = ferrolm_model::gguf::read_tokenizer(path)?;
    if let Some(json) = t.tokenizer_json {
        return Tokenizer::from_json_str(&json).with_context(|| format!("{}: the stored ferrolm.tokenizer_json", path.display()));
    }
    let v = t.vocab.with_context(|| format!("{} holds no tokenizer (neither tokenizer.ggml.tokens nor ferrolm.tokenizer_json)", path.display()))?;
    let model = match v.model.as_str() {
        "gpt2" => "gpt2",
        "llama" => "llama",
        other => anyhow::bail!("{}: tokenizer.ggml.model {other:?} is not supported (gpt2 and llama are)", path.display()),
    };
    let g = ferrolm_tokenizer::hf_config::GgmlVocab {
        model,
        tokens: v.tokens,
        token_types: v.token_types,
        scores: v.scores,
        merges: v.merges,
        bos: v.bos,
        unk: v.unk,
        add_bos: v.add_bos,
        add_space_prefix: v.add_space_prefix,
    };
    ferrolm_tokenizer::hf_config::tokenizer_from_ggml(&g, &t.pre).with_context(|| format!("reading the tokenizer of {}", path.display()))
}

/// The end-of-sequence token a .gguf file names (`tokenizer.ggml.eos_token_id`), where
/// generation stops.
pub fn gguf_eos(path: &Path) -> Result<Option<u32>> {
    Ok(ferrolm_model::gguf::read_tokenizer(path)?.vocab.and_then(|v| v.eos))
}

/// Optional system message and few-shot examples placed before every task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptStyle {
    /// System message added when a conversation has none ("" = none).
    pub system: String,
    /// (user, assistant) pairs placed after the system message, before the task's first turn.
    pub few_shot: Vec<(String, String)>,
}

impl PromptStyle {
    /// The conversation with the system message and few-shot turns added, and how many
    /// leading messages are context only (they never carry loss).
    pub fn apply(&self, messages: &[Message]) -> (Vec<Message>, usize) {
        let mut out = Vec::with_capacity(messages.len() + 1 + 2 * self.few_shot.len());
        let mut rest = messages;
        if let Some(first) = messages.first().filter(|m| m.role == Role::System) {
            out.push(first.clone());
            rest = &messages[1..];
        } else if !self.system.is_empty() {
            out.push(Message::system(self.system.as_str()));
        }
        for (q, a) in &self.few_shot {
            out.push(Message::user(q.as_str()));
            out.push(Message::assistant(a.as_str()));
        }
        let context = out.len();
        out.extend_from_slice(rest);
        (out, context)
    }
}

/// Token ids of the sequence start: what a Hugging Face tokenizer.json's post-processor puts
/// before a text (Llama's `<s>`, Llama 3's `<|begin_of_text|>`), as the model was trained;
/// else end-of-text if the tokenizer has it (ferrolm's own runs).
pub fn bos(tok: &Tokenizer) -> Vec<u32> {
    match tok.special_frame() {
        Ok((before, _)) if !before.is_empty() => before,
        _ => tok.try_eot_id().into_iter().collect(),
    }
}

/// Training ids of a whole conversation and, per id, whether it is a training target
/// (assistant contents and their end markers, except in the first `context_messages`
/// messages, which are context such as few-shot examples).
pub fn encode_for_training(tok: &Tokenizer, tpl: &ChatTemplate, messages: &[Message], context_messages: usize) -> (Vec<u32>, Vec<bool>) {
    let (ids, mut mask) = tpl.encode_with_mask(tok, messages);
    if context_messages > 0 {
        // Encoding is part by part, so the context's ids are exactly a prefix.
        let n = tpl.encode(tok, &messages[..context_messages.min(messages.len())], false).len();
        mask[..n].iter_mut().for_each(|m| *m = false);
    }
    let b = bos(tok);
    let mut all_ids = b.clone();
    all_ids.extend(ids);
    let mut all_mask = vec![false; b.len()];
    all_mask.extend(mask);
    (all_ids, all_mask)
}

/// Ids of a prompt ending with the assistant's opening: generation continues from here.
pub fn prompt_ids(tok: &Tokenizer, tpl: &ChatTemplate, messages: &[Message]) -> Vec<u32> {
    let mut ids = bos(tok);
    ids.extend(tpl.encode(tok, messages, true));
    ids
}

/// Ids of an assistant answer as the training sequence holds them: the content, then the
/// end marker (the template's `after_end` text is not part of the answer).
pub fn response_ids(tok: &Tokenizer, tpl: &ChatTemplate, answer: &str) -> Vec<u32> {
    let mut ids = tok.encode(answer);
    ids.extend(tok.encode(&tpl.end));
    ids
}

/// Tokens at which generation of an answer stops: the end marker and end-of-text.
pub fn stop_tokens(tok: &Tokenizer, tpl: &ChatTemplate) -> Vec<u32> {
    let mut v: Vec<u32> = tpl.stop_token(tok).into_iter().collect();
    v.extend(tok.try_eot_id());
    v
}

/// The text of generated answer ids: stop tokens removed from the end, special tokens kept
/// elsewhere (they are rare and informative when a model misbehaves).
pub fn answer_text(tok: &Tokenizer, tpl: &ChatTemplate, ids: &[u32]) -> String {
    let stops = stop_tokens(tok, tpl);
    let end = ids.iter().position(|t| stops.contains(t)).unwrap_or(ids.len());
    tok.decode(&ids[..end]).trim().to_string()
}

/// The pad id for batches (the `<|pad|>` special, else end-of-text, else 0). Padding never
/// carries loss and is never attended to by real tokens.
pub fn pad_id(tok: &Tokenizer) -> u32 {
    tok.token_id(special::PAD).or(tok.try_eot_id()).unwrap_or(0)
}

/// Fit a (prompt, response) pair into `max_len` tokens by dropping the oldest prompt tokens
/// (after the sequence start), keeping the response whole. None when the response alone
/// (plus one prompt token) does not fit.
pub fn fit_pair(prompt: &[u32], response: &[u32], max_len: usize) -> Option<(Vec<u32>, Vec<u32>)> {
    if prompt.len() + response.len() <= max_len {
        return Some((prompt.to_vec(), response.to_vec()));
    }
    if response.len() + 1 > max_len || prompt.is_empty() {
        return None;
    }
    let keep = max_len - response.len();
    Some((prompt[prompt.len() - keep..].to_vec(), response.to_vec()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ferrolm_tokenizer::BpeTrainConfig;

    pub fn tiny_tokenizer() -> Tokenizer {
        let text = "Hello there! How are you? I am fine, thank you. The review is positive or negative. \
                    Translate the sentence. What is two plus two? Four. Good movie, bad movie.\n"
            .repeat(20);
        Tokenizer::train_bpe(
            std::iter::once(text),
            &BpeTrainConfig { vocab_size: 330, min_frequency: 2, special_tokens: special::defaults() },
        )
        .unwrap()
    }

    #[test]
    fn template_round_trip_and_prompt_prefix() {
        let tok = tiny_tokenizer();
        let tpl = ChatTemplate::default();
        let convo = vec![Message::user("What is two plus two?"), Message::assistant("Four."), Message::user("And?"), Message::assistant("Fine, thank you.")];
        let (ids, mask) = encode_for_training(&tok, &tpl, &convo, 0);
        // decode(ids) is the rendered text after the sequence start
        assert_eq!(ids[0], tok.eot_id());
        assert_eq!(tok.decode(&ids[1..]), tpl.render(&convo, false));
        // prompt ++ response is exactly a prefix of the training sequence, and the response
        // tokens are exactly the last loss-carrying run
        let p = prompt_ids(&tok, &tpl, &convo[..3]);
        let r = response_ids(&tok, &tpl, "Fine, thank you.");
        let pr: Vec<u32> = p.iter().chain(&r).copied().collect();
        assert_eq!(&ids[..pr.len()], &pr[..]);
        assert!(mask[p.len()..pr.len()].iter().all(|&m| m));
        assert!(!mask[p.len() - 1]);
        assert_eq!(answer_text(&tok, &tpl, &r), "Fine, thank you.");
        // the template survives a save/load round trip through a run folder
        let dir = tempfile::tempdir().unwrap();
        tok.save(&dir.path().join("tokenizer.json")).unwrap();
        let custom = ChatTemplate { after_end: "\n\n".into(), ..Default::default() };
        custom.save_next_to(&dir.path().join("tokenizer.json")).unwrap();
        assert_eq!(load_template(dir.path()).unwrap(), custom);
    }

    #[test]
    fn few_shot_turns_are_context_without_loss() {
        let tok = tiny_tokenizer();
        let tpl = ChatTemplate::default();
        let style = PromptStyle { system: "Be brief.".into(), few_shot: vec![("Good movie".into(), "positive".into())] };
        let (msgs, ctx) = style.apply(&[Message::user("Bad movie"), Message::assistant("negative")]);
        assert_eq!(ctx, 3);
        assert_eq!(msgs[0], Message::system("Be brief."));
        let (ids, mask) = encode_for_training(&tok, &tpl, &msgs, ctx);
        let on: Vec<u32> = ids.iter().zip(&mask).filter(|(_, &m)| m).map(|(&i, _)| i).collect();
        assert_eq!(tok.decode(&on), "negative<|end|>");
    }

    #[test]
    fn fit_pair_drops_oldest_prompt_tokens() {
        assert_eq!(fit_pair(&[1, 2, 3], &[4, 5], 5), Some((vec![1, 2, 3], vec![4, 5])));
        assert_eq!(fit_pair(&[1, 2, 3], &[4, 5], 4), Some((vec![2, 3], vec![4, 5])));
        assert_eq!(fit_pair(&[1, 2, 3], &[4, 5, 6, 7], 4), None);
    }
}
