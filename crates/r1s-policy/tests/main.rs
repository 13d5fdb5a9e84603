//! The policy model: SmolLM2-135M-Instruct's GGUF (from tools/setup) against transformers'
//! reference outputs, tiny random Llama and Qwen2 models through safetensors, batching and the KV
//! cache, and bad model files.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use r1s_policy::load::{GgufWeights, RandomWeights, build_llama, save_safetensors};
use r1s_policy::policy::Rng;
use r1s_policy::{LlamaConfig, Policy, PolicyError, Sampling, StopReason, TextTokenizer};

/// The device the tests run on: `R1S_TEST_DEVICE` (a `--device` name, e.g. `tch-cpu` in a build
/// with the `tch` feature), else burn's flex backend.
fn test_device() -> Device {
    match std::env::var("R1S_TEST_DEVICE") {
        Ok(name) => r1s_policy::device(&name).unwrap_or_else(|e| panic!("R1S_TEST_DEVICE={name}: {e}")),
        Err(_) => Device::flex(),
    }
}

fn smollm2() -> PathBuf {
    r1s_core::paths::r1s_home().join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn shared(rel: &str) -> PathBuf {
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
        .join("../../../shared/data")
        .join(rel)
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn smollm2_matches_transformers() {
    let device = test_device();
    let p = Policy::load(&smollm2(), &device).expect("SmolLM2 GGUF (run tools/setup)");
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(shared("reference/smollm2_reference.json")).unwrap()).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    let mut prompts = Vec::new();
    let mut worst = 0f32;
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let got = p.tokenizer.encode(text).unwrap();
        assert_eq!(got, ids(&case["input_ids"]), "token ids of {text:?}");
        // top-20 logits of the last position, one sequence at a time (no padding)
        let logits = p.logits(std::slice::from_ref(&got)).unwrap();
        let [_, t, v] = logits.dims();
        let last: Vec<f32> = logits.narrow(1, t - 1, 1).reshape([v]).into_data().try_to_vec::<f32>().unwrap();
        let top = &case["last_logits_top20"];
        let want: Vec<f32> = top["values"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let mine: Vec<f32> = ids(&top["ids"]).iter().map(|&i| last[i as usize]).collect();
        let d = max_abs_diff(&mine, &want);
        worst = worst.max(d);
        assert!(d <= 1e-2, "top-20 logits differ by {d} for {text:?}");
        prompts.push(got);
    }
    eprintln!("max |logit difference| on the top-20 of {} prompts: {worst:.2e}", cases.len());
    // greedy 24 tokens, all prompts in one left-padded batch, and each alone
    let s = Sampling { max_new_tokens: 24, ..Sampling::default() };
    let batched = p.generate(&prompts, &s).unwrap();
    for (case, g) in cases.iter().zip(&batched) {
        assert_eq!(g.tokens, ids(&case["greedy_24"]), "greedy tokens for {:?}", case["text"]);
        let full = p.tokenizer.decode(&g.tokens).unwrap();
        assert_eq!(full, case["greedy_24_text"].as_str().unwrap());
    }
    let alone = p.generate(&prompts[1..2], &s).unwrap();
    assert_eq!(alone[0].tokens, batched[1].tokens);
    assert!(max_abs_diff(&alone[0].logprobs, &batched[1].logprobs) < 1e-3);
    assert_eq!(batched[0].stop, StopReason::Eos);
    assert_eq!(batched[0].text, "The capital of France is Paris.");
}

/// Each `--weights` format's decode step against transformers' f32 top-20 logits of the reference
/// prompts (prefill all but the last token, then one decode step), and its greedy tokens.
#[test]
fn packed_weights_decode_within_their_tolerance() {
    use r1s_policy::WeightFormat;
    let mut p = Policy::load(&smollm2(), &Device::flex()).expect("SmolLM2 GGUF (run tools/setup)");
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(shared("reference/smollm2_reference.json")).unwrap()).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["input_ids"])).collect();
    let s = Sampling { max_new_tokens: 24, ..Sampling::default() };
    // limits: about twice the largest difference measured (docs/policy-speed.md)
    for (fmt, limit) in [(WeightFormat::F32, 1e-2), (WeightFormat::Bf16, 0.12), (WeightFormat::Q8_0, 0.45)] {
        p.set_weights(fmt).unwrap();
        assert_eq!(p.weights(), fmt);
        let mut worst = 0f32;
        for (case, prompt) in cases.iter().zip(&prompts) {
            let last = p.decode_logits(prompt).unwrap();
            let top = &case["last_logits_top20"];
            let top_ids = ids(&top["ids"]);
            let want: Vec<f32> = top["values"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            let mine: Vec<f32> = top_ids.iter().map(|&i| last[i as usize]).collect();
            worst = worst.max(max_abs_diff(&mine, &want));
            let argmax = (0..last.len()).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap();
            assert_eq!(argmax as u32, top_ids[0], "{fmt}: the top token of {:?}", case["text"]);
        }
        let greedy = p.generate(&prompts, &s).unwrap();
        let same: Vec<String> = cases
            .iter()
            .zip(&greedy)
            .map(|(c, g)| {
                let want = ids(&c["greedy_24"]);
                let n = want.iter().zip(&g.tokens).take_while(|(a, b)| a == b).count();
                format!("{n}/{}", want.len().max(g.tokens.len()))
            })
            .collect();
        eprintln!(
            "{fmt}: max |top-20 logit difference| of a decode step {worst:.3e}; greedy tokens equal to transformers' (first n of len): {}",
            same.join(", ")
        );
        assert!(worst <= limit, "{fmt}: top-20 logits of a decode step differ by {worst} (limit {limit})");
        if fmt == WeightFormat::F32 {
            for (c, g) in cases.iter().zip(&greedy) {
                assert_eq!(g.tokens, ids(&c["greedy_24"]));
            }
        }
    }
}

