//! Checkpoint tensors: reading `model.safetensors` or the shards named by
//! `model.safetensors.index.json`, and renaming a family's tensors onto the Transformer
//! core's variables (fusing q/k/v into the core's one projection, transposing GPT-2's
//! Conv1D weights), with every shape checked against config.json.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::config::HfFamily;
use crate::config::TransformerConfig;

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// What a loading pass does to each tensor as it is made, `each(name, tensor)`: returns the
/// tensor to keep (a quantizing load keeps a placeholder and the blocks elsewhere).
pub type EachTensor<'a> = dyn FnMut(&str, Tensor) -> Result<Tensor> + 'a;

/// A checkpoint tensor and the file it came from (for messages): in memory, or still in
/// the file's map, read when the mapping takes it ([`Source::tensor`]) — so a checkpoint
/// is never whole in memory while it becomes the core's variables (and never at all when a
/// quantizing load turns each block weight into its blocks as it is made).
pub struct Source {
    data: SourceData,
    pub file: PathBuf,
}

enum SourceData {
    Tensor(Tensor),
    /// Bytes `at .. at + len` of the safetensors file mapped in `map`, as its header
    /// describes them (read once, when the file is mapped).
    Mapped { map: std::sync::Arc<ferrolm_kernels::mmap::Map>, dtype: safetensors::Dtype, shape: Vec<usize>, at: usize, len: usize },
}

impl Source {
    pub fn new(tensor: Tensor, file: PathBuf) -> Self {
        Self { data: SourceData::Tensor(tensor), file }
    }

    /// The tensor (read out of the file's map, whose pages are then released).
    pub fn tensor(self) -> Result<Tensor> {
        use candle_core::safetensors::Load;
        match self.data {
            SourceData::Tensor(t) => Ok(t),
            SourceData::Mapped { map, dtype, shape, at, len } => {
                let broken = || broken_file(&self.file);
                let view = safetensors::tensor::TensorView::new(dtype, shape, &map[at..at + len]).with_context(broken)?;
                let t = view.load(&Device::Cpu).with_context(broken)?;
                ferrolm_kernels::mmap::release_pages(&map, at, len);
                Ok(t)
            }
        }
    }

    /// The tensor in f32, as a candle variable's values: a file's f32, f16 or bf16 tensor is
    /// widened straight out of the map into the vector the variable keeps (one copy; see
    /// [`ferrolm_kernels::f16::f32_from_le_bytes`]), whose pages are then released. Other
    /// tensors as [`Source::tensor`] gives them (their dtype for the caller to judge).
    pub fn tensor_f32(self) -> Result<Tensor> {
        use ferrolm_kernels::f16::LeFloat;
        let SourceData::Mapped { map, dtype, shape, at, len } = &self.data else {
            return self.tensor();
        };
        let from = match dtype {
            safetensors::Dtype::F32 => LeFloat::F32,
            safetensors::Dtype::F16 => LeFloat::F16,
            safetensors::Dtype::BF16 => LeFloat::Bf16,
            _ => return self.tensor(),
        };
        let broken = || broken_file(&self.file);
        let bytes = &map[*at..*at + *len];
        // the header's shape and the bytes agree (as `TensorView::new` checks them)
        safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).with_context(broken)?;
        let values = ferrolm_kernels::f16::f32_from_le_bytes(bytes, from).with_context(broken)?;
        ferrolm_kernels::mmap::release_pages(map, *at, *len);
        Ok(candle_core::Var::from_vec(values, shape.as_slice(), &Device::Cpu)?.as_tensor().clone())
    }
}

/// The error for a safetensors file whose header and bytes disagree.
fn broken_file(file: &Path) -> String {
    format!("{} is not a complete safetensors file (truncated or corrupt)", file.display())
}

/// Every tensor of one safetensors file as a [`Source`] still in the file's map (the header
/// is read and checked now: a missing, truncated or corrupt file is an error naming it).
fn map_safetensors(path: &Path) -> Result<Vec<(String, Source)>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    // A checkpoint folder's files are not rewritten while a model loads from them (the Hub
    // cache's are written to a temporary name and renamed into place; see `hub`), which is
    // what mapping them needs (`map_immutable`).
    let map = std::sync::Arc::new(ferrolm_kernels::mmap::map_immutable(&file).with_context(|| format!("cannot map {}", path.display()))?);
    let st = safetensors::SafeTensors::deserialize(&map).with_context(|| broken_file(path))?;
    Ok(st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let (at, len) = (view.data().as_ptr() as usize - map.as_ptr() as usize, view.data().len());
            let data = SourceData::Mapped { map: map.clone(), dtype: view.dtype(), shape: view.shape().to_vec(), at, len };
            (name, Source { data, file: path.to_path_buf() })
        })
        .collect())
}

