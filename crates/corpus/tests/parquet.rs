//! The Parquet reader on files written here with the same crate: documents, metadata, order,
//! and every malformed row or file counted with its reason.

use ferrolm_corpus::{read_paths, ReadItem, ReadOptions};
use parquet::basic::{Compression, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::path::Path;
use std::sync::Arc;

/// One column's values for a row group: strings (None = null, Err = raw bytes) or integers.
enum Col {
    Str(Vec<Option<Result<String, Vec<u8>>>>),
    Int(Vec<Option<i64>>),
}

fn write_parquet(path: &Path, schema: &str, groups: &[Vec<Col>], compression: Compression) {
    let schema = Arc::new(parse_message_type(schema).unwrap());
    let props = Arc::new(WriterProperties::builder().set_compression(compression).build());
    let mut w = SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    for cols in groups {
        let mut rg = w.next_row_group().unwrap();
        let mut k = 0;
        while let Some(mut col) = rg.next_column().unwrap() {
            match &cols[k] {
                Col::Str(v) => {
                    let defs: Vec<i16> = v.iter().map(|x| x.is_some() as i16).collect();
                    let vals: Vec<ByteArray> = v
                        .iter()
                        .flatten()
                        .map(|x| match x {
                            Ok(s) => ByteArray::from(s.as_str()),
                            Err(b) => ByteArray::from(b.clone()),
                        })
                        .collect();
                    col.typed::<ByteArrayType>().write_batch(&vals, Some(&defs), None).unwrap();
                }
                Col::Int(v) => {
                    let defs: Vec<i16> = v.iter().map(|x| x.is_some() as i16).collect();
                    let vals: Vec<i64> = v.iter().flatten().copied().collect();
                    col.typed::<Int64Type>().write_batch(&vals, Some(&defs), None).unwrap();
                }
            }
            col.close().unwrap();
            k += 1;
        }
        rg.close().unwrap();
    }
    w.close().unwrap();
}

fn s(x: &str) -> Option<Result<String, Vec<u8>>> {
    Some(Ok(x.to_string()))
}

const SCHEMA: &str = "message doc { OPTIONAL BYTE_ARRAY id (UTF8); OPTIONAL BYTE_ARRAY text (UTF8); OPTIONAL INT64 score; }";

#[test]
fn parquet_rows_become_documents_in_order_and_bad_rows_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("train-00000.parquet");
    write_parquet(
        &p,
        SCHEMA,
        &[
            vec![Col::Str(vec![s("a"), s("b"), None]), Col::Str(vec![s("first text"), None, s("third")]), Col::Int(vec![Some(7), Some(8), None])],
            vec![Col::Str(vec![s("d"), None]), Col::Str(vec![Some(Err(vec![b'o', b'k', 0xff])), s("fifth")]), Col::Int(vec![Some(1), Some(2)])],
        ],
        Compression::SNAPPY,
    );
    let (docs, stats) = read_paths(&[dir.path().to_path_buf()], &ReadOptions::default()).unwrap();
    let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
    assert_eq!(texts, vec!["first text", "third", "fifth"]);
    assert_eq!(docs[0].id, "a");
    assert_eq!(docs[0].meta["score"], 7);
    assert_eq!(docs[0].meta["row"], 1);
    assert!(docs[1].meta["score"].is_null());
    // No id value: the id is file:row (1-based over the whole file).
    assert!(docs[2].id.ends_with("train-00000.parquet:5"), "{}", docs[2].id);
    assert_eq!(docs[2].source, "prose");
    assert_eq!(stats.documents, 3);
    assert_eq!(stats.rejected, 2);
    assert_eq!(stats.rejected_by_reason.get("field_not_string"), Some(&1), "null text");
    assert_eq!(stats.rejected_by_reason.get("bad_utf8"), Some(&1));
    let bad = stats.examples.iter().find(|r| r.reason == "bad_utf8").unwrap();
    assert_eq!(bad.line, Some(4));
}

#[test]
fn text_field_is_configurable_and_wrong_columns_reject_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("content.parquet");
    write_parquet(
        &good,
        "message doc { REQUIRED BYTE_ARRAY content (UTF8); REQUIRED BYTE_ARRAY source (UTF8); }",
        &[vec![Col::Str(vec![s("hello"), s("world")]), Col::Str(vec![s("web"), s("books")])]],
        Compression::ZSTD(ZstdLevel::default()),
    );
    let opts = ReadOptions { text_field: "content".into(), ..Default::default() };
    let (docs, stats) = read_paths(std::slice::from_ref(&good), &opts).unwrap();
    assert_eq!(docs.iter().map(|d| (d.text.as_str(), d.source.as_str())).collect::<Vec<_>>(), vec![("hello", "web"), ("world", "books")]);
    assert_eq!(stats.rejected, 0);

    // The default field `text` is absent: all 2 rows are rejected as missing_field, in one record.
    let (docs, stats) = read_paths(std::slice::from_ref(&good), &ReadOptions::default()).unwrap();
    assert!(docs.is_empty());
    assert_eq!(stats.rejected_by_reason.get("missing_field"), Some(&2));
    assert!(stats.examples[0].detail.contains("content"), "names the columns: {}", stats.examples[0]);

    // `text` exists but holds integers: every row (3, over two row groups) is field_not_string.
    let ints = dir.path().join("ints.parquet");
    write_parquet(
        &ints,
        "message doc { OPTIONAL INT64 text; }",
        &[vec![Col::Int(vec![Some(1), Some(2)])], vec![Col::Int(vec![None])]],
        Compression::UNCOMPRESSED,
    );
    let (docs, stats) = read_paths(std::slice::from_ref(&ints), &ReadOptions::default()).unwrap();
    assert!(docs.is_empty());
    assert_eq!(stats.rejected, 3);
    assert_eq!(stats.rejected_by_reason.get("field_not_string"), Some(&3), "{:?}", stats.examples);

    // A truncated file (footer gone) is one broken_parquet rejection; nothing is read from it.
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.parquet");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (docs, stats) = read_paths(&[cut], &ReadOptions::default()).unwrap();
    assert!(docs.is_empty());
    assert_eq!(stats.rejected_by_reason.get("broken_parquet"), Some(&1));
}

