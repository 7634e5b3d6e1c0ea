//! Properties every Transformer shape must have: causality, KV cache == recompute,
//! autograd == finite differences, declared parameter count == built.

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use ferrolm_model::attention::{AttnMask, MaskSpec, PAD_SEGMENT};
use ferrolm_model::{init::init_params, BlockStyle, Transformer, TransformerConfig};

fn tiny(block: BlockStyle) -> TransformerConfig {
    TransformerConfig {
        vocab_size: 37,
        d_model: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: if block == BlockStyle::Modern { 2 } else { 4 },
        d_ff: 0,
        max_seq_len: 24,
        block,
        tie_embeddings: block == BlockStyle::Gpt2,
        dropout: 0.0,
        norm_eps: 1e-5,
        rope_theta: 10_000.0,
        ..Default::default()
    }
}

fn build(cfg: &TransformerConfig, seed: u64) -> (Transformer, VarMap) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let m = Transformer::new(cfg, vb).unwrap();
    init_params(&vm, cfg.n_layers, seed).unwrap();
    (m, vm)
}

fn ids(v: &[u32], b: usize) -> Tensor {
    Tensor::from_vec(v.to_vec(), (b, v.len() / b), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

const STYLES: [BlockStyle; 2] = [BlockStyle::Gpt2, BlockStyle::Modern];

#[test]
fn changing_a_future_token_never_changes_earlier_logits() {
    for style in STYLES {
        let (m, _) = build(&tiny(style), 1);
        let a: Vec<u32> = (0..16).map(|i| (i * 7 % 37) as u32).collect();
        let mut b = a.clone();
        b[10] = (b[10] + 5) % 37;
        let la = m.forward(&ids(&a, 1), &MaskSpec::causal(), None).unwrap();
        let lb = m.forward(&ids(&b, 1), &MaskSpec::causal(), None).unwrap();
        let before = |l: &Tensor| l.narrow(1, 0, 10).unwrap();
        assert!(max_abs_diff(&before(&la), &before(&lb)) < 1e-6, "{style:?}: earlier logits changed");
        let at = |l: &Tensor| l.narrow(1, 10, 1).unwrap();
        assert!(max_abs_diff(&at(&la), &at(&lb)) > 1e-4, "{style:?}: the changed position must matter");
    }
}

#[test]
fn kv_cache_decoding_equals_full_recomputation() {
    for style in STYLES {
        let (m, _) = build(&tiny(style), 2);
        let seq: Vec<u32> = (0..20).map(|i| (i * 11 % 37) as u32).collect();
        let full = m.forward(&ids(&seq, 1), &MaskSpec::causal(), None).unwrap();
        // prompt of 7 in one call, then one token at a time
        let mut cache = m.new_cache();
        let mut parts = vec![m.forward(&ids(&seq[..7], 1), &MaskSpec::causal(), Some(&mut cache)).unwrap()];
        for t in 7..seq.len() {
            parts.push(m.forward(&ids(&seq[t..t + 1], 1), &MaskSpec::causal(), Some(&mut cache)).unwrap());
        }
        let inc = Tensor::cat(&parts, 1).unwrap();
        assert_eq!(cache.len(), seq.len());
        let d = max_abs_diff(&full, &inc);
        assert!(d < 1e-4, "{style:?}: cache vs recompute differ by {d}");
    }
}

#[test]
fn a_pass_with_a_kv_cache_keeps_no_graph_of_its_blocks() {
    // A KV cache means inference: the hidden state is detached after every block, so the
    // blocks' activations are not kept alive by the output's graph. Seen from outside: a
    // backward pass from such logits reaches no block weight (only the final norm and the
    // head, after the last block), while the same pass without a cache reaches them all.
    for style in STYLES {
        let (m, vm) = build(&tiny(style), 4);
        let seq = ids(&[3, 1, 4, 1, 5, 9, 2, 6], 1);
        let block_vars = || -> Vec<(String, Var)> {
            let d = vm.data().lock().unwrap();
            d.iter().filter(|(k, _)| k.contains("blocks.")).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let reached = |logits: Tensor| {
            let grads = logits.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            block_vars().iter().filter(|(_, v)| grads.get(v.as_tensor()).is_some()).count()
        };
        let n = block_vars().len();
        assert!(n > 0);
        assert_eq!(reached(m.forward(&seq, &MaskSpec::causal(), None).unwrap()), n, "{style:?}: training passes reach every block weight");
        let mut cache = m.new_cache();
        assert_eq!(reached(m.forward(&seq, &MaskSpec::causal(), Some(&mut cache)).unwrap()), 0, "{style:?}: prompt pass with a cache");
        let step = m.forward(&ids(&[7], 1), &MaskSpec::causal(), Some(&mut cache)).unwrap();
        assert_eq!(reached(step), 0, "{style:?}: decoding step");
    }
}

#[test]
fn gradients_match_finite_differences() {
    for style in STYLES {
        let cfg = tiny(style);
        let (m, vm) = build(&cfg, 3);
        let x = ids(&[1, 5, 9, 2, 33, 7, 4, 8, 30, 12, 3, 6], 2);
        let y = ids(&[5, 9, 2, 33, 7, 4, 8, 30, 12, 3, 6, 1], 2);
        let loss_of = |m: &Transformer| {
            let logits = m.forward(&x, &MaskSpec::causal(), None).unwrap();
            candle_nn::loss::cross_entropy(&logits.flatten_to(1).unwrap(), &y.flatten_all().unwrap()).unwrap()
        };
        let loss = loss_of(&m);
        let grads = loss.backward().unwrap();
        // Directional derivative along a random direction over all parameters.
        let vars: Vec<(String, Var)> = {
            let d = vm.data().lock().unwrap();
            let mut v: Vec<_> = d.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let dirs: Vec<Tensor> = vars.iter().map(|(_, v)| v.as_tensor().randn_like(0.0, 0.02).unwrap()).collect();
        let analytic: f64 = vars
            .iter()
            .zip(&dirs)
            .map(|((n, v), d)| {
                let g = grads.get(v).unwrap_or_else(|| panic!("no gradient for {n}"));
                (g * d).unwrap().sum_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
            })
            .sum();
        let eps = 1e-2;
        let shift = |sign: f64| {
            for ((_, v), d) in vars.iter().zip(&dirs) {
                v.set(&(v.as_tensor() + (d * (sign * eps)).unwrap()).unwrap()).unwrap();
            }
        };
        shift(1.0);
        let lp = loss_of(&m).to_scalar::<f32>().unwrap() as f64;
        shift(-2.0);
        let lm = loss_of(&m).to_scalar::<f32>().unwrap() as f64;
        shift(1.0);
        let numeric = (lp - lm) / (2.0 * eps);
        let rel = (numeric - analytic).abs() / analytic.abs().max(1e-3);
        assert!(rel < 2e-2, "{style:?}: analytic {analytic} vs numeric {numeric} (rel {rel})");
    }
}

#[test]
fn declared_parameter_count_matches_built_model() {
    for style in STYLES {
        for tie in [true, false] {
            let cfg = TransformerConfig { tie_embeddings: tie, ..tiny(style) };
            let (_, vm) = build(&cfg, 0);
            let built: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
            assert_eq!(built, cfg.num_params(), "{style:?} tie={tie}");
        }
    }
}

#[test]
fn init_is_deterministic_per_seed() {
    let cfg = tiny(BlockStyle::Modern);
    let (a, _) = build(&cfg, 9);
    let (b, _) = build(&cfg, 9);
    let (c, _) = build(&cfg, 10);
    let x = ids(&[1, 2, 3, 4], 1);
    let la = a.forward(&x, &MaskSpec::causal(), None).unwrap();
    assert_eq!(max_abs_diff(&la, &b.forward(&x, &MaskSpec::causal(), None).unwrap()), 0.0);
    assert!(max_abs_diff(&la, &c.forward(&x, &MaskSpec::causal(), None).unwrap()) > 1e-4);
}

/// Read the mask as a boolean matrix: visible[b][i][j].
fn visible(spec: &MaskSpec, b: usize, tq: usize, tk: usize, off: usize) -> Vec<Vec<Vec<bool>>> {
    let bias = spec.bias(b, tq, tk, off, &Device::Cpu).unwrap();
    let v: Vec<f32> = match bias {
        Some(t) => t.flatten_all().unwrap().to_vec1().unwrap(),
        None => vec![0.0; b * tq * tk],
    };
    (0..b).map(|bb| (0..tq).map(|i| (0..tk).map(|j| v[(bb * tq + i) * tk + j] == 0.0).collect()).collect()).collect()
}

#[test]
fn prefix_mask_semantics() {
    let spec = MaskSpec { kind: AttnMask::Prefix(vec![3, 1]), q_segments: None, k_segments: None };
    let v = visible(&spec, 2, 6, 6, 0);
    for (b, p) in [(0usize, 3usize), (1, 1)] {
        for (i, row) in v[b].iter().enumerate() {
            for (j, &seen) in row.iter().enumerate() {
                let expect = if i < p { j < p } else { j <= i };
                assert_eq!(seen, expect, "row {b} prefix {p}: q{i} k{j}");
            }
        }
    }
}

#[test]
fn padding_and_segments_are_never_attended() {
    // two packed examples [0,0,0,1,1] and a padded tail
    let seg = vec![0, 0, 0, 1, 1, PAD_SEGMENT];
    let spec = MaskSpec::causal().with_segments(seg.clone());
    let v = visible(&spec, 1, 6, 6, 0);
    for i in 0..6 {
        for j in 0..6 {
            let expect = j <= i && seg[j] != PAD_SEGMENT && seg[i] == seg[j];
            assert_eq!(v[0][i][j], expect, "q{i} k{j}");
        }
    }
    // bidirectional encoder with padding: every real key visible, padding never
    let spec = MaskSpec::bidirectional().with_segments(vec![0, 0, 0, PAD_SEGMENT]);
    let v = visible(&spec, 1, 4, 4, 0);
    for row in &v[0][..3] {
        assert_eq!(row, &vec![true, true, true, false]);
    }
}

#[test]
fn prefix_tokens_ignore_targets_in_the_model() {
    // With a prefix mask, prefix outputs depend on all prefix tokens but never on targets.
    let (m, _) = build(&tiny(BlockStyle::Modern), 4);
    let spec = MaskSpec { kind: AttnMask::Prefix(vec![5]), q_segments: None, k_segments: None };
    let a: Vec<u32> = (0..10).collect();
    let mut b = a.clone();
    b[7] = 30; // a target token
    let mut c = a.clone();
    c[4] = 30; // the last prefix token
    let la = m.forward(&ids(&a, 1), &spec, None).unwrap().narrow(1, 0, 5).unwrap();
    let lb = m.forward(&ids(&b, 1), &spec, None).unwrap().narrow(1, 0, 5).unwrap();
    let lc = m.forward(&ids(&c, 1), &spec, None).unwrap().narrow(1, 0, 1).unwrap();
    assert!(max_abs_diff(&la, &lb) < 1e-6, "prefix saw a target");
    assert!(max_abs_diff(&la.narrow(1, 0, 1).unwrap(), &lc) > 1e-4, "first prefix token must see the last one");
}

#[test]
fn sequence_longer_than_context_is_a_clear_error() {
    let (m, _) = build(&tiny(BlockStyle::Gpt2), 0);
    let x = ids(&[1u32; 30], 1);
    let err = m.forward(&x, &MaskSpec::causal(), None).unwrap_err().to_string();
    assert!(err.contains("max_seq_len"), "{err}");
    let (m, _) = build(&tiny(BlockStyle::Modern), 0);
    let err = m.forward(&x, &MaskSpec::causal(), None).unwrap_err().to_string();
    assert!(err.contains("max_seq_len"), "{err}");
    let _ = D::Minus1;
}

/// A token id beyond the embedding table (a tokenizer with tokens the model lacks) is one
/// clear error naming the id, not candle's index error with its backtrace; f32 and
/// quantized tables alike.
#[test]
fn token_id_outside_the_vocabulary_is_a_clear_error() {
    for style in STYLES {
        let cfg = tiny(style);
        let (m, _) = build(&cfg, 0);
        let x = ids(&[1, 2, cfg.vocab_size as u32 + 3], 1);
        let err = m.forward(&x, &MaskSpec::causal(), None).unwrap_err().to_string();
        assert!(err.contains(&format!("token id {}", cfg.vocab_size + 3)) && err.contains("tokenizer"), "{err}");
        assert!(err.lines().count() == 1, "one line, no backtrace: {err}");
    }
}
