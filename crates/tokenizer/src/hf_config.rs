//! A Hugging Face `tokenizer_config.json`: its Jinja `chat_template` (rendered with
//! minijinja, configured as transformers configures Jinja: `trim_blocks`, `lstrip_blocks`,
//! loop controls, `raise_exception`, Python string methods) and its special tokens.
//!
//! A template that raises, calls something undefined or is not valid Jinja is an error
//! naming the file, never a panic.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use minijinja::{Environment, ErrorKind, Value as JValue};
use serde_json::Value;

use crate::chat::{ChatTemplate, Message};
use crate::Tokenizer;

/// File name beside tokenizer.json.
pub const FILE_NAME: &str = "tokenizer_config.json";

/// What ferrolm reads from a tokenizer_config.json.
#[derive(Debug, Clone, Default)]
pub struct HfTokenizerConfig {
    /// The default chat template (a `chat_template` string, or the entry named "default"
    /// of a list of named templates).
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    /// The masked LM's mask token (BERT: `[MASK]`).
    pub mask_token: Option<String>,
    /// Whether the tokenizer prepends `bos_token` to encoded text.
    pub add_bos_token: bool,
    /// The file it came from (for messages).
    pub path: PathBuf,
}

/// A special token: a string, or an object whose `content` is the string.
fn token(v: &Value, key: &str, path: &Path) -> Result<Option<String>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(o) => match o.get("content").and_then(Value::as_str) {
            Some(s) => Ok(Some(s.to_string())),
            None => bail!("{}: `{key}` must be a string or an object with `content`, got {o}", path.display()),
        },
    }
}

impl HfTokenizerConfig {
    /// `tokenizer_config.json` in `dir`, or None when there is none.
    pub fn load_from_dir(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(FILE_NAME);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text, &path).map(Some)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let v: Value = serde_json::from_str(text).with_context(|| format!("{} is not valid JSON", path.display()))?;
        if !v.is_object() {
            bail!("{}: expected a JSON object", path.display());
        }
        let chat_template = match v.get("chat_template") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(list)) => {
                let named = |n: &str| list.iter().find(|e| e.get("name").and_then(Value::as_str) == Some(n));
                let entry = named("default").with_context(|| format!("{}: chat_template is a list without a \"default\" entry", path.display()))?;
                Some(entry.get("template").and_then(Value::as_str).with_context(|| format!("{}: chat_template \"default\" has no `template` string", path.display()))?.to_string())
            }
            Some(other) => bail!("{}: chat_template must be a string or a list of named templates, got {other}", path.display()),
        };
        let add_bos_token = v.get("add_bos_token").and_then(Value::as_bool).unwrap_or(false);
        Ok(Self {
            chat_template,
            bos_token: token(&v, "bos_token", path)?,
            eos_token: token(&v, "eos_token", path)?,
            pad_token: token(&v, "pad_token", path)?,
            mask_token: token(&v, "mask_token", path)?,
            add_bos_token,
            path: path.to_path_buf(),
        })
    }

    /// Render `messages` with the chat template, as transformers' `apply_chat_template(...,
    /// tokenize=False)` does.
    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let source = self.chat_template.as_deref().with_context(|| format!("{} has no chat_template", self.path.display()))?;
        render_template(source, messages, add_generation_prompt, self.bos_token.as_deref(), self.eos_token.as_deref())
            .with_context(|| format!("the chat_template of {} failed to render", self.path.display()))
    }

    /// Render messages given as OpenAI-style JSON objects (`role`, `content`, and where
    /// present `tool_calls`, `tool_call_id`, `name`) with `tools` (OpenAI's tool objects) in
    /// the template's context, as transformers' `apply_chat_template(messages, tools=...)`.
    pub fn render_chat_json(&self, messages: &[Value], tools: Option<&[Value]>, add_generation_prompt: bool) -> Result<String> {
        let source = self.chat_template.as_deref().with_context(|| format!("{} has no chat_template", self.path.display()))?;
        render_template_json(source, messages, tools, add_generation_prompt, self.bos_token.as_deref(), self.eos_token.as_deref())
            .with_context(|| format!("the chat_template of {} failed to render", self.path.display()))
    }
}

/// Render a Hugging Face chat template.
pub fn render_template(source: &str, messages: &[Message], add_generation_prompt: bool, bos: Option<&str>, eos: Option<&str>) -> Result<String> {
    let msgs: Vec<Value> = messages
        .iter()
        .map(|m| {
            let role = serde_json::to_value(m.role).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            serde_json::json!({ "role": role, "content": m.content })
        })
        .collect();
    render_template_json(source, &msgs, None, add_generation_prompt, bos, eos)
}

