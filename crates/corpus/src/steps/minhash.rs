//! Near-duplicate removal by MinHash with LSH banding (Broder 1997; Leskovec et al., "Mining of
//! Massive Datasets" ch. 3): word n-gram shingles, `bands x rows` min-hashes, documents sharing a
//! band become candidates, candidates whose estimated Jaccard similarity reaches the threshold are
//! joined (union-find), and each cluster keeps its first document.
//!
//! The similarity check uses a bottom-k sketch (the k smallest shingle hashes; Broder 1997,
//! Cohen & Kaplan 2007) rather than the LSH min-hashes: its estimate is exact when the two
//! documents have at most k distinct shingles together and has lower variance otherwise, which
//! is what lets precision and recall both pass 0.95 at the 0.8 boundary.
//!
//! In-process, [`MinHashDedup`] is one global step. For runs spread over machines the same work
//! is split into stages ([`write_signatures`], [`cluster_signature_files`], then filtering by the
//! resulting id list), as datatrove does.

use crate::step::{Step, Verdict};
use crate::text::{hash, HashSet64};
use crate::{io_err, CorpusError, Document, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MinHashConfig {
    /// Words per shingle.
    pub ngram: usize,
    pub bands: usize,
    pub rows: usize,
    /// Candidates are joined only if their estimated Jaccard similarity is at least this
    /// (0 joins every LSH candidate, as datatrove does).
    pub threshold: f64,
    /// Bottom-k sketch size (kept in memory): the similarity estimate that decides pairs far
    /// from the threshold, and the exact similarity of documents with at most k shingles.
    pub sketch_size: usize,
    pub seed: u64,
    /// How a candidate pair is checked against `threshold`: "exact" (default) computes the true
    /// Jaccard similarity of the two shingle sets whenever the sketch cannot decide it (the full
    /// sets of long documents are kept on disk, not in memory); "sketch" trusts the bottom-k
    /// estimate (σ ≈ 0.025 at 0.8 with k = 256: pairs near the threshold fall either way).
    pub verify: Verify,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    #[default]
    Exact,
    Sketch,
}

impl Default for MinHashConfig {
    /// 32 bands of 8 rows: a pair at Jaccard 0.8 becomes a candidate with probability
    /// 1 - (1 - 0.8^8)^32 = 0.997, and the exact check at 0.8 removes chance candidates.
    fn default() -> Self {
        Self { ngram: 5, bands: 32, rows: 8, threshold: 0.8, sketch_size: 256, seed: 1, verify: Verify::Exact }
    }
}

impl MinHashConfig {
    pub fn permutations(&self) -> usize {
        self.bands * self.rows
    }
}

/// The hash family: h_i(x) = (a_i * x + b_i) mod 2^64, top 32 bits (multiply-shift, a_i odd).
pub struct MinHasher {
    cfg: MinHashConfig,
    a: Vec<u64>,
    b: Vec<u64>,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Lowercased words with punctuation removed: formatting edits should not hide duplicates.
pub fn simplified_words(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || (!c.is_alphanumeric()))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

/// Hashes of the distinct word n-grams of `text` (the whole text as one shingle when shorter).
pub fn shingles(text: &str, n: usize) -> Vec<u64> {
    let words: Vec<u64> = simplified_words(text).iter().map(|w| hash(w)).collect();
    let mut out = HashSet64::default();
    if words.is_empty() {
        return Vec::new();
    }
    let n = n.min(words.len()).max(1);
    for win in words.windows(n) {
        let h = win.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &w| (h.rotate_left(29) ^ w).wrapping_mul(0x100_0000_01b3));
        out.insert(h);
    }
    let mut v: Vec<u64> = out.into_iter().collect();
    v.sort_unstable();
    v
}

impl MinHasher {
    pub fn new(cfg: MinHashConfig) -> Self {
        let mut s = cfg.seed ^ 0x0005_EED0_FF00;
        let k = cfg.permutations();
        let a = (0..k).map(|_| splitmix(&mut s) | 1).collect();
        let b = (0..k).map(|_| splitmix(&mut s)).collect();
        Self { cfg, a, b }
    }

    /// The signature: per permutation, the minimum hash over the shingles (u32::MAX when empty).
    pub fn signature(&self, text: &str) -> Vec<u32> {
        self.signature_and_sketch(text).0
    }

    /// The signature and the bottom-k sketch (sorted smallest distinct 32-bit shingle hashes).
    pub fn signature_and_sketch(&self, text: &str) -> (Vec<u32>, Vec<u32>) {
        let (sig, mut set) = self.signature_and_set(text);
        set.truncate(self.cfg.sketch_size);
        (sig, set)
    }

    /// The signature and the whole shingle set (sorted distinct 32-bit shingle hashes; its first
    /// `sketch_size` entries are the bottom-k sketch).
    pub fn signature_and_set(&self, text: &str) -> (Vec<u32>, Vec<u32>) {
        let sh = shingles(text, self.cfg.ngram);
        let mut sketch: Vec<u32> = sh.iter().map(|&x| (x >> 32) as u32).collect();
        sketch.sort_unstable();
        sketch.dedup();
        let mut sig = vec![u32::MAX; self.a.len()];
        for &x in &sh {
            for ((s, &a), &b) in sig.iter_mut().zip(&self.a).zip(&self.b) {
                let h = (a.wrapping_mul(x).wrapping_add(b) >> 32) as u32;
                if h < *s {
                    *s = h;
                }
            }
        }
        (sig, sketch)
    }

    /// One hash per band of `rows` consecutive min-hashes.
    pub fn band_hashes(&self, sig: &[u32]) -> Vec<u64> {
        sig.chunks(self.cfg.rows)
            .enumerate()
            .map(|(i, band)| {
                let mut bytes = Vec::with_capacity(band.len() * 4);
                for v in band {
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
                xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, i as u64)
            })
            .collect()
    }
}

/// Signatures kept for clustering: an ordering key per document (its position; lower keys are
/// kept), the band hashes, the bottom-k sketch, and where the document's whole shingle set lies
/// on disk when the sketch does not hold all of it (for exact verification).
pub struct SignatureSet {
    pub keys: Vec<u64>,
    pub ids: Vec<String>,
    sketches: Vec<u32>,
    offsets: Vec<usize>,
    bands: Vec<u64>,
    k: usize,
    nbands: usize,
    verify: Verify,
    /// Per document: (file, byte offset, count) of its whole set, or None when the sketch is
    /// the whole set (at most k shingles).
    full: Vec<Option<(u32, u64, u32)>>,
    files: Vec<std::fs::File>,
    /// The in-process spill of whole sets (files[0] when present) and its write position.
    spill: Option<(std::io::BufWriter<std::fs::File>, u64)>,
    /// Candidate pairs decided by reading whole sets (the sketch was not conclusive).
    pub exact_checks: std::sync::atomic::AtomicU64,
    /// Candidate pairs decided by the sketch alone.
    pub sketch_checks: std::sync::atomic::AtomicU64,
}

/// File index of a document whose sketch is partial and whose whole set is not available.
const NO_FILE: u32 = u32::MAX;

#[cfg(unix)]
fn read_at(f: &std::fs::File, buf: &mut [u8], pos: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, pos)
}
#[cfg(windows)]
fn read_at(f: &std::fs::File, mut buf: &mut [u8], mut pos: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = std::os::windows::fs::FileExt::seek_read(f, buf, pos)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
        pos += n as u64;
    }
    Ok(())
}

