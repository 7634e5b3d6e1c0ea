//! Attention semantics, cache == recompute, parameter counts and overfitting for the
//! encoder-decoder and the masked LM (the prefix decoder's mask is pinned in transformer.rs).

use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use ferrolm_model::attention::{MaskSpec, PAD_SEGMENT};
use ferrolm_model::{init::init_params, BlockStyle, EncoderDecoder, MaskedLm, ModelKind, TransformerConfig};

fn tiny(kind: ModelKind, block: BlockStyle) -> TransformerConfig {
    TransformerConfig {
        kind,
        vocab_size: 29,
        d_model: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: if block == BlockStyle::Modern { 2 } else { 4 },
        max_seq_len: 16,
        block,
        tie_embeddings: true,
        nsp_head: true,
        ..Default::default()
    }
}

const STYLES: [BlockStyle; 2] = [BlockStyle::Gpt2, BlockStyle::Modern];

fn ids(v: &[u32], b: usize) -> Tensor {
    Tensor::from_vec(v.to_vec(), (b, v.len() / b), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

fn encdec(cfg: &TransformerConfig, seed: u64) -> (EncoderDecoder, VarMap) {
    let vm = VarMap::new();
    let m = EncoderDecoder::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    init_params(&vm, cfg.n_layers, seed).unwrap();
    (m, vm)
}

fn mlm(cfg: &TransformerConfig, seed: u64) -> (MaskedLm, VarMap) {
    let vm = VarMap::new();
    let m = MaskedLm::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    init_params(&vm, cfg.n_layers, seed).unwrap();
    (m, vm)
}

fn n_params(vm: &VarMap) -> usize {
    vm.all_vars().iter().map(|v| v.elem_count()).sum()
}

#[test]
fn declared_parameter_counts_match_built_models() {
    for style in STYLES {
        for tie in [true, false] {
            let cfg = TransformerConfig { tie_embeddings: tie, ..tiny(ModelKind::EncoderDecoder, style) };
            assert_eq!(cfg.num_params(), n_params(&encdec(&cfg, 0).1), "enc-dec {style:?} tie={tie}");
            let cfg = TransformerConfig { n_encoder_layers: 3, ..cfg };
            assert_eq!(cfg.num_params(), n_params(&encdec(&cfg, 0).1), "enc-dec 3+2 {style:?}");
            for nsp in [true, false] {
                let cfg = TransformerConfig { tie_embeddings: tie, nsp_head: nsp, ..tiny(ModelKind::MaskedLm, style) };
                assert_eq!(cfg.num_params(), n_params(&mlm(&cfg, 0).1), "mlm {style:?} tie={tie} nsp={nsp}");
            }
        }
    }
}

#[test]
fn decoder_sees_all_encoder_positions_and_only_earlier_decoder_positions() {
    for style in STYLES {
        let (m, _) = encdec(&tiny(ModelKind::EncoderDecoder, style), 3);
        let src: Vec<u32> = (1..9).collect();
        let tgt: Vec<u32> = vec![2, 5, 7, 11, 13, 17];
        let base = m.forward(&ids(&src, 1), &ids(&tgt, 1)).unwrap();
        // every encoder position (including the last) reaches the first decoder position
        for j in [0usize, 7] {
            let mut s2 = src.clone();
            s2[j] = 20;
            let l = m.forward(&ids(&s2, 1), &ids(&tgt, 1)).unwrap();
            assert!(max_abs_diff(&base.narrow(1, 0, 1).unwrap(), &l.narrow(1, 0, 1).unwrap()) > 1e-5, "{style:?}: src {j} unseen");
        }
        // a later decoder token never changes earlier decoder outputs
        let mut t2 = tgt.clone();
        t2[3] = 1;
        let l = m.forward(&ids(&src, 1), &ids(&t2, 1)).unwrap();
        assert!(max_abs_diff(&base.narrow(1, 0, 3).unwrap(), &l.narrow(1, 0, 3).unwrap()) < 1e-6, "{style:?}: decoder saw the future");
        assert!(max_abs_diff(&base.narrow(1, 3, 1).unwrap(), &l.narrow(1, 3, 1).unwrap()) > 1e-5);
        // encoder is bidirectional: the first encoder output depends on the last token
        let e1 = m.encode(&ids(&src, 1), &MaskSpec::bidirectional(), None).unwrap();
        let mut s2 = src.clone();
        s2[7] = 20;
        let e2 = m.encode(&ids(&s2, 1), &MaskSpec::bidirectional(), None).unwrap();
        assert!(max_abs_diff(&e1.narrow(1, 0, 1).unwrap(), &e2.narrow(1, 0, 1).unwrap()) > 1e-5);
    }
}

#[test]
fn source_padding_is_never_attended_by_encoder_or_decoder() {
    for style in STYLES {
        let (m, _) = encdec(&tiny(ModelKind::EncoderDecoder, style), 5);
        let seg = vec![0, 0, 0, 0, 0, PAD_SEGMENT, PAD_SEGMENT];
        let run = |pad_tok: u32| {
            let src = ids(&[3, 4, 5, 6, 7, pad_tok, pad_tok], 1);
            let mem = m.encode(&src, &MaskSpec::bidirectional().with_segments(seg.clone()), None).unwrap();
            let h = m
                .decode_hidden(&ids(&[1, 2, 3], 1), &mem, &MaskSpec::causal(), &EncoderDecoder::cross_mask(Some(seg.clone())), None, None)
                .unwrap();
            (mem.narrow(1, 0, 5).unwrap(), h)
        };
        let (m1, h1) = run(0);
        let (m2, h2) = run(21);
        assert!(max_abs_diff(&m1, &m2) < 1e-6, "{style:?}: encoder attended padding");
        assert!(max_abs_diff(&h1, &h2) < 1e-6, "{style:?}: decoder attended padding");
    }
}

#[test]
fn encoder_decoder_kv_cache_equals_recomputation() {
    for style in STYLES {
        let (m, _) = encdec(&tiny(ModelKind::EncoderDecoder, style), 7);
        let src = ids(&[4, 8, 15, 16, 23, 28], 1);
        let tgt: Vec<u32> = vec![0, 9, 3, 12, 5, 27, 1];
        let full = m.forward(&src, &ids(&tgt, 1)).unwrap();
        let mem = m.encode(&src, &MaskSpec::bidirectional(), None).unwrap();
        let cross = EncoderDecoder::cross_mask(None);
        let mut cache = m.new_cache();
        // a two-token first chunk, then one token at a time
        let mut outs = vec![m.logits(&m.decode_hidden(&ids(&tgt[..2], 1), &mem, &MaskSpec::causal(), &cross, Some(&mut cache), None).unwrap()).unwrap()];
        for t in 2..tgt.len() {
            let h = m.decode_hidden(&ids(&tgt[t..t + 1], 1), &mem, &MaskSpec::causal(), &cross, Some(&mut cache), None).unwrap();
            outs.push(m.logits(&h).unwrap());
        }
        let inc = Tensor::cat(&outs, 1).unwrap();
        assert!(max_abs_diff(&full, &inc) < 1e-4, "{style:?}: cache != recompute ({})", max_abs_diff(&full, &inc));
    }
}

#[test]
fn masked_lm_is_bidirectional_and_ignores_padding() {
    for style in STYLES {
        let (m, _) = mlm(&tiny(ModelKind::MaskedLm, style), 9);
        let a: Vec<u32> = vec![1, 2, 3, 4, 5, 6];
        let mut b = a.clone();
        b[5] = 20;
        let ha = m.hidden(&ids(&a, 1), &MaskSpec::bidirectional(), None).unwrap();
        let hb = m.hidden(&ids(&b, 1), &MaskSpec::bidirectional(), None).unwrap();
        assert!(max_abs_diff(&ha.narrow(1, 0, 1).unwrap(), &hb.narrow(1, 0, 1).unwrap()) > 1e-5, "{style:?}: not bidirectional");
        let seg = vec![0, 0, 0, 0, PAD_SEGMENT, PAD_SEGMENT];
        let spec = MaskSpec::bidirectional().with_segments(seg);
        let mut c = a.clone();
        c[4] = 17;
        c[5] = 11;
        let ha = m.hidden(&ids(&a, 1), &spec, None).unwrap().narrow(1, 0, 4).unwrap();
        let hc = m.hidden(&ids(&c, 1), &spec, None).unwrap().narrow(1, 0, 4).unwrap();
        assert!(max_abs_diff(&ha, &hc) < 1e-6, "{style:?}: padding attended");
        let pooled = m.pooled(&hb).unwrap();
        assert_eq!(pooled.dims(), &[1, 32]);
        assert_eq!(m.nsp_logits(&pooled).unwrap().dims(), &[1, 2]);
        assert_eq!(m.mlm_logits(&hb).unwrap().dims(), &[1, 6, 29]);
    }
}

fn ce(logits: &Tensor, targets: &[u32]) -> Tensor {
    let v = logits.dim(candle_core::D::Minus1).unwrap();
    let l = logits.reshape(((), v)).unwrap();
    candle_nn::loss::cross_entropy(&l, &Tensor::new(targets, &Device::Cpu).unwrap()).unwrap()
}

#[test]
fn tiny_encoder_decoder_and_masked_lm_overfit_a_tiny_batch() {
    let cfg = tiny(ModelKind::EncoderDecoder, BlockStyle::Modern);
    let (m, vm) = encdec(&cfg, 11);
    let src = ids(&[3, 9, 4, 7, 2, 8, 10, 11, 12, 13, 14, 15], 2);
    let tgt_in = ids(&[0, 7, 4, 9, 0, 15, 13, 11], 2);
    let tgt_out = [7u32, 4, 9, 3, 15, 13, 11, 2];
    let mut opt = candle_nn::AdamW::new_lr(vm.all_vars(), 1e-2).unwrap();
    let first = ce(&m.forward(&src, &tgt_in).unwrap(), &tgt_out).to_scalar::<f32>().unwrap();
    let mut last = first;
    for _ in 0..60 {
        let loss = ce(&m.forward(&src, &tgt_in).unwrap(), &tgt_out);
        last = loss.to_scalar::<f32>().unwrap();
        opt.backward_step(&loss).unwrap();
    }
    assert!(first > 3.0 && last < 0.05, "enc-dec did not overfit: {first} → {last}");

    // without the NSP head (and its segment embeddings): the plain MLM path; the sentence
    // pair path overfits in ferrolm-train's tests/arch.rs
    let cfg = TransformerConfig { nsp_head: false, ..tiny(ModelKind::MaskedLm, BlockStyle::Gpt2) };
    let (m, vm) = mlm(&cfg, 12);
    let mask_id = 1u32;
    let input = ids(&[5, mask_id, 7, 8, mask_id, 10, 20, 21, mask_id, 23, 24, 25], 2);
    let targets = [6u32, 9, 22];
    let pos = Tensor::new(&[1u32, 4, 6 + 2], &Device::Cpu).unwrap();
    let mut opt = candle_nn::AdamW::new_lr(vm.all_vars(), 1e-2).unwrap();
    let step = || {
        let h = m.hidden(&input, &MaskSpec::bidirectional(), None).unwrap().reshape((12, 32)).unwrap();
        ce(&m.mlm_logits(&h.index_select(&pos, 0).unwrap()).unwrap(), &targets)
    };
    let first = step().to_scalar::<f32>().unwrap();
    let mut last = first;
    for _ in 0..60 {
        let loss = step();
        last = loss.to_scalar::<f32>().unwrap();
        opt.backward_step(&loss).unwrap();
    }
    assert!(first > 3.0 && last < 0.05, "mlm did not overfit: {first} → {last}");
}
