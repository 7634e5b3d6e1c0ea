//! The one train/held-out split rule for documents: a seeded hash of a group key decides,
//! so every document of a group (one document, one crate, one text) lands on the same
//! side, on every machine and whatever the input order.

use crate::{CorpusError, Result};

/// Items with the hash of their group key.
type Hashed<T> = Vec<(u64, T)>;

/// Split `items` into (train, held-out): an item is held out when the seeded xxh3 hash of
/// its group key is below `val_fraction` of the hash range. The quickstart and `ferrolm
/// experiment history` key by document id, `ferrolm experiment architectures` by crate,
/// `ferrolm tokenizer shards` by the text itself.
///
/// A small input can draw no held-out item at all (36 documents at 5% do so 16% of the
/// time): then the group with the smallest hash, the next one the rule would take, is held
/// out, so the split stays deterministic and never empty. Fails when that still leaves no
/// held-out item or fewer than two training items. Input order is kept on both sides.
pub fn split_by_key<T, K: AsRef<[u8]>>(items: Vec<T>, key: impl Fn(&T) -> K, val_fraction: f64, seed: u64) -> Result<(Vec<T>, Vec<T>)> {
    let threshold = (val_fraction * u64::MAX as f64) as u64;
    let hashed = items.into_iter().map(|x| (xxhash_rust::xxh3::xxh3_64_with_seed(key(&x).as_ref(), seed), x));
    let (mut val, mut train): (Hashed<T>, Hashed<T>) = hashed.partition(|(h, _)| *h < threshold);
    if val.is_empty() && train.len() > 2 {
        let min = train.iter().map(|(h, _)| *h).min().expect("non-empty");
        (val, train) = train.into_iter().partition(|(h, _)| *h == min);
    }
    if val.is_empty() || train.len() < 2 {
        return Err(CorpusError::Config(format!(
            "the corpus is too small to split ({} train, {} held-out documents)",
            train.len(),
            val.len()
        )));
    }
    let strip = |v: Hashed<T>| v.into_iter().map(|(_, x)| x).collect::<Vec<T>>();
    Ok((strip(train), strip(val)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_stay_together_and_the_rule_is_hash_below_threshold() {
        let items: Vec<(String, u32)> = (0..400).map(|i| (format!("crate{}", i % 40), i)).collect();
        let (train, val) = split_by_key(items.clone(), |x| x.0.clone(), 0.2, 7).unwrap();
        assert_eq!(train.len() + val.len(), items.len());
        let h = |k: &str| xxhash_rust::xxh3::xxh3_64_with_seed(k.as_bytes(), 7);
        let t = (0.2 * u64::MAX as f64) as u64;
        assert!(val.iter().all(|x| h(&x.0) < t));
        assert!(train.iter().all(|x| h(&x.0) >= t));
        // order kept
        assert!(train.windows(2).all(|w| w[0].1 < w[1].1) && val.windows(2).all(|w| w[0].1 < w[1].1));
    }

    #[test]
    fn a_small_input_still_holds_one_group_out() {
        let items: Vec<String> = (0..5).map(|i| format!("doc{i}")).collect();
        let (train, val) = split_by_key(items.clone(), |x| x.clone(), 1e-9, 3).unwrap();
        assert_eq!((train.len(), val.len()), (4, 1));
        let h = |k: &str| xxhash_rust::xxh3::xxh3_64_with_seed(k.as_bytes(), 3);
        assert!(train.iter().all(|x| h(x) > h(&val[0])));
        assert!(split_by_key(vec!["a".to_string(), "b".to_string()], |x| x.clone(), 1e-9, 3).is_err());
    }

    #[test]
    fn seed_zero_is_the_unseeded_hash() {
        // `ferrolm tokenizer shards` split by the unseeded xxh3 of the text; seed 0 keeps it.
        for t in ["", "abc", "a longer text of more than sixteen bytes, to cross xxh3's short-input path"] {
            assert_eq!(xxhash_rust::xxh3::xxh3_64(t.as_bytes()), xxhash_rust::xxh3::xxh3_64_with_seed(t.as_bytes(), 0));
        }
    }
}
