//! A tiny model in a run folder, and a server on an ephemeral loopback port.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use ferrolm_model::{init_weights, ModelSpec, Transformer, TransformerConfig};
use ferrolm_serve::ServeConfig;
use ferrolm_tokenizer::{special, BpeTrainConfig, Tokenizer};
use serde_json::Value;

/// Write a run folder (config.toml, checkpoints/latest → step-0, tokenizer.json) holding a
/// randomly initialised 2-layer decoder: enough to exercise serving, trained for nothing.
pub fn tiny_run(dir: &Path, max_seq_len: usize) -> PathBuf {
    let text = "Hello there! How are you? I am fine, thank you. The answer is four. \
                What is two plus two? Tell me a story about a cat and a dog. Good, bad.\n"
        .repeat(20);
    let tok = Tokenizer::train_bpe(std::iter::once(text), &BpeTrainConfig { vocab_size: 300, min_frequency: 2, special_tokens: special::defaults() }).unwrap();
    let cfg = TransformerConfig { vocab_size: tok.vocab_size(), d_model: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, max_seq_len, ..Default::default() };
    let spec = ModelSpec::Transformer(cfg.clone());
    let vm = VarMap::new();
    let _m = Transformer::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    init_weights(&spec, &vm, 3).unwrap();
    // Larger than initial weights, so answers are not one token repeated.
    for v in vm.all_vars() {
        v.set(&(v.as_tensor() * 8.0).unwrap()).unwrap();
    }
    let run = dir.join("tiny-run");
    let ckpt = run.join("checkpoints").join("step-0");
    std::fs::create_dir_all(&ckpt).unwrap();
    let mut table = toml::Table::new();
    table.insert("model".into(), spec.to_value());
    std::fs::write(run.join("config.toml"), toml::to_string(&table).unwrap()).unwrap();
    vm.save(ckpt.join("model.safetensors")).unwrap();
    VarMap::new().save(ckpt.join("optimizer.safetensors")).unwrap();
    std::fs::write(ckpt.join("state.json"), "{}").unwrap();
    std::fs::write(run.join("checkpoints").join("latest"), "step-0").unwrap();
    tok.save(&run.join("tokenizer.json")).unwrap();
    run
}

pub struct Server {
    pub base: String,
    pub agent: ureq::Agent,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(cfg: ServeConfig) -> Server {
        let state = ferrolm_serve::load(&cfg, &Device::Cpu).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
        let grace = cfg.shutdown_grace;
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                ferrolm_serve::serve(listener, state, async move { let _ = rx.await; }, grace).await.unwrap();
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(120))).build().into();
        Server { base: format!("http://{addr}"), agent, stop: Some(tx), thread: Some(thread) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POST JSON (a raw body string), with an optional API key → (status, body text, retry-after).
    pub fn post_raw(&self, path: &str, body: &str, key: Option<&str>) -> (u16, String, Option<String>) {
        let mut req = self.agent.post(&self.url(path)).header("content-type", "application/json");
        if let Some(k) = key {
            req = req.header("authorization", &format!("Bearer {k}"));
        }
        let mut resp = req.send(body.as_bytes()).unwrap();
        let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap(), retry)
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (s, b, _) = self.post_raw(path, &body.to_string(), None);
        (s, serde_json::from_str(&b).unwrap_or_else(|e| panic!("not JSON ({e}): {b}")))
    }

    pub fn get(&self, path: &str, key: Option<&str>) -> (u16, String) {
        let mut req = self.agent.get(&self.url(path));
        if let Some(k) = key {
            req = req.header("authorization", &format!("Bearer {k}"));
        }
        let mut resp = req.call().unwrap();
        (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap())
    }

    /// One value of /metrics (a series without labels).
    pub fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics", None);
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).map(|v| v.parse().unwrap())).unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    /// Open a streaming request; returns the line reader of its body.
    pub fn stream(&self, path: &str, body: &Value) -> (u16, BufReader<Box<dyn std::io::Read + Send + Sync>>) {
        let resp = self.agent.post(&self.url(path)).header("content-type", "application/json").send(body.to_string().as_bytes()).unwrap();
        let status = resp.status().as_u16();
        let reader: Box<dyn std::io::Read + Send + Sync> = Box::new(resp.into_body().into_reader());
        (status, BufReader::new(reader))
    }
}

/// Every `data:` payload of an SSE body until `[DONE]` (inclusive), and the comment lines.
pub fn read_sse(reader: &mut impl BufRead) -> (Vec<String>, Vec<String>) {
    let mut data = vec![];
    let mut comments = vec![];
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let l = line.trim_end_matches(['\n', '\r']);
        if let Some(d) = l.strip_prefix("data: ") {
            data.push(d.to_string());
            if d == "[DONE]" {
                break;
            }
        } else if let Some(c) = l.strip_prefix(':') {
            comments.push(c.trim().to_string());
        } else {
            assert!(l.is_empty(), "unexpected SSE line {l:?}");
        }
    }
    (data, comments)
}

impl Server {
    /// Signal shutdown and wait until `serve` has returned.
    pub fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
