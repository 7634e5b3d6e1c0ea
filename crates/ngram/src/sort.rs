//! External sorting of fixed-width records (n-gram ids plus 64-bit payloads), as KenLM's
//! `lmplz` sorts its count streams: records are buffered up to a memory budget, each full
//! buffer is sorted and spilled to a run file in a temporary directory, and the runs are
//! k-way merged (in several passes when there are more runs than the merge fan-in allows).
//!
//! Two key orders are used by the estimator:
//! * [`KeyOrder::Forward`]: lexicographic on w1…wn — n-grams sharing a context w1…w(n-1) are
//!   adjacent (needed to normalise by the context's total count);
//! * [`KeyOrder::Suffix`]: lexicographic on wn…w1 — n-grams sharing a suffix w2…wn are
//!   adjacent and suffixes come in the suffix order of the lower order (needed for adjusted
//!   counts and to join each n-gram with its lower-order probability).

use anyhow::{Context, Result};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOrder {
    Forward,
    Suffix,
}

impl KeyOrder {
    pub fn cmp(self, a: &[u32], b: &[u32]) -> Ordering {
        match self {
            KeyOrder::Forward => a.cmp(b),
            KeyOrder::Suffix => a.iter().rev().cmp(b.iter().rev()),
        }
    }
}

/// One record: `n` word ids and `v` 64-bit payload words (counts or f64 bits).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rec {
    pub key: Vec<u32>,
    pub vals: Vec<u64>,
}

impl Rec {
    pub fn new(n: usize, v: usize) -> Self {
        Self { key: vec![0; n], vals: vec![0; v] }
    }
}

const IO_BUF: usize = 1 << 16;

/// Sequential writer of records to a (temporary) file.
pub struct RecWriter {
    w: BufWriter<File>,
    pub count: u64,
}

impl RecWriter {
    pub fn create(path: &Path) -> Result<Self> {
        let f = File::create(path).with_context(|| format!("creating temporary file {}", path.display()))?;
        Ok(Self { w: BufWriter::with_capacity(IO_BUF, f), count: 0 })
    }
    pub fn write(&mut self, key: &[u32], vals: &[u64]) -> Result<()> {
        for k in key {
            self.w.write_all(&k.to_le_bytes())?;
        }
        for v in vals {
            self.w.write_all(&v.to_le_bytes())?;
        }
        self.count += 1;
        Ok(())
    }
    pub fn finish(mut self) -> Result<u64> {
        self.w.flush().context("flushing temporary file")?;
        Ok(self.count)
    }
}

/// Sequential reader of records written by [`RecWriter`].
pub struct RecReader {
    r: BufReader<File>,
    n: usize,
    v: usize,
    buf: Vec<u8>,
}

impl RecReader {
    pub fn open(path: &Path, n: usize, v: usize) -> Result<Self> {
        let f = File::open(path).with_context(|| format!("opening temporary file {}", path.display()))?;
        Ok(Self { r: BufReader::with_capacity(IO_BUF, f), n, v, buf: vec![0; 4 * n + 8 * v] })
    }
    /// Read the next record into `rec`; false at the end.
    pub fn next_into(&mut self, rec: &mut Rec) -> Result<bool> {
        match self.r.read_exact(&mut self.buf) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e).context("reading temporary file"),
        }
        rec.key.resize(self.n, 0);
        rec.vals.resize(self.v, 0);
        for (i, k) in rec.key.iter_mut().enumerate() {
            *k = u32::from_le_bytes(self.buf[4 * i..4 * i + 4].try_into().unwrap());
        }
        let o = 4 * self.n;
        for (i, x) in rec.vals.iter_mut().enumerate() {
            *x = u64::from_le_bytes(self.buf[o + 8 * i..o + 8 * i + 8].try_into().unwrap());
        }
        Ok(true)
    }
}

/// Where temporary run files go; removed (with everything in it) when dropped.
pub struct Scratch {
    dir: tempfile::TempDir,
    next: std::cell::Cell<u64>,
}

