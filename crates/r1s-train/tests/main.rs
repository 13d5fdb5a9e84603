//! The RL arithmetic by hand, the document mask on a real trajectory, gradients against finite
//! differences, one optimisation step, exact resumption from a checkpoint, and the whole trainer
//! (real burn model, real MiniLM retriever) running, resuming and plotting.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use r1s_policy::load::{RandomWeights, build_llama, hf_tensors};
use r1s_policy::{LlamaConfig, Policy, TextTokenizer};
use r1s_train::config::LoraConfig;
use r1s_train::episode::{Micro, Sequence, spans_of_text, to_vec, tokenize};
use r1s_train::loss::{self, Advantage, KlEstimator, KlPlacement};
use r1s_train::model::{Split, Top};
use r1s_train::optim::{AdamW, AdamWConfig};
use r1s_train::rl::{Episode, RlSettings, optimize};

fn shared(rel: &str) -> PathBuf {
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
        .join("../../../shared/data")
        .join(rel)
}

/// The device of the tiny models: `R1S_TEST_DEVICE` (a `--device` name, e.g. `tch-cpu` in a build
/// with the `tch` feature), else burn's flex backend.
fn test_device() -> Device {
    match std::env::var("R1S_TEST_DEVICE") {
        Ok(name) => r1s_policy::device(&name).unwrap_or_else(|e| panic!("R1S_TEST_DEVICE={name}: {e}")),
        Err(_) => Device::flex(),
    }
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn advantages_returns_whitening_and_means_by_hand() {
    // REINFORCE++ baseline: reward minus its group's mean
    let r = loss::baseline(Advantage::ReinforceBaseline, &[1.0, 0.0, 0.5, 0.5, 2.0], &[0, 0, 1, 1, 2]);
    assert_eq!(r, vec![0.5, -0.5, 0.0, 0.0, 0.0]);
    // GRPO: (r - mean) / (unbiased std + 1e-9); std of {1, 0} = 0.70710678
    let g = loss::baseline(Advantage::GroupNorm, &[1.0, 0.0, 3.0, 3.0], &[0, 0, 1, 1]);
    let r = std::f64::consts::FRAC_1_SQRT_2; // 0.5 / std, std = 1/√2
    assert!(close(g[0], r, 1e-6) && close(g[1], -r, 1e-6), "{g:?}");
    assert_eq!(&g[2..], &[0.0, 0.0], "a group with one reward has no advantage");
    // γ = 1 returns: reward on the last token, −β·kl on every token, summed from the end
    let ret = loss::returns(1.0, &[0.1, 0.2, 0.3], 3);
    for (a, b) in ret.iter().zip([0.4, 0.5, 0.7]) {
        assert!(close(f64::from(*a), b, 1e-6), "{ret:?}");
    }
    assert_eq!(loss::returns(-2.0, &[], 2), vec![-2.0, -2.0]);
    // whitening over all action tokens together: mean 2, population var 2/3
    let mut rows = vec![vec![1.0f32, 2.0], vec![3.0], vec![]];
    loss::whiten(&mut rows);
    let s = (2.0f64 / 3.0 + 1e-8).sqrt();
    assert!(
        close(f64::from(rows[0][0]), -1.0 / s, 1e-5)
            && rows[0][1].abs() < 1e-6
            && close(f64::from(rows[1][0]), 1.0 / s, 1e-5)
    );
    // masked mean: per sequence, then over sequences (an empty one counts as 0)
    assert!(close(loss::masked_mean(&[vec![1.0, 2.0], vec![3.0], vec![]]), 1.5, 1e-12));
}

#[test]
fn ppo_clip_and_kl_by_hand() {
    let half = 0.5f32.ln();
    // ratio 2 with A = 1: clipped to 1.2; with A = −1 the unclipped −2 is the minimum
    let (l, c) = loss::ppo_token(0.0, half, 1.0, 0.2);
    assert!(close(f64::from(l), -1.2, 1e-6) && c);
    let (l, c) = loss::ppo_token(0.0, half, -1.0, 0.2);
    assert!(close(f64::from(l), 2.0, 1e-6) && !c);
    // ratio 1: −A
    assert_eq!(loss::ppo_token(-3.0, -3.0, 0.7, 0.2), (-0.7, false));
    // KL estimators at log-ratio 1
    assert!(close(f64::from(loss::kl(KlEstimator::K1, -1.0, -2.0)), 1.0, 1e-7));
    assert!(close(f64::from(loss::kl(KlEstimator::K3, -1.0, -2.0)), (-1.0f64).exp(), 1e-6));
    assert_eq!(loss::kl(KlEstimator::K3, -1.5, -1.5), 0.0);
    // the tensor loss equals the per-token sum with weights, plus β·k3 when asked
    let dev = Device::flex();
    let t = |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [v.len()]), &dev);
    let (lp, old, adv, w, rf) =
        ([0.0, -1.0, -2.0], [half, -1.1, -1.0], [1.0, -0.5, 2.0], [0.25, 0.25, 0.5], [-0.5, -1.0, -2.5]);
    let want: f32 = (0..3).map(|i| w[i] * loss::ppo_token(lp[i], old[i], adv[i], 0.2).0).sum();
    let got = loss::ppo_loss(t(&lp), t(&old), t(&adv), t(&w), 0.2, None).into_scalar::<f32>();
    assert!((want - got).abs() < 1e-6, "{want} vs {got}");
    let kl: f32 = (0..3).map(|i| w[i] * loss::kl(KlEstimator::K3, lp[i], rf[i])).sum();
    let got = loss::ppo_loss(t(&lp), t(&old), t(&adv), t(&w), 0.2, Some((t(&rf), 0.1))).into_scalar::<f32>();
    assert!((want + 0.1 * kl - got).abs() < 1e-6);
}

fn tokenizer() -> TextTokenizer {
    let p = r1s_core::paths::r1s_home().join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    TextTokenizer::from_gguf(&r1s_policy::gguf::Gguf::open(&p).expect("tools/setup fetches SmolLM2")).unwrap()
}

/// A tiny Llama with SmolLM2's tokenizer and vocabulary (so real text runs through it).
fn tiny_policy(layers: usize, seed: u64) -> Policy {
    let cfg: LlamaConfig = serde_json::from_value(serde_json::json!({
        "model_type": "llama", "vocab_size": 49152, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 2048,
        "tie_word_embeddings": true,
    }))
    .unwrap();
    let dev = test_device();
    let model = build_llama(&cfg, &RandomWeights { cfg: cfg.clone(), seed }, &dev).unwrap();
    Policy::new(model, cfg, tokenizer(), &dev)
}

/// A released R1-Searcher trajectory that retrieved documents.
fn released_sol() -> String {
    let text = std::fs::read_to_string(shared("r1searcher/eval_results/hotpotqa_qwen.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["gen_text_store"].as_str().unwrap().to_owned())
        .find(|s| s.matches("<|begin_of_documents|>").count() >= 2 && s.contains("</answer>"))
        .unwrap()
}

#[test]
fn the_mask_is_exactly_the_documents_of_a_real_trajectory() {
    let tok = tokenizer();
    let sol = released_sol();
    let spans = spans_of_text(&sol);
    assert!(spans.iter().filter(|s| s.source == r1s_agent::Source::Retrieval).count() >= 2);
    let prompt = r1s_agent::protocol::base_prompt("Who?");
    let eos = tok.eos[0];
    let seq = tokenize(&tok, &prompt, &sol, &spans, Some(eos), 1 << 20).unwrap();
    let n_prompt = tok.encode(&prompt).unwrap().len();
    let is_action: Vec<bool> = (0..seq.tokens.len()).map(|p| seq.actions.binary_search(&p).is_ok()).collect();
    assert!(is_action[..n_prompt].iter().all(|&a| !a), "prompt tokens are never actions");
    assert_eq!(seq.actions.last(), Some(&(seq.tokens.len() - 1)), "the EOS is the policy's last action");
    let pick = |want: bool| -> Vec<u32> {
        (n_prompt..seq.tokens.len() - 1).filter(|&p| is_action[p] == want).map(|p| seq.tokens[p]).collect()
    };
    let mut mine = String::new();
    let mut docs = String::new();
    for s in &spans {
        match s.source {
            r1s_agent::Source::Policy => mine.push_str(&sol[s.start..s.end]),
            r1s_agent::Source::Retrieval => docs.push_str(&sol[s.start..s.end]),
        }
    }
    assert_eq!(tok.decode(&pick(true)).unwrap(), mine, "the actions are exactly the policy's text");
    assert_eq!(tok.decode(&pick(false)).unwrap(), docs, "the masked tokens are exactly the documents");
    for s in spans.iter().filter(|s| s.source == r1s_agent::Source::Retrieval) {
        let block = &sol[s.start..s.end];
        assert!(block.starts_with("<|begin_of_documents|>\n(1)") && block.ends_with("<|end_of_documents|>\n\n"));
    }
    assert!(mine.contains("<|end_of_query|>") && !mine.contains("<|begin_of_documents|>"));
    // cutting at max_len keeps only actions inside
    let cut = tokenize(&tok, &prompt, &sol, &spans, Some(eos), n_prompt + 10).unwrap();
    assert_eq!(cut.tokens.len(), n_prompt + 10);
    assert!(cut.actions.iter().all(|&p| p < n_prompt + 10));
}

/// Episodes of real text (the loop's shape: policy text, documents, policy text).
fn episodes(tok: &TextTokenizer, rewards: &[f64], groups: &[usize]) -> Vec<Episode> {
    let sols = [
        " Search. <|begin_of_query|> Barbara Strozzi<|end_of_query|>\n\n<|begin_of_documents|>\n(1)\"Barbara Strozzi\"\nBarbara Strozzi was an Italian singer.\n<|end_of_documents|>\n\n She was Italian. </think>\n\n<answer> Italian </answer>",
        " I know it. </think>\n\n<answer> French </answer>",
        " Look. <|begin_of_query|> Route 22<|end_of_query|>\n\n<|begin_of_documents|>\n(1)\"U.S. Route 22\"\nA highway.\n<|end_of_documents|>\n\n</think>\n\n<answer> U.S. Route 22 </answer>",
        " Maybe a road. </think>\n\n<answer> a road in Ohio somewhere </answer>",
    ];
    rewards
        .iter()
        .zip(groups)
        .enumerate()
        .map(|(i, (&reward, &group))| {
            let sol = sols[i % sols.len()];
            let seq = tokenize(tok, "Question: who? Answer:", sol, &spans_of_text(sol), tok.eos.first().copied(), 512)
                .unwrap();
            Episode { group, reward, seq, sampled: None }
        })
        .collect()
}

fn settings(kl_beta: f32) -> RlSettings {
    RlSettings {
        advantage: Advantage::ReinforceBaseline,
        clip_eps: 0.2,
        kl_beta,
        kl_estimator: KlEstimator::K1,
        kl_placement: KlPlacement::Reward,
        micro_batch: 2,
        train_batch: 0,
        epochs: 1,
    }
}

fn adam(lr: f64) -> AdamW {
    AdamW::new(AdamWConfig { lr, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.01, max_grad_norm: 1.0 })
}

/// The PPO loss of `micro` under `top` (old log-probs and advantages as given).
fn loss_under(split: &Split, top: &Top, m: &Micro, old: &[f32], adv: &[f32], w: &[f32]) -> Tensor<1> {
    let dev = split.ad.clone();
    let t = |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [v.len()]), &dev);
    let (lp, _) = split.score(top, m.boundary.clone(), &m.step, &m.rows, &m.targets, false).unwrap();
    loss::ppo_loss(lp, t(old), t(adv), t(w), 0.2, None)
}

