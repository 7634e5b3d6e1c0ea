use ferrolm_word2vec::{analogy, read_vectors, train, write_vectors, Options, Vectors};
use std::path::{Path, PathBuf};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrolm-w2v-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Sentences drawn from one of 4 groups of 6 words each: members co-occur, groups never mix.
fn group_corpus(dir: &Path) -> PathBuf {
    let mut s: u64 = 42;
    let mut out = String::new();
    for _ in 0..3000 {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let g = (s >> 33) % 4;
        let mut line = Vec::new();
        for _ in 0..10 {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            line.push(format!("g{g}w{}", (s >> 33) % 6));
        }
        out.push_str(&line.join(" "));
        out.push('\n');
    }
    let p = dir.join("corpus.txt");
    std::fs::write(&p, out).unwrap();
    p
}

fn check_groups(v: &Vectors) {
    for w in &v.words {
        let group = &w[..2];
        let near = v.similar(w, 5).unwrap();
        for (n, _) in &near {
            assert_eq!(&n[..2], group, "{w}: neighbours {near:?}");
        }
    }
}

#[test]
fn skipgram_and_cbow_learn_groups_and_formats_round_trip() {
    let dir = tmpdir("groups");
    let corpus = group_corpus(&dir);
    for cbow in [false, true] {
        let o = Options { dim: 20, window: 3, min_count: 1, epochs: 3, threads: 2, cbow, sample: 0.0, ..Options::default() };
        let t = train(std::slice::from_ref(&corpus), &o).unwrap();
        assert_eq!(t.words.len(), 24);
        let v = Vectors { words: t.words.clone(), dim: t.dim, data: t.vectors.clone() };
        check_groups(&v);
        for binary in [false, true] {
            let p = dir.join(format!("v{cbow}{binary}"));
            write_vectors(&p, &t.words, &t.vectors, t.dim, binary).unwrap();
            let back = read_vectors(&p).unwrap();
            assert_eq!(back.words, t.words);
            for (a, b) in back.data.iter().zip(&t.vectors) {
                assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{a} vs {b}");
            }
        }
    }
}

#[test]
fn analogy_counts_sections_and_skips() {
    let dir = tmpdir("analogy");
    // hand-made vectors where king - man + woman = queen exactly
    let words: Vec<String> = ["man", "woman", "king", "queen", "apple"].iter().map(|s| s.to_string()).collect();
    let data = vec![1., 0., 0., 0., 1., 0., 1., 0., 1., 0., 1., 1., -1., -1., 0.];
    let v = Vectors { words, dim: 3, data };
    let q = dir.join("q.txt");
    std::fs::write(&q, ": family\nman woman king queen\nman woman king apple\n: other\nMAN zebra king queen\n").unwrap();
    let r = analogy(&v, &q, 30000).unwrap();
    assert_eq!(r.total, 2);
    assert_eq!(r.correct, 1);
    assert_eq!(r.skipped, 1);
    assert_eq!(r.sections[0], ("family".to_string(), 1, 2));
}