/// Every tensor of one safetensors file, with the file named in any error (missing,
/// truncated, corrupt header).
///
/// The file is memory-mapped and each tensor copied out of the map, whose pages are then
/// released (`MADV_DONTNEED`: they stay in the page cache, not in this process): reading
/// the file into a buffer first cost a second copy of the checkpoint (the kernel zeroing
/// and filling its pages) and twice its size in peak memory.
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    read_safetensors_with(path, &mut |_, t| Ok(t))
}

/// [`read_safetensors`], each tensor passed through `each(name, tensor)` as it is read (a
/// quantizing load replaces a block weight by its blocks there, so the checkpoint is never
/// whole in f32).
pub fn read_safetensors_with(path: &Path, each: &mut EachTensor<'_>) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (name, src) in map_safetensors(path)? {
        let t = each(&name, src.tensor()?)?;
        out.insert(name, t);
    }
    Ok(out)
}

/// The file names of a sharded checkpoint (from its index), in order, with the tensor →
/// file map.
pub fn read_index(dir: &Path) -> Result<(Vec<String>, BTreeMap<String, String>)> {
    let path = dir.join(INDEX_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let map = json.get("weight_map").and_then(|m| m.as_object()).with_context(|| format!("{}: the key `weight_map` is missing", path.display()))?;
    let mut weight_map = BTreeMap::new();
    for (name, file) in map {
        let file = file.as_str().with_context(|| format!("{}: weight_map[{name:?}] is not a file name", path.display()))?;
        // A shard is a file in this folder, never a path that leaves it.
        if file.is_empty() || file.contains('/') || file.contains('\\') || file == ".." || file == "." {
            bail!("{}: weight_map[{name:?}] = {file:?} is not a file name in the checkpoint folder", path.display());
        }
        weight_map.insert(name.clone(), file.to_string());
    }
    let files: BTreeSet<String> = weight_map.values().cloned().collect();
    Ok((files.into_iter().collect(), weight_map))
}

/// All tensors of the checkpoint in `dir`: sharded (index + shards) or one file.
pub fn read_checkpoint(dir: &Path) -> Result<HashMap<String, Source>> {
    let mut out = HashMap::new();
    if dir.join(INDEX_FILE).is_file() {
        let (files, weight_map) = read_index(dir)?;
        for f in &files {
            let path = dir.join(f);
            if !path.is_file() {
                bail!("{} names the shard {f}, which is missing from {}", dir.join(INDEX_FILE).display(), dir.display());
            }
            out.extend(map_safetensors(&path)?);
        }
        for (name, f) in &weight_map {
            match out.get(name) {
                Some(s) if s.file.file_name().is_some_and(|n| n == f.as_str()) => {}
                _ => bail!("{}: tensor `{name}` should be in {f} but is not", dir.join(INDEX_FILE).display()),
            }
        }
    } else {
        let path = dir.join(SINGLE_FILE);
        if !path.is_file() {
            bail!(
                "{} has neither {SINGLE_FILE} nor {INDEX_FILE} (only safetensors checkpoints are read; convert pytorch_model.bin with transformers' save_pretrained)",
                dir.display()
            );
        }
        out.extend(map_safetensors(&path)?);
    }
    Ok(out)
}

/// The weights files of the checkpoint in `dir`, in order: the shards its index names, or
/// `model.safetensors`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.join(INDEX_FILE).is_file() {
        return Ok(read_index(dir)?.0.into_iter().map(|f| dir.join(f)).collect());
    }
    Ok(vec![dir.join(SINGLE_FILE)])
}

