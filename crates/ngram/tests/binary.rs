//! The memory-mapped binary form scores exactly as the ARPA model it was built from.

use ferrolm_ngram::{arpa_to_binary, train_text, AnyModel, BinaryModel, Model, TrainOptions};

mod common;

fn corpus(sentences: usize, vocab: u64, seed: u64) -> Vec<String> {
    common::corpus(sentences, vocab, seed, 0..14)
}

#[test]
fn binary_scores_equal_arpa_scores() {
    let dir = tempfile::tempdir().unwrap();
    let text = corpus(5000, 600, 3);
    for order in [1, 2, 3, 5] {
        let m = train_text(text.iter().map(|s| s.as_str()), &TrainOptions { order, discount_fallback: true }).unwrap();
        let arpa = dir.path().join(format!("m{order}.arpa"));
        let bin = dir.path().join(format!("m{order}.bin"));
        m.write_arpa(&arpa).unwrap();
        let stats = arpa_to_binary(&arpa, &bin).unwrap();
        assert_eq!(stats.bytes, std::fs::metadata(&bin).unwrap().len());
        let a = Model::read_arpa(&arpa).unwrap();
        let b = BinaryModel::open(&bin).unwrap();
        assert_eq!(b.order(), order);
        assert_eq!(b.vocab_size(), a.words.len());
        for (i, w) in a.words.iter().enumerate() {
            assert_eq!(b.id(w), i as u32);
            assert_eq!(b.word(i as u32), w);
        }
        // held-out text from another seed: unseen n-grams and words (OOVs) included
        let test = corpus(400, 700, 99);
        let mut worst = 0.0f64;
        for s in test.iter().chain(["", "never seen words", "w1 w1 w1 w1 w1 w1"].iter().map(|s| s.to_string()).collect::<Vec<_>>().iter()) {
            let x = a.score_sentence(s);
            let y = b.score_sentence(s);
            assert_eq!(x.tokens, y.tokens);
            assert_eq!(x.oovs, y.oovs, "{s}");
            worst = worst.max((x.log10_prob - y.log10_prob).abs());
        }
        // probabilities are stored as f32, as KenLM stores them
        assert!(worst < 1e-4, "order {order}: max |Δ log10| = {worst}");
        let any = AnyModel::open(&bin).unwrap();
        // per word: the binary model's stateful walk (backoffs carried from the previous
        // word) matches the ARPA model's independent lookups in id, matched length and value
        let any_arpa = AnyModel::open(&arpa).unwrap();
        let mut buf = Vec::new();
        for s in test.iter().take(200) {
            let x = any_arpa.score_words(s);
            any.score_words_into(s, &mut buf);
            assert_eq!(x.len(), buf.len());
            for (i, (a, b)) in x.iter().zip(&buf).enumerate() {
                assert_eq!((a.0, a.1), (b.0, b.1), "order {order}, `{s}`, token {i}");
                assert!((a.2 - b.2).abs() < 1e-4, "order {order}, `{s}`, token {i}: {} vs {}", a.2, b.2);
            }
        }
        assert!(matches!(any, AnyModel::Binary(_)));
        let doc = test[..50].join("\n");
        let (pa, pb) = (AnyModel::open(&arpa).unwrap().score_document(&doc), any.score_document(&doc));
        assert!((pa / pb - 1.0).abs() < 1e-5, "{pa} vs {pb}");
    }
}

#[test]
fn corrupt_or_truncated_binary_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let m = train_text(["a b c", "a c"], &TrainOptions { order: 3, discount_fallback: true }).unwrap();
    let arpa = dir.path().join("m.arpa");
    let bin = dir.path().join("m.bin");
    m.write_arpa(&arpa).unwrap();
    arpa_to_binary(&arpa, &bin).unwrap();
    let bytes = std::fs::read(&bin).unwrap();
    let cut = dir.path().join("cut.bin");
    std::fs::write(&cut, &bytes[..bytes.len() - 8]).unwrap();
    let e = BinaryModel::open(&cut).err().unwrap().to_string();
    assert!(e.contains("truncated"), "{e}");
    // a truncated ARPA file names what it was reading
    let text = std::fs::read_to_string(&arpa).unwrap();
    let short = dir.path().join("short.arpa");
    std::fs::write(&short, &text[..text.len() / 2]).unwrap();
    let e = format!("{:#}", arpa_to_binary(&short, &dir.path().join("x.bin")).err().unwrap());
    assert!(e.contains("short.arpa"), "{e}");
    assert!(!dir.path().join("x.bin").exists());
}
