//! KV-cache generation equals recomputation for the prefix decoder and the
//! encoder-decoder; mask filling ranks the masked LM's predictions.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use ferrolm_infer::sampling::{argmax, SamplingConfig};
use ferrolm_infer::{fill_mask, generate_prefix, generate_seq2seq, GenerateConfig};
use ferrolm_model::attention::{AttnMask, MaskSpec};
use ferrolm_model::{init::init_params, BlockStyle, EncoderDecoder, MaskedLm, ModelKind, Transformer, TransformerConfig};

fn cfg(kind: ModelKind, style: BlockStyle) -> TransformerConfig {
    TransformerConfig { kind, vocab_size: 23, d_model: 32, n_layers: 2, n_heads: 4, n_kv_heads: if style == BlockStyle::Gpt2 { 4 } else { 2 }, max_seq_len: 16, block: style, ..Default::default() }
}

/// Weights larger than init so greedy paths are not all one token.
fn scaled(vm: &VarMap) {
    init_params(vm, 2, 5).unwrap();
    for v in vm.all_vars() {
        v.set(&(v.as_tensor() * 20.0).unwrap()).unwrap();
    }
}

fn greedy(max_tokens: usize) -> GenerateConfig {
    GenerateConfig { max_tokens, stop_tokens: vec![], sampling: SamplingConfig { temperature: 0.0, ..Default::default() } }
}

