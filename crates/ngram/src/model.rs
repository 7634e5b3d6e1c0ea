//! The back-off model as ARPA holds it: per order, n-gram → (log10 p, log10 backoff);
//! ARPA write/read; KenLM-compatible scoring (longest match plus the backoffs of the
//! longer contexts that were not matched).

use crate::estimate::Discounts;
use anyhow::{bail, Context, Result};
use ferrolm_common::AtomicFile;
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::Path;

pub const UNK: &str = "<unk>";
pub const BOS: &str = "<s>";
pub const EOS: &str = "</s>";

/// log10 probability KenLM writes for `<s>` (it can never be predicted).
const LOG_ZERO: f64 = -99.0;

pub struct Model {
    pub words: Vec<String>,
    pub index: HashMap<String, u32>,
    /// grams[n-1]: n-gram ids → (log10 p, log10 backoff)
    pub grams: Vec<HashMap<Vec<u32>, (f64, f64)>>,
    /// Discounts used at estimation time (empty for a model read from ARPA).
    pub discounts: Vec<Discounts>,
    unk: u32,
    bos: u32,
    eos: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SentenceScore {
    /// Sum of log10 probabilities of every word and of `</s>`.
    pub log10_prob: f64,
    /// Tokens scored (words + 1 for `</s>`).
    pub tokens: usize,
    pub oovs: usize,
}

impl Model {
    pub(crate) fn from_parts(words: Vec<String>, probs: Vec<HashMap<Vec<u32>, (f64, f64)>>, discounts: Vec<Discounts>) -> Self {
        let grams = probs
            .into_iter()
            .map(|m| {
                m.into_iter()
                    .map(|(g, (p, b))| {
                        let lp = if p <= 0.0 { LOG_ZERO } else { p.log10() };
                        (g, (lp, b.log10()))
                    })
                    .collect()
            })
            .collect();
        Self::with_vocab(words, grams, discounts)
    }

    fn with_vocab(words: Vec<String>, grams: Vec<HashMap<Vec<u32>, (f64, f64)>>, discounts: Vec<Discounts>) -> Self {
        let index: HashMap<String, u32> = words.iter().enumerate().map(|(i, w)| (w.clone(), i as u32)).collect();
        let unk = index.get(UNK).copied().unwrap_or(u32::MAX);
        let bos = index.get(BOS).copied().unwrap_or(u32::MAX);
        let eos = index.get(EOS).copied().unwrap_or(u32::MAX);
        Self { words, index, grams, discounts, unk, bos, eos }
    }

    pub fn order(&self) -> usize {
        self.grams.len()
    }

    pub fn id(&self, word: &str) -> u32 {
        self.index.get(word).copied().unwrap_or(self.unk)
    }

    /// log10 p(w | context) where `context` is oldest-first; uses at most order-1 words.
    pub fn log10_prob(&self, context: &[u32], w: u32) -> f64 {
        self.log10_prob_len(context, w).0
    }

    /// [`Model::log10_prob`] and the length of the longest n-gram matched (KenLM's `ngram_length`).
    pub fn log10_prob_len(&self, context: &[u32], w: u32) -> (f64, usize) {
        let n_max = self.order().min(context.len() + 1);
        let mut key: Vec<u32> = Vec::with_capacity(n_max);
        // find the longest n-gram (suffix of context)+w in the model
        let mut matched = 0usize;
        let mut lp = 0.0;
        for n in 1..=n_max {
            key.clear();
            key.extend_from_slice(&context[context.len() + 1 - n..]);
            key.push(w);
            match self.grams[n - 1].get(&key) {
                Some(&(p, _)) => {
                    matched = n;
                    lp = p;
                }
                None => break,
            }
        }
        if matched == 0 {
            // not even a unigram: score as <unk>
            lp = self.grams[0].get(&vec![self.unk]).map(|e| e.0).unwrap_or(LOG_ZERO);
            matched = 1;
        }
        // add backoffs of the contexts longer than the matched one's context
        for n in matched..n_max {
            let h = &context[context.len() - n..];
            if let Some(&(_, b)) = self.grams[n - 1].get(h) {
                lp += b;
            }
        }
        (lp, matched)
    }