/// Render a Hugging Face chat template over JSON messages; `tools`, when given, is the
/// context's `tools` list (absent otherwise, as templates test with `tools is defined`).
pub fn render_template_json(source: &str, messages: &[Value], tools: Option<&[Value]>, add_generation_prompt: bool, bos: Option<&str>, eos: Option<&str>) -> Result<String> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<JValue, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("the template raised: {msg}")))
    });
    env.add_template("chat_template", source).map_err(|e| anyhow!("invalid Jinja: {e:#}"))?;
    let tmpl = env.get_template("chat_template").map_err(|e| anyhow!("{e:#}"))?;
    let msgs: Vec<JValue> = messages.iter().map(JValue::from_serialize).collect();
    let base = minijinja::context! {
        messages => msgs,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos.unwrap_or(""),
        eos_token => eos.unwrap_or(""),
    };
    let ctx = match tools {
        Some(t) => minijinja::context! { tools => JValue::from_serialize(t), ..base },
        None => base,
    };
    tmpl.render(ctx).map_err(|e| anyhow!("{e:#}"))
}

impl HfTokenizerConfig {
    /// The marker template ([`ChatTemplate`]) that renders exactly what this Jinja chat
    /// template renders, so SFT, DPO, the reward model and PPO (which encode part by part and
    /// put the loss on assistant turns) use a pretrained model's own format. Found by rendering each role
    /// around a sentinel, then checked on a whole conversation with and without the
    /// generation prompt; a leading `bos_token` is left to the tokenizer. A template that is
    /// not of this marker shape (e.g. one that injects a default system prompt or a date) is
    /// an error naming the file, never a silently different format.
    pub fn marker_template(&self) -> Result<ChatTemplate> {
        const SENTINEL: &str = "\u{E000}ferrolm\u{E000}";
        let fail = |why: String| {
            anyhow!(
                "{}: the chat_template cannot be used for SFT, DPO, the reward model or PPO, which encode conversations part by part to put the loss on the assistant's turns (chat and serve render it as it is): {why}",
                self.path.display()
            )
        };
        let render = |m: &[Message], gen: bool| -> Result<String> {
            let out = self.render_chat(m, gen)?;
            Ok(match self.bos_token.as_deref().filter(|b| !b.is_empty()) {
                Some(b) => out.strip_prefix(b).map(str::to_string).unwrap_or(out),
                None => out,
            })
        };
        let mut around = Vec::new();
        for role in [crate::chat::Role::System, crate::chat::Role::User, crate::chat::Role::Assistant] {
            let text = render(&[Message::new(role, SENTINEL)], false)?;
            let (before, after) = text.split_once(SENTINEL).ok_or_else(|| fail(format!("a lone {role:?} message does not render its content")))?;
            around.push((before.to_string(), after.to_string()));
        }
        let after_turn = &around[0].1;
        if around.iter().any(|(_, a)| a != after_turn) {
            return Err(fail("turns of different roles end differently".into()));
        }
        // the separator between role marker and content: the whitespace the openings all end
        // with (a marker never splits inside a special token such as `<|end_header_id|>`)
        let openings: Vec<&str> = around.iter().map(|(b, _)| b.as_str()).collect();
        let ws = |o: &str| o.len() - o.trim_end().len();
        let mut sep_len = openings.iter().map(|o| ws(o)).min().unwrap_or(0);
        while sep_len > 0 && !openings.iter().all(|o| o.ends_with(&openings[0][openings[0].len() - sep_len..])) {
            sep_len -= 1;
        }
        let after_role = openings[0][openings[0].len() - sep_len..].to_string();
        let marker = |o: &str| o[..o.len() - sep_len].to_string();
        let end_len = after_turn.trim_end().len();
        let tpl = ChatTemplate {
            system: marker(openings[0]),
            user: marker(openings[1]),
            assistant: marker(openings[2]),
            end: after_turn[..end_len].to_string(),
            after_role,
            after_end: after_turn[end_len..].to_string(),
        };
        if tpl.end.is_empty() {
            return Err(fail("turns have no end marker".into()));
        }
        let probe = [Message::system("Be brief."), Message::user("Hi!"), Message::assistant("Hello."), Message::user("Bye?")];
        for gen in [false, true] {
            let want = render(&probe, gen)?;
            if tpl.render(&probe, gen) != want {
                return Err(fail(format!("it is not a plain marker template (a conversation renders as {want:?})")));
            }
        }
        Ok(tpl)
    }
}

