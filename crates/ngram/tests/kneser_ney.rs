use ferrolm_ngram::{train_ids, train_text, Model, TrainOptions, BOS};

mod common;

fn corpus(sentences: usize, vocab: u64, seed: u64) -> Vec<String> {
    common::corpus(sentences, vocab, seed, 1..13)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn hand_computed_bigram() {
    // Counts are too sparse for estimated discounts, so the fallback (0.5, 1, 1.5) applies.
    let m = train_text(["a b", "a"], &TrainOptions { order: 2, discount_fallback: true }).unwrap();
    let p = |ctx: &[&str], w: &str| {
        let c: Vec<u32> = ctx.iter().map(|x| m.id(x)).collect();
        10f64.powf(m.log10_prob(&c, m.id(w)))
    };
    // unigram: adjusted a=1, b=1, </s>=2; Σ=4; γ=(0.5+0.5+1)/4=0.5; |V|=4 (<unk>,</s>,a,b)
    assert!(close(p(&[], "a"), 0.25));
    assert!(close(p(&[], "</s>"), 0.375));
    assert!(close(p(&[], "<unk>"), 0.125));
    assert!(close(p(&["<s>"], "a"), 0.625));
    assert!(close(p(&["a"], "b"), 0.375));
    assert!(close(p(&["a"], "</s>"), 0.4375));
    assert!(close(p(&["b"], "</s>"), 0.6875));
    assert!(close(p(&["<s>"], "b"), 0.125)); // backoff γ(<s>)=0.5 times p(b)
    let s = m.score_sentence("a b");
    assert!(close(s.log10_prob, (0.625f64 * 0.375 * 0.6875).log10()));
    assert_eq!(s.tokens, 3);
    let s = m.score_sentence("zzz");
    assert_eq!(s.oovs, 1);
    assert!(close(s.log10_prob, (0.5f64 * 0.125 * 0.375).log10()));
}

#[test]
fn estimated_discounts_follow_count_of_counts() {
    let text = corpus(3000, 2000, 7);
    let m = train_text(text.iter().map(|s| s.as_str()), &TrainOptions { order: 3, discount_fallback: false }).unwrap();
    for d in &m.discounts {
        assert!(d.d[0] > 0.0 && d.d[0] < 1.0 && d.d[1] > 0.0 && d.d[2] > 0.0, "{d:?}");
    }
}

#[test]
fn every_context_sums_to_one() {
    let text = corpus(2000, 30, 11);
    let m = train_text(text.iter().map(|s| s.as_str()), &TrainOptions { order: 4, discount_fallback: true }).unwrap();
    let bos = m.id(BOS);
    let targets: Vec<u32> = (0..m.words.len() as u32).filter(|&w| w != bos).collect();
    let mut contexts: Vec<Vec<u32>> = vec![vec![]];
    for n in 1..m.order() {
        let mut keys: Vec<&Vec<u32>> = m.grams[n - 1].keys().collect();
        keys.sort();
        contexts.extend(keys.into_iter().step_by(7).filter(|k| !k[1..].contains(&bos)).cloned());
    }
    // an unseen context too
    contexts.push(vec![m.id("w3"), m.id("w3"), m.id("w3")]);
    assert!(contexts.len() > 100);
    for c in &contexts {
        if c.last() == Some(&m.id("</s>")) {
            continue;
        }
        let sum: f64 = targets.iter().map(|&w| 10f64.powf(m.log10_prob(c, w))).sum();
        assert!((sum - 1.0).abs() < 1e-9, "context {c:?} sums to {sum}");
    }
}

#[test]
fn arpa_round_trip_keeps_scores() {
    let text = corpus(1500, 50, 3);
    let m = train_text(text.iter().map(|s| s.as_str()), &TrainOptions { order: 5, discount_fallback: true }).unwrap();
    let mut buf = Vec::new();
    m.write_arpa_to(&mut buf).unwrap();
    let back = Model::read_arpa_from(std::io::Cursor::new(&buf), "mem").unwrap();
    let held = corpus(200, 60, 99);
    for s in &held {
        let a = m.score_sentence(s);
        let b = back.score_sentence(s);
        assert!((a.log10_prob - b.log10_prob).abs() < 1e-6, "{s}: {} vs {}", a.log10_prob, b.log10_prob);
        assert_eq!(a.oovs, b.oovs);
    }
    let doc = held.join("\n");
    assert!((m.score_document(&doc) - back.score_document(&doc)).abs() < 1e-6);
    // truncated files are rejected with a clear error
    let cut = &buf[..buf.len() / 2];
    let err = Model::read_arpa_from(std::io::Cursor::new(cut), "cut.arpa").err().unwrap().to_string();
    assert!(err.contains("cut.arpa"), "{err}");
}

#[test]
fn token_ids_train_like_words() {
    let text = corpus(800, 20, 5);
    let ids: Vec<Vec<u32>> = text
        .iter()
        .map(|s| s.split_whitespace().map(|w| w[1..].parse::<u32>().unwrap()).collect())
        .collect();
    let a = train_ids(ids.iter().map(|v| v.as_slice()), &TrainOptions { order: 3, discount_fallback: true }).unwrap();
    let b = train_text(text.iter().map(|s| s.as_str()), &TrainOptions { order: 3, discount_fallback: true }).unwrap();
    // same counts structure → same perplexity (vocabulary sizes equal when every id occurs)
    let pa: f64 = ids.iter().map(|v| a.score_ids(&v.iter().map(|&t| a.id(&t.to_string())).collect::<Vec<_>>()).log10_prob).sum();
    let pb: f64 = text.iter().map(|s| b.score_sentence(s).log10_prob).sum();
    let va = a.words.len();
    let vb = b.words.len();
    if va == vb {
        assert!((pa - pb).abs() < 1e-6 * pa.abs());
    }
    assert!(pa.is_finite() && pa < 0.0);
}
