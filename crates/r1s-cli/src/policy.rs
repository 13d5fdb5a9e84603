//! `r1s policy generate`, and the retriever the policy commands open (in-process or HTTP).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::{Globals, train, use_threads};

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCmd {
    /// Generate a continuation of a prompt, streamed to the terminal.
    Generate(GenerateArgs),
    /// Two-stage RL (R1-Searcher): rollouts through the agent loop with the retriever, rule-based
    /// rewards, REINFORCE++ / GRPO advantages, PPO-clip with retrieved documents masked out, KL.
    Train(train::TrainArgs),
    /// Supervised cold start on trajectories (documents masked out of the loss).
    Sft(train::SftArgs),
    /// Curves of a training run's metrics.jsonl as a PNG.
    Plot(train::PlotArgs),
    /// Stack LoRA adapters trained one on top of another (an SFT cold start, then each RL stage) into
    /// one PEFT adapter over the first one's base model (rank = the sum of theirs).
    StackAdapters(StackArgs),
    /// Build the "which article is described as…" search task (and cold-start trajectories) from a
    /// corpus and its index.
    Task(train::TaskArgs),
}

#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    /// The prompt.
    prompt: String,
    /// A .gguf file, a Hugging Face directory (config.json, *.safetensors, tokenizer.json), or
    /// `smollm2` (SmolLM2-135M-Instruct, fetched by tools/setup).
    #[arg(long, default_value = "smollm2", env = "R1S_POLICY")]
    model: PathBuf,
    /// A PEFT LoRA adapter directory merged into the model (repeatable, merged in order).
    #[arg(long, value_name = "DIR")]
    adapter: Vec<PathBuf>,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message for --chat (default: the template's own, if any).
    #[arg(long)]
    system: Option<String>,
    /// Most new tokens.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0, value_parser = crate::index::parse_nonneg)]
    temperature: f32,
    /// Nucleus sampling mass, in (0, 1].
    #[arg(long, default_value_t = 1.0, value_parser = parse_top_p)]
    top_p: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when the continuation contains this text (repeatable; the text is not printed).
    #[arg(long)]
    stop: Vec<String>,
    #[arg(long, default_value = "cpu", help = DEVICE_HELP)]
    device: String,
    /// Threads (0 = all cores).
    #[arg(long, short = 'j', default_value_t = 0, env = "R1S_THREADS")]
    threads: usize,
    /// Continuations of the prompt, generated as one batch (only the first is streamed). The prompt
    /// is prefilled once for all of them. Sampling draws from one seeded stream across the batch, so
    /// the first continuation of --n 3 differs from that of --n 1.
    #[arg(long, default_value_t = 1, value_parser = parse_count)]
    n: usize,
    /// Prefill each of the --n copies of the prompt separately, as transformers' `generate` does
    /// (for like-for-like benchmarks: tools/bench-policy).
    #[arg(long)]
    no_shared_prefill: bool,
    /// Print timing figures as one JSON line on standard error.
    #[arg(long)]
    stats_json: bool,
    /// Run a 2-token generation first, so that timings exclude first-call set-up (as benchmarks of
    /// other engines do).
    #[arg(long)]
    warmup: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StackArgs {
    /// Adapter directories, in training order (an r1s checkpoint's is its `adapter/`).
    #[arg(required = true, num_args = 1..)]
    adapters: Vec<PathBuf>,
    /// The stacked adapter's directory (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    out: PathBuf,
    /// How the factors are stored: f32, f16 or bf16 (f16 halves the file; PEFT casts on loading).
    #[arg(long, default_value = "f32", value_parser = parse_store_dtype)]
    dtype: r1s_policy::adapter::StoreDtype,
}

/// The help of `--device` on the commands that load the policy.
pub(crate) const DEVICE_HELP: &str = "The policy's device: cpu (burn's flex backend), cuda / cuda:N (built with \
     --features cuda), tch-cpu / tch-cuda / tch-cuda:N (burn's LibTorch backend: built with --features tch)";

/// A count of at least 1.
pub(crate) fn parse_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a whole number >= 1")),
    }
}

/// A nucleus mass in (0, 1].
fn parse_top_p(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(x) if x > 0.0 && x <= 1.0 => Ok(x),
        _ => Err(format!("{s:?} is not a number in (0, 1]")),
    }
}

fn parse_store_dtype(s: &str) -> Result<r1s_policy::adapter::StoreDtype, String> {
    s.parse()
}

pub(crate) fn stack_adapters(a: StackArgs, g: &Globals) -> anyhow::Result<()> {
    for dir in &a.adapters {
        crate::must_exist(dir, "adapter directory")?;
    }
    let m = r1s_policy::adapter::stack(&a.adapters, &a.out, a.dtype)?;
    if !g.quiet {
        let bytes = std::fs::metadata(a.out.join("adapter_model.safetensors")).map(|m| m.len()).unwrap_or(0);
        println!(
            "{}: {} adapters stacked, r {} on {} projections of layers {:?} ({:.2} MB)",
            a.out.display(),
            a.adapters.len(),
            m.rank,
            m.modules,
            m.layers,
            bytes as f64 / 1e6
        );
    }
    Ok(())
}

