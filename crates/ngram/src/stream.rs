//! Streaming Kneser-Ney estimation in bounded memory, the way KenLM's `lmplz` works: raw
//! n-gram counts are gathered in a hash table until a memory budget is reached, then each
//! order is sorted and spilled as a run file; runs are k-way merged, and every later stage
//! (adjusted counts, discounts, context normalisation, interpolation, backoffs, the ARPA text)
//! reads and writes sorted record streams in a temporary directory. Only the vocabulary, the
//! unigram table and the continuations of one context are held in memory besides the budget.
//!
//! The result is bit-identical to [`crate::estimate::Estimator`] (same formulas, evaluated in
//! the same order; the ARPA text is byte-for-byte equal — tested).
//!
//! Stages, for order N:
//! 1. count raw n-grams of orders 1..=N; spill runs sorted in suffix order;
//! 2. merge runs, summing duplicates → raw_n (suffix order);
//! 3. adjusted counts: adj_N = raw_N; for n < N, a(g) = number of distinct left extensions
//!    read off raw_{n+1} (whose suffix order groups extensions of one suffix together), merged
//!    with the `<s>`-initial raw n-grams, which keep raw counts; count-of-counts → discounts;
//! 4. per order, sort adj_n forward (context groups), compute Σa, N1, N2, N3+ per context:
//!    u(g) = (a − D)/Σa and γ(h); write u with γ(context) (to be re-sorted in suffix order) and
//!    γ(h) per context h (forward order: these become the ARPA backoffs of order n−1);
//! 5. per order, join u (suffix order) with the lower order's probabilities (suffix order):
//!    p(g) = u(g) + γ(h) p(suffix); sort p forward, join with the backoffs, write ARPA lines.

use crate::estimate::{context_weights, discounts_from, Discounts, WordVocab};
use crate::model::{BOS, EOS};
use crate::sort::{KeyOrder, Merged, Rec, RecReader, RecWriter, Scratch, Sorter};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

const BOS_ID: u32 = 1;
const EOS_ID: u32 = 2;
/// log10 probability written for `<s>`, as KenLM does.
const LOG_ZERO: f64 = -99.0;
/// Approximate bytes one entry of the counting hash table costs beyond its key: the boxed
/// key's allocation header and rounding, the table slot (box + count), control byte, slack.
const ENTRY_OVERHEAD: usize = 64;
/// At most this many runs are merged at once (open files, read buffers).
const MAX_FAN_IN: usize = 64;

#[derive(Clone, Debug)]
pub struct StreamOptions {
    pub order: usize,
    /// See [`crate::TrainOptions::discount_fallback`].
    pub discount_fallback: bool,
    /// Memory budget in bytes for the counting table and each sort buffer.
    pub memory: usize,
    /// Parent directory for the temporary run files (default: the system temp dir).
    pub temp_dir: Option<PathBuf>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self { order: 5, discount_fallback: true, memory: 1 << 30, temp_dir: None }
    }
}

/// What a streaming estimation did (for logs and tests).
#[derive(Clone, Debug, Default)]
pub struct StreamReport {
    /// n-grams per order in the written model.
    pub counts: Vec<u64>,
    pub discounts: Vec<Discounts>,
    /// Times the counting table was spilled to disk.
    pub count_spills: usize,
    /// Sorted runs written in total (counting and every re-sort).
    pub runs: usize,
    pub sentences: u64,
    pub tokens: u64,
}

/// Parse a memory size such as `512M`, `2G`, `1.5g`, `800k` or a plain byte count.
pub fn parse_memory(s: &str) -> Result<usize> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let m: f64 = match c.to_ascii_lowercase() {
                'k' => 1024.0,
                'm' => 1024.0 * 1024.0,
                'g' => 1024.0 * 1024.0 * 1024.0,
                't' => 1024.0f64.powi(4),
                'b' => 1.0,
                _ => bail!("memory size `{s}`: unknown unit {c} (use k, M, G, T)"),
            };
            (&t[..t.len() - 1], m)
        }
        _ => (t, 1.0),
    };
    let x: f64 = num.trim().parse().with_context(|| format!("memory size `{s}` is not a number with an optional k/M/G/T unit"))?;
    if x.is_nan() || x <= 0.0 {
        bail!("memory size `{s}` must be positive");
    }
    Ok((x * mult) as usize)
}