#[test]
fn stop_strings_cut_the_text_and_sampling_is_seeded() {
    let device = test_device();
    let p = Policy::load(&smollm2(), &device).unwrap();
    let tpl = r1s_policy::chat::Template::detect(p.tokenizer.chat_template.as_deref());
    let prompt = tpl.render(&[r1s_policy::chat::Message::new("user", "What is the capital of France?")]);
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(shared("reference/smollm2_reference.json")).unwrap()).unwrap();
    assert_eq!(prompt, reference["cases"][0]["text"].as_str().unwrap(), "ChatML with SmolLM2's default system message");
    let ids = p.tokenizer.encode(&prompt).unwrap();
    // " Paris" is cut by a stop string spanning token boundaries ("ce is Par")
    let s = Sampling { max_new_tokens: 24, stop: vec!["ce is Par".into()], ..Sampling::default() };
    let g = p.generate(std::slice::from_ref(&ids), &s).unwrap().remove(0);
    assert_eq!(g.stop, StopReason::Stop("ce is Par".into()));
    assert_eq!(g.text, "The capital of Fran");
    // seeded sampling is reproducible, and other seeds differ somewhere
    let s = Sampling { max_new_tokens: 16, temperature: 1.0, top_p: 0.95, seed: 7, stop: vec![] };
    let batch = vec![ids.clone(), ids.clone(), ids.clone(), ids.clone()];
    let a = p.generate(&batch, &s).unwrap();
    let b = p.generate(&batch, &s).unwrap();
    assert_eq!(a, b);
    // a shared prefill (the default) samples what a prefill per row does, with another prompt mixed in
    let other = p.tokenizer.encode(&tpl.render(&[r1s_policy::chat::Message::new("user", "Name a river.")])).unwrap();
    let mixed = vec![ids.clone(), other.clone(), ids.clone(), other, ids.clone()];
    let shared_rows = p.generate(&mixed, &s).unwrap();
    let mut q = Policy::load(&smollm2(), &device).unwrap();
    q.share_prefill = false;
    let separate_rows = q.generate(&mixed, &s).unwrap();
    for (x, y) in shared_rows.iter().zip(&separate_rows) {
        assert_eq!(x.tokens, y.tokens);
        assert!(max_abs_diff(&x.logprobs, &y.logprobs) < 1e-4);
    }
    let c = p.generate(&batch, &Sampling { seed: 8, ..s }).unwrap();
    assert_ne!(a.iter().map(|g| &g.tokens).collect::<Vec<_>>(), c.iter().map(|g| &g.tokens).collect::<Vec<_>>());
    // the generation's log-probs are the scoring API's
    let full: Vec<u32> = batch[0].iter().chain(&a[0].tokens).copied().collect();
    let scored: Vec<f32> =
        p.token_logprobs(std::slice::from_ref(&full)).unwrap().into_data().try_to_vec::<f32>().unwrap();
    let tail = &scored[scored.len() - a[0].tokens.len()..];
    assert!(max_abs_diff(tail, &a[0].logprobs) < 1e-3, "{tail:?} vs {:?}", a[0].logprobs);
}