#[test]
fn ppo_gradients_match_finite_differences_on_a_tiny_model() {
    let tok = tokenizer();
    let split = Split::new(tiny_policy(2, 3), 1, false, None, 1).unwrap();
    let eps = episodes(&tok, &[1.0, 0.0], &[0, 0]);
    let seqs: Vec<Sequence> = eps.iter().map(|e| e.seq.clone()).collect();
    let m = Micro::new(&split, &seqs, vec![0, 1]).unwrap();
    let n = m.rows.len();
    // old log-probs slightly off the current ones so that ratios differ from 1 (inside the clip range)
    let (cur, _) = m.score_plain(&split, &split.plain_top(), false).unwrap();
    let old: Vec<f32> = cur.iter().enumerate().map(|(i, x)| x + 0.05 * ((i % 5) as f32 - 2.0) / 2.0).collect();
    let adv: Vec<f32> = (0..n).map(|i| if m.owner[i] == 0 { 1.0 } else { -0.7 }).collect();
    let w = vec![1.0 / n as f32; n];
    let l = loss_under(&split, &split.top, &m, &old, &adv, &w);
    let grads = l.backward();
    let mut top = split.top.clone();
    let mut checked = 0;
    let names: Vec<String> = top.params_mut(split.first).into_iter().map(|(n, _)| n).collect();
    for name in names.iter().filter(|n| {
        n.ends_with("model.norm.weight")
            || n.ends_with("mlp.down_proj.weight")
            || n.ends_with("self_attn.q_proj.weight")
    }) {
        let g = {
            let params = top.params_mut(split.first);
            let (_, p) = params.into_iter().find(|(n, _)| n == name).unwrap();
            to_vec(p.grad(&grads).expect("a trainable parameter has a gradient")).unwrap()
        };
        // the three largest gradient entries
        let mut idx: Vec<usize> = (0..g.len()).collect();
        idx.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
        for &i in &idx[..3] {
            let eval = |delta: f32| -> f64 {
                let mut t = top.clone();
                let params = t.params_mut(split.first);
                let (_, mut p) = params.into_iter().find(|(n, _)| n == name).unwrap();
                let mut v = to_vec(p.flat()).unwrap();
                v[i] += delta;
                let len = v.len();
                p.set(Tensor::from_data(TensorData::new(v, [len]), &test_device()), &split.ad);
                f64::from(loss_under(&split, &t, &m, &old, &adv, &w).inner().into_scalar::<f32>())
            };
            let h = 1e-2;
            let fd = (eval(h) - eval(-h)) / (2.0 * f64::from(h));
            let an = f64::from(g[i]);
            assert!((fd - an).abs() <= 0.03 * an.abs() + 2e-4, "{name}[{i}]: finite difference {fd} vs backward {an}");
            checked += 1;
        }
    }
    assert_eq!(checked, 9);
    // frozen blocks get no gradient (they are not in the trainable top at all)
    assert!(names.iter().all(|n| !n.starts_with("model.layers.0.")));
}

#[test]
fn one_step_raises_good_episodes_and_lowers_the_loss() {
    let tok = tokenizer();
    let mut split = Split::new(tiny_policy(2, 5), 0, false, None, 1).unwrap();
    let rewards = [1.0, 0.0, 1.0, 0.0];
    let eps = episodes(&tok, &rewards, &[0, 0, 1, 1]);
    let seqs: Vec<Sequence> = eps.iter().map(|e| e.seq.clone()).collect();
    let score = |split: &Split| -> Vec<Vec<f32>> {
        (0..4)
            .map(|i| {
                let m = Micro::new(split, &seqs, vec![i]).unwrap();
                m.score_plain(split, &split.plain_top(), false).unwrap().0
            })
            .collect()
    };
    let before = score(&split);
    let mut opt = adam(3e-3);
    let stats = optimize(&mut split, &mut opt, &eps, &settings(0.0)).unwrap();
    assert_eq!(stats.optimizer_steps, 1);
    assert!(stats.loss.is_finite() && stats.grad_norm > 0.0, "{stats:?}");
    assert_eq!(stats.clip_frac, 0.0, "the first update is on-policy: no ratio is clipped");
    let after = score(&split);
    // the same advantages the step used: baseline, returns, whitening
    let base = loss::baseline(Advantage::ReinforceBaseline, &rewards, &[0, 0, 1, 1]);
    let mut adv: Vec<Vec<f32>> = base.iter().zip(&before).map(|(&r, b)| loss::returns(r, &[], b.len())).collect();
    loss::whiten(&mut adv);
    let surrogate = |new: &[Vec<f32>]| -> f64 {
        let rows: Vec<Vec<f32>> = (0..4)
            .map(|i| (0..new[i].len()).map(|t| loss::ppo_token(new[i][t], before[i][t], adv[i][t], 0.2).0).collect())
            .collect();
        loss::masked_mean(&rows)
    };
    assert!((surrogate(&before) - stats.loss).abs() < 1e-4, "the reported loss is the surrogate at the old policy");
    assert!(surrogate(&after) < surrogate(&before) - 1e-3, "{} → {}", surrogate(&before), surrogate(&after));
    let mean = |v: &[f32]| v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
    for i in 0..4 {
        let moved = mean(&after[i]) - mean(&before[i]);
        assert!(if rewards[i] > 0.5 { moved > 0.0 } else { moved < 0.0 }, "episode {i}: mean log-prob moved {moved}");
    }
}

#[test]
fn a_resumed_checkpoint_takes_the_same_next_step() {
    resumed_checkpoint_takes_the_same_next_step(None);
}

#[test]
fn a_resumed_lora_checkpoint_takes_the_same_next_step() {
    resumed_checkpoint_takes_the_same_next_step(Some(&lora(4)));
}

fn lora(rank: usize) -> LoraConfig {
    LoraConfig { rank, alpha: 8.0, ..Default::default() }
}

fn resumed_checkpoint_takes_the_same_next_step(lora: Option<&LoraConfig>) {
    let tok = tokenizer();
    let tmp = tempfile::tempdir().unwrap();
    let step1 = episodes(&tok, &[1.0, 0.0, 0.5, 0.0], &[0, 0, 1, 1]);
    let step2 = episodes(&tok, &[0.0, 1.0, 1.0, 0.0], &[0, 0, 1, 1]);
    let s = settings(0.05);
    let mut a = Split::new(tiny_policy(3, 9), 2, true, lora, 5).unwrap();
    let mut opt_a = adam(1e-2);
    optimize(&mut a, &mut opt_a, &step1, &s).unwrap();
    let dir = tmp.path().join("ck");
    let state = r1s_train::checkpoint::TrainerState {
        global_step: 1,
        stage: 0,
        stage_step: 1,
        seed: 1,
        train_blocks: 2,
        lora: lora.cloned(),
        config: serde_json::Value::Null,
    };
    r1s_train::checkpoint::save(&dir, &a, &opt_a, &state).unwrap();
    assert!(!dir.with_extension("part").exists());
    let sa = optimize(&mut a, &mut opt_a, &step2, &s).unwrap();
    // resume: the checkpoint is a Hugging Face directory plus the optimizer and reference (and adapters)
    let mut b = r1s_train::checkpoint::load_split(&dir, &test_device(), 2, true, lora, 77).unwrap();
    let mut opt_b = adam(1e-2);
    r1s_train::checkpoint::load_optimizer(&dir, &mut opt_b, &test_device()).unwrap();
    assert_eq!(opt_b.t, 1);
    assert_eq!(r1s_train::checkpoint::read_state(&dir).unwrap(), state);
    let sb = optimize(&mut b, &mut opt_b, &step2, &s).unwrap();
    assert_eq!(sa, sb, "same statistics");
    assert!(sa.kl != 0.0, "the reference differs from the policy after a step");
    let (wa, wb) = (hf_tensors(&a.policy.model).unwrap(), hf_tensors(&b.policy.model).unwrap());
    assert_eq!(wa.keys().collect::<Vec<_>>(), wb.keys().collect::<Vec<_>>());
    for (k, (va, _)) in &wa {
        assert_eq!(va, &wb[k].0, "{k} differs after resuming");
    }
    if let Some(l) = lora {
        // PEFT's files: lora_A [rank, in], lora_B [out, rank], for the two trained blocks only
        let bytes = std::fs::read(dir.join("adapter/adapter_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let q_a = st.tensor("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight").unwrap();
        assert_eq!(q_a.shape(), [l.rank, 32]);
        let down_b = st.tensor("base_model.model.model.layers.2.mlp.down_proj.lora_B.weight").unwrap();
        assert_eq!(down_b.shape(), [32, l.rank]);
        assert_eq!(st.names().len(), 2 * 7 * 2);
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("adapter/adapter_config.json")).unwrap()).unwrap();
        assert_eq!((cfg["peft_type"].as_str(), cfg["r"].as_u64()), (Some("LORA"), Some(l.rank as u64)));
        assert_eq!(cfg["layers_to_transform"], serde_json::json!([1, 2]));
    }
    // a corrupt optimizer file is a clear error
    std::fs::write(dir.join("optimizer.safetensors"), b"not safetensors").unwrap();
    let err = r1s_train::checkpoint::load_optimizer(&dir, &mut opt_b, &test_device()).unwrap_err();
    assert!(err.to_string().contains("optimizer.safetensors"), "{err}");
}

