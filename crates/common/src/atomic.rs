//! Atomic output files: a reader either sees the previous complete file or the new
//! complete file, never a half-written one. We write to a hidden temporary file in the
//! same directory (so `rename` stays on one filesystem), fsync it, then rename it over
//! the destination and fsync the directory.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// A file that appears at `path` only when [`AtomicFile::commit`] is called.
/// Dropping it without committing removes the temporary file.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let dir = parent_dir(&path);
        fs::create_dir_all(&dir)?;
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?
            .to_string_lossy()
            .into_owned();
        // Unique per process and per file opened, so threads of one process (the ranks of
        // a data-parallel test, parallel writers) never share a temporary file.
        static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        let file = File::create(&tmp)?;
        Ok(Self { path, tmp, writer: Some(BufWriter::with_capacity(1 << 20, file)) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flush, fsync and rename into place.
    pub fn commit(mut self) -> io::Result<()> {
        let writer = self.writer.take().expect("writer present until commit");
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&self.tmp, &self.path)?;
        // Make the rename itself durable; ignore failures on filesystems without dir fsync.
        if let Ok(d) = File::open(parent_dir(&self.path)) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.as_mut().expect("not committed").write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.as_mut().expect("not committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Move the complete folder `new` to `dest`, replacing any folder already there, such that at
/// every moment `dest` is either the old complete folder or the new one. (Removing the old
/// folder and then renaming left a moment with no folder, or a half-deleted one, at `dest`.)
/// On Linux the two are swapped with `renameat2(RENAME_EXCHANGE)` and the old one, now at
/// `new`, is removed; a crash before that leaves it there under `new`'s (temporary) name.
/// Elsewhere, or where the filesystem cannot swap, the old folder is first renamed aside, so
/// the moment without a folder at `dest` remains (between two renames).
pub fn replace_dir(new: &Path, dest: &Path) -> io::Result<()> {
    if !dest.exists() {
        return fs::rename(new, dest);
    }
    if ferrolm_kernels::fs::exchange(new, dest).is_ok() {
        return fs::remove_dir_all(new);
    }
    let aside = new.with_extension("old");
    if aside.exists() {
        fs::remove_dir_all(&aside)?;
    }
    fs::rename(dest, &aside)?;
    fs::rename(new, dest)?;
    fs::remove_dir_all(&aside)
}

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> io::Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes.as_ref())?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_file_never_appears() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.bin");
        {
            let mut f = AtomicFile::create(&p).unwrap();
            f.write_all(b"partial").unwrap();
            // dropped without commit, as on a crash mid-write
        }
        assert!(!p.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "temp file cleaned up");
    }

    #[test]
    fn replace_dir_swaps_a_full_folder_for_another() {
        let dir = tempfile::tempdir().unwrap();
        let (new, dest) = (dir.path().join(".tmp-x"), dir.path().join("x"));
        for (d, content) in [(&dest, "old"), (&new, "new")] {
            fs::create_dir_all(d).unwrap();
            fs::write(d.join("a"), content).unwrap();
            fs::write(d.join("b"), content).unwrap();
        }
        replace_dir(&new, &dest).unwrap();
        assert_eq!(fs::read_to_string(dest.join("a")).unwrap(), "new");
        assert_eq!(fs::read_to_string(dest.join("b")).unwrap(), "new");
        assert!(!new.exists(), "the old folder is removed");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // into a place that is free, a plain rename
        let other = dir.path().join("y");
        fs::create_dir_all(&new).unwrap();
        replace_dir(&new, &other).unwrap();
        assert!(other.is_dir() && !new.exists());
    }

    #[test]
    fn commit_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.txt");
        write_atomic(&p, b"old contents that are long").unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
    }
}