/// A fresh temporary file for whole shingle sets, already unlinked where the OS allows it.
fn spill_file() -> std::io::Result<std::fs::File> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let path = std::env::temp_dir().join(format!(".ferrolm-minhash-{}-{nanos}-{n}.sets", std::process::id()));
    let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    let _ = std::fs::remove_file(&path); // the open handle keeps it readable; nothing is left behind
    Ok(f)
}

/// Exact Jaccard similarity of two sorted distinct lists.
fn jaccard_sorted(a: &[u32], b: &[u32]) -> f64 {
    let (mut x, mut y, mut both) = (0, 0, 0usize);
    while x < a.len() && y < b.len() {
        match a[x].cmp(&b[y]) {
            std::cmp::Ordering::Equal => {
                both += 1;
                x += 1;
                y += 1;
            }
            std::cmp::Ordering::Less => x += 1,
            std::cmp::Ordering::Greater => y += 1,
        }
    }
    let union = a.len() + b.len() - both;
    if union == 0 {
        1.0 // two empty documents
    } else {
        both as f64 / union as f64
    }
}

impl SignatureSet {
    pub fn new(cfg: &MinHashConfig) -> Self {
        Self {
            keys: Vec::new(),
            ids: Vec::new(),
            sketches: Vec::new(),
            offsets: vec![0],
            bands: Vec::new(),
            k: cfg.sketch_size,
            nbands: cfg.bands,
            verify: cfg.verify,
            full: Vec::new(),
            files: Vec::new(),
            spill: None,
            exact_checks: Default::default(),
            sketch_checks: Default::default(),
        }
    }

