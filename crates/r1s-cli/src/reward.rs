//! `r1s reward` (score a JSONL file) and `r1s serve-reward` (OpenRLHF's remote reward model).

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use r1s_core::Cancel;

use crate::Globals;
use crate::loaders::parse_reward;

#[derive(Debug, Args)]
pub(crate) struct RewardArgs {
    /// JSON lines: Search-R1's {"solution_str", "golden_answers"}, or `r1s eval` / R1-Searcher results
    /// ({"gen_text_store", "answer"}, with r1s's "prompt" when present).
    input: PathBuf,
    /// The reward: stage1, stage1-code, stage2, stage2-llama (R1-Searcher; on the rollout),
    /// searchr1-em, searchr1-subem, searchr1-format, searchr1-format-v03 (Search-R1; on prompt +
    /// rollout), verl-searchr1-em, verl-searchr1-subem (verl's port of Search-R1's; on the rollout)
    /// or r1searcher-plus (R1-Searcher++; a group reward: the lines of one question, by their
    /// "question" or the question their prompt holds, and by their "step" and "group" when they have
    /// them, are scored together).
    #[arg(long, value_parser = parse_reward)]
    reward: r1s_agent::Reward,
    #[command(flatten)]
    group: GroupArgs,
    /// Each input line with its "reward" added (default: standard output).
    #[arg(long, short)]
    out: Option<PathBuf>,
}

/// The group reward's settings (r1searcher-plus only).
#[derive(Debug, Args)]
pub(crate) struct GroupArgs {
    /// The group reward's cap η (r1searcher-plus) [default: 2].
    #[arg(long)]
    group_eta: Option<f64>,
    /// σ's delta degrees of freedom, 0 (population) or 1 (sample) (r1searcher-plus) [default: 0].
    #[arg(long)]
    group_ddof: Option<u32>,
    /// Which tied correct rollouts at the fewest searches earn the group reward: all or first
    /// (r1searcher-plus) [default: all].
    #[arg(long, value_parser = ["all", "first"])]
    group_ties: Option<String>,
}

impl GroupArgs {
    /// The settings, refused for a reward that is not a group reward (they would change nothing).
    pub(crate) fn settings(&self, kind: r1s_agent::Reward) -> anyhow::Result<r1s_agent::plus::GroupReward> {
        let given = self.group_eta.is_some() || self.group_ddof.is_some() || self.group_ties.is_some();
        anyhow::ensure!(
            !given || kind.is_group(),
            crate::UsageError(format!(
                "--group-eta/--group-ddof/--group-ties set the group reward of r1searcher-plus; {} has none",
                serde_json::json!(kind)
            ))
        );
        let d = r1s_agent::plus::GroupReward::default();
        let g = r1s_agent::plus::GroupReward {
            eta: self.group_eta.unwrap_or(d.eta),
            ddof: self.group_ddof.unwrap_or(d.ddof),
            ties: match self.group_ties.as_deref() {
                Some("first") => r1s_agent::plus::Ties::First,
                _ => r1s_agent::plus::Ties::All,
            },
        };
        g.check().map_err(|e| anyhow::Error::new(crate::UsageError(e)))?;
        Ok(g)
    }
}

/// The prompt, the rollout and the gold answers of one line.
fn parts(v: &serde_json::Value, kind: r1s_agent::Reward) -> Result<(String, String, Vec<String>), String> {
    if v["solution_str"].is_string() && !v["golden_answers"].is_array() && !v["golden_answers"].is_string() {
        // Search-R1's lines carry the model's extracted `answer`: never a gold answer
        return Err("a \"solution_str\" line needs \"golden_answers\" (a string or a list of strings)".into());
    }
    let golds = r1s_agent::eval::gold_answers(v)
        .ok_or("no \"golden_answers\" or \"answer\" (a string or a list of strings)")?;
    if let Some(seq) = v["solution_str"].as_str() {
        // the whole sequence: split where the rollout starts when the prompt is recognisable
        let at = r1s_agent::reward_server::find_question(seq).map_or(0, |(_, at)| at);
        return Ok((seq[..at].to_owned(), seq[at..].to_owned(), golds));
    }
    if let Some(sol) = v["gen_text_store"].as_str() {
        let prompt = match v["prompt"].as_str() {
            Some(p) => p,
            // Search-R1's rewards count the prompt's example answer and check the format after it
            None if kind.reads_prompt() => {
                return Err("no \"prompt\": Search-R1's rewards read prompt + rollout (r1s eval writes both; \
                            give Search-R1 lines as \"solution_str\")"
                    .into());
            }
            None => "",
        };
        return Ok((prompt.to_owned(), sol.to_owned(), golds));
    }
    Err("no \"solution_str\" or \"gen_text_store\" string".into())
}

/// One scored line: its JSON, prompt, rollout, gold answers and (under a group reward) its question.
struct Line {
    value: serde_json::Value,
    prompt: String,
    sol: String,
    golds: Vec<String>,
    question: Option<String>,
}

/// The group a line belongs to under a group reward: its question (its "question", else the one its
/// prompt holds), and, when the line has them (as `policy train`'s rollouts.jsonl), its "step" and
/// "group", so that the same question rolled out at two steps makes two groups.
fn group_of(v: &serde_json::Value, prompt: &str, sol: &str) -> Option<String> {
    let question = match v["question"].as_str() {
        Some(q) => r1s_agent::reward_server::question_key(q),
        None => {
            let text = format!("{prompt}{sol}");
            r1s_agent::reward_server::find_question(&text).map(|(q, _)| r1s_agent::reward_server::question_key(q))?
        }
    };
    Some(format!("{}\u{1f}{}\u{1f}{question}", v["step"], v["group"]))
}

