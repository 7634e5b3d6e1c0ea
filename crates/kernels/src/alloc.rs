//! The allocator option the `ferrolm` binary sets at start-up. Plain Rust (no candle).
//!
//! The symbol comes from mimalloc's static library, which `libmimalloc-sys` links into the
//! binary that installs mimalloc as its global allocator (the CLI); this crate links
//! nothing. Only a binary that links mimalloc may call [`keep_freed_memory`].

extern "C" {
    /// mimalloc's runtime option setter (in the static library libmimalloc-sys links).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc v2's `mi_option_e` (libmimalloc-sys 0.1.49, pinned by
/// Cargo.lock; its Rust bindings do not name this option).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Keep freed memory mapped instead of handing it back to the OS 10 ms later (mimalloc's
/// default). Training frees and re-allocates the same multi-megabyte activations every
/// step; with purging, each one came back as fresh pages that the kernel zeroed on first
/// touch: 60k page faults in 10 steps of preset c2 and about 5% of its time in
/// `clear_page`, against 800 without. The cost is that memory freed late in a run is not
/// returned before exit. `MIMALLOC_PURGE_DELAY` in the environment still wins.
///
/// Call it only from a binary whose global allocator is mimalloc (the symbol must link).
#[inline] // instantiated only in the binary that calls it, which links mimalloc
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: a plain setter of an integer option, valid at any time, with an option
        // number of the mimalloc version Cargo.lock pins.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}