/// The policy at `model` on `device` with `adapters` merged in order (a line per adapter unless quiet).
pub(crate) fn load_policy(
    model: &Path,
    adapters: &[PathBuf],
    device: &str,
    g: &Globals,
) -> anyhow::Result<r1s_policy::Policy> {
    if model != Path::new("smollm2") {
        crate::must_exist(model, "model file or directory")?;
    }
    for dir in adapters {
        crate::must_exist(dir, "adapter directory")?;
    }
    let mut policy = r1s_policy::Policy::load(model, &r1s_policy::device(device)?)?;
    for dir in adapters {
        let m = policy.apply_adapter(dir)?;
        if !g.quiet {
            let (lo, hi) = (m.layers.first().copied().unwrap_or(0), m.layers.last().copied().unwrap_or(0));
            eprintln!(
                "merged LoRA adapter {} (r {}, scale {}; {} projections in layers {lo}–{hi})",
                dir.display(),
                m.rank,
                m.scale,
                m.modules
            );
        }
    }
    Ok(policy)
}

/// An in-process retriever over `index`, or a retrieval server at `url`.
pub(crate) fn open_retriever(index: Option<&Path>, url: Option<&str>, threads: usize) -> anyhow::Result<FnRetriever> {
    let f: RetrieveFn = match (index, url) {
        (_, Some(url)) => {
            let r = r1s_agent::HttpRetriever::new(url);
            Box::new(move |q, k| Ok(r1s_core::Retriever::retrieve(&r, q, k)?))
        }
        (Some(index), None) => {
            let r = r1s_retrieve::AnyRetriever::open(
                index,
                &r1s_retrieve::RetrieverOptions {
                    dense: r1s_retrieve::DenseOptions { threads, ..Default::default() },
                    ..Default::default()
                },
            )?;
            Box::new(move |q, k| Ok(r1s_core::Retriever::retrieve(&r, q, k)?))
        }
        (None, None) => anyhow::bail!("--index or --retriever-url is required"),
    };
    Ok(FnRetriever(f))
}

pub(crate) type RetrieveFn = Box<dyn Fn(&[&str], usize) -> anyhow::Result<Vec<Vec<r1s_core::Hit>>> + Send + Sync>;

/// Any retrieval closure as a core `Retriever` (in-process or HTTP, chosen at run time).
pub(crate) struct FnRetriever(RetrieveFn);

#[derive(Debug)]
pub(crate) struct RetrieveFailed(String);

impl std::fmt::Display for RetrieveFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RetrieveFailed {}

impl r1s_core::Retriever for FnRetriever {
    type Error = RetrieveFailed;
    fn retrieve(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<r1s_core::Hit>>, RetrieveFailed> {
        (self.0)(queries, k).map_err(|e| RetrieveFailed(format!("{e:#}")))
    }
}

pub(crate) fn generate(a: GenerateArgs, g: &Globals) -> anyhow::Result<()> {
    use r1s_policy::chat::{Message, Template};
    use_threads(a.threads);
    let t = std::time::Instant::now();
    let mut policy = load_policy(&a.model, &a.adapter, &a.device, g)?;
    policy.share_prefill = !a.no_shared_prefill;
    let loaded = t.elapsed().as_secs_f64();
    let prompt = if a.chat {
        let mut messages = Vec::new();
        if let Some(sys) = &a.system {
            messages.push(Message::new("system", sys));
        }
        messages.push(Message::new("user", &a.prompt));
        Template::detect(policy.tokenizer.chat_template.as_deref()).render(&messages)
    } else {
        a.prompt.clone()
    };
    let ids = policy.tokenizer.encode(&prompt)?;
    let sampling = r1s_policy::Sampling {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
        stop: a.stop.clone(),
    };
    let prompts = vec![ids.clone(); a.n.max(1)];
    if a.warmup {
        policy.generate(&prompts, &r1s_policy::Sampling { max_new_tokens: 2, ..sampling.clone() })?;
    }
    let stdout = std::io::stdout();
    let t = std::time::Instant::now();
    let out = policy.generate_streaming(&prompts, &sampling, &mut |seq, text| {
        if seq == 0 {
            let mut o = stdout.lock();
            let _ = o.write_all(text.as_bytes());
            let _ = o.flush();
        }
    })?;
    println!();
    let n: usize = out.iter().map(|g| g.tokens.len()).sum();
    let secs = t.elapsed().as_secs_f64();
    if a.stats_json {
        eprintln!(
            "{}",
            serde_json::json!({"engine": "r1s", "device": a.device, "batch": prompts.len(), "shared_prefill": policy.share_prefill, "prompt_tokens": ids.len(), "new_tokens": n,
                "seconds": secs, "tokens_per_s": n as f64 / secs.max(1e-9), "load_seconds": loaded})
        );
    } else if !g.quiet {
        eprintln!(
            "[{} prompt tokens; {n} new tokens in {} continuation(s) in {secs:.2} s ({:.1} tokens/s); stop: {:?}; model loaded in {loaded:.2} s]",
            ids.len(),
            prompts.len(),
            n as f64 / secs.max(1e-9),
            out[0].stop
        );
    }
    Ok(())
}
