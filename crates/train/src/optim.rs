//! AdamW (Loshchilov & Hutter) with two parameter groups: weights that decay, and
//! norms / biases / (by default) embeddings that do not. Moments are kept as plain f32
//! buffers and the update is one fused pass per parameter: reading the gradient,
//! updating both moments and writing the new weight together, instead of the dozen
//! temporary tensors a composed update allocates.

use std::collections::HashMap;

use anyhow::{Context, Result};
use candle_core::{backprop::GradStore, Device, Tensor, Var};

use crate::config::TrainConfig;

/// One trainable tensor with its optimizer state.
pub struct Param {
    pub name: String,
    pub var: Var,
    pub decay: bool,
    m: Vec<f32>,
    v: Vec<f32>,
}

pub struct AdamW {
    pub params: Vec<Param>,
    /// Number of updates applied so far (Adam's t).
    pub t: u64,
}

/// Which parameters get weight decay: matrices (rank ≥ 2) except embeddings unless
/// configured; never norm gains or biases.
pub fn decays(name: &str, rank: usize, cfg: &TrainConfig) -> bool {
    let is_embedding = name.starts_with("wte.") || name.starts_with("wpe.") || name.contains(".wte.") || name.contains(".wpe.");
    rank >= 2 && (cfg.decay_embeddings || !is_embedding)
}

impl AdamW {
    /// Parameters sorted by name so state files and updates are deterministic.
    pub fn new(vars: &HashMap<String, Var>, cfg: &TrainConfig) -> Self {
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        let params = names
            .into_iter()
            .map(|name| {
                let var = vars[name].clone();
                let n = var.elem_count();
                Param { name: name.clone(), decay: decays(name, var.rank(), cfg), var, m: vec![0.0; n], v: vec![0.0; n] }
            })
            .collect();
        Self { params, t: 0 }
    }

    /// Flattened gradients in parameter order (zeros for parameters without a gradient).
    pub fn collect_grads(&self, grads: &GradStore) -> Result<Vec<Vec<f32>>> {
        self.params
            .iter()
            .map(|p| match grads.get(&p.var) {
                Some(g) => g.flatten_all()?.to_vec1::<f32>().with_context(|| format!("gradient of {}", p.name)),
                None => Ok(vec![0.0; p.var.elem_count()]),
            })
            .collect()
    }

    /// Apply one update with learning rate `lr`. `grads` are modified (clipped) in place.
    /// Returns the global gradient norm before clipping.
    pub fn step(&mut self, grads: &mut [Vec<f32>], lr: f64, cfg: &TrainConfig) -> Result<f64> {
        let norm = global_norm(grads);
        let clip = if cfg.grad_clip > 0.0 && norm > cfg.grad_clip { (cfg.grad_clip / (norm + 1e-6)) as f32 } else { 1.0 };
        self.t += 1;
        let (b1, b2) = (cfg.beta1 as f32, cfg.beta2 as f32);
        let bc1 = 1.0 - cfg.beta1.powi(self.t as i32);
        let bc2 = 1.0 - cfg.beta2.powi(self.t as i32);
        // Fold the bias corrections into the step size: p -= lr·m̂/(√v̂+ε) with
        // m̂ = m/bc1, v̂ = v/bc2, written as p -= (lr/bc1)·m/(√v/√bc2 + ε).
        let step_size = (lr / bc1) as f32;
        let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
        let eps = cfg.eps as f32;
        for (p, g) in self.params.iter_mut().zip(grads.iter()) {
            let decay = if p.decay { (1.0 - lr * cfg.weight_decay) as f32 } else { 1.0 };
            let mut w = p.var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            update_elementwise(&mut w, &mut p.m, &mut p.v, g, |w, m, v, g| {
                let g = g * clip;
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                *w = *w * decay - step_size * *m / ((*v).sqrt() * inv_sqrt_bc2 + eps);
            });
            let t = Tensor::from_vec(w, p.var.shape(), p.var.device())?;
            p.var.set(&t)?;
        }
        Ok(norm)
    }

    /// Moments as named tensors for the checkpoint (`<name>.m`, `<name>.v`).
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for p in &self.params {
            out.insert(format!("{}.m", p.name), Tensor::from_slice(&p.m, p.m.len(), &Device::Cpu)?);
            out.insert(format!("{}.v", p.name), Tensor::from_slice(&p.v, p.v.len(), &Device::Cpu)?);
        }
        Ok(out)
    }

    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, t: u64) -> Result<()> {
        for p in &mut self.params {
            for (suffix, buf) in [("m", &mut p.m), ("v", &mut p.v)] {
                let key = format!("{}.{suffix}", p.name);
                let ten = tensors.get(&key).with_context(|| format!("optimizer state lacks {key}"))?;
                let v = ten.to_vec1::<f32>()?;
                anyhow::ensure!(v.len() == buf.len(), "optimizer state {key} has {} values, expected {}", v.len(), buf.len());
                *buf = v;
            }
        }
        self.t = t;
        Ok(())
    }
}

