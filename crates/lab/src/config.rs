//! The one config convention of the quickstart and the experiments: a TOML file (or the
//! built-in default), then with `--quick` the `[quick]` table of `"section.key" = value`
//! overrides, then `--set key=value` overrides. The `[quick]` table is removed once applied.

use std::path::Path;

use anyhow::{Context, Result};

/// Load `config` (else the built-in `default` text), apply `[quick]` when `quick`, then
/// `overrides`. The returned value is the resolved config, as it should be recorded.
pub fn load_layered(config: Option<&Path>, default: &str, quick: bool, overrides: &[String]) -> Result<toml::Value> {
    let mut value: toml::Value = match config {
        Some(p) => ferrolm_common::load_config(Some(p), &[])?,
        None => default.parse::<toml::Table>().map(toml::Value::Table).context("in the built-in config")?,
    };
    let quick_table = value.as_table_mut().and_then(|t| t.remove("quick"));
    if quick {
        let q = quick_table.context("--quick needs a [quick] table of overrides in the config")?;
        let table = q.as_table().context("[quick] must be a table of \"section.key\" = value")?;
        let ov: Vec<String> = table
            .iter()
            .map(|(k, v)| {
                anyhow::ensure!(k.contains('.') && !v.is_table(), "[quick]: {k:?} is not a \"section.key\" = value override");
                Ok(format!("{k}={v}"))
            })
            .collect::<Result<_>>()?;
        ferrolm_common::apply_overrides(&mut value, &ov)?;
    }
    ferrolm_common::apply_overrides(&mut value, overrides)?;
    Ok(value)
}

/// Remove the table `name` from `value` and return it (an empty table when absent).
pub fn take_section(value: &mut toml::Value, name: &str) -> toml::Value {
    value.as_table_mut().and_then(|t| t.remove(name)).unwrap_or_else(|| toml::Value::Table(Default::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "[experiment]\na = 1\nb = \"x\"\n[quick]\n\"experiment.a\" = 2\n\"experiment.b\" = \"y\"\n";

    #[test]
    fn quick_then_set_and_quick_is_removed() {
        let v = load_layered(None, CFG, false, &[]).unwrap();
        assert_eq!(v["experiment"]["a"].as_integer(), Some(1));
        assert!(v.get("quick").is_none());
        let v = load_layered(None, CFG, true, &["experiment.a=5".into()]).unwrap();
        assert_eq!(v["experiment"]["a"].as_integer(), Some(5));
        assert_eq!(v["experiment"]["b"].as_str(), Some("y"));
        let err = load_layered(None, "[experiment]\na = 1\n", true, &[]).unwrap_err();
        assert!(err.to_string().contains("[quick]"), "{err}");
        let err = load_layered(None, "[quick]\noverrides = [\"a.b=1\"]\n", true, &[]).unwrap_err();
        assert!(err.to_string().contains("section.key"), "{err}");
    }
}
