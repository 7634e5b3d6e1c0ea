//! The one system call ferrolm makes without a safe wrapper in std (feature `fs`).

use std::io;
use std::path::Path;

/// Swap the two paths `a` and `b` in one atomic step (`renameat2(RENAME_EXCHANGE)`), so
/// that at every moment each name points at a complete entry. `ferrolm_common::replace_dir`
/// uses it to replace a checkpoint folder. Fails with `Unsupported` off Linux and with the
/// OS error where the filesystem cannot swap; the caller then falls back to two renames.
#[cfg(target_os = "linux")]
pub fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cstr = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let (a, b) = (cstr(a)?, cstr(b)?);
    // SAFETY: two valid NUL-terminated paths that live across the call; renameat2 only
    // reads them and touches no memory of ours.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
pub fn exchange(_: &Path, _: &Path) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "no atomic exchange"))
}
