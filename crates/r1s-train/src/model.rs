//! The policy split for training: a frozen prefix (embeddings, the first `L − K` blocks, the LM
//! head) shared by the policy, the rollout generator and the reference model, and the trainable
//! top (the last `K` blocks and the final norm) on burn's autodiff device. The frozen prefix runs
//! once per sequence without a graph; its output (the "boundary" hidden states) is kept and fed to
//! the trainable top, so training pays only for the top. The reference model is a copy of the top
//! alone. `K = L` trains every block.
//!
//! With LoRA the top's weights stay frozen and trainable adapters `A`, `B` sit beside the targeted
//! projections: each training forward runs `x·W + s·(x·A)·B` (in the adapters' graph, no gradient
//! of `W`); the plain model gets `W + s·A·B` merged after each update, for generation. The
//! reference model is then the frozen top itself (the same tensors, no copy), optimizer state covers
//! only the adapters, and at a stage boundary the adapters are
//! merged into the frozen weights and start again from zero (the stage's result is the next
//! stage's reference, as without LoRA).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor, TensorData, activation};
use r1s_policy::{Block, LoraBeside, Policy, Step, run_blocks, run_blocks_lora};

use crate::config::LoraConfig;
pub use crate::config::PROJECTIONS;
use crate::error::{Result, TrainError};
pub use crate::param::ParamMut;

/// Their paths inside a block.
const PATHS: [&str; 7] = r1s_policy::adapter::PROJECTION_PATHS;

/// A block's two norms and its projections with their Hugging Face paths inside the block
/// (`self_attn.q_proj`, …).
type Parts<'a> = (&'a mut Param<Tensor<1>>, &'a mut Param<Tensor<1>>, [(&'static str, &'a mut Linear); 7]);

fn parts(b: &mut Block) -> Parts<'_> {
    let Block { attn_norm, q, k, v, o, mlp_norm, gate, up, down } = b;
    let [pq, pk, pv, po, pg, pu, pd] = PATHS;
    (attn_norm, mlp_norm, [(pq, q), (pk, k), (pv, v), (po, o), (pg, gate), (pu, up), (pd, down)])
}

