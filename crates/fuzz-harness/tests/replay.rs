//! Replays the committed fuzz seeds (`fuzz/corpus/<target>/`) and every input that once
//! crashed a parser (`fuzz/regressions/<target>/`) through the same entry point the libFuzzer
//! targets use. CI has no libFuzzer; this is how it keeps every fixed crash fixed. Seconds.
//!
//! `cargo test -p ferrolm-fuzz-harness --release -- --ignored make_seeds` rewrites the seeds
//! from small real files generated here (run it when a format changes).

use std::path::{Path, PathBuf};
use std::time::Instant;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn replay(target: &str) {
    let seeds = files(&fuzz_dir().join("corpus").join(target));
    let crashes = files(&fuzz_dir().join("regressions").join(target));
    assert!(!seeds.is_empty(), "no seed corpus for {target} in fuzz/corpus/{target}");
    let t0 = Instant::now();
    let (mut ok, mut err) = (0, 0);
    for f in seeds.iter().chain(&crashes) {
        let data = std::fs::read(f).unwrap();
        let outcome = std::panic::catch_unwind(|| ferrolm_fuzz_harness::run(target, &data));
        match outcome {
            Ok(Some(Ok(()))) => ok += 1,
            Ok(Some(Err(_))) => err += 1,
            Ok(None) => panic!("target {target} is not built"),
            Err(_) => panic!("{target}: {} panicked (see the message above)", f.display()),
        }
    }
    // Seeds are real files written by ferrolm's own writers: most must load.
    let seeds_ok = seeds
        .iter()
        .filter(|f| !f.file_name().unwrap().to_string_lossy().starts_with("bad-"))
        .all(|f| matches!(ferrolm_fuzz_harness::run(target, &std::fs::read(f).unwrap()), Some(Ok(()))));
    assert!(seeds_ok, "{target}: a well-formed seed (name not starting with bad-) was refused");
    eprintln!("{target}: {} seeds, {} regressions: {ok} ok, {err} errors, {:.2?}", seeds.len(), crashes.len(), t0.elapsed());
}