/// The tensor names of the checkpoint in `dir`, from the index or the safetensors header
/// alone (no tensor data is read).
pub fn tensor_names(dir: &Path) -> Result<BTreeSet<String>> {
    if dir.join(INDEX_FILE).is_file() {
        return Ok(read_index(dir)?.1.into_keys().collect());
    }
    let path = dir.join(SINGLE_FILE);
    if !path.is_file() {
        bail!(
            "{} has neither {SINGLE_FILE} nor {INDEX_FILE} (only safetensors checkpoints are read; convert pytorch_model.bin with transformers' save_pretrained)",
            dir.display()
        );
    }
    use std::io::Read;
    let bad = || anyhow::anyhow!("{} is not a complete safetensors file (truncated or corrupt header)", path.display());
    let mut f = std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let size = f.metadata()?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| bad())?;
    let n = u64::from_le_bytes(len);
    if n > size.saturating_sub(8) || n > 100 << 20 {
        return Err(bad());
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|_| bad())?;
    let json: serde_json::Value = serde_json::from_slice(&header).map_err(|_| bad())?;
    let obj = json.as_object().ok_or_else(bad)?;
    Ok(obj.keys().filter(|k| *k != "__metadata__").cloned().collect())
}

/// Which BERT heads a checkpoint's tensors hold: (MLM head, pooler, next-sentence head).
/// DistilBERT has no pooler or next-sentence head; its MLM head is `vocab_transform` & co.
pub fn bert_heads(family: HfFamily, names: &BTreeSet<String>) -> (bool, bool, bool) {
    match family {
        HfFamily::DistilBert => return (names.contains("vocab_transform.weight"), false, false),
        HfFamily::Roberta => {
            let pooler = names.contains("pooler.dense.weight") || names.contains("roberta.pooler.dense.weight");
            return (names.contains("lm_head.dense.weight"), pooler, false);
        }
        _ => {}
    }
    let has = |n: &str| names.contains(n) || names.contains(&format!("bert.{n}"));
    let mlm = names.iter().any(|n| n.starts_with("cls.predictions."));
    let pooler = has("pooler.dense.weight");
    let nsp = names.contains("cls.seq_relationship.weight");
    (mlm, pooler, nsp)
}

/// Takes tensors out of a checkpoint by name, checking dtype and shape, so that what is
/// left at the end is what the model did not use.
struct Take {
    tensors: HashMap<String, Source>,
    prefix: &'static str,
}

impl Take {
    fn new(mut tensors: HashMap<String, Source>, prefix: &'static str) -> Self {
        // Checkpoints saved from the bare model (no LM head) lack the prefix: add it back.
        if !tensors.keys().any(|k| k.starts_with(prefix)) {
            tensors = tensors.into_iter().map(|(k, v)| if k == "lm_head.weight" { (k, v) } else { (format!("{prefix}{k}"), v) }).collect();
        }
        Self { tensors, prefix }
    }

    fn f32(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = if name == "lm_head.weight" { name.to_string() } else { format!("{}{name}", self.prefix) };
        let Some(src) = self.tensors.remove(&full) else {
            bail!("the checkpoint has no tensor `{full}` (config.json describes a model that needs it)");
        };
        let file = src.file.clone();
        let t = src.tensor_f32()?;
        if !matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
            bail!("{}: tensor `{full}` has dtype {:?}; weights must be f32, f16 or bf16", file.display(), t.dtype());
        }
        if t.dims() != shape {
            bail!("{}: tensor `{full}` has shape {:?}, config.json implies {:?}", file.display(), t.dims(), shape);
        }
        Ok(t.to_dtype(DType::F32)?)
    }

    /// Error on any tensor the model did not use (a config that does not match its weights).
    fn finish(self, ignorable: impl Fn(&str) -> bool) -> Result<()> {
        let mut left: Vec<_> = self.tensors.iter().filter(|(k, _)| !ignorable(k)).collect();
        left.sort_by(|a, b| a.0.cmp(b.0));
        if let Some((name, src)) = left.first() {
            bail!(
                "{}: tensor `{name}` is not used by the model config.json describes ({} unused tensors; does config.json match the weights?)",
                src.file.display(),
                left.len()
            );
        }
        Ok(())
    }
}

/// The core's variables (by ferrolm name) from a checkpoint of `family`; `position_offset`
/// rows of the position table before the first text position are dropped (RoBERTa's,
/// [`super::config::HfConfig::position_offset`]; 0 for the rest).
pub fn to_core(family: HfFamily, cfg: &TransformerConfig, tensors: HashMap<String, Source>, position_offset: usize) -> Result<HashMap<String, Tensor>> {
    to_core_with(family, cfg, tensors, position_offset, None)
}

