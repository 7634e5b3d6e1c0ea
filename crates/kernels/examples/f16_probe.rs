//! The f16 few-row product (one input row, as in decoding) on matrices in cache and out of
//! cache, beside a plain sequential read of the same halves: how close decoding comes to the
//! memory bandwidth one core gets.
//!
//!     RAYON_NUM_THREADS=1 cargo run --release -p ferrolm-kernels --example f16_probe

use ferrolm_kernels::f16::F16Matrix;
use std::time::Instant;

fn main() {
    stream_bandwidth();
    for &(rows, cols, reps) in &[(576usize, 576usize, 2000usize), (1536, 576, 500), (49152, 576, 20)] {
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let q = F16Matrix::from_f32(&w, rows, cols).expect("sizes match");
        let x: Vec<f32> = (0..cols).map(|i| (i % 13) as f32 / 13.0).collect();
        let _ = q.matmul_t(&x, 1);
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(q.matmul_t(&x, 1));
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!("{rows}x{cols}: {:.1} us, {:.2} G weights/s, {:.1} GB/s", s * 1e6, (rows * cols) as f64 / s / 1e9, (rows * cols * 2) as f64 / s / 1e9);
    }
}

/// A sequential read of a 56 MB f16 matrix, widened 64 rows at a time (F16C) into a buffer
/// that stays in cache: the bandwidth a single stream gets on this core.
fn stream_bandwidth() {
    let (rows, cols) = (49152, 576);
    let q = F16Matrix::from_f32(&vec![1.0; rows * cols], rows, cols).expect("sizes match");
    let mut buf = vec![0f32; 64 * cols];
    let reps = 20;
    let t = Instant::now();
    for _ in 0..reps {
        for r in (0..rows).step_by(64) {
            q.dequantize_rows_into(r, &mut buf);
            std::hint::black_box(&buf);
        }
    }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    println!("sequential read (widened 64 rows at a time): {:.1} GB/s", (rows * cols * 2) as f64 / s / 1e9);
}
