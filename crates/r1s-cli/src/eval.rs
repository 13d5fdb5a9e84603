//! `r1s eval`: a policy with retrieval on a question set, or scores of result files.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use r1s_core::Cancel;

use crate::loaders::{load_policy, open_retriever, parse_reward};
use crate::{Globals, progress, use_threads};

#[derive(Debug, Args)]
pub(crate) struct EvalArgs {
    /// Score these results files (R1-Searcher eval_results or `r1s eval --out`) instead of running.
    #[arg(long, num_args = 1.., conflicts_with_all = ["data", "index", "retriever_url"])]
    score: Vec<PathBuf>,
    /// Questions: R1-Searcher {"idx","question","answer"} or FlashRAG {"id","question","golden_answers"} JSONL.
    #[arg(long, required_unless_present = "score")]
    data: Option<PathBuf>,
    /// Index directory to retrieve from (in-process).
    #[arg(long, required_unless_present_any = ["score", "retriever_url"])]
    index: Option<PathBuf>,
    /// A retrieval server instead: Search-R1 `http://host:port[/retrieve]` or R1-Searcher
    /// `http://host:port/queries` (`r1s serve` speaks both).
    #[arg(long, conflicts_with = "index")]
    retriever_url: Option<String>,
    /// The policy: a .gguf file, a Hugging Face directory, `smollm2`, or the URL of an
    /// OpenAI-compatible completions server (vLLM, llama.cpp: `http://host:port`).
    #[arg(long, default_value = "smollm2", env = "R1S_POLICY")]
    policy: String,
    /// A PEFT LoRA adapter (a directory with adapter_config.json and adapter_model.safetensors, as
    /// `policy train`/`sft --lora-rank` write under checkpoints/step-N/adapter) merged into the local
    /// policy; repeatable, merged in order.
    #[arg(long, value_name = "DIR")]
    adapter: Vec<PathBuf>,
    #[arg(long, default_value = "cpu", help = crate::loaders::DEVICE_HELP)]
    device: String,
    /// The `model` name sent to a completions server.
    #[arg(long, default_value = "default")]
    policy_model: String,
    /// Chat template for --prompt chat: auto (the local model's own; ChatML for a server), chatml, llama3.
    #[arg(long, default_value = "auto")]
    chat_template: String,
    /// Use the first N questions (at least 1).
    #[arg(long, value_parser = crate::loaders::parse_count)]
    limit: Option<usize>,
    /// The agent protocol: r1-searcher (R1-Searcher's prompt, tags and evaluation loop), search-r1
    /// (Search-R1's prompt, `<search>`/`<information>`/`<answer>`, its searching turns then a final one)
    /// or r1searcher-plus (R1-Searcher++: `<internal>` recalled facts, `<external>` searches,
    /// `<document>` blocks; R1-Searcher's evaluation loop).
    #[arg(long, default_value = "r1-searcher", value_parser = crate::loaders::parse_protocol)]
    protocol: r1s_agent::Protocol,
    /// Documents per query (default: 5 under r1-searcher, 3 under search-r1).
    #[arg(long, value_parser = crate::loaders::parse_count)]
    topk: Option<usize>,
    /// Turns before giving up (r1-searcher, default 9) or turns that may search before the final one
    /// (search-r1, default 4).
    #[arg(long, value_parser = crate::loaders::parse_count)]
    max_turns: Option<usize>,
    /// Prompt format: chat (the model's template with R1-Searcher's system message) or base.
    #[arg(long, default_value = "chat")]
    prompt: String,
    /// Most new tokens per turn (at least 1).
    #[arg(long, default_value_t = 512, value_parser = crate::loaders::parse_count)]
    max_new_tokens: usize,
    /// Episodes generated together (at least 1): the next question starts as soon as one ends.
    #[arg(long, default_value_t = 8, value_parser = crate::loaders::parse_count)]
    batch: usize,
    /// Run each round of turns to its end before any retrieval or next turn (as r1s did before).
    /// Without it, a local policy batches continuously: an episode's next turn joins the batch as
    /// soon as its retrieval returns, reusing its cache. Greedy results are the same either way; only
    /// the time differs. A completions server (--policy http://…) always runs in rounds.
    #[arg(long)]
    no_continuous: bool,
    /// Reward recorded per row: R1-Searcher's stage1, stage1-code, stage2, stage2-llama, or Search-R1's
    /// searchr1-em, searchr1-subem, searchr1-format, searchr1-format-v03 (on prompt + rollout).
    /// Default: stage2 under r1-searcher, searchr1-em under search-r1.
    #[arg(long, value_parser = parse_reward)]
    reward: Option<r1s_agent::Reward>,
    /// Results JSONL (R1-Searcher's eval_results shape plus r1s fields).
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Threads (0 = all cores).
    #[arg(long, short = 'j', default_value_t = 0, env = "R1S_THREADS")]
    threads: usize,
}