pub(crate) fn reward(a: RewardArgs, g: &Globals, cancel: &Cancel) -> anyhow::Result<()> {
    crate::must_exist(&a.input, "input file")?;
    if let Some(out) = &a.out {
        crate::not_an_input(out, &[a.input.as_path()])?;
    }
    let group = a.group.settings(a.reward)?;
    let file = std::fs::File::open(&a.input).with_context(|| format!("opening {}", a.input.display()))?;
    // every line first: a group reward scores the lines of one question together
    let mut lines: Vec<Line> = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        anyhow::ensure!(
            !cancel.is_cancelled(),
            "cancelled at line {} of {}: nothing written",
            i + 1,
            a.input.display()
        );
        let line = line.with_context(|| format!("{}: line {}", a.input.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| {
            anyhow::Error::new(r1s_agent::eval::DataError::Bad { path: a.input.clone(), line: i + 1, reason })
        };
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        let (prompt, sol, golds) = parts(&v, a.reward).map_err(bad)?;
        let key = if a.reward.is_group() {
            Some(group_of(&v, &prompt, &sol).ok_or_else(|| {
                bad("no \"question\" and no question in the prompt: a group reward scores a question's lines together"
                    .into())
            })?)
        } else {
            None
        };
        lines.push(Line { value: v, prompt, sol, golds, question: key });
    }
    if lines.is_empty() {
        return Err(r1s_agent::eval::DataError::Empty { path: a.input.clone(), what: "lines to score" }.into());
    }
    let mut rewards = vec![0.0; lines.len()];
    // groups in order of their first line (a per-rollout reward: one line each)
    let groups = r1s_agent::reward::group_indices(lines.iter().map(|l| l.question.as_deref()));
    for members in &groups {
        let rollouts: Vec<(&str, &str)> =
            members.iter().map(|&i| (lines[i].prompt.as_str(), lines[i].sol.as_str())).collect();
        let scored = r1s_agent::reward::score_group(a.reward, &group, &rollouts, &lines[members[0]].golds);
        for (&i, r) in members.iter().zip(scored) {
            rewards[i] = r;
        }
    }
    let n = lines.len();
    let sum: f64 = rewards.iter().sum();
    let emit = |out: &mut dyn Write| -> std::io::Result<()> {
        for (Line { value: mut v, .. }, r) in lines.into_iter().zip(rewards) {
            if let Some(obj) = v.as_object_mut() {
                obj.insert("reward".into(), r.into());
            }
            writeln!(out, "{v}")?;
        }
        out.flush()
    };
    match &a.out {
        // through a temporary file beside it: a reader never sees a part, two writers never mix
        Some(p) => {
            let mut f = r1s_core::fsutil::AtomicFile::create(p).with_context(|| format!("creating {}", p.display()))?;
            emit(&mut crate::StopOnCancel(&mut f, cancel)).with_context(|| format!("writing {}", p.display()))?;
            f.commit().with_context(|| format!("writing {}", p.display()))?;
        }
        None => emit(&mut crate::StopOnCancel(std::io::BufWriter::new(std::io::stdout().lock()), cancel))?,
    }
    if !g.quiet {
        eprintln!("{n} lines scored with {}: mean reward {:.4}", serde_json::json!(a.reward), sum / n.max(1) as f64);
    }
    Ok(())
}

#[derive(Debug, Args)]
pub(crate) struct ServeRewardArgs {
    /// Questions with their gold answers (R1-Searcher {"question","answer"} or FlashRAG
    /// {"question","golden_answers"} JSONL): a text's question is looked up here.
    #[arg(long)]
    data: PathBuf,
    /// The reward (as `r1s reward --reward`). Under the group reward r1searcher-plus, the texts of one
    /// request that hold the same question are one group.
    #[arg(long, default_value = "stage2", value_parser = parse_reward)]
    reward: r1s_agent::Reward,
    #[command(flatten)]
    group: GroupArgs,
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port, printed at start-up).
    #[arg(long, default_value_t = 5001)]
    port: u16,
    /// Most texts in one request (422 above).
    #[arg(long, default_value_t = 8192)]
    max_texts: usize,
    /// Largest request body in MiB (422 above).
    #[arg(long, default_value_t = 64)]
    max_body_mib: usize,
    /// Most requests answered at once; more get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    max_in_flight: usize,
}

pub(crate) fn serve_reward(a: ServeRewardArgs, g: &Globals, cancel: &Cancel) -> anyhow::Result<()> {
    crate::must_exist(&a.data, "question file")?;
    let questions = r1s_agent::read_questions(&a.data, None)?;
    // as `eval`: a reward server with no questions would answer every request 422
    if questions.is_empty() {
        return Err(r1s_agent::eval::DataError::Empty { path: a.data.clone(), what: "questions" }.into());
    }
    let cfg = r1s_agent::reward_server::RewardServerConfig {
        reward: a.reward,
        group: a.group.settings(a.reward)?,
        max_body_bytes: a.max_body_mib << 20,
        max_texts: a.max_texts,
        max_in_flight: a.max_in_flight,
    };
    let n = questions.len();
    let banner = |addr: std::net::SocketAddr| {
        format!(
            "r1s serve-reward: listening on http://{addr} ({n} questions, reward {}); POST /get_reward, GET /health",
            serde_json::json!(a.reward)
        )
    };
    crate::serve::run_server(&a.host, a.port, 2, g, cancel, banner, move |listener, stopped| async move {
        r1s_agent::reward_server::serve_rewards(&questions, cfg, listener, stopped).await
    })?;
    if !g.quiet {
        eprintln!("r1s serve-reward: stopped");
    }
    Ok(())
}
