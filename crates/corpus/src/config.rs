//! The pipeline as data: sources, ordered steps, mixing. Parsed from TOML (`[[source]]`,
//! `[[step]]` tables with a `kind`) through `ferrolm_common::config`, so `--set` works.

use crate::step::{Scoped, Step};
use crate::steps::*;
use crate::{CorpusError, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The documents' source name (what `[[step]] sources = [...]` and mixing weights refer to).
    /// "auto" keeps each file's own: "code" for code files, "prose" for text, JSONL's `source` field.
    pub name: String,
    /// Files or folders (recursive).
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// Read the Cargo registry sources of the crates in this Cargo.lock instead (code + prose;
    /// the documents' sources are then "code" and "prose", whatever `name` says).
    #[serde(default)]
    pub cargo_lock: Option<PathBuf>,
    /// `$CARGO_HOME` for `cargo_lock` (default: the environment's).
    #[serde(default)]
    pub cargo_home: Option<PathBuf>,
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(default = "text_field")]
    pub text_field: String,
    /// Globs (relative to each folder in `paths`, `/`-separated) a file must match to be read;
    /// empty = every supported file. `**/*.md` matches at any depth, `*.md` only at the root.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Globs of files (or whole directories) under the folders to leave out; wins over `include`.
    /// For a Hub source they apply to the repository paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// "files" (default when `paths` is set), "cargo" (default when `cargo_lock` is set) or "hub".
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Hub: the dataset repository, "owner/name".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Hub: branch, tag or commit (default "main"; with `config`/`split`, the Parquet
    /// conversion branch "refs/convert/parquet").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Hub: read the Hub's Parquet conversion of this configuration (default "default" when
    /// `split` is given) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// ... and this split (default "train" when `config` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// Hub: globs over the repository's file paths (e.g. `["data/train-*.parquet"]`); without
    /// them and without `config`/`split`, every supported data file of the repository.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// Hub: base URL (default `$HF_ENDPOINT`, else https://huggingface.co).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Hub: download cache (default `$HF_HOME/ferrolm/datasets`, `$HF_HOME` defaulting to
    /// `~/.cache/huggingface`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            name: "auto".into(),
            paths: Vec::new(),
            cargo_lock: None,
            cargo_home: None,
            weight: 1.0,
            text_field: text_field(),
            include: Vec::new(),
            exclude: Vec::new(),
            kind: None,
            repo: None,
            revision: None,
            config: None,
            split: None,
            files: Vec::new(),
            endpoint: None,
            cache_dir: None,
        }
    }
}

/// What a `[[source]]` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Files,
    Cargo,
    Hub,
}

impl SourceConfig {
    pub fn source_kind(&self) -> Result<SourceKind> {
        let inferred = match self.kind.as_deref() {
            Some("files") => SourceKind::Files,
            Some("cargo") => SourceKind::Cargo,
            Some("hub") => SourceKind::Hub,
            Some(other) => return Err(CorpusError::Config(format!("source {:?}: type {other:?}: expected \"files\", \"cargo\" or \"hub\"", self.name))),
            None if self.repo.is_some() => SourceKind::Hub,
            None if self.cargo_lock.is_some() && self.paths.is_empty() => SourceKind::Cargo,
            None => SourceKind::Files,
        };
        Ok(inferred)
    }
}