/// Where a stopped run's finished rows go: `x.jsonl` → `x.incomplete.jsonl`, beside it.
fn incomplete_name(p: &Path) -> PathBuf {
    let stem = p.file_stem().map_or_else(|| "results".into(), |s| s.to_string_lossy().into_owned());
    let ext = p.extension().map_or_else(String::new, |e| format!(".{}", e.to_string_lossy()));
    p.with_file_name(format!("{stem}.incomplete{ext}"))
}

/// The flags of `eval` that a run reads and `--score` does not.
const RUN_FLAGS: &[&str] = &[
    "data",
    "index",
    "retriever_url",
    "policy",
    "adapter",
    "device",
    "policy_model",
    "chat_template",
    "limit",
    "protocol",
    "topk",
    "max_turns",
    "prompt",
    "max_new_tokens",
    "batch",
    "no_continuous",
    "reward",
    "out",
];

/// Refuses the flags given for a case that does not read them ("refused, not ignored").
fn check_eval_flags(a: &EvalArgs, remote_policy: bool) -> anyhow::Result<()> {
    let refuse = |flags: Vec<String>, why: &str| -> anyhow::Result<()> {
        if flags.is_empty() {
            return Ok(());
        }
        Err(anyhow::Error::new(crate::UsageError(format!("{} {why}", flags.join(", ")))))
    };
    if !a.score.is_empty() {
        return refuse(crate::given_flags(RUN_FLAGS), "run a policy: --score only scores the files given");
    }
    if remote_policy {
        refuse(crate::given_flags(&["device"]), "is a setting of a local policy, not of a completions server")?;
    } else {
        refuse(
            crate::given_flags(&["policy_model"]),
            "is the model name sent to a completions server (--policy http://…)",
        )?;
    }
    if a.prompt == "base" {
        refuse(crate::given_flags(&["chat_template"]), "applies to --prompt chat")?;
    }
    Ok(())
}