pub struct StreamingEstimator {
    opts: StreamOptions,
    vocab: WordVocab,
    /// counts[n-1]: raw counts of n-grams since the last spill.
    counts: Vec<HashMap<Box<[u32]>, u64>>,
    used: usize,
    scratch: Scratch,
    /// runs[n-1]: spilled runs of order n, each sorted in suffix order.
    runs: Vec<Vec<PathBuf>>,
    report: StreamReport,
    sentence: Vec<u32>,
}

impl StreamingEstimator {
    pub fn new(opts: StreamOptions) -> Result<Self> {
        if opts.order == 0 {
            bail!("n-gram order must be at least 1");
        }
        if opts.memory < 1 << 16 {
            bail!("memory budget {} bytes is too small (at least 64 KiB)", opts.memory);
        }
        let scratch = Scratch::new(opts.temp_dir.as_deref())?;
        Ok(Self {
            vocab: WordVocab::new(),
            counts: vec![HashMap::new(); opts.order],
            used: 0,
            scratch,
            runs: vec![Vec::new(); opts.order],
            report: StreamReport::default(),
            sentence: Vec::new(),
            opts,
        })
    }

    /// Where the temporary runs live (removed when the estimator is dropped or finished).
    pub fn temp_path(&self) -> &Path {
        self.scratch.path()
    }