fn one() -> f64 {
    1.0
}
fn text_field() -> String {
    "text".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepConfig {
    Normalize(NormalizeConfig),
    Language(LanguageConfig),
    GopherRepetition(GopherRepetitionConfig),
    GopherQuality(GopherQualityConfig),
    C4(C4Config),
    Fineweb(FineWebConfig),
    Code(CodeConfig),
    QualityClassifier(ClassifierStepConfig),
    Perplexity(PerplexityConfig),
    ExactDedup(Empty),
    LineDedup(LineDedupConfig),
    MinhashDedup(MinHashConfig),
    Decontaminate(DecontamConfig),
    Privacy(PrivacyConfig),
    /// Remove the documents whose ids are listed (one per line) in `list`: the filter stage of
    /// distributed near-duplicate removal (`ferrolm data minhash clusters` writes the list).
    RemoveIds { list: PathBuf },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Empty {}

/// One `[[step]]`: its kind and settings, and optionally the sources it applies to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepEntry {
    #[serde(flatten)]
    pub step: StepConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<String>>,
}

impl StepEntry {
    pub fn all(step: StepConfig) -> Self {
        Self { step, sources: None }
    }
    pub fn only(step: StepConfig, sources: &[&str]) -> Self {
        Self { step, sources: Some(sources.iter().map(|s| s.to_string()).collect()) }
    }

    pub fn build(&self) -> Result<Scoped> {
        let step: Box<dyn Step> = match &self.step {
            StepConfig::Normalize(c) => Box::new(Normalizer::new(c.clone())),
            StepConfig::Language(c) => Box::new(LanguageFilter::new(c.clone())),
            StepConfig::GopherRepetition(c) => Box::new(GopherRepetition::new(c.clone())),
            StepConfig::GopherQuality(c) => Box::new(GopherQuality::new(c.clone())),
            StepConfig::C4(c) => Box::new(C4Filter::new(c.clone())),
            StepConfig::Fineweb(c) => Box::new(FineWebFilter::new(c.clone())),
            StepConfig::Code(c) => Box::new(CodeFilter::new(c.clone())),
            StepConfig::QualityClassifier(c) => Box::new(QualityClassifierFilter::new(c)?),
            StepConfig::Perplexity(c) => Box::new(PerplexityFilter::new(c.clone())?),
            StepConfig::ExactDedup(_) => Box::new(ExactDedup::new()),
            StepConfig::LineDedup(c) => Box::new(LineDedup::new(c.clone())),
            StepConfig::MinhashDedup(c) => {
                if c.bands == 0 || c.rows == 0 || c.ngram == 0 {
                    return Err(CorpusError::Config("minhash_dedup: bands, rows and ngram must be positive".into()));
                }
                Box::new(MinHashDedup::new(c.clone()))
            }
            StepConfig::Decontaminate(c) => Box::new(Decontaminator::new(c.clone())?),
            StepConfig::Privacy(c) => Box::new(PrivacyScrubber::new(c.clone())),
            StepConfig::RemoveIds { list } => Box::new(RemoveIds { ids: crate::steps::minhash::read_remove_list(list)? }),
        };
        Ok(Scoped { step, sources: self.sources.clone() })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PipelineConfig {
    #[serde(rename = "source")]
    pub sources: Vec<SourceConfig>,
    #[serde(rename = "step")]
    pub steps: Vec<StepEntry>,
    /// Mix sources by their `weight` (to `mix_target_bytes`, default: the kept total).
    pub mix: bool,
    pub mix_target_bytes: Option<u64>,
    /// Documents per parallel batch (memory is bounded by a few batches).
    pub batch_docs: usize,
    pub batch_bytes: usize,
    /// Examples kept per removal reason in the report.
    pub examples_per_reason: usize,
    /// Write `excluded/` (every removed document with step and reason).
    pub write_excluded: bool,
    /// Format of `kept/` and Parquet settings (`[output]`).
    pub output: OutputConfig,
}

/// Format of the cleaned documents: `kept/` (JSONL) and/or `kept-parquet/` (Parquet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KeptFormat {
    /// `kept/part-TAG.jsonl`: one JSON document a line.
    #[default]
    Jsonl,
    /// `kept-parquet/part-TAG.parquet`: columns id, text, source, meta (JSON string).
    Parquet,
    /// Both of the above.
    Both,
}

impl KeptFormat {
    pub fn jsonl(self) -> bool {
        matches!(self, Self::Jsonl | Self::Both)
    }
    pub fn parquet(self) -> bool {
        matches!(self, Self::Parquet | Self::Both)
    }
}

/// `[output]`: `kept_format = "jsonl" | "parquet" | "both"` and `[output.parquet]`
/// (`row_group_docs`, `row_group_bytes`, `compression = "zstd" | "snappy" | "gzip" | "none"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    pub kept_format: KeptFormat,
    pub parquet: crate::write_parquet::ParquetWriteOptions,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            sources: Vec::new(),
            steps: Vec::new(),
            mix: false,
            mix_target_bytes: None,
            batch_docs: 4096,
            batch_bytes: 64 << 20,
            examples_per_reason: 3,
            write_excluded: true,
            output: OutputConfig::default(),
        }
    }
}

impl PipelineConfig {
    /// `ferrolm data build --input ...`: normalise, language, quality (Gopher + FineWeb on prose,
    /// code rules on code), exact and near-duplicate removal, privacy.
    pub fn default_pipeline() -> Self {
        use StepConfig as S;
        Self {
            steps: vec![
                StepEntry::all(S::Normalize(Default::default())),
                StepEntry::only(S::Code(Default::default()), &["code"]),
                StepEntry::only(S::Language(Default::default()), &["prose"]),
                StepEntry::only(S::GopherRepetition(Default::default()), &["prose"]),
                StepEntry::only(S::GopherQuality(Default::default()), &["prose"]),
                StepEntry::only(S::Fineweb(Default::default()), &["prose"]),
                StepEntry::all(S::ExactDedup(Empty {})),
                StepEntry::all(S::MinhashDedup(Default::default())),
                StepEntry::all(S::Privacy(Default::default())),
            ],
            ..Default::default()
        }
    }

