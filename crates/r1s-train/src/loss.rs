//! The RL arithmetic, as OpenRLHF (which R1-Searcher trains with) defines it: group baselines,
//! per-token rewards with a KL penalty, γ = 1 returns, whitening over the policy's own tokens,
//! PPO-clip and the KL estimators. Plain-number versions (checked by hand in the tests) and the
//! differentiable loss on burn tensors.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// How rewards become advantages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Advantage {
    /// REINFORCE++ with baseline: reward − mean of its group, then whitened over all action tokens.
    ReinforceBaseline,
    /// GRPO: (reward − group mean) / (group std + 1e-9), not whitened.
    GroupNorm,
}

/// Which KL estimator (log-ratio `l = log π − log π_ref`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// `l`.
    K1,
    /// `exp(−l) − 1 + l` (non-negative, unbiased).
    K3,
}

/// Where the KL penalty goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlPlacement {
    /// −β·kl on every action token's reward (R1-Searcher / OpenRLHF's default).
    Reward,
    /// +β·masked-mean(kl) in the loss (GRPO style).
    Loss,
}

/// The KL estimate of one token.
pub fn kl(estimator: KlEstimator, logp: f32, ref_logp: f32) -> f32 {
    let l = logp - ref_logp;
    match estimator {
        KlEstimator::K1 => l,
        KlEstimator::K3 => (-l).exp() - 1.0 + l,
    }
}

/// Rewards after the group baseline: `groups[i]` is episode `i`'s prompt group.
pub fn baseline(kind: Advantage, rewards: &[f64], groups: &[usize]) -> Vec<f64> {
    let ngroups = groups.iter().copied().max().map_or(0, |g| g + 1);
    let (mut sum, mut n) = (vec![0.0; ngroups], vec![0usize; ngroups]);
    for (&r, &g) in rewards.iter().zip(groups) {
        sum[g] += r;
        n[g] += 1;
    }
    let mean: Vec<f64> = sum.iter().zip(&n).map(|(s, &n)| s / n.max(1) as f64).collect();
    match kind {
        Advantage::ReinforceBaseline => rewards.iter().zip(groups).map(|(r, &g)| r - mean[g]).collect(),
        Advantage::GroupNorm => {
            // torch's unbiased std, as OpenRLHF computes it
            let mut ss = vec![0.0; ngroups];
            for (&r, &g) in rewards.iter().zip(groups) {
                ss[g] += (r - mean[g]).powi(2);
            }
            let std: Vec<f64> =
                ss.iter().zip(&n).map(|(s, &n)| if n > 1 { (s / (n - 1) as f64).sqrt() } else { 0.0 }).collect();
            rewards.iter().zip(groups).map(|(r, &g)| (r - mean[g]) / (std[g] + 1e-9)).collect()
        }
    }
}

/// Per-token returns of one episode's action tokens (γ = 1): the reward sits on the last token;
/// `kl_penalty[t]` (already β-scaled, possibly empty) is subtracted at every token.
pub fn returns(reward: f64, kl_penalty: &[f32], n_actions: usize) -> Vec<f32> {
    let mut out = vec![0f32; n_actions];
    let mut acc = 0f64;
    for t in (0..n_actions).rev() {
        if t + 1 == n_actions {
            acc += reward;
        }
        acc -= f64::from(kl_penalty.get(t).copied().unwrap_or(0.0));
        out[t] = acc as f32;
    }
    out
}

/// Whitens all values of `rows` together: `(x − mean) / sqrt(var + 1e-8)` (population variance,
/// as OpenRLHF's masked normalisation; only action tokens are ever passed in).
pub fn whiten(rows: &mut [Vec<f32>]) {
    let n: usize = rows.iter().map(Vec::len).sum();
    if n == 0 {
        return;
    }
    let mean = rows.iter().flatten().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
    let var = rows.iter().flatten().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n as f64;
    let inv = 1.0 / (var + 1e-8).sqrt();
    for x in rows.iter_mut().flatten() {
        *x = ((f64::from(*x) - mean) * inv) as f32;
    }
}

/// Mean over each row, then over rows (OpenRLHF's `masked_mean(x, mask, -1).mean()`; rows are the
/// masked-in tokens of each sequence; empty rows count as 0).
pub fn masked_mean(rows: &[Vec<f32>]) -> f64 {
    if rows.is_empty() {
        return 0.0;
    }
    rows.iter()
        .map(|r| if r.is_empty() { 0.0 } else { r.iter().map(|&x| f64::from(x)).sum::<f64>() / r.len() as f64 })
        .sum::<f64>()
        / rows.len() as f64
}

/// PPO-clip loss of one token and whether the clipped branch was taken.
pub fn ppo_token(logp: f32, old_logp: f32, adv: f32, eps: f32) -> (f32, bool) {
    let ratio = (logp - old_logp).exp();
    let s1 = ratio * adv;
    let s2 = ratio.clamp(1.0 - eps, 1.0 + eps) * adv;
    (-s1.min(s2), s2 < s1)
}

/// The differentiable loss of a flat list of action tokens: `Σ w·(−min(r·A, clip(r)·A))`, plus
/// `β Σ w·kl3(logp, ref)` when `kl_loss` is given. `weight` holds each token's share of the masked
/// mean (1 / (tokens of its sequence · sequences)), so summing micro-batches gives the train-batch
/// loss. All tensors are `[n]`; only `logp` carries gradients.
pub fn ppo_loss(
    logp: Tensor<1>,
    old_logp: Tensor<1>,
    adv: Tensor<1>,
    weight: Tensor<1>,
    eps: f32,
    kl_loss: Option<(Tensor<1>, f32)>,
) -> Tensor<1> {
    let ratio = (logp.clone() - old_logp).exp();
    let s1 = ratio.clone() * adv.clone();
    let s2 = ratio.clamp(1.0 - eps, 1.0 + eps) * adv;
    let mut per_token = s1.min_pair(s2).neg();
    if let Some((ref_logp, beta)) = kl_loss {
        let l = logp - ref_logp;
        let k3 = l.clone().neg().exp() - 1.0 + l;
        per_token = per_token + k3 * beta;
    }
    (per_token * weight).sum()
}

/// SFT: `−Σ w·logp`.
pub fn nll_loss(logp: Tensor<1>, weight: Tensor<1>) -> Tensor<1> {
    (logp * weight).sum().neg()
}

/// R1-Searcher++'s memorisation term: `μ · NLL(T) = −μ · Σ logp / tokens`, the mean negative
/// log-likelihood of the memorisation paths' tokens (`tokens` = all action tokens of the paths of
/// this optimizer step, so that summing micro-batches gives the step's term). `logp` is `[n]`.
pub fn memory_loss(logp: Tensor<1>, tokens: f32, mu: f32) -> Tensor<1> {
    logp.sum().neg() * (mu / tokens.max(1.0))
}
