//! `r1s policy train | sft | plot | task`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use r1s_core::Cancel;
use r1s_train::config::LoraConfig;

use crate::loaders::{DEVICE_HELP, open_retriever, parse_protocol, parse_weights};
use crate::{Globals, progress, use_threads};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The run's TOML file ([model], [retriever], [train], [eval], [[stage]]; see ARCHITECTURE.md).
    #[arg(long)]
    config: PathBuf,
    /// Continue from the newest checkpoint under the run's output directory.
    #[arg(long)]
    resume: bool,
    /// Start from this model instead of [model].init (GGUF, HF directory or r1s checkpoint).
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// Override train.out.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override train.seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Override the steps of every stage (a quick try).
    #[arg(long)]
    steps: Option<usize>,
    /// Run only these stages (by name; repeatable).
    #[arg(long)]
    stage: Vec<String>,
    /// Skip the held-out evaluations of [eval].
    #[arg(long)]
    no_eval: bool,
    /// Override the prompts per step of every stage.
    #[arg(long)]
    prompts_per_step: Option<usize>,
    /// Override the rollouts per prompt of every stage.
    #[arg(long)]
    rollouts_per_prompt: Option<usize>,
    /// Override train.lr.
    #[arg(long)]
    lr: Option<f64>,
    /// Override train.train_blocks.
    #[arg(long)]
    train_blocks: Option<usize>,
    /// Override model.device: cpu, cuda / cuda:N (--features cuda), tch-cpu / tch-cuda / tch-cuda:N
    /// (--features tch). A resumed run may change it.
    #[arg(long)]
    device: Option<String>,
    /// Override model.weights: the weights rollouts and held-out evaluations decode with, f32, bf16
    /// or q8_0 (packed copies, 2 or 1.125 bytes per weight; cpu device only). The loss, its old and
    /// reference log-probs and the updates keep f32; every update packs the trained blocks again.
    /// The metrics log how far the rollouts' log-probs are from the trainer's (rollout_kl,
    /// rollout_ratio_*).
    #[arg(long, value_parser = parse_weights)]
    weights: Option<r1s_policy::WeightFormat>,
    /// Rollouts in rounds of turns, every turn waiting for the slowest episode
    /// (train.continuous_batching = false). Each mode is reproducible, but they sample differently
    /// for the same seed: continuously batched episodes each draw from their own stream, a round
    /// draws one stream across its batch.
    #[arg(long)]
    no_continuous: bool,
    #[command(flatten)]
    lora: LoraArgs,
    /// Threads (0 = all cores).
    #[arg(long, short = 'j', default_value_t = 0, env = "R1S_THREADS")]
    threads: usize,
}

/// LoRA flags of `policy train` and `policy sft`.
#[derive(Debug, Args)]
pub struct LoraArgs {
    /// Train LoRA adapters of this rank on the trainable blocks' projections instead of the blocks.
    #[arg(long)]
    lora_rank: Option<usize>,
    /// LoRA alpha (scale alpha/rank; default: twice the rank).
    #[arg(long, requires = "lora_rank")]
    lora_alpha: Option<f64>,
}

impl LoraArgs {
    /// `current` with the flags applied.
    fn apply(&self, current: Option<LoraConfig>) -> Option<LoraConfig> {
        let Some(rank) = self.lora_rank else { return current };
        let alpha = self.lora_alpha.unwrap_or(2.0 * rank as f64);
        Some(LoraConfig { rank, alpha, ..current.unwrap_or_default() })
    }
}

