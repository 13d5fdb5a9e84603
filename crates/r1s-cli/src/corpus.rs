//! `r1s corpus ingest | stats | show | export`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use r1s_core::Cancel;
use r1s_corpus::{Corpus, Format, IngestOptions};

use crate::{Globals, progress};

#[derive(Debug, Subcommand)]
pub(crate) enum CorpusCmd {
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
pub(crate) struct IngestArgs {
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
    /// How documents (dumps, KILT, summaries) are cut: balanced (equal windows of at most --words,
    /// none shorter than half unless the document is) or dpr (DPR's exact windows, a short tail).
    #[arg(long, default_value = "balanced")]
    chunking: r1s_corpus::Chunking,
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

pub(crate) fn parse_format(s: &str) -> Result<Format, String> {
    s.parse()
}

pub(crate) fn is_corpus_dir(p: &Path) -> bool {
    p.is_dir() && p.join("manifest.json").is_file() && p.join("docstore.idx").is_file()
}

/// Refuses --words and --chunking (when given) for inputs that are passages already (Search-R1 or
/// FlashRAG JSONL, DPR TSV): those are stored as they are, and a manifest that says "words 20" of
/// them would be wrong. Shared by `corpus ingest` and `index build`.
pub(crate) fn check_chunking_flags(inputs: &[PathBuf], format: Format) -> anyhow::Result<()> {
    let flags = crate::given_flags(&["words", "chunking"]);
    if flags.is_empty() {
        return Ok(());
    }
    for input in inputs.iter().filter(|i| i.is_file()) {
        let f = if format == Format::Auto { r1s_corpus::formats::detect(input)? } else { format };
        if matches!(f, Format::SearchR1Jsonl | Format::FlashragJsonl | Format::DprTsv) {
            return Err(anyhow::Error::new(crate::UsageError(format!(
                "{} cut documents (wiki-xml, kilt, wiki-summaries) into passages; {} is {}, passages already, stored as they are",
                flags.join(" and "),
                input.display(),
                f.name()
            ))));
        }
    }
    Ok(())
}

pub(crate) fn corpus(cmd: CorpusCmd, g: &Globals, cancel: &Cancel) -> anyhow::Result<()> {
    match cmd {
        CorpusCmd::Ingest(a) => {
            check_chunking_flags(&a.inputs, a.format)?;
            let opts = IngestOptions {
                format: a.format,
                words: a.words,
                chunking: a.chunking,
                threads: a.threads,
                multistream_index: a.multistream_index,
                keep_redirects: a.keep_redirects,
                keep_disambiguation: a.keep_disambiguation,
                keep_lists: a.keep_lists,
                skip_bad: a.skip_bad,
                force: a.force,
                checksums: !a.no_checksum,
            };
            let bars = progress::Bars::new(g);
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
            crate::must_exist(&dir, "corpus directory")?;
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
            crate::must_exist(&dir, "corpus directory")?;
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
            crate::must_exist(&dir, "corpus directory")?;
            let dir_of_corpus = dir.clone();
            let corpus = Corpus::open(&dir)?;
            let n = match out {
                Some(path) => {
                    anyhow::ensure!(!path.is_dir(), "--out {} is a directory: give a file name", path.display());
                    let inside = |p: &Path| {
                        let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                        std::fs::canonicalize(dir)
                            .ok()
                            .zip(std::fs::canonicalize(&dir_of_corpus).ok())
                            .is_some_and(|(d, c)| d.starts_with(c))
                    };
                    if inside(&path) {
                        return Err(anyhow::Error::new(crate::UsageError(format!(
                            "--out {} is inside the corpus {}: write the export elsewhere",
                            path.display(),
                            dir_of_corpus.display()
                        ))));
                    }
                    let mut w = r1s_core::fsutil::AtomicFile::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    let n = corpus.export_search_r1(&mut crate::StopOnCancel(&mut w, cancel))?;
                    w.commit().with_context(|| format!("writing {}", path.display()))?;
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
