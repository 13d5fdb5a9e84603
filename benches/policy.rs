//! Criterion benches of the policy model (SmolLM2-135M-Instruct from tools/setup, GGUF dequantised
//! to f32, burn's flex CPU backend): prefill and greedy decode at batch 1 and 16.
//! `cargo bench --bench policy`; tokens/s = elements/s in criterion's output. The `packed_matmul`
//! group times one decode product by each packed kernel this CPU runs against burn's f32 matmul
//! (r1s's threaded split) on the same shape; multiply-adds/s = elements/s.

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

/// One decode product `[m, in] × [in, out]` of SmolLM2's MLP (576 → 1536) by every packed kernel and
/// by burn's f32 matmul, on the rayon pool's threads.
fn packed(c: &mut Criterion) {
    use burn::tensor::{Tensor, TensorData};
    use r1s_policy::WeightFormat;
    use r1s_policy::packed::{Kernel, PackedMatrix};
    let device = burn::tensor::Device::flex();
    let (k, n) = (576usize, 1536usize);
    let w: Vec<f32> = (0..k * n).map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * 0.1).collect();
    let mut g = c.benchmark_group("packed_matmul");
    g.sample_size(20);
    for m in [1usize, 16] {
        let x: Vec<f32> = (0..m * k).map(|i| (i * 104_729 % 997) as f32 / 997.0 - 0.5).collect();
        g.throughput(Throughput::Elements((m * k * n) as u64));
        let wt = Tensor::<2>::from_data(TensorData::new(w.clone(), [k, n]), &device);
        let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), &device);
        g.bench_function(BenchmarkId::new("f32_burn", m), |b| {
            b.iter(|| r1s_policy::model::matmul_threaded(xt.clone(), wt.clone(), None).into_data().num_elements())
        });
        for fmt in [WeightFormat::Bf16, WeightFormat::Q8_0] {
            let p = PackedMatrix::pack(fmt, &w, n, k, true, None);
            for kernel in Kernel::available() {
                g.bench_function(BenchmarkId::new(format!("{fmt}_{kernel:?}"), m), |b| {
                    b.iter(|| p.matmul_with(kernel, &x, m).len())
                });
            }
        }
    }
    g.finish();
}

criterion_group!(policy, benches, packed);
criterion_main!(policy);
