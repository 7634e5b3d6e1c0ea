//! Dense-vector store: one f32 vector per passage in a memory-mapped file, searched by cosine
//! similarity (exhaustive top-k, exact).
//!
//! Layout (little-endian):
//! ```text
//! magic    8 bytes  "FLMVEC\0\x01"
//! dim      u32
//! model    u32 length + UTF-8 bytes: the id of the embedding model that made the vectors
//! padding  zeros up to a multiple of 8
//! count    u64
//! ids      count × u64 (passage ids)
//! vectors  count × dim × f32
//! ```
//! The ids start 8-aligned and the vectors 4-aligned within the file, and a mapping starts on
//! a page, so both are read in place without copying.

use crate::RagError;
use memmap2::Mmap;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"FLMVEC\0\x01";

/// Write a store atomically. `vectors` holds `ids.len()` rows of `dim` values.
pub fn write_vector_store(path: &Path, model_id: &str, dim: usize, ids: &[u64], vectors: &[f32]) -> Result<(), RagError> {
    let invalid = |message: String| RagError::Invalid { path: path.into(), message };
    if dim == 0 {
        return Err(invalid("vector dimension must be positive".into()));
    }
    if vectors.len() != ids.len() * dim {
        return Err(invalid(format!("{} values for {} vectors of dimension {dim}", vectors.len(), ids.len())));
    }
    if let Some(i) = vectors.iter().position(|v| !v.is_finite()) {
        return Err(invalid(format!("vector {} holds a non-finite value", i / dim)));
    }
    let io = |error| RagError::Io { path: path.into(), error };
    let mut f = ferrolm_common::AtomicFile::create(path).map_err(io)?;
    let mut header = Vec::new();
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&u32::try_from(dim).map_err(|_| invalid("dimension too large".into()))?.to_le_bytes());
    header.extend_from_slice(&(model_id.len() as u32).to_le_bytes());
    header.extend_from_slice(model_id.as_bytes());
    while header.len() % 8 != 0 {
        header.push(0);
    }
    header.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    f.write_all(&header).map_err(io)?;
    let mut buf = Vec::with_capacity(ids.len() * 8);
    for id in ids {
        buf.extend_from_slice(&id.to_le_bytes());
    }
    f.write_all(&buf).map_err(io)?;
    let mut buf = Vec::with_capacity(1 << 20);
    for chunk in vectors.chunks(1 << 18) {
        buf.clear();
        for v in chunk {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        f.write_all(&buf).map_err(io)?;
    }
    f.commit().map_err(io)
}

/// An open store.
pub struct VectorStore {
    path: PathBuf,
    map: Mmap,
    dim: usize,
    count: usize,
    model_id: String,
    ids_at: usize,
    vectors_at: usize,
    /// L2 norms of the stored vectors, computed once at open.
    norms: Vec<f32>,
}

