//! A fastText-style linear text classifier for quality filtering: hashed word uni/bi-grams and
//! character 3-5-grams of words (fastText's subwords), averaged into one sparse vector, logistic
//! regression trained by SGD with a linearly decaying learning rate (fastText's schedule).
//! Trained on a user's "high quality" vs "low quality" sets; scores are P(high).

use crate::step::{Step, Verdict};
use crate::{io_err, CorpusError, Document, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClassifierConfig {
    /// 2^bits hash buckets.
    pub bits: u32,
    pub word_ngrams: usize,
    pub min_char_ngram: usize,
    pub max_char_ngram: usize,
    pub epochs: usize,
    pub lr: f32,
    pub seed: u64,
    /// Fraction held out to report accuracy.
    pub validation: f64,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        Self { bits: 20, word_ngrams: 2, min_char_ngram: 3, max_char_ngram: 5, epochs: 5, lr: 0.5, seed: 1, validation: 0.1 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QualityModel {
    pub cfg: ClassifierConfig,
    pub bias: f32,
    #[serde(skip)]
    pub weights: Vec<f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    pub train_docs: usize,
    pub validation_docs: usize,
    pub train_accuracy: f64,
    pub validation_accuracy: f64,
    pub validation_log_loss: f64,
}

fn h(s: &[u8], salt: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(s, salt)
}

/// Hashed feature ids of a text (duplicates kept: they weigh as counts).
pub fn features(text: &str, cfg: &ClassifierConfig) -> Vec<u32> {
    let mask = (1u64 << cfg.bits) - 1;
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    let mut f = Vec::with_capacity(words.len() * 6);
    let wh: Vec<u64> = words.iter().map(|w| h(w.as_bytes(), 1)).collect();
    for n in 1..=cfg.word_ngrams {
        for win in wh.windows(n) {
            let g = win.iter().fold(n as u64, |a, &b| (a.rotate_left(21) ^ b).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            f.push((g & mask) as u32);
        }
    }
    if cfg.max_char_ngram > 0 {
        let mut buf = Vec::new();
        for w in &words {
            buf.clear();
            buf.push(b'<');
            buf.extend_from_slice(w.as_bytes());
            buf.push(b'>');
            let chars: Vec<usize> = std::str::from_utf8(&buf).unwrap().char_indices().map(|(i, _)| i).chain([buf.len()]).collect();
            for n in cfg.min_char_ngram..=cfg.max_char_ngram {
                for i in 0..chars.len().saturating_sub(n) {
                    f.push((h(&buf[chars[i]..chars[i + n]], 2) & mask) as u32);
                }
            }
        }
    }
    f
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

impl QualityModel {
    pub fn score(&self, text: &str) -> f32 {
        let f = features(text, &self.cfg);
        if f.is_empty() {
            return sigmoid(self.bias);
        }
        let s: f32 = f.iter().map(|&i| self.weights[i as usize]).sum::<f32>() / f.len() as f32;
        sigmoid(s + self.bias)
    }

    /// Train on texts labelled high (1) or low (0) quality.
    pub fn train(high: &[String], low: &[String], cfg: &ClassifierConfig) -> Result<(Self, TrainReport)> {
        if high.is_empty() || low.is_empty() {
            return Err(CorpusError::Config("quality classifier needs documents in both the high and the low set".into()));
        }
        let mut data: Vec<(Vec<u32>, f32)> = {
            use rayon::prelude::*;
            let hi: Vec<_> = high.par_iter().map(|t| (features(t, cfg), 1.0f32)).collect();
            let lo: Vec<_> = low.par_iter().map(|t| (features(t, cfg), 0.0f32)).collect();
            hi.into_iter().chain(lo).collect()
        };
        let mut rng = Rng(cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        for i in (1..data.len()).rev() {
            data.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        let n_val = ((data.len() as f64 * cfg.validation) as usize).min(data.len() - 1);
        let (val, train) = data.split_at(n_val);
        let mut m = QualityModel { cfg: cfg.clone(), bias: 0.0, weights: vec![0.0; 1 << cfg.bits] };
        let total = (train.len() * cfg.epochs).max(1) as f32;
        let mut order: Vec<usize> = (0..train.len()).collect();
        let mut step = 0f32;
        for _ in 0..cfg.epochs {
            for i in (1..order.len()).rev() {
                order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
            }
            for &k in &order {
                let (f, y) = &train[k];
                let lr = cfg.lr * (1.0 - step / total);
                step += 1.0;
                if f.is_empty() {
                    continue;
                }
                let inv = 1.0 / f.len() as f32;
                let z: f32 = f.iter().map(|&i| m.weights[i as usize]).sum::<f32>() * inv + m.bias;
                let g = sigmoid(z) - y; // d(log loss)/dz
                for &i in f {
                    m.weights[i as usize] -= lr * g * inv;
                }
                m.bias -= lr * g;
            }
        }
        let eval = |set: &[(Vec<u32>, f32)]| -> (f64, f64) {
            if set.is_empty() {
                return (f64::NAN, f64::NAN);
            }
            let (mut right, mut loss) = (0usize, 0f64);
            for (f, y) in set {
                let z: f32 = if f.is_empty() { 0.0 } else { f.iter().map(|&i| m.weights[i as usize]).sum::<f32>() / f.len() as f32 };
                let p = sigmoid(z + m.bias) as f64;
                right += ((p >= 0.5) == (*y > 0.5)) as usize;
                loss -= if *y > 0.5 { p.max(1e-7).ln() } else { (1.0 - p).max(1e-7).ln() };
            }
            (right as f64 / set.len() as f64, loss / set.len() as f64)
        };
        let (train_acc, _) = eval(train);
        let (val_acc, val_loss) = eval(val);
        let report = TrainReport { train_docs: train.len(), validation_docs: val.len(), train_accuracy: train_acc, validation_accuracy: val_acc, validation_log_loss: val_loss };
        Ok((m, report))
    }

    /// One JSON header line, then the weights as little-endian f32.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut bytes = serde_json::to_vec(self).expect("model header serializes");
        bytes.push(b'\n');
        for w in &self.weights {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        ferrolm_common::write_atomic(path, bytes).map_err(io_err(path))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let bad = |m: &str| CorpusError::Invalid { path: path.to_path_buf(), message: format!("not a ferrolm quality model: {m}") };
        let nl = bytes.iter().position(|&b| b == b'\n').ok_or_else(|| bad("no header"))?;
        let mut m: QualityModel = serde_json::from_slice(&bytes[..nl]).map_err(|e| bad(&e.to_string()))?;
        let body = &bytes[nl + 1..];
        if body.len() != 4 << m.cfg.bits {
            return Err(bad(&format!("expected {} weight bytes, found {}", 4u64 << m.cfg.bits, body.len())));
        }
        m.weights = body.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        Ok(m)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClassifierStepConfig {
    pub model: PathBuf,
    /// Documents scoring below this are removed.
    pub threshold: f32,
}

impl Default for ClassifierStepConfig {
    fn default() -> Self {
        Self { model: PathBuf::new(), threshold: 0.5 }
    }
}

/// Scores every document (`meta.quality_score`) and removes those below the threshold.
pub struct QualityClassifierFilter {
    model: QualityModel,
    threshold: f32,
}

impl QualityClassifierFilter {
    pub fn new(cfg: &ClassifierStepConfig) -> Result<Self> {
        Ok(Self { model: QualityModel::load(&cfg.model)?, threshold: cfg.threshold })
    }
    pub fn from_model(model: QualityModel, threshold: f32) -> Self {
        Self { model, threshold }
    }
}

impl Step for QualityClassifierFilter {
    fn name(&self) -> &str {
        "quality_classifier"
    }
    fn apply(&self, _seq: u64, doc: &mut Document) -> Verdict {
        let s = self.model.score(&doc.text);
        doc.meta.insert("quality_score".into(), (s as f64).into());
        if s < self.threshold {
            Verdict::remove("low_quality_score")
        } else {
            Verdict::Keep
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_to_separate_and_round_trips() {
        let good = ["the committee reviewed the proposal and approved the budget for next year", "researchers measured the effect of temperature on the growth of the plants", "the museum opened a new exhibition about the history of the city"];
        let bad = ["click here buy now cheap pills free free free", "win money fast click click subscribe now", "best deals hot offers buy buy buy now click"];
        let mut hi = Vec::new();
        let mut lo = Vec::new();
        for i in 0..60 {
            hi.push(format!("{} {}", good[i % 3], good[(i + 1) % 3]));
            lo.push(format!("{} {}", bad[i % 3], bad[(i + 2) % 3]));
        }
        let cfg = ClassifierConfig { bits: 16, ..Default::default() };
        let (m, r) = QualityModel::train(&hi, &lo, &cfg).unwrap();
        assert!(r.validation_accuracy >= 0.9, "{r:?}");
        assert!(m.score("the council approved the history museum budget") > 0.5);
        assert!(m.score("buy cheap pills click now free") < 0.5);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q.bin");
        m.save(&p).unwrap();
        let m2 = QualityModel::load(&p).unwrap();
        assert_eq!(m.score("some text here"), m2.score("some text here"));
        std::fs::write(&p, b"{}\n").unwrap();
        assert!(QualityModel::load(&p).unwrap_err().to_string().contains("q.bin"));
    }
}
