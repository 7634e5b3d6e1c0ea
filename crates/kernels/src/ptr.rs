//! The one pointer type that crosses threads and the one strided-matrix type the matrix
//! products take. Plain Rust (no candle).

/// A raw pointer that tasks on other threads may use. The pointer itself carries no
/// guarantee: whoever shares it states why the accesses through it do not conflict (each
/// task writes its own disjoint rows or columns; or, for Hogwild rows, the race is the
/// design). Read it through [`SendPtr::get`] or [`SendPtr::add`], which capture the
/// wrapper in a closure rather than its raw (not `Send`) field.
pub struct SendPtr<T>(*mut T);

impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}

// SAFETY: a raw pointer is only `!Send` as a lint against accidental sharing; every place
// that shares a `SendPtr` documents why its accesses are disjoint (or racy by design).
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as for `Send`: the wrapper only hands out the raw pointer, whose uses are unsafe
// and justified where they happen.
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    pub fn new(ptr: *mut T) -> Self {
        Self(ptr)
    }

    /// The pointer.
    #[inline(always)]
    pub fn get(self) -> *mut T {
        self.0
    }

    /// The pointer `offset` elements on.
    ///
    /// # Safety
    /// As for [`pointer::add`]: the result must stay inside the allocation (or one past it).
    #[inline(always)]
    pub unsafe fn add(self, offset: usize) -> *mut T {
        // SAFETY: the caller keeps the offset inside the allocation.
        unsafe { self.0.add(offset) }
    }
}

/// A read-only f32 matrix given by its first element and row/column strides (in
/// elements): any layout, transposed views included, as the `gemm` crate and the AMX
/// packers take it. Destinations are written through a `*mut f32` with a row stride and
/// column stride 1.
#[derive(Clone, Copy)]
pub struct Strided {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

// SAFETY: the matrix is only read, and only inside the unsafe products whose callers
// guarantee that it stays alive and unwritten for the product's duration.
unsafe impl Send for Strided {}
// SAFETY: as for `Send`: shared read-only access.
unsafe impl Sync for Strided {}

impl Strided {
    /// A row-major matrix with `cols` columns starting at `v`.
    pub fn row_major(v: &[f32], cols: usize) -> Self {
        Self { ptr: v.as_ptr(), rs: cols as isize, cs: 1 }
    }

    /// The same matrix starting `offset` elements later (the next item of a batch).
    ///
    /// # Safety
    /// The offset must stay inside the allocation the matrix points into.
    #[inline(always)]
    pub unsafe fn skip(self, offset: usize) -> Self {
        // SAFETY: the caller keeps the offset inside the allocation.
        Self { ptr: unsafe { self.ptr.add(offset) }, ..self }
    }
}