    /// Add a document from its sketch only (no exact verification beyond the sketch).
    pub fn push(&mut self, key: u64, id: String, sketch: &[u32], bands: &[u64]) {
        // A full sketch may have been cut from a larger set: only the estimate applies to it.
        let loc = (sketch.len() >= self.k).then_some((NO_FILE, 0, 0));
        self.push_located(key, id, &sketch[..sketch.len().min(self.k)], bands, loc);
    }

    /// Add a document from its whole sorted shingle set: the sketch stays in memory, and with
    /// exact verification a set larger than the sketch goes to a temporary file.
    pub fn push_set(&mut self, key: u64, id: String, set: &[u32], bands: &[u64]) -> std::io::Result<()> {
        let sketch = &set[..set.len().min(self.k)];
        let loc = if self.verify == Verify::Exact && set.len() > self.k {
            if self.spill.is_none() {
                let f = spill_file()?;
                self.files.insert(0, f.try_clone()?);
                for l in self.full.iter_mut().flatten().filter(|l| l.0 != NO_FILE) {
                    l.0 += 1; // files from signature files move up by one
                }
                self.spill = Some((std::io::BufWriter::with_capacity(1 << 20, f), 0));
            }
            let (w, pos) = self.spill.as_mut().unwrap();
            let at = *pos;
            for v in set {
                w.write_all(&v.to_le_bytes())?;
            }
            *pos += set.len() as u64 * 4;
            Some((0, at, set.len() as u32))
        } else {
            None
        };
        self.push_located(key, id, sketch, bands, loc);
        Ok(())
    }

    fn push_located(&mut self, key: u64, id: String, sketch: &[u32], bands: &[u64], full: Option<(u32, u64, u32)>) {
        self.keys.push(key);
        self.ids.push(id);
        self.sketches.extend_from_slice(sketch);
        self.offsets.push(self.sketches.len());
        self.bands.extend_from_slice(bands);
        self.full.push(full);
    }