#[test]
fn lora_starts_at_the_model_trains_only_adapters_and_rebases_into_the_weights() {
    let tok = tokenizer();
    let eps = episodes(&tok, &[1.0, 0.0, 1.0, 0.0], &[0, 0, 1, 1]);
    let seqs: Vec<Sequence> = eps.iter().map(|e| e.seq.clone()).collect();
    let plain = Split::new(tiny_policy(3, 4), 2, false, None, 1).unwrap();
    let mut split = Split::new(tiny_policy(3, 4), 2, true, Some(&lora(4)), 1).unwrap();
    let m = Micro::new(&split, &seqs, vec![0, 1]).unwrap();
    // B starts at zero: the adapted model is the model
    let score = |s: &Split| {
        to_vec(s.score(&s.trained(), m.boundary.clone(), &m.step, &m.rows, &m.targets, false).unwrap().0).unwrap()
    };
    assert_eq!(score(&split), score(&plain));
    // only the adapters train: rank × (in + out) per projection of the two trained blocks
    let per_block = 4 * ((32 + 32) + (32 + 16) * 2 + (32 + 32) + (32 + 48) * 2 + (48 + 32));
    assert_eq!(r1s_train::model::count_params(&mut split), 2 * per_block);
    let names: Vec<String> = split.params_mut().into_iter().map(|(n, _)| n).collect();
    assert!(names.iter().all(|n| n.contains(".lora_A.") || n.contains(".lora_B.")), "{names:?}");
    // the adapters' gradients agree with finite differences (B; A's are zero while B is)
    let n = m.rows.len();
    let (cur, _) = m.score_plain(&split, &split.plain_top(), false).unwrap();
    let old: Vec<f32> = cur.iter().enumerate().map(|(i, x)| x + 0.05 * ((i % 5) as f32 - 2.0) / 2.0).collect();
    let adv: Vec<f32> = (0..n).map(|i| if m.owner[i] == 0 { 1.0 } else { -0.7 }).collect();
    let w = vec![1.0 / n as f32; n];
    let grads = loss_under(&split, &split.trained(), &m, &old, &adv, &w).backward();
    let grad_of = |name: &str| {
        let mut l = split.lora.clone().unwrap();
        let (_, p) = l.params_mut(split.first).into_iter().find(|(n, _)| n == name).unwrap();
        to_vec(p.grad(&grads).expect("an adapter has a gradient")).unwrap()
    };
    let b_name = "base_model.model.model.layers.2.self_attn.v_proj.lora_B.weight";
    assert!(grad_of("base_model.model.model.layers.2.self_attn.v_proj.lora_A.weight").iter().all(|&g| g == 0.0));
    let g = grad_of(b_name);
    let i = (0..g.len()).max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs())).unwrap();
    let eval = |delta: f32| -> f64 {
        let mut l = split.lora.clone().unwrap();
        let (_, mut p) = l.params_mut(split.first).into_iter().find(|(n, _)| n == b_name).unwrap();
        let mut v = to_vec(p.flat()).unwrap();
        v[i] += delta;
        let len = v.len();
        p.set(Tensor::from_data(TensorData::new(v, [len]), &test_device()), &split.ad);
        f64::from(loss_under(&split, &l.merged(&split.top), &m, &old, &adv, &w).inner().into_scalar::<f32>())
    };
    let fd = (eval(1e-2) - eval(-1e-2)) / 2e-2;
    assert!((fd - f64::from(g[i])).abs() <= 0.03 * f64::from(g[i]).abs() + 2e-4, "finite difference {fd} vs {}", g[i]);
    // a step moves the adapted projections of the plain model and nothing else
    let before = hf_tensors(&split.policy.model).unwrap();
    let frozen = split.top.clone();
    let mut opt = adam(1e-2);
    optimize(&mut split, &mut opt, &eps, &settings(0.05)).unwrap();
    let after = hf_tensors(&split.policy.model).unwrap();
    for (k, (v, _)) in &before {
        let trained = (k.starts_with("model.layers.1.") || k.starts_with("model.layers.2.")) && k.contains("_proj");
        assert_eq!(v != &after[k].0, trained, "{k}");
    }
    let same = |a: &Top, b: &Top| {
        let (mut a, mut b) = (a.clone(), b.clone());
        let flat =
            |t: &mut Top| t.params_mut(1).into_iter().map(|(_, p)| to_vec(p.flat()).unwrap()).collect::<Vec<_>>();
        flat(&mut a) == flat(&mut b)
    };
    assert!(same(&split.top, &frozen), "the frozen top did not move");
    // with B trained away from zero, adapters run beside the frozen weights (what training runs)
    // give the merged model's log-probs and the same adapter gradients
    let t = |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [v.len()]), &split.ad);
    let beside = |s: &Split| s.score_trained(m.boundary.clone(), &m.step, &m.rows, &m.targets, false).unwrap().0;
    let merged = |s: &Split| s.score(&s.trained(), m.boundary.clone(), &m.step, &m.rows, &m.targets, false).unwrap().0;
    let (x, y) = (to_vec(beside(&split).inner()).unwrap(), to_vec(merged(&split).inner()).unwrap());
    assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-4), "{x:?} vs {y:?}");
    let loss = |lp: Tensor<1>| loss::ppo_loss(lp, t(&old), t(&adv), t(&w), 0.2, None);
    let (ga, gb) = (loss(beside(&split)).backward(), loss(merged(&split)).backward());
    let mut l = split.lora.clone().unwrap();
    for (name, p) in l.params_mut(split.first) {
        let (u, v) = (to_vec(p.grad(&ga).unwrap()).unwrap(), to_vec(p.grad(&gb).unwrap()).unwrap());
        let scale = v.iter().fold(1e-6f32, |a, x| a.max(x.abs()));
        assert!(u.iter().zip(&v).all(|(a, b)| (a - b).abs() <= 1e-3 * scale), "{name}: {u:?} vs {v:?}");
    }
    // a new stage: the adapters go into the weights and start again; the model does not change
    split.rebase(3, &mut opt).unwrap();
    assert_eq!(opt.t, 0);
    assert_eq!(hf_tensors(&split.policy.model).unwrap(), after);
    assert!(
        same(&split.trained().valid(), &split.plain_top())
            && same(split.reference.as_ref().unwrap(), &split.plain_top())
    );
    assert!(!same(&split.top, &frozen));
}

/// A flat MiniLM index over 60 real passages in `dir`.
fn small_index(dir: &Path) -> PathBuf {
    let passages = std::fs::read_to_string(shared("r1searcher/passages.jsonl")).unwrap();
    small_index_of(dir, passages.lines().take(60).map(|l| format!("{l}\n")).collect())
}

/// A flat index over `jsonl` (a corpus file in any format ingest reads) in `dir/index`.
fn small_index_of(dir: &Path, jsonl: String) -> PathBuf {
    use r1s_core::{Cancel, NoProgress};
    let src = dir.join("p.jsonl");
    std::fs::write(&src, jsonl).unwrap();
    let corpus = dir.join("corpus");
    r1s_corpus::ingest(&[src], &corpus, &Default::default(), &NoProgress, &Cancel::new()).unwrap();
    let e = r1s_embed::OnnxEmbedder::load(&r1s_embed::EmbedderConfig { threads: 2, ..Default::default() }).unwrap();
    let index = dir.join("index");
    r1s_embed::embed_corpus(&e, &r1s_embed::EmbedJob::new(&corpus, &index), &NoProgress, &Cancel::new()).unwrap();
    r1s_index::build(&index, r1s_index::Kind::Flat, &Default::default(), &NoProgress, &Cancel::new()).unwrap();
    index
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    r1s_train::plot::read_metrics(&dir.join("metrics.jsonl")).unwrap()
}

/// What a whole-trainer test needs in `dir`: a real retriever (MiniLM, flat index over 60 real
/// passages) and a tiny random model saved as a checkpoint directory (its path).
fn tiny_run(dir: &Path) -> (r1s_retrieve::DenseRetriever, PathBuf) {
    let retriever = r1s_retrieve::DenseRetriever::open(&small_index(dir), &Default::default()).unwrap();
    let model = dir.join("tiny");
    std::fs::create_dir_all(&model).unwrap();
    r1s_train::checkpoint::save_model(&tiny_policy(2, 11), &model).unwrap();
    (retriever, model)
}

