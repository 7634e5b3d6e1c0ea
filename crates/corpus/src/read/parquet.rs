//! Parquet input (the format of Hugging Face datasets): one document per row, the text from a
//! string column (`text_field`, dotted for a field inside a struct, e.g. `meta.content`).
//!
//! Uses the `parquet` crate's low-level column readers (no arrow): the footer is read when the
//! file is opened, then each row group is its own unit of work, decoded column by column in
//! batches, so memory is bounded by one row group per worker. Flat columns other than the text
//! become metadata (`id` and `source` as for JSONL). Rows that cannot become documents are
//! rejections: a null text (`field_not_string`), invalid UTF-8 (`bad_utf8`), a missing or
//! non-string text column (`missing_field` / `field_not_string`, every row of the file), an
//! unreadable row group (`broken_parquet`, its rows) or a codec this build lacks
//! (`unsupported_compression`, its rows). A file whose footer cannot be read is one
//! `broken_parquet` rejection, since its row count is unknown.

use super::{FileSpec, ReadItem, ReadOptions};
use crate::{Document, Rejection};
use parquet::basic::{Compression, ConvertedType, LogicalType, Type as PhysicalType};
use parquet::column::reader::{get_typed_column_reader, ColumnReader};
use parquet::data_type::{ByteArrayType, DataType};
use parquet::file::reader::{ChunkReader, FileReader, Length, RowGroupReader, SerializedFileReader};
use parquet::schema::types::ColumnDescriptor;
use serde_json::Value;
use std::fs::File;

/// Rows decoded per column read: bounds the per-batch buffers inside a row group.
const BATCH_ROWS: usize = 4096;

