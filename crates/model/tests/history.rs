//! The older families: finite-difference gradient checks (f64), causality, parameter counts.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use ferrolm_model::nplm::{init_nplm, Nplm, NplmConfig};
use ferrolm_model::rnn::{init_recurrent, Cell, RecurrentConfig, RecurrentLayer, RecurrentLm};

fn rnn_cfg(cell: Cell) -> RecurrentConfig {
    RecurrentConfig { cell, vocab_size: 23, d_model: 6, hidden: 5, n_layers: 2, dropout: 0.0, max_seq_len: 32 }
}

fn nplm_cfg(direct: bool) -> NplmConfig {
    NplmConfig { vocab_size: 23, d_model: 4, context: 3, hidden: 7, direct, dropout: 0.0, max_seq_len: 32 }
}

fn ids(b: usize, t: usize, v: u32, seed: u32) -> Vec<u32> {
    (0..b * t).map(|k| (k as u32 * 7 + seed * 13 + 5) % v).collect()
}

/// A scalar function of the layer output with non-trivial weights on every element.
fn objective(y: &Tensor) -> Tensor {
    let n = y.elem_count();
    let w: Vec<f64> = (0..n).map(|k| ((k * 37 % 11) as f64 - 5.0) / 5.0).collect();
    let w = Tensor::from_vec(w, y.shape(), y.device()).unwrap();
    (y * w).unwrap().sum_all().unwrap()
}

/// Central differences against autograd for every weight of one LSTM (or Elman) layer and
/// for its input, in f64, through a 4-step recurrence (so the gradient crosses time steps).
fn gradient_check(cell: Cell, fused: bool) {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
    let (t, b, input, hidden) = (4usize, 2usize, 3usize, 5usize);
    let layer = RecurrentLayer::new(cell, input, hidden, vb.pp("layers.0")).unwrap();
    // Non-zero biases so every gate is exercised away from 0.
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let n = var.elem_count();
        let v: Vec<f64> = (0..n).map(|k| (((k * 53 + name.len() * 7) % 19) as f64 - 9.0) / 12.0).collect();
        var.set(&Tensor::from_vec(v, var.shape(), &dev).unwrap()).unwrap();
    }
    let xv: Vec<f64> = (0..t * b * input).map(|k| ((k * 29 % 17) as f64 - 8.0) / 6.0).collect();
    let x = Var::from_tensor(&Tensor::from_vec(xv, (t, b, input), &dev).unwrap()).unwrap();
    let run = |x: &Tensor| if fused { layer.forward(x).unwrap() } else { layer.forward_stepwise(x).unwrap() };
    let loss = objective(&run(x.as_tensor()));
    let grads = loss.backward().unwrap();
    let f = || objective(&run(x.as_tensor())).to_scalar::<f64>().unwrap();
    let eps = 1e-6;
    let mut vars: Vec<(String, Var)> = varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.push(("x".into(), x.clone()));
    let mut checked = 0;
    for (name, var) in &vars {
        let analytic: Vec<f64> = grads.get(var).unwrap_or_else(|| panic!("no gradient for {name}")).flatten_all().unwrap().to_vec1().unwrap();
        let base: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
        for k in 0..base.len() {
            let mut plus = base.clone();
            plus[k] += eps;
            var.set(&Tensor::from_vec(plus, var.shape(), &dev).unwrap()).unwrap();
            let fp = f();
            let mut minus = base.clone();
            minus[k] -= eps;
            var.set(&Tensor::from_vec(minus, var.shape(), &dev).unwrap()).unwrap();
            let fm = f();
            var.set(&Tensor::from_vec(base.clone(), var.shape(), &dev).unwrap()).unwrap();
            let numeric = (fp - fm) / (2.0 * eps);
            let err = (numeric - analytic[k]).abs() / (1.0 + numeric.abs());
            assert!(err < 1e-6, "{cell:?} {name}[{k}]: numeric {numeric} vs autograd {}", analytic[k]);
            checked += 1;
        }
    }
    let g = cell.gates() * hidden;
    assert_eq!(checked, g * input + g * hidden + g + t * b * input);
}

