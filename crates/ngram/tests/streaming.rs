//! The streaming (on-disk, bounded-memory) estimator must write exactly the ARPA text the
//! in-memory estimator writes, however many times it has to spill.

use ferrolm_ngram::{train_text, StreamOptions, StreamingEstimator, TrainOptions};

mod common;

fn corpus(sentences: usize, vocab: u64, seed: u64) -> Vec<String> {
    common::corpus(sentences, vocab, seed, 0..14)
}

fn in_memory(text: &[String], order: usize) -> Vec<u8> {
    let m = train_text(text.iter().map(|s| s.as_str()), &TrainOptions { order, discount_fallback: true }).unwrap();
    let mut out = Vec::new();
    m.write_arpa_to(&mut out).unwrap();
    out
}

fn streamed(text: &[String], order: usize, memory: usize, tmp: &std::path::Path) -> (Vec<u8>, ferrolm_ngram::StreamReport) {
    let opts = StreamOptions { order, discount_fallback: true, memory, temp_dir: Some(tmp.to_path_buf()) };
    let mut est = StreamingEstimator::new(opts).unwrap();
    for l in text {
        est.add_line(l).unwrap();
    }
    let mut out = Vec::new();
    let r = est.finish_to(&mut out).unwrap();
    (out, r)
}

#[test]
fn streaming_with_many_spills_writes_the_in_memory_arpa_byte_for_byte() {
    let text = corpus(6000, 800, 11);
    let tmp = tempfile::tempdir().unwrap();
    for order in [1, 2, 3, 5] {
        let want = in_memory(&text, order);
        // 64 KiB: the counting table holds ~1000 entries, so it spills dozens of times and
        // the merges need several passes
        let (got, rep) = streamed(&text, order, 64 << 10, tmp.path());
        assert!(order == 1 || rep.count_spills >= 10, "order {order}: only {} spills", rep.count_spills);
        assert_eq!(String::from_utf8(got).unwrap(), String::from_utf8(want.clone()).unwrap(), "order {order}");
        // a budget large enough for everything gives the same text too
        let (got, rep) = streamed(&text, order, 1 << 30, tmp.path());
        assert_eq!(rep.count_spills, 0);
        assert!(got == want, "order {order} without spills");
    }
    // every temporary file is gone
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn streaming_rejects_reserved_tokens_and_bad_memory_sizes() {
    let mut est = StreamingEstimator::new(StreamOptions { order: 3, ..Default::default() }).unwrap();
    assert!(est.add_line("a <s> b").is_err());
    assert_eq!(ferrolm_ngram::parse_memory("1G").unwrap(), 1 << 30);
    assert_eq!(ferrolm_ngram::parse_memory("64k").unwrap(), 64 << 10);
    assert_eq!(ferrolm_ngram::parse_memory("1000").unwrap(), 1000);
    assert!(ferrolm_ngram::parse_memory("12Q").is_err());
    assert!(ferrolm_ngram::parse_memory("-3M").is_err());
}
