//! The objectives of preference alignment, each a few lines over candle tensors so that
//! gradients flow through them, and each checked against hand-computed values.
//!
//! - Bradley-Terry (reward model): −log σ(r_chosen − r_rejected).
//! - DPO (Rafailov et al. 2023): −log σ(β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))]).
//! - PPO (Schulman et al. 2017) as used for RLHF (Ziegler et al. 2019, InstructGPT, TRL):
//!   clipped surrogate, clipped value loss, GAE(γ, λ), fixed or adaptive KL coefficient.

use anyhow::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// softplus(x) = log(1 + eˣ), computed stably as max(x, 0) + log(1 + e^(−|x|)).
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    Ok((x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?)
}

/// −log σ(x) = softplus(−x).
pub fn neg_log_sigmoid(x: &Tensor) -> Result<Tensor> {
    softplus(&x.neg()?)
}

/// Mean Bradley-Terry loss of reward pairs (batch,) each.
pub fn bradley_terry_loss(r_chosen: &Tensor, r_rejected: &Tensor) -> Result<Tensor> {
    Ok(neg_log_sigmoid(&(r_chosen - r_rejected)?)?.mean_all()?)
}

/// DPO figures of one batch besides the loss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DpoStats {
    /// Mean implicit reward β(log π − log π_ref) of the chosen and of the rejected responses.
    pub chosen_reward: f64,
    pub rejected_reward: f64,
    /// Mean of chosen − rejected implicit reward.
    pub margin: f64,
    /// Fraction of pairs whose chosen implicit reward is higher.
    pub accuracy: f64,
}

/// Mean DPO loss from sequence log-probabilities (batch,) of the policy and the frozen
/// reference; the reference tensors carry no gradient.
pub fn dpo_loss(
    policy_chosen: &Tensor,
    policy_rejected: &Tensor,
    ref_chosen: &Tensor,
    ref_rejected: &Tensor,
    beta: f64,
) -> Result<(Tensor, DpoStats)> {
    let chosen = ((policy_chosen - ref_chosen.detach())? * beta)?;
    let rejected = ((policy_rejected - ref_rejected.detach())? * beta)?;
    let logits = (&chosen - &rejected)?;
    let loss = neg_log_sigmoid(&logits)?.mean_all()?;
    let c: Vec<f32> = chosen.detach().to_vec1()?;
    let r: Vec<f32> = rejected.detach().to_vec1()?;
    let n = c.len().max(1) as f64;
    let stats = DpoStats {
        chosen_reward: c.iter().map(|&x| x as f64).sum::<f64>() / n,
        rejected_reward: r.iter().map(|&x| x as f64).sum::<f64>() / n,
        margin: c.iter().zip(&r).map(|(&a, &b)| (a - b) as f64).sum::<f64>() / n,
        accuracy: c.iter().zip(&r).filter(|(a, b)| a > b).count() as f64 / n,
    };
    Ok((loss, stats))
}

/// PPO's clipped surrogate over response tokens (n,): mean of
/// max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)) with ρ = exp(log π_new − log π_old).
/// Returns the loss and the fraction of tokens where the clipped term was the larger (clip fraction).
pub fn ppo_policy_loss(new_logp: &Tensor, old_logp: &Tensor, advantages: &Tensor, clip: f64) -> Result<(Tensor, f64)> {
    let ratio = (new_logp - old_logp.detach())?.exp()?;
    let adv = advantages.detach();
    let unclipped = (adv.neg()? * &ratio)?;
    let clipped = (adv.neg()? * ratio.clamp(1.0 - clip, 1.0 + clip)?)?;
    let loss = unclipped.maximum(&clipped)?.mean_all()?;
    let frac = clipped.gt(&unclipped)?.to_dtype(candle_core::DType::F32)?.mean_all()?.to_scalar::<f32>()? as f64;
    Ok((loss, frac))
}

