//! Readers: files and folders to a stream of [`ReadItem`]s (documents or rejections).
//!
//! Every input is visited in a deterministic order (paths sorted byte-wise), so the same
//! inputs give the same document sequence on every machine. Line-oriented formats stream
//! record by record; whole-file formats hold one file at a time, so memory is bounded by
//! the largest single file, not the corpus.

pub mod cargo;
pub mod hub;
pub mod parquet;
pub mod rust_docs;

use crate::{io_err, CorpusError, Document, Rejection, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use rayon::prelude::*;

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
                self.rejected += r.records;
                *self.rejected_by_reason.entry(r.reason.clone()).or_default() += r.records;
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
    /// A Parquet file (Hugging Face datasets' format): one document per row, text from the
    /// `text_field` column, read one row group at a time.
    Parquet,
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
        // Parquet compresses its pages itself; a .parquet.gz is not a Parquet reader's input.
        Some("parquet") if inner == name => Some(FileKind::Parquet),
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

/// Which files under a folder are read: `include` globs (any must match; none = every file) and
/// `exclude` globs (none may match), both matched against the path relative to the folder
/// root with `/` separators. `*` and `?` do not cross `/`; `**` does (`**/*.md` = Markdown at
/// any depth, `*.md` = at the root only). An exclude glob that matches a directory drops
/// everything below it (`exclude = ["vendor", "**/target"]`). Files named explicitly in
/// `paths` are always read.
#[derive(Debug, Clone, Default)]
pub struct PathFilter {
    include: Option<globset::GlobSet>,
    exclude: Option<globset::GlobSet>,
}

impl PathFilter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        fn set(globs: &[String], what: &str) -> Result<Option<globset::GlobSet>> {
            if globs.is_empty() {
                return Ok(None);
            }
            let mut b = globset::GlobSetBuilder::new();
            for g in globs {
                let glob = globset::GlobBuilder::new(g)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map_err(|e| CorpusError::Config(format!("{what} glob {g:?}: {e}")))?;
                b.add(glob);
            }
            b.build().map(Some).map_err(|e| CorpusError::Config(format!("{what} globs: {e}")))
        }
        Ok(Self { include: set(include, "include")?, exclude: set(exclude, "exclude")? })
    }

    pub fn is_empty(&self) -> bool {
        self.include.is_none() && self.exclude.is_none()
    }

    fn excluded(&self, rel: &str) -> bool {
        self.exclude.as_ref().is_some_and(|g| g.is_match(rel))
    }

    /// Whether a file at `rel` (relative to its folder root, `/`-separated) is read.
    pub fn accepts(&self, rel: &str) -> bool {
        !self.excluded(rel) && self.include.as_ref().is_none_or(|g| g.is_match(rel))
    }
}

