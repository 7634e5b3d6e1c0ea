//! Readers: files and folders to a stream of [`ReadItem`]s (documents or rejections).
//!
//! Every input is visited in a deterministic order (paths sorted byte-wise), so the same
//! inputs give the same document sequence on every machine. Line-oriented formats stream
//! record by record; whole-file formats hold one file at a time, so memory is bounded by
//! the largest single file, not the corpus.

pub mod cargo;
pub mod rust_docs;

use crate::{io_err, CorpusError, Document, Rejection, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// How to read inputs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadOptions {
    /// JSONL field holding the text.
    pub text_field: String,
    /// JSONL field holding the id (falls back to `file:line`).
    pub id_field: Option<String>,
    /// Overrides the source name of every document read; otherwise JSONL's `source` field,
    /// else "code" for code files and "prose" for text/Markdown.
    pub source: Option<String>,
    /// Rejections kept verbatim in [`ReadStats::examples`] (all are counted).
    pub max_examples: usize,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self { text_field: "text".into(), id_field: Some("id".into()), source: None, max_examples: 1000 }
    }
}

/// Totals of a read: what came in, what was malformed and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReadStats {
    pub files: u64,
    /// Files under a folder whose extension is not a supported format (not documents, so not rejections).
    pub skipped_files: u64,
    pub documents: u64,
    pub bytes: u64,
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// The first `max_examples` rejections, with file, line and reason.
    pub examples: Vec<Rejection>,
    /// Crates named in a Cargo.lock but absent from the registry (cargo reader only).
    pub missing_crates: Vec<String>,
}

impl ReadStats {
    fn record(&mut self, item: &ReadItem, max_examples: usize) {
        match item {
            ReadItem::Doc(d) => {
                self.documents += 1;
                self.bytes += d.text.len() as u64;
            }
            ReadItem::Rejected(r) => {
                self.rejected += 1;
                *self.rejected_by_reason.entry(r.reason.clone()).or_default() += 1;
                if self.examples.len() < max_examples {
                    self.examples.push(r.clone());
                }
            }
        }
    }

    pub fn merge(&mut self, other: &ReadStats, max_examples: usize) {
        self.files += other.files;
        self.skipped_files += other.skipped_files;
        self.documents += other.documents;
        self.bytes += other.bytes;
        self.rejected += other.rejected;
        for (k, v) in &other.rejected_by_reason {
            *self.rejected_by_reason.entry(k.clone()).or_default() += v;
        }
        for e in &other.examples {
            if self.examples.len() < max_examples {
                self.examples.push(e.clone());
            }
        }
        self.missing_crates.extend(other.missing_crates.iter().cloned());
    }
}

/// One item of a read: a document, or a malformed record with its reason.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadItem {
    Doc(Document),
    Rejected(Rejection),
}

/// How one file becomes documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// The whole file is one document of this source.
    Whole { source: String },
    /// One JSON object per line.
    Jsonl,
    /// A Rust file: the file is a "code" document and its `//!`/`///` doc comments a "prose" one.
    RustWithDocs,
}

/// A file to read, with the id prefix and metadata its documents carry.
#[derive(Debug, Clone)]
pub struct FileSpec {
    pub path: PathBuf,
    pub kind: FileKind,
    /// Document ids are `{id}` (whole files) or `{id}:{line}` (JSONL).
    pub id: String,
    pub meta: serde_json::Map<String, serde_json::Value>,
}

const CODE_EXTENSIONS: &[&str] = &[
    "rs", "py", "c", "h", "cc", "cpp", "cxx", "hpp", "hh", "js", "mjs", "ts", "tsx", "jsx", "go", "java",
    "kt", "scala", "swift", "rb", "php", "cs", "lua", "sh", "bash", "zsh", "pl", "r", "jl", "hs", "ml",
    "mli", "ex", "exs", "erl", "clj", "sql", "zig", "nim", "dart", "m", "mm", "f90", "toml", "yaml", "yml",
];
const PROSE_EXTENSIONS: &[&str] = &["txt", "md", "markdown", "rst", "text", "org", "adoc", "tex"];

/// Strip a compression suffix: ("data.jsonl.gz") -> ("data.jsonl", Some("gz")).
fn split_compression(name: &str) -> (&str, Option<&'static str>) {
    if let Some(s) = name.strip_suffix(".gz") {
        (s, Some("gz"))
    } else if let Some(s) = name.strip_suffix(".zst") {
        (s, Some("zst"))
    } else if let Some(s) = name.strip_suffix(".zstd") {
        (s, Some("zst"))
    } else {
        (name, None)
    }
}

/// The reading kind of a file from its name, or None when the format is not supported.
pub fn kind_for_name(name: &str) -> Option<FileKind> {
    let (inner, _) = split_compression(name);
    let ext = Path::new(inner).extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("jsonl") | Some("ndjson") => Some(FileKind::Jsonl),
        Some(e) if PROSE_EXTENSIONS.contains(&e) => Some(FileKind::Whole { source: "prose".into() }),
        Some(e) if CODE_EXTENSIONS.contains(&e) => Some(FileKind::Whole { source: "code".into() }),
        _ => None,
    }
}

