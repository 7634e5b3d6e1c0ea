//! Dropout from a seeded stream.

use candle_core::{Result, Tensor};

/// Inverted dropout with a mask drawn from a seeded stream, so a training step is a pure
/// function of (weights, batch, step seed): resuming from a checkpoint replays it exactly.
pub fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let scale = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count()).map(|_| if rng.random::<f32>() < p { 0.0 } else { scale }).collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?;
    x * mask
}