fn tiny(model_type: &str, tied: bool) -> LlamaConfig {
    serde_json::from_value(serde_json::json!({
        "model_type": model_type, "vocab_size": 96, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 128,
        "tie_word_embeddings": tied,
    }))
    .unwrap()
}

/// Packed decode steps of a model with q/k/v biases and a separate LM head (Qwen2), and of a tied
/// Llama, against the f32 decode step; rows of 48 (not a multiple of a Q8_0 block) included.
#[test]
fn packed_decode_follows_f32_with_biases_and_an_untied_head() {
    use r1s_policy::WeightFormat;
    let device = Device::flex();
    let tokenizer = TextTokenizer::from_gguf(&r1s_policy::gguf::Gguf::open(&smollm2()).unwrap()).unwrap();
    for (kind, tied) in [("llama", true), ("qwen2", false)] {
        let cfg = tiny(kind, tied);
        let model = build_llama(&cfg, &RandomWeights { cfg: cfg.clone(), seed: 3 }, &device).unwrap();
        let mut p = Policy::new(model, cfg.clone(), tokenizer.clone(), &device);
        let ids = [5u32, 9, 17, 33, 2, 70];
        let want = p.decode_logits(&ids).unwrap();
        let scale = 1.0 + want.iter().fold(0f32, |m, x| m.max(x.abs()));
        for fmt in [WeightFormat::Bf16, WeightFormat::Q8_0] {
            p.set_weights(fmt).unwrap();
            let got = p.decode_logits(&ids).unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(
                d > 0.0 && d <= 0.02 * scale,
                "{kind} {fmt}: decode logits differ from f32's by {d} (scale {scale})"
            );
        }
        // generation on the host cache: past its first capacity (the prompt + 64 positions, then
        // doubled), left-padded rows in one batch generate what each does alone
        let seqs: Vec<Vec<u32>> = vec![vec![5, 9, 17, 33, 2, 70], vec![11, 3], vec![40, 41, 42, 43]];
        let s = Sampling { max_new_tokens: 100, ..Sampling::default() };
        let batched = p.generate(&seqs, &s).unwrap();
        for (seq, g) in seqs.iter().zip(&batched) {
            assert_eq!(g.tokens.len(), 100);
            let alone = p.generate(std::slice::from_ref(seq), &s).unwrap().remove(0);
            assert_eq!(alone.tokens, g.tokens, "{kind}: {seq:?} alone vs batched");
            assert!(max_abs_diff(&alone.logprobs, &g.logprobs) < 1e-3, "{kind}: {seq:?} log-probs");
        }
        // merged weights are packed again
        p.set_weights(WeightFormat::F32).unwrap();
        assert_eq!(p.decode_logits(&ids).unwrap(), want);
    }
}

