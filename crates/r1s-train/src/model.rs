//! The policy split for training: a frozen prefix (embeddings, the first `L − K` blocks, the LM
//! head) shared by the policy, the rollout generator and the reference model, and the trainable
//! top (the last `K` blocks and the final norm) on burn's autodiff device. The frozen prefix runs
//! once per sequence without a graph; its output (the "boundary" hidden states) is kept and fed to
//! the trainable top, so training pays only for the top. The reference model is a copy of the top
//! alone. `K = L` trains every block.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor, TensorData, activation};
use r1s_policy::{Block, Policy, Step, run_blocks};

use crate::error::{Result, TrainError};

/// The trainable part.
#[derive(Module, Debug)]
pub struct Top {
    pub blocks: Vec<Block>,
    /// The final RMSNorm weight `[h]`.
    pub norm: Param<Tensor<1>>,
}

/// A mutable view of one parameter, by rank.
#[derive(Debug)]
pub enum ParamMut<'a> {
    Matrix(&'a mut Param<Tensor<2>>),
    Vector(&'a mut Param<Tensor<1>>),
}

impl Top {
    /// Every parameter with its Hugging Face name (`first` = the global index of `blocks[0]`).
    pub fn params_mut(&mut self, first: usize) -> Vec<(String, ParamMut<'_>)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let p = |n: &str| format!("model.layers.{}.{n}", first + i);
            out.push((p("input_layernorm.weight"), ParamMut::Vector(&mut b.attn_norm)));
            out.push((p("post_attention_layernorm.weight"), ParamMut::Vector(&mut b.mlp_norm)));
            let linears: [(&str, &mut Linear); 7] = [
                ("self_attn.q_proj", &mut b.q),
                ("self_attn.k_proj", &mut b.k),
                ("self_attn.v_proj", &mut b.v),
                ("self_attn.o_proj", &mut b.o),
                ("mlp.gate_proj", &mut b.gate),
                ("mlp.up_proj", &mut b.up),
                ("mlp.down_proj", &mut b.down),
            ];
            for (name, l) in linears {
                // burn keeps linear weights as [in, out]; the name is HF's (whose layout is [out, in])
                out.push((p(&format!("{name}.weight")), ParamMut::Matrix(&mut l.weight)));
                if let Some(bias) = &mut l.bias {
                    out.push((p(&format!("{name}.bias")), ParamMut::Vector(bias)));
                }
            }
        }
        out.push(("model.norm.weight".into(), ParamMut::Vector(&mut self.norm)));
        out
    }
}

impl ParamMut<'_> {
    /// The value as a flat vector (plain device).
    pub fn flat(&self) -> Tensor<1> {
        match self {
            ParamMut::Matrix(p) => {
                let [a, b] = p.val().dims();
                p.val().inner().reshape([a * b])
            }
            ParamMut::Vector(p) => p.val().inner(),
        }
    }

    /// This parameter's gradient in `grads`, flat (plain device).
    pub fn grad(&self, grads: &burn::tensor::Gradients) -> Option<Tensor<1>> {
        match self {
            ParamMut::Matrix(p) => p.val().grad(grads).map(|g| {
                let [a, b] = g.dims();
                g.reshape([a * b])
            }),
            ParamMut::Vector(p) => p.val().grad(grads),
        }
    }

    /// Replaces the value with `flat` (plain), as a fresh trainable leaf on `device`.
    pub fn set(&mut self, flat: Tensor<1>, device: &Device) {
        match self {
            ParamMut::Matrix(p) => {
                let dims = p.val().dims();
                let t = flat.reshape(dims).to_device(device).autodiff().require_grad();
                **p = Param::initialized(p.id, t);
            }
            ParamMut::Vector(p) => {
                let t = flat.to_device(device).autodiff().require_grad();
                **p = Param::initialized(p.id, t);
            }
        }
    }

    pub fn numel(&self) -> usize {
        match self {
            ParamMut::Matrix(p) => p.val().dims().iter().product(),
            ParamMut::Vector(p) => p.val().dims()[0],
        }
    }
}