/// `path` relative to `root`, with `/` separators whatever the platform.
fn relative_slash(path: &Path, root: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// Expand files and folders into [`FileSpec`]s in deterministic order. Folders are walked
/// recursively (sorted by name); their files with unsupported extensions are counted in
/// `skipped`. A file named explicitly is always read: as its extension says, else as prose.
pub fn expand_paths(paths: &[PathBuf]) -> Result<(Vec<FileSpec>, u64)> {
    expand_paths_filtered(paths, &PathFilter::default())
}

/// [`expand_paths`] with include/exclude globs applied to the files found under folders.
/// Files left out by the globs are not counted anywhere (the user chose them away); files
/// the globs keep but whose format is unsupported are counted in `skipped`.
pub fn expand_paths_filtered(paths: &[PathBuf], filter: &PathFilter) -> Result<(Vec<FileSpec>, u64)> {
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
        let walk = walkdir::WalkDir::new(root).follow_links(true).sort_by_file_name().into_iter().filter_entry(|e| {
            // Prune excluded directories (not the root itself) instead of walking them.
            e.depth() == 0 || !e.file_type().is_dir() || !filter.excluded(&relative_slash(e.path(), root))
        });
        for entry in walk {
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
            if !filter.is_empty() && !filter.accepts(&relative_slash(entry.path(), root)) {
                continue;
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

/// JSONL is cut into blocks of whole lines of about this size, each parsed as one parallel task.
const LINE_BLOCK_BYTES: usize = 1 << 20;
/// A wave (the units parsed in parallel at once) stops growing at this many input bytes or
/// units, which bounds the reader's memory to about one wave of raw input plus its documents.
const WAVE_BYTES: usize = 32 << 20;
const WAVE_UNITS: usize = 4096;

/// One independent piece of parsing work. Units are cut serially (cheap: file listing,
/// decompression, splitting at newlines) and parsed in parallel; their items keep unit order.
enum Unit {
    /// A whole-file document (or Rust file + doc comments): open, read, decode, extract.
    Whole(FileSpec),
    /// Complete JSONL lines starting at 1-based line `first_line`.
    Lines { spec: Arc<FileSpec>, first_line: u64, bytes: Vec<u8> },
    /// Row group `group` of a Parquet file.
    ParquetGroup { file: Arc<parquet::ParquetSource>, group: usize },
    /// Items already decided while cutting (e.g. an unreadable file).
    Ready(Vec<ReadItem>),
}

/// A line-oriented or row-group file being cut into units.
enum OpenFile {
    Lines { spec: Arc<FileSpec>, reader: Box<dyn Read + Send>, carry: Vec<u8>, next_line: u64, compressed: bool },
    Parquet { file: Arc<parquet::ParquetSource>, next_group: usize },
}

/// Streaming reader: yields documents and rejections in input order (files in order, records in
/// file order), whatever the number of threads. Parsing runs on rayon's pool in waves of units
/// (whole files, blocks of JSONL lines, Parquet row groups), so reading scales with cores while
/// memory stays bounded by one wave. Statistics accumulate as items are yielded.
pub struct DocumentStream {
    files: VecDeque<FileSpec>,
    opts: ReadOptions,
    pending: VecDeque<ReadItem>,
    open: Option<OpenFile>,
    stats: ReadStats,
}

impl DocumentStream {
    pub fn from_paths(paths: &[PathBuf], opts: ReadOptions) -> Result<Self> {
        let (specs, skipped) = expand_paths(paths)?;
        let mut s = Self::from_specs(specs, opts);
        s.stats.skipped_files = skipped;
        Ok(s)
    }

    pub fn from_specs(specs: Vec<FileSpec>, opts: ReadOptions) -> Self {
        Self { files: specs.into(), opts, pending: VecDeque::new(), open: None, stats: ReadStats::default() }
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

    /// Cut the next unit, or None when every file is done.
    fn next_unit(&mut self) -> Option<(Unit, usize)> {
        loop {
            match self.open.take() {
                Some(OpenFile::Lines { spec, mut reader, mut carry, next_line, compressed }) => {
                    // Fill a block, then hand over everything up to its last newline.
                    let mut buf = std::mem::take(&mut carry);
                    let mut failed = None;
                    let mut eof = false;
                    // A carried line longer than a block still gets more input.
                    let target = LINE_BLOCK_BYTES.max(buf.len() + (1 << 16));
                    while buf.len() < target {
                        let at = buf.len();
                        buf.resize(target, 0);
                        match reader.read(&mut buf[at..]) {
                            Ok(0) => {
                                buf.truncate(at);
                                eof = true;
                                break;
                            }
                            Ok(n) => buf.truncate(at + n),
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => buf.truncate(at),
                            Err(e) => {
                                buf.truncate(at);
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    if failed.is_none() && !eof {
                        // Keep the unfinished last line for the next block.
                        let cut = buf.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
                        if cut == 0 {
                            // One line longer than a block: keep reading it.
                            self.open = Some(OpenFile::Lines { spec, reader, carry: buf, next_line, compressed });
                            continue;
                        }
                        let rest = buf.split_off(cut);
                        let lines = count_lines(&buf);
                        let n = buf.len();
                        self.open = Some(OpenFile::Lines { spec: spec.clone(), reader, carry: rest, next_line: next_line + lines, compressed });
                        return Some((Unit::Lines { spec, first_line: next_line, bytes: buf }, n));
                    }
                    let n = buf.len();
                    let mut items = Vec::new();
                    if let Some(e) = failed {
                        // The complete lines before the failure are still good; the rest is lost.
                        let cut = buf.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
                        buf.truncate(cut);
                        let lost_line = next_line + count_lines(&buf);
                        let reason = io_reason(&e, compressed);
                        items.push(reject(&spec.path, Some(lost_line), reason, e));
                    }
                    let unit = Unit::Lines { spec, first_line: next_line, bytes: buf };
                    return Some(if items.is_empty() {
                        (unit, n)
                    } else {
                        // Lines first, then the rejection: parse them together to keep the order.
                        let mut all = parse_unit(unit, &self.opts);
                        all.extend(items);
                        (Unit::Ready(all), n)
                    });
                }
                Some(OpenFile::Parquet { file, next_group }) => {
                    if next_group >= file.groups() {
                        continue;
                    }
                    let n = file.group_bytes(next_group);
                    self.open = Some(OpenFile::Parquet { file: file.clone(), next_group: next_group + 1 });
                    return Some((Unit::ParquetGroup { file, group: next_group }, n));
                }
                None => {}
            }
            let spec = self.files.pop_front()?;
            self.stats.files += 1;
            match spec.kind {
                FileKind::Whole { .. } | FileKind::RustWithDocs => {
                    let n = std::fs::metadata(&spec.path).map(|m| m.len() as usize).unwrap_or(0);
                    return Some((Unit::Whole(spec), n));
                }
                FileKind::Jsonl => match open_decompressed(&spec.path) {
                    Ok(reader) => {
                        let compressed = is_compressed(&spec.path);
                        self.open = Some(OpenFile::Lines { spec: Arc::new(spec), reader, carry: Vec::new(), next_line: 1, compressed });
                    }
                    Err(e) => return Some((Unit::Ready(vec![reject(&spec.path, None, "io_error", e)]), 0)),
                },
                FileKind::Parquet => match parquet::ParquetSource::open(spec, &self.opts) {
                    Ok(file) => self.open = Some(OpenFile::Parquet { file: Arc::new(file), next_group: 0 }),
                    Err(r) => return Some((Unit::Ready(vec![ReadItem::Rejected(r)]), 0)),
                },
            }
        }
    }

    /// Cut a wave of units and parse them in parallel into `pending`, in order.
    fn fill(&mut self) -> bool {
        let mut units = Vec::new();
        let mut bytes = 0;
        while bytes < WAVE_BYTES && units.len() < WAVE_UNITS {
            match self.next_unit() {
                Some((u, n)) => {
                    units.push(u);
                    bytes += n.max(1);
                }
                None => break,
            }
        }
        if units.is_empty() {
            return false;
        }
        let opts = &self.opts;
        let parsed: Vec<Vec<ReadItem>> = units.into_par_iter().map(|u| parse_unit(u, opts)).collect();
        self.pending.extend(parsed.into_iter().flatten());
        true
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
            if !self.fill() {
                return None;
            }
        }
    }
}

fn count_lines(b: &[u8]) -> u64 {
    b.iter().filter(|&&c| c == b'\n').count() as u64
}

pub(crate) fn reject(file: &Path, line: Option<u64>, reason: &str, detail: impl std::fmt::Display) -> ReadItem {
    ReadItem::Rejected(Rejection { file: file.display().to_string(), line, reason: reason.into(), detail: detail.to_string(), records: 1 })
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

fn parse_unit(unit: Unit, opts: &ReadOptions) -> Vec<ReadItem> {
    match unit {
        Unit::Whole(spec) => parse_whole(&spec, opts),
        Unit::Lines { spec, first_line, bytes } => parse_lines(&spec, first_line, &bytes, opts),
        Unit::ParquetGroup { file, group } => file.read_group(group, opts),
        Unit::Ready(items) => items,
    }
}

fn parse_whole(spec: &FileSpec, opts: &ReadOptions) -> Vec<ReadItem> {
    let mut reader = match open_decompressed(&spec.path) {
        Ok(r) => r,
        Err(e) => return vec![reject(&spec.path, None, "io_error", e)],
    };
    let mut bytes = Vec::new();
    if let Err(e) = reader.read_to_end(&mut bytes) {
        return vec![reject(&spec.path, None, io_reason(&e, is_compressed(&spec.path)), e)];
    }
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            return vec![reject(&spec.path, None, "bad_utf8", format!("invalid UTF-8 at byte {at}"))];
        }
    };
    let mut out = Vec::with_capacity(2);
    match &spec.kind {
        FileKind::RustWithDocs => {
            let docs = rust_docs::extract_doc_comments(&text);
            let mut code = Document::new(spec.id.clone(), text, opts.source.clone().unwrap_or_else(|| "code".into()));
            code.meta = spec.meta.clone();
            code.meta.insert("kind".into(), "rust".into());
            out.push(ReadItem::Doc(code));
            if !docs.trim().is_empty() {
                let mut prose = Document::new(format!("{}#doc", spec.id), docs, opts.source.clone().unwrap_or_else(|| "prose".into()));
                prose.meta = spec.meta.clone();
                prose.meta.insert("kind".into(), "doc_comments".into());
                out.push(ReadItem::Doc(prose));
            }
        }
        FileKind::Whole { source } => {
            let mut d = Document::new(spec.id.clone(), text, opts.source.clone().unwrap_or_else(|| source.clone()));
            d.meta = spec.meta.clone();
            out.push(ReadItem::Doc(d));
        }
        FileKind::Jsonl | FileKind::Parquet => unreachable!("line and row-group formats are cut into their own units"),
    }
    out
}

fn parse_lines(spec: &FileSpec, first_line: u64, bytes: &[u8], opts: &ReadOptions) -> Vec<ReadItem> {
    let mut out = Vec::new();
    let mut line = first_line;
    let mut rest = bytes;
    while !rest.is_empty() {
        let (raw, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(p) => (&rest[..p], &rest[p + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        let this = line;
        line += 1;
        if let Some(item) = parse_line(spec, this, raw, opts) {
            out.push(item);
        }
    }
    out
}

/// One JSONL record; None for a blank line (it separates nothing and carries nothing).
fn parse_line(spec: &FileSpec, line: u64, raw: &[u8], opts: &ReadOptions) -> Option<ReadItem> {
    let path = &spec.path;
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    if raw.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let text = match std::str::from_utf8(raw) {
        Ok(t) => t,
        Err(e) => return Some(reject(path, Some(line), "bad_utf8", format!("invalid UTF-8 at byte {} of the line", e.valid_up_to()))),
    };
    let mut obj: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(o)) => o,
        Ok(_) => return Some(reject(path, Some(line), "broken_json", "line is JSON but not an object")),
        Err(e) => return Some(reject(path, Some(line), "broken_json", e)),
    };
    let field = &opts.text_field;
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
            return Some(reject(path, Some(line), "field_not_string", format!("field `{field}` is {kind}, not a string")));
        }
        None => return Some(reject(path, Some(line), "missing_field", format!("no field `{field}`"))),
    };
    let id = opts
        .id_field
        .as_ref()
        .and_then(|f| obj.get(f))
        .and_then(|v| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .unwrap_or_else(|| format!("{}:{}", spec.id, line));
    let source = opts
        .source
        .clone()
        .or_else(|| obj.get("source").and_then(|v| v.as_str()).map(str::to_string))
        .unwrap_or_else(|| "prose".into());
    let mut meta = spec.meta.clone();
    meta.insert("line".into(), line.into());
    for (k, v) in obj {
        meta.entry(k).or_insert(v);
    }
    Some(ReadItem::Doc(Document { id, text, source, meta }))
}
