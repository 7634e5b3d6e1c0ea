//! A weight matrix that threads update without locks (Hogwild, Recht et al. 2011), as
//! word2vec trains. Plain Rust (no candle).
//!
//! Why the race is acceptable: updates are small sparse additions to rows; a lost or torn
//! update only perturbs SGD noise, and every access stays inside the allocation (row
//! indices are checked). Rust's memory model calls concurrent non-atomic writes a data
//! race, so the shared matrix is only reached through a raw pointer in [`HogwildRows`]
//! and never as a `&mut` slice spanning the whole matrix; each access forms a short-lived
//! slice of one row. This type is where that race is allowed, and the only place.

use crate::SendPtr;
use std::marker::PhantomData;

/// One weight matrix with rows padded to whole 64-byte cache lines and the first row
/// aligned to a line. Why: with 100 dims a row is 400 bytes, so unpadded rows share lines
/// with their neighbours; a vocabulary sorted by frequency puts the hottest rows (the
/// ones both Hogwild threads write most) side by side, and every write to one invalidated
/// the other thread's copy of the next (false sharing). Padding floats stay zero: no
/// access reaches past `dim`.
pub struct HogwildMatrix {
    buf: Vec<f32>,
    off: usize,
    rows: usize,
    dim: usize,
    stride: usize,
}

impl HogwildMatrix {
    /// `rows × dim` zeros.
    pub fn zeros(rows: usize, dim: usize) -> Self {
        let stride = dim.div_ceil(16) * 16;
        let buf = vec![0f32; rows * stride + 16];
        let off = buf.as_ptr().align_offset(64).min(15);
        Self { buf, off, rows, dim, stride }
    }

    /// Floats from one row's start to the next's (`dim` rounded up to 16).
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Row `i`, exclusively (no threads share the matrix while it is borrowed mutably).
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        let s = self.off + i * self.stride;
        &mut self.buf[s..s + self.dim]
    }

    /// The rows without padding, `rows × dim` row-major.
    pub fn compact(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.dim);
        for i in 0..self.rows {
            let s = self.off + i * self.stride;
            out.extend_from_slice(&self.buf[s..s + self.dim]);
        }
        out
    }

    /// A view that threads share, for as long as the matrix is borrowed.
    pub fn shared(&mut self) -> HogwildRows<'_> {
        let ptr = SendPtr::new(self.buf[self.off..].as_mut_ptr());
        HogwildRows { ptr, rows: self.rows, dim: self.dim, stride: self.stride, _matrix: PhantomData }
    }
}

/// The rows of a [`HogwildMatrix`] as every training thread sees them (Hogwild).
#[derive(Clone, Copy)]
pub struct HogwildRows<'a> {
    ptr: SendPtr<f32>,
    rows: usize,
    dim: usize,
    stride: usize,
    _matrix: PhantomData<&'a mut HogwildMatrix>,
}

impl HogwildRows<'_> {
    /// Row `i` (panics unless `i < rows`), for reading and updating in place.
    ///
    /// Racy by design: other threads may read and write the same row at the same time
    /// (the Hogwild race described in the module docs: a lost or torn float update, never
    /// an access outside the matrix). A caller keeps each slice only for one update and
    /// does not hold two slices of the same row at once on one thread (word2vec's loops
    /// hold one input row and one output row, from two different matrices).
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    pub fn row(&self, i: usize) -> &mut [f32] {
        assert!(i < self.rows, "row {i} of a {}-row matrix", self.rows);
        // SAFETY: i < rows, and rows·stride floats (plus alignment slack) follow `ptr` in
        // the matrix's buffer, which the borrow `'a` keeps alive and unmoved; the slice
        // covers `dim ≤ stride` floats of row i only. Concurrent access to the same row
        // from other threads is the accepted Hogwild race (module docs).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * self.stride), self.dim) }
    }

    /// Ask for row `i`'s cache lines, with intent to write, ahead of use. word2vec's update
    /// is bound by the latency of these loads (perf: the first FMA on a freshly drawn output
    /// row took 20–27% of all samples); asking for all rows of one update at once lets
    /// their misses overlap instead of being paid one row after the other.
    #[inline(always)]
    pub fn prefetch(&self, i: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
            // wrapping: a prefetch never faults, and an index past the end costs nothing.
            let p = self.ptr.get().wrapping_add(i.wrapping_mul(self.stride)) as *const i8;
            let mut b = 0;
            while b < self.dim * 4 {
                // SAFETY: a prefetch is a hint: it never faults or changes memory, whatever
                // the address; SSE is part of baseline x86-64.
                unsafe { _mm_prefetch::<_MM_HINT_ET0>(p.wrapping_add(b)) };
                b += 64;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_matrix_rows_are_line_aligned_and_compact_back() {
        let mut m = HogwildMatrix::zeros(5, 100);
        assert_eq!(m.stride(), 112);
        for i in 0..5 {
            for (k, x) in m.row_mut(i).iter_mut().enumerate() {
                *x = (i * 1000 + k) as f32;
            }
        }
        let sh = m.shared();
        for i in 0..5 {
            let r = sh.row(i);
            assert_eq!(r.as_ptr() as usize % 64, 0, "row {i} not on a cache line");
            assert_eq!(r.len(), 100);
        }
        let c = m.compact();
        assert_eq!(c.len(), 500);
        assert!(c.iter().enumerate().all(|(j, &x)| x == ((j / 100) * 1000 + j % 100) as f32));
    }

    #[test]
    #[should_panic(expected = "row 5 of a 5-row matrix")]
    fn a_row_past_the_end_panics() {
        let mut m = HogwildMatrix::zeros(5, 3);
        m.shared().row(5);
    }
}