pub(crate) fn eval(a: EvalArgs, g: &Globals, cancel: &std::sync::Arc<Cancel>) -> anyhow::Result<()> {
    use r1s_core::Progress;
    let remote_policy = a.policy.starts_with("http://") || a.policy.starts_with("https://");
    check_eval_flags(&a, remote_policy)?;
    if !a.score.is_empty() {
        for f in &a.score {
            let s = r1s_agent::score_file(f)?;
            println!("{}\n{}\n", f.display(), s.table());
        }
        return Ok(());
    }
    let Some(data) = &a.data else { anyhow::bail!("--data is required") };
    use_threads(a.threads);
    let questions = r1s_agent::read_questions(data, a.limit)?;
    if questions.is_empty() {
        return Err(r1s_agent::eval::DataError::Empty { path: data.clone(), what: "questions" }.into());
    }
    // the results file is written whole at the end, through a temporary file beside it: its
    // directory must be there before the run, not found missing after it
    if let Some(p) = &a.out
        && let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty())
    {
        crate::must_exist(dir, "directory for --out")?;
    }
    if let Some(p) = &a.out {
        crate::not_an_input(p, &[data.as_path()])?;
    }
    // a missing index is found before the model loads
    if let Some(index) = &a.index {
        crate::must_exist(index, "index directory")?;
    }
    anyhow::ensure!(
        !remote_policy || a.adapter.is_empty(),
        "--adapter merges into a local policy; a completions server loads its adapters itself"
    );
    let local = if remote_policy {
        None
    } else {
        let mut p = load_policy(Path::new(&a.policy), &a.adapter, &a.device, g)?;
        p.continuous = !a.no_continuous;
        // Ctrl-C stops the generation within a decode step, not at the end of the episodes
        p.cancel = Some(cancel.clone());
        Some(p)
    };
    use r1s_policy::chat::Template;
    let template = match a.chat_template.as_str() {
        "auto" => local.as_ref().map_or(Template::ChatMl { default_system: None }, |p| {
            Template::detect(p.tokenizer.chat_template.as_deref())
        }),
        "chatml" => Template::ChatMl { default_system: None },
        "llama3" => Template::Llama3,
        other => anyhow::bail!("unknown --chat-template {other:?} (auto, chatml, llama3)"),
    };
    let kind = r1s_agent::prompt::PromptKind::parse(&a.prompt, template)?;
    let prompts: Vec<String> = questions.iter().map(|q| kind.render_with(a.protocol, &q.question)).collect();
    let reward_kind = a.reward.unwrap_or(a.protocol.default_reward());
    let retriever = open_retriever(a.index.as_deref(), a.retriever_url.as_deref(), a.threads)?;
    let http_policy = remote_policy.then(|| r1s_agent::HttpPolicy::new(&a.policy, &a.policy_model));
    let mut cfg = r1s_agent::LoopConfig::evaluation_for(a.protocol);
    cfg.topk = a.topk.unwrap_or(cfg.topk);
    cfg.max_turns = a.max_turns.unwrap_or(cfg.max_turns);
    cfg.sampling.max_new_tokens = a.max_new_tokens;
    cfg.max_live = a.batch;
    let bars = progress::Bars::new(g);
    bars.start("eval", Some(questions.len() as u64), r1s_core::Unit::Items);
    let t = std::time::Instant::now();
    // episodes end in any order: the bar counts them, the rows are written in question order
    let mut ended: Vec<Option<r1s_agent::Trajectory>> = vec![None; questions.len()];
    let mut on_end = |i: usize, t: &r1s_agent::Trajectory| {
        bars.advance(1);
        ended[i] = Some(t.clone());
        if cancel.is_cancelled() { std::ops::ControlFlow::Break(()) } else { std::ops::ControlFlow::Continue(()) }
    };
    let ran = match (&local, &http_policy) {
        (Some(p), _) => r1s_agent::run_streaming(p, &retriever, &prompts, &cfg, &mut on_end),
        (None, Some(p)) => r1s_agent::run_streaming(p, &retriever, &prompts, &cfg, &mut on_end),
        (None, None) => anyhow::bail!("no policy"),
    };
    let stopped = cancel.is_cancelled();
    let trajectories: Vec<Option<r1s_agent::Trajectory>> = match ran {
        Ok(t) => t.into_iter().map(Some).collect(),
        Err(_) if stopped => ended,
        Err(e) => return Err(e.into()),
    };
    let finished = trajectories.iter().filter(|t| t.is_some()).count();
    let mut out = match &a.out {
        None => None,
        Some(_) if stopped && finished == 0 => None,
        // a stopped run keeps its finished rows beside the target, under a name that says so
        Some(p) => Some(
            r1s_core::fsutil::AtomicFile::create(&if stopped { incomplete_name(p) } else { p.clone() })
                .with_context(|| format!("creating {}", p.display()))?,
        ),
    };
    let mut rows = Vec::new();
    for (q, t) in questions.iter().zip(trajectories) {
        let Some(t) = t else { continue };
        let reward = r1s_agent::reward::reward_of(reward_kind, &t.prompt, &t.sol, &q.answers);
        let row = serde_json::json!({
            "question": q.question, "answer": if q.answers.len() == 1 { serde_json::json!(q.answers[0]) } else { serde_json::json!(q.answers) },
            "pred_ans": t.pred, "stop_reason_final": t.stop_reason_final, "gen_text_store": t.sol,
            "id": q.id, "retrievals": t.queries.len(), "internal": a.protocol.internal_steps(&t.sol),
            "queries": t.queries, "retrieved": t.retrieved,
            "reward": reward, "reward_kind": reward_kind, "protocol": a.protocol, "spans": t.spans, "prompt": t.prompt,
        });
        if let Some(out) = &mut out {
            writeln!(out, "{row}").with_context(|| format!("writing {}", out.temp_path().display()))?;
        }
        rows.push((t.pred, q.answers.clone(), t.sol, t.prompt, t.queries.len(), reward));
    }
    let written = out.as_ref().map(|o| o.dest().to_path_buf());
    if let Some(out) = out {
        let dest = out.dest().to_path_buf();
        out.commit().with_context(|| format!("writing {}", dest.display()))?;
        if !stopped {
            // the rows a stopped run of the same output kept are superseded
            let _ = std::fs::remove_file(incomplete_name(&dest));
        }
    }
    if stopped {
        bars.finish("stopped");
        anyhow::bail!(
            "after {} of {} questions{}",
            rows.len(),
            questions.len(),
            written.map_or(String::new(), |p| format!(": their rows are in {} (no summary)", p.display()))
        );
    }
    bars.finish("done");
    let s = r1s_agent::Summary::of(rows.iter().map(|(pred, golds, sol, prompt, searches, reward)| r1s_agent::Row {
        pred,
        golds,
        sol: Some(sol),
        searches: Some(*searches),
        prompt,
        reward: Some(*reward),
        protocol: a.protocol,
    }));
    let noun = if rows.len() == 1 { "question" } else { "questions" };
    println!("{}\n{} {noun} in {:.1} s", s.table(), rows.len(), t.elapsed().as_secs_f64());
    Ok(())
}
