//! Retrieve, then read: `ferrolm rag ask` and the reader half of `rag eval --model`.
//!
//! Retrieval is BM25, dense (the index's own encoder embeds the query) or hybrid (the two
//! rankings fused by weighted reciprocal rank). The reader is either extractive (a span
//! reader run folder: the best span over the retrieved passages, or no answer when the null
//! span wins by more than the tuned threshold) or generative (a chat/causal model: the
//! passages, numbered, go into the chat template with instructions to answer only from them
//! and to cite them as [1], [2]).

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use ferrolm_model::AnyModel;
use ferrolm_rag::{Passage, RagIndex};
use ferrolm_tokenizer::{ChatTemplate, Message, Tokenizer};
use serde::Serialize;

use crate::embed::{model_of_id, Embedder, Pooling};
use crate::reader::{is_reader, LoadedReader};

/// Which ranking retrieval uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bm25,
    Dense,
    Hybrid,
}

impl std::str::FromStr for Mode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "bm25" => Ok(Self::Bm25),
            "dense" => Ok(Self::Dense),
            "hybrid" => Ok(Self::Hybrid),
            _ => bail!("retrieval mode must be bm25, dense or hybrid, got {s:?}"),
        }
    }
}

/// An index and, for dense and hybrid retrieval, the encoder its vectors came from.
pub struct Retriever {
    pub index: RagIndex,
    embedder: Option<Embedder>,
    pub mode: Mode,
    /// The dense ranking's weight in hybrid fusion (BM25's is 1).
    pub dense_weight: f64,
}

impl Retriever {
    /// Open `index_dir` for `mode`. Dense and hybrid retrieval load the encoder recorded in
    /// the index (or `embed`, which must be that same model); vectors made by other weights
    /// are refused with a message saying how to rebuild them.
    pub fn open(index_dir: &Path, mode: Mode, embed: Option<&Path>, dense_weight: f64, device: &Device) -> Result<Self> {
        let index = RagIndex::open(index_dir, None)?;
        let embedder = if mode == Mode::Bm25 {
            None
        } else {
            let recorded = index.manifest().embedding_model.clone();
            let Some(recorded) = recorded.filter(|_| index.vectors().is_some()) else {
                bail!("{}: the index has no dense vectors; add them with `ferrolm rag index --embed MODEL --out {0}`", index_dir.display());
            };
            let (dir, pooling) = model_of_id(&recorded)?;
            let dir = embed.map(Path::to_path_buf).unwrap_or(dir);
            let e = Embedder::load(&dir, pooling, device).with_context(|| format!("loading the index's embedding model {}", dir.display()))?;
            if e.id() != recorded {
                bail!(ferrolm_rag::RagError::EmbeddingMismatch {
                    path: index_dir.join("manifest.json"),
                    found: Some(recorded),
                    wanted: Some(e.id().to_string()),
                });
            }
            Some(e)
        };
        Ok(Self { index, embedder, mode, dense_weight })
    }

    /// Passage ids and scores for `query`, best first, at most `k`.
    pub fn retrieve(&self, query: &str, k: usize) -> Result<Vec<(u64, f64)>> {
        let qv = || -> Result<Vec<f32>> {
            let e = self.embedder.as_ref().context("no encoder loaded")?;
            Ok(e.embed(&[query])?.pop().unwrap_or_default())
        };
        Ok(match self.mode {
            Mode::Bm25 => self.index.bm25(query, k)?.into_iter().map(|(i, s)| (i, f64::from(s))).collect(),
            Mode::Dense => self.index.dense(&qv()?, k)?.into_iter().map(|(i, s)| (i, f64::from(s))).collect(),
            Mode::Hybrid => {
                let mut v = self.index.hybrid_weighted(query, &qv()?, k.max(50), self.dense_weight)?;
                v.truncate(k);
                v
            }
        })
    }

    /// The passages of [`Self::retrieve`].
    pub fn passages(&self, query: &str, k: usize) -> Result<Vec<Passage>> {
        let mut out = Vec::new();
        for (id, _) in self.retrieve(query, k)? {
            out.extend(self.index.passage(id)?);
        }
        Ok(out)
    }
}

/// A reader: extractive span reader or generative chat model.
pub enum Reader {
    Extractive(Box<LoadedReader>),
    Generative(Box<GenerativeReader>),
}

/// A chat/causal model that answers from numbered passages.
pub struct GenerativeReader {
    pub model: AnyModel,
    pub tok: Tokenizer,
    pub tpl: ChatTemplate,
    pub max_seq_len: usize,
}

impl Reader {
    /// A span reader folder (with `qa.toml`) reads extractively; a causal or prefix decoder
    /// generates.
    pub fn load(run_dir: &Path, device: &Device) -> Result<Self> {
        if is_reader(run_dir) {
            return Ok(Self::Extractive(Box::new(LoadedReader::load(run_dir, device)?)));
        }
        let loaded = ferrolm_model::load_model(run_dir, device)?;
        let m = loaded.model.decoder("a generative reader")?;
        let max_seq_len = m.config().max_seq_len;
        let tok = ferrolm_finetune::prompt::load_tokenizer(run_dir)?;
        let tpl = ferrolm_finetune::prompt::load_template(run_dir)?;
        Ok(Self::Generative(Box::new(GenerativeReader { model: loaded.model, tok, tpl, max_seq_len })))
    }
}

