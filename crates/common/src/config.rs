//! TOML configs with `--set key.path=value` overrides. Every stage parses its own typed
//! config from the merged `toml::Value`, so the override mechanism is shared and the
//! resolved config can be written next to the outputs exactly as it was used.

use std::path::{Path, PathBuf};
use toml::Value;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid TOML in {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("--set {0:?}: expected key=value, e.g. train.max_steps=100")]
    BadOverride(String),
    #[error("--set {key}: `{part}` is not a table in the config")]
    NotATable { key: String, part: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Read a TOML file (or start from an empty table when `path` is None) and apply overrides.
pub fn load_config(path: Option<&Path>, overrides: &[String]) -> Result<Value, ConfigError> {
    let mut value = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|source| ConfigError::Read { path: p.to_path_buf(), source })?;
            text.parse::<toml::Table>()
                .map(Value::Table)
                .map_err(|e| ConfigError::Parse { path: p.to_path_buf(), source: Box::new(e) })?
        }
        None => Value::Table(Default::default()),
    };
    apply_overrides(&mut value, overrides)?;
    Ok(value)
}

/// Most dotted parts a `--set` key may have.
pub const MAX_KEY_DEPTH: usize = 16;

/// Apply `key.path=value` overrides. The value is parsed as a TOML literal
/// (`3`, `1e-3`, `true`, `"x"`, `[1,2]`); anything that is not valid TOML is a string,
/// so `--set model.kind=causal` works without quotes.
pub fn apply_overrides(root: &mut Value, overrides: &[String]) -> Result<(), ConfigError> {
    for ov in overrides {
        let (key, raw) = ov.split_once('=').ok_or_else(|| ConfigError::BadOverride(ov.clone()))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(ConfigError::BadOverride(ov.clone()));
        }
        let value = parse_literal(raw.trim());
        let parts: Vec<&str> = key.split('.').collect();
        // The resolved config is written next to the outputs and read back (--resume); the
        // TOML reader refuses tables nested deeper than its recursion limit, so a key may not
        // build one (found by fuzzing, issue 18: a 130-part key gave an unreadable config).
        if parts.len() > MAX_KEY_DEPTH {
            return Err(ConfigError::BadOverride(format!("{key}: more than {MAX_KEY_DEPTH} dotted parts")));
        }
        let mut cur = &mut *root;
        for part in &parts[..parts.len() - 1] {
            let table = cur
                .as_table_mut()
                .ok_or_else(|| ConfigError::NotATable { key: key.into(), part: part.to_string() })?;
            cur = table.entry(part.to_string()).or_insert_with(|| Value::Table(Default::default()));
        }
        let table = cur.as_table_mut().ok_or_else(|| ConfigError::NotATable {
            key: key.into(),
            part: parts[parts.len().saturating_sub(2)].to_string(),
        })?;
        table.insert(parts[parts.len() - 1].to_string(), value);
    }
    Ok(())
}

fn parse_literal(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

/// Deserialize a typed config, turning serde's message into one that names the problem.
pub fn typed<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, ConfigError> {
    T::deserialize(value.clone()).map_err(|e| ConfigError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_create_nested_keys_and_parse_types() {
        let mut v: Value = "[train]\nlr = 0.1\n".parse::<toml::Table>().map(Value::Table).unwrap();
        apply_overrides(
            &mut v,
            &["train.lr=3e-4".into(), "model.kind=causal".into(), "train.max_steps=7".into()],
        )
        .unwrap();
        assert_eq!(v["train"]["lr"].as_float(), Some(3e-4));
        assert_eq!(v["train"]["max_steps"].as_integer(), Some(7));
        assert_eq!(v["model"]["kind"].as_str(), Some("causal"));
    }

    #[test]
    fn override_keys_cannot_nest_past_what_toml_reads_back() {
        // Issue 18 (fuzzing): a key of 130 dotted parts built a table the TOML reader then
        // refused ("recursion limit"), so the resolved config could not be read back.
        let mut v = Value::Table(Default::default());
        let deep = vec!["a"; 130].join(".");
        let err = apply_overrides(&mut v, &[format!("{deep}=1")]).unwrap_err();
        assert!(err.to_string().contains("more than 16 dotted parts"), "{err}");
        let ok = vec!["a"; MAX_KEY_DEPTH].join(".");
        apply_overrides(&mut v, &[format!("{ok}=1")]).unwrap();
        let text = toml::to_string(&v).unwrap();
        assert_eq!(text.parse::<toml::Table>().map(Value::Table).unwrap(), v);
    }

    #[test]
    fn bad_override_is_a_clear_error() {
        let mut v = Value::Table(Default::default());
        let err = apply_overrides(&mut v, &["novalue".into()]).unwrap_err();
        assert!(err.to_string().contains("expected key=value"));
        let mut v: Value = "a = 1".parse::<toml::Table>().map(Value::Table).unwrap();
        let err = apply_overrides(&mut v, &["a.b=2".into()]).unwrap_err();
        assert!(err.to_string().contains("not a table"), "{err}");
    }
}