/// A Jinja chat template that renders exactly what [`ChatTemplate::render`] renders, for
/// tools that only read `tokenizer_config.json` (transformers, vLLM, llama.cpp).
pub fn jinja_for(tpl: &ChatTemplate) -> String {
    let lit = |s: &str| serde_json::to_string(s).expect("a string serialises");
    format!(
        "{{% for message in messages %}}{{% if message['role'] == 'system' %}}{{{{ {sys} }}}}{{% elif message['role'] == 'user' %}}{{{{ {user} }}}}\
         {{% elif message['role'] == 'assistant' %}}{{{{ {asst} }}}}{{% else %}}{{{{ raise_exception('unknown role: ' + message['role']) }}}}{{% endif %}}\
         {{{{ {after_role} + message['content'] + {end} + {after_end} }}}}{{% endfor %}}{{% if add_generation_prompt %}}{{{{ {asst} + {after_role} }}}}{{% endif %}}",
        sys = lit(&tpl.system),
        user = lit(&tpl.user),
        asst = lit(&tpl.assistant),
        after_role = lit(&tpl.after_role),
        end = lit(&tpl.end),
        after_end = lit(&tpl.after_end),
    )
}

/// The end-of-sequence ids of a ferrolm tokenizer and marker template, as an export names
/// them: end of text and, when it is one token, the template's end-of-turn marker.
pub fn marker_eos_ids(tok: &Tokenizer, tpl: &ChatTemplate) -> Vec<u32> {
    let mut stop: Vec<u32> = tok.try_eot_id().into_iter().collect();
    stop.extend(tpl.stop_token(tok).filter(|id| !stop.contains(id)));
    stop
}

/// Write `tokenizer.json` and `tokenizer_config.json` (the Jinja chat template, special
/// tokens) into a Hugging Face model folder; `eos` are the ids generation stops at, the first
/// named as `eos_token`. A byte-level BPE is a `PreTrainedTokenizerFast` that adds nothing to
/// a text. A SentencePiece BPE is written as Llama repos have it (`LlamaTokenizer`,
/// `add_bos_token`, `bos_token`/`eos_token`/`unk_token`): transformers rebuilds a Llama
/// tokenizer from those fields and, without them, would put no `<s>` before a text.
pub fn write_hf_tokenizer_files(dir: &Path, tok: &Tokenizer, chat_template: &str, eos: &[u32], model_max_length: usize) -> Result<()> {
    tok.save(&dir.join("tokenizer.json"))?;
    let name = |id: u32| tok.id_to_token(id).with_context(|| format!("end-of-sequence id {id} is not in the vocabulary"));
    let eos_token = eos.first().map(|&id| name(id)).transpose()?;
    let cfg = match tok.kind() {
        crate::TokenizerKind::SentencePiece => {
            let v = ggml_vocab(tok)?;
            let bos = v.bos.map(name).transpose()?;
            serde_json::json!({
                "tokenizer_class": "LlamaTokenizer",
                "chat_template": chat_template,
                "add_bos_token": bos.is_some(),
                "add_eos_token": false,
                "bos_token": bos,
                "eos_token": eos_token,
                "unk_token": v.unk.map(name).transpose()?,
                "pad_token": null,
                "legacy": false,
                "clean_up_tokenization_spaces": false,
                "model_max_length": model_max_length,
            })
        }
        _ => serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "chat_template": chat_template,
            "bos_token": null,
            "eos_token": eos_token,
            "pad_token": eos_token,
            "add_bos_token": false,
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
            "model_max_length": model_max_length,
        }),
    };
    let path = dir.join(FILE_NAME);
    ferrolm_common::write_atomic(&path, serde_json::to_string_pretty(&cfg)? + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// A tokenizer as GGUF's `tokenizer.ggml.*` keys hold it, in llama.cpp's names and numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct GgmlVocab {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE: tokens in tokenizer.json's byte-level
    /// alphabet, merges) or "llama" (SentencePiece: tokens with `▁`, `<0xNN>` byte tokens,
    /// scores that order the merges).
    pub model: &'static str,
    /// Every token by id.
    pub tokens: Vec<String>,
    /// llama.cpp's token types ([`GGML_NORMAL`], [`GGML_UNKNOWN`], [`GGML_CONTROL`],
    /// [`GGML_USER_DEFINED`], [`GGML_BYTE`]).
    pub token_types: Vec<i32>,
    /// SentencePiece piece scores ("llama"; empty for "gpt2"): llama.cpp merges the pair whose
    /// piece scores highest, so a piece's score is minus its rank among the normal pieces in
    /// id order, which is how SentencePiece's BPE trainer scores them (and the order
    /// transformers' conversion ranked the tokenizer.json merges in).
    pub scores: Vec<f32>,
    /// BPE merges as "left right" ("gpt2"; empty for "llama").
    pub merges: Vec<String>,
    /// The token the tokenizer.json's post-processor puts before a text, if one.
    pub bos: Option<u32>,
    pub unk: Option<u32>,
    /// Whether `bos` goes before a text (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    /// Whether llama.cpp should put a `▁` before the text ("llama": the tokenizer.json's
    /// normalizer or Metaspace does).
    pub add_space_prefix: bool,
}

