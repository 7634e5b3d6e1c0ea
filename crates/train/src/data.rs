//! Training batches from a stream of token ids.
//!
//! A batch is `batch_size` windows of `seq_len + 1` tokens at offsets drawn from a
//! ChaCha stream seeded by (seed, step, micro-step): the data order is seeded and a
//! resumed run draws exactly the batches the uninterrupted run would have drawn.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

/// Anything that holds a long sequence of token ids: memory-mapped shards, or a Vec.
pub trait TokenSource: Sync {
    fn len(&self) -> usize;
    /// Copy `len` tokens starting at `start` into `out`.
    fn read(&self, start: usize, out: &mut [u32]);
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TokenSource for Vec<u32> {
    fn len(&self) -> usize {
        self.as_slice().len()
    }
    fn read(&self, start: usize, out: &mut [u32]) {
        out.copy_from_slice(&self[start..start + out.len()]);
    }
}

impl TokenSource for [u32] {
    fn len(&self) -> usize {
        <[u32]>::len(self)
    }
    fn read(&self, start: usize, out: &mut [u32]) {
        out.copy_from_slice(&self[start..start + out.len()]);
    }
}

impl TokenSource for ferrolm_tokenizer::shards::TokenShards {
    fn len(&self) -> usize {
        ferrolm_tokenizer::shards::TokenShards::len(self)
    }
    fn read(&self, start: usize, out: &mut [u32]) {
        self.get_into(start, out)
    }
}

/// Inputs (batch, T) and next-token targets (batch, T).
pub struct Batch {
    pub inputs: Tensor,
    pub targets: Tensor,
    pub target_ids: Vec<u32>,
}

pub fn make_batch(src: &dyn TokenSource, offsets: &[usize], seq_len: usize, device: &Device) -> candle_core::Result<Batch> {
    let b = offsets.len();
    let mut window = vec![0u32; seq_len + 1];
    let mut x = Vec::with_capacity(b * seq_len);
    let mut y = Vec::with_capacity(b * seq_len);
    for &o in offsets {
        src.read(o, &mut window);
        x.extend_from_slice(&window[..seq_len]);
        y.extend_from_slice(&window[1..]);
    }
    Ok(Batch {
        inputs: Tensor::from_vec(x, (b, seq_len), device)?,
        targets: Tensor::from_vec(y.clone(), (b, seq_len), device)?,
        target_ids: y,
    })
}

/// The seed of one random stream of (step, micro-step); `purpose` separates the streams
/// (batch offsets, dropout) so they never coincide.
pub fn step_seed(seed: u64, step: usize, micro: usize, purpose: &str) -> u64 {
    let mut key = Vec::with_capacity(16 + purpose.len());
    key.extend_from_slice(&(step as u64).to_le_bytes());
    key.extend_from_slice(&(micro as u64).to_le_bytes());
    key.extend_from_slice(purpose.as_bytes());
    xxhash_rust::xxh3::xxh3_64_with_seed(&key, seed)
}

/// Random window offsets for (step, micro-step).
pub fn train_offsets(src: &dyn TokenSource, seed: u64, step: usize, micro: usize, batch: usize, seq_len: usize) -> Vec<usize> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(step_seed(seed, step, micro, "batch"));
    let max = src.len() - seq_len - 1;
    (0..batch).map(|_| rng.random_range(0..=max)).collect()
}

/// Evaluation windows: `n` windows spread evenly over the held-out stream, the same every
/// time, so evaluations at different steps (and runs) are comparable.
pub fn eval_offsets(src: &dyn TokenSource, n: usize, seq_len: usize) -> Vec<usize> {
    let span = src.len().saturating_sub(seq_len + 1);
    if span == 0 {
        return vec![0];
    }
    let n = n.min(span / (seq_len + 1)).max(1);
    (0..n).map(|i| i * span / n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_a_function_of_seed_and_step() {
        let src: Vec<u32> = (0..1000).collect();
        let a = train_offsets(&src, 1, 5, 0, 8, 16);
        assert_eq!(a, train_offsets(&src, 1, 5, 0, 8, 16));
        assert_ne!(a, train_offsets(&src, 1, 6, 0, 8, 16));
        assert_ne!(a, train_offsets(&src, 1, 5, 1, 8, 16));
        assert!(a.iter().all(|&o| o + 17 <= 1000));
        let b = make_batch(&src, &a, 16, &Device::Cpu).unwrap();
        let x: Vec<Vec<u32>> = b.inputs.to_vec2().unwrap();
        let y: Vec<Vec<u32>> = b.targets.to_vec2().unwrap();
        for (xr, yr) in x.iter().zip(&y) {
            assert_eq!(&xr[1..], &yr[..15], "targets are inputs shifted by one");
        }
    }
}
