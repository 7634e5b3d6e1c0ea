//! Deterministic, seeded weight initialisation.
//!
//! candle's initialisers draw from an unseedable CPU generator, so we build the model
//! first and then overwrite every variable from its own ChaCha stream seeded by
//! (seed, parameter name): runs are reproducible, and adding a parameter never shifts
//! the values of the others. The scheme is GPT-2's: N(0, 0.02) for weights and
//! embeddings, residual projections scaled by 1/√(2·layers), zeros for biases, ones for
//! norm gains.

use candle_core::{Result, Tensor};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

pub fn init_params(varmap: &VarMap, n_layers: usize, seed: u64) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let last_module = name.rsplit('.').nth(1).unwrap_or("");
        let value = if last_module.starts_with("ln") {
            let v = if name.ends_with(".weight") { 1.0 } else { 0.0 };
            Tensor::full(v as f32, var.shape(), var.device())?
        } else if name.ends_with(".bias") {
            Tensor::zeros(var.shape(), var.dtype(), var.device())?
        } else {
            let std = if last_module == "proj" { 0.02 / (2.0 * n_layers as f64).sqrt() } else { 0.02 };
            let stream = xxhash_rust::xxh3::xxh3_64_with_seed(name.as_bytes(), seed);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(stream);
            let normal = Normal::new(0.0f32, std as f32).expect("valid std");
            let v: Vec<f32> = (0..var.elem_count()).map(|_| normal.sample(&mut rng)).collect();
            Tensor::from_vec(v, var.shape(), var.device())?
        };
        var.set(&value.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// How [`init_by_name`] fills one variable.
pub enum Fill {
    /// U(−bound, bound).
    Uniform(f64),
    Const(f64),
    /// Exactly these values (row-major).
    Values(Vec<f32>),
}

/// Seeded initialisation with a per-variable rule: `rule(name, shape)` says how to fill
/// each variable; random values come from a ChaCha stream keyed by (seed, name), as in
/// [`init_params`]. Used by the older families (NPLM, RNN, LSTM), whose conventions differ
/// from GPT-2's.
pub fn init_by_name(varmap: &VarMap, seed: u64, rule: impl Fn(&str, &[usize]) -> Fill) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let n = var.elem_count();
        let values: Vec<f32> = match rule(name, var.dims()) {
            Fill::Uniform(bound) => seeded_uniform(name, seed, n, bound),
            Fill::Const(c) => vec![c as f32; n],
            Fill::Values(v) => {
                if v.len() != n {
                    candle_core::bail!("init of {name}: {} values for {n} elements", v.len());
                }
                v
            }
        };
        var.set(&Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// Set a new linear layer's `{prefix}.weight` (and `{prefix}.bias`, when it has one) in
/// `varmap` to U(±1/√fan_in) — PyTorch's `nn.Linear` rule — drawn from (seed, name), for
/// heads added on a pretrained body: the same seed gives the same run.
pub fn seed_linear(varmap: &VarMap, prefix: &str, fan_in: usize, seed: u64) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    for leaf in ["weight", "bias"] {
        let name = format!("{prefix}.{leaf}");
        if let Some(var) = data.get(&name) {
            let v = seeded_uniform(&name, seed, var.elem_count(), 1.0 / (fan_in as f64).sqrt());
            var.set(&Tensor::from_vec(v, var.shape(), var.device())?.to_dtype(var.dtype())?)?;
        }
    }
    Ok(())
}

/// `n` values of U(−bound, bound) from the ChaCha stream keyed by (seed, name): the same
/// variable name and seed give the same values in every process.
pub fn seeded_uniform(name: &str, seed: u64, n: usize, bound: f64) -> Vec<f32> {
    use rand::Rng;
    let stream = xxhash_rust::xxh3::xxh3_64_with_seed(name.as_bytes(), seed);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(stream);
    let b = bound as f32;
    (0..n).map(|_| rng.random_range(-b..=b)).collect()
}