#[test]
fn the_trainer_runs_resumes_exactly_and_plots() {
    use r1s_core::{Cancel, NoProgress};
    let tmp = tempfile::tempdir().unwrap();
    let (retriever, model) = tiny_run(tmp.path());
    let run_a = tmp.path().join("a");
    let toml = format!(
        r#"
[model]
init = "{model}"
[retriever]
index = "unused"
[train]
out = "{out}"
train_blocks = 1
lr = 1e-3
kl_beta = 0.01
micro_batch = 2
save_every = 1
prompt = "base"
[eval]
data = "{data}"
limit = 2
every = 1
max_new_tokens = 6
[[stage]]
name = "stage1"
data = "{data}"
reward = "stage1"
steps = 2
prompts_per_step = 2
rollouts_per_prompt = 2
max_new_tokens = 10
max_retrievals = 1
"#,
        model = model.display(),
        out = run_a.display(),
        data = shared("r1searcher/training_set/stage_1.jsonl").display(),
    );
    let cfg_path = tmp.path().join("train.toml");
    std::fs::write(&cfg_path, &toml).unwrap();
    let cfg = r1s_train::TrainConfig::read(&cfg_path).unwrap();
    let cancel = Cancel::new();
    let mut steps = 0;
    let mut t = r1s_train::trainer::Trainer::new(cfg.clone(), false, &retriever, &NoProgress, &cancel).unwrap();
    t.run(&mut |_| steps += 1).unwrap();
    assert_eq!(steps, 2);
    let ma = metrics(&run_a);
    let kinds: Vec<&str> = ma.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["eval", "step", "eval", "step", "eval"]);
    for r in ma.iter().filter(|r| r["kind"] == "step") {
        for k in [
            "reward_mean",
            "reward_std",
            "retrieval_rate",
            "format_bad",
            "f1",
            "kl",
            "entropy",
            "clip_frac",
            "loss",
            "grad_norm",
            "tokens_per_s",
            "step_s",
        ] {
            assert!(r[k].as_f64().is_some_and(f64::is_finite), "{k} in {r}");
        }
        assert_eq!(r["episodes"], 4);
    }
    assert_eq!(std::fs::read_to_string(run_a.join("rollouts.jsonl")).unwrap().lines().count(), 8);
    let ck = |run: &Path, s: usize| r1s_train::checkpoint::dir_for(run, s);
    assert!(ck(&run_a, 1).join("model.safetensors").exists() && ck(&run_a, 2).join("trainer.json").exists());

    // interrupted after step 1: a copy without the step-2 checkpoint resumes and ends identically
    let run_b = tmp.path().join("b");
    copy_dir(&run_a, &run_b);
    std::fs::remove_dir_all(ck(&run_b, 2)).unwrap();
    let mut cfg_b = cfg.clone();
    cfg_b.train.out = run_b.clone();
    let mut t = r1s_train::trainer::Trainer::new(cfg_b, true, &retriever, &NoProgress, &cancel).unwrap();
    assert_eq!(t.state.global_step, 1);
    t.run(&mut |_| {}).unwrap();
    let same = |f: &str| std::fs::read(ck(&run_a, 2).join(f)).unwrap() == std::fs::read(ck(&run_b, 2).join(f)).unwrap();
    assert!(same("model.safetensors") && same("optimizer.safetensors") && same("reference.safetensors"));
    assert_eq!(
        std::fs::read_to_string(run_a.join("rollouts.jsonl")).unwrap(),
        std::fs::read_to_string(run_b.join("rollouts.jsonl")).unwrap()
    );
    let mb = metrics(&run_b);
    assert_eq!(mb.len(), ma.len());
    for (x, y) in ma.iter().zip(&mb) {
        for k in ["kind", "step", "reward_mean", "kl", "loss", "entropy", "f1", "retrieval_rate"] {
            assert_eq!(x[k], y[k], "{k}");
        }
    }
    // the checkpoint loads as a model
    Policy::load(&ck(&run_b, 2), &Device::flex()).unwrap();

    // curves
    let png = tmp.path().join("curves.png");
    let panels = r1s_train::plot::plot(&ma, &png, "test").unwrap();
    assert!(panels >= 5);
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));

    // a typo in the configuration names the file
    std::fs::write(&cfg_path, toml.replace("kl_beta", "kl_betta")).unwrap();
    let err = r1s_train::TrainConfig::read(&cfg_path).unwrap_err().to_string();
    assert!(err.contains("train.toml") && err.contains("kl_betta"), "{err}");
}

