//! Read-only memory maps of files that are never modified in place (feature `mmap`, plain
//! Rust). Token shards and binary n-gram models are read this way.

use std::fs::File;

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
