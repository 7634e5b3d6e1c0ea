//! A compact binary form of a back-off model for fast loading and querying, memory-mapped
//! (memmap2) so that opening costs no parsing. It follows KenLM's "probing" idea: every order
//! ≥ 2 is an open-addressing hash table keyed by a 64-bit hash of the n-gram, holding the
//! log10 probability and backoff as f32 (the n-gram's words are not stored; two n-grams of
//! one order with equal 64-bit hashes are detected when building and refused). Unigrams are an
//! array indexed by word id; words are found through a hash table over the stored strings.
//!
//! Layout (little-endian; every section starts at a multiple of 8):
//! ```text
//! header   magic "FLMKNBIN", version u32, order u32, vocab u64, blob bytes u64,
//!          vocab slots u64, unk u32, bos u32, eos u32, pad u32,
//!          then for n = 2..=order: count u64, slots u64
//! offsets  (vocab + 1) × u64      start of each word in the blob
//! blob     the words' UTF-8 bytes
//! vocab    slots × u32            word ids by string hash (u32::MAX = empty), linear probing
//! unigrams vocab × (f32 log10 p, f32 log10 backoff)
//! order n  slots × (u64 key, f32 log10 p, f32 log10 backoff), key 0 = empty, linear probing
//! ```
//! The n-gram key is built from the predicted word outwards (w, then the nearest context
//! word, …), so a query extends the hash by one word per order, as KenLM's does.

use crate::model::{Model, SentenceScore, BOS, EOS, UNK};
use anyhow::{bail, Context, Result};
use ferrolm_common::AtomicFile;
use std::io::{BufRead, Write};
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"FLMKNBIN";
pub const VERSION: u32 = 1;
const SEED: u64 = 0x5851_F42D_4C95_7F2D;
const EMPTY_ID: u32 = u32::MAX;
/// Highest order the binary form holds (the scorer keeps its state in fixed arrays).
pub const MAX_ORDER: usize = 64;

