//! `r1s`: the command-line tool. A thin layer over the library crates: argument parsing, logging,
//! progress bars and exit codes live here; the work lives in the libraries.

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod corpus;
mod embed;
mod eval;
mod index;
mod loaders;
mod policy;
mod progress;
mod retrieve;
mod reward;
mod serve;
mod train;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use r1s_core::Cancel;
use r1s_corpus::CorpusError;

/// Exit codes (sysexits-style for data and I/O errors).
mod exit {
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const DATA: u8 = 65;
    pub const NO_INPUT: u8 = 66;
    pub const UNAVAILABLE: u8 = 69;
    pub const IO: u8 = 74;
    pub const CANCELLED: u8 = 130;
}

/// A usage mistake found after parsing (a setting that does not apply to what was asked): exit 2,
/// as clap's own.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

#[derive(Debug, Parser)]
#[command(name = "r1s", version, about = "Retrieval toolkit for search agents trained with RL (R1-Searcher style)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    globals: Globals,
}

#[derive(Debug, Args)]
struct Globals {
    /// Print only errors (no progress, no summaries).
    #[arg(short, long, global = true)]
    quiet: bool,
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Off a terminal (a log file, a pipe), print a progress line of long stages every this many
    /// seconds (0: none; on a terminal a bar is drawn instead).
    #[arg(long, global = true, default_value_t = 10.0, env = "R1S_PROGRESS_EVERY", value_name = "SECONDS",
          value_parser = parse_seconds, allow_negative_numbers = true)]
    progress_every: f64,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds ≥ 0")),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build and inspect passage corpora.
    #[command(subcommand)]
    Corpus(corpus::CorpusCmd),
    /// Embed a corpus into embeddings.npy (resumable), or one text for a look.
    Embed(embed::EmbedArgs),
    /// Build, inspect and evaluate vector indexes.
    #[command(subcommand)]
    Index(index::IndexCmd),
    /// Look passages up: a table for people, JSON lines for scripts (queries as arguments or one
    /// per line on standard input).
    Retrieve(retrieve::RetrieveArgs),
    /// Run the policy model (a Llama-family decoder on burn).
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Evaluate a policy with retrieval on a question set (R1-Searcher or Search-R1 protocol), or score
    /// results.
    Eval(eval::EvalArgs),
    /// Score a JSONL of rollouts (Search-R1's {"solution_str","golden_answers"} or r1s / R1-Searcher
    /// results) with any reward of either protocol; each line is written with its reward.
    Reward(reward::RewardArgs),
    /// Serve rewards to OpenRLHF as R1-Searcher's reward servers do: POST /get_reward
    /// {"query": [prompt + rollout, ...]} → {"rewards": [...]}, gold answers from a question file.
    ServeReward(reward::ServeRewardArgs),
    /// Serve an index over HTTP: Search-R1's POST /retrieve, R1-Searcher's POST /queries, GET /health,
    /// GET /metrics. Concurrent requests are micro-batched; a full queue answers 503 (or 429) with Retry-After.
    Serve(serve::ServeArgs),
}

/// The matches of the command line's innermost subcommand (`index build`, `serve`, …).
static LEAF: std::sync::OnceLock<clap::ArgMatches> = std::sync::OnceLock::new();

/// Whether the user gave flag `id` (clap's id: the field's name, `ef_search`) on the command line,
/// as opposed to its default or an environment variable. Settings that do not apply to what was
/// asked are refused when given ("refused, not ignored"), never when defaulted.
pub(crate) fn given(id: &str) -> bool {
    LEAF.get().is_some_and(|m| {
        m.ids().any(|i| i.as_str() == id) && m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
    })
}

/// The flags of `ids` the user gave, spelled as on the command line (`--ef-search`).
pub(crate) fn given_flags(ids: &[&str]) -> Vec<String> {
    ids.iter().filter(|id| given(id)).map(|id| format!("--{}", id.replace('_', "-"))).collect()
}

fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let mut leaf = &matches;
    while let Some((_, sub)) = leaf.subcommand() {
        leaf = sub;
    }
    let _ = LEAF.set(leaf.clone());
    let serving = matches!(
        cli.command,
        Command::Serve(_) | Command::ServeReward(_) | Command::Policy(policy::PolicyCmd::Serve(_))
    );
    let level = match (cli.globals.quiet, cli.globals.verbose) {
        (true, _) => log::LevelFilter::Error,
        (false, 0) if serving => log::LevelFilter::Info,
        (false, 0) => log::LevelFilter::Warn,
        (false, 1) => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    env_logger::Builder::new()
        .filter_level(level)
        // hnsw_rs narrates every graph load at info level
        .filter_module("hnsw_rs", level.min(log::LevelFilter::Warn))
        .parse_env("R1S_LOG")
        .format_target(false)
        .init();
    let cancel = Arc::new(Cancel::new());
    // the commands that stop cleanly when asked (they check `cancel` and keep or remove their work);
    // the others are quick or write nothing before their end, and quit at the first Ctrl-C
    let watches_cancel = matches!(
        cli.command,
        Command::Corpus(corpus::CorpusCmd::Ingest(_) | corpus::CorpusCmd::Export { .. })
            | Command::Embed(_)
            | Command::Index(index::IndexCmd::Build(_))
            | Command::Eval(_)
            | Command::Policy(policy::PolicyCmd::Train(_) | policy::PolicyCmd::Sft(_))
            | Command::Reward(_)
            | Command::Serve(_)
            | Command::ServeReward(_)
            | Command::Policy(policy::PolicyCmd::Serve(_))
    );
    {
        let c = cancel.clone();
        let _ = ctrlc::set_handler(move || {
            // the first Ctrl-C asks the command to stop where it can keep what is done; a second
            // one quits at once (exit 130 either way)
            if c.is_cancelled() || !watches_cancel {
                std::process::exit(exit::CANCELLED.into());
            }
            c.cancel();
            if !serving {
                eprintln!("\nstopping (Ctrl-C again to quit at once)");
            }
        });
    }
    if matches!(
        cli.command,
        Command::Eval(_)
            | Command::Policy(
                policy::PolicyCmd::Generate(_)
                    | policy::PolicyCmd::Serve(_)
                    | policy::PolicyCmd::Train(_)
                    | policy::PolicyCmd::Sft(_)
                    | policy::PolicyCmd::Reject(_)
            )
    ) {
        keep_freed_tensor_memory();
    }
    match run(cli, &cancel) {
        Ok(()) => ExitCode::SUCCESS,
        // the reader of standard output went away (`r1s … | head`): stop quietly, as Unix tools do
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        // stopped by Ctrl-C: the command's own word on what it kept, and 130, as shells do
        Err(e) if cancel.is_cancelled() && !serving => {
            eprintln!("stopped: {}", message(&e));
            ExitCode::from(exit::CANCELLED)
        }
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The error and its causes on one line, each cause once: library errors already print their
/// source (`path: No such file…`), which anyhow's chain would repeat.
fn message(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

/// Whether `a` and `b` name the same existing file or directory (any spelling, links followed).
fn same_path(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// A usage error (exit 2) when `out` is the same file as one of `inputs` (see [`same_path`]):
/// writing it would destroy the input before, or while, it is read.
fn not_an_input(out: &Path, inputs: &[&Path]) -> anyhow::Result<()> {
    if let Some(i) = inputs.iter().find(|i| same_path(out, i)) {
        return Err(anyhow::Error::new(UsageError(format!(
            "--out {} is the input {}: write the output elsewhere",
            out.display(),
            i.display()
        ))));
    }
    Ok(())
}

/// An error if `path` does not exist (exit 66, as other missing inputs).
fn must_exist(path: &Path, what: &str) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    Err(anyhow::Error::new(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{}: no such {what}", path.display()),
    )))
}

fn exit_code(e: &anyhow::Error) -> u8 {
    // a missing file or directory, whichever layer noticed it
    if e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound))
    {
        return exit::NO_INPUT;
    }
    // a directory given where a file is expected, or the reverse: a usage mistake
    if e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| matches!(io.kind(), std::io::ErrorKind::IsADirectory | std::io::ErrorKind::NotADirectory))
    }) {
        return exit::USAGE;
    }
    for cause in e.chain() {
        if cause.downcast_ref::<UsageError>().is_some() {
            return exit::USAGE;
        }
        if let Some(c) = cause.downcast_ref::<r1s_retrieve::RetrieveError>() {
            use r1s_retrieve::RetrieveError as E;
            return match c {
                E::Index(inner) => index_exit_code(inner),
                E::Embed(inner) => embed_exit_code(inner),
                E::Corpus(inner) => corpus_exit_code(inner),
                E::Bm25(inner) => bm25_exit_code(inner),
                E::CorpusNotFound { .. } => exit::NO_INPUT,
                E::Mismatch(_) => exit::DATA,
                E::Options(_) => exit::FAILURE,
            };
        }
        if let Some(c) = cause.downcast_ref::<r1s_index::IndexError>() {
            return index_exit_code(c);
        }
        if let Some(c) = cause.downcast_ref::<r1s_bm25::Bm25Error>() {
            return bm25_exit_code(c);
        }
        if let Some(c) = cause.downcast_ref::<r1s_agent::eval::DataError>() {
            return data_exit_code(c);
        }
        if let Some(c) = cause.downcast_ref::<r1s_train::TrainError>() {
            use r1s_train::TrainError as E;
            // the transparent variants show their inner error's sources, not the inner error itself
            match c {
                E::Policy(inner) => return policy_exit_code(inner),
                E::Data(inner) => return data_exit_code(inner),
                E::Io { .. } => return exit::IO,
                E::Config { .. } | E::BadLine { .. } | E::Checkpoint { .. } => return exit::DATA,
                E::Cancelled => return exit::CANCELLED,
                _ => {}
            }
        }
        if let Some(c) = cause.downcast_ref::<r1s_policy::PolicyError>() {
            return policy_exit_code(c);
        }
        if let Some(c) = cause.downcast_ref::<r1s_embed::EmbedError>() {
            return embed_exit_code(c);
        }
        if let Some(c) = cause.downcast_ref::<CorpusError>() {
            return corpus_exit_code(c);
        }
    }
    exit::FAILURE
}