    /// For the quickstart's Cargo-registry corpus (sources "code" and "prose"). Licence files and
    /// vendored copies are the exact and near duplicates; authors' e-mails the private data.
    /// Web-prose rules (stop words, terminal punctuation, Gopher repetition) would remove most Rust
    /// documentation (doc comments repeat `# Examples` and code lines by design), so prose gets
    /// language identification (long documents only) and a lenient Gopher length/symbol floor.
    pub fn quickstart_default() -> Self {
        use StepConfig as S;
        let prose_quality = GopherQualityConfig {
            min_doc_words: 5,
            min_stop_words: 0,
            max_symbol_word_ratio: 0.5,
            max_non_alpha_words_ratio: 0.5,
            max_bullet_lines_ratio: 0.0,
            ..Default::default()
        };
        Self {
            steps: vec![
                StepEntry::all(S::Normalize(Default::default())),
                StepEntry::only(S::Code(Default::default()), &["code"]),
                StepEntry::only(S::Language(LanguageConfig { min_confidence: 0.0, skip_shorter_than: 200, ..Default::default() }), &["prose"]),
                StepEntry::only(S::GopherQuality(prose_quality), &["prose"]),
                StepEntry::all(S::ExactDedup(Empty {})),
                StepEntry::all(S::MinhashDedup(Default::default())),
                StepEntry::only(S::LineDedup(LineDedupConfig { min_chars: 40, ..Default::default() }), &["prose"]),
                StepEntry::all(S::Privacy(PrivacyConfig { kinds: PiiKind::ALL.to_vec(), ..Default::default() })),
            ],
            ..Default::default()
        }
    }

    /// Parse a merged TOML value (from `ferrolm_common::config::load_config`).
    pub fn from_toml(value: &toml::Value) -> Result<Self> {
        let cfg: Self = ferrolm_common::config::typed(value).map_err(|e| CorpusError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.output.parquet.row_group_docs == 0 {
            return Err(CorpusError::Config("output.parquet.row_group_docs must be positive".into()));
        }
        if self.batch_docs == 0 {
            return Err(CorpusError::Config("batch_docs must be positive".into()));
        }
        for (i, s) in self.sources.iter().enumerate() {
            match s.source_kind()? {
                SourceKind::Hub => {
                    let repo = s.repo.as_deref().unwrap_or("");
                    let parts: Vec<&str> = repo.split('/').collect();
                    if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
                        return Err(CorpusError::Config(format!("source {} ({:?}): type = \"hub\" needs `repo = \"owner/name\"` (got {repo:?})", i + 1, s.name)));
                    }
                    if !s.paths.is_empty() || s.cargo_lock.is_some() || !s.include.is_empty() {
                        return Err(CorpusError::Config(format!(
                            "source {:?}: a hub source takes `files` (globs over the repository paths), not `paths`, `cargo_lock` or `include`",
                            s.name
                        )));
                    }
                    if !s.files.is_empty() && (s.config.is_some() || s.split.is_some()) {
                        return Err(CorpusError::Config(format!("source {:?}: give either `files` or `config`/`split`, not both", s.name)));
                    }
                    crate::read::PathFilter::new(&s.files, &s.exclude)?;
                }
                _ if s.paths.is_empty() && s.cargo_lock.is_none() => {
                    return Err(CorpusError::Config(format!("source {} ({:?}) has neither `paths`, `cargo_lock` nor `repo`", i + 1, s.name)));
                }
                _ => {
                    let hub_only = [("repo", s.repo.is_some()), ("revision", s.revision.is_some()), ("config", s.config.is_some()), ("split", s.split.is_some()), ("files", !s.files.is_empty()), ("endpoint", s.endpoint.is_some()), ("cache_dir", s.cache_dir.is_some())];
                    if let Some((key, _)) = hub_only.iter().find(|(_, set)| *set) {
                        return Err(CorpusError::Config(format!("source {:?}: `{key}` is for type = \"hub\" sources only", s.name)));
                    }
                    crate::read::PathFilter::new(&s.include, &s.exclude)?;
                }
            }
            if s.weight < 0.0 {
                return Err(CorpusError::Config(format!("source {:?}: weight must not be negative", s.name)));
            }
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# could not render config: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_with_scoped_steps() {
        let text = r#"
mix = true
[[source]]
name = "web"
paths = ["data/web"]
weight = 2.0
[[step]]
kind = "normalize"
[[step]]
kind = "gopher_quality"
min_doc_words = 20
sources = ["web"]
[[step]]
kind = "minhash_dedup"
bands = 16
[[step]]
kind = "exact_dedup"
"#;
        let v: toml::Value = toml::Value::Table(text.parse().unwrap());
        let c = PipelineConfig::from_toml(&v).unwrap();
        assert_eq!(c.sources[0].weight, 2.0);
        assert_eq!(c.steps.len(), 4);
        match &c.steps[1].step {
            StepConfig::GopherQuality(g) => assert_eq!(g.min_doc_words, 20),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.steps[1].sources.as_deref(), Some(&["web".to_string()][..]));
        let again = PipelineConfig::from_toml(&toml::Value::Table(c.to_toml().parse().unwrap())).unwrap();
        assert_eq!(again.steps.len(), 4);
        // Presets survive the TOML round trip the CLI does to apply --set overrides.
        let q = PipelineConfig::quickstart_default();
        let q2 = PipelineConfig::from_toml(&toml::Value::Table(q.to_toml().parse().unwrap())).unwrap();
        assert_eq!(format!("{:?}", q.steps), format!("{:?}", q2.steps));
        let bad: toml::Value = toml::Value::Table("[[step]]\nkind = \"nope\"\n".parse().unwrap());
        assert!(PipelineConfig::from_toml(&bad).unwrap_err().to_string().contains("nope"));
    }
}