impl VectorStore {
    /// Open and check a store. `expected_model`, when given, must equal the store's model id.
    pub fn open(path: &Path, expected_model: Option<&str>) -> Result<Self, RagError> {
        let invalid = |message: String| RagError::Invalid { path: path.into(), message };
        let file = std::fs::File::open(path).map_err(|error| RagError::Io { path: path.into(), error })?;
        // SAFETY: the file is only ever replaced by rename (atomic writes), never modified in
        // place, so the mapped bytes do not change under us.
        let map = unsafe { Mmap::map(&file) }.map_err(|error| RagError::Io { path: path.into(), error })?;
        if map.len() < 16 || &map[..8] != MAGIC {
            return Err(invalid("not a ferrolm vector store (bad magic)".into()));
        }
        let u32_at = |at: usize| u32::from_le_bytes(map[at..at + 4].try_into().expect("4 bytes"));
        let dim = u32_at(8) as usize;
        let name_len = u32_at(12) as usize;
        let mut at = 16 + name_len;
        if dim == 0 || at > map.len() {
            return Err(invalid("truncated or corrupt header".into()));
        }
        let model_id = std::str::from_utf8(&map[16..at]).map_err(|_| invalid("model id is not UTF-8".into()))?.to_string();
        at = at.div_ceil(8) * 8;
        if at + 8 > map.len() {
            return Err(invalid("truncated header".into()));
        }
        let count = u64::from_le_bytes(map[at..at + 8].try_into().expect("8 bytes")) as usize;
        let ids_at = at + 8;
        let vectors_at = ids_at + count * 8;
        let expected_len = vectors_at + count * dim * 4;
        if map.len() != expected_len {
            return Err(invalid(format!(
                "{} bytes, but a header of {count} vectors of dimension {dim} needs {expected_len}",
                map.len()
            )));
        }
        if let Some(want) = expected_model {
            if want != model_id {
                return Err(RagError::EmbeddingMismatch { path: path.into(), found: Some(model_id), wanted: Some(want.into()) });
            }
        }
        let mut store = Self { path: path.into(), map, dim, count, model_id, ids_at, vectors_at, norms: Vec::new() };
        store.norms = (0..count).map(|i| store.vector(i).iter().map(|x| x * x).sum::<f32>().sqrt()).collect();
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn len(&self) -> usize {
        self.count
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Passage id of row `i`.
    pub fn id(&self, i: usize) -> u64 {
        let at = self.ids_at + i * 8;
        u64::from_le_bytes(self.map[at..at + 8].try_into().expect("8 bytes"))
    }

    /// Row `i`, read in place.
    pub fn vector(&self, i: usize) -> &[f32] {
        let bytes = &self.map[self.vectors_at + i * self.dim * 4..self.vectors_at + (i + 1) * self.dim * 4];
        f32_slice(bytes)
    }

    /// The `k` rows most similar to `query` by cosine, best first, as (passage id, cosine).
    /// Zero vectors (no direction) are never returned; ties go to the lower row.
    pub fn top_k(&self, query: &[f32], k: usize) -> Result<Vec<(u64, f32)>, RagError> {
        if query.len() != self.dim {
            return Err(RagError::Invalid {
                path: self.path.clone(),
                message: format!("query vector has dimension {}, the store {}", query.len(), self.dim),
            });
        }
        let qn = query.iter().map(|x| x * x).sum::<f32>().sqrt();
        if qn == 0.0 || k == 0 {
            return Ok(Vec::new());
        }
        // A bounded list kept sorted: k is small next to the number of rows.
        let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
        for i in 0..self.count {
            if self.norms[i] == 0.0 {
                continue;
            }
            let v = self.vector(i);
            let dot: f32 = v.iter().zip(query).map(|(a, b)| a * b).sum();
            let cos = dot / (self.norms[i] * qn);
            if best.len() == k && cos <= best[k - 1].0 {
                continue;
            }
            let at = best.partition_point(|&(c, _)| c >= cos);
            best.insert(at, (cos, i));
            best.truncate(k);
        }
        Ok(best.into_iter().map(|(c, i)| (self.id(i), c)).collect())
    }
}

/// The f32 values of little-endian bytes, in place (the offsets are 4-aligned in a page-aligned
/// mapping; checked).
fn f32_slice(bytes: &[u8]) -> &[f32] {
    #[cfg(target_endian = "big")]
    compile_error!("the vector store reads little-endian f32 in place");
    // SAFETY: every bit pattern is a valid f32; alignment is checked by align_to's contract
    // (an unaligned start would leave a prefix, which the assert rejects).
    let (pre, vals, post) = unsafe { bytes.align_to::<f32>() };
    assert!(pre.is_empty() && post.is_empty(), "vector data not 4-aligned");
    vals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_cosine_top_k() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.f32");
        // Odd model-id length exercises the header padding.
        let ids = [10u64, 20, 30, 40, 50];
        #[rustfmt::skip]
        let vectors = [
            1.0, 0.0, 0.0,
            0.0, 2.0, 0.0,
            1.0, 1.0, 0.0,
            0.0, 0.0, 0.0,   // no direction: never returned
            -3.0, 0.0, 0.0,
        ];
        write_vector_store(&path, "enc-x", 3, &ids, &vectors).unwrap();
        let s = VectorStore::open(&path, Some("enc-x")).unwrap();
        assert_eq!((s.dim(), s.len(), s.model_id()), (3, 5, "enc-x"));
        assert_eq!(s.vector(2), &[1.0, 1.0, 0.0]);
        assert_eq!(s.id(4), 50);
        let top = s.top_k(&[2.0, 1.0, 0.0], 3).unwrap();
        let ids: Vec<u64> = top.iter().map(|t| t.0).collect();
        // cos to (1,0,0) = 2/√5 = .894, to (1,1,0) = 3/√10 = .949, to (0,2,0) = 1/√5 = .447.
        assert_eq!(ids, [30, 10, 20]);
        assert!((top[0].1 - 3.0 / 10f32.sqrt()).abs() < 1e-6);
        assert!((top[1].1 - 2.0 / 5f32.sqrt()).abs() < 1e-6);
        // Everything, including the opposite vector, last with cosine -1.
        let all = s.top_k(&[1.0, 0.0, 0.0], 10).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[3], (50, -1.0));
        assert!(s.top_k(&[1.0, 0.0], 1).is_err());
    }

    #[test]
    fn top_k_agrees_with_a_full_sort() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.f32");
        let (n, dim) = (200usize, 16usize);
        // A fixed pseudo-random sequence (xorshift) so the test needs no rand.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let vectors: Vec<f32> = (0..n * dim).map(|_| next()).collect();
        let query: Vec<f32> = (0..dim).map(|_| next()).collect();
        let ids: Vec<u64> = (0..n as u64).map(|i| i * 3).collect();
        write_vector_store(&path, "m", dim, &ids, &vectors).unwrap();
        let s = VectorStore::open(&path, None).unwrap();
        let mut all: Vec<(u64, f32)> = (0..n)
            .map(|i| {
                let v = &vectors[i * dim..(i + 1) * dim];
                let dot: f32 = v.iter().zip(&query).map(|(a, b)| a * b).sum();
                let nv: f32 = v.iter().map(|a| a * a).sum::<f32>().sqrt();
                let nq: f32 = query.iter().map(|a| a * a).sum::<f32>().sqrt();
                (ids[i], dot / (nv * nq))
            })
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top = s.top_k(&query, 7).unwrap();
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), all[..7].iter().map(|t| t.0).collect::<Vec<_>>());
    }

    #[test]
    fn other_model_truncation_and_bad_input_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.f32");
        write_vector_store(&path, "model-a", 2, &[1, 2], &[1.0, 0.0, 0.0, 1.0]).unwrap();
        let err = VectorStore::open(&path, Some("model-b")).err().unwrap().to_string();
        assert!(err.contains("model-a") && err.contains("model-b"), "{err}");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let err = VectorStore::open(&path, None).err().unwrap().to_string();
        assert!(err.contains("needs"), "{err}");
        assert!(write_vector_store(&path, "m", 2, &[1], &[1.0]).is_err());
        assert!(write_vector_store(&path, "m", 2, &[1], &[f32::NAN, 1.0]).is_err());
    }
}