#[test]
fn lstm_layer_gradients_match_finite_differences() {
    gradient_check(Cell::Lstm, true);
    gradient_check(Cell::Lstm, false);
}

#[test]
fn elman_layer_gradients_match_finite_differences() {
    gradient_check(Cell::Elman, true);
    gradient_check(Cell::Elman, false);
}

/// The fused recurrence (hand-written BPTT) and the step-by-step candle definition
/// (autograd) agree in f32 on a larger layer: outputs and every gradient.
#[test]
fn fused_recurrence_matches_the_stepwise_definition() {
    for cell in [Cell::Lstm, Cell::Elman] {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let (t, b, input, hidden) = (13usize, 3usize, 7usize, 9usize);
        let layer = RecurrentLayer::new(cell, input, hidden, vb.pp("l")).unwrap();
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let v: Vec<f32> = (0..var.elem_count()).map(|k| (((k * 31 + name.len()) % 23) as f32 - 11.0) / 15.0).collect();
            var.set(&Tensor::from_vec(v, var.shape(), &dev).unwrap()).unwrap();
        }
        let xv: Vec<f32> = (0..t * b * input).map(|k| ((k * 17 % 29) as f32 - 14.0) / 9.0).collect();
        let x = Var::from_tensor(&Tensor::from_vec(xv, (t, b, input), &dev).unwrap()).unwrap();
        let fused = layer.forward(x.as_tensor()).unwrap();
        let step = layer.forward_stepwise(x.as_tensor()).unwrap();
        let diff = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff(&fused, &step) < 1e-5, "{cell:?} outputs differ");
        let gf = objective_f32(&fused).backward().unwrap();
        let gs = objective_f32(&step).backward().unwrap();
        let mut vars: Vec<Var> = varmap.all_vars();
        vars.push(x.clone());
        for v in &vars {
            let d = diff(gf.get(v).unwrap(), gs.get(v).unwrap());
            assert!(d < 1e-4, "{cell:?}: gradient differs by {d}");
        }
    }
}

fn objective_f32(y: &Tensor) -> Tensor {
    let n = y.elem_count();
    let w: Vec<f32> = (0..n).map(|k| ((k * 37 % 11) as f32 - 5.0) / 5.0).collect();
    (y * Tensor::from_vec(w, y.shape(), y.device()).unwrap()).unwrap().sum_all().unwrap()
}

/// Changing the token at position k never changes logits at positions < k, and does change
/// the logits at k (the model reads its input).
fn assert_causal(forward: impl Fn(&Tensor) -> Tensor, v: u32) {
    let (b, t) = (2usize, 9usize);
    let base = ids(b, t, v, 1);
    let y0: Vec<Vec<Vec<f32>>> = forward(&Tensor::from_vec(base.clone(), (b, t), &Device::Cpu).unwrap()).to_vec3().unwrap();
    for k in 0..t {
        let mut changed = base.clone();
        changed[k] = (changed[k] + 1) % v; // row 0
        let y1: Vec<Vec<Vec<f32>>> = forward(&Tensor::from_vec(changed, (b, t), &Device::Cpu).unwrap()).to_vec3().unwrap();
        for pos in 0..t {
            let same = y0[0][pos] == y1[0][pos];
            if pos < k {
                assert!(same, "changing position {k} changed logits at earlier position {pos}");
            }
            if pos == k {
                assert!(!same, "changing position {k} did not change its own logits");
            }
        }
        assert_eq!(y0[1], y1[1], "rows of a batch are independent");
    }
}

#[test]
fn recurrent_models_are_causal() {
    for cell in [Cell::Elman, Cell::Lstm] {
        let cfg = rnn_cfg(cell);
        let varmap = VarMap::new();
        let model = RecurrentLm::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
        init_recurrent(&varmap, &cfg, 3).unwrap();
        assert_causal(|x| model.forward(x, None).unwrap(), cfg.vocab_size as u32);
    }
}

