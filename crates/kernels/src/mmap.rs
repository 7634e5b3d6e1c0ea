//! Read-only memory maps of files that are never modified in place (feature `mmap`, plain
//! Rust). Token shards and binary n-gram models are read this way.

use std::fs::File;

/// A read-only map of a file.
pub type Map = memmap2::Mmap;

/// Maps `file` read-only.
///
/// Mapping is `unsafe` in memmap2 because another process could truncate or rewrite the
/// file while it is mapped, which would change (or unmap) memory behind a `&[u8]`. The
/// files ferrolm maps are written to a temporary name and renamed into place complete
/// (`ferrolm_common::atomic`), never modified in place, so a mapping always sees one
/// complete, unchanging file. Call it only for such files.
pub fn map_immutable(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the file is only read, and the files ferrolm maps are replaced by rename,
    // never truncated or written in place (see above), so the mapped bytes do not change.
    unsafe { memmap2::Mmap::map(file) }
}

/// Drop the whole pages inside `map[at..at + len]` from this process: bytes that were
/// copied out and are not read again (a checkpoint's tensor, once it is a tensor). They stay
/// in the page cache; only this process's resident set shrinks, so a checkpoint read tensor
/// by tensor never holds both the whole file and all its tensors.
pub fn release_pages(map: &memmap2::Mmap, at: usize, len: usize) {
    const PAGE: usize = 4096;
    let (first, end) = (at.next_multiple_of(PAGE), (at + len).min(map.len()) / PAGE * PAGE);
    if end > first {
        // SAFETY: MADV_DONTNEED on a private read-only file mapping drops the pages from this
        // process; a later read of them faults the file's unchanged bytes back in (the files
        // mapped here are never modified in place: `map_immutable`), so no slice of the map
        // ever sees other bytes. The advice is only a hint: its failure changes nothing.
        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, end - first) };
    }
}