    /// Flush the temporary file of whole sets before reading it.
    fn seal(&mut self) -> std::io::Result<()> {
        if let Some((w, _)) = self.spill.as_mut() {
            w.flush()?;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn sketch(&self, i: usize) -> &[u32] {
        &self.sketches[self.offsets[i]..self.offsets[i + 1]]
    }

    fn whole_set(&self, i: usize) -> std::borrow::Cow<'_, [u32]> {
        match self.full[i] {
            None => std::borrow::Cow::Borrowed(self.sketch(i)),
            Some((f, at, n)) => {
                let mut bytes = vec![0u8; n as usize * 4];
                read_at(&self.files[f as usize], &mut bytes, at).expect("reading whole shingle sets back from the temporary/signature file");
                std::borrow::Cow::Owned(bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect())
            }
        }
    }

    /// Bottom-k estimate of the Jaccard similarity of documents i and j: of the k smallest
    /// hashes of the union, the fraction present in both.
    fn estimate(&self, i: usize, j: usize) -> f64 {
        let (a, b) = (self.sketch(i), self.sketch(j));
        let (mut x, mut y, mut taken, mut both) = (0, 0, 0, 0);
        while taken < self.k && (x < a.len() || y < b.len()) {
            match (a.get(x), b.get(y)) {
                (Some(p), Some(q)) if p == q => {
                    both += 1;
                    x += 1;
                    y += 1;
                }
                (Some(p), Some(q)) if p < q => x += 1,
                (Some(_), None) => x += 1,
                _ => y += 1,
            }
            taken += 1;
        }
        if taken == 0 {
            return 1.0; // two empty documents
        }
        both as f64 / taken as f64
    }

    /// Jaccard similarity of documents i and j: exact when both sketches are whole sets, or
    /// (with exact verification) from the whole sets on disk; otherwise the bottom-k estimate.
    pub fn similarity(&self, i: usize, j: usize) -> f64 {
        if self.full[i].is_none() && self.full[j].is_none() {
            return jaccard_sorted(self.sketch(i), self.sketch(j));
        }
        let on_disk = |x: usize| self.full[x].is_none_or(|l| l.0 != NO_FILE);
        if self.verify == Verify::Exact && on_disk(i) && on_disk(j) {
            return jaccard_sorted(&self.whole_set(i), &self.whole_set(j));
        }
        self.estimate(i, j)
    }

    /// Whether documents i and j are at least `threshold` similar. The sketch decides when it
    /// can: whole sets in memory, or an estimate more than 6 standard errors from the threshold
    /// (a wrong decision then has probability < 1e-8); only the rest reads whole sets.
    pub fn is_similar(&self, i: usize, j: usize, threshold: f64) -> bool {
        if self.verify == Verify::Exact && (self.full[i].is_some() || self.full[j].is_some()) {
            let est = self.estimate(i, j);
            let se = (threshold * (1.0 - threshold) / self.k.max(1) as f64).sqrt();
            if (est - threshold).abs() > 6.0 * se {
                self.sketch_checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return est >= threshold;
            }
            self.exact_checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            self.sketch_checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.similarity(i, j) >= threshold
    }

    /// Candidate pairs (sharing a band) whose estimated similarity reaches `threshold`, as
    /// (i, j) with i < j, sorted. Used by evaluation; clustering uses [`SignatureSet::clusters`].
    pub fn similar_pairs(&mut self, threshold: f64) -> Vec<(u32, u32)> {
        self.seal().expect("flushing whole shingle sets");
        let n = self.len();
        let mut pairs = std::collections::BTreeSet::new();
        let mut entries: Vec<(u64, u32)> = Vec::with_capacity(n);
        for band in 0..self.nbands {
            entries.clear();
            entries.extend((0..n).map(|i| (self.bands[i * self.nbands + band], i as u32)));
            entries.sort_unstable();
            for group in entries.chunk_by(|a, b| a.0 == b.0) {
                for (gi, &(_, i)) in group.iter().enumerate() {
                    for &(_, j) in &group[..gi] {
                        let p = (i.min(j), i.max(j));
                        if !pairs.contains(&p) && self.is_similar(i as usize, j as usize, threshold) {
                            pairs.insert(p);
                        }
                    }
                }
            }
        }
        pairs.into_iter().collect()
    }

    /// Cluster representative of every document: the member with the lowest key.
    pub fn clusters(&mut self, threshold: f64) -> Vec<usize> {
        self.seal().expect("flushing whole shingle sets");
        let n = self.len();
        let mut uf = UnionFind::new(n);
        let mut entries: Vec<(u64, u64, u32)> = Vec::with_capacity(n);
        for band in 0..self.nbands {
            entries.clear();
            entries.extend((0..n).map(|i| (self.bands[i * self.nbands + band], self.keys[i], i as u32)));
            entries.par_sort_unstable();
            let mut start = 0;
            while start < entries.len() {
                let mut end = start + 1;
                while end < entries.len() && entries[end].0 == entries[start].0 {
                    end += 1;
                }
                let group = &entries[start..end];
                // Small groups: check every pair, so a chain of edits is found even when its
                // ends differ too much. Large groups (many copies of one text): against the first.
                for (gi, &(_, _, i)) in group.iter().enumerate().skip(1) {
                    let prev: &[(u64, u64, u32)] = if group.len() <= 32 { &group[..gi] } else { &group[..1] };
                    for &(_, _, j) in prev {
                        if uf.find(i as usize) == uf.find(j as usize) {
                            continue;
                        }
                        if threshold <= 0.0 || self.is_similar(i as usize, j as usize, threshold) {
                            uf.union(i as usize, j as usize);
                        }
                    }
                }
                start = end;
            }
        }
        // Representative = lowest key in each set.
        let mut best: Vec<usize> = (0..n).collect();
        for i in 0..n {
            let r = uf.find(i);
            if self.keys[i] < self.keys[best[r]] {
                best[r] = i;
            }
        }
        (0..n).map(|i| best[uf.find(i)]).collect()
    }
}

pub struct UnionFind {
    parent: Vec<u32>,
}

impl UnionFind {
    pub fn new(n: usize) -> Self {
        Self { parent: (0..n as u32).collect() }
    }
    pub fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] as usize != x {
            let p = self.parent[x] as usize;
            self.parent[x] = self.parent[p];
            x = p;
        }
        x
    }
    pub fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.parent[hi] = lo as u32;
        }
    }
}