/// An opened Parquet file: its footer (schema, row groups) and which columns to read.
pub struct ParquetSource {
    spec: FileSpec,
    reader: SerializedFileReader<PosFile>,
    /// The text column, or why no row of this file can become a document.
    text: std::result::Result<usize, (&'static str, String)>,
    /// Flat columns copied into the documents (name, index), the text column excluded.
    others: Vec<(String, usize)>,
    /// Row number (0-based) of the first row of each row group.
    first_rows: Vec<u64>,
    /// A string column holding each row's metadata as a JSON object, named in the footer's
    /// key-value metadata under [`META_JSON_KEY`] (files written by `write_parquet`).
    meta_json: Option<String>,
}

/// Footer key naming the column that holds the documents' metadata as JSON objects.
pub const META_JSON_KEY: &str = "ferrolm.meta_json_column";

fn rejection(spec: &FileSpec, row: Option<u64>, reason: &str, detail: impl std::fmt::Display, records: u64) -> Rejection {
    Rejection { file: spec.path.display().to_string(), line: row, reason: reason.into(), detail: detail.to_string(), records }
}

fn is_string(c: &ColumnDescriptor) -> bool {
    c.physical_type() == PhysicalType::BYTE_ARRAY
        && (matches!(c.logical_type_ref(), Some(LogicalType::String | LogicalType::Json | LogicalType::Enum))
            || matches!(c.converted_type(), ConvertedType::UTF8 | ConvertedType::JSON | ConvertedType::ENUM)
            // Plain BYTE_ARRAY without annotation: many writers store strings so; UTF-8 is checked per row.
            || (c.logical_type_ref().is_none() && c.converted_type() == ConvertedType::NONE))
}

fn codec_supported(c: Compression) -> bool {
    matches!(c, Compression::UNCOMPRESSED | Compression::SNAPPY | Compression::GZIP(_) | Compression::LZ4 | Compression::LZ4_RAW | Compression::ZSTD(_))
}

impl ParquetSource {
    /// Read the footer and choose columns. Err: the file is not readable Parquet at all.
    pub fn open(spec: FileSpec, opts: &ReadOptions) -> std::result::Result<Self, Rejection> {
        // The parquet crate asserts on some malformed input instead of returning an error
        // (found by fuzzing, issue 18): a panic while decoding is a broken file like any other.
        let for_error = spec.clone();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Self::open_inner(spec, opts))).unwrap_or_else(|p| {
            Err(rejection(&for_error, None, "broken_parquet", format!("cannot read the footer: the Parquet decoder failed: {}", panic_message(&p)), 1))
        })
    }

    fn open_inner(spec: FileSpec, opts: &ReadOptions) -> std::result::Result<Self, Rejection> {
        let file = match File::open(&spec.path) {
            Ok(f) => f,
            Err(e) => return Err(rejection(&spec, None, "io_error", e, 1)),
        };
        let reader = match SerializedFileReader::new(PosFile::new(file)) {
            Ok(r) => r,
            Err(e) => return Err(rejection(&spec, None, "broken_parquet", format!("cannot read the footer: {e}"), 1)),
        };
        let md = reader.metadata();
        let schema = md.file_metadata().schema_descr();
        let field = &opts.text_field;
        let text = match (0..schema.num_columns()).find(|&i| schema.column(i).path().string() == *field) {
            None => {
                let names: Vec<String> = (0..schema.num_columns()).map(|i| schema.column(i).path().string()).collect();
                Err(("missing_field", format!("no column `{field}` (columns: {})", names.join(", "))))
            }
            Some(i) => {
                let c = schema.column(i);
                if c.max_rep_level() > 0 {
                    Err(("field_not_string", format!("column `{field}` is a list, not a string")))
                } else if !is_string(&c) {
                    Err(("field_not_string", format!("column `{field}` is {} ({:?}), not a string", c.physical_type(), c.logical_type_ref())))
                } else {
                    Ok(i)
                }
            }
        };
        let others = (0..schema.num_columns())
            .filter(|&i| Ok(i) != text && schema.column(i).max_rep_level() == 0)
            .filter(|&i| !matches!(schema.column(i).physical_type(), PhysicalType::INT96 | PhysicalType::FIXED_LEN_BYTE_ARRAY))
            .filter(|&i| schema.column(i).physical_type() != PhysicalType::BYTE_ARRAY || is_string(&schema.column(i)))
            .map(|i| (schema.column(i).path().string(), i))
            .collect();
        let mut first_rows = Vec::with_capacity(md.num_row_groups());
        let mut row = 0u64;
        for g in md.row_groups() {
            first_rows.push(row);
            row += g.num_rows().max(0) as u64;
        }
        let meta_json = md
            .file_metadata()
            .key_value_metadata()
            .and_then(|kvs| kvs.iter().find(|kv| kv.key == META_JSON_KEY))
            .and_then(|kv| kv.value.clone());
        Ok(Self { spec, reader, text, others, first_rows, meta_json })
    }

    pub fn groups(&self) -> usize {
        self.first_rows.len()
    }

    /// Uncompressed size of a row group (to size the reader's waves).
    pub fn group_bytes(&self, g: usize) -> usize {
        self.reader.metadata().row_group(g).total_byte_size().max(1) as usize
    }

    /// Every row of row group `g` as a document or a rejection, in row order.
    pub fn read_group(&self, g: usize, opts: &ReadOptions) -> Vec<ReadItem> {
        // As in `open`: a panic inside the parquet crate while decoding this row group makes
        // every row of it a `broken_parquet` rejection (counted, not lost); the reader is not
        // used for this group again, and other groups get their own column readers.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.read_group_inner(g, opts))).unwrap_or_else(|p| {
            let rows = self.reader.metadata().row_group(g).num_rows().max(0) as u64;
            let detail = format!("row group {g}: the Parquet decoder failed: {}", panic_message(&p));
            vec![ReadItem::Rejected(rejection(&self.spec, Some(self.first_rows[g] + 1), "broken_parquet", detail, rows.max(1)))]
        })
    }

    fn read_group_inner(&self, g: usize, opts: &ReadOptions) -> Vec<ReadItem> {
        let rg_md = self.reader.metadata().row_group(g);
        let rows = rg_md.num_rows().max(0) as u64;
        let first = self.first_rows[g];
        let bulk = |reason: &str, detail: String, from: u64| ReadItem::Rejected(rejection(&self.spec, Some(first + from + 1), reason, detail, rows - from));
        let text_col = match &self.text {
            Ok(i) => *i,
            Err((reason, detail)) => return if rows == 0 { vec![] } else { vec![bulk(reason, detail.clone(), 0)] },
        };
        let mut used: Vec<usize> = vec![text_col];
        used.extend(self.others.iter().map(|(_, i)| *i));
        if let Some(&i) = used.iter().find(|&&i| !codec_supported(rg_md.column(i).compression())) {
            if i == text_col {
                return vec![bulk("unsupported_compression", format!("row group {g}: codec {:?} is not built in", rg_md.column(i).compression()), 0)];
            }
            used.retain(|&c| codec_supported(rg_md.column(c).compression()));
        }
        let rg = match self.reader.get_row_group(g) {
            Ok(r) => r,
            Err(e) => return vec![bulk("broken_parquet", format!("row group {g}: {e}"), 0)],
        };
        match self.decode_group(rg.as_ref(), g, text_col, &used, first, rows, opts) {
            Ok(items) => items,
            Err((done, items_so_far, e)) => {
                let mut items = items_so_far;
                if done < rows {
                    items.push(bulk("broken_parquet", format!("row group {g}, from row {}: {e}", first + done + 1), done));
                }
                items
            }
        }
    }

    /// Decode the used columns of one row group in lockstep batches. On a decoding error,
    /// returns the rows finished so far, their items and the error.
    #[allow(clippy::too_many_arguments)]
    fn decode_group(
        &self,
        rg: &dyn RowGroupReader,
        g: usize,
        text_col: usize,
        used: &[usize],
        first: u64,
        rows: u64,
        opts: &ReadOptions,
    ) -> std::result::Result<Vec<ReadItem>, (u64, Vec<ReadItem>, String)> {
        let mut items = Vec::new();
        let schema = self.reader.metadata().file_metadata().schema_descr();
        let text_desc = schema.column(text_col);
        let mut text_reader = match rg.get_column_reader(text_col) {
            Ok(r) => get_typed_column_reader::<ByteArrayType>(r),
            Err(e) => return Err((0, items, e.to_string())),
        };
        let mut meta_readers = Vec::new();
        for (name, i) in &self.others {
            if !used.contains(i) {
                continue;
            }
            match rg.get_column_reader(*i) {
                Ok(r) => meta_readers.push((name.as_str(), schema.column(*i), r)),
                Err(e) => return Err((0, items, format!("column `{name}`: {e}"))),
            }
        }
        let (mut defs, mut vals) = (Vec::new(), Vec::new());
        let mut done = 0u64;
        while done < rows {
            defs.clear();
            vals.clear();
            let want = (rows - done).min(BATCH_ROWS as u64) as usize;
            let n = match text_reader.read_records(want, Some(&mut defs), None, &mut vals) {
                Ok((0, _, _)) => return Err((done, items, format!("column `{}` ends after {done} of {rows} rows", opts.text_field))),
                Ok((n, _, _)) => n,
                Err(e) => return Err((done, items, format!("column `{}`: {e}", opts.text_field))),
            };
            let mut metas: Vec<(&str, Vec<Value>)> = Vec::with_capacity(meta_readers.len());
            for (name, desc, r) in meta_readers.iter_mut() {
                match read_values(r, desc.max_def_level(), n) {
                    Ok(v) if v.len() == n => metas.push((name, v)),
                    Ok(v) => return Err((done, items, format!("column `{name}` has {} rows where `{}` has {n}", v.len(), opts.text_field))),
                    Err(e) => return Err((done, items, format!("column `{name}`: {e}"))),
                }
            }
            let max_def = text_desc.max_def_level();
            let mut vi = 0;
            for r in 0..n {
                let row = first + done + r as u64 + 1; // 1-based, like JSONL lines
                let present = max_def == 0 || defs[r] == max_def;
                if !present {
                    items.push(ReadItem::Rejected(rejection(&self.spec, Some(row), "field_not_string", format!("row group {g}: `{}` is null", opts.text_field), 1)));
                    continue;
                }
                let bytes = vals[vi].data();
                vi += 1;
                let text = match std::str::from_utf8(bytes) {
                    Ok(t) => t.to_string(),
                    Err(e) => {
                        items.push(ReadItem::Rejected(rejection(&self.spec, Some(row), "bad_utf8", format!("invalid UTF-8 at byte {} of the text", e.valid_up_to()), 1)));
                        continue;
                    }
                };
                let mut meta = self.spec.meta.clone();
                meta.insert("row".into(), row.into());
                for (name, vals) in &metas {
                    if self.meta_json.as_deref() == Some(*name) {
                        // Our own writer's `meta` column: a JSON object of the document's metadata.
                        if let Some(obj) = vals[r].as_str().and_then(|js| serde_json::from_str::<serde_json::Map<String, Value>>(js).ok()) {
                            for (k, v) in obj {
                                meta.entry(k).or_insert(v);
                            }
                            continue;
                        }
                    }
                    meta.entry(name.to_string()).or_insert_with(|| vals[r].clone());
                }
                let id = opts
                    .id_field
                    .as_ref()
                    .and_then(|f| meta.get(f))
                    .and_then(|v| match v {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(x) => Some(x.to_string()),
                        _ => None,
                    })
                    .unwrap_or_else(|| format!("{}:{}", self.spec.id, row));
                let source = opts
                    .source
                    .clone()
                    .or_else(|| meta.get("source").and_then(|v| v.as_str()).map(str::to_string))
                    .unwrap_or_else(|| "prose".into());
                items.push(ReadItem::Doc(Document { id, text, source, meta }));
            }
            done += n as u64;
        }
        Ok(items)
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "panic".into())
}

