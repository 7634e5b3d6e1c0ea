//! Hostile vector files (issue 18): a header's sizes are checked against the file before
//! anything is allocated, and every error names the file and the place.

fn write(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vectors.bin");
    std::fs::write(&p, bytes).unwrap();
    (dir, p)
}

#[test]
fn header_count_beyond_the_file_is_an_error_not_an_allocation() {
    // Before the fix: Vec::with_capacity(n * dim) overflowed (panic) or asked for terabytes.
    for header in ["4000000000000000 300\nthe 1 2\n", "3 6148914691236517206\n", "100000000 100000000\nx 1\n"] {
        let (_d, p) = write(header.as_bytes());
        let err = format!("{:#}", ferrolm_word2vec::read_vectors(&p).err().expect("must be refused"));
        assert!(err.contains("vectors.bin:1:") && err.contains("more than the file"), "{err}");
    }
}

#[test]
fn zero_dimension_is_an_error() {
    // Before the fix: accepted, then `normalized` panicked in chunks_exact(0).
    // "0 0": found by the fuzzer after the first fix, which still let an empty file through.
    for bytes in [&b"2 0\na\nb\n"[..], b"0 0\n"] {
        let (_d, p) = write(bytes);
        let err = format!("{:#}", ferrolm_word2vec::read_vectors(&p).err().expect("must be refused"));
        assert!(err.contains("vectors.bin:1:") && err.contains("dimension 0"), "{err}");
    }
}

#[test]
fn truncated_binary_names_the_vector() {
    let mut b = b"2 3\nthe ".to_vec();
    b.extend([0u8; 12]);
    b.extend(b"\ncat ");
    b.extend([0u8; 5]);
    let (_d, p) = write(&b);
    let err = format!("{:#}", ferrolm_word2vec::read_vectors(&p).err().expect("must be refused"));
    assert!(err.contains("vectors.bin") && err.contains("vector 1"), "{err}");
}