fn last(l: &Tensor, pos: usize) -> Vec<f32> {
    l.narrow(1, pos, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn prefix_generation_with_cache_equals_recomputation() {
    for style in [BlockStyle::Gpt2, BlockStyle::Modern] {
        let vm = VarMap::new();
        let m = Transformer::new(&cfg(ModelKind::Prefix, style), VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        scaled(&vm);
        let prefix = [3u32, 9, 1, 4, 7];
        let got = generate_prefix(&m, &prefix, &greedy(8), |_| true).unwrap();
        // reference: the whole sequence recomputed each step under the prefix mask
        let mut h = prefix.to_vec();
        let mut want = vec![];
        for _ in 0..8 {
            let mask = MaskSpec { kind: AttnMask::Prefix(vec![prefix.len()]), q_segments: None, k_segments: None };
            let x = Tensor::new(h.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let t = argmax(&last(&m.forward(&x, &mask, None).unwrap(), h.len() - 1));
            want.push(t);
            h.push(t);
        }
        assert_eq!(got, want, "{style:?}");
        assert!(want.iter().collect::<std::collections::HashSet<_>>().len() > 1, "degenerate test: one token only");
        // the prefix is bidirectional: the next-token logits differ from a causal pass
        let x = Tensor::new(&prefix, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let mask = MaskSpec { kind: AttnMask::Prefix(vec![prefix.len()]), q_segments: None, k_segments: None };
        let (a, b) = (last(&m.forward(&x, &mask, None).unwrap(), 4), last(&m.forward(&x, &MaskSpec::causal(), None).unwrap(), 4));
        let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(diff > 1e-3, "{style:?}: prefix attention made no difference");
    }
}

#[test]
fn seq2seq_generation_with_cache_equals_recomputation() {
    for style in [BlockStyle::Gpt2, BlockStyle::Modern] {
        let vm = VarMap::new();
        let m = EncoderDecoder::new(&cfg(ModelKind::EncoderDecoder, style), VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        scaled(&vm);
        let src = [3u32, 9, 1, 4, 7, 12];
        let got = generate_seq2seq(&m, &src, 0, &greedy(9), |_| true).unwrap();
        let s = Tensor::new(&src, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let mut tgt = vec![0u32];
        let mut want = vec![];
        for _ in 0..9 {
            let t = Tensor::new(tgt.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let next = argmax(&last(&m.forward(&s, &t).unwrap(), tgt.len() - 1));
            want.push(next);
            tgt.push(next);
        }
        assert_eq!(got, want, "{style:?}");
        assert!(want.iter().collect::<std::collections::HashSet<_>>().len() > 1, "degenerate test");
        // a different source gives a different output: the decoder reads the encoder
        let other = generate_seq2seq(&m, &[5, 5, 2, 8], 0, &greedy(9), |_| true).unwrap();
        assert_ne!(other, got);
        // stop tokens end generation (and are included)
        let stop = GenerateConfig { stop_tokens: vec![got[2]], ..greedy(9) };
        let first_stop = got.iter().position(|&t| t == got[2]).unwrap();
        assert_eq!(generate_seq2seq(&m, &src, 0, &stop, |_| true).unwrap(), got[..=first_stop].to_vec());
    }
}

/// The documented slide rule, recomputed without a cache: the window starts at `start`
/// (moved to the most recent ctx/2 tokens whenever the next token would not fit) and its
/// prompt tokens are the bidirectional prefix.
fn prefix_reference(m: &Transformer, prompt: &[u32], n: usize) -> Vec<u32> {
    let ctx = m.config().max_seq_len;
    let mut h = prompt.to_vec();
    let mut start = if h.len() > ctx { h.len() - ctx / 2 } else { 0 };
    let mut out = vec![];
    for i in 0..n {
        if i > 0 && h.len() - start > ctx {
            start = h.len() - ctx / 2;
        }
        let mask = MaskSpec { kind: AttnMask::Prefix(vec![prompt.len().saturating_sub(start)]), q_segments: None, k_segments: None };
        let x = Tensor::new(&h[start..], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let t = argmax(&last(&m.forward(&x, &mask, None).unwrap(), h.len() - start - 1));
        out.push(t);
        h.push(t);
    }
    out
}

#[test]
fn prefix_generation_slides_past_the_context() {
    for style in [BlockStyle::Gpt2, BlockStyle::Modern] {
        let vm = VarMap::new();
        let m = Transformer::new(&cfg(ModelKind::Prefix, style), VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        scaled(&vm);
        // context 16: 5 prompt tokens + 60 new ones is four times the window
        let prompt = [3u32, 9, 1, 4, 7];
        let got = generate_prefix(&m, &prompt, &greedy(60), |_| true).unwrap();
        assert_eq!(got.len(), 60, "{style:?}: generation stopped at the context end");
        assert_eq!(got, prefix_reference(&m, &prompt, 60), "{style:?}: cached sliding differs from recomputation");
        assert!(got.iter().collect::<std::collections::HashSet<_>>().len() > 1, "degenerate test: one token only");
        // a prompt longer than the context keeps its tail as the prefix
        let long: Vec<u32> = (0..40).map(|i| (i * 7 % 23) as u32).collect();
        let got = generate_prefix(&m, &long, &greedy(30), |_| true).unwrap();
        assert_eq!(got, prefix_reference(&m, &long, 30), "{style:?}: long prompt");
    }
}

#[test]
fn seq2seq_generation_slides_past_the_context() {
    for style in [BlockStyle::Gpt2, BlockStyle::Modern] {
        let vm = VarMap::new();
        let m = EncoderDecoder::new(&cfg(ModelKind::EncoderDecoder, style), VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        scaled(&vm);
        let src = [3u32, 9, 1, 4, 7, 12];
        let got = generate_seq2seq(&m, &src, 0, &greedy(50), |_| true).unwrap();
        assert_eq!(got.len(), 50, "{style:?}: generation stopped at the context end");
        // reference without a cache: the decoder input is the start token plus the generated
        // tokens since the last slide (to the most recent ctx/2 − 1 when the next would not fit)
        let ctx = 16;
        let s = Tensor::new(&src, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let (mut out, mut keep): (Vec<u32>, usize) = (vec![], 0);
        for _ in 0..50 {
            if out.len() - keep + 1 > ctx {
                keep = out.len() + 1 - ctx / 2;
            }
            let tgt: Vec<u32> = std::iter::once(0).chain(out[keep..].iter().copied()).collect();
            let t = Tensor::new(tgt.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            out.push(argmax(&last(&m.forward(&s, &t).unwrap(), tgt.len() - 1)));
        }
        assert_eq!(got, out, "{style:?}: cached sliding differs from recomputation");
        assert!(out.iter().collect::<std::collections::HashSet<_>>().len() > 1, "degenerate test");
        // a source longer than the context is an error, not a silent truncation
        assert!(generate_seq2seq(&m, &[1; 17], 0, &greedy(3), |_| true).is_err());
    }
}

#[test]
fn fill_mask_ranks_the_mlm_predictions_at_each_mask() {
    let vm = VarMap::new();
    let m = MaskedLm::new(&cfg(ModelKind::MaskedLm, BlockStyle::Modern), VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    scaled(&vm);
    let ids = [3u32, 1, 9, 4, 1, 7];
    let out = fill_mask(&m, &ids, 1, 5).unwrap();
    assert_eq!(out.iter().map(|o| o.0).collect::<Vec<_>>(), vec![1, 4]);
    let h = m.hidden(&Tensor::new(&ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap(), &MaskSpec::bidirectional(), None).unwrap();
    let logits = m.mlm_logits(&h).unwrap();
    for (pos, top) in &out {
        assert_eq!(top.len(), 5);
        assert!(top.windows(2).all(|w| w[0].1 >= w[1].1), "sorted by probability");
        assert_eq!(top[0].0, argmax(&last(&logits, *pos)));
        assert!(top.iter().map(|t| t.1).sum::<f32>() <= 1.0 + 1e-5);
    }
    assert!(fill_mask(&m, &[3, 4], 1, 5).is_err(), "no mask is an error");
}