/// A file read by position (pread), so row groups of one file decode on several threads at once.
/// (parquet's own `impl ChunkReader for File` clones the handle, and clones share one cursor.)
pub struct PosFile {
    file: std::sync::Arc<File>,
    len: u64,
}

impl PosFile {
    pub fn new(file: File) -> Self {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        Self { file: std::sync::Arc::new(file), len }
    }
}

/// A sequential reader over a [`PosFile`] from some offset.
pub struct PosRead {
    file: std::sync::Arc<File>,
    pos: u64,
}

#[cfg(unix)]
fn read_at(f: &File, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(f, buf, pos)
}
#[cfg(windows)]
fn read_at(f: &File, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(f, buf, pos)
}

impl std::io::Read for PosRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = read_at(&self.file, buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Length for PosFile {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for PosFile {
    type T = std::io::BufReader<PosRead>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(std::io::BufReader::new(PosRead { file: self.file.clone(), pos: start }))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        // Offsets and lengths come from the file's footer: check them against the file
        // before allocating, so a corrupt footer cannot ask for gigabytes.
        if start.checked_add(length as u64).is_none_or(|end| end > self.len) {
            return Err(parquet::errors::ParquetError::EOF(format!(
                "the footer asks for {length} bytes at offset {start}, the file has {}",
                self.len
            )));
        }
        let mut buf = vec![0u8; length];
        let mut done = 0;
        while done < length {
            match read_at(&self.file, &mut buf[done..], start + done as u64) {
                Ok(0) => return Err(parquet::errors::ParquetError::EOF(format!("expected {length} bytes at offset {start}, the file ends after {done}"))),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(buf.into())
    }
}

/// `n` records of a flat column as JSON values (null where the value is null).
fn read_values(r: &mut ColumnReader, max_def: i16, n: usize) -> parquet::errors::Result<Vec<Value>> {
    fn typed<T: DataType>(
        r: &mut parquet::column::reader::ColumnReaderImpl<T>,
        max_def: i16,
        n: usize,
        conv: impl Fn(&T::T) -> Value,
    ) -> parquet::errors::Result<Vec<Value>>
    where
        T::T: Clone,
    {
        let (mut defs, mut vals) = (Vec::new(), Vec::new());
        let (got, _, _) = r.read_records(n, Some(&mut defs), None, &mut vals)?;
        let mut out = Vec::with_capacity(got);
        let mut vi = 0;
        // An index loop: `defs` is empty for a required column (max_def == 0), so it cannot drive the loop.
        #[allow(clippy::needless_range_loop)]
        for k in 0..got {
            if max_def == 0 || defs[k] == max_def {
                out.push(conv(&vals[vi]));
                vi += 1;
            } else {
                out.push(Value::Null);
            }
        }
        Ok(out)
    }
    let num = |x: f64| serde_json::Number::from_f64(x).map(Value::Number).unwrap_or(Value::Null);
    match r {
        ColumnReader::BoolColumnReader(c) => typed(c, max_def, n, |v| Value::Bool(*v)),
        ColumnReader::Int32ColumnReader(c) => typed(c, max_def, n, |v| Value::from(*v)),
        ColumnReader::Int64ColumnReader(c) => typed(c, max_def, n, |v| Value::from(*v)),
        ColumnReader::FloatColumnReader(c) => typed(c, max_def, n, |v| num(*v as f64)),
        ColumnReader::DoubleColumnReader(c) => typed(c, max_def, n, |v| num(*v)),
        ColumnReader::ByteArrayColumnReader(c) => {
            typed(c, max_def, n, |v| std::str::from_utf8(v.data()).map(|s| Value::String(s.to_string())).unwrap_or(Value::Null))
        }
        // Not chosen by `open` (INT96 timestamps, fixed-length binary).
        _ => Ok(vec![Value::Null; n]),
    }
}