/// Extend an n-gram hash by one (older) word.
#[inline]
pub fn mix(h: u64, id: u32) -> u64 {
    // splitmix64's finaliser over the running hash combined with the id: a bijection of its
    // input, so distinct sequences collide only by 64-bit chance
    let mut z = (h ^ id as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let k = z ^ (z >> 31);
    if k == 0 { 1 } else { k }
}

/// Hash of an n-gram given oldest-first.
pub fn gram_key(g: &[u32]) -> u64 {
    g.iter().rev().fold(SEED, |h, &w| mix(h, w))
}

#[inline]
fn slot_of(hash: u64, slots: u64) -> u64 {
    ((hash as u128 * slots as u128) >> 64) as u64
}

fn slots_for(count: u64) -> u64 {
    (count + count / 2 + 1).max(2) // load factor 2/3
}

fn str_hash(s: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(s)
}

fn pad8<W: Write>(w: &mut W, len: u64) -> Result<u64> {
    let p = (8 - len % 8) % 8;
    w.write_all(&[0u8; 8][..p as usize])?;
    Ok(len + p)
}

/// Sizes that, with the header, fix every section's offset.
struct Dims {
    order: usize,
    vocab: u64,
    blob: u64,
    vslots: u64,
    /// (count, slots) for orders 2..=order
    tables: Vec<(u64, u64)>,
}

impl Dims {
    fn header_len(&self) -> u64 {
        8 + 4 + 4 + 8 + 8 + 8 + 16 + 16 * (self.order as u64 - 1)
    }
    /// (offsets, blob, vocab table, unigrams, [order tables]) byte offsets.
    fn layout(&self) -> (u64, u64, u64, u64, Vec<u64>) {
        self.checked_layout().expect("sizes of a model being written fit in u64")
    }
    /// [`Dims::layout`], or None when the sizes (read from a file's header) overflow.
    fn checked_layout(&self) -> Option<(u64, u64, u64, u64, Vec<u64>)> {
        let r8 = |x: u64| x.checked_add(7).map(|x| x / 8 * 8);
        let offs = self.header_len();
        let blob = offs.checked_add(self.vocab.checked_add(1)?.checked_mul(8)?)?;
        let vt = blob.checked_add(r8(self.blob)?)?;
        let uni = vt.checked_add(r8(self.vslots.checked_mul(4)?)?)?;
        let mut t = uni.checked_add(r8(self.vocab.checked_mul(8)?)?)?;
        let mut tables = Vec::new();
        for &(_, slots) in &self.tables {
            tables.push(t);
            t = t.checked_add(slots.checked_mul(16)?)?;
        }
        tables.push(t); // end of file
        Some((offs, blob, vt, uni, tables))
    }
}

/// What [`arpa_to_binary`] wrote.
#[derive(Clone, Debug)]
pub struct BinaryStats {
    pub counts: Vec<u64>,
    pub bytes: u64,
}

/// Convert an ARPA file to the binary form, reading it as a stream: memory holds the
/// vocabulary and one order's hash table at a time. The output is written atomically.
pub fn arpa_to_binary(arpa: &Path, out: &Path) -> Result<BinaryStats> {
    let f = std::fs::File::open(arpa).with_context(|| format!("opening {}", arpa.display()))?;
    let name = arpa.display().to_string();
    // Every n-gram the header announces takes a line of the file: counts above the file's
    // size are corrupt, and checking them first bounds every table allocated below.
    let file_len = f.metadata().with_context(|| format!("reading {name}"))?.len();
    let mut lines = std::io::BufReader::with_capacity(1 << 20, f).lines().enumerate();
    let mut next_line = |what: &str| -> Result<(usize, String)> {
        loop {
            match lines.next() {
                None => bail!("{name}: unexpected end of file while reading {what} (truncated file?)"),
                Some((i, l)) => {
                    let l = l.with_context(|| format!("{name}:{}: read error", i + 1))?;
                    if !l.trim().is_empty() {
                        return Ok((i + 1, l));
                    }
                }
            }
        }
    };
    // header
    loop {
        let (_, l) = next_line("the \\data\\ header")?;
        if l.trim() == "\\data\\" {
            break;
        }
    }
    let mut counts: Vec<u64> = Vec::new();
    let (mut ln, mut l) = next_line("the n-gram counts")?;
    while let Some(rest) = l.trim().strip_prefix("ngram ") {
        let (n, c) = rest.split_once('=').with_context(|| format!("{name}:{ln}: expected `ngram N=COUNT`"))?;
        let n: usize = n.trim().parse().with_context(|| format!("{name}:{ln}: bad order"))?;
        let c: u64 = c.trim().parse().with_context(|| format!("{name}:{ln}: bad count"))?;
        if n != counts.len() + 1 {
            bail!("{name}:{ln}: orders must be announced in sequence");
        }
        if n > MAX_ORDER {
            bail!("{name}:{ln}: order {n} is above the {MAX_ORDER} the binary form supports");
        }
        if c > file_len {
            bail!("{name}:{ln}: header announces {c} {n}-grams, more than the file's {file_len} bytes can hold (corrupt header?)");
        }
        counts.push(c);
        (ln, l) = next_line("the 1-grams section")?;
    }
    if counts.is_empty() {
        bail!("{name}:{ln}: no `ngram N=COUNT` lines after \\data\\");
    }
    let order = counts.len();
    let parse_entry = |ln: usize, l: &str, n: usize, ids: &mut Vec<u32>, lookup: &mut dyn FnMut(&str) -> Option<u32>| -> Result<(f32, f32)> {
        let mut it = l.split_whitespace();
        let p: f32 = it.next().unwrap().parse().with_context(|| format!("{name}:{ln}: bad log probability"))?;
        ids.clear();
        for _ in 0..n {
            let w = it.next().with_context(|| format!("{name}:{ln}: expected {n} words"))?;
            ids.push(lookup(w).with_context(|| format!("{name}:{ln}: word {w} has no unigram entry"))?);
        }
        let b: f32 = match it.next() {
            Some(s) => s.parse().with_context(|| format!("{name}:{ln}: bad backoff"))?,
            None => 0.0,
        };
        if it.next().is_some() {
            bail!("{name}:{ln}: trailing fields");
        }
        Ok((p, b))
    };
    // 1-grams: the vocabulary
    if l.trim() != "\\1-grams:" {
        bail!("{name}:{ln}: expected \\1-grams:, found `{}`", l.trim());
    }
    // counts[0] <= the file's size (checked above)
    let mut words: Vec<String> = Vec::with_capacity(counts[0] as usize);
    let mut index: std::collections::HashMap<String, u32> = std::collections::HashMap::with_capacity(counts[0] as usize);
    let mut uni: Vec<(f32, f32)> = Vec::with_capacity(counts[0] as usize);
    let mut ids = Vec::new();
    for _ in 0..counts[0] {
        let (ln, l) = next_line("1-grams")?;
        let w = l.split_whitespace().nth(1).with_context(|| format!("{name}:{ln}: expected `log10p word [backoff]`"))?.to_string();
        if index.contains_key(&w) {
            bail!("{name}:{ln}: unigram {w} listed twice");
        }
        let id = words.len() as u32;
        index.insert(w.clone(), id);
        words.push(w);
        uni.push(parse_entry(ln, &l, 1, &mut ids, &mut |s| index.get(s).copied())?);
    }
    if !index.contains_key(UNK) {
        // as in Model::read_arpa: OOVs of a model without <unk> score -100
        index.insert(UNK.into(), words.len() as u32);
        words.push(UNK.into());
        uni.push((-100.0, 0.0));
    }
    let vocab = words.len() as u64;
    let blob: u64 = words.iter().map(|w| w.len() as u64).sum();
    let vslots = slots_for(vocab);
    let dims = Dims { order, vocab, blob, vslots, tables: counts[1..].iter().map(|&c| (c, slots_for(c))).collect() };
    let mut f = AtomicFile::create(out).with_context(|| format!("creating {}", out.display()))?;
    // header
    f.write_all(MAGIC)?;
    f.write_all(&VERSION.to_le_bytes())?;
    f.write_all(&(order as u32).to_le_bytes())?;
    for x in [vocab, blob, vslots] {
        f.write_all(&x.to_le_bytes())?;
    }
    for x in [index[UNK], index.get(BOS).copied().unwrap_or(EMPTY_ID), index.get(EOS).copied().unwrap_or(EMPTY_ID), 0] {
        f.write_all(&x.to_le_bytes())?;
    }
    for &(c, s) in &dims.tables {
        f.write_all(&c.to_le_bytes())?;
        f.write_all(&s.to_le_bytes())?;
    }
    // vocabulary
    let mut off = 0u64;
    for w in &words {
        f.write_all(&off.to_le_bytes())?;
        off += w.len() as u64;
    }
    f.write_all(&off.to_le_bytes())?;
    for w in &words {
        f.write_all(w.as_bytes())?;
    }
    pad8(&mut f, blob)?;
    let mut vt = vec![EMPTY_ID; vslots as usize];
    for (i, w) in words.iter().enumerate() {
        let mut s = slot_of(str_hash(w.as_bytes()), vslots) as usize;
        while vt[s] != EMPTY_ID {
            s = (s + 1) % vt.len();
        }
        vt[s] = i as u32;
    }
    for x in &vt {
        f.write_all(&x.to_le_bytes())?;
    }
    pad8(&mut f, 4 * vslots)?;
    drop(vt);
    for &(p, b) in &uni {
        f.write_all(&p.to_le_bytes())?;
        f.write_all(&b.to_le_bytes())?;
    }
    pad8(&mut f, 8 * vocab)?;
    // orders 2..=N, one table in memory at a time
    for n in 2..=order {
        let (ln, l) = next_line(&format!("the {n}-grams section"))?;
        if l.trim() != format!("\\{n}-grams:") {
            bail!("{name}:{ln}: expected \\{n}-grams:, found `{}`", l.trim());
        }
        let (count, slots) = dims.tables[n - 2];
        let mut table: Vec<(u64, f32, f32)> = vec![(0, 0.0, 0.0); slots as usize];
        for _ in 0..count {
            let (ln, l) = next_line(&format!("{n}-grams"))?;
            let (p, b) = parse_entry(ln, &l, n, &mut ids, &mut |s| index.get(s).copied())?;
            let key = gram_key(&ids);
            let mut s = slot_of(key, slots) as usize;
            while table[s].0 != 0 {
                if table[s].0 == key {
                    bail!("{name}:{ln}: {n}-gram `{}` is listed twice or collides with another {n}-gram's 64-bit hash", l.split_whitespace().skip(1).take(n).collect::<Vec<_>>().join(" "));
                }
                s = (s + 1) % table.len();
            }
            table[s] = (key, p, b);
        }
        for &(k, p, b) in &table {
            f.write_all(&k.to_le_bytes())?;
            f.write_all(&p.to_le_bytes())?;
            f.write_all(&b.to_le_bytes())?;
        }
    }
    let (ln, l) = next_line("\\end\\")?;
    if l.trim() != "\\end\\" {
        bail!("{name}:{ln}: expected \\end\\ after {} {order}-grams (header count wrong?), found `{}`", counts[order - 1], l.trim());
    }
    f.commit().with_context(|| format!("writing {}", out.display()))?;
    let bytes = *dims.layout().4.last().unwrap();
    Ok(BinaryStats { counts, bytes })
}

/// A memory-mapped binary model.
pub struct BinaryModel {
    map: memmap2::Mmap,
    order: usize,
    vocab: u64,
    vslots: u64,
    unk: u32,
    bos: u32,
    eos: u32,
    offs: usize,
    blob: usize,
    vt: usize,
    uni: usize,
    /// (byte offset, slots) per order 2..=N
    tables: Vec<(usize, u64)>,
}

fn rd_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn rd_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn rd_f32(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// True when the file starts with the binary magic.
pub fn is_binary(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut m = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        let k = f.read(&mut m[got..]).with_context(|| format!("reading {}", path.display()))?;
        if k == 0 {
            return Ok(false);
        }
        got += k;
    }
    Ok(&m == MAGIC)
}

impl BinaryModel {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // The file is only read; like every mmap reader we rely on nobody truncating it
        // while it is open (ferrolm writes models atomically, by rename, never in place).
        let map = ferrolm_kernels::mmap::map_immutable(&file).with_context(|| format!("memory-mapping {}", path.display()))?;
        let name = path.display();
        let b = &map[..];
        if b.len() < 64 || &b[..8] != MAGIC {
            bail!("{name}: not a ferrolm binary n-gram model (bad magic)");
        }
        let version = rd_u32(b, 8);
        if version != VERSION {
            bail!("{name}: binary model version {version}, this build reads version {VERSION}");
        }
        let order = rd_u32(b, 12) as usize;
        if order == 0 || order > MAX_ORDER {
            bail!("{name}: implausible order {order} (corrupt header)");
        }
        let (vocab, blob, vslots) = (rd_u64(b, 16), rd_u64(b, 24), rd_u64(b, 32));
        let (unk, bos, eos) = (rd_u32(b, 40), rd_u32(b, 44), rd_u32(b, 48));
        let need_header = 56 + 16 * (order - 1);
        if b.len() < need_header {
            bail!("{name}: truncated header");
        }
        let tables: Vec<(u64, u64)> = (0..order - 1).map(|i| (rd_u64(b, 56 + 16 * i), rd_u64(b, 64 + 16 * i))).collect();
        let dims = Dims { order, vocab, blob, vslots, tables: tables.clone() };
        let Some((offs, blob_at, vt, uni, starts)) = dims.checked_layout() else {
            bail!("{name}: corrupt header (section sizes overflow)");
        };
        let end = *starts.last().unwrap();
        if end != b.len() as u64 {
            bail!("{name}: file is {} bytes but its header describes {end} (truncated or corrupt)", b.len());
        }
        // Every id must fit below EMPTY_ID, each hash table needs an empty slot, and <s>/</s>
        // are ids of the vocabulary or absent (EMPTY_ID, as the writer marks them).
        let id_ok = |id: u32| (id as u64) < vocab || id == EMPTY_ID;
        if vocab >= EMPTY_ID as u64 || unk as u64 >= vocab || vslots <= vocab || !id_ok(bos) || !id_ok(eos) || tables.iter().any(|&(c, s)| s <= c) {
            bail!("{name}: corrupt header (vocabulary {vocab}, {vslots} vocabulary slots, ids unk {unk} bos {bos} eos {eos}, tables {tables:?})");
        }
        // The word offsets must rise within the blob, and the vocabulary table hold ids: both
        // are read without further checks when scoring. O(vocabulary), far less than parsing.
        let (offs, blob_at, vt) = (offs as usize, blob_at as usize, vt as usize);
        let mut prev = 0u64;
        for i in 0..=vocab as usize {
            let o = rd_u64(b, offs + 8 * i);
            if o < prev || o > blob || (i == 0 && o != 0) {
                bail!("{name}: corrupt vocabulary (offset of word {i} is {o}, after {prev}, blob of {blob} bytes)");
            }
            prev = o;
        }
        for s in 0..vslots as usize {
            let id = rd_u32(b, vt + 4 * s);
            if id != EMPTY_ID && id as u64 >= vocab {
                bail!("{name}: corrupt vocabulary table (slot {s} holds id {id}, vocabulary of {vocab})");
            }
        }
        Ok(Self {
            order,
            vocab,
            vslots,
            unk,
            bos,
            eos,
            offs,
            blob: blob_at,
            vt,
            uni: uni as usize,
            tables: starts[..order - 1].iter().zip(&tables).map(|(&o, &(_, s))| (o as usize, s)).collect(),
            map,
        })
    }

    pub fn order(&self) -> usize {
        self.order
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab as usize
    }

    /// The word of an id ("" for an id outside the vocabulary).
    pub fn word(&self, id: u32) -> &str {
        if id as u64 >= self.vocab {
            return "";
        }
        let b = &self.map[..];
        let s = rd_u64(b, self.offs + 8 * id as usize) as usize;
        let e = rd_u64(b, self.offs + 8 * (id as usize + 1)) as usize;
        std::str::from_utf8(&b[self.blob + s..self.blob + e]).unwrap_or("")
    }

    /// Word id, `<unk>`'s for a word not in the vocabulary.
    pub fn id(&self, word: &str) -> u32 {
        let b = &self.map[..];
        let mut s = slot_of(str_hash(word.as_bytes()), self.vslots);
        // At most one pass over the table: a corrupt file may have no empty slot.
        for _ in 0..self.vslots {
            let id = rd_u32(b, self.vt + 4 * s as usize);
            if id == EMPTY_ID {
                return self.unk;
            }
            let ws = rd_u64(b, self.offs + 8 * id as usize) as usize;
            let we = rd_u64(b, self.offs + 8 * (id as usize + 1)) as usize;
            if &b[self.blob + ws..self.blob + we] == word.as_bytes() {
                return id;
            }
            s += 1;
            if s == self.vslots {
                s = 0;
            }
        }
        self.unk
    }

    /// (log10 p, log10 backoff) of a word; an id outside the vocabulary (an absent `<s>` or
    /// `</s>`) has no backoff and `<unk>`'s probability.
    #[inline]
    fn unigram(&self, id: u32) -> (f32, f32) {
        if id as u64 >= self.vocab {
            return (self.unigram(self.unk).0, 0.0);
        }
        let at = self.uni + 8 * id as usize;
        (rd_f32(&self.map, at), rd_f32(&self.map, at + 4))
    }

    #[inline]
    fn find(&self, n: usize, key: u64) -> Option<(f32, f32)> {
        let (at, slots) = self.tables[n - 2];
        let b = &self.map[..];
        let mut s = slot_of(key, slots);
        // At most one pass: a corrupt table may have no empty slot to stop at.
        for _ in 0..slots {
            let e = at + 16 * s as usize;
            let k = rd_u64(b, e);
            if k == key {
                return Some((rd_f32(b, e + 8), rd_f32(b, e + 12)));
            }
            if k == 0 {
                return None;
            }
            s += 1;
            if s == slots {
                s = 0;
            }
        }
        None
    }

    /// log10 p(w | context), context oldest-first (at most order−1 words are used); the same
    /// back-off walk as [`Model::log10_prob`].
    pub fn log10_prob(&self, context: &[u32], w: u32) -> f64 {
        self.log10_prob_len(context, w).0
    }

    /// [`BinaryModel::log10_prob`] and the length of the longest n-gram matched.
    pub fn log10_prob_len(&self, context: &[u32], w: u32) -> (f64, usize) {
        let w = if (w as u64) < self.vocab { w } else { self.unk };
        let n_max = self.order.min(context.len() + 1);
        let len = context.len();
        let mut lp = self.unigram(w).0 as f64;
        let mut matched = 1;
        let mut h = mix(SEED, w);
        for n in 2..=n_max {
            h = mix(h, context[len + 1 - n]);
            match self.find(n, h) {
                Some((p, _)) => {
                    lp = p as f64;
                    matched = n;
                }
                None => break,
            }
        }
        // backoffs of the contexts longer than the matched n-gram's context
        let mut hc = SEED;
        for n in 1..n_max {
            let c = context[len - n];
            hc = mix(hc, c);
            if n < matched {
                continue;
            }
            if n == 1 {
                lp += self.unigram(c).1 as f64;
            } else if let Some((_, b)) = self.find(n, hc) {
                lp += b as f64;
            }
        }
        (lp, matched)
    }

    /// Score `<s> ids </s>` left to right, calling `f(word, n-gram length matched, log10 p)`
    /// for every token after `<s>`. Same values as [`BinaryModel::log10_prob_len`] on each
    /// token's context, but with KenLM's state: the walk for one word finds the n-grams ending
    /// at it, whose backoffs are exactly the context backoffs the next word needs, so they are
    /// kept instead of looked up again; and a context longer than the previous word's match
    /// does not exist (every n-gram's suffixes exist in a Kneser-Ney model, ARPA or KenLM's),
    /// so neither it nor any n-gram extending it is probed. perf on `ngram query`: 47 % of
    /// the time was `find`, nearly all of it cache misses on probes for n-grams that were
    /// then absent or had just been found for the previous word.
    pub fn score_seq(&self, ids: impl IntoIterator<Item = u32>, mut f: impl FnMut(u32, usize, f64)) {
        const MAX: usize = MAX_ORDER; // checked when opening
        // backoffs of the n-grams ending at the previous word, by length (1-based); the
        // context has `ctx_len` words, the last of them at the end of `hist`
        let mut bo = [0f32; MAX];
        let mut hist = [0u32; MAX];
        let keep = self.order - 1;
        let mut ctx_len = keep.min(1);
        hist[0] = self.bos;
        bo[1] = self.unigram(self.bos).1;
        for raw in ids.into_iter().chain(std::iter::once(self.eos)) {
            let w = if (raw as u64) < self.vocab { raw } else { self.unk };
            let (p1, b1) = self.unigram(w);
            let mut lp = p1 as f64;
            let mut matched = 1;
            let mut next_bo = [0f32; MAX];
            next_bo[1] = b1;
            let mut h = mix(SEED, w);
            // hist holds the context oldest-first in hist[..ctx_len]
            for n in 2..=(ctx_len + 1).min(self.order) {
                h = mix(h, hist[ctx_len + 1 - n]);
                match self.find(n, h) {
                    Some((p, b)) => {
                        lp = p as f64;
                        matched = n;
                        next_bo[n] = b;
                    }
                    None => break,
                }
            }
            for &b in &bo[matched..=ctx_len] {
                lp += b as f64;
            }
            f(w, matched, lp);
            // the next context: the last min(matched, order − 1) words, oldest first
            let new_len = matched.min(keep);
            if keep > 0 {
                if new_len == ctx_len + 1 {
                    hist[ctx_len] = w;
                } else {
                    hist.copy_within(ctx_len + 1 - new_len..ctx_len, 0);
                    hist[new_len - 1] = w;
                }
            }
            ctx_len = new_len;
            bo = next_bo;
        }
    }

    pub fn score_ids(&self, ids: &[u32]) -> SentenceScore {
        let mut total = 0.0;
        self.score_seq(ids.iter().copied(), |_, _, lp| total += lp);
        let oovs = ids.iter().filter(|&&i| i == self.unk).count() + usize::from(self.eos == self.unk);
        SentenceScore { log10_prob: total, tokens: ids.len() + 1, oovs }
    }

    pub fn score_sentence(&self, text: &str) -> SentenceScore {
        let ids: Vec<u32> = text.split_whitespace().map(|w| self.id(w)).collect();
        self.score_ids(&ids)
    }
}