/// The in-process near-duplicate step.
pub struct MinHashDedup {
    cfg: MinHashConfig,
    hasher: MinHasher,
    set: SignatureSet,
    /// seq -> removed, for documents that are not their cluster's representative.
    removed: HashSet64,
    cluster_sizes: Vec<f64>,
    /// (pairs decided by the sketch, pairs decided by reading whole sets)
    checks: (u64, u64),
}

impl MinHashDedup {
    pub fn new(cfg: MinHashConfig) -> Self {
        Self { hasher: MinHasher::new(cfg.clone()), set: SignatureSet::new(&cfg), cfg, removed: Default::default(), cluster_sizes: Vec::new(), checks: (0, 0) }
    }
}

impl Step for MinHashDedup {
    fn name(&self) -> &str {
        "minhash_dedup"
    }
    fn is_global(&self) -> bool {
        true
    }
    fn observe(&mut self, batch: &[(u64, &Document)]) {
        let sigs: Vec<(Vec<u32>, Vec<u64>)> = batch
            .par_iter()
            .map(|(_, d)| {
                let (s, k) = self.hasher.signature_and_set(&d.text);
                (k, self.hasher.band_hashes(&s))
            })
            .collect();
        for ((seq, _), (k, b)) in batch.iter().zip(sigs) {
            // The step interface cannot fail; a full temporary disk is fatal for the run anyway.
            self.set.push_set(*seq, String::new(), &k, &b).expect("writing shingle sets to a temporary file");
        }
    }
    fn finish_observe(&mut self) {
        let reps = self.set.clusters(self.cfg.threshold);
        self.checks = (self.set.sketch_checks.load(std::sync::atomic::Ordering::Relaxed), self.set.exact_checks.load(std::sync::atomic::Ordering::Relaxed));
        let mut sizes = std::collections::HashMap::<usize, u32>::new();
        for (i, &r) in reps.iter().enumerate() {
            *sizes.entry(r).or_default() += 1;
            if r != i {
                self.removed.insert(self.set.keys[i]);
            }
        }
        self.cluster_sizes = sizes.values().filter(|&&s| s > 1).map(|&s| s as f64).collect();
        self.cluster_sizes.sort_by(f64::total_cmp);
        self.set = SignatureSet::new(&self.cfg); // free the signatures
    }
    fn apply(&self, seq: u64, _doc: &mut Document) -> Verdict {
        if self.removed.contains(&seq) {
            Verdict::remove("near_duplicate")
        } else {
            Verdict::Keep
        }
    }
    fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "clusters_with_duplicates": self.cluster_sizes.len(),
            "documents_removed": self.removed.len(),
            "largest_cluster": self.cluster_sizes.last().copied().unwrap_or(0.0),
            "pairs_decided_by_sketch": self.checks.0,
            "pairs_verified_exactly": self.checks.1,
            "config": self.cfg,
        })
    }
    fn histograms(&self) -> Vec<(String, Vec<f64>)> {
        vec![("duplicate cluster size".into(), self.cluster_sizes.clone())]
    }
}

// ---------- staged (distributed) near-duplicate removal ----------