#[test]
fn tiny_llama_and_qwen2_round_trip_batch_and_cache() {
    let device = test_device();
    let tokenizer = TextTokenizer::from_gguf(&r1s_policy::gguf::Gguf::open(&smollm2()).unwrap()).unwrap();
    for (kind, tied) in [("llama", true), ("qwen2", false)] {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tiny(kind, tied);
        assert_eq!(cfg.qkv_bias(), kind == "qwen2");
        let model = build_llama(&cfg, &RandomWeights { cfg: cfg.clone(), seed: 0 }, &device).unwrap();
        // safetensors with HF names, then loaded as a Hugging Face directory
        save_safetensors(&model, &tmp.path().join("model.safetensors")).unwrap();
        std::fs::write(tmp.path().join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
        let a = Policy::new(model, cfg.clone(), tokenizer.clone(), &device);
        let weights = r1s_policy::load::SafetensorsWeights::open(tmp.path()).unwrap();
        let b = Policy::new(build_llama(&cfg, &weights, &device).unwrap(), cfg.clone(), tokenizer.clone(), &device);
        let seqs: Vec<Vec<u32>> = vec![vec![5, 9, 17, 33, 2, 70], vec![11, 3], vec![40, 41, 42, 43]];
        let la: Vec<f32> = a.logits(&seqs).unwrap().into_data().try_to_vec::<f32>().unwrap();
        let lb: Vec<f32> = b.logits(&seqs).unwrap().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(la, lb, "{kind}: reloaded weights give other logits");
        // batched (left-padded) == one by one, at every real position
        let t = 6;
        for (r, s) in seqs.iter().enumerate() {
            let alone: Vec<f32> = a.logits(std::slice::from_ref(s)).unwrap().into_data().try_to_vec::<f32>().unwrap();
            let v = cfg.vocab_size;
            let off = t - s.len();
            let batched = &la[(r * t + off) * v..(r + 1) * t * v];
            assert!(max_abs_diff(batched, &alone) < 1e-4, "{kind}: row {r} batched != alone");
        }
        // cache == recomputation: greedy tokens equal the argmax of a full forward pass
        let s = Sampling { max_new_tokens: 8, ..Sampling::default() };
        let gens = a.generate(&seqs, &s).unwrap();
        for (seq, g) in seqs.iter().zip(&gens) {
            let mut ctx = seq.clone();
            for (k, &tok) in g.tokens.iter().enumerate() {
                let l: Vec<f32> =
                    a.logits(std::slice::from_ref(&ctx)).unwrap().into_data().try_to_vec::<f32>().unwrap();
                let last = &l[(ctx.len() - 1) * cfg.vocab_size..];
                let best = (0..cfg.vocab_size).max_by(|&x, &y| last[x].total_cmp(&last[y])).unwrap() as u32;
                assert_eq!(tok, best, "{kind}: token {k} of {seq:?} differs from recomputation");
                ctx.push(tok);
            }
        }
        // the HF directory loads as a whole too (config.json + tokenizer.json needed)
        let err = Policy::load(tmp.path(), &device).unwrap_err();
        assert!(err.to_string().contains("tokenizer.json"), "{err}");
        // a truncated safetensors file is an error naming it
        let st = tmp.path().join("model.safetensors");
        let bytes = std::fs::read(&st).unwrap();
        std::fs::write(&st, &bytes[..bytes.len() - 100]).unwrap();
        let err = r1s_policy::load::SafetensorsWeights::open(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("model.safetensors"), "{err}");
    }
}

fn python() -> Option<PathBuf> {
    let p = r1s_core::paths::r1s_home().join("venv/bin/python");
    p.exists().then_some(p)
}

/// Every quantisation type dequantises as the `gguf` Python package (llama.cpp's reference) does,
/// on random blocks with sane scales.
#[test]
fn dequantisation_matches_the_gguf_package() {
    use r1s_policy::gguf::{GgmlType, dequantize};
    let Some(py) = python() else {
        eprintln!("skipping: no $R1S_HOME/venv (run tools/setup)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(42);
    let f16 = |x: f32| half::f16::from_f32(x).to_le_bytes();
    // (type, gguf name, values per block, bytes per block, offsets of f16 scale fields)
    let kinds: [(GgmlType, &str, usize, usize, &[usize]); 7] = [
        (GgmlType::Q4_0, "Q4_0", 32, 18, &[0]),
        (GgmlType::Q4_1, "Q4_1", 32, 20, &[0, 2]),
        (GgmlType::Q8_0, "Q8_0", 32, 34, &[0]),
        (GgmlType::Q4K, "Q4_K", 256, 144, &[0, 2]),
        (GgmlType::Q6K, "Q6_K", 256, 210, &[208]),
        (GgmlType::F16, "F16", 1, 2, &[0]),
        (GgmlType::BF16, "BF16", 1, 2, &[]),
    ];
    for (t, name, per, size, scales) in kinds {
        let blocks = 8;
        let mut raw: Vec<u8> = (0..blocks * size).map(|_| (rng.next_f32() * 256.0) as u8).collect();
        for b in 0..blocks {
            for &at in scales {
                let v = f16(0.001 + 0.05 * rng.next_f32());
                raw[b * size + at..b * size + at + 2].copy_from_slice(&v);
            }
            if t == GgmlType::BF16 {
                let v = half::bf16::from_f32(rng.next_f32() - 0.5).to_le_bytes();
                raw[b * size..b * size + 2].copy_from_slice(&v);
            }
        }
        let ours = dequantize(t, &raw, blocks * per);
        let file = tmp.path().join(name);
        std::fs::write(&file, &raw).unwrap();
        let script = format!(
            "import sys, numpy as np\nfrom gguf.quants import dequantize\nfrom gguf.constants import GGMLQuantizationType as T\n\
             a = np.fromfile(sys.argv[1], dtype=np.uint8)\nprint(' '.join(repr(float(x)) for x in dequantize(a, T.{name}).reshape(-1)))"
        );
        let out = std::process::Command::new(&py).arg("-c").arg(script).arg(&file).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let theirs: Vec<f32> =
            String::from_utf8(out.stdout).unwrap().split_whitespace().map(|x| x.parse().unwrap()).collect();
        assert_eq!(theirs.len(), ours.len(), "{name}");
        let d = max_abs_diff(&ours, &theirs);
        assert!(d <= 1e-6, "{name}: differs from the gguf package by {d}");
    }
}

#[test]
fn bad_model_files_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(smollm2()).unwrap();
    let device = test_device();
    // truncated: the tensor directory says more than the file holds
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = Policy::load(&cut, &device).unwrap_err();
    assert!(matches!(err, PolicyError::BadFile { .. }) && err.to_string().contains("truncated"), "{err}");
    // not GGUF
    let junk = tmp.path().join("junk.gguf");
    std::fs::write(&junk, b"GGML not really").unwrap();
    assert!(Policy::load(&junk, &device).unwrap_err().to_string().contains("not a GGUF file"));
    // a header cut inside the metadata
    let head = tmp.path().join("head.gguf");
    std::fs::write(&head, &bytes[..100]).unwrap();
    let err = Policy::load(&head, &device).unwrap_err();
    assert!(err.to_string().contains("byte"), "{err}");
    // an unknown quantisation type: a hand-made GGUF with one Q5_0 tensor
    let mut g = Vec::new();
    g.extend(b"GGUF");
    g.extend(3u32.to_le_bytes());
    g.extend(1u64.to_le_bytes());
    g.extend(0u64.to_le_bytes());
    let name = b"token_embd.weight";
    g.extend((name.len() as u64).to_le_bytes());
    g.extend(name);
    g.extend(2u32.to_le_bytes());
    g.extend(32u64.to_le_bytes());
    g.extend(4u64.to_le_bytes());
    g.extend(6u32.to_le_bytes()); // Q5_0
    g.extend(0u64.to_le_bytes());
    g.resize(g.len().div_ceil(32) * 32 + 4 * 22, 0);
    let q5 = tmp.path().join("q5.gguf");
    std::fs::write(&q5, &g).unwrap();
    let err = Policy::load(&q5, &device).unwrap_err();
    assert!(err.to_string().contains("Q5_0"), "{err}");
    // a shape that does not match the configuration
    let gg = r1s_policy::gguf::Gguf::open(&smollm2()).unwrap();
    let mut cfg = LlamaConfig::from_gguf(&gg).unwrap();
    cfg.intermediate_size += 1;
    let err = build_llama(&cfg, &GgufWeights { gguf: &gg, cfg: &cfg }, &device).unwrap_err();
    assert!(matches!(err, PolicyError::Shape { .. }), "{err}");
}

/// A GGUF v3 with no metadata and one tensor `name` of `dims` (GGUF order, innermost first) and
/// type id `ty` at data offset 0, followed by `data` bytes of zeros.
#[test]
fn device_names_are_checked() {
    let err = |name: &str| r1s_policy::device(name).unwrap_err();
    assert!(matches!(err("gpu"), PolicyError::Options(m) if m.contains("tch-cpu")));
    assert!(err("cuda:x").to_string().contains("bad CUDA device index"));
    assert!(err("tch-cuda:1x").to_string().contains("bad CUDA device index"));
    if cfg!(feature = "tch") {
        // a CUDA device libtorch does not see is an error, not libtorch's abort
        assert!(matches!(err("tch-cuda:64"), PolicyError::Device { reason, .. } if reason.contains("CUDA device")));
        assert!(r1s_policy::device("tch-cpu").is_ok());
    } else {
        assert!(matches!(err("tch-cpu"), PolicyError::Device { reason, .. } if reason.contains("`tch` feature")));
    }
    if !cfg!(feature = "cuda") {
        assert!(matches!(err("cuda:1"), PolicyError::Device { device, .. } if device == "cuda:1"));
    }
}

fn one_tensor_gguf(name: &str, dims: &[u64], ty: u32, data: usize) -> Vec<u8> {
    let mut g = Vec::new();
    g.extend(b"GGUF");
    g.extend(3u32.to_le_bytes());
    g.extend(1u64.to_le_bytes());
    g.extend(0u64.to_le_bytes());
    g.extend((name.len() as u64).to_le_bytes());
    g.extend(name.as_bytes());
    g.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        g.extend(d.to_le_bytes());
    }
    g.extend(ty.to_le_bytes());
    g.extend(0u64.to_le_bytes());
    g.resize(g.len().div_ceil(32) * 32 + data, 0);
    g
}

/// Tensor dimensions whose product (or byte size) passes 2^64 once made `r1s policy generate` panic
/// with "capacity overflow" (the byte size wrapped, passed the bounds check, and 2^62 floats were
/// allocated): now a `BadFile` naming the file, the tensor and its offset, before any allocation.
#[test]
fn gguf_dims_multiplying_past_u64_are_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&[u64], &str); 4] = [
        (&[1 << 62], "overflow 2^64 bytes"),               // 2^62 F32 values = 2^64 bytes
        (&[1 << 31, 1 << 31], "overflow 2^64 bytes"),      // the same as a matrix
        (&[1 << 33, 1 << 33], "multiply past 2^64"),       // the value count itself overflows
        (&[1 << 20, 1 << 20], "past the end of the file"), // fits in u64, not in the file
    ];
    for (i, (dims, needle)) in cases.iter().enumerate() {
        let path = tmp.path().join(format!("huge{i}.gguf"));
        std::fs::write(&path, one_tensor_gguf("token_embd.weight", dims, 0, 64)).unwrap();
        let err = r1s_policy::gguf::Gguf::open(&path).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, PolicyError::BadFile { offset: Some(24), .. }), "{dims:?}: {err:?}");
        assert!(
            text.contains(needle) && text.contains("token_embd.weight") && text.contains(&format!("huge{i}.gguf")),
            "{dims:?}: {text}"
        );
    }
    // a well-formed one opens: 16 F32 values in 64 bytes
    let ok = tmp.path().join("ok.gguf");
    std::fs::write(&ok, one_tensor_gguf("token_embd.weight", &[4, 4], 0, 64)).unwrap();
    let g = r1s_policy::gguf::Gguf::open(&ok).unwrap();
    assert_eq!(g.tensor_f32("token_embd.weight").unwrap().0.len(), 16);
}