/// PPO's clipped value loss over response tokens (n,): ½·mean max((V − R)², (V_clip − R)²)
/// with V_clip = V_old + clip(V − V_old, −c, c). Returns the loss and the clipped fraction.
pub fn ppo_value_loss(values: &Tensor, old_values: &Tensor, returns: &Tensor, clip: f64) -> Result<(Tensor, f64)> {
    let old = old_values.detach();
    let ret = returns.detach();
    let v_clipped = (&old + (values - &old)?.clamp(-clip, clip)?)?;
    let l1 = (values - &ret)?.sqr()?;
    let l2 = (v_clipped - &ret)?.sqr()?;
    let loss = (l1.maximum(&l2)?.mean_all()? * 0.5)?;
    let frac = l2.gt(&l1)?.to_dtype(candle_core::DType::F32)?.mean_all()?.to_scalar::<f32>()? as f64;
    Ok((loss, frac))
}

/// Generalised advantage estimation over one response: per-token rewards and value
/// estimates V(s_t); the value after the last token is 0 (the episode ends).
/// δ_t = r_t + γ·V_{t+1} − V_t, A_t = δ_t + γλ·A_{t+1}; returns = A + V.
pub fn gae(rewards: &[f32], values: &[f32], gamma: f32, lambda: f32) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(rewards.len(), values.len());
    let n = rewards.len();
    let mut adv = vec![0f32; n];
    let mut next_adv = 0f32;
    for t in (0..n).rev() {
        let next_v = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next_v - values[t];
        next_adv = delta + gamma * lambda * next_adv;
        adv[t] = next_adv;
    }
    let ret = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, ret)
}

/// Shift to mean 0 and scale to variance 1 (advantage whitening).
pub fn whiten(xs: &mut [f32]) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    let inv = 1.0 / (var + 1e-8).sqrt();
    xs.iter_mut().for_each(|x| *x = ((*x as f64 - mean) * inv) as f32);
}

/// Per-token rewards of one response: −β·(log π_old − log π_ref) at every token (the k1
/// estimate of the KL to the reference), plus the reward model's score on the last token.
pub fn token_rewards(old_logp: &[f32], ref_logp: &[f32], kl_coef: f64, score: f32) -> Vec<f32> {
    let mut r: Vec<f32> = old_logp.iter().zip(ref_logp).map(|(o, r)| (-(kl_coef) * (o - r) as f64) as f32).collect();
    if let Some(last) = r.last_mut() {
        *last += score;
    }
    r
}

/// The KL penalty's coefficient: fixed, or adapted towards a target KL (Ziegler et al. 2019):
/// e = clip(KL/target − 1, −0.2, 0.2), β ← β·(1 + e·n/horizon), with n the samples in the batch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KlController {
    pub coef: f64,
    /// None: fixed coefficient.
    pub target: Option<f64>,
    pub horizon: f64,
}