/// Version 2 adds each document's whole shingle set (when larger than its sketch) for exact
/// verification in the clustering stage, which reads it in place from the signature file.
const SIG_MAGIC: &[u8; 8] = b"FLMSIG02";

/// Stage 1: signatures of `docs` to `path` (atomically). `shard` and the document's position
/// form its ordering key, so "keep the first" is the same whatever machine ran which shard.
pub fn write_signatures<'a>(docs: impl Iterator<Item = &'a Document>, cfg: &MinHashConfig, shard: u32, path: &Path) -> Result<u64> {
    let hasher = MinHasher::new(cfg.clone());
    let mut f = ferrolm_common::AtomicFile::create(path).map_err(io_err(path))?;
    let cfg_json = serde_json::to_vec(cfg).expect("config serializes");
    let mut header = Vec::new();
    header.extend_from_slice(SIG_MAGIC);
    header.extend_from_slice(&(cfg_json.len() as u32).to_le_bytes());
    header.extend_from_slice(&cfg_json);
    f.write_all(&header).map_err(io_err(path))?;
    let docs: Vec<&Document> = docs.collect();
    let mut n = 0u64;
    for chunk in docs.chunks(4096) {
        let recs: Vec<Vec<u8>> = chunk
            .par_iter()
            .map(|d| {
                let (s, set) = hasher.signature_and_set(&d.text);
                let b = hasher.band_hashes(&s);
                let k = &set[..set.len().min(cfg.sketch_size)];
                let whole: &[u32] = if cfg.verify == Verify::Exact && set.len() > k.len() { &set } else { &[] };
                let mut r = Vec::with_capacity(12 + d.id.len() + (k.len() + whole.len()) * 4 + b.len() * 8);
                r.extend_from_slice(&(d.id.len() as u32).to_le_bytes());
                r.extend_from_slice(d.id.as_bytes());
                r.extend_from_slice(&(k.len() as u32).to_le_bytes());
                for v in k {
                    r.extend_from_slice(&v.to_le_bytes());
                }
                for v in &b {
                    r.extend_from_slice(&v.to_le_bytes());
                }
                r.extend_from_slice(&(whole.len() as u32).to_le_bytes());
                for v in whole {
                    r.extend_from_slice(&v.to_le_bytes());
                }
                r
            })
            .collect();
        for (i, r) in recs.iter().enumerate() {
            let key = ((shard as u64) << 40) | (n + i as u64);
            f.write_all(&key.to_le_bytes()).map_err(io_err(path))?;
            f.write_all(r).map_err(io_err(path))?;
        }
        n += chunk.len() as u64;
    }
    f.commit().map_err(io_err(path))?;
    Ok(n)
}

fn read_signatures(path: &Path, cfg: &MinHashConfig, set: &mut SignatureSet) -> Result<()> {
    let bad = |m: String| CorpusError::Invalid { path: path.to_path_buf(), message: m };
    let mut r = BufReader::new(std::fs::File::open(path).map_err(io_err(path))?);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(io_err(path))?;
    if &magic == b"FLMSIG01" {
        return Err(bad("signature file of an older version (no whole shingle sets); run `ferrolm data minhash signatures` again".into()));
    }
    if &magic != SIG_MAGIC {
        return Err(bad("not a ferrolm MinHash signature file".into()));
    }
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(io_err(path))?;
    let mut cj = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut cj).map_err(io_err(path))?;
    let file_cfg: MinHashConfig = serde_json::from_slice(&cj).map_err(|e| bad(e.to_string()))?;
    if file_cfg != *cfg {
        return Err(bad(format!("signatures were made with {file_cfg:?}, not {cfg:?}")));
    }
    let bands = cfg.bands;
    // Whole sets stay in the file: the set reads them by position when a pair needs them.
    let file_index = set.files.len() as u32;
    set.files.push(std::fs::File::open(path).map_err(io_err(path))?);
    let mut pos = (8 + 4 + cj.len()) as u64;
    let mut key = [0u8; 8];
    loop {
        match r.read_exact(&mut key) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io_err(path)(e)),
        }
        r.read_exact(&mut len).map_err(io_err(path))?;
        let mut id = vec![0u8; u32::from_le_bytes(len) as usize];
        r.read_exact(&mut id).map_err(|_| bad("truncated record".into()))?;
        r.read_exact(&mut len).map_err(|_| bad("truncated record".into()))?;
        let k = u32::from_le_bytes(len) as usize;
        if k > cfg.sketch_size {
            return Err(bad(format!("sketch of {k} hashes, config says at most {}", cfg.sketch_size)));
        }
        let mut body = vec![0u8; k * 4 + bands * 8];
        r.read_exact(&mut body).map_err(|_| bad("truncated record".into()))?;
        let id = String::from_utf8(id).map_err(|_| bad("id is not UTF-8".into()))?;
        let sketch: Vec<u32> = body[..k * 4].chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
        let band_hashes: Vec<u64> = body[k * 4..].chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        r.read_exact(&mut len).map_err(|_| bad("truncated record".into()))?;
        let whole = u32::from_le_bytes(len);
        pos += (8 + 4 + id.len() + 4 + body.len() + 4) as u64;
        let loc = (whole > 0).then_some((file_index, pos, whole));
        r.seek_relative(whole as i64 * 4).map_err(io_err(path))?;
        pos += whole as u64 * 4;
        set.push_located(u64::from_le_bytes(key), id, &sketch, &band_hashes, loc);
    }
    if let Some(&Some((_, at, n))) = set.full.last() {
        let end = r.get_ref().metadata().map_err(io_err(path))?.len();
        if at + n as u64 * 4 > end {
            return Err(bad("truncated record".into()));
        }
    }
    Ok(())
}

