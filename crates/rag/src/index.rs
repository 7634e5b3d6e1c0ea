//! The retrieval index: a folder holding
//!
//! ```text
//! manifest.json   format version, embedding model, passage sizes, and for every input file its
//!                 content hash and passage ids (written last, atomically)
//! bm25/           a tantivy index: one document per passage (id, file, document id, lines, text)
//! vectors.f32     optional dense vectors of the passages (see `vectors`), from the manifest's model
//! ```
//!
//! Re-indexing compares each input file's content hash with the manifest: unchanged files are
//! not read again; changed and removed files have their passages deleted (by the file term) and
//! changed and new files are read, split and added. A crash between tantivy's commit and the
//! manifest leaves files whose hash the manifest does not know: the next run deletes and re-adds
//! them, so the index converges.

use crate::chunk::{split_passages, ChunkOptions, TextKind};
use crate::squad::{looks_like_squad, squad_documents};
use crate::vectors::{write_vector_store, VectorStore};
use crate::{RagError, Result};
use ferrolm_corpus::read::{expand_paths, FileSpec};
use ferrolm_corpus::{DocumentStream, ReadItem, ReadOptions, ReadStats, Rejection};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Schema, Value, FAST, INDEXED, STORED, STRING, TEXT};
use tantivy::{Index, IndexReader, IndexWriter, TantivyDocument, Term};

/// Version of the index layout (manifest fields, schema, tokenizer). Bump it when any of them
/// changes: an index of another version is refused rather than misread.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT_NAME: &str = "ferrolm-rag-index";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const BM25_DIR: &str = "bm25";
pub const VECTORS_FILE: &str = "vectors.f32";

/// What the manifest records about one input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// xxh3-128 of the file's bytes, hex.
    pub hash: String,
    pub bytes: u64,
    /// The file's passages have the ids `first_passage .. first_passage + passages`.
    pub first_passage: u64,
    pub passages: u64,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    /// The model whose vectors `vectors.f32` holds; None while the index is BM25 only.
    pub embedding_model: Option<String>,
    pub chunk: ChunkOptions,
    /// Passage ids are never reused, so a stale id can never name another passage.
    pub next_passage_id: u64,
    pub passages: u64,
    /// Input file (as named: the path given, or the registry file's path) → entry.
    pub files: BTreeMap<String, FileEntry>,
}

impl Manifest {
    fn new(chunk: ChunkOptions) -> Self {
        Self {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            embedding_model: None,
            chunk,
            next_passage_id: 0,
            passages: 0,
            files: BTreeMap::new(),
        }
    }

    /// Read and check `dir/manifest.json`: the format version must be this build's, and when
    /// `embedding_model` is given it must be the index's.
    pub fn load(dir: &Path, embedding_model: Option<&str>) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => RagError::Invalid {
                path: dir.to_path_buf(),
                message: format!("not a ferrolm rag index (no {MANIFEST_FILE}); build one with `ferrolm rag index`"),
            },
            _ => RagError::Io { path: path.clone(), error },
        })?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| RagError::Invalid { path: path.clone(), message: format!("not valid JSON ({e})") })?;
        if v.get("format").and_then(|f| f.as_str()) != Some(FORMAT_NAME) {
            return Err(RagError::Invalid { path, message: "not a ferrolm rag index manifest".into() });
        }
        // The version is checked before the rest is parsed: another version may lay it out differently.
        let found = v.get("format_version").and_then(|f| f.as_u64()).unwrap_or(0) as u32;
        if found != FORMAT_VERSION {
            return Err(RagError::Version { path, found, wanted: FORMAT_VERSION });
        }
        let m: Manifest = serde_json::from_value(v).map_err(|e| RagError::Invalid { path: path.clone(), message: e.to_string() })?;
        if let Some(want) = embedding_model {
            if m.embedding_model.as_deref() != Some(want) {
                return Err(RagError::EmbeddingMismatch { path, found: m.embedding_model, wanted: Some(want.into()) });
            }
        }
        Ok(m)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let mut text = serde_json::to_string_pretty(self).expect("manifest serialises");
        text.push('\n');
        ferrolm_common::write_atomic(&path, text).map_err(|error| RagError::Io { path, error })
    }

    /// Ids of every passage the manifest lists.
    pub fn passage_ids(&self) -> HashSet<u64> {
        self.files.values().flat_map(|f| f.first_passage..f.first_passage + f.passages).collect()
    }
}

