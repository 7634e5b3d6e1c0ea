//! Cleaned output as Parquet (`[output] kept_format = "parquet"` or `"both"`): one row per kept
//! document with the columns `id`, `text`, `source` (UTF-8 strings) and `meta` (the document's
//! metadata as a JSON object, a UTF-8 string), the layout Hugging Face `datasets` and pyarrow
//! read as a table of strings. Written through the `parquet` crate's low-level column writers
//! (no arrow), into an [`AtomicFile`], so a killed run leaves only a hidden temporary, never a
//! truncated `.parquet` that looks complete.
//!
//! Rows are buffered and handed to an encoder thread as one row group whenever `row_group_docs`
//! documents or `row_group_bytes` bytes of text are buffered: memory is about three row groups.

use crate::{io_err, CorpusError, Document, Result};
use ferrolm_common::AtomicFile;
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use crate::read::parquet::META_JSON_KEY;
use parquet::file::metadata::KeyValue;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The columns, in order. `required`: the pipeline never produces a document without them.
const SCHEMA: &str = "message document {
  required binary id (STRING);
  required binary text (STRING);
  required binary source (STRING);
  required binary meta (STRING);
}";

/// Which page codec the writer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ParquetCompression {
    None,
    Snappy,
    Gzip,
    /// zstd level 3: what `datasets` and most Parquet writers default to for text, and the best
    /// ratio per CPU second of the built-in codecs.
    #[default]
    Zstd,
}

impl ParquetCompression {
    fn codec(self) -> Compression {
        match self {
            Self::None => Compression::UNCOMPRESSED,
            Self::Snappy => Compression::SNAPPY,
            Self::Gzip => Compression::GZIP(GzipLevel::default()),
            Self::Zstd => Compression::ZSTD(ZstdLevel::try_new(3).expect("3 is a valid zstd level")),
        }
    }
}

/// Row-group sizing and codec of a Parquet output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParquetWriteOptions {
    /// Documents per row group (a reader's unit of parallel work and of memory).
    pub row_group_docs: usize,
    /// A row group is also closed once its buffered text reaches this many bytes.
    pub row_group_bytes: usize,
    pub compression: ParquetCompression,
}

impl Default for ParquetWriteOptions {
    fn default() -> Self {
        Self { row_group_docs: 10_000, row_group_bytes: 64 << 20, compression: ParquetCompression::Zstd }
    }
}

/// What the encoder thread is told: write a row group, or finish the file and commit it.
enum Msg {
    Group(Columns),
    Commit,
}

/// One row group's columns, in schema order.
struct Columns {
    ids: Vec<ByteArray>,
    texts: Vec<ByteArray>,
    sources: Vec<ByteArray>,
    metas: Vec<ByteArray>,
}

impl Columns {
    fn new() -> Self {
        Self { ids: Vec::new(), texts: Vec::new(), sources: Vec::new(), metas: Vec::new() }
    }
}

/// Writes documents to one Parquet file, committed (renamed into place) by [`Self::commit`].
///
/// Encoding and compressing a row group runs on a thread of its own, so the caller (the
/// runner's ordered output loop) only copies rows into the buffer; at most one finished row
/// group waits for that thread, which bounds memory to about three row groups.
pub struct ParquetDocWriter {
    path: PathBuf,
    opts: ParquetWriteOptions,
    buf: Columns,
    buffered_bytes: usize,
    to_encoder: Option<std::sync::mpsc::SyncSender<Msg>>,
    encoder: Option<std::thread::JoinHandle<Result<(u64, usize)>>>,
}

fn pq_err(path: &Path) -> impl FnOnce(parquet::errors::ParquetError) -> CorpusError + '_ {
    move |e| CorpusError::Invalid { path: path.to_path_buf(), message: format!("writing Parquet: {e}") }
}

