//! Cost of one sampled token: `cargo run --release -p ferrolm-infer --example sampling_cost [-- VOCAB]`.
//!
//! The serving scheduler samples once per sequence per batched step, so at 8 sequences
//! the sampler's cost is paid 8 times per step; this times each sampling setting on
//! logits shaped like a small model's (a few likely tokens over a long flat tail).

use ferrolm_infer::sampling::{Sampler, SamplingConfig};
use std::time::Instant;

fn main() {
    let vocab: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(8192);
    // deterministic logits: a long tail around 0 and a few peaks
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let logits: Vec<f32> = (0..vocab)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 40) as f32 / (1u64 << 24) as f32;
            if i % 997 == 3 { 8.0 + 4.0 * u } else { 3.0 * u - 1.5 }
        })
        .collect();
    let settings = [
        ("temperature 0.8 (whole softmax)", SamplingConfig { temperature: 0.8, top_k: 0, top_p: 1.0, seed: 1 }),
        ("temperature 0.8, top_p 0.95", SamplingConfig { temperature: 0.8, top_k: 0, top_p: 0.95, seed: 1 }),
        ("temperature 0.8, top_p 0.5", SamplingConfig { temperature: 0.8, top_k: 0, top_p: 0.5, seed: 1 }),
        ("temperature 0.8, top_k 50, top_p 0.95", SamplingConfig { temperature: 0.8, top_k: 50, top_p: 0.95, seed: 1 }),
        ("greedy", SamplingConfig { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 1 }),
    ];
    println!("vocabulary {vocab}: µs per sampled token (median of 5 runs of 2000 draws)");
    for (name, cfg) in settings {
        let mut s = Sampler::new(cfg);
        let mut runs = Vec::new();
        let mut sink = 0u64;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..2000 {
                sink += s.sample(&logits) as u64;
            }
            runs.push(t.elapsed().as_secs_f64() * 1e6 / 2000.0);
        }
        runs.sort_by(f64::total_cmp);
        println!("  {name:<40} {:>8.2} µs   (checksum {sink})", runs[2]);
    }
}