pub const GGML_NORMAL: i32 = 1;
pub const GGML_UNKNOWN: i32 = 2;
pub const GGML_CONTROL: i32 = 3;
pub const GGML_USER_DEFINED: i32 = 4;
pub const GGML_BYTE: i32 = 6;

/// The tokenizer as GGUF's `tokenizer.ggml.*` keys hold it: byte-level BPE as llama.cpp's
/// "gpt2" model, SentencePiece BPE as its "llama" model (the kind Llama 2 files have).
pub fn ggml_vocab(tok: &Tokenizer) -> Result<GgmlVocab> {
    let sentencepiece = match tok.kind() {
        crate::TokenizerKind::Bpe => false,
        crate::TokenizerKind::SentencePiece => true,
        other => bail!("GGUF stores byte-level BPE and SentencePiece BPE tokenizers; this is a {other:?} tokenizer"),
    };
    let json: Value = serde_json::from_str(&tok.to_json_string()?)?;
    let unk = json["model"]["unk_token"].as_str().and_then(|u| tok.token_id(u));
    let n = tok.vocab_size();
    let mut tokens = Vec::with_capacity(n);
    let mut token_types = Vec::with_capacity(n);
    let mut scores = Vec::new();
    let added = tok.hf().get_added_tokens_decoder();
    let mut normal_rank = 0u32;
    for id in 0..n as u32 {
        let t = tok.id_to_token(id).with_context(|| format!("the tokenizer has no token with id {id} (its ids must be 0..{n})"))?;
        let kind = if Some(id) == unk && sentencepiece {
            GGML_UNKNOWN
        } else if tok.is_special(id) {
            GGML_CONTROL
        } else if added.contains_key(&id) {
            GGML_USER_DEFINED
        } else if tok.is_byte_token(id) {
            GGML_BYTE
        } else {
            GGML_NORMAL
        };
        if sentencepiece {
            scores.push(if kind == GGML_NORMAL { -(normal_rank as f32) } else { 0.0 });
            normal_rank += u32::from(kind == GGML_NORMAL);
        }
        tokens.push(t);
        token_types.push(kind);
    }
    let merges = if sentencepiece {
        Vec::new()
    } else {
        match json.pointer("/model/merges") {
            Some(Value::Array(m)) => m
                .iter()
                .map(|m| match m {
                    Value::String(s) => Ok(s.clone()),
                    Value::Array(pair) if pair.len() == 2 => Ok(format!("{} {}", pair[0].as_str().unwrap_or_default(), pair[1].as_str().unwrap_or_default())),
                    other => Err(anyhow!("unexpected merge entry {other}")),
                })
                .collect::<Result<Vec<_>>>()?,
            _ => bail!("tokenizer.json has no model.merges"),
        }
    };
    let bos = match tok.special_frame()?.0.as_slice() {
        [b] => Some(*b),
        _ => None,
    };
    Ok(GgmlVocab {
        model: if sentencepiece { "llama" } else { "gpt2" },
        tokens,
        token_types,
        scores,
        merges,
        bos,
        unk,
        add_bos: bos.is_some(),
        add_space_prefix: sentencepiece && tok.strip_leading_spaces() > 0,
    })
}

const GPT2_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DIGIT_SPLIT: &str = r"\p{N}";

/// Pre-tokenizer regexes of GGUF's `tokenizer.ggml.pre` for "gpt2" vocabularies (the names
/// llama.cpp's converter writes), applied one after the other as llama.cpp does. Others are
/// refused: a wrong regex would give other ids. ("default" is read as GPT-2's split, which
/// is what ferrolm meant by it in the files it wrote before it wrote "gpt-2"; llama.cpp's
/// own "default" splits punctuation apart first.)
fn ggml_pre_regex(pre: &str) -> Option<&'static [&'static str]> {
    Some(match pre {
        "default" | "gpt2" | "gpt-2" => &[GPT2_SPLIT],
        "llama-bpe" | "llama3" => &[LLAMA3_SPLIT],
        "qwen2" => &[QWEN2_SPLIT],
        "smollm" | "starcoder" => &[DIGIT_SPLIT, GPT2_SPLIT],
        _ => return None,
    })
}