impl ParquetDocWriter {
    pub fn create(path: impl AsRef<Path>, opts: &ParquetWriteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if opts.row_group_docs == 0 {
            return Err(CorpusError::Config("output.parquet.row_group_docs must be positive".into()));
        }
        let schema = Arc::new(parquet::schema::parser::parse_message_type(SCHEMA).expect("the document schema parses"));
        let props = WriterProperties::builder()
            .set_compression(opts.compression.codec())
            .set_created_by(format!("ferrolm-corpus {}", env!("CARGO_PKG_VERSION")))
            // Tells our reader to unpack `meta` back into the documents' metadata.
            .set_key_value_metadata(Some(vec![KeyValue::new(META_JSON_KEY.to_string(), "meta".to_string())]))
            // Row groups are cut here, by documents and bytes; the writer's own row limit must not cut them again.
            .set_max_row_group_row_count(None)
            // Texts and ids are (nearly) all distinct: a dictionary would only be built and then abandoned.
            .set_column_dictionary_enabled(ColumnPath::from("text"), false)
            .set_column_dictionary_enabled(ColumnPath::from("id"), false)
            .set_column_dictionary_enabled(ColumnPath::from("meta"), false)
            // Min/max of whole documents is useless for pruning and costs a copy of two texts per page.
            .set_column_statistics_enabled(ColumnPath::from("text"), EnabledStatistics::None)
            .set_column_statistics_enabled(ColumnPath::from("meta"), EnabledStatistics::None)
            .build();
        let file = AtomicFile::create(&path).map_err(io_err(&path))?;
        let mut writer = SerializedFileWriter::new(file, schema, Arc::new(props)).map_err(pq_err(&path))?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(1);
        let thread_path = path.clone();
        let encoder = std::thread::Builder::new()
            .name("parquet-writer".into())
            .spawn(move || -> Result<(u64, usize)> {
                let path = thread_path;
                let (mut rows, mut groups) = (0u64, 0usize);
                for msg in rx {
                    let mut cols = match msg {
                        Msg::Group(c) => c,
                        Msg::Commit => {
                            let file = writer.into_inner().map_err(pq_err(&path))?;
                            file.commit().map_err(io_err(&path))?;
                            return Ok((rows, groups));
                        }
                    };
                    let n = cols.ids.len() as u64;
                    let mut rg = writer.next_row_group().map_err(pq_err(&path))?;
                    for values in [&mut cols.ids, &mut cols.texts, &mut cols.sources, &mut cols.metas] {
                        let mut col = rg.next_column().map_err(pq_err(&path))?.expect("the schema has four columns");
                        col.typed::<ByteArrayType>().write_batch(values, None, None).map_err(pq_err(&path))?;
                        col.close().map_err(pq_err(&path))?;
                    }
                    rg.close().map_err(pq_err(&path))?;
                    rows += n;
                    groups += 1;
                }
                // The writer was dropped without commit (an error elsewhere): dropping the
                // AtomicFile inside `writer` removes the temporary.
                Err(CorpusError::Invalid { path, message: "Parquet output abandoned before commit".into() })
            })
            .map_err(io_err(&path))?;
        Ok(Self { path, opts: opts.clone(), buf: Columns::new(), buffered_bytes: 0, to_encoder: Some(tx), encoder: Some(encoder) })
    }

    pub fn write(&mut self, doc: &Document) -> Result<()> {
        let meta = serde_json::to_vec(&doc.meta).expect("a JSON map serializes");
        self.buffered_bytes += doc.text.len() + meta.len();
        self.buf.ids.push(ByteArray::from(doc.id.as_bytes().to_vec()));
        self.buf.texts.push(ByteArray::from(doc.text.as_bytes().to_vec()));
        self.buf.sources.push(ByteArray::from(doc.source.as_bytes().to_vec()));
        self.buf.metas.push(ByteArray::from(meta));
        if self.buf.ids.len() >= self.opts.row_group_docs || self.buffered_bytes >= self.opts.row_group_bytes {
            self.send(false)?;
        }
        Ok(())
    }

    /// Hand the buffered rows (if any) to the encoder, and with `commit` the order to finish.
    fn send(&mut self, commit: bool) -> Result<()> {
        let tx = self.to_encoder.as_ref().expect("the encoder runs until commit");
        let mut ok = true;
        if !self.buf.ids.is_empty() {
            let cols = std::mem::replace(&mut self.buf, Columns::new());
            self.buffered_bytes = 0;
            ok = tx.send(Msg::Group(cols)).is_ok();
        }
        if ok && commit {
            ok = tx.send(Msg::Commit).is_ok();
        }
        if ok {
            return Ok(());
        }
        // The encoder stopped early: its error says why.
        self.to_encoder = None;
        Err(self.join().err().unwrap_or_else(|| CorpusError::Invalid { path: self.path.clone(), message: "the Parquet encoder stopped".into() }))
    }

    fn join(&mut self) -> Result<(u64, usize)> {
        match self.encoder.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(CorpusError::Invalid { path: self.path.clone(), message: "the Parquet encoder thread panicked".into() }),
            None => Err(CorpusError::Invalid { path: self.path.clone(), message: "the Parquet encoder already finished".into() }),
        }
    }

    /// Write the last row group and the footer, then rename the file into place.
    /// Returns (rows, row groups).
    pub fn commit(mut self) -> Result<(u64, usize)> {
        self.send(true)?;
        self.to_encoder = None;
        self.join()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ParquetDocWriter {
    /// Without commit: stop the encoder, which drops (removes) the temporary file.
    fn drop(&mut self) {
        self.to_encoder = None;
        if let Some(h) = self.encoder.take() {
            let _ = h.join();
        }
    }
}