#[derive(Debug, Args)]
pub struct SftArgs {
    /// Trajectories: JSON lines with "prompt"/"question" and "sol"/"gen_text_store" (optional "spans").
    #[arg(long)]
    data: PathBuf,
    /// The model to start from (GGUF, HF directory, r1s checkpoint, or `smollm2`).
    #[arg(long, default_value = "smollm2")]
    init_from: PathBuf,
    /// Output directory (checkpoints/, metrics.jsonl).
    #[arg(long)]
    out: PathBuf,
    /// Train the last K blocks (0: all).
    #[arg(long, default_value_t = 0)]
    train_blocks: usize,
    #[command(flatten)]
    lora: LoraArgs,
    #[arg(long, default_value_t = 1e-5)]
    lr: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Examples per optimizer step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Examples per forward/backward pass.
    #[arg(long, default_value_t = 4)]
    micro_batch: usize,
    #[arg(long, default_value_t = 2048)]
    max_len: usize,
    /// Checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 0)]
    save_every: usize,
    /// Complete checkpoints kept (0: all).
    #[arg(long, default_value_t = 2)]
    keep_checkpoints: usize,
    /// How prompts are rebuilt for lines that only carry a question: chat or base.
    #[arg(long, default_value = "chat")]
    prompt: String,
    /// The trajectories' protocol: r1-searcher, search-r1 or r1searcher-plus (`policy task
    /// --protocol` writes it on each line; a line of another protocol is refused).
    #[arg(long, default_value = "r1-searcher", value_parser = parse_protocol)]
    protocol: r1s_agent::Protocol,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value = "cpu", help = DEVICE_HELP)]
    device: String,
    /// Continue from the newest checkpoint under --out.
    #[arg(long)]
    resume: bool,
    #[arg(long, short = 'j', default_value_t = 0, env = "R1S_THREADS")]
    threads: usize,
}

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// metrics.jsonl of `r1s policy train` or `r1s policy sft` (several: drawn one after the other,
    /// or over each other with --overlay).
    #[arg(required = true)]
    metrics: Vec<PathBuf>,
    /// Draw the files as runs over each other on the same steps (comparing runs), each named by
    /// its directory or by --label.
    #[arg(long)]
    overlay: bool,
    /// With --overlay: the runs' names, one per file in order.
    #[arg(long, requires = "overlay")]
    label: Vec<String>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "r1s training")]
    title: String,
}

#[derive(Debug, Args)]
pub struct TaskArgs {
    /// The corpus the questions come from.
    #[arg(long, default_value = "corpora/sample")]
    corpus: PathBuf,
    /// Its index (for the cold-start trajectories' retrievals).
    #[arg(long, default_value = "indexes/sample")]
    index: PathBuf,
    /// Output directory: train.jsonl, test.jsonl, sft.jsonl.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 400)]
    train: usize,
    #[arg(long, default_value_t = 64)]
    test: usize,
    /// Cold-start trajectories (from questions in neither split).
    #[arg(long, default_value_t = 128)]
    sft: usize,
    /// Share of the cold-start trajectories that search (the others answer directly).
    #[arg(long, default_value_t = 0.5, value_parser = crate::loaders::parse_share)]
    search_share: f64,
    /// Documents per query in the cold-start trajectories.
    #[arg(long, default_value_t = 3, value_parser = crate::loaders::parse_count)]
    topk: usize,
    /// The cold-start trajectories' protocol: r1-searcher, search-r1 or r1searcher-plus (whose
    /// direct answers recall the described sentence in an `<internal>` step).
    #[arg(long, default_value = "r1-searcher", value_parser = parse_protocol)]
    protocol: r1s_agent::Protocol,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, short = 'j', default_value_t = 0, env = "R1S_THREADS")]
    threads: usize,
}

fn step_line(row: &serde_json::Value) -> String {
    let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
    match row["kind"].as_str() {
        Some("sft") => format!(
            "sft step {:>4}  nll/token {:.3}  grad {:.2}  {:.1} s",
            row["step"],
            f("token_nll"),
            f("grad_norm"),
            f("step_s")
        ),
        _ => {
            format!(
                "{} step {:>4}  reward {:+.3}  RC {:.2}  retrieval {:.2}  format-bad {:.2}  F1 {:.3}  KL {:.4}  entropy {:.3}  clip {:.3}  {:.1} s{}",
                row["stage"].as_str().unwrap_or(""),
                row["step"],
                f("reward_mean"),
                f("rc"),
                f("retrieval_rate"),
                f("format_bad"),
                f("f1"),
                f("kl"),
                f("entropy"),
                f("clip_frac"),
                f("step_s"),
                if row["mem_paths"].is_number() {
                    format!("  memorised {} paths, NLL {:.3}", row["mem_paths"], f("mem_nll"))
                } else {
                    String::new()
                },
            ) + &if row["rollout_ratio_mean"].is_number() {
                format!(
                    "  rollout/trainer ratio {:.3} [{:.2}, {:.2}]",
                    f("rollout_ratio_mean"),
                    f("rollout_ratio_min"),
                    f("rollout_ratio_max")
                )
            } else {
                String::new()
            }
        }
    }
}