/// Stage 2: read every shard's signatures, cluster, and write the ids to remove (one per line,
/// atomically) to `remove_list`. Returns (documents, removed, cluster sizes of clusters > 1).
pub fn cluster_signature_files(files: &[PathBuf], cfg: &MinHashConfig, remove_list: &Path) -> Result<(usize, usize, Vec<u32>)> {
    let mut set = SignatureSet::new(cfg);
    // Whole sets are read from the signature files in place, by position.
    for f in files {
        read_signatures(f, cfg, &mut set)?;
    }
    let reps = set.clusters(cfg.threshold);
    let mut sizes = std::collections::HashMap::<usize, u32>::new();
    let mut out = Vec::new();
    let mut removed = 0;
    for (i, &r) in reps.iter().enumerate() {
        *sizes.entry(r).or_default() += 1;
        if r != i {
            removed += 1;
            out.extend_from_slice(set.ids[i].as_bytes());
            out.push(b'\n');
        }
    }
    ferrolm_common::write_atomic(remove_list, &out).map_err(io_err(remove_list))?;
    let mut s: Vec<u32> = sizes.into_values().filter(|&s| s > 1).collect();
    s.sort_unstable();
    Ok((set.len(), removed, s))
}

/// Stage 3 helper: the id list written by [`cluster_signature_files`].
pub fn read_remove_list(path: &Path) -> Result<std::collections::HashSet<String>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    Ok(text.lines().filter(|l| !l.is_empty()).map(String::from).collect())
}

/// Filter step for stage 3: removes the documents whose id is in the list.
pub struct RemoveIds {
    pub ids: std::collections::HashSet<String>,
}