    /// Add one whitespace-tokenised sentence (same rules as [`crate::train_text`]).
    pub fn add_line(&mut self, line: &str) -> Result<()> {
        let mut s = std::mem::take(&mut self.sentence);
        s.clear();
        s.push(BOS_ID);
        for w in line.split_whitespace() {
            if w == BOS || w == EOS {
                bail!("the text contains the reserved token {w}");
            }
            s.push(self.vocab.intern(w));
        }
        s.push(EOS_ID);
        self.report.sentences += 1;
        self.report.tokens += s.len() as u64 - 1;
        let order = self.opts.order;
        for i in 1..s.len() {
            for n in 1..=order.min(i + 1) {
                let g = &s[i + 1 - n..=i];
                match self.counts[n - 1].get_mut(g) {
                    Some(c) => *c += 1,
                    None => {
                        self.counts[n - 1].insert(g.into(), 1);
                        self.used += ENTRY_OVERHEAD + 4 * n;
                    }
                }
            }
        }
        self.sentence = s;
        if self.used >= self.opts.memory {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<()> {
        for n in 1..=self.opts.order {
            let map = std::mem::take(&mut self.counts[n - 1]);
            if map.is_empty() {
                continue;
            }
            let mut v: Vec<(Box<[u32]>, u64)> = map.into_iter().collect();
            v.sort_unstable_by(|a, b| KeyOrder::Suffix.cmp(&a.0, &b.0));
            let path = self.scratch.file(&format!("count{n}"));
            let mut w = RecWriter::create(&path)?;
            for (g, c) in &v {
                w.write(g, &[*c])?;
            }
            w.finish()?;
            self.runs[n - 1].push(path);
            self.report.runs += 1;
        }
        self.used = 0;
        self.report.count_spills += 1;
        Ok(())
    }

    /// Estimate and write the ARPA text to `out`. Temporary files are removed on return.
    pub fn finish_to<W: Write>(mut self, out: &mut W) -> Result<StreamReport> {
        self.spill()?;
        self.report.count_spills -= 1; // the final flush is not a spill forced by the budget
        let order = self.opts.order;
        let budget = self.opts.memory;
        let words = std::mem::take(&mut self.vocab.words);
        let scratch = &self.scratch;
        let mut report = std::mem::take(&mut self.report);

        // 2. merge count runs → raw_n (suffix order, duplicates summed)
        let mut raw: Vec<PathBuf> = Vec::with_capacity(order);
        for n in 1..=order {
            let runs = std::mem::take(&mut self.runs[n - 1]);
            let mut m = merge_runs(scratch, runs, n, 1, KeyOrder::Suffix, &mut report)?;
            let path = scratch.file(&format!("raw{n}"));
            let mut w = RecWriter::create(&path)?;
            let mut cur = Rec::new(n, 1);
            let mut rec = Rec::new(n, 1);
            let mut have = false;
            while m.next_into(&mut rec)? {
                if have && cur.key == rec.key {
                    cur.vals[0] += rec.vals[0];
                } else {
                    if have {
                        w.write(&cur.key, &cur.vals)?;
                    }
                    std::mem::swap(&mut cur, &mut rec);
                    have = true;
                }
            }
            if have {
                w.write(&cur.key, &cur.vals)?;
            }
            w.finish()?;
            raw.push(path);
        }

        // 3. adjusted counts and count-of-counts
        let mut adj: Vec<PathBuf> = vec![PathBuf::new(); order];
        let mut coc = vec![[0u64; 4]; order];
        adj[order - 1] = raw[order - 1].clone();
        {
            let mut r = RecReader::open(&raw[order - 1], order, 1)?;
            let mut rec = Rec::new(order, 1);
            while r.next_into(&mut rec)? {
                tally(&mut coc[order - 1], order, &rec.key, rec.vals[0]);
            }
        }
        for n in (1..order).rev() {
            let path = scratch.file(&format!("adj{n}"));
            let mut w = RecWriter::create(&path)?;
            let mut ext = RecReader::open(&raw[n], n + 1, 1)?;
            let mut bos = RecReader::open(&raw[n - 1], n, 1)?;
            let mut e = Rec::new(n + 1, 1);
            let mut b = Rec::new(n, 1);
            let mut have_e = ext.next_into(&mut e)?;
            let mut have_b = next_bos_initial(&mut bos, &mut b)?;
            let mut suffix: Vec<u32> = Vec::with_capacity(n);
            loop {
                // next adjusted-count candidate from the extensions: a suffix and its number
                // of distinct left extensions (suffixes starting with <s> are skipped: they
                // keep their raw counts)
                let mut group: Option<u64> = None;
                while have_e {
                    if e.key[1] == BOS_ID {
                        have_e = ext.next_into(&mut e)?;
                        continue;
                    }
                    suffix.clear();
                    suffix.extend_from_slice(&e.key[1..]);
                    let mut k = 0u64;
                    while have_e && e.key[1..] == suffix[..] {
                        k += 1;
                        have_e = ext.next_into(&mut e)?;
                    }
                    group = Some(k);
                    break;
                }
                // emit <s>-initial raw n-grams that sort before the group's suffix
                while have_b && group.is_none_or(|_| KeyOrder::Suffix.cmp(&b.key, &suffix).is_lt()) {
                    w.write(&b.key, &b.vals)?;
                    tally(&mut coc[n - 1], n, &b.key, b.vals[0]);
                    have_b = next_bos_initial(&mut bos, &mut b)?;
                }
                match group {
                    Some(k) => {
                        w.write(&suffix, &[k])?;
                        tally(&mut coc[n - 1], n, &suffix, k);
                    }
                    None => break,
                }
            }
            w.finish()?;
            adj[n - 1] = path;
        }
        for p in raw.iter().take(order - 1) {
            let _ = std::fs::remove_file(p);
        }
        let discounts: Vec<Discounts> =
            coc.iter().enumerate().map(|(n, t)| discounts_from(*t, n + 1, self.opts.discount_fallback)).collect::<Result<_>>()?;

        // 4. per order: context statistics, u(g), γ(context)
        let vocab_size = (words.len() - 1) as f64;
        let mut counts = vec![words.len() as u64; order];
        let mut u_sorted: Vec<Option<PathBuf>> = Vec::with_capacity(order);
        // gammas[n-1]: γ(h) for contexts h of order n (forward order) = ARPA backoffs of order n
        let mut gammas: Vec<Option<PathBuf>> = vec![None; order];
        let mut uni_u: Vec<Option<f64>> = vec![None; words.len()];
        let mut uni_w = 0.0f64; // γ() of the empty context, for unseen unigrams
        let mut uni_den = 0.0f64;
        let mut uni_gnum = 0.0f64;
        for n in 1..=order {
            let d = discounts[n - 1];
            let mut fwd = Sorter::new(scratch, n, 1, KeyOrder::Forward, budget);
            {
                let mut r = RecReader::open(&adj[n - 1], n, 1)?;
                let mut rec = Rec::new(n, 1);
                let mut c = 0u64;
                while r.next_into(&mut rec)? {
                    fwd.push(&rec.key, &rec.vals)?;
                    c += 1;
                }
                if n > 1 {
                    counts[n - 1] = c;
                }
            }
            let _ = std::fs::remove_file(&adj[n - 1]);
            let (mut m, st) = fwd.finish()?;
            report.runs += st.runs;
            let mut usort = Sorter::new(scratch, n, 2, KeyOrder::Suffix, budget / 2);
            let mut gw = if n > 1 {
                let p = scratch.file(&format!("gamma{}", n - 1));
                gammas[n - 2] = Some(p.clone());
                Some(RecWriter::create(&p)?)
            } else {
                None
            };
            let mut rec = Rec::new(n, 1);
            let mut have = m.next_into(&mut rec)?;
            let mut group_keys: Vec<u32> = Vec::new();
            let mut group_counts: Vec<u64> = Vec::new();
            while have {
                group_keys.clear();
                group_counts.clear();
                let ctx: Vec<u32> = rec.key[..n - 1].to_vec();
                let mut stats = [0u64; 4];
                while have && rec.key[..n - 1] == ctx[..] {
                    // the <s> unigram has no probability of its own (handled below)
                    if !(n == 1 && rec.key[0] == BOS_ID) {
                        let c = rec.vals[0];
                        stats[0] += c;
                        stats[c.min(3) as usize] += 1;
                        group_keys.extend_from_slice(&rec.key);
                        group_counts.push(c);
                    }
                    have = m.next_into(&mut rec)?;
                }
                let [den, gnum] = context_weights(&d, stats);
                for (i, &c) in group_counts.iter().enumerate() {
                    let u = (c as f64 - d.get(c)) / den;
                    let g = &group_keys[i * n..(i + 1) * n];
                    if n == 1 {
                        uni_u[g[0] as usize] = Some(u);
                    } else {
                        usort.push(g, &[u.to_bits(), (gnum / den).to_bits()])?;
                    }
                }
                if n == 1 {
                    uni_w = gnum / den;
                    uni_den = den;
                    uni_gnum = gnum;
                } else if let Some(gw) = gw.as_mut() {
                    gw.write(&ctx, &[(gnum / den).to_bits()])?;
                }
            }
            if let Some(gw) = gw {
                gw.finish()?;
            }
            if n == 1 {
                u_sorted.push(None);
            } else {
                let (p, st) = usort.finish_file()?;
                report.runs += st.runs;
                u_sorted.push(Some(p));
            }
        }

        // 5. interpolate, attach backoffs, write the ARPA text
        writeln!(out, "\n\\data\\")?;
        for (n, c) in counts.iter().enumerate() {
            writeln!(out, "ngram {}={}", n + 1, c)?;
        }
        // unigrams: every vocabulary id, in id order
        let uniform = 1.0 / vocab_size;
        let mut p1 = vec![0.0f64; words.len()];
        for id in 0..words.len() {
            if id as u32 == BOS_ID {
                continue;
            }
            p1[id] = match uni_u[id] {
                Some(u) => u + uni_w * uniform,
                None => uni_gnum / uni_den / vocab_size,
            };
        }
        let mut b1 = vec![1.0f64; words.len()];
        if order > 1 {
            let mut r = RecReader::open(gammas[0].as_ref().unwrap(), 1, 1)?;
            let mut rec = Rec::new(1, 1);
            while r.next_into(&mut rec)? {
                b1[rec.key[0] as usize] = f64::from_bits(rec.vals[0]);
            }
        }
        writeln!(out, "\n\\1-grams:")?;
        for id in 0..words.len() {
            write_line(out, &words, &[id as u32], p1[id], b1[id], order > 1)?;
        }
        drop(b1);
        // probabilities of the previous order in suffix order (order 1: the array)
        let mut prev: Option<PathBuf> = None;
        for n in 2..=order {
            let u_path = u_sorted[n - 1].take().unwrap();
            let mut u = RecReader::open(&u_path, n, 2)?;
            let mut lower = match &prev {
                Some(p) => Some(RecReader::open(p, n - 1, 1)?),
                None => None,
            };
            let mut lrec = Rec::new(n - 1, 1);
            let mut have_l = match lower.as_mut() {
                Some(r) => r.next_into(&mut lrec)?,
                None => false,
            };
            let next_prev = if n < order { Some(scratch.file(&format!("prob{n}"))) } else { None };
            let mut pw = match &next_prev {
                Some(p) => Some(RecWriter::create(p)?),
                None => None,
            };
            let mut fwd = Sorter::new(scratch, n, 1, KeyOrder::Forward, budget / 2);
            let mut rec = Rec::new(n, 2);
            while u.next_into(&mut rec)? {
                let suffix = &rec.key[1..];
                let lp = if n == 2 {
                    p1[suffix[0] as usize]
                } else {
                    let r = lower.as_mut().unwrap();
                    while have_l && KeyOrder::Suffix.cmp(&lrec.key, suffix).is_lt() {
                        have_l = r.next_into(&mut lrec)?;
                    }
                    if !have_l || lrec.key != suffix {
                        bail!("internal error: {}-gram {:?} has no lower-order entry for its suffix", n, rec.key);
                    }
                    f64::from_bits(lrec.vals[0])
                };
                let p = f64::from_bits(rec.vals[0]) + f64::from_bits(rec.vals[1]) * lp;
                if let Some(pw) = pw.as_mut() {
                    pw.write(&rec.key, &[p.to_bits()])?;
                }
                fwd.push(&rec.key, &[p.to_bits()])?;
            }
            drop(u);
            let _ = std::fs::remove_file(&u_path);
            if let Some(pw) = pw {
                pw.finish()?;
            }
            drop(lower);
            if let Some(p) = prev.take() {
                let _ = std::fs::remove_file(p);
            }
            prev = next_prev;
            let (mut m, st) = fwd.finish()?;
            report.runs += st.runs;
            let mut gam = match &gammas[n - 1] {
                Some(p) => Some(RecReader::open(p, n, 1)?),
                None => None,
            };
            let mut grec = Rec::new(n, 1);
            let mut have_g = match gam.as_mut() {
                Some(r) => r.next_into(&mut grec)?,
                None => false,
            };
            writeln!(out, "\n\\{n}-grams:")?;
            let mut rec = Rec::new(n, 1);
            while m.next_into(&mut rec)? {
                let mut b = 1.0;
                if let Some(r) = gam.as_mut() {
                    while have_g && grec.key < rec.key {
                        have_g = r.next_into(&mut grec)?;
                    }
                    if have_g && grec.key == rec.key {
                        b = f64::from_bits(grec.vals[0]);
                    }
                }
                write_line(out, &words, &rec.key, f64::from_bits(rec.vals[0]), b, n < order)?;
            }
        }
        writeln!(out, "\n\\end\\")?;
        report.counts = counts;
        report.discounts = discounts;
        Ok(report)
    }

    /// Estimate and write an ARPA file atomically.
    pub fn finish_arpa(self, path: &Path) -> Result<StreamReport> {
        let mut f = ferrolm_common::AtomicFile::create(path).with_context(|| format!("creating {}", path.display()))?;
        let r = self.finish_to(&mut f)?;
        f.commit().with_context(|| format!("writing {}", path.display()))?;
        Ok(r)
    }
}

/// Count-of-counts t1..t4 of adjusted counts (the `<s>` unigram excluded, as in memory).
fn tally(t: &mut [u64; 4], n: usize, key: &[u32], c: u64) {
    if n == 1 && key[0] == BOS_ID {
        return;
    }
    if (1..=4).contains(&c) {
        t[c as usize - 1] += 1;
    }
}

fn next_bos_initial(r: &mut RecReader, rec: &mut Rec) -> Result<bool> {
    while r.next_into(rec)? {
        if rec.key[0] == BOS_ID {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One ARPA line, formatted exactly as [`crate::Model::write_arpa_to`] formats it.
fn write_line<W: Write>(out: &mut W, words: &[String], g: &[u32], p: f64, b: f64, with_backoff: bool) -> Result<()> {
    let lp = if p <= 0.0 { LOG_ZERO } else { p.log10() };
    let mut first = true;
    write!(out, "{lp:.9}\t")?;
    for &i in g {
        if !first {
            out.write_all(b" ")?;
        }
        first = false;
        out.write_all(words[i as usize].as_bytes())?;
    }
    if with_backoff {
        writeln!(out, "\t{:.9}", b.log10())?;
    } else {
        writeln!(out)?;
    }
    Ok(())
}

/// Merge sorted runs into one stream, in several passes if there are more than the fan-in.
fn merge_runs(scratch: &Scratch, mut runs: Vec<PathBuf>, n: usize, v: usize, order: KeyOrder, report: &mut StreamReport) -> Result<Merged> {
    while runs.len() > MAX_FAN_IN {
        let mut next = Vec::new();
        for group in runs.chunks(MAX_FAN_IN) {
            let path = scratch.file("merge");
            let mut m = Merged::open(group, n, v, order, true)?;
            let mut w = RecWriter::create(&path)?;
            let mut rec = Rec::new(n, v);
            while m.next_into(&mut rec)? {
                w.write(&rec.key, &rec.vals)?;
            }
            w.finish()?;
            next.push(path);
            report.runs += 1;
        }
        runs = next;
    }
    Merged::open(&runs, n, v, order, true)
}

/// Stream the lines of text files through a [`StreamingEstimator`] into an ARPA file.
/// `on_read` is told the bytes of each line as it is counted (for a progress bar), and
/// `on_counted` is called once counting is done, before the estimation passes.
pub fn train_files_streaming(
    inputs: &[PathBuf],
    arpa: &Path,
    opts: &StreamOptions,
    mut on_read: impl FnMut(u64),
    on_counted: impl FnOnce(&StreamingEstimator),
) -> Result<StreamReport> {
    use std::io::BufRead;
    let mut est = StreamingEstimator::new(opts.clone())?;
    let mut line = String::new();
    for p in inputs {
        let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
        let mut r = std::io::BufReader::with_capacity(1 << 20, f);
        let mut ln = 0usize;
        loop {
            line.clear();
            ln += 1;
            let k = r.read_line(&mut line).with_context(|| format!("{}:{ln}: not valid UTF-8 or unreadable", p.display()))?;
            if k == 0 {
                break;
            }
            on_read(k as u64);
            est.add_line(&line).with_context(|| format!("{}:{ln}", p.display()))?;
        }
    }
    on_counted(&est);
    est.finish_arpa(arpa)
}

