//! `r1s policy generate` and `r1s policy reject` (cold-start trajectories by rejection sampling).

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::loaders::{DEVICE_HELP, WEIGHTS_HELP, load_policy, open_retriever, parse_count, parse_top_p, parse_weights};
use crate::{Globals, train, use_threads};

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCmd {
    /// Generate a continuation of a prompt, streamed to the terminal.
    Generate(GenerateArgs),
    /// Serve the policy over OpenAI's API (vLLM's shapes): /v1/completions, /v1/chat/completions,
    /// /v1/models; concurrent requests share one continuously batched decode.
    Serve(ServeArgs),
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
    /// Cold-start trajectories by rejection sampling: a policy answers each question several times
    /// through the agent loop, and the well-formed, correct rollouts are kept (R1-Searcher++'s stage 1).
    Reject(RejectArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RejectArgs {
    /// Questions: R1-Searcher {"idx","question","answer"} or FlashRAG {"id","question","golden_answers"} JSONL.
    #[arg(long)]
    data: PathBuf,
    /// Index directory to retrieve from (in-process).
    #[arg(long, required_unless_present = "retriever_url")]
    index: Option<PathBuf>,
    /// A retrieval server instead (Search-R1 `/retrieve` or R1-Searcher `/queries`).
    #[arg(long, conflicts_with = "index")]
    retriever_url: Option<String>,
    /// The policy that samples: a .gguf file, a Hugging Face or r1s checkpoint directory, or `smollm2`.
    #[arg(long, default_value = "smollm2", env = "R1S_POLICY")]
    policy: PathBuf,
    /// A PEFT LoRA adapter merged into the policy (repeatable, merged in order).
    #[arg(long, value_name = "DIR")]
    adapter: Vec<PathBuf>,
    #[arg(long, default_value = "cpu", help = DEVICE_HELP)]
    device: String,
    #[arg(long, default_value = "f32", value_parser = parse_weights, help = WEIGHTS_HELP)]
    weights: r1s_policy::WeightFormat,
    /// The protocol: r1searcher-plus (default), r1-searcher or search-r1.
    #[arg(long, default_value = "r1searcher-plus", value_parser = crate::loaders::parse_protocol)]
    protocol: r1s_agent::Protocol,
    /// Prompt format: chat (the model's template) or base.
    #[arg(long, default_value = "chat")]
    prompt: String,
    /// Rollouts sampled per question (at least 1).
    #[arg(long, default_value_t = 4, value_parser = parse_count)]
    samples: usize,
    /// Distinct rollouts kept per question (0: every one that passes).
    #[arg(long, default_value_t = 1)]
    keep_per_question: usize,
    /// Sampling temperature (R1-Searcher++'s 1.0).
    #[arg(long, default_value_t = 1.0, value_parser = crate::index::parse_nonneg)]
    temperature: f32,
    /// Nucleus sampling mass, in (0, 1].
    #[arg(long, default_value_t = 0.95, value_parser = parse_top_p)]
    top_p: f32,
    /// Most new tokens per turn (at least 1).
    #[arg(long, default_value_t = 512, value_parser = parse_count)]
    max_new_tokens: usize,
    /// Documents per search (at least 1).
    #[arg(long, default_value_t = 3, value_parser = parse_count)]
    topk: usize,
    /// Most searches per rollout (the next turn after the last is final).
    #[arg(long, default_value_t = 8)]
    max_retrievals: usize,
    /// Use the first N questions (at least 1).
    #[arg(long, value_parser = parse_count)]
    limit: Option<usize>,
    /// Episodes generated together (at least 1).
    #[arg(long, default_value_t = 16, value_parser = parse_count)]
    batch: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The kept trajectories (JSONL for `r1s policy sft --protocol …`), written whole at the end.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, short = 'j', default_value_t = 0, env = "R1S_THREADS")]
    threads: usize,
}