#[test]
fn corrupt_row_group_counts_its_rows_and_the_next_group_is_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.parquet");
    let g1: Vec<_> = (0..50).map(|i| s(&format!("group one row {i} {}", "x".repeat(40)))).collect();
    let g2: Vec<_> = (0..30).map(|i| s(&format!("group two row {i}"))).collect();
    write_parquet(&p, "message doc { REQUIRED BYTE_ARRAY text (UTF8); }", &[vec![Col::Str(g1)], vec![Col::Str(g2)]], Compression::UNCOMPRESSED);
    // Overwrite the middle of the first row group's data page (its values, not the footer).
    let mut bytes = std::fs::read(&p).unwrap();
    let at = bytes.windows(b"group one row 20".len()).position(|w| w == b"group one row 20").unwrap();
    for b in &mut bytes[at - 4..at] {
        *b = 0xff; // the length prefix of a value: now far past the page
    }
    std::fs::write(&p, &bytes).unwrap();
    let (docs, stats) = read_paths(std::slice::from_ref(&p), &ReadOptions::default()).unwrap();
    assert_eq!(docs.len() as u64 + stats.rejected, 80, "every row accounted for: {:?}", stats.examples);
    assert!(stats.rejected_by_reason.get("broken_parquet").copied().unwrap_or(0) >= 1, "{:?}", stats.rejected_by_reason);
    assert_eq!(docs.iter().filter(|d| d.text.starts_with("group two")).count(), 30);
}

#[test]
fn many_row_groups_stream_in_the_same_order_with_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    for f in 0..3 {
        let groups: Vec<Vec<Col>> = (0..7).map(|g| vec![Col::Str((0..100).map(|i| s(&format!("file {f} group {g} row {i}"))).collect())]).collect();
        write_parquet(&dir.path().join(format!("part-{f}.parquet")), "message doc { REQUIRED BYTE_ARRAY text (UTF8); }", &groups, Compression::SNAPPY);
    }
    // And a JSONL file larger than one parsing block, to exercise the parallel line blocks.
    let lines: String = (0..40_000).map(|i| format!("{{\"text\": \"line {i} {}\"}}\n", "y".repeat(i % 50))).collect();
    std::fs::write(dir.path().join("z.jsonl"), lines).unwrap();
    let read = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut s = ferrolm_corpus::DocumentStream::from_paths(&[dir.path().to_path_buf()], ReadOptions::default()).unwrap();
            let items: Vec<ReadItem> = s.by_ref().collect();
            (items, s.into_stats())
        })
    };
    let (one, st1) = read(1);
    let (four, st4) = read(4);
    assert_eq!(one.len(), four.len());
    if let Some(i) = (0..one.len()).find(|&i| one[i] != four[i]) {
        panic!("item {i} differs: {:?} vs {:?}", one[i], four[i]);
    }
    assert_eq!(st1, st4);
    assert_eq!(st1.documents, 2100 + 40_000);
    let texts: Vec<String> = one.iter().map(|i| if let ReadItem::Doc(d) = i { d.text.clone() } else { panic!() }).collect();
    assert_eq!(texts[0], "file 0 group 0 row 0");
    assert_eq!(texts[701], "file 1 group 0 row 1");
    assert_eq!(texts[2100], "line 0 ");
    assert!(texts[2100 + 39_999].starts_with("line 39999 "));
    if let ReadItem::Doc(d) = &one[2100 + 39_999] {
        assert_eq!(d.meta["line"], 40_000);
    }
}

#[test]
fn a_page_the_parquet_crate_asserts_on_is_a_broken_parquet_rejection() {
    // Issue 18, found by fuzzing: a changed integer in a page header made the parquet crate
    // fail an `assert!` (util/bit_util.rs) inside the row-group decoder, which took down the
    // whole reader (and `ferrolm data build`). Now the row group's rows are one counted
    // `broken_parquet` rejection naming the file.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/parquet/bit-util-assert-size.parquet");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("hostile.parquet");
    std::fs::copy(&src, &p).unwrap();
    let (docs, stats) = read_paths(std::slice::from_ref(&p), &ReadOptions::default()).unwrap();
    assert!(stats.rejected >= 1, "{stats:?}");
    assert_eq!(stats.rejected_by_reason.get("broken_parquet").copied().unwrap_or(0), stats.rejected, "{stats:?}");
    assert!(stats.examples.iter().all(|r| r.file == p.display().to_string()), "{stats:?}");
    assert!(stats.examples.iter().any(|r| r.detail.contains("Parquet decoder failed")), "{stats:?}");
    let _ = docs;
}