impl KlController {
    pub fn update(&mut self, current_kl: f64, n_samples: usize) {
        if let Some(target) = self.target {
            let err = (current_kl / target - 1.0).clamp(-0.2, 0.2);
            self.coef *= 1.0 + err * n_samples as f64 / self.horizon;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }
    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() < tol, "{a} vs {b}");
    }

    #[test]
    fn bradley_terry_matches_hand_values() {
        // differences 1, −2, 0: −log σ(1) = 0.313262, −log σ(−2) = 2.126928, −log σ(0) = ln 2
        let loss = bradley_terry_loss(&t(&[2.0, 0.0, 0.5]), &t(&[1.0, 2.0, 0.5])).unwrap();
        close(loss.to_scalar::<f32>().unwrap() as f64, (0.313262 + 2.126928 + std::f64::consts::LN_2) / 3.0, 1e-5);
        // large margins stay finite: −log σ(−100) = 100
        let big = bradley_terry_loss(&t(&[0.0]), &t(&[100.0])).unwrap().to_scalar::<f32>().unwrap();
        close(big as f64, 100.0, 1e-4);
        // gradient: d/dr_c = −σ(−d)/n
        let rc = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let g = bradley_terry_loss(rc.as_tensor(), &t(&[0.0])).unwrap().backward().unwrap();
        let gc: Vec<f32> = g.get(&rc).unwrap().to_vec1().unwrap();
        close(gc[0] as f64, -(1.0 / (1.0 + 1f64.exp())), 1e-6);
    }

    #[test]
    fn dpo_matches_hand_values() {
        // pair 1: policy margin (−10 − −12) = 2, reference margin (−11 − −11) = 0 → logit β·2 = 0.2
        // pair 2: policy margin (−5 − −4) = −1, reference margin (−5 − −5) = 0 → logit −0.1
        let (loss, s) = dpo_loss(&t(&[-10.0, -5.0]), &t(&[-12.0, -4.0]), &t(&[-11.0, -5.0]), &t(&[-11.0, -5.0]), 0.1).unwrap();
        let sp = |x: f64| (1.0 + x.exp()).ln();
        close(loss.to_scalar::<f32>().unwrap() as f64, (sp(-0.2) + sp(0.1)) / 2.0, 1e-6);
        // chosen rewards 0.1·(1, 0), rejected 0.1·(−1, 1)
        close(s.chosen_reward, 0.05, 1e-6);
        close(s.rejected_reward, 0.0, 1e-6);
        close(s.margin, (0.2 + -0.1) / 2.0, 1e-6);
        close(s.accuracy, 0.5, 1e-12);
        // gradient w.r.t. the policy's chosen log-prob: −β·σ(−logit)/n; none reaches the reference
        let pc = Var::new(&[-10.0f32], &Device::Cpu).unwrap();
        let rc = Var::new(&[-11.0f32], &Device::Cpu).unwrap();
        let (l, _) = dpo_loss(pc.as_tensor(), &t(&[-12.0]), rc.as_tensor(), &t(&[-11.0]), 0.1).unwrap();
        let g = l.backward().unwrap();
        let want = -0.1 / (1.0 + 0.2f64.exp());
        close(g.get(&pc).unwrap().to_vec1::<f32>().unwrap()[0] as f64, want, 1e-6);
        assert!(g.get(&rc).is_none());
    }

    #[test]
    fn ppo_clipped_objective_matches_hand_values() {
        let eps = 0.2;
        // ratios e^{0.5}=1.6487 (A=+1: clipped at 1.2 → max(−1.6487, −1.2) = −1.2, clipped),
        // e^{−0.5}=0.6065 (A=+1: max(−0.6065, −0.8) = −0.6065, not clipped),
        // e^{0.5} (A=−1: max(1.6487, 1.2) = 1.6487, not clipped),
        // e^{−0.5} (A=−2: max(1.2131, 1.6) = 1.6, clipped), ratio 1 (A=3: −3, not clipped)
        let new = t(&[0.5, -0.5, 0.5, -0.5, 0.0]);
        let old = t(&[0.0; 5]);
        let adv = t(&[1.0, 1.0, -1.0, -2.0, 3.0]);
        let (loss, frac) = ppo_policy_loss(&new, &old, &adv, eps).unwrap();
        let want = (-1.2 + -(-0.5f64).exp() + 0.5f64.exp() + 1.6 - 3.0) / 5.0;
        close(loss.to_scalar::<f32>().unwrap() as f64, want, 1e-5);
        close(frac, 2.0 / 5.0, 1e-6);
        // clipped tokens pass no gradient; unclipped ones pass −A·ρ/n
        let v = Var::new(&[0.5f32, -0.5, 0.0], &Device::Cpu).unwrap();
        let (l, _) = ppo_policy_loss(v.as_tensor(), &t(&[0.0; 3]), &t(&[1.0, 1.0, 3.0]), eps).unwrap();
        let g: Vec<f32> = l.backward().unwrap().get(&v).unwrap().to_vec1().unwrap();
        close(g[0] as f64, 0.0, 1e-7);
        close(g[1] as f64, -(-0.5f64).exp() / 3.0, 1e-6);
        close(g[2] as f64, -3.0 / 3.0, 1e-6);
    }

    #[test]
    fn value_clipping_matches_hand_values() {
        // old 1.0, clip 0.2, returns 2.0:
        // V=1.5: unclipped (0.5)² = 0.25, clipped V=1.2 → 0.64 → max 0.64 (clipped branch)
        // V=0.9: within range → both 1.21
        // V=3.0: unclipped 1.0, clipped 1.2 → 0.64 → max 1.0 (unclipped)
        let (loss, frac) = ppo_value_loss(&t(&[1.5, 0.9, 3.0]), &t(&[1.0; 3]), &t(&[2.0; 3]), 0.2).unwrap();
        close(loss.to_scalar::<f32>().unwrap() as f64, 0.5 * (0.64 + 1.21 + 1.0) / 3.0, 1e-5);
        close(frac, 1.0 / 3.0, 1e-6);
    }

    #[test]
    fn gae_matches_hand_values() {
        // γ = 0.9, λ = 0.8; r = [0, 0, 1], V = [0.5, 0.4, 0.3]
        // δ2 = 1 − 0.3 = 0.7;  δ1 = 0 + 0.9·0.3 − 0.4 = −0.13;  δ0 = 0 + 0.9·0.4 − 0.5 = −0.14
        // A2 = 0.7; A1 = −0.13 + 0.72·0.7 = 0.374; A0 = −0.14 + 0.72·0.374 = 0.12928
        let (adv, ret) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.4, 0.3], 0.9, 0.8);
        for (a, w) in adv.iter().zip([0.12928, 0.374, 0.7]) {
            close(*a as f64, w, 1e-6);
        }
        for (r, w) in ret.iter().zip([0.62928, 0.774, 1.0]) {
            close(*r as f64, w, 1e-6);
        }
        // λ = 1, γ = 1: advantages are reward-to-go minus the value
        let (adv, _) = gae(&[1.0, 2.0, 3.0], &[0.0, 1.0, 2.0], 1.0, 1.0);
        assert_eq!(adv, vec![6.0, 4.0, 1.0]);
    }

    #[test]
    fn token_rewards_put_the_score_on_the_last_token() {
        let r = token_rewards(&[-1.0, -2.0], &[-1.5, -1.0], 0.1, 2.0);
        close(r[0] as f64, -0.05, 1e-7);
        close(r[1] as f64, 0.1 + 2.0, 1e-6);
    }

    #[test]
    fn adaptive_kl_controller_moves_towards_the_target() {
        let mut kl = KlController { coef: 0.2, target: Some(6.0), horizon: 10_000.0 };
        // KL 9 → error clipped to +0.2 → β·(1 + 0.2·256/10000)
        kl.update(9.0, 256);
        close(kl.coef, 0.2 * (1.0 + 0.2 * 256.0 / 10_000.0), 1e-12);
        // KL 4.5 → error −0.25 clipped to −0.2
        let before = kl.coef;
        kl.update(4.5, 256);
        close(kl.coef, before * (1.0 - 0.2 * 256.0 / 10_000.0), 1e-12);
        // KL 6.6 → error 0.1 (inside the clip)
        let before = kl.coef;
        kl.update(6.6, 100);
        close(kl.coef, before * (1.0 + 0.1 * 100.0 / 10_000.0), 1e-12);
        let mut fixed = KlController { coef: 0.05, target: None, horizon: 10_000.0 };
        fixed.update(100.0, 64);
        assert_eq!(fixed.coef, 0.05);
    }

    #[test]
    fn whitening_gives_zero_mean_unit_variance() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        whiten(&mut x);
        let m: f32 = x.iter().sum::<f32>() / 4.0;
        let v: f32 = x.iter().map(|a| (a - m) * (a - m)).sum::<f32>() / 4.0;
        assert!(m.abs() < 1e-6 && (v - 1.0).abs() < 1e-4);
    }
}
