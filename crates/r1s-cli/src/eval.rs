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
    #[arg(long, required_unless_present_any = ["score", "judge_only"])]
    data: Option<PathBuf>,
    /// Index directory to retrieve from (in-process).
    #[arg(long, required_unless_present_any = ["score", "retriever_url", "judge_only"])]
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
    #[arg(long, default_value = "f32", value_parser = crate::loaders::parse_weights, help = crate::loaders::WEIGHTS_HELP)]
    weights: r1s_policy::WeightFormat,
    /// The `model` name sent to a completions server.
    #[arg(long, default_value = "default")]
    policy_model: String,
    /// Chat template for --prompt chat: auto (the local model's own; ChatML for a server), chatml, llama3,
    /// llama3.1 (Llama 3's with 3.1's dated system turn).
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
    /// Turns before giving up (r1-searcher, default 9: a search at that turn gives up with "I don't
    /// know.", as R1-Searcher's evaluation script discards its tenth generation) or turns that may
    /// search before the final one (search-r1, default 4).
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
    /// Samples per question (at least 1): with k above 1 the table is Avg@k (every figure the mean over
    /// the k samples) and a pass@k line follows (a question counts when any sample is right; F1 its best
    /// sample's). Needs --temperature above 0; sample j runs with seed --seed + j.
    #[arg(long, default_value_t = 1, value_parser = crate::loaders::parse_count)]
    samples: usize,
    /// Sampling temperature (0: greedy, R1-Searcher's evaluation).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling (R1-Searcher's evaluation script: 0.95); used when --temperature is above 0.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// The first sample's seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Reward recorded per row: R1-Searcher's stage1, stage1-code, stage2, stage2-llama, or Search-R1's
    /// searchr1-em, searchr1-subem, searchr1-format, searchr1-format-v03 (on prompt + rollout), or
    /// verl's ports verl-searchr1-em, verl-searchr1-subem (on the rollout).
    /// Default: stage2 under r1-searcher, searchr1-em under search-r1.
    #[arg(long, value_parser = parse_reward)]
    reward: Option<r1s_agent::Reward>,
    /// Results JSONL (R1-Searcher's eval_results shape plus r1s fields; with --judge-only, the judged
    /// rows: each file's own fields plus judge, judge_reply, judge_model).
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Judge each row with an LLM as R1-Searcher reports its accuracy (its judge prompt, one user
    /// message, max_tokens 1024): the URL of an OpenAI-compatible chat endpoint (`https://api.openai.com`,
    /// a vLLM server, `http://host:port`, or a full `…/v1/chat/completions`).
    #[arg(long, value_name = "URL")]
    judge: Option<String>,
    /// Judge these results files (R1-Searcher's released eval_results or `r1s eval --out`) instead of
    /// running a policy; needs --judge. With --out (one file; it may be the file itself) the judged rows
    /// are written.
    #[arg(long, num_args = 1.., value_name = "RESULTS", requires = "judge", conflicts_with_all = ["score", "data", "index", "retriever_url"])]
    judge_only: Vec<PathBuf>,
    /// The judge's model (R1-Searcher's: gpt-4o-mini).
    #[arg(long, default_value = r1s_agent::judge::DEFAULT_JUDGE_MODEL)]
    judge_model: String,
    /// The environment variable that holds the judge's API key (sent as a Bearer token; never printed,
    /// logged or cached). Unset or empty: no key is sent.
    #[arg(long, default_value = "OPENAI_API_KEY", value_name = "VAR")]
    judge_key_env: String,
    /// Judge requests in flight at once (at least 1).
    #[arg(long, default_value_t = 8, value_parser = crate::loaders::parse_count)]
    judge_concurrency: usize,
    /// Where judge replies are kept, keyed by the model and the exact request: a rerun sends no
    /// request already answered (default: $R1S_HOME/judge-cache).
    #[arg(long, value_name = "DIR")]
    judge_cache: Option<PathBuf>,
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
    "weights",
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
    "samples",
    "temperature",
    "top_p",
    "seed",
];