macro_rules! replay_tests {
    ($($name:ident),*) => {
        $(#[test] fn $name() { replay(stringify!($name)); })*
        #[test]
        fn every_target_has_a_replay_test() {
            let mut ours = vec![$(stringify!($name)),*];
            ours.sort();
            let mut all = ferrolm_fuzz_harness::TARGETS.to_vec();
            all.sort();
            assert_eq!(ours, all);
        }
    };
}

replay_tests!(jsonl, gzip, zstd, parquet, tokenizer_json, shards, arpa, ngram_binary, word2vec, config_toml, safetensors, records);

// ------------------------------------------------------------------ seed generation

fn put(target: &str, name: &str, data: &[u8]) {
    let dir = fuzz_dir().join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

fn gz(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

const PROSE: &str = "The quick brown fox jumps over the lazy dog. The dog sleeps.\nA small parser reads the file and returns the value.\nThe river moves under the old bridge near the city.";

#[test]
#[ignore = "writes fuzz/corpus; run by hand when a format changes"]
fn make_seeds() {
    let tmp = tempfile_dir();
    // JSONL, plain and compressed
    let jsonl = b"{\"id\": \"a\", \"text\": \"The quick brown fox.\", \"source\": \"prose\"}\n{\"text\": \"second line\", \"lang\": \"en\"}\n\n{\"text\": 3}\n{broken\n{\"id\": 7, \"text\": \"caf\\u00e9 \xc3\xa9\"}\r\n";
    put("jsonl", "records.jsonl", jsonl);
    put("jsonl", "bad-utf8.jsonl", b"{\"text\": \"ok\"}\n{\"text\": \"\xff\xfe\"}\n");
    put("gzip", "records.jsonl.gz", &gz(jsonl));
    let mut two = gz(b"{\"text\": \"member one\"}\n");
    two.extend(gz(b"{\"text\": \"member two\"}\n"));
    put("gzip", "two-members.jsonl.gz", &two);
    let g = gz(jsonl);
    put("gzip", "bad-truncated.jsonl.gz", &g[..g.len() / 2]);
    let z = zstd::encode_all(&jsonl[..], 3).unwrap();
    put("zstd", "records.jsonl.zst", &z);
    put("zstd", "bad-truncated.jsonl.zst", &z[..z.len() / 2]);
    // Parquet written by ferrolm's own writer, both codecs
    for (name, c) in [("zstd.parquet", ferrolm_corpus::ParquetCompression::Zstd), ("snappy.parquet", ferrolm_corpus::ParquetCompression::Snappy)] {
        let p = tmp.join(name);
        let opts = ferrolm_corpus::ParquetWriteOptions { row_group_docs: 2, compression: c, ..Default::default() };
        let mut w = ferrolm_corpus::ParquetDocWriter::create(&p, &opts).unwrap();
        for (i, line) in PROSE.lines().enumerate() {
            let mut d = ferrolm_corpus::Document::new(format!("doc{i}"), line, "prose");
            d.meta.insert("n".into(), (i as u64).into());
            w.write(&d).unwrap();
        }
        w.commit().unwrap();
        put("parquet", name, &std::fs::read(&p).unwrap());
        if name == "zstd.parquet" {
            let mut rec = vec![3u8];
            rec.extend(std::fs::read(&p).unwrap());
            put("records", "rows.parquet", &rec);
        }
    }
    // tokenizer.json: a tiny BPE and a character tokenizer
    let texts: Vec<&str> = PROSE.lines().collect();
    let cfg = ferrolm_tokenizer::BpeTrainConfig { vocab_size: 300, min_frequency: 2, ..Default::default() };
    let bpe = ferrolm_tokenizer::Tokenizer::train_bpe(texts.iter().copied(), &cfg).unwrap();
    put("tokenizer_json", "bpe.json", bpe.to_json_string().unwrap().as_bytes());
    let chr = ferrolm_tokenizer::Tokenizer::train_char(texts.iter().copied(), &["<|endoftext|>".to_string()]).unwrap();
    put("tokenizer_json", "char.json", chr.to_json_string().unwrap().as_bytes());
    // token shards: index.json and one data file, packed as the target reads them
    for (name, vocab) in [("u16", 300usize), ("u32", 70_000)] {
        let d = tmp.join(format!("shards-{name}"));
        let mut w = ferrolm_tokenizer::ShardWriter::create(&d, vocab, Some(0)).unwrap();
        w.write_document(&[5, 6, 7, 8, (vocab - 1) as u32], 20).unwrap();
        w.write_document(&[9, 10], 5).unwrap();
        w.finish().unwrap();
        let index = std::fs::read(d.join("index.json")).unwrap();
        let mut packed = (index.len() as u32).to_le_bytes().to_vec();
        packed.extend(&index);
        packed.extend(std::fs::read(d.join("shard_00000.bin")).unwrap());
        put("shards", &format!("{name}.shards"), &packed);
    }
    // ARPA and the binary n-gram form
    let model = ferrolm_ngram::train_text(PROSE.lines(), &ferrolm_ngram::TrainOptions { order: 3, discount_fallback: true }).unwrap();
    let arpa = tmp.join("lm.arpa");
    model.write_arpa(&arpa).unwrap();
    put("arpa", "order3.arpa", &std::fs::read(&arpa).unwrap());
    put("arpa", "srilm-no-unk.arpa", b"\\data\\\nngram 1=3\nngram 2=1\n\n\\1-grams:\n-1.0\t<s>\t-0.3\n-0.5\t</s>\n-0.4\tcat\t-0.2\n\n\\2-grams:\n-0.2\t<s> cat\n\n\\end\\\n");
    let bin = tmp.join("lm.bin");
    ferrolm_ngram::arpa_to_binary(&arpa, &bin).unwrap();
    put("ngram_binary", "order3.bin", &std::fs::read(&bin).unwrap());
    put("ngram_binary", "order3.arpa", &std::fs::read(&arpa).unwrap());
    // word2vec, text and binary
    let words: Vec<String> = ["the", "cat", "dog", "</s>"].iter().map(|s| s.to_string()).collect();
    let data: Vec<f32> = (0..words.len() * 5).map(|i| (i as f32 * 0.37).sin()).collect();
    for (name, binary) in [("vectors.txt", false), ("vectors.bin", true)] {
        let p = tmp.join(name);
        ferrolm_word2vec::write_vectors(&p, &words, &data, 5, binary).unwrap();
        put("word2vec", name, &std::fs::read(&p).unwrap());
    }
    // configs with --set overrides after a NUL byte
    let small = std::fs::read(fuzz_dir().join("../configs/small.toml")).unwrap();
    let mut with_sets = small.clone();
    with_sets.extend(b"\0train.max_steps=7\nmodel.kind=prefix\nmodel.d_model=64\ndata.train=\"x\"\n");
    put("config_toml", "small.toml", &small);
    put("config_toml", "small-with-sets.toml", &with_sets);
    put("config_toml", "corpus.toml", &std::fs::read(fuzz_dir().join("../configs/quickstart.toml")).unwrap());
    // a safetensors checkpoint as candle writes it
    {
        use candle_core::{Device, Tensor};
        let mut m = std::collections::HashMap::new();
        m.insert("w".to_string(), Tensor::arange(0f32, 6.0, &Device::Cpu).unwrap().reshape((2, 3)).unwrap());
        m.insert("b".to_string(), Tensor::new(&[1u32, 2], &Device::Cpu).unwrap());
        let p = tmp.join("model.safetensors");
        candle_core::safetensors::save(&m, &p).unwrap();
        put("safetensors", "small.safetensors", &std::fs::read(&p).unwrap());
    }
    // fine-tuning records: first byte 0 csv, 1 jsonl, 2 json, 3 parquet
    put("records", "alpaca.csv", b"\x00instruction,input,output\n\"Say hi\",,\"Hi, \"\"you\"\"\"\nTranslate,chat,\"multi\nline\"\n");
    put("records", "chat.jsonl", b"\x01{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}]}\n{\"prompt\": \"a\", \"completion\": \"b\"}\n");
    put("records", "array.json", b"\x02[{\"instruction\": \"x\", \"output\": \"y\"}, {\"chosen\": \"a\", \"rejected\": \"b\"}]");
    let _ = std::fs::remove_dir_all(&tmp);
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrolm-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
