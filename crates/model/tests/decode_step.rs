//! Batched single-token decoding (`Transformer::decode_step`, what `ferrolm serve` runs
//! each step) equals decoding every sequence alone, for sequences of different lengths;
//! `KvCache::truncate` leaves the cache a shorter prompt would have made.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use ferrolm_model::attention::MaskSpec;
use ferrolm_model::{init::init_params, BlockStyle, KvCache, ModelKind, Transformer, TransformerConfig};

fn model(style: BlockStyle, n_kv_heads: usize) -> Transformer {
    model_with(TransformerConfig { vocab_size: 29, d_model: 32, n_layers: 2, n_heads: 4, n_kv_heads, max_seq_len: 24, block: style, ..Default::default() })
}

fn model_with(cfg: TransformerConfig) -> Transformer {
    let vm = VarMap::new();
    let m = Transformer::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    init_params(&vm, 2, 11).unwrap();
    for v in vm.all_vars() {
        v.set(&(v.as_tensor() * 10.0).unwrap()).unwrap();
    }
    m
}

fn ids(v: &[u32]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

fn last_row(logits: &Tensor) -> Vec<f32> {
    let t = logits.dim(1).unwrap();
    logits.narrow(1, t - 1, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn batched_step_equals_each_sequence_alone() {
    let modern = TransformerConfig { vocab_size: 29, d_model: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, max_seq_len: 24, block: BlockStyle::Modern, ..Default::default() };
    let cases = [
        (BlockStyle::Gpt2, 4, model(BlockStyle::Gpt2, 4)),
        (BlockStyle::Modern, 4, model(BlockStyle::Modern, 4)),
        (BlockStyle::Modern, 2, model(BlockStyle::Modern, 2)),
        // the options pretrained checkpoints bring: Qwen3's q/k norms with a head size
        // that is not d_model / heads, Qwen2's projection biases
        (BlockStyle::Modern, 2, model_with(TransformerConfig { qk_norm: true, head_size: 6, ..modern.clone() })),
        (BlockStyle::Modern, 2, model_with(TransformerConfig { qkv_bias: Some(true), attn_out_bias: Some(true), ..modern.clone() })),
    ];
    for (style, kv, m) in cases {
        let prompts: [&[u32]; 3] = [&[1, 5, 7], &[2], &[9, 8, 7, 6, 5, 4]];
        // alone: each sequence with its own cache, one position at a time
        let mut alone_caches: Vec<KvCache> = prompts.iter().map(|_| m.new_cache()).collect();
        let mut batch_caches: Vec<KvCache> = prompts.iter().map(|_| m.new_cache()).collect();
        for (i, p) in prompts.iter().enumerate() {
            m.forward(&ids(p), &MaskSpec::causal(), Some(&mut alone_caches[i])).unwrap();
            m.forward(&ids(p), &MaskSpec::causal(), Some(&mut batch_caches[i])).unwrap();
        }
        let mut tokens = vec![3u32, 4, 10];
        for step in 0..5 {
            let mut refs: Vec<&mut KvCache> = batch_caches.iter_mut().collect();
            let batched = m.decode_step(&tokens, &mut refs).unwrap();
            assert_eq!(batched.dims(), &[3, 29]);
            let batched: Vec<Vec<f32>> = batched.to_vec2().unwrap();
            for (i, c) in alone_caches.iter_mut().enumerate() {
                let alone = last_row(&m.forward(&ids(&[tokens[i]]), &MaskSpec::causal(), Some(c)).unwrap());
                let d = max_diff(&alone, &batched[i]);
                assert!(d < 1e-4, "{style:?} kv={kv} step {step} row {i}: differs by {d}");
                assert_eq!(c.len(), batch_caches[i].len());
            }
            tokens = tokens.iter().map(|t| (t * 7 + step + 1) % 29).collect();
        }
        // rows really are independent: a different row-1 token leaves rows 0 and 2 alone
        let mut c1: Vec<KvCache> = batch_caches.clone();
        let mut c2: Vec<KvCache> = batch_caches.clone();
        let a: Vec<Vec<f32>> = m.decode_step(&[1, 2, 3], &mut c1.iter_mut().collect::<Vec<_>>()).unwrap().to_vec2().unwrap();
        let b: Vec<Vec<f32>> = m.decode_step(&[1, 20, 3], &mut c2.iter_mut().collect::<Vec<_>>()).unwrap().to_vec2().unwrap();
        assert!(max_diff(&a[0], &b[0]) < 1e-5 && max_diff(&a[2], &b[2]) < 1e-5);
        assert!(max_diff(&a[1], &b[1]) > 1e-3);
    }
}

#[test]
fn truncated_cache_equals_the_shorter_prefill() {
    let m = model(BlockStyle::Modern, 2);
    let long = [4u32, 8, 15, 16, 23, 12];
    let mut full = m.new_cache();
    m.forward(&ids(&long), &MaskSpec::causal(), Some(&mut full)).unwrap();
    // a clone is independent: truncating and extending it leaves the original as it was
    // (the server keeps recent prompts' caches and hands out truncated clones)
    let original = full.clone();
    let mut before = original.clone();
    let want = last_row(&m.forward(&ids(&[9]), &MaskSpec::causal(), Some(&mut before)).unwrap());
    full.truncate(3).unwrap();
    assert_eq!(full.len(), 3);
    let mut short = m.new_cache();
    m.forward(&ids(&long[..3]), &MaskSpec::causal(), Some(&mut short)).unwrap();
    let a = last_row(&m.forward(&ids(&[7, 1]), &MaskSpec::causal(), Some(&mut full)).unwrap());
    let b = last_row(&m.forward(&ids(&[7, 1]), &MaskSpec::causal(), Some(&mut short)).unwrap());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(max_diff(&a, &b) < 1e-5 * scale.max(1.0), "differs by {} (logits up to {scale})", max_diff(&a, &b));
    let mut after = original.clone();
    assert_eq!(after.len(), long.len());
    let got = last_row(&m.forward(&ids(&[9]), &MaskSpec::causal(), Some(&mut after)).unwrap());
    assert_eq!(got, want);
    // and through batched decoding too
    let mut refs = [&mut full, &mut short];
    let l: Vec<Vec<f32>> = m.decode_step(&[3, 3], &mut refs).unwrap().to_vec2().unwrap();
    assert!(max_diff(&l[0], &l[1]) < 1e-5 * scale.max(1.0));
    assert_eq!((full.len(), short.len(), original.len()), (6, 6, long.len()));
}

#[test]
fn decode_step_refuses_bad_input() {
    let m = model(BlockStyle::Gpt2, 4);
    let mut c = m.new_cache();
    assert!(m.decode_step(&[1, 2], &mut [&mut c]).is_err(), "two tokens, one cache");
    // a full context is an error, not a panic
    m.forward(&ids(&[1; 24]), &MaskSpec::causal(), Some(&mut c)).unwrap();
    assert!(m.decode_step(&[1], &mut [&mut c]).is_err());
    let cfg = TransformerConfig { kind: ModelKind::Prefix, vocab_size: 29, d_model: 32, n_layers: 1, n_heads: 4, n_kv_heads: 4, max_seq_len: 8, ..Default::default() };
    let vm = VarMap::new();
    let p = Transformer::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    let mut c = p.new_cache();
    assert!(p.decode_step(&[1], &mut [&mut c]).is_err());
}

#[test]
fn last_position_logits_equal_the_full_forward_and_fill_the_same_cache() {
    for m in [model(BlockStyle::Gpt2, 4), model(BlockStyle::Modern, 2)] {
        let prompt = [3u32, 1, 4, 1, 5, 9, 2, 6];
        let (mut full_cache, mut last_cache) = (m.new_cache(), m.new_cache());
        let full = m.forward(&ids(&prompt), &MaskSpec::causal(), Some(&mut full_cache)).unwrap();
        let last = m.forward_last(&ids(&prompt), &MaskSpec::causal(), Some(&mut last_cache)).unwrap();
        assert_eq!(last.dims(), &[1, 1, 29]);
        assert!(max_diff(&last_row(&full), &last_row(&last)) < 1e-5);
        assert_eq!(full_cache.len(), last_cache.len());
        // the next step sees the same cache
        let a = m.decode_step(&[7], &mut [&mut full_cache]).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = m.decode_step(&[7], &mut [&mut last_cache]).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
    }
}

/// A batch as large as a prompt (the products' register tiles sum differently from
/// decoding's kernels) is decoded in parts, so each of its sequences gets exactly the
/// logits it gets alone.
#[test]
fn a_batch_as_large_as_a_prompt_decodes_each_sequence_exactly_as_alone() {
    let m = model(BlockStyle::Modern, 2);
    let n = ferrolm_kernels::prompt_linear::PROMPT_ROWS + 9;
    let mut caches: Vec<KvCache> = (0..n).map(|_| m.new_cache()).collect();
    for (i, c) in caches.iter_mut().enumerate() {
        let prompt: Vec<u32> = (0..1 + i % 4).map(|p| ((i * 5 + p * 3) % 29) as u32).collect();
        m.forward(&ids(&prompt), &MaskSpec::causal(), Some(c)).unwrap();
    }
    let tokens: Vec<u32> = (0..n).map(|i| (i * 11 % 29) as u32).collect();
    let mut alone_caches = caches.clone();
    let batched: Vec<Vec<f32>> = m.decode_step(&tokens, &mut caches.iter_mut().collect::<Vec<_>>()).unwrap().to_vec2().unwrap();
    assert_eq!(batched.len(), n);
    for (i, c) in alone_caches.iter_mut().enumerate() {
        let alone: Vec<Vec<f32>> = m.decode_step(&tokens[i..i + 1], &mut [c]).unwrap().to_vec2().unwrap();
        assert_eq!(alone[0], batched[i], "row {i} of {n}");
        assert_eq!(c.len(), caches[i].len());
    }
}
