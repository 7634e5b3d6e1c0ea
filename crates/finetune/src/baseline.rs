//! The bag-of-words baseline every classification head is compared with: multinomial
//! logistic regression with an L2 penalty on binary word (and word-bigram) features,
//! trained to convergence by L-BFGS.
//!
//! Objective, as scikit-learn's `LogisticRegression(C)`: Σᵢ −log p(yᵢ | xᵢ) + ‖W‖²/(2C)
//! (the intercepts are not penalised); divided by n for a well-scaled line search.
//! Features: lower-cased alphanumeric words (apostrophes kept inside words) and adjacent
//! pairs, kept when they occur in at least `min_df` training texts.

use std::collections::HashMap;

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

use crate::metrics::ClassReport;
use crate::records::LabelledText;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BowConfig {
    /// Inverse regularisation strength (scikit-learn's C).
    pub c: f64,
    pub bigrams: bool,
    pub min_df: usize,
    pub max_iter: usize,
    /// Stop when the gradient's max-norm falls below this.
    pub tol: f64,
}

impl Default for BowConfig {
    fn default() -> Self {
        Self { c: 1.0, bigrams: true, min_df: 2, max_iter: 500, tol: 1e-6 }
    }
}

/// Words of a text: lower-cased runs of alphanumerics (and inner apostrophes).
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        if ch.is_alphanumeric() || (ch == '\'' && !cur.is_empty()) {
            cur.extend(ch.to_lowercase());
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur).trim_end_matches('\'').to_string());
        }
    }
    if !cur.is_empty() {
        out.push(cur.trim_end_matches('\'').to_string());
    }
    out
}

fn terms(text: &str, bigrams: bool) -> Vec<String> {
    let w = words(text);
    let mut t = w.clone();
    if bigrams {
        t.extend(w.windows(2).map(|p| format!("{} {}", p[0], p[1])));
    }
    t.sort();
    t.dedup();
    t
}

/// A trained model: vocabulary, weights (features × classes, row-major) and intercepts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BowModel {
    pub labels: Vec<String>,
    pub vocab: HashMap<String, usize>,
    pub weights: Vec<f64>,
    pub bias: Vec<f64>,
    pub cfg: BowConfig,
    pub iterations: usize,
    pub final_objective: f64,
}

fn featurize(vocab: &HashMap<String, usize>, text: &str, bigrams: bool) -> Vec<usize> {
    terms(text, bigrams).iter().filter_map(|t| vocab.get(t).copied()).collect()
}

