use ferrolm_tokenizer::shards::{ShardWriter, TokenShards};
use ferrolm_tokenizer::{special, BpeTrainConfig, DecodeStream, Tokenizer, TokenizerKind};
use proptest::prelude::*;
use std::sync::OnceLock;

fn corpus() -> Vec<String> {
    let mut v = Vec::new();
    for i in 0..200 {
        v.push(format!(
            "fn parse_{i}(input: &str) -> Result<Value, Error> {{\n    // Parse the value number {i}.\n    let x = input.trim();\n}}\n\
             Die Größe ist {i} Meter — naïve café 日本語テキスト {i}. 🚀\n"
        ));
    }
    v
}

fn bpe() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        Tokenizer::train_bpe(corpus().iter(), &BpeTrainConfig { vocab_size: 500, min_frequency: 2, special_tokens: special::defaults() })
            .unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn byte_level_bpe_round_trips_arbitrary_utf8(s in "\\PC*") {
        let t = bpe();
        prop_assert_eq!(t.decode(&t.encode(&s)), s.clone());
        // token_bytes accounts for every byte of the text
        let bytes = t.token_bytes();
        let n: u64 = t.encode(&s).iter().map(|&i| bytes[i as usize] as u64).sum();
        prop_assert_eq!(n, s.len() as u64);
    }

    #[test]
    fn streaming_decode_equals_batch_decode(s in "\\PC{0,60}") {
        let t = bpe();
        let ids = t.encode(&s);
        let mut d = DecodeStream::new(t);
        let mut out = String::new();
        for &i in &ids { out.push_str(&d.push(i)); }
        out.push_str(&d.finish());
        prop_assert_eq!(out, s);
    }
}

#[test]
fn bpe_learns_merges_and_keeps_special_tokens() {
    let t = bpe();
    assert_eq!(t.kind(), TokenizerKind::Bpe);
    assert_eq!(t.vocab_size(), 500);
    assert_eq!(t.eot_id(), 0, "EOT is the first special token");
    let text = "fn parse_7(input: &str)";
    assert!(t.encode(text).len() < text.len() / 2, "merges compress repeated code");
    let ids = t.encode("a<|endoftext|>b<|user|>");
    assert!(ids.contains(&t.eot_id()));
    assert!(ids.contains(&t.token_id(special::USER).unwrap()));
    assert_eq!(t.token_bytes()[t.eot_id() as usize], 0);
}

#[test]
fn save_and_load_give_the_same_tokenizer_and_hf_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    bpe().save(&p).unwrap();
    let back = Tokenizer::from_file(&p).unwrap();
    let s = "let größe = 42; // 日本 🚀 <|endoftext|>";
    assert_eq!(back.encode(s), bpe().encode(s));
    // The file is a standard tokenizer.json: the Hugging Face library loads it directly.
    let hf = tokenizers::Tokenizer::from_file(&p).unwrap();
    assert_eq!(hf.encode(s, false).unwrap().get_ids(), bpe().encode(s).as_slice());
    assert_eq!(hf.decode(&bpe().encode(s), false).unwrap(), s);
}

#[test]
fn char_tokenizer_round_trips_and_marks_unknown_chars() {
    let t = Tokenizer::train_char(["hello world", "ÿ日"].iter(), &special::defaults()).unwrap();
    assert_eq!(t.kind(), TokenizerKind::Char);
    let s = "hello<|endoftext|>日 world";
    assert_eq!(t.decode(&t.encode(s)), s);
    assert_eq!(t.encode(s).len(), s.chars().count() - "<|endoftext|>".len() + 1);
    let unk = t.token_id(special::UNK).unwrap();
    assert_eq!(t.encode("hz"), vec![t.token_id("h").unwrap(), unk]);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    t.save(&p).unwrap();
    let back = Tokenizer::from_file(&p).unwrap();
    assert_eq!(back.encode(s), t.encode(s));
    assert_eq!(back.vocab_size(), t.vocab_size());
}

#[test]
fn missing_or_corrupt_tokenizer_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = Tokenizer::from_file(&dir.path().join("nope.json")).err().unwrap().to_string();
    assert!(err.contains("nope.json") && err.contains("cannot read"), "{err}");
    let p = dir.path().join("bad.json");
    std::fs::write(&p, "{\"model\": 3}").unwrap();
    let err = Tokenizer::from_file(&p).err().unwrap().to_string();
    assert!(err.contains("bad.json"), "{err}");
}

#[test]
fn shards_round_trip_in_u16_and_u32() {
    for vocab in [1000usize, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ShardWriter::create(dir.path(), vocab, 0).unwrap();
        let docs: Vec<Vec<u32>> = (0..50).map(|d| (0..(d * 3 + 1)).map(|i| ((i * 7919 + d) % (vocab - 1) + 1) as u32).collect()).collect();
        for d in &docs {
            w.write_document(d, d.len() as u64 * 2).unwrap();
        }
        let idx = w.finish().unwrap();
        let r = TokenShards::open(dir.path()).unwrap();
        r.verify().unwrap();
        let expect: Vec<u32> = docs.iter().flat_map(|d| d.iter().copied().chain([0])).collect();
        assert_eq!(r.len(), expect.len());
        assert_eq!(r.get(0, r.len()), expect);
        assert_eq!(r.get(5, 17), expect[5..22].to_vec());
        assert_eq!(idx.documents, 50);
        assert_eq!(r.text_bytes(), docs.iter().map(|d| d.len() as u64 * 2).sum::<u64>());
        let out_of_vocab = ShardWriter::create(&dir.path().join("x"), vocab, 0).unwrap().write_document(&[vocab as u32], 1);
        assert!(out_of_vocab.is_err());
    }
}

#[test]
fn truncated_shard_or_missing_index_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = TokenShards::open(dir.path()).err().unwrap().to_string();
    assert!(err.contains("index.json") && err.contains("did not finish"), "{err}");
    let mut w = ShardWriter::create(dir.path(), 1000, 0).unwrap();
    w.write_document(&[1, 2, 3, 4, 5], 5).unwrap();
    w.finish().unwrap();
    let shard = dir.path().join("shard-00000.bin");
    let b = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &b[..b.len() - 2]).unwrap();
    let err = TokenShards::open(dir.path()).err().unwrap().to_string();
    assert!(err.contains("truncated"), "{err}");
}