/// The flags of `eval` that set the judge (read only with --judge).
const JUDGE_FLAGS: &[&str] = &["judge_model", "judge_key_env", "judge_concurrency", "judge_cache"];

/// The judge of `--judge URL` with its flags, or `None`.
fn judge_of(a: &EvalArgs) -> Option<r1s_agent::judge::Judge> {
    let url = a.judge.as_deref()?;
    let cache = a.judge_cache.clone().unwrap_or_else(|| r1s_core::paths::r1s_home().join("judge-cache"));
    Some(r1s_agent::judge::Judge {
        api_key: std::env::var(&a.judge_key_env).ok().filter(|k| !k.is_empty()),
        cache: Some(cache),
        concurrency: a.judge_concurrency,
        ..r1s_agent::judge::Judge::new(url, &a.judge_model)
    })
}

/// Judges result rows in place: each gets `judge` (true, false, or null when no verdict came),
/// `judge_reply` (the judge's words) or `judge_error`, and `judge_model`. A row that cannot be judged
/// (no question or gold answer) is an error naming its line in `path`.
fn judge_rows(
    judge: &r1s_agent::judge::Judge,
    path: &Path,
    rows: &mut [(usize, serde_json::Value)],
    g: &Globals,
    cancel: &Cancel,
) -> anyhow::Result<()> {
    use r1s_core::Progress;
    let mut messages = Vec::with_capacity(rows.len());
    for (line, v) in rows.iter() {
        let m = r1s_agent::judge::row_message(v).map_err(|reason| r1s_agent::eval::DataError::Bad {
            path: path.to_path_buf(),
            line: *line,
            reason,
        })?;
        messages.push(m);
    }
    let bars = progress::Bars::new(g);
    bars.start("judge", Some(messages.len() as u64), r1s_core::Unit::Items);
    let judged = judge.judge_all(&messages, cancel, &|_| bars.advance(1))?;
    bars.finish("judged");
    // requests that failed for good are counted apart from replies that are no verdict, and said
    if let Some(first) = judged.iter().find_map(|j| j.error.as_deref()) {
        let failed = judged.iter().filter(|j| j.error.is_some()).count();
        log::warn!(
            "judge {}: {failed} of {} requests failed (rows without a verdict); the first: {first}",
            judge.url,
            judged.len()
        );
    }
    for ((_, v), j) in rows.iter_mut().zip(judged) {
        v["judge"] = j.verdict.map_or(serde_json::Value::Null, serde_json::Value::Bool);
        match (j.reply, j.error) {
            (Some(reply), _) => v["judge_reply"] = reply.into(),
            (None, Some(e)) => v["judge_error"] = e.into(),
            (None, None) => {}
        }
        v["judge_model"] = judge.model.clone().into();
    }
    Ok(())
}

/// `--judge-only`: judges each results file, prints its summary with the judge column, and writes the
/// judged rows to `--out` (whole or not at all, through a temporary file: `--out` may be the input).
fn judge_files(a: &EvalArgs, g: &Globals, cancel: &Cancel) -> anyhow::Result<()> {
    let Some(judge) = judge_of(a) else { anyhow::bail!("--judge-only needs --judge URL") };
    for f in &a.judge_only {
        crate::must_exist(f, "results file")?;
        let mut rows = r1s_agent::eval::read_rows(f)?;
        if rows.is_empty() {
            return Err(r1s_agent::eval::DataError::Empty { path: f.clone(), what: "result rows" }.into());
        }
        judge_rows(&judge, f, &mut rows, g, cancel)?;
        if let Some(out) = &a.out {
            let mut file =
                r1s_core::fsutil::AtomicFile::create(out).with_context(|| format!("creating {}", out.display()))?;
            for (_, v) in &rows {
                writeln!(file, "{v}").with_context(|| format!("writing {}", file.temp_path().display()))?;
            }
            file.commit().with_context(|| format!("writing {}", out.display()))?;
        }
        let s = r1s_agent::eval::score_rows(f, &rows)?;
        println!("{}\n{}\n", f.display(), s.table());
    }
    Ok(())
}