/// [`to_core`], each core variable passed through `each(name, tensor)` as it is made (see
/// [`read_safetensors_with`]).
pub fn to_core_with(family: HfFamily, cfg: &TransformerConfig, tensors: HashMap<String, Source>, position_offset: usize, each: Option<&mut EachTensor<'_>>) -> Result<HashMap<String, Tensor>> {
    let mut out = CoreOut { map: HashMap::new(), each, err: None };
    match family {
        HfFamily::Gpt2 => gpt2(cfg, tensors, &mut out)?,
        HfFamily::Bert => bert(cfg, tensors, 0, &mut out)?,
        HfFamily::DistilBert => bert(cfg, distilbert_names(tensors), 0, &mut out)?,
        HfFamily::Roberta => bert(cfg, roberta_names(tensors), position_offset, &mut out)?,
        HfFamily::Llama | HfFamily::Mistral | HfFamily::Qwen2 | HfFamily::Qwen3 => llama_like(cfg, tensors, &mut out)?,
    }
    match out.err {
        Some(e) => Err(e),
        None => Ok(out.map),
    }
}

/// The core's variables as a family's mapping makes them, each passed through the optional
/// `each` on insertion; its first error is kept and returned by [`to_core_with`].
struct CoreOut<'a, 'b> {
    map: HashMap<String, Tensor>,
    each: Option<&'a mut EachTensor<'b>>,
    err: Option<anyhow::Error>,
}

impl CoreOut<'_, '_> {
    fn insert(&mut self, name: String, t: Tensor) {
        let t = match self.each.as_mut() {
            Some(each) => match each(&name, t) {
                Ok(t) => t,
                Err(e) => {
                    self.err.get_or_insert(e);
                    return;
                }
            },
            None => t,
        };
        self.map.insert(name, t);
    }
}

/// RoBERTa's tensors (`RobertaForMaskedLM` or a bare `RobertaModel`) under BERT's names:
/// the `roberta.` prefix off, the MLM head lm_head.{dense, layer_norm, decoder, bias} →
/// cls.predictions.{transform.dense, transform.LayerNorm, decoder, bias}.
fn roberta_names(tensors: HashMap<String, Source>) -> HashMap<String, Source> {
    let rename = |k: &str| -> String {
        if let Some(rest) = k.strip_prefix("roberta.") {
            return rest.to_string();
        }
        for (from, to) in [
            ("lm_head.dense.", "cls.predictions.transform.dense."),
            ("lm_head.layer_norm.", "cls.predictions.transform.LayerNorm."),
            ("lm_head.decoder.", "cls.predictions.decoder."),
        ] {
            if let Some(p) = k.strip_prefix(from) {
                return format!("{to}{p}");
            }
        }
        match k {
            "lm_head.bias" => "cls.predictions.bias".into(),
            _ => k.into(),
        }
    };
    tensors.into_iter().map(|(k, v)| (rename(&k), v)).collect()
}

