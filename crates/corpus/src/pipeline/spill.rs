//! Where surviving documents wait between segments: memory for in-memory runs, a work
//! file read back in parallel blocks when streaming.

use super::*;

pub(super) type SpillIter = Box<dyn Iterator<Item = Result<(u64, Document)>>>;

/// Where surviving documents go between segments.
pub(super) enum Spill {
    Mem(Vec<(u64, Document)>),
    File { path: PathBuf, w: BufWriter<std::fs::File> },
}

#[derive(Serialize, Deserialize)]
pub(super) struct SpillRec {
    pub(super) seq: u64,
    pub(super) doc: Document,
}

impl Spill {
    /// Add a batch of survivors. File spills serialize the batch in parallel, then write it.
    pub(super) fn push_batch(&mut self, batch: Vec<(u64, Document)>) -> Result<()> {
        match self {
            Spill::Mem(v) => v.extend(batch),
            Spill::File { path, w } => {
                let lines: Vec<std::result::Result<Vec<u8>, serde_json::Error>> = batch
                    .into_par_iter()
                    .map(|(seq, doc)| {
                        let mut line = serde_json::to_vec(&SpillRec { seq, doc })?;
                        line.push(b'\n');
                        Ok(line)
                    })
                    .collect();
                for l in lines {
                    let l = l.map_err(|e| CorpusError::Invalid { path: path.clone(), message: e.to_string() })?;
                    w.write_all(&l).map_err(io_err(path))?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn into_iter(self) -> Result<SpillIter> {
        Ok(match self {
            Spill::Mem(v) => Box::new(v.into_iter().map(Ok)),
            Spill::File { path, w } => {
                w.into_inner().map_err(|e| io_err(&path)(e.into_error()))?;
                let f = std::fs::File::open(&path).map_err(io_err(&path))?;
                let _ = std::fs::remove_file(&path); // unlinked now; the open handle still reads it
                Box::new(SpillReader { path, r: BufReader::with_capacity(1 << 20, f), ready: Default::default(), done: false })
            }
        })
    }
}

/// Reads a spill file back in blocks of lines, parsing each block in parallel, in order.
pub(super) struct SpillReader {
    pub(super) path: PathBuf,
    pub(super) r: BufReader<std::fs::File>,
    pub(super) ready: std::collections::VecDeque<Result<(u64, Document)>>,
    pub(super) done: bool,
}

impl SpillReader {
    const BLOCK: usize = 16 << 20;

    pub(super) fn fill(&mut self) {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut bytes = 0;
        while bytes < Self::BLOCK {
            let mut l = Vec::new();
            match self.r.read_until(b'\n', &mut l) {
                Ok(0) => {
                    self.done = true;
                    break;
                }
                Ok(n) => {
                    bytes += n;
                    lines.push(l);
                }
                Err(e) => {
                    self.ready.push_back(Err(io_err(&self.path)(e)));
                    self.done = true;
                    return;
                }
            }
        }
        let path = &self.path;
        let parsed: Vec<Result<(u64, Document)>> = lines
            .into_par_iter()
            .map(|l| {
                let r: SpillRec = serde_json::from_slice(&l).map_err(|e| CorpusError::Invalid { path: path.clone(), message: e.to_string() })?;
                Ok((r.seq, r.doc))
            })
            .collect();
        self.ready.extend(parsed);
    }
}

impl Iterator for SpillReader {
    type Item = Result<(u64, Document)>;
    fn next(&mut self) -> Option<Self::Item> {
        while self.ready.is_empty() && !self.done {
            self.fill();
        }
        self.ready.pop_front()
    }
}
