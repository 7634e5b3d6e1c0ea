//! `[model]`: which model a run builds, for every family, in one enum.
//!
//! A run folder's `config.toml` carries this section; training writes it, every consumer
//! (generate, eval, fine-tuning, alignment, serving) reads it back through
//! [`crate::registry::load_model`]. The Transformer's keys are those of
//! [`TransformerConfig`] (its `kind` picks causal, prefix, encoder-decoder or masked LM).
//! The older families reuse the keys that mean the same thing (`vocab_size`, `d_model` =
//! embedding width, `n_layers` = recurrent layers, `dropout`, `max_seq_len` = the longest
//! window) and add four of their own: `family`, `hidden`, `context` (NPLM's n−1) and
//! `direct` (NPLM's direct connections). Attention-only keys such as `n_heads` are
//! accepted and unused there (and the family keys on a Transformer), so
//! `--set model.family=lstm` turns any Transformer config into an LSTM run and back; a
//! misspelt key is still an error.

use serde::{Deserialize, Serialize};

use crate::config::{ModelKind, TransformerConfig};
use crate::nplm::NplmConfig;
use crate::rnn::{Cell, RecurrentConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    #[default]
    Transformer,
    Nplm,
    Rnn,
    Lstm,
}

impl Family {
    pub const ALL: [Family; 4] = [Family::Transformer, Family::Nplm, Family::Rnn, Family::Lstm];

    pub fn name(self) -> &'static str {
        match self {
            Family::Transformer => "transformer",
            Family::Nplm => "nplm",
            Family::Rnn => "rnn",
            Family::Lstm => "lstm",
        }
    }
}

/// The `[model]` section of a run.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSpec {
    /// The Transformer core in any of its shapes (`kind`).
    Transformer(TransformerConfig),
    /// Bengio et al.'s neural probabilistic LM.
    Nplm(NplmConfig),
    /// Elman RNN or LSTM (truncated BPTT over windows of `max_seq_len`).
    Recurrent(RecurrentConfig),
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec::Transformer(TransformerConfig::default())
    }
}

impl From<TransformerConfig> for ModelSpec {
    fn from(c: TransformerConfig) -> Self {
        ModelSpec::Transformer(c)
    }
}

/// The `[model]` keys only the older families read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FamilyKeys {
    family: Family,
    /// RNN/LSTM state width, NPLM tanh-layer width; 0 = `d_model`.
    hidden: usize,
    /// NPLM: tokens of context (n−1 for an n-gram-like window).
    context: usize,
    /// NPLM: direct connections from the embeddings to the output.
    direct: bool,
}

impl Default for FamilyKeys {
    fn default() -> Self {
        Self { family: Family::Transformer, hidden: 0, context: 5, direct: false }
    }
}

const FAMILY_KEYS: [&str; 4] = ["family", "hidden", "context", "direct"];

impl ModelSpec {
    /// Parse a `[model]` table (absent keys take their defaults).
    pub fn from_value(v: &toml::Value) -> Result<Self, String> {
        let mut core = v.as_table().cloned().ok_or("[model] is not a table")?;
        let mut fam = toml::Table::new();
        for k in FAMILY_KEYS {
            if let Some(x) = core.remove(k) {
                fam.insert(k.to_string(), x);
            }
        }
        let keys = FamilyKeys::deserialize(toml::Value::Table(fam.clone())).map_err(|e| e.to_string())?;
        let t = TransformerConfig::deserialize(toml::Value::Table(core)).map_err(|e| e.to_string())?;
        let hidden = if keys.hidden == 0 { t.d_model } else { keys.hidden };
        let spec = match keys.family {
            // `hidden`, `context` and `direct` are the older families' keys: a Transformer
            // ignores them, so one config can switch families with `--set model.family=…`.
            Family::Transformer => ModelSpec::Transformer(t),
            Family::Nplm => ModelSpec::Nplm(NplmConfig {
                vocab_size: t.vocab_size,
                d_model: t.d_model,
                context: keys.context,
                hidden,
                direct: keys.direct,
                dropout: t.dropout,
                max_seq_len: t.max_seq_len,
            }),
            Family::Rnn | Family::Lstm => ModelSpec::Recurrent(RecurrentConfig {
                cell: if keys.family == Family::Lstm { Cell::Lstm } else { Cell::Elman },
                vocab_size: t.vocab_size,
                d_model: t.d_model,
                hidden,
                n_layers: t.n_layers,
                dropout: t.dropout,
                max_seq_len: t.max_seq_len,
            }),
        };
        Ok(spec)
    }

    /// The section as written to `config.toml`: a Transformer's is exactly its
    /// [`TransformerConfig`]; the other families write the keys they use.
    pub fn to_value(&self) -> toml::Value {
        let mut t = toml::Table::new();
        let mut put = |k: &str, v: toml::Value| {
            t.insert(k.to_string(), v);
        };
        match self {
            ModelSpec::Transformer(c) => return toml::Value::try_from(c).expect("the model config serialises"),
            ModelSpec::Nplm(cfg) => {
                put("family", "nplm".into());
                put("vocab_size", (cfg.vocab_size as i64).into());
                put("d_model", (cfg.d_model as i64).into());
                put("hidden", (cfg.hidden as i64).into());
                put("context", (cfg.context as i64).into());
                put("direct", cfg.direct.into());
                put("dropout", (cfg.dropout as f64).into());
                put("max_seq_len", (cfg.max_seq_len as i64).into());
            }
            ModelSpec::Recurrent(cfg) => {
                put("family", self.family().name().into());
                put("vocab_size", (cfg.vocab_size as i64).into());
                put("d_model", (cfg.d_model as i64).into());
                put("hidden", (cfg.hidden as i64).into());
                put("n_layers", (cfg.n_layers as i64).into());
                put("dropout", (cfg.dropout as f64).into());
                put("max_seq_len", (cfg.max_seq_len as i64).into());
            }
        }
        toml::Value::Table(t)
    }