impl Step for RemoveIds {
    fn name(&self) -> &str {
        "minhash_dedup"
    }
    fn apply(&self, _seq: u64, doc: &mut Document) -> Verdict {
        if self.ids.contains(&doc.id) {
            Verdict::remove("near_duplicate")
        } else {
            Verdict::Keep
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_texts_have_identical_signatures_and_similarity_tracks_jaccard() {
        // Sketch-only pushes (no whole sets): similarity is the bottom-k estimate.
        let h = MinHasher::new(MinHashConfig { sketch_size: 512, ..Default::default() });
        let base: Vec<String> = (0..400).map(|i| format!("w{}", (i * 7919) % 1000)).collect();
        let a = base.join(" ");
        let mut edited = base.clone();
        for i in (0..400).step_by(80) {
            edited[i] = "CHANGED".into();
        }
        let b = edited.join(" ");
        let mut set = SignatureSet::new(&MinHashConfig { sketch_size: 512, ..Default::default() });
        for (k, t) in [&a, &a, &b].iter().enumerate() {
            let (s, sk) = h.signature_and_sketch(t);
            set.push(k as u64, k.to_string(), &sk, &h.band_hashes(&s));
        }
        assert_eq!(set.similarity(0, 1), 1.0);
        let (sa, sb): (HashSet64, HashSet64) = (shingles(&a, 5).into_iter().collect(), shingles(&b, 5).into_iter().collect());
        let j = sa.intersection(&sb).count() as f64 / sa.union(&sb).count() as f64;
        assert!((set.similarity(0, 2) - j).abs() < 0.05, "estimate {} vs true {j}", set.similarity(0, 2));
        // Fewer than k shingles in the union: the bottom-k estimate is exact.
        let short_a = base[..100].join(" ");
        let short_b = edited[..100].join(" ");
        let mut small = SignatureSet::new(&MinHashConfig { sketch_size: 512, ..Default::default() });
        for t in [&short_a, &short_b] {
            let (s, sk) = h.signature_and_sketch(t);
            small.push(0, String::new(), &sk, &h.band_hashes(&s));
        }
        let (x, y): (HashSet64, HashSet64) = (shingles(&short_a, 5).into_iter().collect(), shingles(&short_b, 5).into_iter().collect());
        let jj = x.intersection(&y).count() as f64 / x.union(&y).count() as f64;
        assert!((small.similarity(0, 1) - jj).abs() < 1e-9);
        assert!(j > 0.85, "{j}");
        assert_eq!(set.clusters(0.8), vec![0, 0, 0]);
        assert_eq!(set.clusters(0.99), vec![0, 0, 2]);
    }

    #[test]
    fn exact_verification_reads_whole_sets_of_long_documents() {
        let cfg = MinHashConfig::default(); // k = 256, verify = exact
        let h = MinHasher::new(cfg.clone());
        let base: Vec<String> = (0..1500).map(|i| format!("w{}", (i * 7919) % 100_003)).collect();
        let mut near = base.clone();
        for i in (0..1500).step_by(37) {
            near[i] = format!("x{i}"); // 41 substitutions: Jaccard close to 0.8
        }
        let texts = [base.join(" "), near.join(" ")];
        let mut set = SignatureSet::new(&cfg);
        for (k, t) in texts.iter().enumerate() {
            let (s, whole) = h.signature_and_set(t);
            assert!(whole.len() > cfg.sketch_size);
            set.push_set(k as u64, String::new(), &whole, &h.band_hashes(&s)).unwrap();
        }
        set.seal().unwrap();
        let (x, y): (HashSet64, HashSet64) = (shingles(&texts[0], 5).into_iter().collect(), shingles(&texts[1], 5).into_iter().collect());
        let truth = x.intersection(&y).count() as f64 / x.union(&y).count() as f64;
        assert!((set.similarity(0, 1) - truth).abs() < 1e-9, "{} vs {truth}", set.similarity(0, 1));
        assert!((0.7..0.9).contains(&truth), "{truth}");
        // Near the threshold the sketch cannot decide: the pair is verified on the whole sets,
        // and the decision matches the truth on either side of it.
        assert!(set.is_similar(0, 1, truth - 0.001));
        assert!(!set.is_similar(0, 1, truth + 0.001));
        assert_eq!(set.exact_checks.load(std::sync::atomic::Ordering::Relaxed), 2);
        // Far from it (identical documents), the sketch decides alone.
        assert!(set.is_similar(0, 0, 0.8));
        assert_eq!(set.exact_checks.load(std::sync::atomic::Ordering::Relaxed), 2);
        // With verify = "sketch", only the estimate is used.
        let mut est = SignatureSet::new(&MinHashConfig { verify: Verify::Sketch, ..cfg.clone() });
        for t in &texts {
            let (s, whole) = h.signature_and_set(t);
            est.push_set(0, String::new(), &whole, &h.band_hashes(&s)).unwrap();
        }
        assert!((est.similarity(0, 1) - truth).abs() > 1e-9 || est.similarity(0, 1) == truth);
        assert_eq!(est.exact_checks.load(std::sync::atomic::Ordering::Relaxed), 0);
    }
}
