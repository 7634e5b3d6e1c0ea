//! The one precision dispatch: every f32 matrix product ferrolm computes itself (the fused
//! attention and linear ops) and every one candle's matmul hands over goes through the
//! process-wide [`MatmulPrecision`], to the exact f32 kernels (`sgemm`, the `gemm` crate)
//! or the bf16 tiles (`amx`).

use crate::ptr::Strided;
use std::sync::atomic::{AtomicU8, Ordering};

/// How f32 matrix products are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatmulPrecision {
    /// Plain f32 (the `gemm` crate's kernels). The default.
    #[default]
    F32,
    /// Operands rounded to bf16, f32 accumulation, on AMX tiles when the CPU has them;
    /// elsewhere this falls back to f32 (see [`set_matmul_precision`]).
    Bf16,
}

impl std::str::FromStr for MatmulPrecision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!("matmul precision must be \"f32\" or \"bf16\", got {other:?}")),
        }
    }
}

static MODE: AtomicU8 = AtomicU8::new(0);

/// Sets the process-wide precision of f32 matrix products (candle's `matmul` and the fused
/// attention and linear ops) and returns the one in effect: `Bf16` needs AMX, so on other
/// CPUs the answer is `F32`. Process-wide because candle's matmul has no per-call option.
pub fn set_matmul_precision(p: MatmulPrecision) -> MatmulPrecision {
    let effective = if p == MatmulPrecision::Bf16 && crate::amx::amx_available() {
        MatmulPrecision::Bf16
    } else {
        MatmulPrecision::F32
    };
    match effective {
        MatmulPrecision::Bf16 => {
            MODE.store(1, Ordering::SeqCst);
            candle_core::cpu_backend::set_f32_gemm_hook(Some(crate::amx::candle_hook));
        }
        MatmulPrecision::F32 => {
            MODE.store(0, Ordering::SeqCst);
            // Exact f32: gemm's kernels, with batches of small products (attention heads
            // outside the fused op) spread one per task (see sgemm.rs).
            candle_core::cpu_backend::set_f32_gemm_hook(Some(crate::sgemm::candle_hook));
        }
    }
    effective
}

/// The precision now in effect.
pub fn matmul_precision() -> MatmulPrecision {
    if MODE.load(Ordering::Relaxed) == 1 {
        MatmulPrecision::Bf16
    } else {
        MatmulPrecision::F32
    }
}

/// Which threads one product uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// Spread over rayon's pool (the linear op: one large product at a time). In bf16,
    /// products below [`crate::amx::MIN_WORK`] stay on exact f32, where packing tiles
    /// would cost more than it saves.
    Pool,
    /// The calling thread only: the caller is one task of an op that is already parallel
    /// (the fused attention's (sequence, head) tasks). In bf16 every product takes the
    /// tiles, whatever its size: they are the attention's many equal products, with
    /// packing buffers kept per thread.
    Caller,
}

/// `dst[m×n] := [dst +] scale · A·B` with the process-wide precision (bf16 tiles when
/// [`set_matmul_precision`] chose them, exact f32 `gemm` otherwise). dst has row stride
/// `dst_rs` and column stride 1.
///
/// # Safety
/// The pointers must cover the matrices their strides describe, and dst must not alias
/// A or B; no other thread may access dst's elements during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul(m: usize, n: usize, k: usize, a: Strided, b: Strided, dst: *mut f32, dst_rs: usize, accumulate: bool, scale: f32, threads: Threads) {
    let pool = threads == Threads::Pool;
    if matmul_precision() == MatmulPrecision::Bf16 && (!pool || m * n * k >= crate::amx::MIN_WORK) {
        // SAFETY: the caller's contract is gemm_bf16's; Bf16 is in effect only after
        // set_matmul_precision found AMX available.
        return unsafe { crate::amx::gemm_bf16(m, n, k, a, b, dst, dst_rs, accumulate, scale, pool) };
    }
    let threads = rayon::current_num_threads();
    let parallelism = if pool && threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the caller's contract is gemm_call's.
    unsafe { crate::sgemm::gemm_call(m, n, k, a, b, dst, dst_rs, accumulate, scale, parallelism) }
}
