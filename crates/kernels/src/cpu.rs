//! Reading candle's CPU storage and writing the ops' outputs: the one `contiguous_f32`,
//! fresh output buffers, and the row loops every fused op splits over threads.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result};
use rayon::prelude::*;

/// Rows above this many elements in total are split across threads.
pub(crate) const PAR_THRESHOLD: usize = 1 << 14;

/// The f32 values of a contiguous CPU op input; an error names `op` otherwise.
pub fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{op}: only f32 is implemented on CPU, got {:?}", s.dtype()),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// A contiguous CPU tensor's f32 values, read from a tensor rather than an op input (the
/// linear op's side-by-side backward).
pub(crate) fn tensor_f32<'a>(s: &'a candle_core::Storage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match s {
        candle_core::Storage::Cpu(c) => contiguous_f32(c, l, op),
        _ => candle_core::bail!("{op}: not on CPU"),
    }
}

/// `f(i, row)` for every row of `out` (rows of `dim`), in parallel for large outputs.
pub(crate) fn for_rows(out: &mut [f32], dim: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if out.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(dim).enumerate().for_each(|(i, r)| f(i, r));
    } else {
        out.chunks_mut(dim).enumerate().for_each(|(i, r)| f(i, r));
    }
}

/// Apply `f(out_chunk, in_chunk)` over aligned chunks, in parallel for large inputs.
pub(crate) fn map_chunks(out: &mut [f32], x: &[f32], f: impl Fn(&mut [f32], &[f32]) + Sync + Send) {
    if out.len() >= PAR_THRESHOLD {
        let chunk = out.len().div_ceil(rayon::current_num_threads().max(1));
        out.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(o, x)| f(o, x));
    } else {
        f(out, x);
    }
}

/// Every row of `out` (rows of `b.len()`) set to `b`.
pub(crate) fn fill_rows(out: &mut [f32], b: &[f32]) {
    for_rows(out, b.len(), |_, row| row.copy_from_slice(b));
}

/// An output buffer of `n` floats whose elements the caller writes before anyone reads
/// them. Fresh `vec![0.0; n]` outputs cost a memset of every intermediate tensor (3% of
/// a c1 training step in perf) on top of the kernel's own page zeroing.
pub(crate) fn output_buffer(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: the capacity is n, and f32 has no invalid bit patterns and no drop. Buffers
    // handed to candle are written in full first; the one kept internally (the fused
    // attention's probabilities) leaves the blocks above the causal diagonal unwritten,
    // and nothing reads them.
    #[allow(clippy::uninit_vec)]
    unsafe {
        v.set_len(n)
    };
    v
}