    pub fn family(&self) -> Family {
        match self {
            ModelSpec::Transformer(_) => Family::Transformer,
            ModelSpec::Nplm(_) => Family::Nplm,
            ModelSpec::Recurrent(cfg) if cfg.cell == Cell::Lstm => Family::Lstm,
            ModelSpec::Recurrent(_) => Family::Rnn,
        }
    }

    /// The Transformer shape; the older families are causal LMs.
    pub fn kind(&self) -> ModelKind {
        match self {
            ModelSpec::Transformer(c) => c.kind,
            _ => ModelKind::Causal,
        }
    }

    pub fn transformer(&self) -> Option<&TransformerConfig> {
        match self {
            ModelSpec::Transformer(c) => Some(c),
            _ => None,
        }
    }

    pub fn transformer_mut(&mut self) -> Option<&mut TransformerConfig> {
        match self {
            ModelSpec::Transformer(c) => Some(c),
            _ => None,
        }
    }

    /// The Transformer config, or an error naming what `purpose` needs.
    pub fn require_transformer(&self, purpose: &str) -> Result<&TransformerConfig, String> {
        self.transformer().ok_or_else(|| format!("{purpose} needs a Transformer; this model is {}", self.describe()))
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ModelSpec::Transformer(c) => c.vocab_size,
            ModelSpec::Nplm(cfg) => cfg.vocab_size,
            ModelSpec::Recurrent(cfg) => cfg.vocab_size,
        }
    }

    /// Set the vocabulary size (a tokenizer trained after the config was written).
    pub fn set_vocab_size(&mut self, n: usize) {
        match self {
            ModelSpec::Transformer(c) => c.vocab_size = n,
            ModelSpec::Nplm(c) => c.vocab_size = n,
            ModelSpec::Recurrent(c) => c.vocab_size = n,
        }
    }

    pub fn max_seq_len(&self) -> usize {
        match self {
            ModelSpec::Transformer(c) => c.max_seq_len,
            ModelSpec::Nplm(c) => c.max_seq_len,
            ModelSpec::Recurrent(c) => c.max_seq_len,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        match self {
            ModelSpec::Transformer(c) => c.validate(),
            ModelSpec::Nplm(cfg) => cfg.validate(),
            ModelSpec::Recurrent(cfg) => cfg.validate(),
        }
        .map_err(|e| format!("invalid [model] for family {}: {e}", self.family().name()))
    }

    pub fn num_params(&self) -> usize {
        match self {
            ModelSpec::Transformer(c) => c.num_params(),
            ModelSpec::Nplm(cfg) => cfg.num_params(),
            ModelSpec::Recurrent(cfg) => cfg.num_params(),
        }
    }

    /// One line naming the architecture and its size.
    pub fn describe(&self) -> String {
        match self {
            ModelSpec::Transformer(m) => format!(
                "Transformer ({:?} block, {:?}), {} layers, {} heads, width {}: {} parameters",
                m.block, m.kind, m.n_layers, m.n_heads, m.d_model, self.num_params()
            ),
            ModelSpec::Nplm(cfg) => format!(
                "NPLM, {} tokens of context, embeddings {}, tanh layer {}{}: {} parameters",
                cfg.context, cfg.d_model, cfg.hidden, if cfg.direct { ", direct connections" } else { "" }, self.num_params()
            ),
            ModelSpec::Recurrent(cfg) => format!(
                "{} ({} layers, embeddings {}, state {}): {} parameters",
                if cfg.cell == Cell::Lstm { "LSTM" } else { "Elman RNN" },
                cfg.n_layers, cfg.d_model, cfg.hidden, self.num_params()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ModelSpec, String> {
        ModelSpec::from_value(&toml::Value::Table(s.parse::<toml::Table>().unwrap()))
    }

    #[test]
    fn every_family_round_trips_through_its_section() {
        for text in [
            "vocab_size = 40\nd_model = 16\nkind = \"prefix\"",
            "family = \"nplm\"\nvocab_size = 40\nd_model = 16\ncontext = 3\ndirect = true",
            "family = \"lstm\"\nvocab_size = 40\nd_model = 16\nhidden = 24\nn_layers = 2\nn_heads = 2",
            "family = \"rnn\"\nvocab_size = 40\nd_model = 16",
        ] {
            let spec = parse(text).unwrap();
            let back = ModelSpec::from_value(&spec.to_value()).unwrap();
            assert_eq!(back, spec, "{text}");
        }
        assert_eq!(parse("family = \"rnn\"\nd_model = 12").unwrap().family(), Family::Rnn);
        // hidden = 0 means d_model
        match parse("family = \"rnn\"\nd_model = 12").unwrap() {
            ModelSpec::Recurrent(cfg) => assert_eq!(cfg.hidden, 12),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn misspelt_and_misplaced_keys_are_errors() {
        assert!(parse("family = \"lstm\"\nhiden = 3").unwrap_err().contains("hiden"));
        assert!(parse("family = \"gru\"").unwrap_err().contains("gru"));
        assert!(parse("hiden = 3").unwrap_err().contains("hiden"));
        // the older families' keys are not typos on a Transformer: ignored there
        assert_eq!(parse("hidden = 3\ncontext = 2").unwrap(), ModelSpec::default());
    }
}
