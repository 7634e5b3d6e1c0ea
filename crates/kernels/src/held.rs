//! Values a weight matrix holds: its own vector, or a range of a buffer shared with others —
//! a GGUF file's memory map, whose F16 and K-quant tensors are already the layout the kernels
//! read — so a model uses the file's bytes as its weights, as llama.cpp does, instead of a
//! copy. Plain Rust.

use std::sync::Arc;

/// A buffer a [`Held::Shared`] reads from (a file's map; any byte buffer in tests).
pub type Owner = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Element types whose every bit pattern is a value, stored little-endian in files.
pub trait Plain: Copy + 'static {}
impl Plain for u8 {}
impl Plain for u16 {}

/// `len` values of `T`: owned, or `owner`'s bytes from `offset` on, read in place.
#[derive(Clone)]
pub enum Held<T: Plain> {
    Owned(Vec<T>),
    Shared { owner: Owner, offset: usize, len: usize },
}

impl<T: Plain> Held<T> {
    /// `len` values of `T` at byte `offset` of `owner`, read in place; None when they do not
    /// fit in the buffer, are not aligned for `T`, or (for multi-byte `T`) the target is not
    /// little-endian — then the caller copies them.
    pub fn shared(owner: Owner, offset: usize, len: usize) -> Option<Self> {
        let size = std::mem::size_of::<T>();
        let bytes = (*owner).as_ref();
        let end = offset.checked_add(len.checked_mul(size)?)?;
        let aligned = (bytes.as_ptr() as usize).checked_add(offset)?.is_multiple_of(std::mem::align_of::<T>());
        if end > bytes.len() || !aligned || (size > 1 && !cfg!(target_endian = "little")) {
            return None;
        }
        Some(Held::Shared { owner, offset, len })
    }

    /// The values as an owned vector (a copy when shared).
    pub fn into_owned(self) -> Vec<T> {
        match self {
            Held::Owned(v) => v,
            shared => shared.to_vec(),
        }
    }
}

impl<T: Plain> std::ops::Deref for Held<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Held::Owned(v) => v,
            Held::Shared { owner, offset, len } => {
                let bytes = &(**owner).as_ref()[*offset..*offset + len * std::mem::size_of::<T>()];
                // SAFETY: `Held::shared` checked that these bytes lie in the buffer and start at
                // an address aligned for T (the buffer never moves: the Arc owns it); T is
                // `Plain` (every bit pattern a value) and, when wider than a byte, the target is
                // little-endian, as the file's values are.
                unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, *len) }
            }
        }
    }
}

impl<T: Plain> std::fmt::Debug for Held<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Held::Owned(v) => write!(f, "Owned({} values)", v.len()),
            Held::Shared { offset, len, .. } => write!(f, "Shared({len} values at byte {offset})"),
        }
    }
}
