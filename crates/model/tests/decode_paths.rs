//! The two implementations of batched decoding give the same logits: the fused decode
//! attention (host caches read in place, the default on the CPU) and the per-row loop of
//! candle ops kept for other devices and for comparison. In its own test binary because
//! the switch between them is process-wide.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use ferrolm_model::attention::{set_row_loop_decoding, MaskSpec};
use ferrolm_model::{init::init_params, BlockStyle, KvCache, Transformer, TransformerConfig};

#[test]
fn fused_and_row_loop_decoding_agree() {
    let base = TransformerConfig { vocab_size: 31, d_model: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, max_seq_len: 40, block: BlockStyle::Modern, ..Default::default() };
    for cfg in [base.clone(), TransformerConfig { block: BlockStyle::Gpt2, n_kv_heads: 4, ..base.clone() }, TransformerConfig { qk_norm: true, head_size: 6, ..base }] {
        let vm = VarMap::new();
        let m = Transformer::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        init_params(&vm, cfg.n_layers, 5).unwrap();
        let prompts: [&[u32]; 4] = [&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], &[3], &[7, 7, 2, 30], &[5, 6]];
        // caches filled under each path (tensor caches for the row loop, host caches for
        // the kernel), then a switch half-way, which converts them
        let mut logits = Vec::new();
        for rows_first in [true, false] {
            set_row_loop_decoding(rows_first);
            let mut caches: Vec<KvCache> = prompts.iter().map(|_| m.new_cache()).collect();
            for (p, c) in prompts.iter().zip(caches.iter_mut()) {
                m.forward(&Tensor::new(*p, &Device::Cpu).unwrap().unsqueeze(0).unwrap(), &MaskSpec::causal(), Some(c)).unwrap();
            }
            let mut tokens = vec![4u32, 9, 1, 17];
            let mut out = Vec::new();
            for step in 0..6 {
                if step == 3 {
                    set_row_loop_decoding(!rows_first);
                }
                let l: Vec<Vec<f32>> = m.decode_step(&tokens, &mut caches.iter_mut().collect::<Vec<_>>()).unwrap().to_vec2().unwrap();
                tokens = tokens.iter().map(|t| (t * 5 + step + 2) % 31).collect();
                out.push(l);
            }
            for (c, p) in caches.iter().zip(prompts) {
                assert_eq!(c.len(), p.len() + 6);
            }
            logits.push(out);
        }
        let worst = logits[0].iter().flatten().flatten().zip(logits[1].iter().flatten().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "{:?}: the paths differ by {worst}", cfg.block);
    }
}