/// DistilBERT's tensors (`DistilBertForMaskedLM` or a bare `DistilBertModel`) under the
/// names BERT gives the same weights, so that one mapping reads both: q_lin/k_lin/v_lin
/// → query/key/value, out_lin → attention.output.dense, sa_layer_norm (after attention)
/// → attention.output.LayerNorm, ffn.lin1/lin2 → intermediate/output.dense,
/// output_layer_norm → output.LayerNorm, vocab_transform/vocab_layer_norm/vocab_projector
/// → cls.predictions.{transform.dense, transform.LayerNorm, decoder}. Names it does not
/// know are kept, so that BERT's reader reports them as unused.
fn distilbert_names(tensors: HashMap<String, Source>) -> HashMap<String, Source> {
    let rename = |k: &str| -> String {
        let k = k.strip_prefix("distilbert.").unwrap_or(k);
        if let Some(rest) = k.strip_prefix("transformer.layer.") {
            let (i, part) = rest.split_once('.').unwrap_or((rest, ""));
            let mapped = [
                ("attention.q_lin.", "attention.self.query."),
                ("attention.k_lin.", "attention.self.key."),
                ("attention.v_lin.", "attention.self.value."),
                ("attention.out_lin.", "attention.output.dense."),
                ("sa_layer_norm.", "attention.output.LayerNorm."),
                ("ffn.lin1.", "intermediate.dense."),
                ("ffn.lin2.", "output.dense."),
                ("output_layer_norm.", "output.LayerNorm."),
            ]
            .iter()
            .find_map(|(from, to)| part.strip_prefix(from).map(|p| format!("{to}{p}")));
            return match mapped {
                Some(m) => format!("encoder.layer.{i}.{m}"),
                None => format!("distilbert.{k}"),
            };
        }
        for (from, to) in [
            ("vocab_transform.", "cls.predictions.transform.dense."),
            ("vocab_layer_norm.", "cls.predictions.transform.LayerNorm."),
            ("vocab_projector.weight", "cls.predictions.decoder.weight"),
        ] {
            if let Some(p) = k.strip_prefix(from) {
                return format!("{to}{p}");
            }
        }
        match k {
            "vocab_projector.bias" => "cls.predictions.bias".into(),
            _ if k.starts_with("embeddings.") => k.into(),
            _ => format!("distilbert.{k}"),
        }
    };
    tensors.into_iter().map(|(k, v)| (rename(&k), v)).collect()
}

/// BERT (`BertForMaskedLM`, `BertForPreTraining` or a bare `BertModel`): separate q/k/v
/// fused into the core's one projection; the post-norm block's norms after attention and
/// MLP are the core's `ln1`/`ln2`; the embedding LayerNorm is `ln_emb`.
fn bert(cfg: &TransformerConfig, tensors: HashMap<String, Source>, position_offset: usize, out: &mut CoreOut) -> Result<()> {
    // Names without the `bert.` prefix of the task models (a bare BertModel has none), and
    // with the LayerNorm names of checkpoints converted from TensorFlow (gamma/beta) made current.
    let tensors: HashMap<String, Source> = tensors
        .into_iter()
        .map(|(k, v)| {
            let k = k.strip_prefix("bert.").map(str::to_string).unwrap_or(k);
            let k = match (k.strip_suffix(".gamma"), k.strip_suffix(".beta")) {
                (Some(base), _) if base.ends_with("LayerNorm") => format!("{base}.weight"),
                (_, Some(base)) if base.ends_with("LayerNorm") => format!("{base}.bias"),
                _ => k,
            };
            (k, v)
        })
        .collect();
    let mut t = Take { tensors, prefix: "" };
    let (d, v, f, p) = (cfg.d_model, cfg.vocab_size, cfg.ff_dim(), cfg.max_seq_len);
    let mut qkv = Vec::new();
    // a linear layer (weight (out, in) and bias) or a LayerNorm (in = 0: weight and bias (out))
    let mut take = |t: &mut Take, hf: &str, fl: &str, i: usize, o: usize| -> Result<()> {
        let shape: &[usize] = if i == 0 { &[o] } else { &[o, i] };
        out.insert(format!("{fl}.weight"), t.f32(&format!("{hf}.weight"), shape)?);
        out.insert(format!("{fl}.bias"), t.f32(&format!("{hf}.bias"), &[o])?);
        Ok(())
    };
    take(&mut t, "embeddings.LayerNorm", "ln_emb", 0, d)?;
    for i in 0..cfg.n_layers {
        let (hf, fl) = (format!("encoder.layer.{i}."), format!("encoder.blocks.{i}."));
        let a = format!("{hf}attention.self.");
        let w = [t.f32(&format!("{a}query.weight"), &[d, d])?, t.f32(&format!("{a}key.weight"), &[d, d])?, t.f32(&format!("{a}value.weight"), &[d, d])?];
        let b = [t.f32(&format!("{a}query.bias"), &[d])?, t.f32(&format!("{a}key.bias"), &[d])?, t.f32(&format!("{a}value.bias"), &[d])?];
        take(&mut t, &format!("{hf}attention.output.dense"), &format!("{fl}attn.proj"), d, d)?;
        take(&mut t, &format!("{hf}attention.output.LayerNorm"), &format!("{fl}ln1"), 0, d)?;
        take(&mut t, &format!("{hf}intermediate.dense"), &format!("{fl}mlp.fc"), d, f)?;
        take(&mut t, &format!("{hf}output.dense"), &format!("{fl}mlp.proj"), f, d)?;
        take(&mut t, &format!("{hf}output.LayerNorm"), &format!("{fl}ln2"), 0, d)?;
        qkv.push((format!("{fl}attn.qkv"), Tensor::cat(&w, 0)?, Tensor::cat(&b, 0)?));
    }
    if cfg.pooler {
        take(&mut t, "pooler.dense", "pooler", d, d)?;
    }
    if cfg.mlm_head {
        take(&mut t, "cls.predictions.transform.dense", "mlm.dense", d, d)?;
        take(&mut t, "cls.predictions.transform.LayerNorm", "mlm.ln", 0, d)?;
    }
    if cfg.nsp_head {
        take(&mut t, "cls.seq_relationship", "nsp", d, 2)?;
    }
    for (name, w, b) in qkv {
        out.insert(format!("{name}.weight"), w);
        out.insert(format!("{name}.bias"), b);
    }
    out.insert("wte.weight".into(), t.f32("embeddings.word_embeddings.weight", &[v, d])?);
    // RoBERTa's table has `position_offset` rows before the first text position: dropped
    let wpe = t.f32("embeddings.position_embeddings.weight", &[p + position_offset, d])?;
    out.insert("wpe.weight".into(), wpe.narrow(0, position_offset, p)?);
    let types = cfg.token_types();
    if types > 0 {
        out.insert("wtt.weight".into(), t.f32("embeddings.token_type_embeddings.weight", &[types, d])?);
    }
    if cfg.mlm_head {
        out.insert("mlm.bias".into(), t.f32("cls.predictions.bias", &[v])?);
        if !cfg.tie_embeddings {
            out.insert("lm_head.weight".into(), t.f32("cls.predictions.decoder.weight", &[v, d])?);
        }
    }
    let tied = cfg.tie_embeddings;
    // A tied decoder may still be stored (a copy of the embedding), and its bias is the
    // head's bias again; position_ids / token_type_ids are index buffers of old versions.
    t.finish(|k| {
        (tied && k == "cls.predictions.decoder.weight")
            || k == "cls.predictions.decoder.bias"
            || k == "embeddings.position_ids"
            || k == "embeddings.token_type_ids"
    })?;
    Ok(())
}