/// The Cargo registry as a source: the crates a Cargo.lock names, from `$CARGO_HOME`.
#[derive(Debug, Clone)]
pub struct RegistrySource {
    pub lockfile: PathBuf,
    pub cargo_home: PathBuf,
}

/// What to index: files and folders (read as the corpus pipeline reads them; a `.json` file
/// named explicitly is read as SQuAD when it has SQuAD's layout), and optionally the registry.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub paths: Vec<PathBuf>,
    pub registry: Option<RegistrySource>,
}

#[derive(Debug, Clone, Default)]
pub struct IndexOptions {
    pub chunk: ChunkOptions,
    pub read: ReadOptions,
    /// Indexing threads of tantivy (0: up to 4, as many as there are cores).
    pub threads: usize,
}

/// What an indexing run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IndexReport {
    pub files: u64,
    pub files_unchanged: u64,
    pub files_added: u64,
    pub files_updated: u64,
    pub files_removed: u64,
    pub passages_added: u64,
    pub passages_removed: u64,
    pub passages: u64,
    /// Bytes of the files read this run (changed and new files only).
    pub bytes_read: u64,
    pub seconds: f64,
    /// `bytes_read` / `seconds`, in MB (10^6 bytes) per second.
    pub mb_per_s: f64,
    /// What the readers saw in the files read: documents, rejections (with reasons and
    /// examples, `empty_document` included), unsupported files skipped in folders.
    pub read: ReadStats,
}

/// One stored passage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Passage {
    pub id: u64,
    /// The input file (manifest key).
    pub file: String,
    /// The document it came from: a file path, `path:line` for JSONL, `crate-version/path` for
    /// the registry, `squad:title/paragraph` for SQuAD.
    pub doc: String,
    pub line_start: u32,
    pub line_end: u32,
    pub text: String,
}

/// A search result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchHit {
    pub score: f32,
    #[serde(flatten)]
    pub passage: Passage,
}

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    file: Field,
    doc: Field,
    line_start: Field,
    line_end: Field,
    text: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fields = Fields {
        // FAST: search reads ids from the column store instead of loading each stored passage.
        id: b.add_u64_field("id", INDEXED | STORED | FAST),
        // Raw (untokenised) so that a file's passages are deleted by one term.
        file: b.add_text_field("file", STRING | STORED),
        // Raw and indexed: evaluation asks whether a document (a SQuAD paragraph) is held.
        doc: b.add_text_field("doc", STRING | STORED),
        line_start: b.add_u64_field("line_start", STORED),
        line_end: b.add_u64_field("line_end", STORED),
        // tantivy's "default" analyser: split on non-alphanumeric characters, drop tokens of 40
        // bytes or more, lowercase. No stemming, no stop words.
        text: b.add_text_field("text", TEXT | STORED),
    };
    (b.build(), fields)
}

fn fields_of(schema: &Schema, dir: &Path) -> Result<Fields> {
    let get = |name: &str| {
        schema.get_field(name).map_err(|_| RagError::Invalid {
            path: dir.to_path_buf(),
            message: format!("search index lacks field {name:?} (built by another version?)"),
        })
    };
    Ok(Fields {
        id: get("id")?,
        file: get("file")?,
        doc: get("doc")?,
        line_start: get("line_start")?,
        line_end: get("line_end")?,
        text: get("text")?,
    })
}

