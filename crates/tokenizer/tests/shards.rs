//! Token shards: write/read round trips for both dtypes, shard boundaries, and clear errors on
//! truncation, corruption and a missing index.

use ferrolm_tokenizer::shards::{self, Dtype, ShardWriter, TokenShards, INDEX_FILE};

fn docs(vocab: u32) -> Vec<Vec<u32>> {
    let mut x: u64 = 12345;
    (0..37)
        .map(|i| {
            (0..(i * 7) % 23)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((x >> 33) % vocab as u64) as u32
                })
                .collect()
        })
        .collect()
}

fn round_trip(vocab: usize, dtype: Dtype) {
    let dir = tempfile::tempdir().unwrap();
    let eot = vocab as u32 - 1;
    let docs = docs(eot); // ids below eot
    let mut w = ShardWriter::create(dir.path(), vocab, Some(eot)).unwrap().with_max_shard_tokens(50);
    let mut expected = Vec::new();
    let mut bytes = 0;
    for (i, d) in docs.iter().enumerate() {
        w.write_document(d, i as u64 * 3).unwrap();
        expected.extend_from_slice(d);
        expected.push(eot);
        bytes += i as u64 * 3;
    }
    let index = w.finish().unwrap();
    assert_eq!(index.dtype, dtype);
    assert_eq!(index.tokens as usize, expected.len());
    assert_eq!(index.documents, docs.len() as u64);
    assert_eq!(index.text_bytes, bytes);
    assert!(index.shards.len() > 3, "small max shard size gives several shards");
    assert!(index.shards.iter().all(|s| s.tokens <= 50));
    let file_bytes = std::fs::metadata(dir.path().join(&index.shards[0].file)).unwrap().len();
    assert_eq!(file_bytes, index.shards[0].tokens * dtype.bytes() as u64);

    let r = TokenShards::open(dir.path()).unwrap();
    r.verify().unwrap();
    assert_eq!(r.len(), expected.len());
    assert_eq!(r.num_docs(), docs.len() as u64);
    assert_eq!(r.text_bytes(), bytes);
    assert_eq!(r.eot(), Some(eot));
    assert_eq!(r.get(0, r.len()), expected);
    // Every window, including ones crossing shard boundaries.
    for start in (0..expected.len()).step_by(7) {
        let len = (expected.len() - start).min(63);
        assert_eq!(r.get(start, len), &expected[start..start + len]);
    }
    assert_eq!(r.get(expected.len(), 0), Vec::<u32>::new());
}

#[test]
fn round_trip_u16() {
    round_trip(600, Dtype::U16);
    round_trip(65536, Dtype::U16);
}

#[test]
fn round_trip_u32() {
    round_trip(65537, Dtype::U32);
    round_trip(200_000, Dtype::U32);
}

#[test]
fn missing_index_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ShardWriter::create(dir.path(), 100, Some(0)).unwrap().with_max_shard_tokens(4);
    w.write_document(&[1, 2, 3, 4, 5, 6], 6).unwrap();
    drop(w); // a killed run: shards but no index
    let e = format!("{:#}", TokenShards::open(dir.path()).err().unwrap());
    assert!(e.contains(INDEX_FILE) && e.contains("interrupted"), "{e}");
    // Only completed shards exist; no temporary files are left behind.
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec!["shard_00000.bin".to_string()], "{names:?}");
}

#[test]
fn rewriting_removes_the_old_index_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ShardWriter::create(dir.path(), 100, Some(0)).unwrap();
    w.write_document(&[1, 2], 2).unwrap();
    w.finish().unwrap();
    let w = ShardWriter::create(dir.path(), 100, Some(0)).unwrap();
    assert!(!dir.path().join(INDEX_FILE).exists());
    drop(w);
    assert!(TokenShards::open(dir.path()).is_err());
}

#[test]
fn truncated_or_corrupt_shard_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ShardWriter::create(dir.path(), 100, Some(0)).unwrap().with_max_shard_tokens(8);
    for d in docs(99) {
        w.write_document(&d, 1).unwrap();
    }
    let index = w.finish().unwrap();
    let victim = dir.path().join(&index.shards[1].file);
    let data = std::fs::read(&victim).unwrap();

    let mut flipped = data.clone();
    flipped[3] ^= 0x40;
    std::fs::write(&victim, &flipped).unwrap();
    let r = TokenShards::open(dir.path()).unwrap(); // sizes still agree
    let e = format!("{:#}", r.verify().unwrap_err());
    assert!(e.contains("shard_00001.bin") && e.contains("corrupt"), "{e}");
    drop(r);

    std::fs::write(&victim, &data[..data.len() - 2]).unwrap();
    let e = format!("{:#}", TokenShards::open(dir.path()).err().unwrap());
    assert!(e.contains("shard_00001.bin") && e.contains("truncated"), "{e}");

    std::fs::remove_file(&victim).unwrap();
    let e = format!("{:#}", TokenShards::open(dir.path()).err().unwrap());
    assert!(e.contains("shard_00001.bin"), "{e}");
}