/// Open a file, transparently decompressing `.gz` (all members) and `.zst`.
pub fn open_decompressed(path: &Path) -> Result<Box<dyn Read + Send>> {
    let f = File::open(path).map_err(io_err(path))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    Ok(match split_compression(name).1 {
        Some("gz") => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(f))),
        Some(_) => Box::new(zstd::stream::read::Decoder::new(f).map_err(io_err(path))?),
        None => Box::new(f),
    })
}

/// Expand files and folders into [`FileSpec`]s in deterministic order. Folders are walked
/// recursively (sorted by name); their files with unsupported extensions are counted in
/// `skipped`. A file named explicitly is always read: as its extension says, else as prose.
pub fn expand_paths(paths: &[PathBuf]) -> Result<(Vec<FileSpec>, u64)> {
    let mut specs = Vec::new();
    let mut skipped = 0;
    for root in paths {
        let md = std::fs::metadata(root).map_err(io_err(root))?;
        if md.is_file() {
            let name = root.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let kind = kind_for_name(name).unwrap_or(FileKind::Whole { source: "prose".into() });
            specs.push(spec_for(root, kind));
            continue;
        }
        for entry in walkdir::WalkDir::new(root).follow_links(true).sort_by_file_name() {
            let entry = entry.map_err(|e| CorpusError::Invalid {
                path: e.path().map(Path::to_path_buf).unwrap_or_else(|| root.clone()),
                message: e.to_string(),
            })?;
            if !entry.file_type().is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy();
            if name.starts_with('.') {
                continue; // hidden files, including our own atomic-write temporaries
            }
            match kind_for_name(&name) {
                Some(kind) => specs.push(spec_for(entry.path(), kind)),
                None => skipped += 1,
            }
        }
    }
    Ok((specs, skipped))
}

fn spec_for(path: &Path, kind: FileKind) -> FileSpec {
    let mut meta = serde_json::Map::new();
    meta.insert("path".into(), path.display().to_string().into());
    FileSpec { path: path.to_path_buf(), kind, id: path.display().to_string(), meta }
}

/// Read files or folders into memory. See [`DocumentStream`] for the streaming form.
pub fn read_paths(paths: &[PathBuf], opts: &ReadOptions) -> Result<(Vec<Document>, ReadStats)> {
    let mut stream = DocumentStream::from_paths(paths, opts.clone())?;
    let docs = stream.by_ref().filter_map(|i| if let ReadItem::Doc(d) = i { Some(d) } else { None }).collect();
    Ok((docs, stream.into_stats()))
}

/// Streaming reader: yields documents and rejections one at a time, file by file, in order.
/// Statistics accumulate as items are yielded; take them with [`DocumentStream::stats`].
pub struct DocumentStream {
    files: VecDeque<FileSpec>,
    opts: ReadOptions,
    pending: VecDeque<ReadItem>,
    lines: Option<JsonlState>,
    stats: ReadStats,
}

struct JsonlState {
    spec: FileSpec,
    reader: Box<dyn BufRead + Send>,
    line: u64,
    buf: Vec<u8>,
}

impl DocumentStream {
    pub fn from_paths(paths: &[PathBuf], opts: ReadOptions) -> Result<Self> {
        let (specs, skipped) = expand_paths(paths)?;
        let mut s = Self::from_specs(specs, opts);
        s.stats.skipped_files = skipped;
        Ok(s)
    }

    pub fn from_specs(specs: Vec<FileSpec>, opts: ReadOptions) -> Self {
        Self { files: specs.into(), opts, pending: VecDeque::new(), lines: None, stats: ReadStats::default() }
    }

    pub fn stats(&self) -> &ReadStats {
        &self.stats
    }

    pub fn stats_mut(&mut self) -> &mut ReadStats {
        &mut self.stats
    }

    pub fn into_stats(self) -> ReadStats {
        self.stats
    }

    fn reject(file: &Path, line: Option<u64>, reason: &str, detail: impl std::fmt::Display) -> ReadItem {
        ReadItem::Rejected(Rejection {
            file: file.display().to_string(),
            line,
            reason: reason.into(),
            detail: detail.to_string(),
        })
    }

