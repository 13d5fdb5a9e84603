//! `r1s`: the command-line tool. A thin layer over the library crates: argument parsing, logging,
//! progress bars and exit codes live here; the work lives in the libraries.

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod progress;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use r1s_core::Cancel;
use r1s_corpus::{Corpus, CorpusError, Format, IngestOptions};

/// Exit codes (sysexits-style for data and I/O errors).
mod exit {
    pub const FAILURE: u8 = 1;
    pub const DATA: u8 = 65;
    pub const NO_INPUT: u8 = 66;
    pub const UNAVAILABLE: u8 = 69;
    pub const IO: u8 = 74;
    pub const CANCELLED: u8 = 130;
}

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
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build and inspect passage corpora.
    #[command(subcommand)]
    Corpus(CorpusCmd),
    /// Embed a corpus into embeddings.npy (resumable), or one text for a look.
    Embed(EmbedArgs),
}

#[derive(Debug, Args)]
struct EmbedArgs {
    /// Corpus directory to embed.
    #[arg(long, required_unless_present = "text", conflicts_with = "text")]
    corpus: Option<PathBuf>,
    /// Output directory (embeddings.npy, embeddings.json).
    #[arg(long, short, required_unless_present = "text")]
    out: Option<PathBuf>,
    /// Embed these texts and print the vectors instead.
    #[arg(long, num_args = 1..)]
    text: Vec<String>,
    /// Embed --text as queries (with the preset's query prefix).
    #[arg(long)]
    query: bool,
    /// Model: a directory with model.onnx + tokenizer.json, an .onnx file, or `minilm` (fetched by tools/setup).
    #[arg(long, default_value = "minilm", env = "R1S_MODEL")]
    model: PathBuf,
    /// Preset: minilm, bge, e5 (default: r1s-embed.json beside the model, else minilm).
    #[arg(long)]
    preset: Option<String>,
    /// Custom pooling (mean or cls), overriding the preset's.
    #[arg(long)]
    pooling: Option<String>,
    /// Custom query prefix, overriding the preset's.
    #[arg(long)]
    query_prefix: Option<String>,
    /// Custom passage prefix, overriding the preset's.
    #[arg(long)]
    passage_prefix: Option<String>,
    /// Do not L2-normalise the vectors.
    #[arg(long)]
    no_normalize: bool,
    /// Tokens per text; longer texts are truncated.
    #[arg(long, default_value_t = 256)]
    max_len: usize,
    /// Texts per inference batch, formed from length-sorted texts (default: 4 on CPU, where
    /// small batches pad least and run fastest; 128 on CUDA).
    #[arg(long)]
    batch: Option<usize>,
    /// Threads in all (0 = all cores).
    #[arg(long, short = 'j', default_value_t = 0, env = "R1S_THREADS")]
    threads: usize,
    /// ONNX Runtime sessions running batches side by side (0 = auto: one single-threaded session per
    /// thread on CPU, one on CUDA).
    #[arg(long, default_value_t = 0)]
    sessions: usize,
    /// cpu, cuda, cuda:N, or auto (CUDA when available, else CPU with a warning).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: r1s_embed::Device,
    /// Storage type of embeddings.npy.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    dtype: r1s_embed::Dtype,
    /// Embed only the first N passages.
    #[arg(long)]
    limit: Option<u64>,
    /// Rows per resumable chunk.
    #[arg(long, default_value_t = 1024)]
    chunk_rows: usize,
    /// Discard earlier (partial or finished) output with other settings and start over.
    #[arg(long)]
    restart: bool,
    /// Print --text vectors as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_device(s: &str) -> Result<r1s_embed::Device, String> {
    s.parse()
}

fn parse_dtype(s: &str) -> Result<r1s_embed::Dtype, String> {
    s.parse()
}

