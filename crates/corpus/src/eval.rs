//! Quality evaluations with known answers: near-duplicate detection against exact Jaccard
//! similarity, and privacy scrubbing recall per kind plus false replacements in clean text.
//! Used by tests (small sizes) and by `ferrolm data eval` (larger sizes, printed figures).

use crate::steps::minhash::{shingles, MinHashConfig, MinHasher, SignatureSet};
use crate::steps::privacy::{luhn_valid, PiiKind, PrivacyConfig, PrivacyScrubber};
use crate::text::HashSet64;
use serde::Serialize;
use std::collections::BTreeMap;

/// Small deterministic generator (xorshift64*), so the evaluation sets are the same everywhere.
pub struct Gen(u64);
impl Gen {
    pub fn new(seed: u64) -> Self {
        Gen(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn digits(&mut self, n: usize) -> String {
        (0..n).map(|_| char::from(b'0' + self.below(10) as u8)).collect()
    }
    fn alnum(&mut self, n: usize, set: &[u8]) -> String {
        (0..n).map(|_| set[self.below(set.len())] as char).collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NearDupReport {
    pub documents: usize,
    pub true_pairs: usize,
    pub detected_pairs: usize,
    pub correct_pairs: usize,
    pub precision: f64,
    pub recall: f64,
    /// Recall by true-similarity band ("0.80-0.85", ...).
    pub recall_by_similarity: BTreeMap<String, (usize, usize)>,
    pub threshold: f64,
    /// Candidate pairs decided by the bottom-k sketch, and those verified on the whole sets.
    pub sketch_checks: u64,
    pub exact_checks: u64,
    pub seconds: f64,
}

/// `families` base documents of `words` words from a Zipf-distributed vocabulary, each with
/// variants at several edit rates (random word substitutions, insertions and deletions).
/// Ground truth: exact Jaccard similarity of the same shingles the detector uses; a pair is a
/// true near-duplicate at similarity >= `threshold`. Detected pairs: LSH candidates whose
/// signature similarity reaches the threshold.
pub fn near_duplicate_eval(families: usize, words: usize, cfg: &MinHashConfig, seed: u64) -> NearDupReport {
    let t0 = std::time::Instant::now();
    let mut g = Gen::new(seed);
    let vocab: Vec<String> = (0..20_000).map(|i| format!("w{i:x}{}", ["a", "e", "o", "u"][i % 4])).collect();
    // Zipf(1) by inverse transform on the harmonic CDF.
    let h: Vec<f64> = (1..=vocab.len()).scan(0.0, |s, k| { *s += 1.0 / k as f64; Some(*s) }).collect();
    let total = *h.last().unwrap();
    let word = |g: &mut Gen| -> String {
        let u = g.unit() * total;
        vocab[h.partition_point(|&c| c < u).min(vocab.len() - 1)].clone()
    };
    let rates = [0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.15];
    let mut docs: Vec<String> = Vec::new();
    let mut family: Vec<usize> = Vec::new();
    for f in 0..families {
        let base: Vec<String> = (0..words).map(|_| word(&mut g)).collect();
        docs.push(base.join(" "));
        family.push(f);
        for &r in &rates[1..] {
            let mut v = base.clone();
            let edits = ((words as f64 * r).round() as usize).max(1);
            for _ in 0..edits {
                let i = g.below(v.len());
                match g.below(3) {
                    0 => v[i] = word(&mut g),
                    1 => v.insert(i, word(&mut g)),
                    _ => {
                        if v.len() > 1 {
                            v.remove(i);
                        }
                    }
                }
            }
            docs.push(v.join(" "));
            family.push(f);
        }
    }
    let sh: Vec<HashSet64> = docs.iter().map(|d| shingles(d, cfg.ngram).into_iter().collect()).collect();
    let jac = |i: usize, j: usize| -> f64 {
        let inter = sh[i].intersection(&sh[j]).count() as f64;
        inter / (sh[i].len() as f64 + sh[j].len() as f64 - inter).max(1.0)
    };
    let mut truth = std::collections::BTreeSet::new();
    let mut by_band: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let band = |s: f64| format!("{:.2}-{:.2}", (s * 20.0).floor() / 20.0, (s * 20.0).floor() / 20.0 + 0.05);
    let mut start = 0;
    while start < docs.len() {
        let mut end = start;
        while end < docs.len() && family[end] == family[start] {
            end += 1;
        }
        for i in start..end {
            for j in i + 1..end {
                let s = jac(i, j);
                if s >= cfg.threshold {
                    truth.insert((i as u32, j as u32));
                    by_band.entry(band(s.min(0.999))).or_default().1 += 1;
                }
            }
        }
        start = end;
    }
    let hasher = MinHasher::new(cfg.clone());
    let mut set = SignatureSet::new(cfg);
    for (k, d) in docs.iter().enumerate() {
        let (s, whole) = hasher.signature_and_set(d);
        set.push_set(k as u64, String::new(), &whole, &hasher.band_hashes(&s)).expect("temporary file for shingle sets");
    }
    let detected = set.similar_pairs(cfg.threshold);
    let (sketch_checks, exact_checks) = (set.sketch_checks.load(std::sync::atomic::Ordering::Relaxed), set.exact_checks.load(std::sync::atomic::Ordering::Relaxed));
    // Precision is judged by the true similarity of every detected pair, cross-family ones included.
    let correct = detected.iter().filter(|&&(i, j)| jac(i as usize, j as usize) >= cfg.threshold).count();
    for &(i, j) in &detected {
        if truth.contains(&(i, j)) {
            let s = jac(i as usize, j as usize);
            by_band.entry(band(s.min(0.999))).or_default().0 += 1;
        }
    }
    NearDupReport {
        documents: docs.len(),
        true_pairs: truth.len(),
        detected_pairs: detected.len(),
        correct_pairs: correct,
        precision: if detected.is_empty() { 1.0 } else { correct as f64 / detected.len() as f64 },
        recall: if truth.is_empty() { 1.0 } else { detected.iter().filter(|p| truth.contains(p)).count() as f64 / truth.len() as f64 },
        recall_by_similarity: by_band,
        threshold: cfg.threshold,
        sketch_checks,
        exact_checks,
        seconds: t0.elapsed().as_secs_f64(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PrivacyReport {
    /// kind -> (found, planted, recall)
    pub recall: BTreeMap<String, (usize, usize, f64)>,
    /// A few planted values that were missed, per kind.
    pub missed_examples: BTreeMap<String, Vec<String>>,
    pub control_bytes: usize,
    pub control_replacements: u64,
    pub control_examples: Vec<String>,
}

const SURNAMES: &[&str] = &["Smith", "Johnson", "Garcia", "Miller", "Davis", "Martinez", "Anderson", "Taylor", "Moore", "Jackson", "Thompson", "White", "Harris", "Clark", "Lewis", "Walker", "Hall", "Young", "Schmidt", "Müller", "Dubois", "Rossi", "Kowalski", "Nakamura", "Ivanov", "Okafor", "Fernandes", "Lindqvist", "Novak", "Haddad"];
const GIVEN: &[&str] = &["James", "Mary", "Robert", "Patricia", "Michael", "Jennifer", "David", "Elizabeth", "Thomas", "Sarah", "Daniel", "Laura", "Andrew", "Emily", "Hans", "Pierre", "Giulia", "Carlos", "Olga", "Yuki", "Priya", "Ahmed", "Fatima", "Lukas", "Sofia"];
const STREETS: &[&str] = &["Main", "Oak", "Maple", "Cedar", "Elm", "Washington", "Lake", "Hill", "Park View", "Sunset"];
const SUFFIXES: &[&str] = &["Street", "St.", "Avenue", "Ave", "Road", "Boulevard", "Lane", "Drive", "Court", "Place"];
const CITIES: &[&str] = &["Springfield", "Portland", "Austin", "Denver", "Boston", "Madison", "Salem"];
const STATES: &[&str] = &["CA", "NY", "TX", "OR", "MA", "WI", "CO"];
const FILLERS: &[&str] = &["Please contact", "For details, reach", "The form lists", "Our records show", "Send the invoice to", "As noted in the ticket,"];

fn luhn_complete(prefix: &str, len: usize, g: &mut Gen) -> String {
    let mut body = format!("{prefix}{}", g.digits(len - prefix.len() - 1));
    for d in 0..10 {
        let cand = format!("{body}{d}");
        if luhn_valid(&cand) {
            body = cand;
            break;
        }
    }
    body
}

fn iban_for(country: &str, bban: &str) -> String {
    // Check digits: 98 - mod97(BBAN + country + "00").
    let s = format!("{bban}{country}00");
    let mut rem: u64 = 0;
    for c in s.chars() {
        let v = if c.is_ascii_digit() { c as u64 - '0' as u64 } else { c as u64 - 'A' as u64 + 10 };
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    format!("{country}{:02}{bban}", 98 - rem)
}

/// One planted value of `kind`.
pub fn plant(kind: PiiKind, g: &mut Gen) -> String {
    const LOW: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    const B62: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const UP: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    match kind {
        PiiKind::Email => {
            let user = format!("{}{}{}", g.pick(GIVEN).to_lowercase(), g.pick(&[".", "_", "", "-"]), g.alnum(4, LOW));
            format!("{user}@{}.{}", g.alnum(6, b"abcdefghijklmnopqrstuvwxyz"), g.pick(&["com", "org", "de", "co.uk", "io", "fr"]))
        }
        PiiKind::Phone => match g.below(7) {
            0 => format!("+1 {} {} {}", 200 + g.below(800), g.digits(3), g.digits(4)),
            1 => format!("+44 20 {} {}", g.digits(4), g.digits(4)),
            2 => format!("+49 30 {}", g.digits(8)),
            3 => format!("+33 1 {} {} {} {}", g.digits(2), g.digits(2), g.digits(2), g.digits(2)),
            4 => format!("+81 3-{}-{}", g.digits(4), g.digits(4)),
            5 => format!("({}) {}-{}", 200 + g.below(800), g.digits(3), g.digits(4)),
            _ => format!("{}-{}-{}", 200 + g.below(800), g.digits(3), g.digits(4)),
        },
        PiiKind::IpAddress => {
            if g.below(2) == 0 {
                let first = *g.pick(&[8u32, 23, 45, 52, 66, 81, 93, 104, 151, 185, 203, 212]);
                format!("{first}.{}.{}.{}", g.below(256), g.below(256), 1 + g.below(254))
            } else if g.below(2) == 0 {
                format!("2001:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}", 0x100 + g.below(0xfe00), g.below(0xffff), g.below(0xffff), g.below(0xffff), g.below(0xffff), g.below(0xffff), 1 + g.below(0xfffe))
            } else {
                format!("2a02:{:x}:{:x}::{:x}", 0x100 + g.below(0xfe00), 1 + g.below(0xfffe), 1 + g.below(0xfffe))
            }
        }
        PiiKind::CreditCard => {
            let (p, len) = *g.pick(&[("4", 16usize), ("51", 16), ("55", 16), ("37", 15), ("6011", 16)]);
            let n = luhn_complete(p, len, g);
            match g.below(3) {
                0 => n,
                1 => n.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(" "),
                _ => n.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join("-"),
            }
        }
        PiiKind::Iban => {
            let iban = match g.below(4) {
                0 => iban_for("DE", &g.digits(18)),
                1 => iban_for("GB", &format!("{}{}", g.alnum(4, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"), g.digits(14))),
                2 => iban_for("FR", &g.digits(23)),
                _ => iban_for("NL", &format!("{}{}", g.alnum(4, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"), g.digits(10))),
            };
            if g.below(2) == 0 {
                iban.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(" ")
            } else {
                iban
            }
        }
        PiiKind::Address => {
            if g.below(4) == 0 {
                format!("{}straße {}, {} Berlin", g.pick(&["Haupt", "Linden", "Schiller", "Goethe", "Bahnhof"]), 1 + g.below(200), 10000 + g.below(89999))
            } else {
                format!("{} {} {}, {}, {} {}", 1 + g.below(9999), g.pick(STREETS), g.pick(SUFFIXES), g.pick(CITIES), g.pick(STATES), g.digits(5))
            }
        }
        PiiKind::Name => format!("{} {}", g.pick(GIVEN), g.pick(SURNAMES)),
        PiiKind::Secret => match g.below(8) {
            0 => format!("AKIA{}", g.alnum(16, UP)),
            1 => format!("ghp_{}", g.alnum(36, B62)),
            2 => format!("xoxb-{}-{}-{}", g.digits(12), g.digits(12), g.alnum(24, B62)),
            3 => format!("sk_live_{}", g.alnum(24, B62)),
            4 => format!("AIza{}", g.alnum(35, B62)),
            5 => format!("eyJ{}.eyJ{}.{}", g.alnum(20, B62), g.alnum(30, B62), g.alnum(43, B62)),
            6 => format!("-----BEGIN RSA PRIVATE KEY-----\n{}\n{}\n-----END RSA PRIVATE KEY-----", g.alnum(64, B62), g.alnum(40, B62)),
            _ => format!("api_key = \"{}\"", g.alnum(32, B62)),
        },
    }
}

/// Clean text that must come out unchanged: prose with numbers, dates, versions, times, code
/// with paths, hex constants and loopback addresses, capitalised non-names.
pub fn control_text(g: &mut Gen, sentences: usize) -> String {
    let templates: &[&dyn Fn(&mut Gen) -> String] = &[
        &|g| format!("Version {}.{}.{} was released on {}-{:02}-{:02} with {} bug fixes.", g.below(5), g.below(30), g.below(10), 2015 + g.below(10), 1 + g.below(12), 1 + g.below(28), g.below(500)),
        &|g| format!("The meeting starts at {}:{:02} and lasts {} minutes in Room {}.", 8 + g.below(10), g.below(60), 15 + g.below(90), 100 + g.below(400)),
        &|g| format!("let mask = 0x{:08x}; let n: u64 = {}; use std::collections::HashMap;", g.next_u64() as u32, g.next_u64() % 1_000_000_000_000),
        &|g| format!("The server listens on 127.0.0.1:{} and the proxy on 10.0.{}.{}.", 1024 + g.below(60000), g.below(255), 1 + g.below(254)),
        &|g| format!("In {} the population grew by {}.{} percent to {} thousand.", 1900 + g.below(120), g.below(10), g.below(10), 10 + g.below(900)),
        &|g| format!("The Rust Project and the Apache Software Foundation published {} crates and {} reports.", g.below(100), g.below(50)),
        &|g| format!("fn main() {{ let v = vec![{}, {}, {}]; println!(\"{{:?}}\", v); }}", g.below(100), g.below(100), g.below(100)),
        &|g| format!("See section {}.{} of RFC {} and issue #{} for the background.", 1 + g.below(9), 1 + g.below(9), 1000 + g.below(8000), g.below(90000)),
        &|g| format!("The ratio was {}:{} after {} iterations, with error 1e-{} and seed {}.", 1 + g.below(9), 1 + g.below(9), g.below(10000), 3 + g.below(6), g.next_u64() % 100000),
        &|g| format!("Ship {} units to the warehouse on the Main road by Monday, order number {}.", g.below(900), g.digits(6)),
        &|g| format!("Use a::b::c or ab::cd paths, and ::{} is just a path too.", ["new", "default", "from"][g.below(3)]),
        &|g| format!("Temperature ranged from -{} to {} degrees, measured every {} seconds.", g.below(20), g.below(40), g.below(60)),
    ];
    (0..sentences).map(|_| (templates[g.below(templates.len())])(g)).collect::<Vec<_>>().join("\n")
}

/// Plant `per_kind` values of every kind, one per sentence among ordinary words, scrub each
/// sentence, and count a value as found when it is gone and its kind's placeholder is there.
pub fn privacy_eval(per_kind: usize, seed: u64) -> PrivacyReport {
    let s = PrivacyScrubber::new(PrivacyConfig::default());
    let mut g = Gen::new(seed);
    let mut recall = BTreeMap::new();
    let mut missed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for kind in PiiKind::ALL {
        let mut found = 0;
        for _ in 0..per_kind {
            let v = plant(kind, &mut g);
            let text = format!("{} {} today, thanks.", g.pick(FILLERS), v);
            let (out, _) = s.scrub(&text);
            if !out.contains(&v) && out.contains(&format!("<{}>", kind.tag())) {
                found += 1;
            } else {
                let m = missed.entry(kind.tag().to_lowercase()).or_default();
                if m.len() < 5 {
                    m.push(format!("{text} -> {out}"));
                }
            }
        }
        recall.insert(kind.tag().to_lowercase(), (found, per_kind, found as f64 / per_kind.max(1) as f64));
    }
    let control = control_text(&mut g, per_kind * 8);
    let mut reps = 0;
    let mut examples = Vec::new();
    for line in control.lines() {
        let (out, c) = s.scrub(line);
        let n: u64 = c.iter().sum();
        if n > 0 {
            reps += n;
            if examples.len() < 10 {
                examples.push(format!("{line} -> {out}"));
            }
        }
    }
    PrivacyReport { recall, missed_examples: missed, control_bytes: control.len(), control_replacements: reps, control_examples: examples }
}