/// The policy split into its frozen prefix and trainable top.
#[derive(Debug)]
pub struct Split {
    /// The whole model on the plain device (generation, the frozen prefix, old log-probs). Its top
    /// blocks are kept equal to [`Split::top`] by [`Split::sync`].
    pub policy: Policy,
    /// Index of the first trainable block.
    pub first: usize,
    /// The trainable top on the autodiff device.
    pub top: Top,
    /// The reference model's top (plain device), when a KL term is used.
    pub reference: Option<Top>,
    /// The autodiff device.
    pub ad: Device,
}

/// Log-probs of chosen tokens `[n]` and, when asked, the entropy of each distribution `[n]`.
pub type Scored = (Tensor<1>, Option<Tensor<1>>);

impl Split {
    /// Splits `policy` to train its last `train_blocks` blocks (0 or more than the model has: all).
    pub fn new(policy: Policy, train_blocks: usize, with_reference: bool) -> Result<Split> {
        let layers = policy.model.blocks.len();
        let k = if train_blocks == 0 { layers } else { train_blocks.min(layers) };
        let first = layers - k;
        let plain_top = top_of(&policy, first);
        let ad = policy.device().clone().autodiff();
        let mut top = plain_top.clone().fork(&ad);
        for (_, mut p) in top.params_mut(first) {
            let v = p.flat();
            p.set(v, &ad);
        }
        let reference = with_reference.then_some(plain_top);
        Ok(Split { policy, first, top, reference, ad })
    }

    /// Copies the trainable top (as trained) into the plain model.
    pub fn sync(&mut self) {
        let plain = self.top.valid();
        for (i, b) in plain.blocks.into_iter().enumerate() {
            self.policy.model.blocks[self.first + i] = b;
        }
        self.policy.model.norm = plain.norm;
    }

    /// The plain top (what the plain model holds now).
    pub fn plain_top(&self) -> Top {
        top_of(&self.policy, self.first)
    }

    /// Boundary hidden states `[b, t, h]` of right-padded `seqs` (no graph), and their step.
    pub fn boundary(&self, seqs: &[Vec<u32>]) -> Result<(Tensor<3>, Step)> {
        let p = &self.policy;
        let (ids, step) = p.right_padded(seqs)?;
        let x = p.model.embed_tokens(&p.cfg, ids);
        let x = run_blocks(&p.model.blocks[..self.first], 0, &p.cfg, p.rope(), x, &step, None);
        Ok((x, step))
    }

    /// Log-probs of `targets` at flat positions `rows` (`batch_row * t + position`) under `top`
    /// run from `boundary`; gradients flow when `top` is the autodiff one.
    pub fn score(
        &self,
        top: &Top,
        boundary: Tensor<3>,
        step: &Step,
        rows: &[i64],
        targets: &[i64],
        entropy: bool,
    ) -> Result<Scored> {
        let p = &self.policy;
        if rows.is_empty() {
            return Err(TrainError::Options("no action tokens to score".into()));
        }
        let x = run_blocks(&top.blocks, self.first, &p.cfg, p.rope(), boundary, step, None);
        let x = r1s_policy::model::rms_norm(x, &top.norm, p.cfg.rms_norm_eps);
        let [b, t, h] = x.dims();
        let n = rows.len();
        let dev = x.device();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(rows.to_vec(), [n]), &dev);
        let picked_h = x.reshape([b * t, h]).select(0, idx);
        let logits = p.model.head(picked_h);
        let logp = activation::log_softmax(logits, 1);
        let tg = Tensor::<2, Int>::from_data(TensorData::new(targets.to_vec(), [n, 1]), &dev);
        let chosen = logp.clone().gather(1, tg).reshape([n]);
        let ent = entropy.then(|| {
            let l = logp.detach();
            (l.clone().exp() * l).sum_dim(1).reshape([n]).neg()
        });
        Ok((chosen, ent))
    }
}

/// A copy of the blocks from `first` on and the final norm of a plain model.
fn top_of(policy: &Policy, first: usize) -> Top {
    Top { blocks: policy.model.blocks[first..].to_vec(), norm: policy.model.norm.clone() }
}

/// The number of trainable parameters.
pub fn count_params(top: &mut Top, first: usize) -> usize {
    top.params_mut(first).iter().map(|(_, p)| p.numel()).sum()
}
