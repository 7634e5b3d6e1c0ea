//! word2vec text/binary formats (as the C tool and gensim write them), nearest
//! neighbours and the questions-words analogy evaluation (3CosAdd, gensim's procedure).

use anyhow::{bail, Context, Result};
use ferrolm_common::AtomicFile;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

pub struct Vectors {
    pub words: Vec<String>,
    pub dim: usize,
    /// row-major, words.len() × dim
    pub data: Vec<f32>,
}

/// Write `words` (most frequent first) and their vectors; `binary` = the C tool's binary.
pub fn write_vectors(path: &Path, words: &[String], data: &[f32], dim: usize, binary: bool) -> Result<()> {
    let mut f = AtomicFile::create(path).with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{} {}", words.len(), dim)?;
    for (i, w) in words.iter().enumerate() {
        let row = &data[i * dim..(i + 1) * dim];
        if binary {
            write!(f, "{w} ")?;
            for x in row {
                f.write_all(&x.to_le_bytes())?;
            }
            f.write_all(b"\n")?;
        } else {
            write!(f, "{w}")?;
            for x in row {
                write!(f, " {x}")?;
            }
            f.write_all(b"\n")?;
        }
    }
    f.commit().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Read either format (binary detected by trying text first would be ambiguous, so the
/// caller says nothing: we sniff whether the first vector line is valid UTF-8 text numbers).
pub fn read_vectors(path: &Path) -> Result<Vectors> {
    let mut bytes = Vec::new();
    std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?.read_to_end(&mut bytes)?;
    let name = path.display().to_string();
    let nl = bytes.iter().position(|&b| b == b'\n').with_context(|| format!("{name}:1: missing header"))?;
    let header = std::str::from_utf8(&bytes[..nl]).with_context(|| format!("{name}:1: header not UTF-8"))?;
    let mut it = header.split_whitespace();
    let (n, dim): (usize, usize) = match (it.next().map(str::parse), it.next().map(str::parse)) {
        (Some(Ok(n)), Some(Ok(d))) => (n, d),
        _ => bail!("{name}:1: header must be `COUNT DIM`"),
    };
    let body = &bytes[nl + 1..];
    if dim == 0 {
        bail!("{name}:1: header announces {n} vectors of dimension 0");
    }
    // Cap what the header asks for by what the file can hold before allocating: a text row
    // takes at least two bytes a number (digit and separator), a binary one four.
    if n > body.len() || n.checked_mul(dim).is_none_or(|x| x > body.len()) {
        bail!("{name}:1: header announces {n} vectors of dimension {dim}, more than the file's {} bytes can hold (corrupt or truncated)", bytes.len());
    }
    // binary rows are exactly word + ' ' + 4·dim bytes (+ optional '\n')
    let first_sp = body.iter().position(|&b| b == b' ').unwrap_or(0);
    let looks_text = body.len() > first_sp && {
        let end = body.iter().position(|&b| b == b'\n').unwrap_or(body.len());
        std::str::from_utf8(&body[..end]).map(|l| l.split_whitespace().skip(1).all(|x| x.parse::<f32>().is_ok()) && l.split_whitespace().count() == dim + 1).unwrap_or(false)
    };
    let mut words = Vec::with_capacity(n);
    let mut data = Vec::with_capacity(n * dim);
    if looks_text {
        for (i, line) in BufReader::new(body).lines().enumerate() {
            let line = line.with_context(|| format!("{name}:{}: not UTF-8", i + 2))?;
            if line.trim().is_empty() { continue; }
            let mut f = line.split_whitespace();
            words.push(f.next().unwrap().to_string());
            let before = data.len();
            for x in f {
                data.push(x.parse::<f32>().with_context(|| format!("{name}:{}: bad number {x}", i + 2))?);
            }
            if data.len() - before != dim {
                bail!("{name}:{}: expected {dim} numbers, found {}", i + 2, data.len() - before);
            }
        }
    } else {
        let mut p = 0;
        for i in 0..n {
            while p < body.len() && (body[p] == b'\n' || body[p] == b' ') { p += 1; }
            let sp = body[p..].iter().position(|&b| b == b' ').with_context(|| format!("{name}: vector {i}: truncated"))?;
            words.push(String::from_utf8_lossy(&body[p..p + sp]).into_owned());
            p += sp + 1;
            if p + 4 * dim > body.len() {
                bail!("{name}: vector {i} ({}) truncated", words.last().unwrap());
            }
            data.extend(body[p..p + 4 * dim].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
            p += 4 * dim;
        }
    }
    if words.len() != n {
        bail!("{name}: header announces {n} vectors, found {}", words.len());
    }
    Ok(Vectors { words, dim, data })
}

impl Vectors {
    /// Unit-length copy of the first `limit` rows.
    pub fn normalized(&self, limit: usize) -> Vec<f32> {
        let n = self.words.len().min(limit);
        let mut out = self.data[..n * self.dim].to_vec();
        for r in out.chunks_exact_mut(self.dim) {
            let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            r.iter_mut().for_each(|x| *x /= norm);
        }
        out
    }

    /// Top-k cosine neighbours of `word`.
    pub fn similar(&self, word: &str, k: usize) -> Result<Vec<(String, f32)>> {
        let i = self.words.iter().position(|w| w == word).with_context(|| format!("`{word}` is not in the vocabulary"))?;
        let norm = self.normalized(usize::MAX);
        let q = &norm[i * self.dim..(i + 1) * self.dim];
        let mut s: Vec<(usize, f32)> = norm.chunks_exact(self.dim).enumerate().filter(|&(j, _)| j != i)
            .map(|(j, r)| (j, r.iter().zip(q).map(|(a, b)| a * b).sum())).collect();
        s.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        Ok(s.into_iter().take(k).map(|(j, c)| (self.words[j].clone(), c)).collect())
    }
}

#[derive(Debug, serde::Serialize)]
pub struct AnalogyReport {
    /// (section, correct, total)
    pub sections: Vec<(String, usize, usize)>,
    pub correct: usize,
    pub total: usize,
    pub skipped: usize,
    pub accuracy: f64,
}

/// questions-words.txt evaluation: `: section` headers, lines `a b c d`; predict d as the
/// nearest unit vector to b − a + c among the first `restrict` words, excluding a, b, c.
/// Questions with a word outside the restricted vocabulary are skipped (counted).
/// Matching is case-insensitive (words upper-cased on both sides, like gensim).
pub fn analogy(v: &Vectors, questions: &Path, restrict: usize) -> Result<AnalogyReport> {
    let text = std::fs::read_to_string(questions).with_context(|| format!("reading {}", questions.display()))?;
    let n = v.words.len().min(restrict);
    let norm = v.normalized(n);
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, w) in v.words[..n].iter().enumerate() {
        index.entry(w.to_uppercase()).or_insert(i);
    }
    let d = v.dim;
    let mut rep = AnalogyReport { sections: vec![], correct: 0, total: 0, skipped: 0, accuracy: 0.0 };
    let mut q = vec![0f32; d];
    for (ln, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() { continue; }
        if let Some(s) = line.strip_prefix(':') {
            rep.sections.push((s.trim().to_string(), 0, 0));
            continue;
        }
        let ws: Vec<&str> = line.split_whitespace().collect();
        if ws.len() != 4 {
            bail!("{}:{}: expected 4 words", questions.display(), ln + 1);
        }
        if rep.sections.is_empty() {
            rep.sections.push(("(none)".into(), 0, 0));
        }
        let ids: Option<Vec<usize>> = ws.iter().map(|w| index.get(&w.to_uppercase()).copied()).collect();
        let Some(ids) = ids else { rep.skipped += 1; continue };
        let row = |i: usize| &norm[i * d..(i + 1) * d];
        let (a, b, c) = (row(ids[0]), row(ids[1]), row(ids[2]));
        for (k, x) in q.iter_mut().enumerate() { *x = b[k] - a[k] + c[k]; }
        let mut best = (usize::MAX, f32::NEG_INFINITY);
        for (j, r) in norm.chunks_exact(d).enumerate() {
            if j == ids[0] || j == ids[1] || j == ids[2] { continue; }
            let s: f32 = r.iter().zip(&q).map(|(a, b)| a * b).sum();
            if s > best.1 { best = (j, s); }
        }
        let sec = rep.sections.last_mut().unwrap();
        sec.2 += 1;
        rep.total += 1;
        if best.0 == ids[3] {
            sec.1 += 1;
            rep.correct += 1;
        }
    }
    rep.accuracy = if rep.total > 0 { rep.correct as f64 / rep.total as f64 } else { 0.0 };
    Ok(rep)
}