#[test]
fn nplm_is_causal_and_sees_exactly_its_window() {
    for direct in [false, true] {
        let cfg = nplm_cfg(direct);
        let varmap = VarMap::new();
        let model = Nplm::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
        init_nplm(&varmap, 3).unwrap();
        let v = cfg.vocab_size as u32;
        assert_causal(|x| model.forward(x, None).unwrap(), v);
        // A token more than `context` positions back has no influence.
        let (b, t) = (1usize, 9usize);
        let base = ids(b, t, v, 2);
        let mut far = base.clone();
        far[0] = (far[0] + 3) % v;
        let y0: Vec<Vec<Vec<f32>>> = model.forward(&Tensor::from_vec(base, (b, t), &Device::Cpu).unwrap(), None).unwrap().to_vec3().unwrap();
        let y1: Vec<Vec<Vec<f32>>> = model.forward(&Tensor::from_vec(far, (b, t), &Device::Cpu).unwrap(), None).unwrap().to_vec3().unwrap();
        for pos in 0..t {
            assert_eq!(y0[0][pos] == y1[0][pos], pos >= cfg.context, "position {pos}");
        }
    }
}

#[test]
fn nplm_gradients_match_finite_differences() {
    let dev = Device::Cpu;
    let cfg = nplm_cfg(true);
    let varmap = VarMap::new();
    let model = Nplm::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F64, &dev)).unwrap();
    init_nplm(&varmap, 5).unwrap();
    // Direct connections start at zero; move them so their gradient path is tested.
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if name == "direct.weight" {
            let v: Vec<f64> = (0..var.elem_count()).map(|k| ((k % 7) as f64 - 3.0) / 20.0).collect();
            var.set(&Tensor::from_vec(v, var.shape(), &dev).unwrap()).unwrap();
        }
    }
    let x = Tensor::from_vec(ids(2, 5, cfg.vocab_size as u32, 4), (2, 5), &dev).unwrap();
    let f = || objective(&model.forward(&x, None).unwrap());
    let grads = f().backward().unwrap();
    let eps = 1e-6;
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let analytic: Vec<f64> = grads.get(var).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let base: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
        // every 3rd element keeps the test fast while covering every tensor
        for k in (0..base.len()).step_by(3) {
            let mut p = base.clone();
            p[k] += eps;
            var.set(&Tensor::from_vec(p, var.shape(), &dev).unwrap()).unwrap();
            let fp = f().to_scalar::<f64>().unwrap();
            let mut m = base.clone();
            m[k] -= eps;
            var.set(&Tensor::from_vec(m, var.shape(), &dev).unwrap()).unwrap();
            let fm = f().to_scalar::<f64>().unwrap();
            var.set(&Tensor::from_vec(base.clone(), var.shape(), &dev).unwrap()).unwrap();
            let numeric = (fp - fm) / (2.0 * eps);
            assert!((numeric - analytic[k]).abs() / (1.0 + numeric.abs()) < 1e-6, "{name}[{k}]: {numeric} vs {}", analytic[k]);
        }
    }
}

#[test]
fn parameter_counts_match_the_built_models() {
    let count = |varmap: &VarMap| varmap.all_vars().iter().map(|v| v.elem_count()).sum::<usize>();
    for cell in [Cell::Elman, Cell::Lstm] {
        let cfg = rnn_cfg(cell);
        let varmap = VarMap::new();
        RecurrentLm::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
        assert_eq!(count(&varmap), cfg.num_params(), "{cell:?}");
    }
    for direct in [false, true] {
        let cfg = nplm_cfg(direct);
        let varmap = VarMap::new();
        Nplm::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
        assert_eq!(count(&varmap), cfg.num_params(), "direct {direct}");
    }
}

#[test]
fn lstm_forget_gate_bias_starts_at_one() {
    let cfg = rnn_cfg(Cell::Lstm);
    let varmap = VarMap::new();
    RecurrentLm::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    init_recurrent(&varmap, &cfg, 1).unwrap();
    let data = varmap.data().lock().unwrap();
    let b: Vec<f32> = data["layers.1.bias"].flatten_all().unwrap().to_vec1().unwrap();
    let h = cfg.hidden;
    assert!(b[..h].iter().all(|&x| x == 0.0));
    assert!(b[h..2 * h].iter().all(|&x| x == 1.0));
    assert!(b[2 * h..].iter().all(|&x| x == 0.0));
}