/// An n-gram model loaded from either an ARPA file or the binary form (sniffed by magic).
pub enum AnyModel {
    Arpa(Model),
    Binary(BinaryModel),
}

impl AnyModel {
    pub fn open(path: &Path) -> Result<Self> {
        if is_binary(path)? {
            Ok(AnyModel::Binary(BinaryModel::open(path)?))
        } else {
            Ok(AnyModel::Arpa(Model::read_arpa(path)?))
        }
    }

    pub fn order(&self) -> usize {
        match self {
            AnyModel::Arpa(m) => m.order(),
            AnyModel::Binary(m) => m.order(),
        }
    }

    pub fn score_sentence(&self, text: &str) -> SentenceScore {
        match self {
            AnyModel::Arpa(m) => m.score_sentence(text),
            AnyModel::Binary(m) => m.score_sentence(text),
        }
    }

    /// Per token of `<s> text </s>` after `<s>`: (word id, n-gram length matched, log10 p),
    /// as KenLM's `query` prints them.
    pub fn score_words(&self, text: &str) -> Vec<(u32, usize, f64)> {
        let mut out = Vec::new();
        self.score_words_into(text, &mut out);
        out
    }

    /// [`AnyModel::score_words`] into a caller's buffer (cleared first), so a loop over
    /// lines allocates nothing per line.
    pub fn score_words_into(&self, text: &str, out: &mut Vec<(u32, usize, f64)>) {
        out.clear();
        if let AnyModel::Binary(m) = self {
            m.score_seq(text.split_whitespace().map(|w| m.id(w)), |w, n, lp| out.push((w, n, lp)));
            return;
        }
        let (order, bos, eos) = match self {
            AnyModel::Arpa(m) => (m.order(), m.id(BOS), m.id(EOS)),
            AnyModel::Binary(m) => (m.order(), m.bos, m.eos),
        };
        let mut seq = vec![bos];
        seq.extend(text.split_whitespace().map(|w| self.id(w)));
        seq.push(eos);
        out.extend((1..seq.len()).map(|i| {
            let ctx = &seq[i.saturating_sub(order - 1)..i];
            let (lp, n) = match self {
                AnyModel::Arpa(m) => m.log10_prob_len(ctx, seq[i]),
                AnyModel::Binary(m) => m.log10_prob_len(ctx, seq[i]),
            };
            (seq[i], n, lp)
        }));
    }

    pub fn id(&self, word: &str) -> u32 {
        match self {
            AnyModel::Arpa(m) => m.id(word),
            AnyModel::Binary(m) => m.id(word),
        }
    }

    pub fn unk(&self) -> u32 {
        self.id(UNK)
    }

    /// Perplexity of a document, one sentence per line, counted as [`Model::score_document`].
    pub fn score_document(&self, text: &str) -> f64 {
        crate::model::document_perplexity(text, |line| self.score_sentence(line))
    }
}
