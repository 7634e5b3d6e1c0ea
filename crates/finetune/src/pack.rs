//! Training rows for supervised fine-tuning: each example is a token sequence with a
//! per-token loss flag; a row holds one example (padding mode) or several (packing mode).
//!
//! An example of L tokens occupies L−1 positions of a row: inputs `ids[..L−1]`, targets
//! `ids[1..]`, and a target carries loss only where the flag of the *target* token is set
//! (other targets are `IGNORE_INDEX`). In a packed row every example has its own segment id;
//! attention is causal *and* within a segment, so no token attends across examples, and
//! padding (segment `PAD_SEGMENT`) is never attended. With RoPE (modern blocks) attention
//! depends only on relative positions, so an example's outputs are the same wherever it
//! sits in a row; GPT-2 blocks' learned absolute positions see the packed offset (the model
//! API has no per-token position ids).

use candle_core::{Device, Tensor};
use ferrolm_model::attention::{MaskSpec, PAD_SEGMENT};
use ferrolm_kernels::IGNORE_INDEX;

/// One tokenised example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    /// Per id: whether predicting it carries loss.
    pub loss: Vec<bool>,
}

impl Example {
    /// Positions the example needs in a row.
    pub fn width(&self) -> usize {
        self.ids.len().saturating_sub(1)
    }
    pub fn loss_tokens(&self) -> usize {
        self.loss.iter().skip(1).filter(|&&l| l).count()
    }
}

/// A row: inputs, targets (IGNORE_INDEX where no loss) and segment ids, all the same length.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub segments: Vec<u32>,
}

impl Row {
    fn push(&mut self, ex: &Example, segment: u32) {
        let w = ex.width();
        self.inputs.extend_from_slice(&ex.ids[..w]);
        self.targets.extend(ex.ids[1..].iter().zip(&ex.loss[1..]).map(|(&t, &l)| if l { t } else { IGNORE_INDEX }));
        self.segments.extend(std::iter::repeat_n(segment, w));
    }
    pub fn len(&self) -> usize {
        self.inputs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }
    pub fn loss_tokens(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
    }
}

/// One example per row.
pub fn single_rows(examples: &[Example]) -> Vec<Row> {
    examples
        .iter()
        .map(|e| {
            let mut r = Row { inputs: vec![], targets: vec![], segments: vec![] };
            r.push(e, 0);
            r
        })
        .collect()
}

/// Pack examples into rows of at most `capacity` positions by first-fit decreasing (the
/// classic bin-packing heuristic: longest first, each into the first row with room).
/// Examples wider than `capacity` must have been truncated before. Order within the output
/// is deterministic for a given input order.
pub fn pack_rows(examples: &[Example], capacity: usize) -> Vec<Row> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(examples[i].width()));
    let mut rows: Vec<(usize, Vec<usize>)> = Vec::new();
    for i in order {
        let w = examples[i].width();
        assert!(w <= capacity, "example wider than the row capacity: truncate first");
        match rows.iter_mut().find(|(used, _)| used + w <= capacity) {
            Some((used, members)) => {
                *used += w;
                members.push(i);
            }
            None => rows.push((w, vec![i])),
        }
    }
    rows.into_iter()
        .map(|(_, members)| {
            let mut r = Row { inputs: vec![], targets: vec![], segments: vec![] };
            for (s, &i) in members.iter().enumerate() {
                r.push(&examples[i], s as u32);
            }
            r
        })
        .collect()
}

/// A batch ready for the model: inputs (B, T), the attention mask, the flat indices
/// (into B·T) of positions with a loss target, and those targets.
pub struct SftBatch {
    pub inputs: Tensor,
    pub mask: MaskSpec,
    pub scored: Tensor,
    pub targets: Tensor,
    pub n_scored: usize,
    /// Positions with a real token (for tokens/s).
    pub n_tokens: usize,
}

/// Right-pad rows to the longest and build the batch. With `segmented`, the mask is causal
/// within each row's segments and padding is masked out; without, plain causal attention
/// (exact for one example per row: right padding comes after every real token, and a
/// causal query never sees later keys).
pub fn make_batch(rows: &[&Row], segmented: bool, pad: u32, device: &Device) -> candle_core::Result<SftBatch> {
    let b = rows.len();
    let t = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
    let mut inputs = vec![pad; b * t];
    let mut segs = vec![PAD_SEGMENT; b * t];
    let (mut scored, mut targets) = (Vec::new(), Vec::new());
    let mut n_tokens = 0;
    for (i, r) in rows.iter().enumerate() {
        inputs[i * t..i * t + r.len()].copy_from_slice(&r.inputs);
        segs[i * t..i * t + r.len()].copy_from_slice(&r.segments);
        n_tokens += r.len();
        for (j, &y) in r.targets.iter().enumerate() {
            if y != IGNORE_INDEX {
                scored.push((i * t + j) as u32);
                targets.push(y);
            }
        }
    }
    let n = scored.len();
    let mask = if segmented { MaskSpec::causal().with_segments(segs) } else { MaskSpec::causal() };
    Ok(SftBatch {
        inputs: Tensor::from_vec(inputs, (b, t), device)?,
        mask,
        scored: Tensor::from_vec(scored, n, device)?,
        targets: Tensor::from_vec(targets, n, device)?,
        n_scored: n,
        n_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(ids: &[u32], loss_from: usize) -> Example {
        Example { ids: ids.to_vec(), loss: (0..ids.len()).map(|i| i >= loss_from).collect() }
    }

    #[test]
    fn targets_are_shifted_and_masked() {
        let rows = single_rows(&[ex(&[0, 5, 6, 7, 8], 3)]);
        assert_eq!(rows[0].inputs, vec![0, 5, 6, 7]);
        assert_eq!(rows[0].targets, vec![IGNORE_INDEX, IGNORE_INDEX, 7, 8]);
    }

    #[test]
    fn first_fit_decreasing_fills_rows() {
        let exs: Vec<Example> = [6usize, 3, 5, 2, 4].iter().map(|&n| ex(&vec![1; n + 1], 1)).collect();
        let rows = pack_rows(&exs, 8);
        // widths 6,5,4,3,2 into capacity 8: [6,2] [5,3] [4]
        let mut lens: Vec<usize> = rows.iter().map(|r| r.len()).collect();
        lens.sort();
        assert_eq!(lens, vec![4, 8, 8]);
        assert_eq!(rows.iter().map(|r| r.loss_tokens()).sum::<usize>(), 20);
        let segs: Vec<u32> = rows[0].segments.clone();
        assert_eq!(segs, vec![0, 0, 0, 0, 0, 0, 1, 1]);
    }
}