#[derive(Debug, Subcommand)]
enum CorpusCmd {
    /// Ingest Wikipedia dumps or existing corpora into a corpus directory of 100-word passages.
    Ingest(IngestArgs),
    /// Print the counts and inputs of a corpus.
    Stats {
        /// Corpus directory.
        dir: PathBuf,
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print passages by row number.
    Show {
        /// Corpus directory.
        dir: PathBuf,
        /// Row numbers (0-based).
        #[arg(required = true)]
        rows: Vec<u64>,
        /// One JSON object per passage.
        #[arg(long)]
        json: bool,
    },
    /// Export a corpus for existing Python tools.
    Export {
        /// Corpus directory.
        dir: PathBuf,
        /// Output format (only search-r1-jsonl: `{"id","contents":"\"Title\"\ntext"}`).
        #[arg(long, default_value = "search-r1-jsonl")]
        format: String,
        /// Output file (default: standard output).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct IngestArgs {
    /// Input files: .xml / .xml.bz2 dumps, JSONL, TSV or the summaries JSON.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output corpus directory.
    #[arg(long, short)]
    out: PathBuf,
    /// Input format (auto: from the file name and first bytes).
    #[arg(long, default_value = "auto", value_parser = parse_format)]
    format: Format,
    /// Words per passage.
    #[arg(long, default_value_t = 100)]
    words: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, short = 'j', default_value_t = 0, env = "R1S_THREADS")]
    threads: usize,
    /// The dump's -multistream-index.txt.bz2 (streams are also found without it, by scanning).
    #[arg(long)]
    multistream_index: Option<PathBuf>,
    /// Keep redirect pages.
    #[arg(long)]
    keep_redirects: bool,
    /// Keep disambiguation pages.
    #[arg(long)]
    keep_disambiguation: bool,
    /// Keep "List of / Index of / Outline of" pages.
    #[arg(long)]
    keep_lists: bool,
    /// Skip malformed records of JSONL/TSV/JSON inputs (counted in the manifest) instead of failing.
    /// Malformed XML is always an error.
    #[arg(long)]
    skip_bad: bool,
    /// Replace the output directory if it exists.
    #[arg(long)]
    force: bool,
    /// Do not record sha256 checksums of the inputs.
    #[arg(long)]
    no_checksum: bool,
    /// Print the manifest as JSON when done.
    #[arg(long)]
    json: bool,
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match (cli.globals.quiet, cli.globals.verbose) {
        (true, _) => log::LevelFilter::Error,
        (false, 0) => log::LevelFilter::Warn,
        (false, 1) => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    env_logger::Builder::new().filter_level(level).parse_env("R1S_LOG").format_target(false).init();
    let cancel = Arc::new(Cancel::new());
    {
        let c = cancel.clone();
        let _ = ctrlc::set_handler(move || c.cancel());
    }
    match run(cli, &cancel) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<r1s_embed::EmbedError>() {
            use r1s_embed::EmbedError as E;
            return match c {
                E::Cancelled => exit::CANCELLED,
                E::Io { .. } => exit::IO,
                E::Corpus(inner) if inner.is_bad_input() => exit::DATA,
                E::BadFile { .. } | E::Signature { .. } => exit::DATA,
                E::Model { .. } => exit::NO_INPUT,
                E::Runtime { .. } | E::Device { .. } => exit::UNAVAILABLE,
                _ => exit::FAILURE,
            };
        }
        if let Some(c) = cause.downcast_ref::<CorpusError>() {
            return match c {
                CorpusError::Cancelled => exit::CANCELLED,
                CorpusError::Io { .. } => exit::IO,
                c if c.is_bad_input() => exit::DATA,
                _ => exit::FAILURE,
            };
        }
    }
    exit::FAILURE
}

fn run(cli: Cli, cancel: &Cancel) -> anyhow::Result<()> {
    match cli.command {
        Command::Corpus(cmd) => corpus(cmd, &cli.globals, cancel),
        Command::Embed(args) => embed(args, &cli.globals, cancel),
    }
}

fn embed(a: EmbedArgs, g: &Globals, cancel: &Cancel) -> anyhow::Result<()> {
    use r1s_core::Embedder;
    let mut preset = match &a.preset {
        Some(name) => Some(r1s_embed::Preset::named(name)?),
        None => None,
    };
    if a.pooling.is_some() || a.query_prefix.is_some() || a.passage_prefix.is_some() || a.no_normalize {
        let mut p = match preset.take() {
            Some(p) => p,
            None => {
                let (onnx, _) = r1s_embed::model::model_files(&a.model)?;
                let dir = onnx.parent().map(Path::to_path_buf).unwrap_or_default();
                r1s_embed::Preset::from_model_dir(&dir)?.map_or_else(|| r1s_embed::Preset::named("minilm"), Ok)?
            }
        };
        p.name = "custom".into();
        if let Some(pool) = &a.pooling {
            p.pooling = match pool.as_str() {
                "mean" => r1s_embed::Pooling::Mean,
                "cls" => r1s_embed::Pooling::Cls,
                other => anyhow::bail!("unknown pooling {other:?} (mean, cls)"),
            };
        }
        if let Some(q) = a.query_prefix {
            p.query_prefix = q;
        }
        if let Some(d) = a.passage_prefix {
            p.passage_prefix = d;
        }
        p.normalize = !a.no_normalize;
        preset = Some(p);
    }
    let cfg = r1s_embed::EmbedderConfig {
        model: a.model,
        preset,
        max_len: a.max_len,
        batch: a.batch.unwrap_or(if a.device == r1s_embed::Device::Cpu { 4 } else { 128 }),
        threads: a.threads,
        sessions: a.sessions,
        device: a.device,
    };
    let embedder = r1s_embed::OnnxEmbedder::load(&cfg)?;
    if !a.text.is_empty() {
        let side = if a.query { r1s_core::Side::Query } else { r1s_core::Side::Passage };
        let texts: Vec<&str> = a.text.iter().map(String::as_str).collect();
        let vecs = embedder.embed(&texts, side)?;
        let dim = embedder.dim();
        for (t, v) in texts.iter().zip(vecs.chunks_exact(dim)) {
            if a.json {
                println!("{}", serde_json::json!({"text": t, "embedding": v}));
            } else {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                let head: Vec<String> = v.iter().take(8).map(|x| format!("{x:+.4}")).collect();
                println!(
                    "{t:?}\n  dim {dim}, norm {norm:.4}, preset {}: [{} ...]",
                    embedder.preset().name,
                    head.join(", ")
                );
            }
        }
        return Ok(());
    }
    let (Some(corpus), Some(out)) = (a.corpus, a.out) else { anyhow::bail!("--corpus and --out are required") };
    let job = r1s_embed::EmbedJob {
        corpus,
        out,
        dtype: a.dtype,
        chunk_rows: a.chunk_rows,
        limit: a.limit,
        restart: a.restart,
    };
    let bars = progress::Bars::new(g.quiet);
    let report = r1s_embed::embed_corpus(&embedder, &job, &bars, cancel)?;
    if !g.quiet {
        println!(
            "{}: {} rows x {} ({:?}); embedded {} in {:.1} s ({:.1} passages/s), {} resumed",
            report.path.display(),
            report.rows,
            embedder.dim(),
            a.dtype,
            report.embedded,
            report.seconds,
            report.embedded as f64 / report.seconds.max(1e-9),
            report.resumed_from
        );
    }
    Ok(())
}

