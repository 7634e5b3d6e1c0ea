//! One decoding token's f16 products, layer after layer, in Qwen2.5-0.5B's shapes (or
//! SmolLM2-135M's with the argument `smollm2`), each layer's matrices in memory of their
//! own as in a model, so every product reads its weights from memory: the time and the
//! bandwidth of each shape, and the tokens per second the products alone would allow.
//! This is how the AVX-512 product's software prefetch distance was chosen per CPU
//! (`simd::decode_prefetch_bytes`).
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release -p ferrolm-kernels --example f16_pages -- [smollm2]
//! ```

use ferrolm_kernels::f16::F16Matrix;
use std::time::Instant;

fn main() {
    let smol = std::env::args().nth(1).as_deref() == Some("smollm2");
    let shapes: Vec<(&str, usize, usize)> = if smol {
        vec![("q", 576, 576), ("k", 192, 576), ("v", 192, 576), ("o", 576, 576), ("gate", 1536, 576), ("up", 1536, 576), ("down", 576, 1536)]
    } else {
        vec![("qkv", 1152, 896), ("o", 896, 896), ("gate+up", 9728, 896), ("down", 896, 4864)]
    };
    let (layers, vocab, d) = if smol { (30, 49152, 576) } else { (24, 151936, 896) };
    // f16 values near 1 (any bits would do: the product's time does not depend on them)
    let matrix = |rows: usize, cols: usize, seed: usize| {
        let bytes: Vec<u8> = (0..rows * cols).flat_map(|i| (0x3c00u16 ^ (((i + seed) as u16).wrapping_mul(7919) & 0x3ff)).to_le_bytes()).collect();
        F16Matrix::from_gguf_bytes(rows, cols, &bytes).expect("sizes match")
    };
    let weights: Vec<Vec<F16Matrix>> = (0..layers).map(|l| shapes.iter().map(|&(_, r, c)| matrix(r, c, l)).collect()).collect();
    let head = matrix(vocab, d, 99);
    let input = |cols: usize| -> Vec<f32> { (0..cols).map(|i| (i % 13) as f32 / 13.0).collect() };
    let reps = 10;
    let mut secs = vec![0f64; shapes.len() + 1];
    // one warm-up token, then `reps` timed ones
    for rep in 0..=reps {
        let mut time = |slot: usize, m: &F16Matrix, cols: usize| {
            let x = input(cols);
            let t = Instant::now();
            std::hint::black_box(m.matmul_t(&x, 1));
            if rep > 0 {
                secs[slot] += t.elapsed().as_secs_f64();
            }
        };
        for layer in &weights {
            for (s, &(_, _, cols)) in shapes.iter().enumerate() {
                time(s, &layer[s], cols);
            }
        }
        time(shapes.len(), &head, d);
    }
    let mut total = 0.0;
    for (s, &(name, rows, cols)) in shapes.iter().enumerate() {
        let per = secs[s] / reps as f64;
        total += per;
        println!("{name:8} {rows}×{cols}: {:.2} ms a token, {:.1} GB/s", per * 1e3, (layers * rows * cols * 2) as f64 / per / 1e9);
    }
    let per = secs[shapes.len()] / reps as f64;
    total += per;
    println!("head     {vocab}×{d}: {:.2} ms a token, {:.1} GB/s", per * 1e3, (vocab * d * 2) as f64 / per / 1e9);
    println!("products alone: {:.2} ms a token = {:.1} tokens/s", total * 1e3, 1.0 / total);
}