fn tantivy_err(dir: &Path) -> impl FnOnce(tantivy::TantivyError) -> RagError + '_ {
    move |error| RagError::Tantivy { path: dir.to_path_buf(), error }
}

/// Which text kind a document is split as.
fn text_kind(doc: &ferrolm_corpus::Document) -> TextKind {
    let rust = doc.meta.get("kind").and_then(|k| k.as_str()) == Some("rust") || doc.id.ends_with(".rs");
    if rust && !doc.id.ends_with("#doc") {
        TextKind::Rust
    } else if doc.source == "code" {
        TextKind::Code
    } else {
        TextKind::Prose
    }
}

/// xxh3-128 of a file's bytes (hex) and its length, read in blocks.
fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((format!("{:032x}", h.digest128()), n))
}

/// Build or update the index in `out` from `sources`. Files whose content is unchanged since
/// the last run are not read; changed, new and removed files are applied.
pub fn build_index(out: &Path, sources: &Sources, opts: &IndexOptions) -> Result<IndexReport> {
    let started = Instant::now();
    opts.chunk.validate().map_err(RagError::Config)?;
    let mut report = IndexReport::default();

    // Inputs, each once, in a deterministic order.
    let mut specs: Vec<FileSpec> = Vec::new();
    if !sources.paths.is_empty() {
        let (s, skipped) = expand_paths(&sources.paths)?;
        specs.extend(s);
        report.read.skipped_files += skipped;
    }
    if let Some(reg) = &sources.registry {
        let (s, missing, skipped) = ferrolm_corpus::read::cargo::cargo_registry_specs(&reg.lockfile, &reg.cargo_home)?;
        specs.extend(s);
        report.read.missing_crates = missing;
        report.read.skipped_files += skipped;
    }
    if specs.is_empty() {
        return Err(RagError::Config("no input files to index (the paths hold no supported files)".into()));
    }
    let mut seen = HashSet::new();
    specs.retain(|s| seen.insert(key_of(s)));

    // The existing index, or a new one.
    std::fs::create_dir_all(out).map_err(|error| RagError::Io { path: out.into(), error })?;
    let bm25_dir = out.join(BM25_DIR);
    let have_manifest = out.join(MANIFEST_FILE).exists();
    let mut manifest = if have_manifest {
        Manifest::load(out, None)?
    } else {
        if bm25_dir.exists() {
            // A first build that stopped before its manifest: nothing in it is known.
            std::fs::remove_dir_all(&bm25_dir).map_err(|error| RagError::Io { path: bm25_dir.clone(), error })?;
        }
        Manifest::new(opts.chunk)
    };
    let index = if have_manifest {
        Index::open_in_dir(&bm25_dir).map_err(tantivy_err(&bm25_dir))?
    } else {
        std::fs::create_dir_all(&bm25_dir).map_err(|error| RagError::Io { path: bm25_dir.clone(), error })?;
        Index::create_in_dir(&bm25_dir, schema().0).map_err(tantivy_err(&bm25_dir))?
    };
    let fields = fields_of(&index.schema(), &bm25_dir)?;
    let threads = if opts.threads > 0 {
        opts.threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get()).min(4)
    };
    let mut writer: IndexWriter = index.writer_with_num_threads(threads, threads * 64_000_000).map_err(tantivy_err(&bm25_dir))?;

    // Passage sizes changed: every passage is re-made.
    let mut removed_any = false;
    if manifest.chunk != opts.chunk {
        writer.delete_all_documents().map_err(tantivy_err(&bm25_dir))?;
        report.passages_removed += manifest.passages;
        removed_any = manifest.passages > 0;
        manifest.files.clear();
        manifest.chunk = opts.chunk;
    }

    // One pass over the inputs: hash each (streaming, one file in memory at most); an
    // unchanged file is skipped, a changed or new one is read, split and added.
    let total: u64 = specs.iter().map(|s| std::fs::metadata(&s.path).map_or(0, |m| m.len())).sum();
    let bar = ferrolm_common::progress::bytes_bar(total, "indexing");
    let mut last_line = Instant::now();
    let mut seen_bytes = 0u64;
    let mut current = HashSet::new();
    for spec in specs {
        let key = key_of(&spec);
        current.insert(key.clone());
        report.files += 1;
        let (hash, size) = match hash_file(&spec.path) {
            Ok(h) => h,
            Err(e) => {
                // Unreadable: counted like the corpus readers count it; its old passages go.
                push_rejection(&mut report.read, &spec.path, "io_error", &e.to_string());
                report.read.files += 1;
                if let Some(old) = manifest.files.remove(&key) {
                    writer.delete_term(Term::from_field_text(fields.file, &key));
                    report.passages_removed += old.passages;
                    report.files_removed += 1;
                    removed_any = true;
                }
                continue;
            }
        };
        bar.inc(size);
        seen_bytes += size;
        if manifest.files.get(&key).is_some_and(|e| e.hash == hash) {
            report.files_unchanged += 1;
            continue;
        }
        // A file may hold passages from an earlier run that the manifest never recorded (a run
        // that stopped after tantivy's commit): delete by file in every case.
        writer.delete_term(Term::from_field_text(fields.file, &key));
        match manifest.files.remove(&key) {
            Some(old) => {
                report.passages_removed += old.passages;
                report.files_updated += 1;
                removed_any = true;
            }
            None => report.files_added += 1,
        }
        let items = read_file(&spec, &opts.read, &mut report.read)?;
        let first = manifest.next_passage_id;
        for item in items {
            let doc = match item {
                ReadItem::Doc(d) => d,
                ReadItem::Rejected(r) => {
                    push(&mut report.read, r);
                    continue;
                }
            };
            report.read.documents += 1;
            report.read.bytes += doc.text.len() as u64;
            if doc.text.trim().is_empty() {
                // An empty document is a malformed input like a broken line: counted, not indexed.
                report.read.documents -= 1;
                push_rejection(&mut report.read, Path::new(&doc.id), "empty_document", "no text");
                continue;
            }
            for span in split_passages(&doc.text, text_kind(&doc), &opts.chunk) {
                let mut d = TantivyDocument::default();
                d.add_u64(fields.id, manifest.next_passage_id);
                d.add_text(fields.file, &key);
                d.add_text(fields.doc, &doc.id);
                d.add_u64(fields.line_start, span.line_start.into());
                d.add_u64(fields.line_end, span.line_end.into());
                d.add_text(fields.text, &doc.text[span.start..span.end]);
                writer.add_document(d).map_err(tantivy_err(&bm25_dir))?;
                manifest.next_passage_id += 1;
            }
        }
        let n = manifest.next_passage_id - first;
        report.passages_added += n;
        report.bytes_read += size;
        manifest.files.insert(key, FileEntry { hash, bytes: size, first_passage: first, passages: n });
        if !ferrolm_common::progress::is_terminal() && last_line.elapsed().as_secs() >= 10 {
            eprintln!("indexing: {:.1}/{:.1} MB", seen_bytes as f64 / 1e6, total as f64 / 1e6);
            last_line = Instant::now();
        }
    }
    let gone: Vec<String> = manifest.files.keys().filter(|k| !current.contains(*k)).cloned().collect();
    for key in gone {
        let old = manifest.files.remove(&key).expect("listed");
        writer.delete_term(Term::from_field_text(fields.file, &key));
        report.passages_removed += old.passages;
        report.files_removed += 1;
        removed_any = true;
    }
    bar.finish_and_clear();
    writer.commit().map_err(tantivy_err(&bm25_dir))?;
    if removed_any {
        // Deleted passages stay in their segments (and in tantivy's BM25 statistics: document
        // count and frequencies) until merged away; merging every segment makes the scores those
        // of a fresh build.
        let ids = index.searchable_segment_ids().map_err(tantivy_err(&bm25_dir))?;
        if ids.len() > 1 || has_deletes(&index, &bm25_dir)? {
            writer.merge(&ids).wait().map_err(tantivy_err(&bm25_dir))?;
        }
    }
    writer.wait_merging_threads().map_err(tantivy_err(&bm25_dir))?;
    manifest.passages = manifest.files.values().map(|f| f.passages).sum();
    report.passages = manifest.passages;

    // Vectors of passages that are gone are dropped; new passages have none until re-embedded.
    let vectors_path = out.join(VECTORS_FILE);
    if let (Some(model), true) = (manifest.embedding_model.clone(), vectors_path.exists()) {
        let store = VectorStore::open(&vectors_path, Some(&model))?;
        let alive = manifest.passage_ids();
        let keep: Vec<usize> = (0..store.len()).filter(|&i| alive.contains(&store.id(i))).collect();
        if keep.len() < store.len() {
            let ids: Vec<u64> = keep.iter().map(|&i| store.id(i)).collect();
            let vecs: Vec<f32> = keep.iter().flat_map(|&i| store.vector(i).iter().copied()).collect();
            let dim = store.dim();
            drop(store);
            write_vector_store(&vectors_path, &model, dim, &ids, &vecs)?;
        }
    }
    manifest.save(out)?;
    report.seconds = started.elapsed().as_secs_f64();
    report.mb_per_s = if report.seconds > 0.0 { report.bytes_read as f64 / 1e6 / report.seconds } else { 0.0 };
    Ok(report)
}

