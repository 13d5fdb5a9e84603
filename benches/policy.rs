//! Criterion benches of the policy model (SmolLM2-135M-Instruct from tools/setup, GGUF dequantised
//! to f32, burn's flex CPU backend): prefill and greedy decode at batch 1 and 16.
//! `cargo bench --bench policy`; tokens/s = elements/s in criterion's output.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use r1s_policy::{Policy, Sampling};

const PROMPT: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France? Answer in one long sentence.<|im_end|>\n<|im_start|>assistant\n";
const NEW: usize = 32;

fn benches(c: &mut Criterion) {
    let device = burn::tensor::Device::flex();
    let mut p = Policy::load(std::path::Path::new("smollm2"), &device).expect("SmolLM2 (run tools/setup)");
    // the batch repeats one prompt: prefill every row, as a batch of distinct prompts would need
    p.share_prefill = false;
    let ids = p.tokenizer.encode(PROMPT).expect("tokens");
    let mut g = c.benchmark_group("policy");
    g.sample_size(10);
    for batch in [1usize, 16] {
        let prompts = vec![ids.clone(); batch];
        g.throughput(Throughput::Elements((batch * ids.len()) as u64));
        g.bench_with_input(BenchmarkId::new("prefill", batch), &prompts, |b, prompts| {
            b.iter(|| p.logits(prompts).expect("forward").dims()[1])
        });
        // decode: NEW tokens per sequence (no EOS stop: max_new_tokens only), prefill included once
        let s = Sampling { max_new_tokens: NEW, ..Sampling::default() };
        g.throughput(Throughput::Elements((batch * NEW) as u64));
        g.bench_with_input(BenchmarkId::new("greedy_32_tokens", batch), &prompts, |b, prompts| {
            b.iter(|| p.generate(prompts, &s).expect("generate").len())
        });
    }
    g.finish();
}

criterion_group!(policy, benches);
criterion_main!(policy);
