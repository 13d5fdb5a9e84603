//! AdamW (PyTorch's formulation: decoupled decay `p ← p(1 − lr·wd)`, bias-corrected moments,
//! `eps` outside the square root) with gradient accumulation and global-norm clipping across all
//! parameters (as `torch.nn.utils.clip_grad_norm_`; burn's own clipping works per tensor). The
//! state is kept per parameter name so that checkpoints store it as safetensors.

use std::collections::BTreeMap;

use burn::tensor::{Gradients, Tensor};

use crate::param::ParamMut;

/// Trainable parameters by name (`Split::params_mut`).
pub type Params<'a> = Vec<(String, ParamMut<'a>)>;

/// AdamW settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub max_grad_norm: f64,
}

/// Moments of one parameter (flat, plain device).
#[derive(Debug, Clone)]
pub struct Moments {
    pub m: Tensor<1>,
    pub v: Tensor<1>,
}

/// The optimizer: settings, step count, moments and the gradients accumulated so far.
#[derive(Debug)]
pub struct AdamW {
    pub cfg: AdamWConfig,
    /// Optimizer steps taken.
    pub t: u64,
    pub state: BTreeMap<String, Moments>,
    acc: BTreeMap<String, Tensor<1>>,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    pub clipped: bool,
}

impl AdamW {
    pub fn new(cfg: AdamWConfig) -> AdamW {
        AdamW { cfg, t: 0, state: BTreeMap::new(), acc: BTreeMap::new() }
    }

    /// Adds the gradients of one micro-batch's backward pass.
    pub fn accumulate(&mut self, params: Params<'_>, grads: &Gradients) {
        for (name, p) in params {
            if let Some(g) = p.grad(grads) {
                let sum = match self.acc.remove(&name) {
                    Some(a) => a + g,
                    None => g,
                };
                self.acc.insert(name, sum);
            }
        }
    }

    /// Applies the accumulated gradients (clipped to the global norm) and clears them.
    pub fn step(&mut self, params: Params<'_>, device: &burn::tensor::Device) -> StepInfo {
        let acc = std::mem::take(&mut self.acc);
        let sq: f64 = acc.values().map(|g| f64::from(g.clone().powf_scalar(2.0).sum().into_scalar::<f32>())).sum();
        let grad_norm = sq.sqrt();
        let c = &self.cfg;
        let clipped = c.max_grad_norm > 0.0 && grad_norm > c.max_grad_norm;
        let scale = if clipped { c.max_grad_norm / (grad_norm + 1e-6) } else { 1.0 };
        self.t += 1;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        for (name, mut p) in params {
            let Some(g) = acc.get(&name) else { continue };
            let g = if clipped { g.clone() * scale } else { g.clone() };
            let (m, v) = match self.state.remove(&name) {
                Some(s) => {
                    (s.m * c.beta1 + g.clone() * (1.0 - c.beta1), s.v * c.beta2 + g.powf_scalar(2.0) * (1.0 - c.beta2))
                }
                None => (g.clone() * (1.0 - c.beta1), g.powf_scalar(2.0) * (1.0 - c.beta2)),
            };
            let update = (m.clone() / bc1) / ((v.clone() / bc2).sqrt() + c.eps);
            let value = p.flat() * (1.0 - c.lr * c.weight_decay) - update * c.lr;
            p.set(value, device);
            self.state.insert(name, Moments { m, v });
        }
        StepInfo { grad_norm, clipped }
    }

    /// Drops accumulated gradients (a cancelled step).
    pub fn clear(&mut self) {
        self.acc.clear();
    }

    /// Forgets everything but the settings (new parameters: fresh LoRA adapters).
    pub fn reset(&mut self) {
        *self = AdamW::new(self.cfg);
    }
}