fn has_deletes(index: &Index, dir: &Path) -> Result<bool> {
    let metas = index.searchable_segment_metas().map_err(tantivy_err(dir))?;
    Ok(metas.iter().any(|m| m.has_deletes()))
}

fn key_of(spec: &FileSpec) -> String {
    spec.path.display().to_string()
}

/// One file's documents and rejections: SQuAD when a `.json` file has its layout, else the
/// corpus readers. Files read are counted in `stats.files`.
fn read_file(spec: &FileSpec, read: &ReadOptions, stats: &mut ReadStats) -> Result<Vec<ReadItem>> {
    let json = spec.path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let bytes = if json { std::fs::read(&spec.path).ok() } else { None };
    if let Some(bytes) = bytes.filter(|b| looks_like_squad(&spec.path, b)) {
        stats.files += 1;
        return match squad_documents(&spec.path, &bytes) {
            Ok(items) => Ok(items),
            // A broken SQuAD file is one malformed input among others, not the end of the run.
            Err(e) => Ok(vec![ReadItem::Rejected(Rejection {
                file: spec.path.display().to_string(),
                line: None,
                reason: "broken_json".into(),
                detail: e.to_string(),
                records: 1,
            })]),
        };
    }
    let mut stream = DocumentStream::from_specs(vec![spec.clone()], read.clone());
    // The stream counts documents itself; they are counted here after the empty check instead.
    let items: Vec<ReadItem> = stream.by_ref().collect();
    stats.files += stream.stats().files;
    Ok(items)
}