#[test]
fn out_of_vocabulary_ids_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ShardWriter::create(dir.path(), 10, None).unwrap();
    w.write_document(&[1, 2], 2).unwrap();
    let e = w.write_document(&[3, 10], 2).unwrap_err().to_string();
    assert!(e.contains("document #1") && e.contains("10"), "{e}");
}

#[test]
fn writes_texts_through_a_tokenizer() {
    let tok = ferrolm_tokenizer::Tokenizer::train_bpe(
        ["one two three", "two three four"].into_iter().cycle().take(50),
        &ferrolm_tokenizer::BpeTrainConfig { vocab_size: 300, ..Default::default() },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let texts = ["one two", "héllo <|user|> three", ""];
    let mut w = ShardWriter::for_tokenizer(dir.path(), &tok).unwrap();
    shards::write_texts(&tok, texts, &mut w, 8).unwrap();
    let index = w.finish().unwrap();
    assert_eq!(index.documents, 3);
    assert_eq!(index.text_bytes, texts.iter().map(|t| t.len() as u64).sum::<u64>());
    let r = TokenShards::open(dir.path()).unwrap();
    let all = r.get(0, r.len());
    let eot = tok.eot_id();
    let decoded: Vec<String> = all.split(|&i| i == eot).map(|d| tok.decode(d)).collect();
    assert_eq!(decoded, vec!["one two", "héllo <|user|> three", "", ""]);
}

// ------------------------------------------------------------------ hostile indexes (issue 18)

fn hostile_index(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut w = ferrolm_tokenizer::ShardWriter::create(dir, 300, Some(0)).unwrap();
    w.write_document(&[5, 6, 7], 10).unwrap();
    w.finish().unwrap();
    let p = dir.join("index.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn an_index_naming_a_file_outside_its_folder_is_refused() {
    // Before the fix: `dir.join(file)` opened whatever the index named (`../`, `/etc/…`).
    for name in ["../outside.bin", "/etc/hostname", "sub/shard.bin", ".."] {
        let d = tempfile::tempdir().unwrap();
        hostile_index(d.path(), |v| v["shards"][0]["file"] = name.into());
        let e = format!("{:#}", ferrolm_tokenizer::TokenShards::open(d.path()).err().expect("must be refused"));
        assert!(e.contains("index.json") && e.contains("not a file name inside the folder"), "{e}");
    }
}

#[test]
fn a_token_count_that_overflows_is_an_error() {
    // Before the fix: tokens * 2 overflowed (a panic with overflow checks).
    let d = tempfile::tempdir().unwrap();
    hostile_index(d.path(), |v| v["shards"][0]["tokens"] = (u64::MAX / 2 + 1).into());
    let e = format!("{:#}", ferrolm_tokenizer::TokenShards::open(d.path()).err().expect("must be refused"));
    assert!(e.contains("index.json") && e.contains("corrupt index"), "{e}");
}

#[test]
fn verify_finds_ids_outside_the_vocabulary() {
    // The hash matches (it is recomputed below), but an id is >= vocab_size: training on it
    // would index past the embedding table.
    let d = tempfile::tempdir().unwrap();
    let shard = d.path().join("shard_00000.bin");
    hostile_index(d.path(), |_| {});
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[2..4].copy_from_slice(&299u16.to_le_bytes());
    bytes[4..6].copy_from_slice(&300u16.to_le_bytes());
    std::fs::write(&shard, &bytes).unwrap();
    let h = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes));
    hostile_index_keep(d.path(), |v| v["shards"][0]["xxh3"] = h.clone().into());
    let s = ferrolm_tokenizer::TokenShards::open(d.path()).unwrap();
    let e = format!("{:#}", s.verify().expect_err("must be refused"));
    assert!(e.contains("shard_00000.bin: token 2 is outside the vocabulary of 300"), "{e}");
}

fn hostile_index_keep(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("index.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn an_eot_outside_the_vocabulary_is_refused() {
    let d = tempfile::tempdir().unwrap();
    hostile_index(d.path(), |v| v["eot"] = 300.into());
    let e = format!("{:#}", ferrolm_tokenizer::TokenShards::open(d.path()).err().expect("must be refused"));
    assert!(e.contains("index.json") && e.contains("eot id 300"), "{e}");
}
