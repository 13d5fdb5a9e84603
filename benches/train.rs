//! Criterion benches of the RL trainer: the advantage arithmetic for a paper-sized step (64 prompts ×
//! 16 rollouts of 300 policy tokens), and one optimisation (experience: frozen prefix, old
//! log-probs; then PPO-clip forward + backward + AdamW) of SmolLM2-135M on 8 episodes of ~300 tokens
//! with the last 8 blocks trained, and with every block trained. `cargo bench --bench train`;
//! tokens/s = elements/s in criterion's output.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use r1s_policy::Policy;
use r1s_train::episode::{spans_of_text, tokenize};
use r1s_train::loss::{self, Advantage, KlEstimator, KlPlacement};
use r1s_train::model::Split;
use r1s_train::optim::{AdamW, AdamWConfig};
use r1s_train::rl::{Episode, RlSettings, optimize};

fn advantages(c: &mut Criterion) {
    let (n, t) = (64 * 16, 300);
    let rewards: Vec<f64> = (0..n).map(|i| ((i * 7919) % 13) as f64 / 13.0).collect();
    let groups: Vec<usize> = (0..n).map(|i| i / 16).collect();
    let kl: Vec<f32> = (0..t).map(|i| (i % 5) as f32 * 1e-3).collect();
    let mut g = c.benchmark_group("train");
    g.throughput(Throughput::Elements((n * t) as u64));
    g.bench_function("advantages_1024x300", |b| {
        b.iter(|| {
            let base = loss::baseline(Advantage::ReinforceBaseline, &rewards, &groups);
            let mut rows: Vec<Vec<f32>> = base.iter().map(|&r| loss::returns(r, &kl, t)).collect();
            loss::whiten(&mut rows);
            rows.len()
        })
    });
    g.finish();
}

fn step(c: &mut Criterion) {
    let device = burn::tensor::Device::flex();
    let base = Policy::load(std::path::Path::new("smollm2"), &device).expect("SmolLM2 (run tools/setup)");
    let prompt = r1s_agent::protocol::base_prompt("Which river flows through Cairo?");
    let sol = " I need to check. <|begin_of_query|> river Cairo<|end_of_query|>\n\n<|begin_of_documents|>\n(1)\"Nile\"\nThe Nile is a major north-flowing river in northeastern Africa. It flows into the Mediterranean Sea.\n<|end_of_documents|>\n\n The Nile flows through Cairo, the capital of Egypt, on its way to the Mediterranean. </think>\n\n<answer> Nile </answer>";
    let eos = base.tokenizer.eos.first().copied();
    let seq = tokenize(&base.tokenizer, &prompt, sol, &spans_of_text(sol), eos, 2048).expect("tokens");
    let episodes: Vec<Episode> =
        (0..8).map(|i| Episode { group: i / 4, reward: (i % 2) as f64, seq: seq.clone(), sampled: None }).collect();
    let tokens: usize = episodes.iter().map(|e| e.seq.tokens.len()).sum();
    let s = RlSettings {
        advantage: Advantage::ReinforceBaseline,
        clip_eps: 0.2,
        kl_beta: 0.0,
        kl_estimator: KlEstimator::K1,
        kl_placement: KlPlacement::Reward,
        micro_batch: 4,
        train_batch: 0,
        epochs: 1,
    };
    let adam = AdamWConfig { lr: 1e-7, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0, max_grad_norm: 1.0 };
    let mut g = c.benchmark_group("train");
    g.sample_size(10);
    g.throughput(Throughput::Elements(tokens as u64));
    let lora = r1s_train::config::LoraConfig::default();
    for (blocks, lora) in [(8usize, None), (0, None), (8, Some(&lora)), (0, Some(&lora))] {
        let mut split = Split::new(
            Policy::new(base.model.clone(), base.cfg.clone(), base.tokenizer.clone(), &device),
            blocks,
            false,
            lora,
            1,
        )
        .expect("split");
        let mut opt = AdamW::new(adam);
        let name = if blocks == 0 { "all".to_owned() } else { blocks.to_string() };
        let name = if lora.is_some() { format!("{name}-lora8") } else { name };
        g.bench_with_input(BenchmarkId::new("optimize_8x_smollm2_blocks", name), &episodes, |b, eps| {
            b.iter(|| optimize(&mut split, &mut opt, eps, &s).expect("step").loss)
        });
    }
    g.finish();
}

criterion_group!(benches, advantages, step);
criterion_main!(benches);