fn llama_like(cfg: &TransformerConfig, tensors: HashMap<String, Source>, out: &mut CoreOut) -> Result<()> {
    let mut t = Take::new(tensors, "model.");
    let (d, v, f, hd) = (cfg.d_model, cfg.vocab_size, cfg.ff_dim(), cfg.head_dim());
    let (q, kv) = (cfg.q_width(), cfg.kv_width());
    out.insert("wte.weight".into(), t.f32("embed_tokens.weight", &[v, d])?);
    for i in 0..cfg.n_layers {
        let (hf, fl) = (format!("layers.{i}."), format!("decoder.blocks.{i}."));
        out.insert(format!("{fl}ln1.weight"), t.f32(&format!("{hf}input_layernorm.weight"), &[d])?);
        out.insert(format!("{fl}ln2.weight"), t.f32(&format!("{hf}post_attention_layernorm.weight"), &[d])?);
        let a = format!("{hf}self_attn.");
        let w = [t.f32(&format!("{a}q_proj.weight"), &[q, d])?, t.f32(&format!("{a}k_proj.weight"), &[kv, d])?, t.f32(&format!("{a}v_proj.weight"), &[kv, d])?];
        // (placeholders of a GGUF file's quantized q/k/v stay placeholders)
        out.insert(format!("{fl}attn.qkv.weight"), crate::linear::cat_rows(&w)?);
        if cfg.has_qkv_bias() {
            let b = [t.f32(&format!("{a}q_proj.bias"), &[q])?, t.f32(&format!("{a}k_proj.bias"), &[kv])?, t.f32(&format!("{a}v_proj.bias"), &[kv])?];
            out.insert(format!("{fl}attn.qkv.bias"), Tensor::cat(&b, 0)?);
        }
        out.insert(format!("{fl}attn.proj.weight"), t.f32(&format!("{a}o_proj.weight"), &[d, q])?);
        if cfg.has_attn_out_bias() {
            out.insert(format!("{fl}attn.proj.bias"), t.f32(&format!("{a}o_proj.bias"), &[d])?);
        }
        if cfg.qk_norm {
            out.insert(format!("{fl}attn.ln_q.weight"), t.f32(&format!("{a}q_norm.weight"), &[hd])?);
            out.insert(format!("{fl}attn.ln_k.weight"), t.f32(&format!("{a}k_norm.weight"), &[hd])?);
        }
        let m = format!("{hf}mlp.");
        out.insert(format!("{fl}mlp.gate.weight"), t.f32(&format!("{m}gate_proj.weight"), &[f, d])?);
        out.insert(format!("{fl}mlp.up.weight"), t.f32(&format!("{m}up_proj.weight"), &[f, d])?);
        out.insert(format!("{fl}mlp.proj.weight"), t.f32(&format!("{m}down_proj.weight"), &[d, f])?);
    }
    out.insert("decoder.ln_f.weight".into(), t.f32("norm.weight", &[d])?);
    if !cfg.tie_embeddings {
        out.insert("lm_head.weight".into(), t.f32("lm_head.weight", &[v, d])?);
    }
    let tied = cfg.tie_embeddings;
    // A tied checkpoint may still store the head (a copy of the embedding); RoPE tables
    // saved by old versions are recomputed from the config.
    t.finish(|k| (tied && k == "lm_head.weight") || k.ends_with("rotary_emb.inv_freq"))?;
    Ok(())
}