/// Objective and gradient of the penalised mean negative log-likelihood.
fn objective(x: &[Vec<usize>], y: &[usize], f: usize, c: usize, inv_c: f64, w: &[f64], g: &mut [f64]) -> f64 {
    let n = x.len() as f64;
    g.iter_mut().for_each(|v| *v = 0.0);
    let mut loss = 0.0;
    let mut z = vec![0f64; c];
    let (wm, wb) = w.split_at(f * c);
    for (xi, &yi) in x.iter().zip(y) {
        z.copy_from_slice(wb);
        for &j in xi {
            let row = &wm[j * c..(j + 1) * c];
            z.iter_mut().zip(row).for_each(|(z, r)| *z += r);
        }
        let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
        let lse = max + sum.ln();
        loss += lse - z[yi];
        // d/dz = softmax − onehot
        for (k, zk) in z.iter_mut().enumerate() {
            *zk = (*zk - lse).exp() - if k == yi { 1.0 } else { 0.0 };
        }
        let (gm, gb) = g.split_at_mut(f * c);
        for &j in xi {
            gm[j * c..(j + 1) * c].iter_mut().zip(&z).for_each(|(g, d)| *g += d);
        }
        gb.iter_mut().zip(&z).for_each(|(g, d)| *g += d);
    }
    let mut reg = 0.0;
    for (gi, &wi) in g[..f * c].iter_mut().zip(&w[..f * c]) {
        reg += wi * wi;
        *gi += inv_c * wi;
    }
    g.iter_mut().for_each(|v| *v /= n);
    (loss + 0.5 * inv_c * reg) / n
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimise `f` by L-BFGS (Nocedal & Wright, alg. 7.4: two-loop recursion, memory `m`)
/// with a backtracking line search on the Armijo condition; a pair whose curvature
/// sᵀy ≤ 0 is not stored. Returns (x, f(x), iterations).
pub fn lbfgs(mut f: impl FnMut(&[f64], &mut [f64]) -> f64, x0: Vec<f64>, m: usize, max_iter: usize, tol: f64) -> (Vec<f64>, f64, usize) {
    let n = x0.len();
    let mut x = x0;
    let mut g = vec![0.0; n];
    let mut fx = f(&x, &mut g);
    let mut hist: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = Default::default();
    let mut iters = 0;
    let mut xn = vec![0.0; n];
    let mut gn = vec![0.0; n];
    while iters < max_iter {
        if g.iter().fold(0f64, |a, v| a.max(v.abs())) < tol {
            break;
        }
        iters += 1;
        // two-loop recursion: d = −H g
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(hist.len());
        for (s, y, rho) in hist.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(y).for_each(|(q, y)| *q -= a * y);
            alphas.push(a);
        }
        let gamma = hist.back().map(|(s, y, _)| dot(s, y) / dot(y, y)).unwrap_or(1.0 / g.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12));
        q.iter_mut().for_each(|v| *v *= gamma);
        for ((s, y, rho), a) in hist.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(y, &q);
            q.iter_mut().zip(s).for_each(|(q, s)| *q += (a - b) * s);
        }
        let mut d: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &d);
        if slope >= 0.0 {
            // not a descent direction (numerical trouble): restart from steepest descent
            hist.clear();
            d = g.iter().map(|v| -v).collect();
            slope = dot(&g, &d);
        }
        let mut step = 1.0;
        let mut fnew;
        loop {
            xn.iter_mut().zip(&x).zip(&d).for_each(|((xn, x), d)| *xn = x + step * d);
            fnew = f(&xn, &mut gn);
            if fnew <= fx + 1e-4 * step * slope || step < 1e-12 {
                break;
            }
            step *= 0.5;
        }
        if fnew > fx {
            break; // no progress possible along d: converged to numerical precision
        }
        let s: Vec<f64> = xn.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = gn.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 {
            if hist.len() == m {
                hist.pop_front();
            }
            hist.push_back((s, y, 1.0 / sy));
        }
        let improvement = fx - fnew;
        std::mem::swap(&mut x, &mut xn);
        std::mem::swap(&mut g, &mut gn);
        fx = fnew;
        if improvement.abs() <= 1e-10 * fx.abs() {
            break;
        }
    }
    (x, fx, iters)
}

impl BowModel {
    pub fn train(train: &[LabelledText], labels: &[String], cfg: &BowConfig) -> Result<Self> {
        ensure!(cfg.c > 0.0, "the baseline's C must be positive");
        let mut df: HashMap<String, usize> = HashMap::new();
        let term_lists: Vec<Vec<String>> = train.iter().map(|r| terms(&r.text, cfg.bigrams)).collect();
        for t in &term_lists {
            for w in t {
                *df.entry(w.clone()).or_default() += 1;
            }
        }
        let mut kept: Vec<String> = df.into_iter().filter(|(_, n)| *n >= cfg.min_df).map(|(t, _)| t).collect();
        kept.sort();
        let vocab: HashMap<String, usize> = kept.into_iter().enumerate().map(|(i, t)| (t, i)).collect();
        let x: Vec<Vec<usize>> = term_lists.iter().map(|t| t.iter().filter_map(|w| vocab.get(w).copied()).collect()).collect();
        let y: Vec<usize> = crate::classify::label_ids(train, labels)?.into_iter().map(|v| v as usize).collect();
        let (f, c) = (vocab.len(), labels.len());
        let inv_c = 1.0 / cfg.c;
        let (w, fx, iters) = lbfgs(|w, g| objective(&x, &y, f, c, inv_c, w, g), vec![0.0; f * c + c], 10, cfg.max_iter, cfg.tol);
        let (wm, wb) = w.split_at(f * c);
        Ok(Self { labels: labels.to_vec(), vocab, weights: wm.to_vec(), bias: wb.to_vec(), cfg: cfg.clone(), iterations: iters, final_objective: fx })
    }