    /// Score one whitespace-tokenised sentence with `<s>` … `</s>`, as KenLM's query does.
    pub fn score_sentence(&self, text: &str) -> SentenceScore {
        let ids: Vec<u32> = text.split_whitespace().map(|w| self.id(w)).collect();
        self.score_ids(&ids)
    }

    /// Score a sentence given as model ids (words already mapped; `<unk>` for OOV).
    pub fn score_ids(&self, ids: &[u32]) -> SentenceScore {
        let keep = self.order().saturating_sub(1);
        let mut ctx: Vec<u32> = vec![self.bos];
        let mut total = 0.0;
        let mut oovs = 0;
        for &w in ids.iter().chain(std::iter::once(&self.eos)) {
            if w == self.unk {
                oovs += 1;
            }
            total += self.log10_prob(&ctx, w);
            ctx.push(w);
            if ctx.len() > keep {
                ctx.drain(..ctx.len() - keep);
            }
        }
        SentenceScore { log10_prob: total, tokens: ids.len() + 1, oovs }
    }

    /// Perplexity of a document (one sentence per line), KenLM-style: 10^(−Σlog10p / N)
    /// where N counts every word plus one `</s>` per line, OOVs included. This is the
    /// quality-filter API for the corpus pipeline (as CCNet uses KenLM).
    pub fn score_document(&self, text: &str) -> f64 {
        document_perplexity(text, |line| self.score_sentence(line))
    }

    /// Bits per byte of text given its byte count (for comparing with byte-level models).
    pub fn bits_per_byte(total_log10_prob: f64, bytes: usize) -> f64 {
        -total_log10_prob * std::f64::consts::LOG2_10 / bytes as f64
    }