pub(crate) fn reject(a: RejectArgs, g: &Globals) -> anyhow::Result<()> {
    use anyhow::Context;
    use_threads(a.threads);
    crate::must_exist(&a.data, "question file")?;
    let questions = r1s_agent::read_questions(&a.data, a.limit)?;
    anyhow::ensure!(!questions.is_empty(), "{}: no questions", a.data.display());
    let policy = load_policy(&a.policy, &a.adapter, &a.device, a.weights, g)?;
    let template = r1s_policy::chat::Template::detect(policy.tokenizer.chat_template.as_deref());
    let prompt = r1s_agent::prompt::PromptKind::parse(&a.prompt, template)?;
    let retriever = open_retriever(a.index.as_deref(), a.retriever_url.as_deref(), a.threads)?;
    let mut loop_cfg = r1s_agent::LoopConfig::training(a.seed);
    loop_cfg.topk = a.topk;
    loop_cfg.max_retrievals = a.max_retrievals;
    if a.protocol == r1s_agent::Protocol::SearchR1 {
        loop_cfg.max_turns = a.max_retrievals;
    }
    loop_cfg.sampling.temperature = a.temperature;
    loop_cfg.sampling.top_p = a.top_p;
    loop_cfg.sampling.max_new_tokens = a.max_new_tokens;
    loop_cfg.max_live = a.batch;
    let o = r1s_train::reject::RejectOptions {
        protocol: a.protocol,
        samples: a.samples,
        keep_per_question: a.keep_per_question,
        loop_cfg,
    };
    let t = std::time::Instant::now();
    let (lines, s) = r1s_train::reject::rejection_sample(&policy, &retriever, &questions, &prompt, &o)?;
    let mut buf = Vec::new();
    for l in &lines {
        writeln!(buf, "{l}")?;
    }
    r1s_core::fsutil::write_atomic(&a.out, &buf).with_context(|| format!("writing {}", a.out.display()))?;
    if !g.quiet {
        eprintln!(
            "kept {} of {} rollouts ({} of {} questions; {} searched, {} recalled a fact) in {:.1} s → {}",
            s.kept,
            s.rollouts,
            s.questions_kept,
            questions.len(),
            s.kept_searching,
            s.kept_recalling,
            t.elapsed().as_secs_f64(),
            a.out.display()
        );
    }
    Ok(())
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
    #[arg(long, default_value = "f32", value_parser = parse_weights, help = WEIGHTS_HELP)]
    weights: r1s_policy::WeightFormat,
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

pub(crate) fn generate(a: GenerateArgs, g: &Globals) -> anyhow::Result<()> {
    use r1s_policy::chat::{Message, Template};
    use_threads(a.threads);
    let t = std::time::Instant::now();
    let mut policy = load_policy(&a.model, &a.adapter, &a.device, a.weights, g)?;
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
    // a reader of standard output that goes away (`| head -c N`) stops the generation within a
    // token, and the command quietly (main's BrokenPipe rule), instead of decoding on for nobody
    let closed = std::sync::Arc::new(r1s_core::Cancel::new());
    policy.cancel = Some(closed.clone());
    let mut write_error: Option<std::io::Error> = None;
    let t = std::time::Instant::now();
    let out = policy.generate_streaming(&prompts, &sampling, &mut |seq, text| {
        if seq == 0 && write_error.is_none() {
            let mut o = stdout.lock();
            if let Err(e) = o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
                write_error = Some(e);
                closed.cancel();
            }
        }
    });
    if let Some(e) = write_error {
        return Err(anyhow::Error::new(e).context("writing the generation to standard output"));
    }
    let out = out?;
    writeln!(stdout.lock())?;
    let n: usize = out.iter().map(|g| g.tokens.len()).sum();
    let secs = t.elapsed().as_secs_f64();
    if a.stats_json {
        eprintln!(
            "{}",
            serde_json::json!({"engine": "r1s", "device": a.device, "weights": policy.weights().to_string(), "batch": prompts.len(), "shared_prefill": policy.share_prefill, "prompt_tokens": ids.len(), "new_tokens": n,
                "seconds": secs, "tokens_per_s": n as f64 / secs.max(1e-9), "load_seconds": loaded})
        );
    } else if !g.quiet {
        eprintln!(
            "[{} prompt tokens; {n} new tokens in {} continuation(s) in {secs:.2} s ({:.1} tokens/s, weights {}); stop: {:?}; model loaded in {loaded:.2} s]",
            ids.len(),
            prompts.len(),
            n as f64 / secs.max(1e-9),
            policy.weights(),
            out[0].stop
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// A .gguf file, a Hugging Face or r1s checkpoint directory, or `smollm2`.
    #[arg(long, default_value = "smollm2", env = "R1S_POLICY")]
    model: PathBuf,
    /// A PEFT LoRA adapter directory merged into the model (repeatable, merged in order).
    #[arg(long, value_name = "DIR")]
    adapter: Vec<PathBuf>,
    #[arg(long, default_value = "cpu", help = DEVICE_HELP)]
    device: String,
    #[arg(long, default_value = "f32", value_parser = parse_weights, help = WEIGHTS_HELP)]
    weights: r1s_policy::WeightFormat,
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port; the chosen one is printed).
    #[arg(long, default_value_t = 8001)]
    port: u16,
    /// The model's name in /v1/models and in responses (default: the model's file or directory name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Most choices decoded together (at least 1).
    #[arg(long, default_value_t = 32, value_parser = parse_count)]
    max_batch: usize,
    /// Most choices waiting or running; past it requests get 503 with Retry-After (at least 1).
    #[arg(long, default_value_t = 256, value_parser = parse_count)]
    max_queue: usize,
    /// Most new tokens per choice, whatever a request's max_tokens asks (as llama.cpp's -n; default:
    /// the model's context bounds it).
    #[arg(long, value_parser = parse_count)]
    max_tokens: Option<usize>,
    /// Threads for decoding (0 = all cores).
    #[arg(long, short = 'j', default_value_t = 0, env = "R1S_THREADS")]
    threads: usize,
}

pub(crate) fn serve(a: ServeArgs, g: &Globals, cancel: &r1s_core::Cancel) -> anyhow::Result<()> {
    use_threads(a.threads);
    let t = std::time::Instant::now();
    let policy = std::sync::Arc::new(load_policy(&a.model, &a.adapter, &a.device, a.weights, g)?);
    let name = a.served_model_name.clone().unwrap_or_else(|| {
        let stem = a.model.file_stem().map_or_else(|| "r1s".into(), |s| s.to_string_lossy().into_owned());
        if a.adapter.is_empty() { stem } else { format!("{stem}+adapter") }
    });
    let cfg = r1s_policy::serve::ServeConfig {
        model_name: name.clone(),
        max_rows: a.max_batch,
        max_queue: a.max_queue,
        max_new_tokens: a.max_tokens,
        ..Default::default()
    };
    let ready = t.elapsed().as_secs_f64();
    let weights = policy.weights();
    let banner = |addr: std::net::SocketAddr| {
        format!(
            "r1s policy serve: listening on http://{addr} (model {name}, weights {weights}, ready in {ready:.2} s); POST /v1/completions, \
             POST /v1/chat/completions, GET /v1/models, GET /health"
        )
    };
    crate::serve::run_server(&a.host, a.port, 2, g, cancel, banner, move |listener, stopped| async move {
        r1s_policy::serve::serve(policy, cfg, listener, stopped).await
    })?;
    if !g.quiet {
        eprintln!("r1s policy serve: stopped");
    }
    Ok(())
}