/// A stage under R1-Searcher++: the rollouts of each prompt are rewarded together (the logged rewards
/// equal the group step's on the logged solutions), and the step logs RC, the share without search,
/// recalled facts and the memorisation term.
#[test]
fn a_plus_stage_rewards_groups_and_logs_rc_and_memorisation() {
    use r1s_core::{Cancel, NoProgress};
    let tmp = tempfile::tempdir().unwrap();
    let (retriever, model) = tiny_run(tmp.path());
    let out = tmp.path().join("plus");
    let toml = format!(
        r#"
[model]
init = "{model}"
[retriever]
index = "unused"
[train]
out = "{out}"
train_blocks = 1
lr = 1e-3
micro_batch = 2
prompt = "base"
protocol = "r1searcher-plus"
[[stage]]
name = "rl"
data = "{data}"
reward = "r1searcher-plus"
steps = 1
prompts_per_step = 2
rollouts_per_prompt = 3
max_new_tokens = 10
max_retrievals = 1
[stage.group]
ddof = 1
[stage.memorize]
mu = 0.1
"#,
        model = model.display(),
        out = out.display(),
        data = shared("r1searcher/training_set/stage_1.jsonl").display(),
    );
    let cfg_path = tmp.path().join("train.toml");
    std::fs::write(&cfg_path, &toml).unwrap();
    let cfg = r1s_train::TrainConfig::read(&cfg_path).unwrap();
    assert_eq!(cfg.stages[0].group.ddof, 1);
    let cancel = Cancel::new();
    let mut t = r1s_train::trainer::Trainer::new(cfg.clone(), false, &retriever, &NoProgress, &cancel).unwrap();
    t.run(&mut |_| {}).unwrap();
    let rows = metrics(&out);
    let step = rows.iter().find(|r| r["kind"] == "step").unwrap();
    for k in ["rc", "zero_search", "internal", "mem_candidates", "mem_paths", "mem_nll", "reward_mean"] {
        assert!(step[k].as_f64().is_some_and(f64::is_finite), "{k} in {step}");
    }
    let rollouts: Vec<serde_json::Value> = std::fs::read_to_string(out.join("rollouts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rollouts.len(), 6);
    for g in 0..2 {
        let members: Vec<&serde_json::Value> = rollouts.iter().filter(|r| r["group"] == g).collect();
        let golds: Vec<String> = serde_json::from_value(members[0]["answer"].clone()).unwrap();
        let sols: Vec<(&str, &str)> = members.iter().map(|r| ("", r["sol"].as_str().unwrap())).collect();
        let want =
            r1s_agent::reward::score_group(r1s_agent::Reward::R1SearcherPlus, &cfg.stages[0].group, &sols, &golds);
        let got: Vec<f64> = members.iter().map(|r| r["reward"].as_f64().unwrap()).collect();
        assert_eq!(got, want);
    }
    let rc = rollouts.iter().map(|r| r["searches"].as_f64().unwrap()).sum::<f64>() / 6.0;
    assert!(close(step["rc"].as_f64().unwrap(), rc, 1e-12));
    // memorize needs the protocol whose searches it rewrites
    std::fs::write(&cfg_path, toml.replace("protocol = \"r1searcher-plus\"", "")).unwrap();
    let err = r1s_train::TrainConfig::read(&cfg_path).unwrap_err().to_string();
    assert!(err.contains("r1searcher-plus"), "{err}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn the_title_task_blanks_titles_and_builds_description_queries() {
    use r1s_train::task::{describe, description_query, title_questions};
    let d = describe("Paris", "Paris is the capital and most populous city of France. It has 2 million people.", 30)
        .unwrap();
    assert_eq!(d, "___ is the capital and most populous city of France");
    assert_eq!(description_query(&d), "is the capital and most populous city of France");
    assert_eq!(description_query("the ___'s  river (___)"), "the 's river ( )");
    let p = |id: &str, title: &str, text: &str| r1s_core::Passage {
        row: 0,
        id: id.into(),
        doc_id: "d".into(),
        title: title.into(),
        text: text.into(),
    };
    let qs = title_questions(
        vec![
            p("Paris_0", "Paris", "Paris is the capital and most populous city of France."),
            p("Paris_1", "Paris", "A second passage is never used for a question at all."),
            p("Short_0", "Short", "Too short."),
        ],
        6,
    );
    assert_eq!(qs.len(), 1);
    assert_eq!(
        qs[0].question,
        "Which Wikipedia article is described as: \"___ is the capital and most populous city of France\"?"
    );
    assert_eq!(qs[0].title, "Paris");
}

#[test]
fn a_lora_run_crosses_a_stage_boundary_and_resumes_exactly() {
    use r1s_core::{Cancel, NoProgress};
    let tmp = tempfile::tempdir().unwrap();
    let retriever = r1s_retrieve::DenseRetriever::open(&small_index(tmp.path()), &Default::default()).unwrap();
    let model = tmp.path().join("tiny");
    std::fs::create_dir_all(&model).unwrap();
    r1s_train::checkpoint::save_model(&tiny_policy(2, 12), &model).unwrap();
    let stage = |name: &str, reward: &str| {
        format!(
            "[[stage]]\nname = \"{name}\"\ndata = \"{}\"\nreward = \"{reward}\"\nsteps = 1\nprompts_per_step = 2\n\
             rollouts_per_prompt = 2\nmax_new_tokens = 10\nmax_retrievals = 1\n",
            shared("r1searcher/training_set/stage_1.jsonl").display()
        )
    };
    let run_a = tmp.path().join("a");
    let toml = format!(
        "[model]\ninit = \"{}\"\n[retriever]\nindex = \"unused\"\n[train]\nout = \"{}\"\ntrain_blocks = 0\nlr = 1e-2\n\
         kl_beta = 0.01\nmicro_batch = 2\nsave_every = 1\nkeep_checkpoints = 0\nprompt = \"base\"\n\
         [train.lora]\nrank = 2\nalpha = 4\ntargets = [\"q_proj\", \"v_proj\", \"down_proj\"]\n{}{}",
        model.display(),
        run_a.display(),
        stage("stage1", "stage1"),
        stage("stage2", "stage2")
    );
    let cfg_path = tmp.path().join("train.toml");
    std::fs::write(&cfg_path, &toml).unwrap();
    let cfg = r1s_train::TrainConfig::read(&cfg_path).unwrap();
    let cancel = Cancel::new();
    let mut t = r1s_train::trainer::Trainer::new(cfg.clone(), false, &retriever, &NoProgress, &cancel).unwrap();
    assert_eq!(r1s_train::model::count_params(&mut t.split), 2 * 2 * ((32 + 32) + (32 + 16) + (48 + 32)));
    t.run(&mut |_| {}).unwrap();
    let ck = |run: &Path, s: usize| r1s_train::checkpoint::dir_for(run, s);
    for f in [
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "reference.safetensors",
        "model.safetensors",
    ] {
        assert!(ck(&run_a, 1).join(f).exists() && ck(&run_a, 2).join(f).exists(), "{f}");
    }
    // stopped at the stage boundary: the resumed run merges the adapters and starts stage 2 alike
    let run_b = tmp.path().join("b");
    copy_dir(&run_a, &run_b);
    std::fs::remove_dir_all(ck(&run_b, 2)).unwrap();
    let mut cfg_b = cfg.clone();
    cfg_b.train.out = run_b.clone();
    let mut t = r1s_train::trainer::Trainer::new(cfg_b.clone(), true, &retriever, &NoProgress, &cancel).unwrap();
    assert_eq!((t.state.stage, t.state.stage_step), (1, 0));
    t.run(&mut |_| {}).unwrap();
    for f in
        ["model.safetensors", "optimizer.safetensors", "reference.safetensors", "adapter/adapter_model.safetensors"]
    {
        assert_eq!(std::fs::read(ck(&run_a, 2).join(f)).unwrap(), std::fs::read(ck(&run_b, 2).join(f)).unwrap(), "{f}");
    }
    // stage 2 starts with fresh adapters (seeded by the stage; the unit test above checks the merge)
    let adapters = |s: usize| std::fs::read(ck(&run_a, s).join("adapter/adapter_model.safetensors")).unwrap();
    assert!(adapters(1) != adapters(2));
    // a different rank does not resume silently
    cfg_b.train.lora.as_mut().unwrap().rank = 3;
    let err = r1s_train::trainer::Trainer::new(cfg_b, true, &retriever, &NoProgress, &cancel).err().unwrap();
    assert!(err.to_string().contains("lora"), "{err}");
}

#[test]
fn cold_start_trajectories_search_with_the_description_and_name_the_title_they_copy() {
    use r1s_train::task::{description_query, sft_lines, title_questions};
    let tmp = tempfile::tempdir().unwrap();
    // R1-Searcher's passages run "Title   text"; as Search-R1 records ("\"Title\"\ntext") they have titles.
    let titled: String = std::fs::read_to_string(shared("r1searcher/passages.jsonl"))
        .unwrap()
        .lines()
        .take(200)
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let (title, text) = v["contents"].as_str()?.split_once("   ")?;
            Some(format!(
                "{}\n",
                serde_json::json!({"id": v["id"], "contents": format!("\"{title}\"\n{}", text.trim())})
            ))
        })
        .collect();
    let index = small_index_of(tmp.path(), titled);
    let store = r1s_corpus::Docstore::open(&tmp.path().join("corpus")).unwrap();
    let qs = title_questions(store.iter().map(|p| p.unwrap().to_passage()), 6);
    assert!(qs.len() >= 5, "{} questions", qs.len());
    let retriever = r1s_retrieve::DenseRetriever::open(&index, &Default::default()).unwrap();
    let lines = sft_lines(&qs, &retriever, 2, 1.0, 7, r1s_agent::Protocol::R1Searcher).unwrap();
    assert!(lines.len() * 2 >= qs.len(), "{} of {} questions kept", lines.len(), qs.len());
    // the spans given are the ones R1-Searcher's tags imply
    for l in &lines {
        let spans: Vec<r1s_agent::Span> = serde_json::from_value(l["spans"].clone()).unwrap();
        assert_eq!(spans, r1s_train::episode::spans_of_text(l["sol"].as_str().unwrap()));
    }
    for l in &lines {
        let (title, sol) = (l["answer"].as_str().unwrap(), l["sol"].as_str().unwrap());
        let q = qs.iter().find(|q| q.question == l["question"].as_str().unwrap()).unwrap();
        let query = description_query(&q.description);
        assert!(sol.starts_with(&format!("<|begin_of_query|> {query}<|end_of_query|>")), "{sol}");
        assert!(sol.contains(&format!("<|begin_of_documents|>\n(1)\"{title}\"\n")), "{sol}");
        assert!(
            sol.ends_with(&format!("The first document is \"{title}\". </think>\n\n<answer> {title} </answer>")),
            "{sol}"
        );
    }
    let direct = sft_lines(&qs, &retriever, 2, 0.0, 7, r1s_agent::Protocol::R1Searcher).unwrap();
    assert_eq!(direct.len(), qs.len());
    assert!(direct.iter().all(|l| l["search"] == false && !l["sol"].as_str().unwrap().contains("<|begin_of_query|>")));

    // Search-R1: a valid sequence (its own check) whose retrieved part is exactly the information block
    let sr1 = sft_lines(&qs, &retriever, 2, 1.0, 7, r1s_agent::Protocol::SearchR1).unwrap();
    assert_eq!(sr1.len(), lines.len());
    let prompt = r1s_train::prompt::PromptKind::Chat(r1s_policy::chat::Template::ChatMl { default_system: None });
    for l in &sr1 {
        let (title, sol) = (l["answer"].as_str().unwrap(), l["sol"].as_str().unwrap());
        let q = qs.iter().find(|q| q.question == l["question"].as_str().unwrap()).unwrap();
        let query = description_query(&q.description);
        assert!(sol.starts_with(&format!("<think> I need to find the article. </think>\n<search> {query} </search>")));
        let spans: Vec<r1s_agent::Span> = serde_json::from_value(l["spans"].clone()).unwrap();
        let retrieved = &sol[spans[1].start..spans[1].end];
        assert!(retrieved.starts_with(&format!("\n\n<information>Doc 1(Title: \"{title}\") ")), "{retrieved}");
        assert!(retrieved.ends_with("</information>\n\n"));
        let full = format!("{}{sol}", prompt.render_with(r1s_agent::Protocol::SearchR1, &q.question));
        assert_eq!(r1s_agent::searchr1::validate_sequence(&full), Ok(()), "{full}");
        let golds = vec![title.to_owned()];
        assert_eq!(r1s_agent::reward::reward(r1s_agent::Reward::SearchR1Format, &full, &golds), 1.0);
    }
    // SFT reads them under their protocol only
    let f = tmp.path().join("sr1.jsonl");
    std::fs::write(&f, sr1.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let ex = r1s_train::sft::read_examples(&f, &prompt, r1s_agent::Protocol::SearchR1).unwrap();
    assert!(ex[0].prompt.contains("Question: Which Wikipedia article is described as"), "{}", ex[0].prompt);
    let err = r1s_train::sft::read_examples(&f, &prompt, r1s_agent::Protocol::R1Searcher).unwrap_err();
    assert!(err.to_string().contains("--protocol search-r1"), "{err}");

    // R1-Searcher++: searches through <external>, direct answers recall the sentence in <internal>;
    // every line passes the protocol's format check, answers correctly, and has the spans its tags imply
    use r1s_agent::{Protocol, plus};
    let mixed = sft_lines(&qs, &retriever, 2, 0.5, 7, Protocol::R1SearcherPlus).unwrap();
    let (searching, recalling): (Vec<_>, Vec<_>) = mixed.iter().partition(|l| l["search"] == true);
    assert!(!searching.is_empty() && !recalling.is_empty(), "{} / {}", searching.len(), recalling.len());
    for l in &mixed {
        let (title, sol) = (l["answer"].as_str().unwrap(), l["sol"].as_str().unwrap());
        assert_eq!(plus::format_problem(sol), None, "{sol}");
        assert_eq!(plus::reward(sol, &[title.to_owned()]), 1.0, "{sol}");
        let spans: Vec<r1s_agent::Span> = serde_json::from_value(l["spans"].clone()).unwrap();
        assert_eq!(spans, Protocol::R1SearcherPlus.spans_of_text(sol));
        if l["search"] == true {
            assert!(
                sol.starts_with("<external> ") && sol.contains(&format!("</external>\n\n<document>\n(1)\"{title}\"\n"))
            );
            assert_eq!((plus::searches(sol), plus::internal_steps(sol)), (1, 0));
        } else {
            assert!(sol.starts_with(" <internal> ") && sol.contains(title), "{sol}");
            assert_eq!((plus::searches(sol), plus::internal_steps(sol)), (0, 1));
        }
    }
}

/// The memorisation term `μ · NLL(T)`: its gradient against finite differences on a tiny model, and one
/// step with it raises the paths' log-likelihood where the same step without it does not (the
/// episodes' advantages are all zero, so the RL part moves nothing).
#[test]
fn the_memorisation_term_has_the_gradient_of_its_nll_and_teaches_the_paths() {
    use r1s_train::rl::{MemorySet, optimize_with_memory};
    let tok = tokenizer();
    let path = " <internal> Barbara Strozzi was an Italian singer. </internal> </think>\n\n<answer> Italian </answer>";
    let spans = [r1s_agent::Span { source: r1s_agent::Source::Policy, start: 0, end: path.len() }];
    let seq = tokenize(&tok, "Question: who? Answer:", path, &spans, tok.eos.first().copied(), 512).unwrap();
    let split = Split::new(tiny_policy(2, 3), 1, false, None, 1).unwrap();
    let seqs = vec![seq.clone()];
    let m = Micro::new(&split, &seqs, vec![0]).unwrap();
    let tokens = m.rows.len() as f32;
    let mu = 0.1f32;
    let loss_at = |top: &Top| -> Tensor<1> {
        let (lp, _) = split.score(top, m.boundary.clone(), &m.step, &m.rows, &m.targets, false).unwrap();
        loss::memory_loss(lp, tokens, mu)
    };
    // its value: μ times the mean NLL per token
    let (lp, _) = m.score_plain(&split, &split.plain_top(), false).unwrap();
    let nll = -lp.iter().map(|&x| f64::from(x)).sum::<f64>() / lp.len() as f64;
    let v = f64::from(loss_at(&split.top).inner().into_scalar::<f32>());
    assert!(close(v, f64::from(mu) * nll, 1e-5 * nll.max(1.0)), "{v} vs μ·NLL {}", f64::from(mu) * nll);
    let grads = loss_at(&split.top).backward();
    let mut top = split.top.clone();
    let names: Vec<String> = top.params_mut(split.first).into_iter().map(|(n, _)| n).collect();
    let mut checked = 0;
    for name in names.iter().filter(|n| n.ends_with("model.norm.weight") || n.ends_with("mlp.down_proj.weight")) {
        let g = {
            let (_, p) = top.params_mut(split.first).into_iter().find(|(n, _)| n == name).unwrap();
            to_vec(p.grad(&grads).expect("a trainable parameter has a gradient")).unwrap()
        };
        let mut idx: Vec<usize> = (0..g.len()).collect();
        idx.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
        for &i in &idx[..3] {
            let eval = |delta: f32| -> f64 {
                let mut t = top.clone();
                let (_, mut p) = t.params_mut(split.first).into_iter().find(|(n, _)| n == name).unwrap();
                let mut v = to_vec(p.flat()).unwrap();
                v[i] += delta;
                let len = v.len();
                p.set(Tensor::from_data(TensorData::new(v, [len]), &test_device()), &split.ad);
                f64::from(loss_at(&t).inner().into_scalar::<f32>())
            };
            let h = 1e-2;
            let fd = (eval(h) - eval(-h)) / (2.0 * f64::from(h));
            let an = f64::from(g[i]);
            assert!((fd - an).abs() <= 0.03 * an.abs() + 2e-5, "{name}[{i}]: finite difference {fd} vs backward {an}");
            checked += 1;
        }
    }
    assert_eq!(checked, 6);

    // one step: equal rewards (zero advantages) leave the path alone without the term, raise it with it
    let path_nll = |split: &Split| -> f64 {
        let m = Micro::new(split, &seqs, vec![0]).unwrap();
        let (lp, _) = m.score_plain(split, &split.plain_top(), false).unwrap();
        -lp.iter().map(|&x| f64::from(x)).sum::<f64>() / lp.len() as f64
    };
    let eps = episodes(&tok, &[0.5, 0.5], &[0, 0]);
    let mut without = Split::new(tiny_policy(2, 5), 0, false, None, 1).unwrap();
    let before = path_nll(&without);
    let stats =
        optimize_with_memory(&mut without, &mut adam(3e-3), &eps, &MemorySet::default(), &settings(0.0)).unwrap();
    assert_eq!((stats.mem_paths, stats.mem_nll), (0, 0.0));
    assert!((path_nll(&without) - before).abs() < 1e-4, "{} → {}", before, path_nll(&without));
    let mut with = Split::new(tiny_policy(2, 5), 0, false, None, 1).unwrap();
    let memory = MemorySet { seqs: seqs.clone(), mu: 1.0 };
    let stats = optimize_with_memory(&mut with, &mut adam(3e-3), &eps, &memory, &settings(0.0)).unwrap();
    assert_eq!((stats.mem_paths, stats.mem_tokens), (1, seq.actions.len()));
    assert!(close(stats.mem_nll, before, 1e-3), "L_M {} is the paths' NLL per token {before}", stats.mem_nll);
    assert!(path_nll(&with) < before - 1e-2, "{before} → {}", path_nll(&with));
}

#[test]
fn the_shipped_configurations_parse() {
    let root = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
        .join("../..");
    for (f, stages) in [
        ("tools/title-task.toml", 2),
        ("tools/r1searcher.toml", 2),
        ("tools/title-task-search-r1.toml", 2),
        ("tools/r1searcher-plus.toml", 1),
        ("tools/title-task-plus.toml", 1),
    ] {
        let c = r1s_train::TrainConfig::read(&root.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(c.stages.len(), stages, "{f}");
    }
    // R1-Searcher++'s recipe: 16 rollouts, KL 1e-4, lr 2e-6, at most 8 searches, μ 0.1, η 2, T 1 / top-p 0.95
    let plus = r1s_train::TrainConfig::read(&root.join("tools/r1searcher-plus.toml")).unwrap();
    let s = &plus.stages[0];
    assert_eq!((s.rollouts_per_prompt, s.max_retrievals, s.temperature, s.top_p), (16, 8, 1.0, 0.95));
    assert_eq!((plus.train.kl_beta, plus.train.lr), (1e-4, 2e-6));
    assert_eq!(
        (s.reward, s.protocol(&plus.train)),
        (r1s_agent::Reward::R1SearcherPlus, r1s_agent::Protocol::R1SearcherPlus)
    );
    assert_eq!(s.group, r1s_agent::plus::GroupReward::default());
    assert_eq!(s.memorize.as_ref().map(|m| (m.mu, m.rewriter)), Some((0.1, r1s_train::memorize::Rewriter::Rule)));
    let paper = r1s_train::TrainConfig::read(&root.join("tools/r1searcher.toml")).unwrap();
    let s = &paper.stages[0];
    assert_eq!(
        (s.rollouts_per_prompt, s.prompts_per_step, s.train_batch, s.topk, s.max_retrievals),
        (16, 64, 256, 3, 8)
    );
    assert_eq!((s.temperature, s.top_p, s.max_new_tokens), (1.0, 0.95, 512));
    let t = &paper.train;
    assert_eq!((t.lr, t.betas, t.clip_eps, t.kl_beta, t.epochs), (2e-6, [0.9, 0.95], 0.2, 1e-4, 1));
    assert_eq!(s.protocol(t), r1s_agent::Protocol::R1Searcher);
    let sr1 = r1s_train::TrainConfig::read(&root.join("tools/title-task-search-r1.toml")).unwrap();
    assert!(sr1.stages.iter().all(|s| s.protocol(&sr1.train) == r1s_agent::Protocol::SearchR1));
    assert_eq!(sr1.stages[0].reward, r1s_agent::Reward::SearchR1Format);
}

/// Largest absolute difference between two models' weights (same names).
fn max_weight_diff(a: &Policy, b: &Policy) -> f32 {
    let (wa, wb) = (hf_tensors(&a.model).unwrap(), hf_tensors(&b.model).unwrap());
    assert_eq!(wa.keys().collect::<Vec<_>>(), wb.keys().collect::<Vec<_>>());
    wa.iter().flat_map(|(k, (va, _))| va.iter().zip(&wb[k].0).map(|(x, y)| (x - y).abs())).fold(0.0, f32::max)
}

/// A checkpoint's PEFT adapter merged into the base model gives the checkpoint's (merged) weights;
/// the adapters of two stages (merged into the weights at the boundary) stack into one adapter of
/// rank 2r over the first base; broken or foreign adapters are refused with the file named.
#[test]
fn peft_adapters_merge_into_the_base_and_stack_across_stages() {
    use r1s_policy::adapter::{self, StoreDtype};
    let tok = tokenizer();
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(0.05);
    let l = lora(4);
    let mut split = Split::new(tiny_policy(3, 9), 2, true, Some(&l), 5).unwrap();
    let mut opt = adam(5e-2);
    optimize(&mut split, &mut opt, &episodes(&tok, &[1.0, 0.0, 0.5, 0.0], &[0, 0, 1, 1]), &s).unwrap();
    let state = |step| r1s_train::checkpoint::TrainerState {
        global_step: step,
        stage: 0,
        stage_step: step,
        seed: 1,
        train_blocks: 2,
        lora: Some(l.clone()),
        config: serde_json::Value::Null,
    };
    let ck1 = tmp.path().join("ck1");
    r1s_train::checkpoint::save(&ck1, &split, &opt, &state(1)).unwrap();
    let mut merged = tiny_policy(3, 9);
    assert!(max_weight_diff(&merged, &split.policy) > 1e-3, "the step changed the weights");
    let m = merged.apply_adapter(&ck1.join("adapter")).unwrap();
    assert_eq!((m.rank, m.scale, m.modules, m.layers.clone()), (4, 2.0, 14, vec![1, 2]));
    let d = max_weight_diff(&merged, &split.policy);
    assert!(d < 1e-6, "base + adapter differs from the checkpoint's weights by {d}");

    // stage 2: the adapters merge into the weights and start again; its adapter is over base + Δ1
    split.rebase(6, &mut opt).unwrap();
    optimize(&mut split, &mut opt, &episodes(&tok, &[0.0, 1.0, 1.0, 0.0], &[0, 0, 1, 1]), &s).unwrap();
    let ck2 = tmp.path().join("ck2");
    r1s_train::checkpoint::save(&ck2, &split, &opt, &state(2)).unwrap();
    let adapters = [ck1.join("adapter"), ck2.join("adapter")];
    let stacked = tmp.path().join("stacked");
    let m = adapter::stack(&adapters, &stacked, StoreDtype::F32).unwrap();
    assert_eq!((m.rank, m.modules), (8, 14));
    assert!(!stacked.with_extension("part").exists());
    let mut one = tiny_policy(3, 9);
    one.apply_adapter(&stacked).unwrap();
    let d = max_weight_diff(&one, &split.policy);
    assert!(d < 1e-6, "base + stacked adapter differs from the stage-2 weights by {d}");
    let mut both = tiny_policy(3, 9);
    for a in &adapters {
        both.apply_adapter(a).unwrap();
    }
    assert!(max_weight_diff(&both, &split.policy) < 1e-6);
    let half = tmp.path().join("stacked-f16");
    adapter::stack(&adapters, &half, StoreDtype::F16).unwrap();
    let size = |d: &Path| std::fs::metadata(d.join("adapter_model.safetensors")).unwrap().len();
    assert!(size(&half) * 2 < size(&stacked) + 4096, "{} vs {}", size(&half), size(&stacked));
    let mut h = tiny_policy(3, 9);
    h.apply_adapter(&half).unwrap();
    let d = max_weight_diff(&h, &split.policy);
    assert!(d > 0.0 && d < 1e-3, "f16 storage moved a weight by {d}");

    // refusals, each naming the file
    let err = tiny_policy(3, 9).apply_adapter(&ck1).unwrap_err().to_string();
    assert!(err.contains("checkpoint") && err.contains("adapter"), "{err}");
    let err = Policy::load(&ck1.join("adapter"), &Device::flex()).err().unwrap().to_string();
    assert!(err.contains("a LoRA adapter, not a model"), "{err}");
    let err = Policy::load(tmp.path(), &Device::flex()).err().unwrap().to_string();
    assert!(err.contains("not a model directory"), "{err}");
    let wider: LlamaConfig = serde_json::from_value(serde_json::json!({
        "model_type": "llama", "vocab_size": 49152, "hidden_size": 64, "intermediate_size": 48,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 2048,
        "tie_word_embeddings": true,
    }))
    .unwrap();
    let model = build_llama(&wider, &RandomWeights { cfg: wider.clone(), seed: 1 }, &Device::flex()).unwrap();
    let err = Policy::new(model, wider, tok.clone(), &Device::flex()).apply_adapter(&stacked).unwrap_err();
    assert!(matches!(err, r1s_policy::PolicyError::Shape { .. }), "{err}");
    let broken = |name: &str, edit: &dyn Fn(&Path)| -> String {
        let d = tmp.path().join(name);
        copy_dir(&ck1.join("adapter"), &d);
        edit(&d);
        let err = tiny_policy(3, 9).apply_adapter(&d).unwrap_err().to_string();
        assert!(err.contains(&d.display().to_string()), "{err}");
        err
    };
    let set = |key: &'static str, v: serde_json::Value| {
        move |d: &Path| {
            let p = d.join("adapter_config.json");
            let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            c[key] = v.clone();
            std::fs::write(&p, serde_json::to_vec(&c).unwrap()).unwrap();
        }
    };
    // fan_in_fan_out on Linear targets: PEFT warns, reads it as false and merges B·A; so does r1s
    let fifo = tmp.path().join("fan-in-fan-out");
    copy_dir(&ck1.join("adapter"), &fifo);
    set("fan_in_fan_out", true.into())(&fifo);
    let mut f = tiny_policy(3, 9);
    f.apply_adapter(&fifo).unwrap();
    let mut plain = tiny_policy(3, 9);
    plain.apply_adapter(&ck1.join("adapter")).unwrap();
    assert_eq!(max_weight_diff(&f, &plain), 0.0);
    assert!(broken("dora", &set("use_dora", true.into())).contains("DoRA"));
    assert!(broken("rank", &set("r", 3.into())).contains("r = 3"));
    assert!(broken("pattern", &set("rank_pattern", serde_json::json!({"q_proj": 2}))).contains("rank_pattern"));
    let only_a = |d: &Path| {
        let p = d.join("adapter_model.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> =
            st.tensors().into_iter().filter(|(n, _)| !n.ends_with("q_proj.lora_B.weight")).collect();
        let out = safetensors::serialize(kept, None).unwrap();
        std::fs::write(&p, out).unwrap();
    };
    assert!(broken("half-pair", &only_a).contains("lora_A and lora_B must both be present"));
    let cut = |d: &Path| {
        let p = d.join("adapter_model.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    };
    broken("cut", &cut);
    let err =
        adapter::stack(&[ck1.join("adapter"), tmp.path().join("nowhere")], &tmp.path().join("x"), StoreDtype::F32)
            .unwrap_err();
    assert!(err.to_string().contains("nowhere"), "{err}");
    assert!(!tmp.path().join("x").exists());
    // a directory that is not an adapter is never replaced
    let err = adapter::stack(&adapters, &adapters[0], StoreDtype::F32).unwrap_err();
    assert!(err.to_string().contains("is one of the adapters stacked"), "{err}");
    assert!(adapters[0].join("adapter_model.safetensors").exists());
    let err = adapter::stack(&adapters, &ck1, StoreDtype::F32).unwrap_err();
    assert!(err.to_string().contains("not an adapter directory"), "{err}");
    assert!(ck1.join("model.safetensors").exists());
    adapter::stack(&adapters, &stacked, StoreDtype::F16).unwrap();
}

/// A rewriting model that answers each context with a fixed text (what a prompted model would write).
struct FixedRewriter(Vec<&'static str>);

#[derive(Debug, thiserror::Error)]
#[error("unused")]
struct Never;

impl r1s_core::Policy for FixedRewriter {
    type Error = Never;
    fn complete(
        &self,
        contexts: &[String],
        s: &r1s_core::GenerateSettings,
    ) -> Result<Vec<r1s_core::Completion>, Never> {
        assert_eq!((s.temperature, s.max_new_tokens), (0.0, 64), "greedy, with the configured budget");
        assert!(contexts.iter().all(|c| c.contains("Documents:\n<document>\n(1)\"Paris\"\n")), "{contexts:?}");
        Ok(self
            .0
            .iter()
            .map(|t| r1s_core::Completion {
                text: (*t).to_owned(),
                finish: r1s_core::Finish::Eos,
                tokens: vec![],
                logprobs: vec![],
            })
            .collect())
    }
}

/// The memorisation set's rewriters: the rule rewriter keeps a correct rollout that searched, rewritten;
/// the model rewriter's outputs are kept only when well-formed, search-free and correct; rollouts that
/// are wrong, malformed or did not search are never offered.
#[test]
fn memorisation_keeps_only_well_formed_correct_internal_paths() {
    use r1s_train::memorize::{
        Candidate, collect_paths, model_prompt, retrieved_documents, rewrite_with_model, rule_paths,
    };
    let searched = "Let me check. <external> capital of France</external>\n\n<document>\n(1)\"Paris\"\nParis is the capital of France.\n</document>\n\n It is Paris. </think>\n\n<answer> Paris </answer>";
    let wrong = searched.replace("<answer> Paris", "<answer> Lyon");
    let memo = " <internal> Paris is the capital of France. </internal> </think>\n\n<answer> Paris </answer>";
    let golds = vec!["Paris".to_owned()];
    fn cand<'a>(sol: &'a str, golds: &'a [String]) -> Candidate<'a> {
        Candidate { prompt: "P", question: "Capital of France?", sol, golds }
    }
    assert!(cand(searched, &golds).eligible());
    assert!(
        !cand(&wrong, &golds).eligible() && !cand(memo, &golds).eligible(),
        "wrong answers and no search are not rewritten"
    );
    let paths = rule_paths(&[cand(searched, &golds), cand(searched, &golds), cand(&wrong, &golds)], 0);
    assert_eq!(paths.len(), 1, "repeats are dropped");
    assert_eq!(
        paths[0].sol,
        "Let me check. <internal> Paris is the capital of France. </internal>\n\n It is Paris. </think>\n\n<answer> Paris </answer>"
    );
    assert_eq!(retrieved_documents(searched), vec!["(1)\"Paris\"\nParis is the capital of France.\n"]);
    let ask = model_prompt("Capital of France?", &retrieved_documents(searched), "Paris");
    assert!(ask.contains("Question: Capital of France?") && ask.ends_with("Answer: Paris"), "{ask}");
    let candidates = [cand(searched, &golds), cand(searched, &golds), cand(searched, &golds)];
    let model = FixedRewriter(vec![
        memo,
        " <external> q </external> </think>\n\n<answer> Paris </answer>",
        " <internal> Lyon is big. </internal> </think>\n\n<answer> Lyon </answer>",
    ]);
    let contexts = vec![format!("{ask}<think>"); 3];
    let out = rewrite_with_model(&model, &contexts, &candidates, 64).unwrap();
    assert_eq!(out, vec![Some(memo.to_owned()), None, None]);
    let kept = collect_paths(&candidates, out, 0);
    assert_eq!(kept.len(), 1);
    assert_eq!(collect_paths(&candidates, vec![Some("a".into()), Some("b".into())], 1).len(), 1, "max_paths");
}

/// A policy that answers a question about France from memory and any other badly.
struct MemoryOnly;

impl r1s_core::Policy for MemoryOnly {
    type Error = Never;
    fn complete(
        &self,
        contexts: &[String],
        _: &r1s_core::GenerateSettings,
    ) -> Result<Vec<r1s_core::Completion>, Never> {
        Ok(contexts
            .iter()
            .map(|c| r1s_core::Completion {
                text: if c.contains("France") {
                    " <internal> Paris is the capital of France. </internal> </think>\n\n<answer> Paris </answer>"
                        .into()
                } else {
                    " no tags at all".into()
                },
                finish: r1s_core::Finish::Eos,
                tokens: vec![],
                logprobs: vec![],
            })
            .collect())
    }
}

/// Rejection sampling keeps the well-formed, correct rollouts (distinct, at most `keep_per_question`),
/// as SFT lines that `policy sft` reads under their protocol.
#[test]
fn rejection_sampling_keeps_well_formed_correct_rollouts() {
    use r1s_train::reject::{RejectOptions, rejection_sample};
    let tmp = tempfile::tempdir().unwrap();
    let (retriever, _) = tiny_run(tmp.path());
    let qs = vec![
        r1s_agent::Question { id: "0".into(), question: "Capital of France?".into(), answers: vec!["Paris".into()] },
        r1s_agent::Question { id: "1".into(), question: "Capital of Peru?".into(), answers: vec!["Lima".into()] },
    ];
    let prompt = r1s_train::prompt::PromptKind::Chat(r1s_policy::chat::Template::ChatMl { default_system: None });
    let o = RejectOptions {
        protocol: r1s_agent::Protocol::R1SearcherPlus,
        samples: 3,
        keep_per_question: 2,
        loop_cfg: r1s_agent::LoopConfig::training(1),
    };
    let (lines, stats) = rejection_sample(&MemoryOnly, &retriever, &qs, &prompt, &o).unwrap();
    assert_eq!((stats.rollouts, stats.kept, stats.questions_kept, stats.kept_recalling), (6, 1, 1, 1));
    assert_eq!(lines.len(), 1, "three equal rollouts are one trajectory");
    let l = &lines[0];
    assert_eq!(
        (l["question"].as_str(), l["searches"].as_u64(), l["internal"].as_u64()),
        (Some("Capital of France?"), Some(0), Some(1))
    );
    let f = tmp.path().join("cold.jsonl");
    std::fs::write(&f, format!("{l}\n")).unwrap();
    let ex = r1s_train::sft::read_examples(&f, &prompt, r1s_agent::Protocol::R1SearcherPlus).unwrap();
    assert!(ex[0].prompt.contains(r1s_agent::plus::SYSTEM_PROMPT) && ex[0].prompt.ends_with("<think>"));
    assert_eq!(ex[0].spans.len(), 1);
}

#[test]
fn sampled_logprobs_align_to_the_actions_and_the_mismatch_by_hand() {
    use r1s_train::rl::{Mismatch, sampled_logprobs};
    // prompt 10 11, policy 20 21, a document 30, policy 22, EOS 2 (appended, not sampled)
    let seq = Sequence { tokens: vec![10, 11, 20, 21, 30, 22, 2], actions: vec![2, 3, 5, 6] };
    assert_eq!(sampled_logprobs(&seq, &[20, 21, 22], &[-0.1, -0.2, -0.3]), Some(vec![-0.1, -0.2, -0.3]));
    // a retokenized span ends the alignment; nothing aligned or no log-probs: None
    assert_eq!(sampled_logprobs(&seq, &[20, 25, 22], &[-0.1, -0.2, -0.3]), Some(vec![-0.1]));
    assert_eq!(sampled_logprobs(&seq, &[25], &[-0.1]), None);
    assert_eq!(sampled_logprobs(&seq, &[20, 21], &[]), None);
    // ratios π_trainer / π_sampler: e^0.1, e^-0.2, 1 over the aligned prefixes
    let old = [vec![-1.0f32, -2.0, -3.0], vec![-0.5, -9.0]];
    let (s0, s1) = ([-1.1f32, -1.8], [-0.5f32]);
    let m = Mismatch::measure(&old, &[Some(&s0[..]), Some(&s1[..])]).unwrap();
    assert_eq!((m.tokens, m.episodes), (3, 2));
    let r = [0.1f64, -0.2, 0.0].map(f64::exp);
    assert!(close(m.ratio_mean, r.iter().sum::<f64>() / 3.0, 1e-6), "{m:?}");
    assert!(close(m.ratio_min, r[1], 1e-6) && close(m.ratio_max, r[0], 1e-6), "{m:?}");
    assert!(close(m.kl, (-0.1 + 0.2 + 0.0) / 3.0, 1e-6), "{m:?}");
    assert_eq!(Mismatch::measure(&old, &[None, None]), None);
}

/// `model.weights = "q8_0"`: rollouts decode with packed weights that follow every update (the
/// packed copy after training equals a fresh pack of the trained checkpoint), and each step logs
/// the rollouts' log-probs against the trainer's; f32 rollouts log ratios of 1 (to rounding).
/// (Weight decay moves the weights whatever the tiny model's rewards.)
#[test]
fn packed_rollouts_follow_each_update_and_log_the_mismatch() {
    use r1s_core::{Cancel, NoProgress};
    use r1s_policy::WeightFormat;
    let tmp = tempfile::tempdir().unwrap();
    let (retriever, model) = tiny_run(tmp.path());
    let data = shared("r1searcher/training_set/stage_1.jsonl");
    let mut ratios = Vec::new();
    for weights in ["f32", "q8_0"] {
        let out = tmp.path().join(weights);
        let toml = format!(
            "[model]\ninit = \"{}\"\nweights = \"{weights}\"\n[retriever]\nindex = \"unused\"\n[train]\nout = \"{}\"\n\
             train_blocks = 1\nlr = 1e-2\nweight_decay = 0.5\nkl_beta = 0.01\nmicro_batch = 2\nsave_every = 1\nprompt = \"base\"\n\
             [[stage]]\nname = \"stage1\"\ndata = \"{}\"\nreward = \"stage1\"\nsteps = 2\nprompts_per_step = 2\n\
             rollouts_per_prompt = 2\nmax_new_tokens = 12\nmax_retrievals = 1\n",
            model.display(),
            out.display(),
            data.display()
        );
        let cfg_path = tmp.path().join(format!("{weights}.toml"));
        std::fs::write(&cfg_path, &toml).unwrap();
        let cfg = r1s_train::TrainConfig::read(&cfg_path).unwrap();
        let cancel = Cancel::new();
        let mut t = r1s_train::trainer::Trainer::new(cfg, false, &retriever, &NoProgress, &cancel).unwrap();
        t.run(&mut |_| {}).unwrap();
        let fmt: WeightFormat = weights.parse().unwrap();
        assert_eq!(t.split.policy.weights(), fmt);
        for r in metrics(&out).iter().filter(|r| r["kind"] == "step") {
            assert!(r["rollout_aligned_tokens"].as_u64().unwrap() > 0, "{r}");
            ratios.push((weights, r["rollout_ratio_min"].as_f64().unwrap(), r["rollout_ratio_max"].as_f64().unwrap()));
        }
        // the packed copy decodes as a fresh pack of the trained weights
        let mut fresh = Policy::load(&r1s_train::checkpoint::dir_for(&out, 2), &Device::flex()).unwrap();
        fresh.set_weights(fmt).unwrap();
        let ids = t.split.policy.tokenizer.encode("Question: who wrote Hamlet? Answer:").unwrap();
        let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let trained = t.split.policy.decode_logits(&ids).unwrap();
        let off = max_diff(&trained, &fresh.decode_logits(&ids).unwrap());
        assert!(off == 0.0, "{weights}: the rollout copy is {off} off a fresh pack of the trained weights");
        // (and training changed them)
        let mut init = Policy::load(&model, &Device::flex()).unwrap();
        init.set_weights(fmt).unwrap();
        let moved = max_diff(&init.decode_logits(&ids).unwrap(), &trained);
        assert!(moved > 1e-3, "{weights}: the logits moved by {moved}");
    }
    for &(w, lo, hi) in &ratios {
        let tol = if w == "f32" { 1e-3 } else { 0.5 };
        assert!(lo > 1.0 - tol && hi < 1.0 + tol, "{w}: ratios [{lo}, {hi}] ({ratios:?})");
    }
    // the two runs drawn over each other (`policy plot --overlay`), the ratio panel included
    let runs: Vec<(String, Vec<serde_json::Value>)> =
        ["f32", "q8_0"].iter().map(|w| (w.to_string(), metrics(&tmp.path().join(w)))).collect();
    let png = tmp.path().join("overlay.png");
    let panels = r1s_train::plot::plot_runs(&runs, &png, "f32 vs q8_0 rollouts").unwrap();
    assert!(panels >= 6, "{panels} panels");
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    // packed weights on a device they do not run on are refused with the configuration
    let toml = std::fs::read_to_string(tmp.path().join("q8_0.toml")).unwrap();
    let p = tmp.path().join("bad.toml");
    std::fs::write(&p, toml.replace("weights = ", "device = \"tch-cpu\"\nweights = ")).unwrap();
    let err = r1s_train::TrainConfig::read(&p).unwrap_err().to_string();
    assert!(err.contains("bad.toml") && err.contains("model.device"), "{err}");
}