pub fn train(a: TrainArgs, g: &Globals, cancel: &Cancel) -> anyhow::Result<()> {
    use_threads(a.threads);
    let mut cfg = r1s_train::TrainConfig::read(&a.config)?;
    if let Some(p) = a.init_from {
        cfg.model.init = p;
    }
    if let Some(o) = a.out {
        cfg.train.out = o;
    }
    if let Some(s) = a.seed {
        cfg.train.seed = s;
    }
    if let Some(lr) = a.lr {
        cfg.train.lr = lr;
        for s in &mut cfg.stages {
            s.lr = None;
        }
    }
    if let Some(k) = a.train_blocks {
        cfg.train.train_blocks = k;
    }
    if let Some(d) = a.device {
        cfg.model.device = d;
    }
    if let Some(w) = a.weights {
        cfg.model.weights = w;
    }
    // a device this build or machine lacks is refused before the index and the model load
    r1s_policy::device(&cfg.model.device)?;
    cfg.train.lora = a.lora.apply(cfg.train.lora.take());
    if !a.stage.is_empty() {
        let names: Vec<String> = cfg.stages.iter().map(|s| s.name.clone()).collect();
        cfg.stages.retain(|s| a.stage.contains(&s.name));
        anyhow::ensure!(
            !cfg.stages.is_empty(),
            "no stage named {:?} in {} (it has {names:?})",
            a.stage,
            a.config.display()
        );
    }
    if a.no_eval {
        cfg.eval = None;
    }
    if a.no_continuous {
        cfg.train.continuous_batching = false;
    }
    for s in &mut cfg.stages {
        s.steps = a.steps.unwrap_or(s.steps);
        s.prompts_per_step = a.prompts_per_step.unwrap_or(s.prompts_per_step);
        s.rollouts_per_prompt = a.rollouts_per_prompt.unwrap_or(s.rollouts_per_prompt);
    }
    cfg.check().map_err(|reason| r1s_train::TrainError::Config { path: a.config.clone(), reason })?;
    let retriever = open_retriever(cfg.retriever.index.as_deref(), cfg.retriever.url.as_deref(), a.threads)?;
    let bars = progress::Bars::new(g);
    let mut t = r1s_train::trainer::Trainer::new(cfg, a.resume, &retriever, &bars, cancel)?;
    let out = t.cfg.train.out.clone();
    let layers = t.split.policy.model.blocks.len();
    let what = t.split.lora.as_ref().map_or(String::new(), |l| format!("LoRA rank {} on ", l.cfg.rank));
    let n = r1s_train::model::count_params(&mut t.split);
    bars.println(&format!(
        "training {what}blocks {}..{layers} of {layers} ({n} parameters); output {}",
        t.split.first,
        out.display()
    ));
    t.run(&mut |row| bars.println(&step_line(row)))?;
    println!("metrics: {}\ncheckpoints: {}", out.join("metrics.jsonl").display(), out.join("checkpoints").display());
    Ok(())
}

pub fn sft(a: SftArgs, g: &Globals, cancel: &Cancel) -> anyhow::Result<()> {
    use_threads(a.threads);
    let o = r1s_train::sft::SftOptions {
        data: a.data,
        init: a.init_from,
        out: a.out,
        device: a.device,
        train_blocks: a.train_blocks,
        lora: a.lora.apply(None),
        lr: a.lr,
        weight_decay: a.weight_decay,
        max_grad_norm: a.max_grad_norm,
        epochs: a.epochs,
        batch: a.batch,
        micro_batch: a.micro_batch,
        max_len: a.max_len,
        save_every: a.save_every,
        keep_checkpoints: a.keep_checkpoints,
        prompt: a.prompt,
        protocol: a.protocol,
        seed: a.seed,
    };
    let bars = progress::Bars::new(g);
    let last = r1s_train::sft::sft(&o, a.resume, &bars, cancel, &mut |row| bars.println(&step_line(row)))?;
    println!("checkpoint: {}", last.display());
    Ok(())
}

pub fn plot(a: PlotArgs) -> anyhow::Result<()> {
    if a.overlay {
        anyhow::ensure!(
            a.label.is_empty() || a.label.len() == a.metrics.len(),
            "--label names each of the {} metrics files, or none ({} given)",
            a.metrics.len(),
            a.label.len()
        );
        let runs = a
            .metrics
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let label = a.label.get(i).cloned().unwrap_or_else(|| {
                    let dir = m.parent().and_then(|d| d.file_name()).unwrap_or(m.as_os_str());
                    dir.to_string_lossy().into_owned()
                });
                Ok((label, r1s_train::plot::read_metrics(m)?))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let n = r1s_train::plot::plot_runs(&runs, &a.out, &a.title)?;
        println!("{} panels, {} runs → {}", n, runs.len(), a.out.display());
        return Ok(());
    }
    let mut rows = Vec::new();
    let mut offset = 0u64;
    for m in &a.metrics {
        let mut part = r1s_train::plot::read_metrics(m)?;
        // later files continue the step axis of earlier ones (SFT, then RL)
        let last = part.iter().filter_map(|r| r["step"].as_u64()).max().unwrap_or(0);
        for r in &mut part {
            if let Some(s) = r["step"].as_u64() {
                r["step"] = (s + offset).into();
            }
        }
        offset += last;
        rows.extend(part);
    }
    let n = r1s_train::plot::plot(&rows, &a.out, &a.title)?;
    println!("{} panels → {}", n, a.out.display());
    Ok(())
}