/// Elements per task of the optimizer's parallel loops. Fixed, so the norm's partial sums
/// (and with them every run) do not depend on the number of threads.
const CHUNK: usize = 1 << 15;

/// √(Σ g²) over every gradient, in f64: per-chunk sums in 8 lanes, added in chunk order.
fn global_norm(grads: &[Vec<f32>]) -> f64 {
    use rayon::prelude::*;
    let partial: Vec<f64> = grads
        .iter()
        .flat_map(|g| g.chunks(CHUNK))
        .collect::<Vec<_>>()
        .par_iter()
        .map(|c| {
            ferrolm_kernels::vectorized(
                #[inline(always)]
                || {
                    let mut lanes = [0f64; 8];
                    let mut blocks = c.chunks_exact(8);
                    for b in &mut blocks {
                        for (l, &x) in lanes.iter_mut().zip(b) {
                            *l += (x as f64) * (x as f64);
                        }
                    }
                    blocks.remainder().iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>() + lanes.iter().sum::<f64>()
                },
            )
        })
        .collect();
    partial.iter().sum::<f64>().sqrt()
}

/// `f` on every (w, m, v, g) quadruple, in chunks over the thread pool, each chunk in a
/// loop compiled for the CPU's vector width. Elementwise, so the result is the same
/// whatever the chunking.
fn update_elementwise(w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], f: impl Fn(&mut f32, &mut f32, &mut f32, f32) + Sync) {
    use rayon::prelude::*;
    w.par_chunks_mut(CHUNK).zip(m.par_chunks_mut(CHUNK)).zip(v.par_chunks_mut(CHUNK)).zip(g.par_chunks(CHUNK)).for_each(|(((w, m), v), g)| {
        ferrolm_kernels::vectorized(
            #[inline(always)]
            || {
                for (((w, m), v), &g) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                    f(w, m, v, g);
                }
            },
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_adamw_formula_on_one_parameter() {
        let var = Var::from_tensor(&Tensor::new(&[[1.0f32, -2.0]], &Device::Cpu).unwrap()).unwrap();
        let mut vars = HashMap::new();
        vars.insert("layer.weight".to_string(), var.clone());
        let cfg = TrainConfig { weight_decay: 0.1, grad_clip: 0.0, beta1: 0.9, beta2: 0.99, eps: 1e-8, ..Default::default() };
        let mut opt = AdamW::new(&vars, &cfg);
        assert!(opt.params[0].decay);
        let lr = 0.01;
        let mut grads = vec![vec![0.5f32, -1.0]];
        opt.step(&mut grads, lr, &cfg).unwrap();
        let mut grads = vec![vec![0.25f32, 2.0]];
        opt.step(&mut grads, lr, &cfg).unwrap();
        // Reference computed by hand, straight from the paper's algorithm.
        let mut w = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for (t, g) in [[0.5f64, -1.0], [0.25, 2.0]].iter().enumerate() {
            let t = t as i32 + 1;
            for i in 0..2 {
                w[i] *= 1.0 - lr * 0.1;
                m[i] = 0.9 * m[i] + 0.1 * g[i];
                v[i] = 0.99 * v[i] + 0.01 * g[i] * g[i];
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.99f64.powi(t));
                w[i] -= lr * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for i in 0..2 {
            assert!((got[i] as f64 - w[i]).abs() < 1e-6, "{} vs {}", got[i], w[i]);
        }
    }

    #[test]
    fn clipping_scales_to_the_global_norm() {
        let var = Var::from_tensor(&Tensor::new(&[0.0f32, 0.0], &Device::Cpu).unwrap()).unwrap();
        let mut vars = HashMap::new();
        vars.insert("b.bias".to_string(), var.clone());
        let cfg = TrainConfig { grad_clip: 1.0, weight_decay: 0.0, ..Default::default() };
        let mut opt = AdamW::new(&vars, &cfg);
        assert!(!opt.params[0].decay, "biases never decay");
        let norm = opt.step(&mut [vec![3.0, 4.0]], 0.1, &cfg).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
    }

    #[test]
    fn groups() {
        let cfg = TrainConfig::default();
        assert!(decays("decoder.blocks.0.attn.qkv.weight", 2, &cfg));
        assert!(!decays("wte.weight", 2, &cfg));
        assert!(!decays("decoder.blocks.0.ln1.weight", 1, &cfg));
        let cfg = TrainConfig { decay_embeddings: true, ..cfg };
        assert!(decays("wte.weight", 2, &cfg));
    }
}