/// GGUF's `tokenizer.ggml.pre` for a byte-level BPE tokenizer: the llama.cpp pre-tokenizer
/// whose split regexes are the ones the tokenizer.json's pre-tokenizer applies, so llama.cpp
/// cuts a text into the same pieces (and so the same ids): `gpt-2` for GPT-2's split
/// (a `ByteLevel` step with `use_regex`, ferrolm's own tokenizers, or a `Split` on that
/// regex), `llama-bpe` (Llama 3), `qwen2`, `smollm` (digits apart, then GPT-2's split).
/// "llama" (SentencePiece) vocabularies do not split: `default`. Any other pre-tokenizer is
/// an error naming it, rather than a file llama.cpp would tokenize differently.
pub fn ggml_pre(tok: &Tokenizer) -> Result<&'static str> {
    if tok.kind() == crate::TokenizerKind::SentencePiece {
        return Ok("default");
    }
    let json: Value = serde_json::from_str(&tok.to_json_string()?)?;
    ggml_pre_of(&json["pre_tokenizer"])
}

fn ggml_pre_of(pre: &Value) -> Result<&'static str> {
    let refuse = || anyhow!("the tokenizer's pre-tokenizer {pre} has no llama.cpp equivalent (tokenizer.ggml.pre: gpt-2, llama-bpe, qwen2 and smollm splits are known), so llama.cpp would split texts differently");
    let byte_level = |s: &Value| -> Result<bool> {
        if s["type"] != "ByteLevel" || s["add_prefix_space"] == true {
            return Err(refuse());
        }
        Ok(s["use_regex"] != false)
    };
    let regex_of = |s: &Value| -> Option<String> {
        if s["type"] == "Split" && s["behavior"] == "Isolated" && s["invert"] != true {
            s["pattern"]["Regex"].as_str().map(str::to_string)
        } else {
            None
        }
    };
    let steps = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"].as_array().cloned().unwrap_or_default(),
        Some(_) => vec![pre.clone()],
        None => return Err(refuse()),
    };
    let Some((last, splits)) = steps.split_last() else { return Err(refuse()) };
    let mut regexes = splits.iter().map(regex_of).collect::<Option<Vec<String>>>().ok_or_else(refuse)?;
    if byte_level(last)? {
        regexes.push(GPT2_SPLIT.to_string());
    }
    let known = ["gpt-2", "llama-bpe", "qwen2", "smollm"];
    known.into_iter().find(|name| ggml_pre_regex(name).is_some_and(|r| r.iter().copied().eq(regexes.iter().map(String::as_str)))).ok_or_else(refuse)
}

/// SentencePiece BPE merges from piece scores, as transformers' conversion derives them:
/// every split of a piece into two pieces of the vocabulary, the splits of higher-scoring
/// pieces first (ties: the longer left part, then the longer right part, then id order).
fn merges_from_scores(tokens: &[String], scores: &[f32], types: &[i32]) -> Vec<(String, String)> {
    let ids: std::collections::HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut merges: Vec<(f32, usize, usize, usize, usize)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if types[id] != GGML_NORMAL {
            continue;
        }
        let mut local = Vec::new();
        for (at, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(at);
            if let (Some(&li), Some(&ri)) = (ids.get(l), ids.get(r)) {
                local.push((li, ri));
            }
        }
        local.sort_unstable();
        merges.extend(local.into_iter().map(|(l, r)| (scores[id], tokens[l].chars().count(), tokens[r].chars().count(), l, r)));
    }
    // a stable sort, descending on (score, left length, right length): ties keep id order
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    merges.into_iter().map(|(_, _, _, l, r)| (tokens[l].clone(), tokens[r].clone())).collect()
}

