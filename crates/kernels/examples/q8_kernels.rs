//! Time of the Q8_0 few-row product on 8-bit inputs (`ferrolm_kernels::q8`), each integer
//! dot form this CPU runs, at a SmolLM2-135M shape (576 → 1536), with the weights hot in
//! cache (one matrix) and cold (cycling through 96 matrices, 85 MB, more than the caches):
//! decoding reads every weight of the model once per token, so the cold figure is the one
//! that counts.
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release -p ferrolm-kernels --example q8_kernels -- [REPEATS]
//! ```
//! Prints the median and fastest time of one product (µs) and the weight bytes read per
//! second of the median (GB/s).

use ferrolm_kernels::q8::{matmul_q8_with, DotIsa, Q8Act, Q8Matrix};
mod common;

use common::{time, values};

fn main() {
    let repeats: usize = std::env::args().nth(1).map(|s| s.parse().expect("REPEATS is a number")).unwrap_or(200);
    let (n, k) = (1536, 576);
    let mats: Vec<Q8Matrix> = (0..96).map(|s| Q8Matrix::quantize(&values(n * k, s), n, k).expect("whole blocks")).collect();
    let bytes = (n * k + n * k / 32 * 4) as f64;
    // one untimed pass over every matrix first: the first timed form paid for the pages
    for m in &mats {
        std::hint::black_box(matmul_q8_with(m, &Q8Act::quantize(&values(k, 1), 1, k), DotIsa::detect()));
    }
    println!("| form | rows | weights | median µs | fastest µs | GB/s |\n|---|---|---|---|---|---|");
    for rows in [1usize, 8] {
        let x = Q8Act::quantize(&values(rows * k, 1000), rows, k);
        for isa in DotIsa::available() {
            for (label, count) in [("hot", 1usize), ("cold", mats.len())] {
                let mut i = 0;
                let mut run = || {
                    std::hint::black_box(matmul_q8_with(&mats[i % count], &x, isa));
                    i += 1;
                };
                // The first timed series after a change of form ran slower whatever the
                // form (the machine settling): one series discarded, the second reported.
                time(repeats, &mut run);
                let (med, fast) = time(repeats, &mut run);
                println!("| {isa:?} | {rows} | {label} | {med:.1} | {fast:.1} | {:.1} |", bytes / med / 1e3);
            }
        }
    }
}