fn linears(b: &mut Block) -> [(&'static str, &mut Linear); 7] {
    parts(b).2
}

/// The trainable part.
#[derive(Module, Debug)]
pub struct Top {
    pub blocks: Vec<Block>,
    /// The final RMSNorm weight `[h]`.
    pub norm: Param<Tensor<1>>,
}

impl Top {
    /// Every parameter with its Hugging Face name (`first` = the global index of `blocks[0]`).
    pub fn params_mut(&mut self, first: usize) -> Vec<(String, ParamMut<'_>)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let p = |n: &str| format!("model.layers.{}.{n}", first + i);
            let (attn_norm, mlp_norm, linears) = parts(b);
            out.push((p("input_layernorm.weight"), ParamMut::Vector(attn_norm)));
            out.push((p("post_attention_layernorm.weight"), ParamMut::Vector(mlp_norm)));
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
    /// LoRA adapters (then [`Split::top`] is frozen and they are what trains).
    pub lora: Option<Lora>,
    /// The autodiff device.
    pub ad: Device,
}

/// One adapter: `A` `[in, rank]`, `B` `[rank, out]` (burn's `[in, out]` layout, as the weights).
#[derive(Debug, Clone)]
pub struct Adapter {
    pub a: Param<Tensor<2>>,
    pub b: Param<Tensor<2>>,
}

/// The adapters of the trainable blocks: `adapters[block][projection]` in [`PROJECTIONS`] order.
#[derive(Debug, Clone)]
pub struct Lora {
    pub cfg: LoraConfig,
    pub adapters: Vec<Vec<Option<Adapter>>>,
}

impl Lora {
    /// Fresh adapters for `top` (autodiff): `A` uniform in ±1/√in (seeded), `B` zero.
    pub fn new(cfg: &LoraConfig, top: &mut Top, seed: u64, ad: &Device) -> Lora {
        let r = cfg.rank;
        let mut stream = 0u64;
        let adapters = top
            .blocks
            .iter_mut()
            .map(|b| {
                linears(b)
                    .into_iter()
                    .zip(PROJECTIONS)
                    .map(|((_, l), short)| {
                        cfg.targets.iter().any(|t| t == short).then(|| {
                            let [i, o] = l.weight.val().dims();
                            let bound = 1.0 / (i as f64).sqrt();
                            let a: Vec<f32> = (0..i * r)
                                .map(|_| {
                                    stream += 1;
                                    ((2.0 * crate::seed::unit(seed, stream) - 1.0) * bound) as f32
                                })
                                .collect();
                            let leaf = |v: Vec<f32>, dims: [usize; 2]| {
                                let t = Tensor::<2>::from_data(TensorData::new(v, dims), ad).autodiff().require_grad();
                                Param::initialized(burn::module::ParamId::new(), t)
                            };
                            Adapter { a: leaf(a, [i, r]), b: leaf(vec![0.0; r * o], [r, o]) }
                        })
                    })
                    .collect()
            })
            .collect();
        Lora { cfg: cfg.clone(), adapters }
    }

    /// `base` with every adapted weight replaced by `W + s·A·B` (in the adapters' graph).
    pub fn merged(&self, base: &Top) -> Top {
        let s = self.cfg.scale();
        let mut top = base.clone();
        for (b, ads) in top.blocks.iter_mut().zip(&self.adapters) {
            for ((_, l), ad) in linears(b).into_iter().zip(ads) {
                if let Some(ad) = ad {
                    let w = l.weight.val() + ad.a.val().matmul(ad.b.val()) * s;
                    l.weight = Param::initialized(l.weight.id, w);
                }
            }
        }
        top
    }

    /// The adapters as factors to run beside the frozen top's projections (in their graph).
    pub fn beside(&self) -> LoraBeside {
        let pair = |ad: &Adapter| (ad.a.val(), ad.b.val());
        let blocks = self.adapters.iter().map(|ads| ads.iter().map(|ad| ad.as_ref().map(pair)).collect()).collect();
        LoraBeside { scale: self.cfg.scale(), blocks }
    }

    /// The adapters' parameters with PEFT's names (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`).
    pub fn params_mut(&mut self, first: usize) -> Vec<(String, ParamMut<'_>)> {
        let mut out = Vec::new();
        for (i, ads) in self.adapters.iter_mut().enumerate() {
            for (path, ad) in PATHS.into_iter().zip(ads.iter_mut()) {
                if let Some(ad) = ad {
                    let p = format!("base_model.model.model.layers.{}.{path}", first + i);
                    out.push((format!("{p}.lora_A.weight"), ParamMut::Matrix(&mut ad.a)));
                    out.push((format!("{p}.lora_B.weight"), ParamMut::Matrix(&mut ad.b)));
                }
            }
        }
        out
    }
}

/// Log-probs of chosen tokens `[n]` and, when asked, the entropy of each distribution `[n]`.
pub type Scored = (Tensor<1>, Option<Tensor<1>>);

impl Split {
    /// Splits `policy` to train its last `train_blocks` blocks (0 or more than the model has: all),
    /// or LoRA adapters on them (seeded by `seed`).
    pub fn new(
        policy: Policy,
        train_blocks: usize,
        with_reference: bool,
        lora: Option<&LoraConfig>,
        seed: u64,
    ) -> Result<Split> {
        let layers = policy.model.blocks.len();
        let k = if train_blocks == 0 { layers } else { train_blocks.min(layers) };
        let first = layers - k;
        let plain_top = top_of(&policy, first);
        let ad = policy.device().clone().autodiff();
        let mut top = plain_top.clone().fork(&ad);
        let lora = match lora {
            Some(cfg) => {
                cfg.check().map_err(TrainError::Options)?;
                top = top.no_grad();
                Some(Lora::new(cfg, &mut top, seed, &ad))
            }
            None => {
                for (_, mut p) in top.params_mut(first) {
                    let v = p.flat();
                    p.set(v, &ad);
                }
                None
            }
        };
        let reference = with_reference.then_some(plain_top);
        Ok(Split { policy, first, top, reference, lora, ad })
    }

    /// The top as trained (autodiff): the trainable top, or the frozen one with the adapters merged.
    pub fn trained(&self) -> Top {
        match &self.lora {
            Some(l) => l.merged(&self.top),
            None => self.top.clone(),
        }
    }

    /// The trainable parameters: the top's (Hugging Face names) or the adapters' (PEFT names).
    pub fn params_mut(&mut self) -> Vec<(String, ParamMut<'_>)> {
        match &mut self.lora {
            Some(l) => l.params_mut(self.first),
            None => self.top.params_mut(self.first),
        }
    }

    /// Starts a new stage from the model as trained so far, which becomes the reference. With LoRA
    /// the adapters are merged into the frozen top and start again (seeded by `seed`), and `opt`
    /// forgets their moments.
    ///
    /// # Errors
    /// Packing the merged blocks again for generation ([`Split::sync`]).
    pub fn rebase(&mut self, seed: u64, opt: &mut crate::optim::AdamW) -> Result<()> {
        let Some(l) = self.lora.take() else {
            if self.reference.is_some() {
                self.reference = Some(self.plain_top());
            }
            return Ok(());
        };
        let plain = l.merged(&self.top).valid();
        let mut top = plain.clone().fork(&self.ad).no_grad();
        self.lora = Some(Lora::new(&l.cfg, &mut top, seed, &self.ad));
        self.top = top;
        if self.reference.is_some() {
            self.reference = Some(plain.clone());
        }
        opt.reset();
        self.install(plain)
    }

    /// Copies the trainable top (as trained) into the plain model, and packs its blocks again when
    /// the policy generates from packed weights ([`Policy::set_weights`]: rollouts then sample
    /// from the updated model in its packed form; scoring and training keep f32).
    ///
    /// # Errors
    /// Reading the new weights back to pack them.
    pub fn sync(&mut self) -> Result<()> {
        self.install(self.trained().valid())
    }

    /// Puts `plain` in the plain model's place of the top (and its packed copy).
    fn install(&mut self, plain: Top) -> Result<()> {
        for (i, b) in plain.blocks.into_iter().enumerate() {
            self.policy.model.blocks[self.first + i] = b;
        }
        self.policy.model.norm = plain.norm;
        self.policy.repack_blocks(self.first)?;
        Ok(())
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
        self.score_with(top, None, boundary, step, rows, targets, entropy)
    }

    /// [`Split::score`] under the model as trained, with gradients: the trainable top, or the frozen
    /// top with the LoRA adapters run beside its projections (equal to scoring [`Split::trained`],
    /// without a gradient of the frozen weights).
    pub fn score_trained(
        &self,
        boundary: Tensor<3>,
        step: &Step,
        rows: &[i64],
        targets: &[i64],
        entropy: bool,
    ) -> Result<Scored> {
        let beside = self.lora.as_ref().map(Lora::beside);
        self.score_with(&self.top, beside.as_ref(), boundary, step, rows, targets, entropy)
    }

    #[allow(clippy::too_many_arguments)]
    fn score_with(
        &self,
        top: &Top,
        lora: Option<&LoraBeside>,
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
        let x = match lora {
            Some(l) => run_blocks_lora(&top.blocks, self.first, &p.cfg, p.rope(), boundary, step, l),
            None => run_blocks(&top.blocks, self.first, &p.cfg, p.rope(), boundary, step, None),
        };
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
pub fn count_params(split: &mut Split) -> usize {
    split.params_mut().iter().map(|(_, p)| p.numel()).sum()
}