/// A tokenizer rebuilt from GGUF's `tokenizer.ggml.*` keys (for a .gguf file without a
/// tokenizer.json): "gpt2" as byte-level BPE with the merges and the pre-tokenizer regex
/// `pre` names, "llama" as SentencePiece BPE in transformers' legacy form (merges from the
/// scores, byte fallback, `▁` put before the text when `add_space_prefix`). Control tokens
/// (and the unknown token) are special added tokens, user-defined ones plain added tokens;
/// a bos token is put before a text when `add_bos` says so, as transformers' Llama
/// tokenizers do.
pub fn tokenizer_from_ggml(v: &GgmlVocab, pre: &str) -> Result<Tokenizer> {
    let n = v.tokens.len();
    if v.token_types.len() != n {
        bail!("tokenizer.ggml.token_type has {} entries for {n} tokens", v.token_types.len());
    }
    let mut vocab = serde_json::Map::new();
    for (id, t) in v.tokens.iter().enumerate() {
        if vocab.insert(t.clone(), serde_json::json!(id)).is_some() {
            bail!("tokenizer.ggml.tokens holds {t:?} twice (the second at id {id})");
        }
    }
    let added: Vec<Value> = (0..n)
        .filter(|&i| matches!(v.token_types[i], GGML_CONTROL | GGML_UNKNOWN | GGML_USER_DEFINED))
        .map(|i| {
            let special = v.token_types[i] != GGML_USER_DEFINED;
            serde_json::json!({"id": i, "content": v.tokens[i], "single_word": false, "lstrip": false, "rstrip": false, "normalized": !special, "special": special})
        })
        .collect();
    let token = |id: Option<u32>, key: &str| -> Result<Option<String>> {
        id.map(|i| v.tokens.get(i as usize).cloned().with_context(|| format!("tokenizer.ggml.{key} = {i} is not a token id (there are {n})"))).transpose()
    };
    let bos = token(v.bos, "bos_token_id")?;
    let post = match bos.as_deref().filter(|_| v.add_bos) {
        Some(b) => {
            let mut specials = serde_json::Map::new();
            specials.insert(b.to_string(), serde_json::json!({"id": b, "ids": [v.bos], "tokens": [b]}));
            serde_json::json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": specials
            })
        }
        None => Value::Null,
    };
    let doc = match v.model {
        "gpt2" => {
            let regexes = ggml_pre_regex(pre).with_context(|| format!("tokenizer.ggml.pre {pre:?} is not known here (default, gpt-2, llama-bpe, qwen2 and smollm are): its pre-tokenizer regex is needed to encode as the model was trained"))?;
            let merges: Vec<Value> = v
                .merges
                .iter()
                .map(|m| match m.split_once(' ') {
                    Some((l, r)) if !l.is_empty() && !r.is_empty() => Ok(serde_json::json!([l, r])),
                    _ => Err(anyhow!("tokenizer.ggml.merges entry {m:?} is not \"left right\"")),
                })
                .collect::<Result<_>>()?;
            let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false});
            serde_json::json!({
                "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
                "pre_tokenizer": {"type": "Sequence", "pretokenizers": regexes.iter()
                    .map(|r| serde_json::json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}))
                    .chain([byte_level]).collect::<Vec<_>>()},
                "post_processor": post,
                "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
                "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "", "end_of_word_suffix": "",
                          "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges}
            })
        }
        "llama" => {
            if v.scores.len() != n {
                bail!("tokenizer.ggml.scores has {} entries for {n} tokens", v.scores.len());
            }
            let merges: Vec<Value> = merges_from_scores(&v.tokens, &v.scores, &v.token_types).into_iter().map(|(l, r)| serde_json::json!([l, r])).collect();
            let unk = token(v.unk, "unknown_token_id")?;
            let mut normalizers = vec![serde_json::json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"})];
            let mut decoders = vec![
                serde_json::json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
                serde_json::json!({"type": "ByteFallback"}),
                serde_json::json!({"type": "Fuse"}),
            ];
            if v.add_space_prefix {
                normalizers.insert(0, serde_json::json!({"type": "Prepend", "prepend": "▁"}));
                decoders.push(serde_json::json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            serde_json::json!({
                "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
                "normalizer": {"type": "Sequence", "normalizers": normalizers},
                "pre_tokenizer": null,
                "post_processor": post,
                "decoder": {"type": "Sequence", "decoders": decoders},
                "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                          "fuse_unk": true, "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges}
            })
        }
        other => bail!("tokenizer.ggml.model {other:?} is not supported (gpt2 and llama are)"),
    };
    Tokenizer::from_json_str(&doc.to_string()).with_context(|| format!("rebuilding the {} tokenizer from tokenizer.ggml.*", v.model))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn tokenizer_ggml_pre_is_chosen_from_the_split_regexes() {
        let split = |r: &str| serde_json::json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false});
        let bl = |re: bool| serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": re});
        let seq = |v: Vec<Value>| serde_json::json!({"type": "Sequence", "pretokenizers": v});
        assert_eq!(ggml_pre_of(&bl(true)).unwrap(), "gpt-2");
        assert_eq!(ggml_pre_of(&seq(vec![split(GPT2_SPLIT), bl(false)])).unwrap(), "gpt-2");
        assert_eq!(ggml_pre_of(&seq(vec![split(LLAMA3_SPLIT), bl(false)])).unwrap(), "llama-bpe");
        assert_eq!(ggml_pre_of(&seq(vec![split(QWEN2_SPLIT), bl(false)])).unwrap(), "qwen2");
        assert_eq!(ggml_pre_of(&seq(vec![split(DIGIT_SPLIT), bl(true)])).unwrap(), "smollm");
        // no split at all, a prefix space, an unknown regex: no llama.cpp equivalent
        for bad in [bl(false), serde_json::json!({"type": "ByteLevel", "add_prefix_space": true, "use_regex": true}), seq(vec![split(r"\w+"), bl(false)]), Value::Null] {
            let e = ggml_pre_of(&bad).unwrap_err().to_string();
            assert!(e.contains("no llama.cpp equivalent"), "{e}");
        }
        // every name written is read back as the same regexes
        for name in ["gpt-2", "llama-bpe", "qwen2", "smollm"] {
            let r = ggml_pre_regex(name).unwrap();
            let mut steps: Vec<Value> = r.iter().map(|&x| split(x)).collect();
            steps.push(bl(false));
            assert_eq!(ggml_pre_of(&seq(steps)).unwrap(), name);
        }
    }

    fn msgs() -> Vec<Message> {
        vec![Message::system("Be brief."), Message::user("Hi!"), Message::assistant("Hello."), Message::user("Bye?")]
    }

    #[test]
    fn chatml_renders_as_transformers_does() {
        let out = render_template(CHATML, &msgs()[..2], true, None, None).unwrap();
        assert_eq!(out, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n");
    }

    /// Llama 3-style templates: bos_token, `loop.index0`, `| trim`, whitespace control by
    /// trim_blocks/lstrip_blocks (first) and by `{{-`/`{%-` (second). The expected strings
    /// are what transformers' own Jinja environment renders.
    #[test]
    fn llama3_style_template_with_block_whitespace_control() {
        let tpl = "{% set loop_messages = messages %}\n{% for message in loop_messages %}\n    {% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}\n    {% if loop.index0 == 0 %}\n        {% set content = bos_token + content %}\n    {% endif %}\n    {{ content }}\n{% endfor %}\n{% if add_generation_prompt %}\n{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}\n{% endif %}\n";
        let out = render_template(tpl, &[Message::user("  Hi!  ")], true, Some("<|begin_of_text|>"), Some("<|eot_id|>")).unwrap();
        assert_eq!(out, "    <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>\n<|start_header_id|>assistant<|end_header_id|>\n\n\n");
        let tpl = "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}";
        let out = render_template(tpl, &[Message::user("  Hi!  ")], true, Some("<|begin_of_text|>"), None).unwrap();
        assert_eq!(out, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
    }

    /// Mistral-style: alternation enforced with raise_exception, Python's `.strip()`.
    #[test]
    fn raising_templates_are_errors_and_python_methods_work() {
        let tpl = "{{ bos_token }}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'].strip() + ' [/INST]' }}{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}";
        let ok = render_template(tpl, &[Message::user(" a "), Message::assistant("b")], false, Some("<s>"), Some("</s>")).unwrap();
        assert_eq!(ok, "<s>[INST] a [/INST]b</s>");
        let err = render_template(tpl, &[Message::assistant("b")], false, Some("<s>"), Some("</s>")).unwrap_err();
        assert!(format!("{err:#}").contains("roles must alternate"), "{err:#}");
        // not Jinja at all
        assert!(render_template("{% for %}", &[], false, None, None).is_err());
        // an undefined function
        assert!(render_template("{{ nope() }}", &[], false, None, None).is_err());
    }

    /// Tool-aware templates (Hermes/Qwen style) see `tools`, assistant `tool_calls` and tool
    /// results; without tools, `tools is defined` is false.
    #[test]
    fn tools_and_tool_messages_reach_the_template() {
        let tpl = "{% if tools is defined %}<|im_start|>system\n<tools>{% for t in tools %}{{ t.function.name }}:{{ t.function.parameters | tojson }};{% endfor %}</tools><|im_end|>\n{% endif %}\
{% for m in messages %}{% if m.role == 'tool' %}<|im_start|>user\n<tool_response>{{ m.tool_call_id }}={{ m.content }}</tool_response><|im_end|>\n\
{% elif m.tool_calls %}<|im_start|>assistant\n{% for c in m.tool_calls %}<tool_call>{{ c.function.name }}({{ c.function.arguments | tojson }})</tool_call>{% endfor %}<|im_end|>\n\
{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let tools = vec![serde_json::json!({ "type": "function", "function": { "name": "get_weather", "parameters": { "type": "object", "properties": { "city": { "type": "string" } } } } })];
        let messages = vec![
            serde_json::json!({ "role": "user", "content": "Weather in Oslo?" }),
            serde_json::json!({ "role": "assistant", "content": null, "tool_calls": [{ "id": "call_1", "type": "function", "function": { "name": "get_weather", "arguments": { "city": "Oslo" } } }] }),
            serde_json::json!({ "role": "tool", "tool_call_id": "call_1", "content": "-3 C" }),
        ];
        let out = render_template_json(tpl, &messages, Some(&tools), true, None, None).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\n<tools>get_weather:{\"properties\":{\"city\":{\"type\":\"string\"}},\"type\":\"object\"};</tools><|im_end|>\n\
<|im_start|>user\nWeather in Oslo?<|im_end|>\n<|im_start|>assistant\n<tool_call>get_weather({\"city\":\"Oslo\"})</tool_call><|im_end|>\n\
<|im_start|>user\n<tool_response>call_1=-3 C</tool_response><|im_end|>\n<|im_start|>assistant\n"
        );
        let plain = render_template_json(tpl, &messages[..1], None, false, None, None).unwrap();
        assert_eq!(plain, "<|im_start|>user\nWeather in Oslo?<|im_end|>\n");
    }

    fn with_template(t: &str) -> HfTokenizerConfig {
        HfTokenizerConfig { chat_template: Some(t.into()), bos_token: Some("<s>".into()), path: "tokenizer_config.json".into(), ..Default::default() }
    }

    #[test]
    fn marker_shaped_jinja_templates_become_marker_templates() {
        let chatml = with_template(CHATML).marker_template().unwrap();
        assert_eq!(
            (chatml.system.as_str(), chatml.user.as_str(), chatml.assistant.as_str(), chatml.after_role.as_str(), chatml.end.as_str(), chatml.after_end.as_str()),
            ("<|im_start|>system", "<|im_start|>user", "<|im_start|>assistant", "\n", "<|im_end|>", "\n")
        );
        // Llama 3 style, with a leading bos_token left to the tokenizer
        let llama = "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}";
        let t = with_template(llama).marker_template().unwrap();
        assert_eq!((t.user.as_str(), t.after_role.as_str(), t.end.as_str(), t.after_end.as_str()), ("<|start_header_id|>user<|end_header_id|>", "\n\n", "<|eot_id|>", ""));
        // ferrolm's own template, exported as Jinja, comes back as itself
        assert_eq!(with_template(&jinja_for(&ChatTemplate::default())).marker_template().unwrap(), ChatTemplate::default());
        // a template that injects a default system prompt is refused, not approximated
        let injecting = "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}".to_string() + CHATML;
        let e = format!("{:#}", with_template(&injecting).marker_template().unwrap_err());
        assert!(e.contains("tokenizer_config.json") && e.contains("cannot be used"), "{e}");
    }

    #[test]
    fn ferrolm_templates_export_as_jinja_that_renders_the_same() {
        let odd = ChatTemplate { after_role: ": \"quoted\"\n".into(), ..Default::default() };
        for tpl in [ChatTemplate::default(), odd] {
            let jinja = jinja_for(&tpl);
            for gen in [false, true] {
                assert_eq!(render_template(&jinja, &msgs(), gen, None, None).unwrap(), tpl.render(&msgs(), gen));
            }
        }
    }

    #[test]
    fn tokenizer_config_special_tokens_and_named_templates() {
        let text = r#"{"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>", "pad_token": null, "add_bos_token": true,
            "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "{{ messages[0]['content'] }}"}]}"#;
        let c = HfTokenizerConfig::parse(text, Path::new("tokenizer_config.json")).unwrap();
        assert_eq!((c.bos_token.as_deref(), c.eos_token.as_deref(), c.pad_token.as_deref(), c.add_bos_token), (Some("<s>"), Some("</s>"), None, true));
        assert_eq!(c.render_chat(&msgs(), false).unwrap(), "Be brief.");
        let e = HfTokenizerConfig::parse(r#"{"chat_template": 3}"#, Path::new("t.json")).unwrap_err();
        assert!(format!("{e:#}").contains("chat_template"));
        let none = HfTokenizerConfig::parse("{}", Path::new("t.json")).unwrap();
        assert!(format!("{:#}", none.render_chat(&msgs(), false).unwrap_err()).contains("no chat_template"));
    }
}