    /// Write the model in ARPA format (atomically).
    pub fn write_arpa(&self, path: &Path) -> Result<()> {
        let mut f = AtomicFile::create(path).with_context(|| format!("creating {}", path.display()))?;
        self.write_arpa_to(&mut f)?;
        f.commit().with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    pub fn write_arpa_to<W: Write>(&self, out: &mut W) -> Result<()> {
        writeln!(out, "\n\\data\\")?;
        for (n, m) in self.grams.iter().enumerate() {
            writeln!(out, "ngram {}={}", n + 1, m.len())?;
        }
        let top = self.order();
        for (n, m) in self.grams.iter().enumerate() {
            writeln!(out, "\n\\{}-grams:", n + 1)?;
            let mut entries: Vec<(&Vec<u32>, &(f64, f64))> = m.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (g, &(p, b)) in entries {
                let text: Vec<&str> = g.iter().map(|&i| self.words[i as usize].as_str()).collect();
                if n + 1 < top {
                    writeln!(out, "{:.9}\t{}\t{:.9}", p, text.join(" "), b)?;
                } else {
                    writeln!(out, "{:.9}\t{}", p, text.join(" "))?;
                }
            }
        }
        writeln!(out, "\n\\end\\")?;
        Ok(())
    }

    /// Read an ARPA file (as written by KenLM, SRILM or ferrolm).
    pub fn read_arpa(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Self::read_arpa_from(std::io::BufReader::new(f), &path.display().to_string())
    }

    pub fn read_arpa_from<R: BufRead>(r: R, name: &str) -> Result<Self> {
        let mut counts: Vec<usize> = Vec::new();
        let mut grams: Vec<HashMap<Vec<u32>, (f64, f64)>> = Vec::new();
        let mut words: Vec<String> = Vec::new();
        let mut index: HashMap<String, u32> = HashMap::new();
        #[derive(PartialEq)]
        enum St { Pre, Data, Grams(usize), End }
        let mut st = St::Pre;
        for (ln, line) in r.lines().enumerate() {
            let line = line.with_context(|| format!("{name}:{}: read error", ln + 1))?;
            let t = line.trim();
            if t.is_empty() {
                continue;
            }
            if t == "\\data\\" {
                st = St::Data;
                continue;
            }
            if t == "\\end\\" {
                st = St::End;
                break;
            }
            if let Some(rest) = t.strip_prefix('\\').and_then(|s| s.strip_suffix("-grams:")) {
                let n: usize = rest.parse().with_context(|| format!("{name}:{}: bad section header {t}", ln + 1))?;
                if n == 0 || n > counts.len() {
                    bail!("{name}:{}: section {n}-grams not announced in \\data\\", ln + 1);
                }
                while grams.len() < n {
                    // The count is the header's claim: a capacity hint, capped so a hostile
                    // header cannot make us allocate what the file does not hold.
                    grams.push(HashMap::with_capacity(counts[grams.len()].min(1 << 16)));
                }
                st = St::Grams(n);
                continue;
            }
            match st {
                St::Pre => {}
                St::Data => {
                    let rest = t.strip_prefix("ngram ").with_context(|| format!("{name}:{}: expected `ngram N=COUNT`", ln + 1))?;
                    let (n, c) = rest.split_once('=').with_context(|| format!("{name}:{}: expected `ngram N=COUNT`", ln + 1))?;
                    let n: usize = n.trim().parse().with_context(|| format!("{name}:{}: bad order", ln + 1))?;
                    let c: usize = c.trim().parse().with_context(|| format!("{name}:{}: bad count", ln + 1))?;
                    if n != counts.len() + 1 {
                        bail!("{name}:{}: orders must be announced in sequence", ln + 1);
                    }
                    counts.push(c);
                }
                St::Grams(n) => {
                    let mut it = t.split_whitespace();
                    let p: f64 = it.next().unwrap().parse().with_context(|| format!("{name}:{}: bad log probability", ln + 1))?;
                    let mut g = Vec::with_capacity(n);
                    for _ in 0..n {
                        let w = it.next().with_context(|| format!("{name}:{}: expected {n} words", ln + 1))?;
                        let id = match index.get(w) {
                            Some(&i) => i,
                            None => {
                                if n > 1 {
                                    bail!("{name}:{}: word {w} has no unigram entry", ln + 1);
                                }
                                let i = words.len() as u32;
                                words.push(w.to_string());
                                index.insert(w.to_string(), i);
                                i
                            }
                        };
                        g.push(id);
                    }
                    let b: f64 = match it.next() {
                        Some(s) => s.parse().with_context(|| format!("{name}:{}: bad backoff", ln + 1))?,
                        None => 0.0,
                    };
                    if it.next().is_some() {
                        bail!("{name}:{}: trailing fields", ln + 1);
                    }
                    grams[n - 1].insert(g, (p, b));
                }
                St::End => unreachable!(),
            }
        }
        if st != St::End {
            bail!("{name}: missing \\end\\ (truncated file?)");
        }
        if counts.is_empty() {
            bail!("{name}: no \\data\\ section with `ngram N=COUNT` lines before \\end\\ (not an ARPA file?)");
        }
        for (n, (&c, m)) in counts.iter().zip(&grams).enumerate() {
            if c != m.len() {
                bail!("{name}: header announces {c} {}-grams but the section holds {}", n + 1, m.len());
            }
        }
        if grams.len() != counts.len() {
            bail!("{name}: header announces {} orders but only {} sections found", counts.len(), grams.len());
        }
        if !index.contains_key(UNK) {
            // SRILM models may lack <unk>; KenLM then scores OOVs at -100. Keep that.
            let i = words.len() as u32;
            words.push(UNK.into());
            index.insert(UNK.into(), i);
            grams[0].insert(vec![i], (-100.0, 0.0));
        }
        Ok(Self::with_vocab(words, grams, Vec::new()))
    }
}

/// KenLM's document perplexity, 10^(−Σlog10p / N) over the lines' sentence scores (N counts
/// every word plus one `</s>` per line, OOVs included); NaN for a document without tokens.
/// Shared by the in-memory and the binary model.
pub(crate) fn document_perplexity(text: &str, score_sentence: impl Fn(&str) -> SentenceScore) -> f64 {
    let (mut lp, mut n) = (0.0, 0usize);
    for line in text.lines() {
        let s = score_sentence(line);
        lp += s.log10_prob;
        n += s.tokens;
    }
    if n == 0 {
        return f64::NAN;
    }
    10f64.powf(-lp / n as f64)
}