fn gpt2(cfg: &TransformerConfig, tensors: HashMap<String, Source>, out: &mut CoreOut) -> Result<()> {
    let mut t = Take::new(tensors, "transformer.");
    let (d, v, f, p) = (cfg.d_model, cfg.vocab_size, cfg.ff_dim(), cfg.max_seq_len);
    out.insert("wte.weight".into(), t.f32("wte.weight", &[v, d])?);
    out.insert("wpe.weight".into(), t.f32("wpe.weight", &[p, d])?);
    // GPT-2's Conv1D stores (in, out): the core's linear layers hold (out, in).
    let mut conv = |t: &mut Take, hf: &str, fl: &str, i: usize, o: usize| -> Result<()> {
        out.insert(format!("{fl}.weight"), t.f32(&format!("{hf}.weight"), &[i, o])?.t()?.contiguous()?);
        out.insert(format!("{fl}.bias"), t.f32(&format!("{hf}.bias"), &[o])?);
        Ok(())
    };
    for i in 0..cfg.n_layers {
        let (hf, fl) = (format!("h.{i}."), format!("decoder.blocks.{i}."));
        conv(&mut t, &format!("{hf}attn.c_attn"), &format!("{fl}attn.qkv"), d, 3 * d)?;
        conv(&mut t, &format!("{hf}attn.c_proj"), &format!("{fl}attn.proj"), d, d)?;
        conv(&mut t, &format!("{hf}mlp.c_fc"), &format!("{fl}mlp.fc"), d, f)?;
        conv(&mut t, &format!("{hf}mlp.c_proj"), &format!("{fl}mlp.proj"), f, d)?;
    }
    for i in 0..cfg.n_layers {
        let (hf, fl) = (format!("h.{i}."), format!("decoder.blocks.{i}."));
        for (a, b) in [("ln_1", "ln1"), ("ln_2", "ln2")] {
            out.insert(format!("{fl}{b}.weight"), t.f32(&format!("{hf}{a}.weight"), &[d])?);
            out.insert(format!("{fl}{b}.bias"), t.f32(&format!("{hf}{a}.bias"), &[d])?);
        }
    }
    out.insert("decoder.ln_f.weight".into(), t.f32("ln_f.weight", &[d])?);
    out.insert("decoder.ln_f.bias".into(), t.f32("ln_f.bias", &[d])?);
    if !cfg.tie_embeddings {
        out.insert("lm_head.weight".into(), t.f32("lm_head.weight", &[v, d])?);
    }
    let tied = cfg.tie_embeddings;
    // Old GPT-2 files carry the causal-mask buffers `attn.bias` / `attn.masked_bias`.
    t.finish(|k| (tied && k == "lm_head.weight") || k.ends_with(".attn.bias") || k.ends_with(".attn.masked_bias"))?;
    Ok(())
}
