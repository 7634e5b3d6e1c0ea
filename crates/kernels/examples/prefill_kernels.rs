//! The f32 `linear` products of a 128-token prompt at SmolLM2-135M's and Qwen2.5-0.5B's
//! shapes (q/k/v fused, as ferrolm's modern blocks run them; gate and up as one product
//! of both widths — the blocks run them as two of half the width each), with the
//! multiply-add rate of each: what a prompt pass's time is made of, to read beside
//! `fma_peak` (the core's ceiling) and PyTorch's `F.linear` on the same shapes
//! (bench/README.md). Beside `linear` (what a model runs), each form of the prompt tiles
//! the CPU has (`prompt_linear`: AVX-512, AVX2), whatever the row count.
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release -p ferrolm-kernels --example prefill_kernels -- [ROWS] [REPEATS]
//! ```

use candle_core::{Device, Tensor};
use ferrolm_kernels::linear;
use ferrolm_kernels::prompt_linear::{self, TileIsa};
mod common;

use common::{time, values};

fn main() -> candle_core::Result<()> {
    let rows: usize = std::env::args().nth(1).map(|s| s.parse().expect("ROWS is a number")).unwrap_or(128);
    let repeats: usize = std::env::args().nth(2).map(|s| s.parse().expect("REPEATS is a number")).unwrap_or(30);
    println!("| shape | product (n × k) | rows | form | median µs | fastest µs | GFLOP/s (median) |\n|---|---|---|---|---|---|---|");
    let shapes = [
        ("smollm2-135m", "qkv", 960, 576),
        ("smollm2-135m", "o", 576, 576),
        ("smollm2-135m", "gate+up", 3072, 576),
        ("smollm2-135m", "down", 576, 1536),
        ("qwen2.5-0.5b", "qkv", 1152, 896),
        ("qwen2.5-0.5b", "o", 896, 896),
        ("qwen2.5-0.5b", "gate+up", 9728, 896),
        ("qwen2.5-0.5b", "down", 896, 4864),
    ];
    for (shape, name, n, k) in shapes {
        let w = Tensor::from_vec(values(n * k, 1), (n, k), &Device::Cpu)?;
        let x = Tensor::from_vec(values(rows * k, 2), (rows, k), &Device::Cpu)?;
        let (med, fast) = time(repeats, || {
            std::hint::black_box(linear(&x, &w, None).expect("linear"));
        });
        let flops = 2.0 * (rows * n * k) as f64;
        println!("| {shape} | {name} {n}×{k} | {rows} | `linear` | {med:.0} | {fast:.0} | {:.1} |", flops / med / 1e3);
        // each form of the prompt tiles this CPU has, whatever the row count
        let (xs, ws) = (x.flatten_all()?.to_vec1::<f32>()?, w.flatten_all()?.to_vec1::<f32>()?);
        let mut y = vec![0f32; rows * n];
        for isa in TileIsa::available() {
            let (med, fast) = time(repeats, || {
                prompt_linear::product_with(isa, &xs, rows, k, &ws, n, None, &mut y);
                std::hint::black_box(&y);
            });
            println!("| {shape} | {name} {n}×{k} | {rows} | tiles {isa:?} | {med:.0} | {fast:.0} | {:.1} |", flops / med / 1e3);
        }
    }
    Ok(())
}
