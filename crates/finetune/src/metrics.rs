//! Classification figures: confusion matrix, accuracy, per-class and macro-averaged F1,
//! and the confusion matrix as an SVG picture.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassReport {
    pub labels: Vec<String>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
    pub n: usize,
    pub accuracy: f64,
    /// Unweighted mean of the per-class F1 (a class never predicted and never present
    /// counts as 0, as scikit-learn's `zero_division=0`).
    pub macro_f1: f64,
    pub f1: Vec<f64>,
}

impl ClassReport {
    pub fn new(labels: &[String], truth: &[usize], predicted: &[usize]) -> Self {
        assert_eq!(truth.len(), predicted.len());
        let c = labels.len();
        let mut confusion = vec![vec![0usize; c]; c];
        for (&t, &p) in truth.iter().zip(predicted) {
            confusion[t][p] += 1;
        }
        let n = truth.len();
        let correct: usize = (0..c).map(|i| confusion[i][i]).sum();
        let f1: Vec<f64> = (0..c)
            .map(|k| {
                let tp = confusion[k][k] as f64;
                let fp: f64 = (0..c).filter(|&i| i != k).map(|i| confusion[i][k] as f64).sum();
                let fn_: f64 = (0..c).filter(|&j| j != k).map(|j| confusion[k][j] as f64).sum();
                if tp == 0.0 {
                    0.0
                } else {
                    2.0 * tp / (2.0 * tp + fp + fn_)
                }
            })
            .collect();
        Self {
            labels: labels.to_vec(),
            n,
            accuracy: if n > 0 { correct as f64 / n as f64 } else { 0.0 },
            macro_f1: if c > 0 { f1.iter().sum::<f64>() / c as f64 } else { 0.0 },
            f1,
            confusion,
        }
    }

    /// The confusion matrix as an SVG: rows are true labels, columns predictions, cells
    /// shaded by the share of their row.
    pub fn confusion_svg(&self, title: &str) -> String {
        let c = self.labels.len();
        let cell = 70usize;
        let left = 20 + 9 * self.labels.iter().map(|l| l.chars().count()).max().unwrap_or(4).min(24);
        let top = 80usize;
        let w = left + c * cell + 30;
        let h = top + c * cell + 40;
        let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"13\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n\
             <text x=\"{}\" y=\"40\" text-anchor=\"middle\">accuracy {:.3}, macro-F1 {:.3}, n = {}</text>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">predicted</text>\n",
            w / 2,
            esc(title),
            w / 2,
            self.accuracy,
            self.macro_f1,
            self.n,
            left + c * cell / 2,
            top - 22
        );
        for (j, l) in self.labels.iter().enumerate() {
            s.push_str(&format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", left + j * cell + cell / 2, top - 6, esc(l)));
        }
        for (i, row) in self.confusion.iter().enumerate() {
            let total: usize = row.iter().sum();
            s.push_str(&format!("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n", left - 6, top + i * cell + cell / 2 + 4, esc(&self.labels[i])));
            for (j, &v) in row.iter().enumerate() {
                let share = if total > 0 { v as f64 / total as f64 } else { 0.0 };
                let shade = (255.0 - 200.0 * share).round() as u8;
                let ink = if share > 0.55 { "white" } else { "black" };
                s.push_str(&format!(
                    "<rect x=\"{}\" y=\"{}\" width=\"{cell}\" height=\"{cell}\" fill=\"rgb({shade},{shade},255)\" stroke=\"#888\"/>\
                     <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"{ink}\">{v}</text>\n",
                    left + j * cell,
                    top + i * cell,
                    left + j * cell + cell / 2,
                    top + i * cell + cell / 2 + 4
                ));
            }
        }
        s.push_str(&format!("<text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">true</text>\n", top + c * cell / 2, top + c * cell / 2));
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_and_macro_f1_by_hand() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let truth = [0, 0, 0, 1, 1, 2];
        let pred = [0, 0, 1, 1, 2, 2];
        let r = ClassReport::new(&labels, &truth, &pred);
        assert_eq!(r.confusion, vec![vec![2, 1, 0], vec![0, 1, 1], vec![0, 0, 1]]);
        assert!((r.accuracy - 4.0 / 6.0).abs() < 1e-12);
        // F1: a = 2·2/(4+0+1) = 0.8; b = 2/(2+1+1) = 0.5; c = 2/(2+1+0) = 2/3
        assert!((r.macro_f1 - (0.8 + 0.5 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        let svg = r.confusion_svg("t <x>");
        assert!(svg.starts_with("<svg") && svg.contains("t &lt;x&gt;") && svg.matches("<rect").count() == 10);
    }
}