fn corpus(cmd: CorpusCmd, g: &Globals, cancel: &Cancel) -> anyhow::Result<()> {
    match cmd {
        CorpusCmd::Ingest(a) => {
            let opts = IngestOptions {
                format: a.format,
                words: a.words,
                threads: a.threads,
                multistream_index: a.multistream_index,
                keep_redirects: a.keep_redirects,
                keep_disambiguation: a.keep_disambiguation,
                keep_lists: a.keep_lists,
                skip_bad: a.skip_bad,
                force: a.force,
                checksums: !a.no_checksum,
            };
            let bars = progress::Bars::new(g.quiet);
            let report = r1s_corpus::ingest(&a.inputs, &a.out, &opts, &bars, cancel)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report.manifest)?);
            } else if !g.quiet {
                let c = &report.manifest.counts;
                let mb = report.input_bytes as f64 / 1e6;
                println!(
                    "{}: {} passages from {} documents ({} pages read) in {:.1} s ({:.1} MB/s of input)",
                    report.out.display(),
                    c.passages,
                    c.documents,
                    c.pages_seen,
                    report.seconds,
                    mb / report.seconds.max(1e-9)
                );
                if !c.skipped.is_empty() {
                    let s: Vec<String> = c.skipped.iter().map(|(k, v)| format!("{k} {v}")).collect();
                    println!("skipped: {}", s.join(", "));
                }
                if c.bad_records > 0 {
                    println!("malformed records skipped: {}", c.bad_records);
                }
            }
            Ok(())
        }
        CorpusCmd::Stats { dir, json } => {
            let corpus = Corpus::open(&dir)?;
            let m = &corpus.manifest;
            if json {
                println!("{}", serde_json::to_string_pretty(m)?);
                return Ok(());
            }
            let c = &m.counts;
            println!("corpus       {}", dir.display());
            println!("passages     {}", c.passages);
            println!("documents    {}", c.documents);
            if c.pages_seen > 0 {
                println!("pages read   {}", c.pages_seen);
            }
            for (k, v) in &c.skipped {
                println!("skipped      {v} {k}");
            }
            if c.bad_records > 0 {
                println!("bad records  {}", c.bad_records);
            }
            println!(
                "text         {:.1} MB, {:.0} bytes/passage",
                c.text_bytes as f64 / 1e6,
                c.text_bytes as f64 / (c.passages.max(1)) as f64
            );
            println!("words        {}", m.options.get("words").and_then(|w| w.as_u64()).unwrap_or(0));
            for i in &m.inputs {
                println!(
                    "input        {} ({}, {} bytes{})",
                    i.path,
                    i.format,
                    i.bytes,
                    i.sha256.as_ref().map(|s| format!(", sha256 {}", &s[..16])).unwrap_or_default()
                );
            }
            println!("r1s          {} (format v{})", m.r1s_version, m.format_version);
            Ok(())
        }
        CorpusCmd::Show { dir, rows, json } => {
            let corpus = Corpus::open(&dir)?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            for row in rows {
                let p = corpus.docstore.get(row)?;
                if json {
                    writeln!(out, "{}", serde_json::to_string(&p.to_passage())?)?;
                } else {
                    writeln!(out, "[{}] id={} doc={} title={:?}\n{}\n", p.row, p.id, p.doc_id, p.title, p.text)?;
                }
            }
            Ok(())
        }
        CorpusCmd::Export { dir, format, out } => {
            anyhow::ensure!(
                format == "search-r1-jsonl",
                "unknown export format {format:?} (supported: search-r1-jsonl)"
            );
            let corpus = Corpus::open(&dir)?;
            let n = match out {
                Some(path) => {
                    let tmp = path.with_extension("part");
                    let f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
                    let mut w = std::io::BufWriter::new(f);
                    let n = corpus.export_search_r1(&mut w)?;
                    drop(w);
                    std::fs::rename(&tmp, &path)
                        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
                    n
                }
                None => corpus.export_search_r1(&mut std::io::BufWriter::new(std::io::stdout().lock()))?,
            };
            if !g.quiet {
                eprintln!("exported {n} passages");
            }
            Ok(())
        }
    }
}