fn push(stats: &mut ReadStats, r: Rejection) {
    stats.rejected += r.records;
    *stats.rejected_by_reason.entry(r.reason.clone()).or_default() += r.records;
    if stats.examples.len() < 1000 {
        stats.examples.push(r);
    }
}

fn push_rejection(stats: &mut ReadStats, file: &Path, reason: &str, detail: &str) {
    push(stats, Rejection { file: file.display().to_string(), line: None, reason: reason.into(), detail: detail.into(), records: 1 });
}

/// An index opened for search.
pub struct RagIndex {
    dir: PathBuf,
    manifest: Manifest,
    index: Index,
    reader: IndexReader,
    fields: Fields,
    vectors: Option<VectorStore>,
}

impl RagIndex {
    /// Open the index in `dir`. Refused when it was built by another format version, or
    /// when `embedding_model` is given and the index's vectors come from another model (or it
    /// has none).
    pub fn open(dir: &Path, embedding_model: Option<&str>) -> Result<Self> {
        let manifest = Manifest::load(dir, embedding_model)?;
        let bm25_dir = dir.join(BM25_DIR);
        let index = Index::open_in_dir(&bm25_dir).map_err(tantivy_err(&bm25_dir))?;
        let fields = fields_of(&index.schema(), &bm25_dir)?;
        let reader = index.reader().map_err(tantivy_err(&bm25_dir))?;
        let vectors_path = dir.join(VECTORS_FILE);
        let vectors = match &manifest.embedding_model {
            Some(model) if vectors_path.exists() => Some(VectorStore::open(&vectors_path, Some(model))?),
            _ => None,
        };
        Ok(Self { dir: dir.into(), manifest, index, reader, fields, vectors })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn vectors(&self) -> Option<&VectorStore> {
        self.vectors.as_ref()
    }

    /// The query's terms as the index tokenises text (repeats kept: like rank_bm25 and
    /// Lucene's parser, a word said twice counts twice).
    pub fn query_terms(&self, query: &str) -> Result<Vec<Term>> {
        let mut analyzer = self.index.tokenizer_for_field(self.fields.text).map_err(tantivy_err(&self.dir))?;
        let mut stream = analyzer.token_stream(query);
        let mut terms = Vec::new();
        while stream.advance() {
            terms.push(Term::from_field_text(self.fields.text, &stream.token().text));
        }
        Ok(terms)
    }

    /// The `k` best passages by BM25 (k1 = 1.2, b = 0.75, summed over the query's terms) as
    /// (passage id, score), best first; ties go to the lower passage id.
    pub fn bm25(&self, query: &str, k: usize) -> Result<Vec<(u64, f32)>> {
        let terms = self.query_terms(query)?;
        if terms.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let q: Box<dyn tantivy::query::Query> = if terms.len() == 1 {
            Box::new(TermQuery::new(terms[0].clone(), IndexRecordOption::WithFreqs))
        } else {
            Box::new(BooleanQuery::new_multiterms_query(terms))
        };
        let searcher = self.reader.searcher();
        // A few more than k so that ties at the cut are decided by id, not by segment order.
        let top = searcher.search(&q, &TopDocs::with_limit(k + 8)).map_err(tantivy_err(&self.dir))?;
        let mut out = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let seg = searcher.segment_reader(addr.segment_ord);
            let column = seg.fast_fields().u64("id").map_err(tantivy_err(&self.dir))?;
            let id = column.first(addr.doc_id).ok_or_else(|| RagError::Invalid {
                path: self.dir.clone(),
                message: format!("passage without id in segment {}", addr.segment_ord),
            })?;
            out.push((id, score));
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out.truncate(k);
        Ok(out)
    }

    /// [`Self::bm25`] with each passage's source, lines and text.
    pub fn search(&self, query: &str, k: usize) -> Result<Vec<SearchHit>> {
        let ranked = self.bm25(query, k)?;
        ranked
            .into_iter()
            .map(|(id, score)| {
                let passage = self.passage(id)?.ok_or_else(|| RagError::Invalid {
                    path: self.dir.clone(),
                    message: format!("passage {id} found by search but not stored"),
                })?;
                Ok(SearchHit { score, passage })
            })
            .collect()
    }

    fn passage_of(&self, d: &TantivyDocument) -> Passage {
        let f = &self.fields;
        let s = |field| d.get_first(field).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let u = |field| d.get_first(field).and_then(|v| v.as_u64()).unwrap_or(0);
        Passage {
            id: u(f.id),
            file: s(f.file),
            doc: s(f.doc),
            line_start: u(f.line_start) as u32,
            line_end: u(f.line_end) as u32,
            text: s(f.text),
        }
    }

    /// The passage with id `id`, if it is in the index.
    pub fn passage(&self, id: u64) -> Result<Option<Passage>> {
        let searcher = self.reader.searcher();
        let q = TermQuery::new(Term::from_field_u64(self.fields.id, id), IndexRecordOption::Basic);
        let top = searcher.search(&q, &TopDocs::with_limit(1)).map_err(tantivy_err(&self.dir))?;
        match top.first() {
            Some(&(_, addr)) => {
                let d: TantivyDocument = searcher.doc(addr).map_err(tantivy_err(&self.dir))?;
                Ok(Some(self.passage_of(&d)))
            }
            None => Ok(None),
        }
    }

    /// Whether any passage comes from document `doc`.
    pub fn holds_document(&self, doc: &str) -> Result<bool> {
        let searcher = self.reader.searcher();
        let n = searcher.doc_freq(&Term::from_field_text(self.fields.doc, doc)).map_err(tantivy_err(&self.dir))?;
        Ok(n > 0)
    }

    /// Every passage, by id.
    pub fn passages(&self) -> Result<Vec<Passage>> {
        let searcher = self.reader.searcher();
        let mut out = Vec::new();
        for seg in searcher.segment_readers() {
            let store = seg.get_store_reader(64).map_err(|error| RagError::Io { path: self.dir.clone(), error })?;
            for doc in seg.doc_ids_alive() {
                let d: TantivyDocument = store.get(doc).map_err(tantivy_err(&self.dir))?;
                out.push(self.passage_of(&d));
            }
        }
        out.sort_by_key(|p| p.id);
        Ok(out)
    }

    /// The `k` passages nearest to `query` (an embedding from the index's model) by cosine.
    pub fn dense(&self, query: &[f32], k: usize) -> Result<Vec<(u64, f32)>> {
        match &self.vectors {
            Some(v) => v.top_k(query, k),
            None => Err(RagError::Invalid { path: self.dir.clone(), message: "index has no vectors".into() }),
        }
    }

    /// BM25 and dense rankings of depth `depth` fused by reciprocal rank (k = 60), best first.
    pub fn hybrid(&self, query: &str, query_vector: &[f32], depth: usize) -> Result<Vec<(u64, f64)>> {
        self.hybrid_weighted(query, query_vector, depth, 1.0)
    }

    /// [`Self::hybrid`] with the dense ranking's votes weighted by `dense_weight` (BM25's: 1).
    pub fn hybrid_weighted(&self, query: &str, query_vector: &[f32], depth: usize, dense_weight: f64) -> Result<Vec<(u64, f64)>> {
        let a: Vec<u64> = self.bm25(query, depth)?.into_iter().map(|x| x.0).collect();
        let b: Vec<u64> = self.dense(query_vector, depth)?.into_iter().map(|x| x.0).collect();
        Ok(crate::fusion::weighted_reciprocal_rank_fusion(&[a, b], &[1.0, dense_weight], crate::fusion::RRF_K))
    }
}

/// Store the passages' vectors from embedding model `model_id` and record the model in the
/// manifest. Refused when the index already holds vectors of another model (open it with that
/// model's id, or remove `vectors.f32`, to change models).
pub fn set_vectors(dir: &Path, model_id: &str, dim: usize, ids: &[u64], vectors: &[f32]) -> Result<()> {
    let mut manifest = Manifest::load(dir, None)?;
    let path = dir.join(VECTORS_FILE);
    if let Some(found) = &manifest.embedding_model {
        if found != model_id && path.exists() {
            return Err(RagError::EmbeddingMismatch {
                path: dir.join(MANIFEST_FILE),
                found: Some(found.clone()),
                wanted: Some(model_id.into()),
            });
        }
    }
    let alive = manifest.passage_ids();
    if let Some(id) = ids.iter().find(|id| !alive.contains(id)) {
        return Err(RagError::Invalid { path: dir.into(), message: format!("vector for passage {id}, which the index does not hold") });
    }
    write_vector_store(&path, model_id, dim, ids, vectors)?;
    manifest.embedding_model = Some(model_id.into());
    manifest.save(dir)
}