fn data_exit_code(c: &r1s_agent::eval::DataError) -> u8 {
    match c {
        r1s_agent::eval::DataError::Io { .. } => exit::IO,
        r1s_agent::eval::DataError::Bad { .. } | r1s_agent::eval::DataError::Empty { .. } => exit::DATA,
    }
}

fn policy_exit_code(c: &r1s_policy::PolicyError) -> u8 {
    use r1s_policy::PolicyError as E;
    match c {
        E::Io { .. } => exit::IO,
        E::BadFile { .. } | E::Shape { .. } | E::Config { .. } | E::Tokenizer(_) => exit::DATA,
        E::Device { .. } => exit::UNAVAILABLE,
        E::Cancelled => exit::CANCELLED,
        E::Options(_) => exit::FAILURE,
    }
}

fn index_exit_code(c: &r1s_index::IndexError) -> u8 {
    use r1s_index::IndexError as E;
    match c {
        E::Cancelled => exit::CANCELLED,
        E::Io { .. } => exit::IO,
        E::BadFile { .. } | E::Mismatch(_) | E::WrongDimension { .. } => exit::DATA,
        E::Options(_) | E::Backend(_) => exit::FAILURE,
        E::Unavailable(_) => exit::UNAVAILABLE,
    }
}

fn bm25_exit_code(c: &r1s_bm25::Bm25Error) -> u8 {
    use r1s_bm25::Bm25Error as E;
    match c {
        E::Cancelled => exit::CANCELLED,
        E::Io { .. } => exit::IO,
        E::BadIndex { .. } | E::Tantivy { .. } => exit::DATA,
        E::Corpus(inner) => corpus_exit_code(inner),
        E::Options(_) => exit::FAILURE,
    }
}

fn embed_exit_code(c: &r1s_embed::EmbedError) -> u8 {
    use r1s_embed::EmbedError as E;
    match c {
        E::Cancelled => exit::CANCELLED,
        E::Io { .. } => exit::IO,
        E::Corpus(inner) if inner.is_bad_input() => exit::DATA,
        E::BadFile { .. } | E::Signature { .. } => exit::DATA,
        E::Model { .. } => exit::NO_INPUT,
        E::Runtime { .. } | E::Device { .. } => exit::UNAVAILABLE,
        _ => exit::FAILURE,
    }
}

fn corpus_exit_code(c: &CorpusError) -> u8 {
    match c {
        CorpusError::Cancelled => exit::CANCELLED,
        CorpusError::OutputExists { .. } | CorpusError::OutputNotCorpus { .. } => exit::USAGE,
        CorpusError::Io { .. } => exit::IO,
        c if c.is_bad_input() => exit::DATA,
        _ => exit::FAILURE,
    }
}