    /// Reason for an I/O error while decompressing/reading: a short read is a truncated archive.
    fn io_reason(e: &std::io::Error, compressed: bool) -> &'static str {
        use std::io::ErrorKind::*;
        if (compressed || matches!(e.kind(), UnexpectedEof)) && matches!(e.kind(), UnexpectedEof | InvalidData | InvalidInput | Other) {
            return "truncated_archive";
        }
        "io_error"
    }

    fn is_compressed(path: &Path) -> bool {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        split_compression(name).1.is_some()
    }

    /// Open the next file, queueing its documents (whole files) or setting up line reading.
    fn open_next(&mut self) -> bool {
        let Some(spec) = self.files.pop_front() else { return false };
        self.stats.files += 1;
        let compressed = Self::is_compressed(&spec.path);
        let reader = match open_decompressed(&spec.path) {
            Ok(r) => r,
            Err(e) => {
                self.pending.push_back(Self::reject(&spec.path, None, "io_error", e));
                return true;
            }
        };
        if spec.kind == FileKind::Jsonl {
            self.lines = Some(JsonlState { spec, reader: Box::new(BufReader::with_capacity(1 << 16, reader)), line: 0, buf: Vec::new() });
            return true;
        }
        let mut bytes = Vec::new();
        let mut reader = reader;
        if let Err(e) = reader.read_to_end(&mut bytes) {
            let reason = Self::io_reason(&e, compressed);
            self.pending.push_back(Self::reject(&spec.path, None, reason, e));
            return true;
        }
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                self.pending.push_back(Self::reject(&spec.path, None, "bad_utf8", format!("invalid UTF-8 at byte {at}")));
                return true;
            }
        };
        match &spec.kind {
            FileKind::Whole { source } => {
                let source = self.opts.source.clone().unwrap_or_else(|| source.clone());
                let mut d = Document::new(spec.id.clone(), text, source);
                d.meta = spec.meta.clone();
                self.pending.push_back(ReadItem::Doc(d));
            }
            FileKind::RustWithDocs => {
                let docs = rust_docs::extract_doc_comments(&text);
                let mut code = Document::new(spec.id.clone(), text, self.opts.source.clone().unwrap_or_else(|| "code".into()));
                code.meta = spec.meta.clone();
                code.meta.insert("kind".into(), "rust".into());
                self.pending.push_back(ReadItem::Doc(code));
                if !docs.trim().is_empty() {
                    let mut prose = Document::new(format!("{}#doc", spec.id), docs, self.opts.source.clone().unwrap_or_else(|| "prose".into()));
                    prose.meta = spec.meta.clone();
                    prose.meta.insert("kind".into(), "doc_comments".into());
                    self.pending.push_back(ReadItem::Doc(prose));
                }
            }
            FileKind::Jsonl => unreachable!("handled above"),
        }
        true
    }

    /// Next record of the open JSONL file; None at its end.
    fn next_line(&mut self) -> Option<ReadItem> {
        let st = self.lines.as_mut()?;
        loop {
            st.buf.clear();
            st.line += 1;
            let path = st.spec.path.clone();
            match st.reader.read_until(b'\n', &mut st.buf) {
                Ok(0) => {
                    self.lines = None;
                    return None;
                }
                Ok(_) => {}
                Err(e) => {
                    let reason = Self::io_reason(&e, Self::is_compressed(&path));
                    let line = st.line;
                    self.lines = None; // the rest of the stream is unreadable
                    return Some(Self::reject(&path, Some(line), reason, e));
                }
            }
            let raw = st.buf.strip_suffix(b"\n").unwrap_or(&st.buf);
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue; // blank lines separate nothing and carry nothing
            }
            let line = st.line;
            let text = match std::str::from_utf8(raw) {
                Ok(t) => t,
                Err(e) => {
                    return Some(Self::reject(&path, Some(line), "bad_utf8", format!("invalid UTF-8 at byte {} of the line", e.valid_up_to())))
                }
            };
            let mut obj: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(text) {
                Ok(serde_json::Value::Object(o)) => o,
                Ok(_) => return Some(Self::reject(&path, Some(line), "broken_json", "line is JSON but not an object")),
                Err(e) => return Some(Self::reject(&path, Some(line), "broken_json", e)),
            };
            let field = &self.opts.text_field;
            let text = match obj.remove(field) {
                Some(serde_json::Value::String(s)) => s,
                Some(other) => {
                    let kind = match other {
                        serde_json::Value::Null => "null",
                        serde_json::Value::Bool(_) => "a boolean",
                        serde_json::Value::Number(_) => "a number",
                        serde_json::Value::Array(_) => "an array",
                        _ => "an object",
                    };
                    return Some(Self::reject(&path, Some(line), "field_not_string", format!("field `{field}` is {kind}, not a string")));
                }
                None => return Some(Self::reject(&path, Some(line), "missing_field", format!("no field `{field}`"))),
            };
            let id = self
                .opts
                .id_field
                .as_ref()
                .and_then(|f| obj.get(f))
                .and_then(|v| match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .unwrap_or_else(|| format!("{}:{}", st.spec.id, line));
            let source = self
                .opts
                .source
                .clone()
                .or_else(|| obj.get("source").and_then(|v| v.as_str()).map(str::to_string))
                .unwrap_or_else(|| "prose".into());
            let mut meta = st.spec.meta.clone();
            meta.insert("line".into(), line.into());
            for (k, v) in obj {
                meta.entry(k).or_insert(v);
            }
            return Some(ReadItem::Doc(Document { id, text, source, meta }));
        }
    }
}

impl Iterator for DocumentStream {
    type Item = ReadItem;

    fn next(&mut self) -> Option<ReadItem> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                self.stats.record(&item, self.opts.max_examples);
                return Some(item);
            }
            if self.lines.is_some() {
                if let Some(item) = self.next_line() {
                    self.stats.record(&item, self.opts.max_examples);
                    return Some(item);
                }
                continue;
            }
            if !self.open_next() {
                return None;
            }
        }
    }
}