pub fn task(a: TaskArgs, g: &Globals) -> anyhow::Result<()> {
    use std::io::Write;
    use_threads(a.threads);
    crate::must_exist(&a.corpus, "corpus directory")?;
    crate::must_exist(&a.index, "index directory")?;
    // --out holds the task's three files: never a corpus, an index or a directory of other files
    if a.out.is_dir() {
        let ours = ["train.jsonl", "test.jsonl", "sft.jsonl"];
        let foreign: Vec<String> = std::fs::read_dir(&a.out)
            .with_context(|| format!("reading {}", a.out.display()))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !(ours.contains(&n.as_str()) || n.starts_with('.') && n.ends_with(".tmp")))
            .collect();
        if !foreign.is_empty() {
            return Err(anyhow::Error::new(crate::UsageError(format!(
                "--out {} holds other files than a task's train/test/sft.jsonl ({}): give a new or empty directory",
                a.out.display(),
                foreign.join(", ")
            ))));
        }
    }
    if a.search_share == 0.0 && crate::given("topk") {
        return Err(anyhow::Error::new(crate::UsageError(
            "--topk sets the documents of searching trajectories, and --search-share 0 makes none".into(),
        )));
    }
    anyhow::ensure!(
        crate::corpus::is_corpus_dir(&a.corpus),
        "{} is not a corpus directory (no manifest.json and docstore.idx): give one from `r1s corpus ingest`",
        a.corpus.display()
    );
    let store = r1s_corpus::Docstore::open(&a.corpus)?;
    let passages = store.iter().map(|p| p.map(|p| p.to_passage())).collect::<Result<Vec<_>, _>>()?;
    let mut qs = r1s_train::task::title_questions(passages, 6);
    r1s_train::task::shuffle(&mut qs, a.seed);
    let need = a.train + a.test + a.sft;
    anyhow::ensure!(qs.len() >= need, "{} has {} usable articles, {need} asked for", a.corpus.display(), qs.len());
    let (test, rest) = qs.split_at(a.test);
    let (train, rest) = rest.split_at(a.train);
    let sft_qs = &rest[..a.sft];
    // the questions come from --corpus and the documents from --index: one corpus
    let corpus_id = r1s_corpus::Manifest::read(&a.corpus)?.content_id();
    let index_corpus = std::fs::read(a.index.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|m| m["corpus_id"].as_str().map(str::to_owned));
    if let Some(id) = index_corpus.filter(|id| *id != corpus_id) {
        return Err(anyhow::Error::new(crate::UsageError(format!(
            "--index {} was built from another corpus than --corpus {} (corpus id {} vs {})",
            a.index.display(),
            a.corpus.display(),
            &id[..id.len().min(12)],
            &corpus_id[..corpus_id.len().min(12)]
        ))));
    }
    let retriever = open_retriever(Some(&a.index), None, a.threads)?;
    let sft = r1s_train::task::sft_lines(sft_qs, &retriever, a.topk, a.search_share, a.seed, a.protocol)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let write = |name: &str, lines: Vec<serde_json::Value>| -> anyhow::Result<usize> {
        let p = a.out.join(name);
        let mut buf = Vec::new();
        for l in &lines {
            writeln!(buf, "{l}")?;
        }
        r1s_core::fsutil::write_atomic(&p, &buf).with_context(|| format!("writing {}", p.display()))?;
        Ok(lines.len())
    };
    let q = |v: &[r1s_train::task::TitleQuestion]| v.iter().map(r1s_train::task::question_line).collect::<Vec<_>>();
    let n_train = write("train.jsonl", q(train))?;
    let n_test = write("test.jsonl", q(test))?;
    let searching = sft.iter().filter(|l| l["search"].as_bool() == Some(true)).count();
    let n_sft = write("sft.jsonl", sft)?;
    if !g.quiet {
        println!(
            "{}: {n_train} train, {n_test} test questions, {n_sft} cold-start trajectories ({searching} searching)",
            a.out.display()
        );
    }
    Ok(())
}