/// For the commands that run the policy (generate, eval, sft, train). Their tensors are buffers of
/// up to hundreds of MB (a training step's logits alone are 16 × 256 × 49,152 floats), allocated and
/// freed many times a step. glibc's malloc maps each such buffer afresh and unmaps it when freed, so
/// the kernel zeroes every page again on first touch: with its defaults a quarter of a training step
/// went to that (perf; docs/policy-speed.md). Taking them from the heap and never trimming it
/// reuses the pages instead; the process holds on to its peak, which every step reaches again
/// anyway. Elsewhere (musl, macOS) the allocator's defaults stay; library users (and the criterion
/// benches) keep them too.
fn keep_freed_tensor_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it runs before the command starts and both
    // values are documented in mallopt(3) (M_MMAP_MAX 0: large blocks come from the heap, not their
    // own mappings; M_TRIM_THRESHOLD -1: the main heap is never trimmed).
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}

/// A writer that fails once `cancel` is set, so that a command writing its output stops at its next
/// write after Ctrl-C, and its [`r1s_core::fsutil::AtomicFile`] is dropped (removed) uncommitted.
pub(crate) struct StopOnCancel<'a, W: std::io::Write>(pub(crate) W, pub(crate) &'a Cancel);

impl<W: std::io::Write> std::io::Write for StopOnCancel<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.1.is_cancelled() {
            // not ErrorKind::Interrupted: `write_all` retries that kind forever
            return Err(std::io::Error::other("cancelled"));
        }
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

fn run(cli: Cli, cancel: &Arc<Cancel>) -> anyhow::Result<()> {
    match cli.command {
        Command::Corpus(cmd) => corpus::corpus(cmd, &cli.globals, cancel),
        Command::Embed(args) => embed::embed(args, &cli.globals, cancel),
        Command::Index(cmd) => index::index(cmd, &cli.globals, cancel),
        Command::Retrieve(args) => retrieve::retrieve(args),
        Command::Eval(args) => eval::eval(args, &cli.globals, cancel),
        Command::Policy(policy::PolicyCmd::Generate(args)) => policy::generate(args, &cli.globals),
        Command::Policy(policy::PolicyCmd::Serve(args)) => policy::serve(args, &cli.globals, cancel),
        Command::Policy(policy::PolicyCmd::Train(args)) => train::train(args, &cli.globals, cancel),
        Command::Policy(policy::PolicyCmd::Sft(args)) => train::sft(args, &cli.globals, cancel),
        Command::Policy(policy::PolicyCmd::Plot(args)) => train::plot(args),
        Command::Policy(policy::PolicyCmd::StackAdapters(args)) => policy::stack_adapters(args, &cli.globals),
        Command::Policy(policy::PolicyCmd::Task(args)) => train::task(args, &cli.globals),
        Command::Policy(policy::PolicyCmd::Reject(args)) => policy::reject(args, &cli.globals),
        Command::Reward(args) => reward::reward(args, &cli.globals, cancel),
        Command::ServeReward(args) => reward::serve_reward(args, &cli.globals, cancel),
        Command::Serve(args) => serve::serve(args, &cli.globals, cancel),
    }
}

/// Sizes rayon's global pool (burn's CPU backend and the retriever run on it); 0 keeps all cores.
fn use_threads(threads: usize) {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    if threads > cores {
        // more threads than cores only adds waiting: rayon's workers spin and yield to each other
        log::warn!(
            "--threads {threads} is more than the {cores} cores here: expect it to run slower than with {cores}"
        );
    }
    if threads > 0 {
        let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    }
}

fn rayon_pool(threads: usize) -> anyhow::Result<rayon::ThreadPool> {
    Ok(rayon::ThreadPoolBuilder::new().num_threads(threads).build()?)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    /// After Ctrl-C a write fails at once: `write_all` must not retry it (it retries `Interrupted`).
    #[test]
    fn a_write_after_ctrl_c_fails_at_once() {
        let cancel = r1s_core::Cancel::new();
        let mut sink = Vec::new();
        let mut w = super::StopOnCancel(&mut sink, &cancel);
        w.write_all(b"kept\n").unwrap();
        cancel.cancel();
        let err = w.write_all(b"lost\n").unwrap_err();
        assert_ne!(err.kind(), std::io::ErrorKind::Interrupted);
        assert_eq!(sink, b"kept\n");
    }
}
