use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use ferrolm_infer::sampling::{argmax, SamplingConfig};
use ferrolm_infer::{generate, GenerateConfig};
use ferrolm_model::attention::MaskSpec;
use ferrolm_model::{init::init_params, BlockStyle, Transformer, TransformerConfig};

fn model(style: BlockStyle) -> Transformer {
    let cfg = TransformerConfig { vocab_size: 23, d_model: 32, n_layers: 2, n_heads: 4, n_kv_heads: 4, max_seq_len: 16, block: style, ..Default::default() };
    let vm = VarMap::new();
    let m = Transformer::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    init_params(&vm, 2, 5).unwrap();
    // Larger weights than init so greedy paths are not all one token.
    for v in vm.all_vars() {
        v.set(&(v.as_tensor() * 20.0).unwrap()).unwrap();
    }
    m
}

/// Greedy decoding by full recomputation of the window each step.
fn greedy_reference(m: &Transformer, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut h = prompt.to_vec();
    let mut out = vec![];
    for _ in 0..n {
        let x = Tensor::new(h.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let l = m.forward(&x, &MaskSpec::causal(), None).unwrap();
        let last: Vec<f32> = l.narrow(1, h.len() - 1, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let t = argmax(&last);
        out.push(t);
        h.push(t);
    }
    out
}

#[test]
fn cached_greedy_generation_equals_recomputation() {
    for style in [BlockStyle::Gpt2, BlockStyle::Modern] {
        let m = model(style);
        let prompt = [3u32, 9, 1, 4];
        let cfg = GenerateConfig { max_tokens: 10, stop_tokens: vec![], sampling: SamplingConfig { temperature: 0.0, ..Default::default() } };
        let mut streamed = vec![];
        let got = generate(&m, &prompt, &cfg, |t| {
            streamed.push(t);
            true
        })
        .unwrap();
        assert_eq!(got, greedy_reference(&m, &prompt, 10), "{style:?}");
        assert_eq!(got, streamed, "every token is streamed");
        assert!(got.iter().any(|&t| t != got[0]), "degenerate test model");
    }
}

#[test]
fn generation_stops_at_a_stop_token_and_survives_a_full_context() {
    let m = model(BlockStyle::Gpt2);
    let cfg = GenerateConfig { max_tokens: 40, stop_tokens: vec![], sampling: SamplingConfig { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 7 } };
    // 40 new tokens with a 16-token context: the window must slide.
    let out = generate(&m, &[1, 2, 3], &cfg, |_| true).unwrap();
    assert_eq!(out.len(), 40);
    let stop = out[5];
    let cfg = GenerateConfig { stop_tokens: vec![stop], ..cfg };
    let out2 = generate(&m, &[1, 2, 3], &cfg, |_| true).unwrap();
    let first = out.iter().position(|&t| t == stop).unwrap();
    assert_eq!(out2, out[..=first].to_vec(), "same seed, same tokens, stopped at the first stop token");
}
