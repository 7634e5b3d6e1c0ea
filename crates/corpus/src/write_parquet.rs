//! Cleaned output as Parquet (`[output] kept_format = "parquet"` or `"both"`): one row per kept
//! document with the columns `id`, `text`, `source` (UTF-8 strings) and `meta` (the document's
//! metadata as a JSON object, a UTF-8 string), the layout Hugging Face `datasets` and pyarrow
//! read as a table of strings. Written through the `parquet` crate's low-level column writers
//! (no arrow), into an [`AtomicFile`], so a killed run leaves only a hidden temporary, never a
//! truncated `.parquet` that looks complete.
//!
//! Rows are buffered and written as one row group whenever `row_group_docs` documents or
//! `row_group_bytes` bytes of text are buffered: memory is one row group.

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

/// Writes documents to one Parquet file, committed (renamed into place) by [`Self::commit`].
pub struct ParquetDocWriter {
    path: PathBuf,
    writer: SerializedFileWriter<AtomicFile>,
    opts: ParquetWriteOptions,
    ids: Vec<ByteArray>,
    texts: Vec<ByteArray>,
    sources: Vec<ByteArray>,
    metas: Vec<ByteArray>,
    buffered_bytes: usize,
    rows: u64,
    row_groups: usize,
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
        let writer = SerializedFileWriter::new(file, schema, Arc::new(props)).map_err(pq_err(&path))?;
        Ok(Self {
            path,
            writer,
            opts: opts.clone(),
            ids: Vec::new(),
            texts: Vec::new(),
            sources: Vec::new(),
            metas: Vec::new(),
            buffered_bytes: 0,
            rows: 0,
            row_groups: 0,
        })
    }

    pub fn write(&mut self, doc: &Document) -> Result<()> {
        let meta = serde_json::to_vec(&doc.meta).expect("a JSON map serializes");
        self.buffered_bytes += doc.text.len() + meta.len();
        self.ids.push(ByteArray::from(doc.id.as_bytes().to_vec()));
        self.texts.push(ByteArray::from(doc.text.as_bytes().to_vec()));
        self.sources.push(ByteArray::from(doc.source.as_bytes().to_vec()));
        self.metas.push(ByteArray::from(meta));
        if self.ids.len() >= self.opts.row_group_docs || self.buffered_bytes >= self.opts.row_group_bytes {
            self.flush_row_group()?;
        }
        Ok(())
    }

    fn flush_row_group(&mut self) -> Result<()> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let n = self.ids.len() as u64;
        let path = self.path.clone();
        let mut rg = self.writer.next_row_group().map_err(pq_err(&path))?;
        for values in [&mut self.ids, &mut self.texts, &mut self.sources, &mut self.metas] {
            let mut col = rg.next_column().map_err(pq_err(&path))?.expect("the schema has four columns");
            col.typed::<ByteArrayType>().write_batch(values, None, None).map_err(pq_err(&path))?;
            col.close().map_err(pq_err(&path))?;
            values.clear();
        }
        rg.close().map_err(pq_err(&path))?;
        self.rows += n;
        self.row_groups += 1;
        self.buffered_bytes = 0;
        Ok(())
    }

    /// Write the last row group and the footer, then rename the file into place.
    /// Returns (rows, row groups).
    pub fn commit(mut self) -> Result<(u64, usize)> {
        self.flush_row_group()?;
        let path = self.path.clone();
        let file = self.writer.into_inner().map_err(pq_err(&path))?;
        file.commit().map_err(io_err(&path))?;
        Ok((self.rows, self.row_groups))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