impl Scratch {
    pub fn new(parent: Option<&Path>) -> Result<Self> {
        let dir = match parent {
            Some(p) => tempfile::Builder::new().prefix("ferrolm-ngram-").tempdir_in(p),
            None => tempfile::Builder::new().prefix("ferrolm-ngram-").tempdir(),
        }
        .context("creating a temporary directory for n-gram sort runs")?;
        Ok(Self { dir, next: std::cell::Cell::new(0) })
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn file(&self, tag: &str) -> PathBuf {
        let i = self.next.get();
        self.next.set(i + 1);
        self.dir.path().join(format!("{tag}-{i}.bin"))
    }
}

/// Statistics of one sort, for logging and tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct SortStats {
    pub records: u64,
    pub runs: usize,
    pub merge_passes: usize,
}

/// Buffers records up to `budget` bytes, spilling sorted runs; [`Sorter::finish`] merges.
pub struct Sorter<'s> {
    scratch: &'s Scratch,
    n: usize,
    v: usize,
    order: KeyOrder,
    cap: usize,
    keys: Vec<u32>,
    vals: Vec<u64>,
    runs: Vec<PathBuf>,
    fan_in: usize,
    pub stats: SortStats,
}

impl<'s> Sorter<'s> {
    pub fn new(scratch: &'s Scratch, n: usize, v: usize, order: KeyOrder, budget: usize) -> Self {
        // bytes per buffered record: key, payload and a u32 index used for sorting
        let per = 4 * n + 8 * v + 4;
        let cap = (budget / per).max(16);
        // Each merge input holds one read buffer.
        let fan_in = (budget / IO_BUF).clamp(2, 256);
        Self { scratch, n, v, order, cap, keys: Vec::new(), vals: Vec::new(), runs: Vec::new(), fan_in, stats: SortStats::default() }
    }

    pub fn push(&mut self, key: &[u32], vals: &[u64]) -> Result<()> {
        debug_assert_eq!(key.len(), self.n);
        debug_assert_eq!(vals.len(), self.v);
        self.keys.extend_from_slice(key);
        self.vals.extend_from_slice(vals);
        self.stats.records += 1;
        if self.keys.len() / self.n.max(1) >= self.cap {
            self.spill()?;
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.keys.len().checked_div(self.n).unwrap_or_else(|| self.vals.len() / self.v.max(1))
    }

    fn spill(&mut self) -> Result<()> {
        let len = self.len();
        if len == 0 {
            return Ok(());
        }
        let (n, v, order) = (self.n, self.v, self.order);
        let mut idx: Vec<u32> = (0..len as u32).collect();
        let keys = &self.keys;
        idx.sort_unstable_by(|&a, &b| order.cmp(&keys[a as usize * n..(a as usize + 1) * n], &keys[b as usize * n..(b as usize + 1) * n]));
        let path = self.scratch.file("run");
        let mut w = RecWriter::create(&path)?;
        for &i in &idx {
            let i = i as usize;
            w.write(&self.keys[i * n..(i + 1) * n], &self.vals[i * v..(i + 1) * v])?;
        }
        w.finish()?;
        self.runs.push(path);
        self.keys.clear();
        self.vals.clear();
        Ok(())
    }

    /// Sort what was pushed; returns a stream of the records in key order (duplicates kept).
    pub fn finish(mut self) -> Result<(Merged, SortStats)> {
        self.spill()?;
        self.keys = Vec::new();
        self.vals = Vec::new();
        self.stats.runs = self.runs.len();
        // Merge in passes until the remaining runs fit in one merge.
        let mut runs = std::mem::take(&mut self.runs);
        while runs.len() > self.fan_in {
            self.stats.merge_passes += 1;
            let mut next = Vec::new();
            for group in runs.chunks(self.fan_in) {
                let path = self.scratch.file("merge");
                let mut m = Merged::open(group, self.n, self.v, self.order, true)?;
                let mut w = RecWriter::create(&path)?;
                let mut rec = Rec::new(self.n, self.v);
                while m.next_into(&mut rec)? {
                    w.write(&rec.key, &rec.vals)?;
                }
                w.finish()?;
                next.push(path);
            }
            runs = next;
        }
        self.stats.merge_passes += 1;
        let m = Merged::open(&runs, self.n, self.v, self.order, true)?;
        Ok((m, self.stats))
    }
}

impl Sorter<'_> {
    /// Sort what was pushed into one file (the run itself when there is only one), so the
    /// result can wait for a later stage without holding open files and read buffers.
    pub fn finish_file(mut self) -> Result<(PathBuf, SortStats)> {
        self.spill()?;
        if self.runs.len() == 1 {
            self.stats.runs = 1;
            return Ok((self.runs.pop().unwrap(), self.stats));
        }
        let scratch = self.scratch;
        let (n, v) = (self.n, self.v);
        let (mut m, mut stats) = self.finish()?;
        let path = scratch.file("sorted");
        let mut w = RecWriter::create(&path)?;
        let mut rec = Rec::new(n, v);
        while m.next_into(&mut rec)? {
            w.write(&rec.key, &rec.vals)?;
        }
        w.finish()?;
        stats.merge_passes += 1;
        Ok((path, stats))
    }
}