/// An answer with the passages it was read from.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    /// The answer ("" when the reader found none).
    pub text: String,
    /// 1-based numbers of the passages the answer cites (extractive: the one it was cut from).
    pub cited: Vec<usize>,
    /// The retrieved passages, in the order they were numbered.
    pub passages: Vec<Passage>,
    /// Extractive only: null score − span score (no answer above the threshold).
    pub null_margin: Option<f64>,
}

/// Instructions given to a generative reader.
pub const GENERATIVE_INSTRUCTIONS: &str = "Answer the question using only the numbered passages below. Cite the passages you use as [1], [2]. If the passages do not contain the answer, say that you do not know.";

/// Answer `question` from `passages` with `reader`.
pub fn read(reader: &Reader, question: &str, passages: Vec<Passage>, max_tokens: usize) -> Result<Answer> {
    match reader {
        Reader::Extractive(r) => {
            let texts: Vec<&str> = passages.iter().map(|p| p.text.as_str()).collect();
            let a = r.answer(question, &texts)?;
            let text = r.decide(&a);
            let cited = if text.is_empty() { vec![] } else { vec![a.context + 1] };
            Ok(Answer { text, cited, null_margin: Some(a.null_margin()), passages })
        }
        Reader::Generative(g) => {
            let GenerativeReader { model, tok, tpl, max_seq_len } = g.as_ref();
            // Drop the lowest-ranked passages until the prompt leaves room for the answer.
            let mut n = passages.len();
            let ids = loop {
                let ids = ferrolm_finetune::prompt::prompt_ids(tok, tpl, &generative_messages(question, &passages[..n]));
                if ids.len() + max_tokens <= *max_seq_len || n == 0 {
                    break ids;
                }
                n -= 1;
            };
            if ids.len() + max_tokens > *max_seq_len {
                bail!("the question alone ({} tokens with the instructions) leaves no room for a {max_tokens}-token answer in a {max_seq_len}-token context", ids.len());
            }
            let cfg = ferrolm_infer::GenerateConfig {
                max_tokens,
                stop_tokens: ferrolm_finetune::prompt::stop_tokens(tok, tpl),
                sampling: ferrolm_infer::SamplingConfig { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 },
            };
            let out = ferrolm_infer::generate_any(model, &ids, tok.eot_id(), &cfg, |_| true)?;
            let text = ferrolm_finetune::prompt::answer_text(tok, tpl, &out);
            let mut passages = passages;
            passages.truncate(n);
            let cited = citations(&text, passages.len());
            Ok(Answer { text, cited, passages, null_margin: None })
        }
    }
}

/// The chat of a generative reader: instructions, then the numbered passages and the question.
pub fn generative_messages(question: &str, passages: &[Passage]) -> Vec<Message> {
    let mut user = String::new();
    for (i, p) in passages.iter().enumerate() {
        user.push_str(&format!("[{}] {}\n\n", i + 1, p.text.trim()));
    }
    user.push_str(&format!("Question: {question}"));
    vec![Message::system(GENERATIVE_INSTRUCTIONS), Message::user(user)]
}

/// The passage numbers `[n]` cited in `text` (1 ≤ n ≤ `count`), in order of first citation.
pub fn citations(text: &str, count: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'[' {
            let j = i + 1 + b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if j > i + 1 && j < b.len() && b[j] == b']' {
                if let Ok(n) = text[i + 1..j].parse::<usize>() {
                    if (1..=count).contains(&n) && !out.contains(&n) {
                        out.push(n);
                    }
                }
            }
        }
        i += 1;
    }
    out
}

/// A reader's figures behind retrieval (`rag eval --model`).
#[derive(Debug, Clone, Serialize)]
pub struct ReadingReport {
    /// Passages retrieved per question and handed to the reader.
    pub passages_per_question: usize,
    pub all: crate::EmF1,
    pub has_ans: crate::EmF1,
    pub no_ans: crate::EmF1,
    /// Questions whose paragraph was among the passages read.
    pub paragraph_retrieved: f64,
}

/// Retrieve `k` passages for every question of `qa` and read them: EM/F1 of the answers
/// (SQuAD 2.0's official definitions; "" is the no-answer prediction).
pub fn evaluate_reading(retriever: &Retriever, reader: &Reader, qa: &Path, k: usize, max_tokens: usize) -> Result<ReadingReport> {
    let (questions, problems) = ferrolm_rag::squad::load_questions(qa)?;
    for p in &problems {
        eprintln!("{}: malformed question {p}", qa.display());
    }
    let bar = ferrolm_common::progress::bar(questions.len() as u64, "questions read");
    let mut preds = Vec::with_capacity(questions.len());
    let mut hit = 0usize;
    for q in &questions {
        let passages = retriever.passages(&q.question, k)?;
        hit += usize::from(passages.iter().any(|p| p.doc == q.paragraph));
        preds.push(read(reader, &q.question, passages, max_tokens)?.text);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let (all, has_ans, no_ans) = crate::data::score_texts(&questions, &preds);
    let n = questions.len().max(1) as f64;
    Ok(ReadingReport { passages_per_question: k, all, has_ans, no_ans, paragraph_retrieved: hit as f64 / n })
}

/// The embedding pooling named on the command line.
pub fn parse_pooling(s: &str) -> Result<Pooling> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn citations_are_read_in_order_and_bounded() {
        assert_eq!(citations("Rollo [2], as [1] and [2] say; [7] [x] [", 3), vec![2, 1]);
        assert_eq!(citations("no citation", 3), Vec::<usize>::new());
    }
}