/// Refuses the flags given for a case that does not read them ("refused, not ignored").
fn check_eval_flags(a: &EvalArgs, remote_policy: bool) -> anyhow::Result<()> {
    let refuse = |flags: Vec<String>, why: &str| -> anyhow::Result<()> {
        if flags.is_empty() {
            return Ok(());
        }
        Err(anyhow::Error::new(crate::UsageError(format!("{} {why}", flags.join(", ")))))
    };
    if a.judge.is_none() {
        refuse(crate::given_flags(JUDGE_FLAGS), "set the LLM judge: give --judge URL")?;
    }
    if let Some(url) = a.judge.as_deref().filter(|u| !u.starts_with("http://") && !u.starts_with("https://")) {
        return refuse(vec![format!("--judge {url}")], "is not an http:// or https:// URL");
    }
    if !a.score.is_empty() {
        refuse(
            crate::given_flags(&["judge"]),
            "judges rows: --judge-only judges results files, --score only scores them",
        )?;
        return refuse(crate::given_flags(RUN_FLAGS), "run a policy: --score only scores the files given");
    }
    if !a.judge_only.is_empty() {
        let run: Vec<&str> = RUN_FLAGS.iter().copied().filter(|f| *f != "out").collect();
        refuse(crate::given_flags(&run), "run a policy: --judge-only only judges the files given")?;
        if a.out.is_some() && a.judge_only.len() > 1 {
            return Err(anyhow::Error::new(crate::UsageError(
                "--out takes the judged rows of one file: give --judge-only one file".into(),
            )));
        }
        return Ok(());
    }
    if remote_policy {
        refuse(
            crate::given_flags(&["device", "weights"]),
            "is a setting of a local policy, not of a completions server",
        )?;
    } else {
        refuse(
            crate::given_flags(&["policy_model"]),
            "is the model name sent to a completions server (--policy http://…)",
        )?;
    }
    if a.samples > 1 && a.temperature <= 0.0 {
        return refuse(
            vec!["--samples".into()],
            "above 1 needs --temperature above 0 (greedy samples are all the same)",
        );
    }
    if !(a.temperature >= 0.0 && a.temperature.is_finite() && a.top_p > 0.0 && a.top_p <= 1.0) {
        return refuse(
            vec!["--temperature, --top-p".into()],
            "must be a temperature of at least 0 and a top-p in (0, 1]",
        );
    }
    if a.temperature == 0.0 {
        refuse(crate::given_flags(&["top_p", "seed"]), "apply to sampling: give --temperature above 0")?;
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
    if !a.judge_only.is_empty() {
        return judge_files(&a, g, cancel);
    }
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
        let mut p = load_policy(Path::new(&a.policy), &a.adapter, &a.device, a.weights, g)?;
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
        "llama3.1" => Template::Llama31,
        other => anyhow::bail!("unknown --chat-template {other:?} (auto, chatml, llama3, llama3.1)"),
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
    cfg.sampling.temperature = a.temperature;
    cfg.sampling.top_p = if a.temperature > 0.0 { a.top_p } else { 1.0 };
    let n = questions.len();
    let bars = progress::Bars::new(g);
    bars.start("eval", Some((n * a.samples) as u64), r1s_core::Unit::Items);
    let t = std::time::Instant::now();
    // sample j of every question, then sample j + 1: each a run with its own seed (a completions
    // server seeds a request, not each prompt of it)
    let mut runs: Vec<Vec<Option<r1s_agent::Trajectory>>> = Vec::new();
    let mut stopped = false;
    for j in 0..a.samples {
        cfg.sampling.seed = a.seed.wrapping_add(j as u64);
        // episodes end in any order: the bar counts them, the rows are written in question order
        let mut ended: Vec<Option<r1s_agent::Trajectory>> = vec![None; n];
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
        stopped = cancel.is_cancelled();
        runs.push(match ran {
            Ok(t) => t.into_iter().map(Some).collect(),
            Err(_) if stopped => ended,
            Err(e) => return Err(e.into()),
        });
        if stopped {
            break;
        }
    }
    let finished = runs.iter().flatten().filter(|t| t.is_some()).count();
    let mut out = match &a.out {
        None => None,
        Some(_) if stopped && finished == 0 => None,
        // a stopped run keeps its finished rows beside the target, under a name that says so
        Some(p) => Some(
            r1s_core::fsutil::AtomicFile::create(&if stopped { incomplete_name(p) } else { p.clone() })
                .with_context(|| format!("creating {}", p.display()))?,
        ),
    };
    // the results lines, and the question each answers
    let mut lines = Vec::new();
    let mut of_question = Vec::new();
    let qs = &questions;
    for (j, (i, q, t)) in runs
        .into_iter()
        .enumerate()
        .flat_map(|(j, run)| run.into_iter().enumerate().map(move |(i, t)| (j, (i, &qs[i], t))))
    {
        let Some(t) = t else { continue };
        let reward = r1s_agent::reward::reward_of(reward_kind, &t.prompt, &t.sol, &q.answers);
        let mut row = serde_json::json!({
            "question": q.question, "answer": if q.answers.len() == 1 { serde_json::json!(q.answers[0]) } else { serde_json::json!(q.answers) },
            "pred_ans": t.pred, "stop_reason_final": t.stop_reason_final, "gen_text_store": t.sol,
            "id": q.id, "retrievals": t.queries.len(), "internal": a.protocol.internal_steps(&t.sol),
            "queries": t.queries, "retrieved": t.retrieved,
            "reward": reward, "reward_kind": reward_kind, "protocol": a.protocol, "spans": t.spans, "prompt": t.prompt,
        });
        if a.samples > 1 {
            row["sample"] = j.into();
        }
        // which weights the decode steps used, when not the model's own f32
        if a.weights != r1s_policy::WeightFormat::F32 {
            row["weights"] = a.weights.to_string().into();
        }
        lines.push((lines.len() + 1, row));
        of_question.push(i);
    }
    // the judge reads the finished rows; a stopped run's rows are kept unjudged, and so are a
    // finished run's when the judge fails or is stopped (they are written first, then the error)
    let label = a.out.clone().unwrap_or_else(|| PathBuf::from("results"));
    let judged = match judge_of(&a).filter(|_| !stopped) {
        Some(judge) => judge_rows(&judge, &label, &mut lines, g, cancel),
        None => Ok(()),
    };
    if let Some(out) = &mut out {
        for (_, row) in &lines {
            writeln!(out, "{row}").with_context(|| format!("writing {}", out.temp_path().display()))?;
        }
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
    judged.with_context(|| {
        format!(
            "judging (the rows{} are unjudged)",
            written.as_ref().map_or(String::new(), |p| format!(" in {}", p.display()))
        )
    })?;
    if stopped {
        bars.finish("stopped");
        anyhow::bail!(
            "after {} of {} episodes{}",
            lines.len(),
            n * a.samples,
            written.map_or(String::new(), |p| format!(": their rows are in {} (no summary)", p.display()))
        );
    }
    bars.finish("done");
    // the summary reads the rows as written, as `--score` of the file does
    let parsed = r1s_agent::eval::parse_rows(&label, &lines)?;
    let s = r1s_agent::Summary::of(parsed.iter().map(|r| r.row()));
    let noun = if n == 1 { "question" } else { "questions" };
    if a.samples == 1 {
        println!("{}\n{n} {noun} in {:.1} s", s.table(), t.elapsed().as_secs_f64());
        return Ok(());
    }
    let mut by_question: Vec<Vec<r1s_agent::Row<'_>>> = vec![Vec::new(); n];
    for (r, &i) in parsed.iter().zip(&of_question) {
        by_question[i].push(r.row());
    }
    let pass = r1s_agent::eval::PassAtK::of(&by_question);
    println!(
        "{}  avg@{k}\n{}\n(avg@{k} above, pass@{k} below) {n} {noun} x {k} samples in {:.1} s",
        s.table(),
        pass.line(),
        t.elapsed().as_secs_f64(),
        k = a.samples
    );
    Ok(())
}