struct Head {
    rec: Rec,
    src: usize,
    order: KeyOrder,
}

impl PartialEq for Head {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Head {
    // BinaryHeap is a max-heap: invert so the smallest key (then the earliest run) pops first.
    fn cmp(&self, o: &Self) -> Ordering {
        self.order.cmp(&o.rec.key, &self.rec.key).then(o.src.cmp(&self.src))
    }
}

/// K-way merge of sorted run files (stable: equal keys come in run order).
pub struct Merged {
    readers: Vec<RecReader>,
    heap: BinaryHeap<Head>,
    paths: Vec<PathBuf>,
    remove: bool,
}

impl Merged {
    pub fn open(paths: &[PathBuf], n: usize, v: usize, order: KeyOrder, remove: bool) -> Result<Self> {
        let mut readers = Vec::with_capacity(paths.len());
        let mut heap = BinaryHeap::with_capacity(paths.len());
        for (src, p) in paths.iter().enumerate() {
            let mut r = RecReader::open(p, n, v)?;
            let mut rec = Rec::new(n, v);
            if r.next_into(&mut rec)? {
                heap.push(Head { rec, src, order });
            }
            readers.push(r);
        }
        Ok(Self { readers, heap, paths: paths.to_vec(), remove })
    }

    pub fn next_into(&mut self, out: &mut Rec) -> Result<bool> {
        let Some(mut top) = self.heap.pop() else {
            self.cleanup();
            return Ok(false);
        };
        std::mem::swap(out, &mut top.rec);
        if self.readers[top.src].next_into(&mut top.rec)? {
            self.heap.push(top);
        }
        Ok(true)
    }

    fn cleanup(&mut self) {
        if self.remove {
            self.readers.clear();
            for p in self.paths.drain(..) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

impl Drop for Merged {
    fn drop(&mut self) {
        self.cleanup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_sort_matches_in_memory_sort_in_both_orders() {
        let scratch = Scratch::new(None).unwrap();
        let mut s = 12345u64;
        let mut data: Vec<(Vec<u32>, u64)> = (0..5000)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (vec![(s % 7) as u32, ((s >> 8) % 5) as u32, ((s >> 16) % 11) as u32], i)
            })
            .collect();
        for order in [KeyOrder::Forward, KeyOrder::Suffix] {
            // a budget of ~100 records forces 50 runs and, with fan-in 2, several merge passes
            let mut sorter = Sorter::new(&scratch, 3, 1, order, 100 * 24);
            for (k, v) in &data {
                sorter.push(k, &[*v]).unwrap();
            }
            let (mut m, stats) = sorter.finish().unwrap();
            assert!(stats.runs >= 40 && stats.merge_passes > 1, "{stats:?}");
            let mut got = Vec::new();
            let mut rec = Rec::default();
            while m.next_into(&mut rec).unwrap() {
                got.push((rec.key.clone(), rec.vals[0]));
            }
            // stable sort on the key = what the merge must produce (runs keep input order)
            data.sort_by(|a, b| order.cmp(&a.0, &b.0));
            assert_eq!(got.len(), data.len());
            for (g, d) in got.iter().zip(&data) {
                assert_eq!(g.0, d.0);
            }
        }
        drop(scratch);
    }
}
