//! Hostile ARPA and binary model files (issue 18): no panic, no allocation sized by a header
//! the file cannot back, no endless probe loop; errors name the file (and line for ARPA).

use ferrolm_ngram::{arpa_to_binary, AnyModel, BinaryModel, Model};
use std::path::{Path, PathBuf};

const ARPA: &str = "\\data\\\nngram 1=4\nngram 2=2\n\n\\1-grams:\n-1.0\t<s>\t-0.3\n-0.5\t</s>\n-0.4\tcat\t-0.2\n-0.6\t<unk>\n\n\\2-grams:\n-0.2\t<s> cat\n-0.1\tcat </s>\n\n\\end\\\n";

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn err(r: anyhow::Result<impl Sized>) -> String {
    format!("{:#}", r.err().expect("must be refused"))
}

#[test]
fn end_without_a_data_section_is_an_error_not_a_panic() {
    // Before the fix: `grams[0]` on an empty model (index out of bounds).
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "lm.arpa", b"\\end\\\n");
    let e = err(Model::read_arpa(&p));
    assert!(e.contains("lm.arpa") && e.contains("no \\data\\"), "{e}");
}

#[test]
fn announced_counts_beyond_the_file_are_refused_before_allocating() {
    // Before the fix: HashMap/Vec::with_capacity(count) from the header (capacity overflow
    // panic, or gigabytes), in both the reader and the binary converter.
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "lm.arpa", b"\\data\\\nngram 1=1000000000000000000\n\n\\1-grams:\n-1\ta\n\\end\\\n");
    let e = err(Model::read_arpa(&p));
    assert!(e.contains("lm.arpa") && e.contains("header announces"), "{e}");
    let e = err(arpa_to_binary(&p, &d.path().join("lm.bin")));
    assert!(e.contains("lm.arpa:2:") && e.contains("more than the file"), "{e}");
}

#[test]
fn a_model_without_sentence_markers_converts_and_scores() {
    // Before the fix: the binary form marks an absent <s> as u32::MAX and the scorer read
    // its unigram at 8 * u32::MAX bytes past the table (slice index panic).
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "lm.arpa", b"\\data\\\nngram 1=2\n\n\\1-grams:\n-0.5\tcat\t-0.1\n-0.7\tdog\n\n\\end\\\n");
    arpa_to_binary(&p, &d.path().join("lm.bin")).unwrap();
    let text = Model::read_arpa(&p).unwrap().score_sentence("cat dog bird");
    let bin = AnyModel::open(&d.path().join("lm.bin")).unwrap().score_sentence("cat dog bird");
    assert!(bin.log10_prob.is_finite() && text.log10_prob.is_finite());
    assert_eq!(bin.tokens, text.tokens);
}

fn binary(d: &Path) -> Vec<u8> {
    let p = write(d, "lm.arpa", ARPA.as_bytes());
    arpa_to_binary(&p, &d.join("ok.bin")).unwrap();
    std::fs::read(d.join("ok.bin")).unwrap()
}

#[test]
fn binary_header_sizes_that_overflow_are_an_error() {
    let d = tempfile::tempdir().unwrap();
    let mut b = binary(d.path());
    b[16..24].copy_from_slice(&(u64::MAX / 4).to_le_bytes()); // vocabulary size
    let p = write(d.path(), "bad.bin", &b);
    let e = err(BinaryModel::open(&p));
    assert!(e.contains("bad.bin") && e.contains("corrupt header"), "{e}");
}

#[test]
fn binary_vocabulary_table_with_foreign_ids_is_refused() {
    // Before the fix: accepted, then `id()` read word offsets far past the file (panic).
    let d = tempfile::tempdir().unwrap();
    let mut b = binary(d.path());
    // vocabulary table: header (56 + 16 for order 2) + offsets 8 * (vocab + 1) + blob rounded to 8
    let vocab = u64::from_le_bytes(b[16..24].try_into().unwrap());
    let blob = u64::from_le_bytes(b[24..32].try_into().unwrap());
    let vt = 72 + 8 * (vocab + 1) + blob.div_ceil(8) * 8;
    b[vt as usize..vt as usize + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let p = write(d.path(), "bad.bin", &b);
    let e = err(BinaryModel::open(&p));
    assert!(e.contains("bad.bin") && e.contains("vocabulary table"), "{e}");
}

#[test]
fn binary_tables_without_an_empty_slot_do_not_hang() {
    // Every slot of the vocabulary table filled with a valid id: a lookup used to probe forever.
    let d = tempfile::tempdir().unwrap();
    let mut b = binary(d.path());
    let vocab = u64::from_le_bytes(b[16..24].try_into().unwrap());
    let blob = u64::from_le_bytes(b[24..32].try_into().unwrap());
    let vslots = u64::from_le_bytes(b[32..40].try_into().unwrap());
    let vt = (72 + 8 * (vocab + 1) + blob.div_ceil(8) * 8) as usize;
    for s in 0..vslots as usize {
        b[vt + 4 * s..vt + 4 * s + 4].copy_from_slice(&0u32.to_le_bytes());
    }
    let p = write(d.path(), "full.bin", &b);
    let m = AnyModel::open(&p).unwrap();
    let s = m.score_sentence("cat never seen words");
    assert!(s.log10_prob.is_finite());
}
