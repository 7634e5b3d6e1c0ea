//! Time of one decoding product on half-precision weights (`ferrolm_kernels::f16`) against the
//! f32 few-row product (`linear`) and Q8_0 (`q8`), at SmolLM2-135M's shapes: `ffn_down`
//! (576×1536) and the LM head (49152×576), 1 and 8 input rows.
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release -p ferrolm-kernels --example f16_kernels -- [REPEATS]
//! ```
//! Prints, per shape, rows and format, the median and the fastest of REPEATS (default 100)
//! timed calls, the weights' bytes read per second at the median and the multiply-add rate.

use candle_core::{Device, Tensor};
use ferrolm_kernels::f16::F16Matrix;
use ferrolm_kernels::linear;
use ferrolm_kernels::q8::Q8Matrix;
mod common;

use common::{time, values};

fn main() -> candle_core::Result<()> {
    let repeats: usize = std::env::args().nth(1).map(|s| s.parse().expect("REPEATS is a number")).unwrap_or(100);
    println!("threads: {}", rayon::current_num_threads());
    println!("| shape | rows | format | median µs | fastest µs | weight GB/s | GFLOP/s |\n|---|---|---|---|---|---|---|");
    for (name, n, k) in [("ffn_down 576×1536", 576usize, 1536usize), ("LM head 49152×576", 49152, 576)] {
        let wv = values(n * k, 1);
        let w = Tensor::from_vec(wv.clone(), (n, k), &Device::Cpu)?;
        let h = F16Matrix::from_f32(&wv, n, k).expect("f16");
        let q = Q8Matrix::quantize(&wv, n, k).expect("q8");
        for rows in [1usize, 8] {
            let xv = values(rows * k, 2);
            let x = Tensor::from_vec(xv.clone(), (rows, k), &Device::Cpu)?;
            let line = |format: &str, bytes: f64, (med, fast): (f64, f64)| {
                println!("| {name} | {rows} | {format} | {med:.1} | {fast:.1} | {:.1} | {:.1} |", bytes / med / 1e3, 2.0 * (rows * n * k) as f64 / med / 1e3);
            };
            line("f32", 4.0 * (n * k) as f64, time(repeats, || {
                std::hint::black_box(linear(&x, &w, None).expect("linear"));
            }));
            line("f16", 2.0 * (n * k) as f64, time(repeats, || {
                std::hint::black_box(h.matmul_t(&xv, rows));
            }));
            line("q8_0", 34.0 / 32.0 * (n * k) as f64, time(repeats, || {
                std::hint::black_box(q.matmul_t(&xv, rows));
            }));
        }
    }
    Ok(())
}
