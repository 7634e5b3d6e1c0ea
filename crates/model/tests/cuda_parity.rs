//! GPU parity (issue 17), built only with `--features cuda` and run by `bench/gpu.sh` on a
//! machine with a GPU: every op ferrolm's models call — the fused CPU kernels on one side,
//! the composed candle path a CUDA device takes on the other — gives the same values and
//! the same gradients, and whole models (GPT-2 and modern blocks, causal and prefix masks,
//! LoRA adapters) give the same loss and gradients on both devices.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use ferrolm_model::attention::MaskSpec;
use ferrolm_model::{init::init_params, BlockStyle, Transformer, TransformerConfig};

fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

fn rand(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let v = ferrolm_model::init::seeded_uniform("parity", seed, n, 1.0);
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let b = b.to_device(&Device::Cpu).unwrap();
    (a.to_device(&Device::Cpu).unwrap() - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Forward and gradient of `f` at `x` on the CPU and on the GPU.
fn check_op(name: &str, gpu: &Device, x: &Tensor, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>, tol: f32) {
    let run = |dev: &Device| {
        let v = Var::from_tensor(&x.to_device(dev).unwrap()).unwrap();
        let y = f(v.as_tensor()).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap().remove(v.as_tensor()).unwrap();
        (y, g)
    };
    let (yc, gc) = run(&Device::Cpu);
    let (yg, gg) = run(gpu);
    let (dy, dg) = (max_diff(&yc, &yg), max_diff(&gc, &gg));
    assert!(dy < tol && dg < tol, "{name}: forward {dy}, gradient {dg}");
    eprintln!("{name}: forward {dy:.2e}, gradient {dg:.2e}");
}

#[test]
fn every_kernel_matches_its_cuda_path() {
    let Some(g) = gpu() else { return };
    let x = rand(&[4, 9, 48], 1);
    let w = rand(&[40, 48], 2);
    let b = rand(&[40], 3);
    check_op("linear", &g, &x, |x| ferrolm_kernels::linear(x, &w.to_device(x.device())?, Some(&b.to_device(x.device())?)), 1e-4);
    check_op("gelu", &g, &x, ferrolm_kernels::gelu, 1e-5);
    let gain = (rand(&[48], 4) + 1.0).unwrap();
    let shift = rand(&[48], 7);
    check_op("layer_norm", &g, &x, |x| ferrolm_kernels::layer_norm(x, &gain.to_device(x.device())?, &shift.to_device(x.device())?, 1e-5), 1e-4);
    check_op("rms_norm", &g, &x, |x| ferrolm_kernels::rms_norm(x, &gain.to_device(x.device())?, 1e-5), 1e-4);
    let s = rand(&[2, 3, 9, 9], 5);
    check_op("scaled causal softmax", &g, &s, |s| ferrolm_kernels::scaled_softmax(s, 0.3, Some(0)), 1e-5);
    let logits = (rand(&[12, 31], 6) * 3.0).unwrap();
    let t: Vec<u32> = (0..12).map(|i| if i % 4 == 3 { ferrolm_kernels::IGNORE_INDEX } else { (i * 7 % 31) as u32 }).collect();
    let t = Tensor::new(t.as_slice(), &Device::Cpu).unwrap();
    check_op("cross_entropy (ignore index)", &g, &logits, |l| ferrolm_kernels::cross_entropy(l, &t.to_device(l.device())?), 1e-5);
}

fn model(cfg: &TransformerConfig, dev: &Device, lora: bool) -> (Transformer, VarMap) {
    let vm = VarMap::new();
    let mut m = Transformer::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, dev)).unwrap();
    init_params(&vm, cfg.n_layers, 11).unwrap();
    if lora {
        let l = ferrolm_model::lora::LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: vec!["all".into()], quant: None };
        ferrolm_model::lora::attach(&mut m, &vm, &l, 3).unwrap();
        for v in vm.all_vars() {
            // B = 0 would hide a wrong adapter path: give every B values.
            if v.dims().len() == 2 && v.as_tensor().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() == 0.0 {
                v.set(&(rand(v.dims(), 9) * 0.1).unwrap().to_device(dev).unwrap()).unwrap();
            }
        }
    }
    (m, vm)
}

#[test]
fn whole_models_give_the_same_loss_and_gradients_on_cpu_and_gpu() {
    let Some(g) = gpu() else { return };
    for (block, kind, lora) in [(BlockStyle::Gpt2, "causal", false), (BlockStyle::Modern, "causal", false), (BlockStyle::Modern, "prefix", false), (BlockStyle::Modern, "causal", true)] {
        let cfg = TransformerConfig { vocab_size: 61, d_model: 64, n_layers: 2, n_heads: 4, n_kv_heads: if block == BlockStyle::Modern { 2 } else { 4 }, max_seq_len: 32, block, ..Default::default() };
        let ids: Vec<u32> = (0..2 * 16).map(|i| (i * 13 % 61) as u32).collect();
        let run = |dev: &Device| {
            let (m, vm) = model(&cfg, dev, lora);
            let x = Tensor::from_vec(ids.clone(), (2, 16), dev).unwrap();
            let mask = if kind == "prefix" { MaskSpec { kind: ferrolm_model::AttnMask::Prefix(vec![5, 9]), ..MaskSpec::causal() } } else { MaskSpec::causal() };
            let logits = m.forward(&x.narrow(1, 0, 15).unwrap(), &mask, None).unwrap();
            let tgt = x.narrow(1, 1, 15).unwrap().flatten_all().unwrap();
            let loss = ferrolm_kernels::cross_entropy(&logits.flatten_to(1).unwrap(), &tgt).unwrap();
            let grads = loss.backward().unwrap();
            let mut named: Vec<(String, Tensor)> = vm.data().lock().unwrap().iter().filter_map(|(n, v)| grads.get(v.as_tensor()).map(|g| (n.clone(), g.clone()))).collect();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            (loss.to_device(&Device::Cpu).unwrap().to_scalar::<f32>().unwrap(), named)
        };
        let (lc, gc) = run(&Device::Cpu);
        let (lg, gg) = run(&g);
        assert!((lc - lg).abs() < 1e-4, "{block:?} {kind} lora={lora}: loss {lc} vs {lg}");
        assert_eq!(gc.len(), gg.len());
        let worst = gc.iter().zip(&gg).map(|((n, a), (_, b))| (max_diff(a, b), n.clone())).fold((0f32, String::new()), |m, x| if x.0 > m.0 { x } else { m });
        assert!(worst.0 < 1e-4, "{block:?} {kind} lora={lora}: gradient of {} differs by {}", worst.1, worst.0);
        eprintln!("{block:?} {kind} lora={lora}: loss {lc} vs {lg}, worst gradient {} ({})", worst.0, worst.1);
    }
}