#[test]
fn continuous_batching_matches_generate_and_reuses_caches() {
    use r1s_policy::chat::{Message, Template};
    use r1s_policy::{Generation, Request};
    use std::collections::HashMap;
    use std::ops::ControlFlow;
    let device = test_device();
    let mut policy = Policy::load(&smollm2(), &device).unwrap();
    // packed weights run their decode steps on the host, with the cache there (CPU only)
    let formats: &[r1s_policy::WeightFormat] = if device == Device::flex() {
        &[r1s_policy::WeightFormat::F32, r1s_policy::WeightFormat::Q8_0]
    } else {
        &[r1s_policy::WeightFormat::F32]
    };
    for &fmt in formats {
        policy.set_weights(fmt).unwrap();
        let p = &policy;
        let tpl = Template::detect(p.tokenizer.chat_template.as_deref());
        let questions =
            ["What is the capital of France?", "Name a river in Africa.", "Who wrote Hamlet?", "What is 2 + 2?"];
        let prompts: Vec<String> = questions.iter().map(|q| tpl.render(&[Message::new("user", q)])).collect();
        // greedy, cut at the first full stop: the rows end at different steps
        let s = Sampling { max_new_tokens: 20, stop: vec![".".into()], ..Sampling::default() };
        let run = |keys: &[usize], s: &Sampling| {
            let mut results: HashMap<(usize, usize), Generation> = HashMap::new();
            let mut second: HashMap<usize, Vec<u32>> = HashMap::new();
            let first: Vec<Request> = keys
                .iter()
                .map(|&k| Request {
                    key: k,
                    prompt: p.tokenizer.encode(&prompts[k]).unwrap(),
                    sampling: s.clone(),
                    stream: None,
                    cancel: None,
                })
                .collect();
            let stats = p
                .generate_continuous(first, &mut |ended| {
                    let mut next = Vec::new();
                    for (k, g) in ended {
                        let turn = usize::from(results.contains_key(&(k, 0)));
                        if turn == 0 {
                            // the next turn extends the text; its ids need not extend the sampled ones
                            let ids = p.tokenizer.encode(&format!("{}{}. Tell me more:", prompts[k], g.text)).unwrap();
                            second.insert(k, ids.clone());
                            next.push(Request { key: k, prompt: ids, sampling: s.clone(), stream: None, cancel: None });
                        }
                        results.insert((k, turn), g);
                    }
                    ControlFlow::Continue(next)
                })
                .unwrap();
            (results, second, stats)
        };
        let (results, second, stats) = run(&[0, 1, 2, 3], &s);
        assert_eq!(stats.requests, 8);
        assert!(stats.reused > 0 && stats.prefilled > 0, "{stats:?}");
        let ends: Vec<usize> = (0..4).map(|k| results[&(k, 0)].tokens.len()).collect();
        assert!(ends.iter().any(|&n| n != ends[0]), "rows should end at different steps: {ends:?}");
        for k in 0..4 {
            for (turn, ids) in [(0, p.tokenizer.encode(&prompts[k]).unwrap()), (1, second[&k].clone())] {
                let alone = p.generate(std::slice::from_ref(&ids), &s).unwrap().remove(0);
                let got = &results[&(k, turn)];
                assert_eq!(got.tokens, alone.tokens, "{fmt}: question {k}, turn {turn}");
                assert_eq!(got.text, alone.text);
                // a next turn of packed weights reuses keys and values that packed decode steps
                // computed, where a prefill from scratch computes them in f32
                let limit = if turn == 0 || fmt == r1s_policy::WeightFormat::F32 { 1e-3 } else { 0.1 };
                let d = max_abs_diff(&got.logprobs, &alone.logprobs);
                eprintln!("{fmt}: question {k}, turn {turn}: log-probs differ by {d:.2e} from a prefill from scratch");
                assert!(d < limit, "{fmt}: question {k}, turn {turn}: log-probs differ by {d}");
            }
        }
        // sampled: what a request draws does not depend on the rows beside it
        let s = Sampling { max_new_tokens: 16, temperature: 1.0, top_p: 0.95, seed: 3, stop: vec![".".into()] };
        let (all, _, _) = run(&[0, 1, 2, 3], &s);
        let (alone, _, _) = run(&[2], &s);
        for turn in 0..2 {
            assert_eq!(all[&(2, turn)].tokens, alone[&(2, turn)].tokens, "turn {turn}");
        }
        let (other_seed, _, _) = run(&[0, 1, 2, 3], &Sampling { seed: 4, ..s.clone() });
        assert!((0..4).any(|k| other_seed[&(k, 0)].tokens != all[&(k, 0)].tokens));
    }
}