    pub fn predict(&self, text: &str) -> usize {
        let c = self.labels.len();
        let mut z = self.bias.clone();
        for j in featurize(&self.vocab, text, self.cfg.bigrams) {
            z.iter_mut().zip(&self.weights[j * c..(j + 1) * c]).for_each(|(z, w)| *z += w);
        }
        z.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0)
    }

    pub fn evaluate(&self, recs: &[LabelledText]) -> Result<ClassReport> {
        let truth: Vec<usize> = crate::classify::label_ids(recs, &self.labels)?.into_iter().map(|v| v as usize).collect();
        let pred: Vec<usize> = recs.iter().map(|r| self.predict(&r.text)).collect();
        Ok(ClassReport::new(&self.labels, &truth, &pred))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lbfgs_minimises_a_quadratic_exactly() {
        // f(x) = Σ a_i (x_i − b_i)² with very different curvatures
        let a = [1.0, 10.0, 100.0, 0.5];
        let b = [1.0, -2.0, 0.5, 3.0];
        let (x, fx, it) = lbfgs(
            |x, g| {
                let mut s = 0.0;
                for i in 0..4 {
                    s += a[i] * (x[i] - b[i]).powi(2);
                    g[i] = 2.0 * a[i] * (x[i] - b[i]);
                }
                s
            },
            vec![0.0; 4],
            5,
            100,
            1e-10,
        );
        assert!(fx < 1e-16, "{fx} after {it}");
        x.iter().zip(&b).for_each(|(x, b)| assert!((x - b).abs() < 1e-8));
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let x = vec![vec![0, 2], vec![1], vec![0, 1, 2]];
        let y = vec![0, 1, 2];
        let (f, c) = (3, 3);
        let w: Vec<f64> = (0..f * c + c).map(|i| ((i * 7 % 5) as f64 - 2.0) * 0.3).collect();
        let mut g = vec![0.0; w.len()];
        objective(&x, &y, f, c, 0.7, &w, &mut g);
        let mut scratch = vec![0.0; w.len()];
        for i in 0..w.len() {
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp[i] += 1e-6;
            wm[i] -= 1e-6;
            let num = (objective(&x, &y, f, c, 0.7, &wp, &mut scratch) - objective(&x, &y, f, c, 0.7, &wm, &mut scratch)) / 2e-6;
            assert!((num - g[i]).abs() < 1e-6, "param {i}: {num} vs {}", g[i]);
        }
    }

    #[test]
    fn learns_a_word_rule_and_regularisation_matters() {
        let mk = |t: &str, l: &str| LabelledText { text: t.into(), label: l.into() };
        let mut train = Vec::new();
        for i in 0..40 {
            train.push(mk(&format!("a great film number {i}"), "pos"));
            train.push(mk(&format!("a dull film number {i}"), "neg"));
        }
        let labels = vec!["neg".to_string(), "pos".to_string()];
        let m = BowModel::train(&train, &labels, &BowConfig { min_df: 1, ..Default::default() }).unwrap();
        let test = vec![mk("great acting", "pos"), mk("so dull", "neg"), mk("Great!", "pos")];
        assert_eq!(m.evaluate(&test).unwrap().accuracy, 1.0);
        let weak = BowModel::train(&train, &labels, &BowConfig { min_df: 1, c: 1e-4, ..Default::default() }).unwrap();
        let norm = |m: &BowModel| m.weights.iter().map(|w| w * w).sum::<f64>();
        assert!(norm(&weak) < 0.01 * norm(&m), "a strong penalty shrinks the weights");
        assert_eq!(words("It's a don't-miss, isn't it?"), vec!["it's", "a", "don't", "miss", "isn't", "it"]);
    }
}
