//! `POST /v1/embeddings`: vectors from an encoder served beside the chat model
//! (`ferrolm serve --embed-model RUN`), with OpenAI's request and response shapes.
//!
//! The encoder is ferrolm-qa's [`Embedder`] — the same weights and pooling that
//! `ferrolm rag index --embed` stores, so a vector from the API can be searched against an
//! index built by that model. Vectors are returned at unit length (as OpenAI's are), so a
//! dot product is the cosine similarity. The openai clients ask for `encoding_format:
//! "base64"` by default: little-endian f32 bytes in base64.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use candle_core::Device;
use ferrolm_qa::{Embedder, Pooling};
use serde_json::{json, Value};

use crate::api::EmbeddingRequest;
use crate::error::ApiError;
use crate::server::{parse, AppState};

/// Inputs one request may carry (OpenAI's limit).
const MAX_INPUTS: usize = 2048;

/// The encoder behind `/v1/embeddings` and the name clients call it by.
pub struct EmbedModel {
    pub name: String,
    embedder: Arc<Embedder>,
}

impl EmbedModel {
    pub fn load(run_dir: &Path, pooling: Pooling, name: Option<String>, device: &Device) -> Result<Self> {
        let embedder = Embedder::load(run_dir, pooling, device)?;
        let name = name.unwrap_or_else(|| {
            run_dir.canonicalize().unwrap_or_else(|_| run_dir.to_path_buf()).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "ferrolm-embed".into())
        });
        Ok(Self { name, embedder: Arc::new(embedder) })
    }

    pub fn dim(&self) -> usize {
        self.embedder.dim()
    }

    pub fn context_length(&self) -> usize {
        self.embedder.max_seq_len()
    }
}

/// The request's `input` as token sequences: a string, an array of strings, an array of
/// token ids, or an array of such arrays.
fn inputs(e: &Embedder, input: &Value) -> Result<Vec<Vec<u32>>, ApiError> {
    let bad = || ApiError::invalid("input", "`input` must be a string, an array of strings, an array of token ids, or an array of arrays of token ids");
    let ids_of = |v: &[Value]| -> Result<Vec<u32>, ApiError> {
        v.iter()
            .map(|x| match x.as_u64() {
                Some(id) if (id as usize) < e.vocab_size() => Ok(id as u32),
                Some(id) => Err(ApiError::invalid("input", format!("token id {id} is outside the vocabulary (size {})", e.vocab_size()))),
                None => Err(bad()),
            })
            .collect()
    };
    let seqs = match input {
        Value::String(s) => vec![e.tokens(s)],
        Value::Array(items) if items.is_empty() => return Err(ApiError::invalid("input", "`input` must not be an empty array")),
        Value::Array(items) if items.iter().all(Value::is_string) => items.iter().map(|s| e.tokens(s.as_str().unwrap_or_default())).collect(),
        Value::Array(items) if items.iter().all(Value::is_number) => vec![ids_of(items)?],
        Value::Array(items) if items.iter().all(Value::is_array) => {
            items.iter().map(|a| ids_of(a.as_array().map(Vec::as_slice).unwrap_or_default())).collect::<Result<_, _>>()?
        }
        _ => return Err(bad()),
    };
    if seqs.len() > MAX_INPUTS {
        return Err(ApiError::invalid("input", format!("at most {MAX_INPUTS} inputs per request, got {}", seqs.len())));
    }
    let limit = e.max_seq_len() - e.bos_len();
    for (i, s) in seqs.iter().enumerate() {
        if s.is_empty() {
            return Err(ApiError::invalid("input", format!("input {i} is empty")));
        }
        if s.len() > limit {
            return Err(ApiError::context_length(format!("input {i} has {} tokens; the embedding model takes at most {limit}", s.len())));
        }
    }
    Ok(seqs)
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

pub(crate) async fn embeddings(State(st): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let r = async {
        let req: EmbeddingRequest = parse(body, st.max_body)?;
        let Some(em) = &st.embed else {
            return Err(ApiError::unsupported(
                "model",
                format!("this server has no embedding model; start it with --embed-model RUN (a masked-LM encoder, or a decoder with mean pooling) to serve `/v1/embeddings` (`{}` is for chat and completions)", st.model_name),
            ));
        };
        if req.model != em.name {
            return Err(ApiError::model_not_found(&req.model, &em.name));
        }
        let base64 = match req.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => return Err(ApiError::invalid("encoding_format", format!("`encoding_format` must be \"float\" or \"base64\", got {other:?}"))),
        };
        if let Some(d) = req.dimensions {
            if d as usize != em.dim() {
                return Err(ApiError::invalid("dimensions", format!("this model's embeddings have {} dimensions; `dimensions` can only be {}", em.dim(), em.dim())));
            }
        }
        let seqs = inputs(&em.embedder, &req.input)?;
        let tokens: usize = seqs.iter().map(Vec::len).sum();
        let e = em.embedder.clone();
        let limit = e.max_seq_len();
        let vectors = tokio::task::spawn_blocking(move || e.embed_tokens(&seqs, limit))
            .await
            .map_err(|err| ApiError::internal(format!("the embedding task failed: {err}")))?
            .map_err(|err| ApiError::internal(format!("embedding failed: {err:#}")))?;
        let data: Vec<Value> = vectors
            .into_iter()
            .map(unit)
            .enumerate()
            .map(|(i, v)| {
                let embedding = if base64 {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(v)
                };
                json!({ "object": "embedding", "index": i, "embedding": embedding })
            })
            .collect();
        Ok(Json(json!({
            "object": "list",
            "data": data,
            "model": em.name,
            "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
        }))
        .into_response())
    }
    .await;
    r.unwrap_or_else(|e| e.into_response())
}
