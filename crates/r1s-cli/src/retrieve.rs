//! `r1s retrieve`, and the retriever flags it shares with `r1s serve`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::embed::parse_device;
use crate::index::{LexicalArgs, bm25_defaults};
use crate::{must_exist, use_threads};

/// How to open a retriever (shared by `retrieve` and `serve`).
#[derive(Debug, Args)]
pub(crate) struct RetrieverArgs {
    /// Index directory (from `r1s index build`).
    #[arg(long)]
    pub(crate) index: PathBuf,
    /// The corpus directory (default: the one recorded in the index).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// HNSW search candidates, or a Milvus IVF index's nprobe (default: the index's).
    #[arg(long)]
    ef: Option<usize>,
    /// Milvus index: another endpoint of the same cluster than the one recorded at build time.
    #[arg(long, env = "R1S_MILVUS_URI")]
    milvus_uri: Option<String>,
    /// Milvus index: deadline of one search, retries included, in milliseconds (default: the
    /// build's, 10000); past it `serve` answers 503.
    #[arg(long)]
    milvus_timeout_ms: Option<u64>,
    /// Threads for the query embedder (0 = all cores).
    #[arg(long, short = 'j', default_value_t = 0, env = "R1S_THREADS")]
    threads: usize,
    /// cpu, cuda, cuda:N, or auto, for the query embedder.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: r1s_embed::Device,
    #[command(flatten)]
    lexical: LexicalArgs,
}

impl RetrieverArgs {
    pub(crate) fn open(&self) -> anyhow::Result<r1s_retrieve::AnyRetriever> {
        must_exist(&self.index, "index directory")?;
        let opts = r1s_retrieve::RetrieverOptions {
            dense: r1s_retrieve::DenseOptions {
                corpus: self.corpus.clone(),
                threads: self.threads,
                device: Some(self.device),
                ef_search: self.ef,
                milvus_uri: self.milvus_uri.clone(),
                milvus_timeout_ms: self.milvus_timeout_ms,
                ..Default::default()
            },
            bm25: self.lexical.bm25(bm25_defaults(&self.index)),
            hybrid: self.lexical.hybrid()?,
        };
        use_threads(self.threads);
        Ok(r1s_retrieve::AnyRetriever::open(&self.index, &opts)?)
    }
}

#[derive(Debug, Args)]
pub(crate) struct RetrieveArgs {
    #[command(flatten)]
    retriever: RetrieverArgs,
    /// Queries (none: read one per line from standard input).
    queries: Vec<String>,
    /// Passages per query (at least 1).
    #[arg(long, short, default_value_t = 5, value_parser = crate::loaders::parse_count)]
    k: usize,
    /// One JSON object per query: {"query", "hits": [{"rank","row","id","score","title","contents"}]}.
    #[arg(long)]
    json: bool,
}

pub(crate) fn retrieve(a: RetrieveArgs) -> anyhow::Result<()> {
    use r1s_core::Retriever;
    let r = a.retriever.open()?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut answer = |queries: &[String]| -> anyhow::Result<()> {
        // every query goes to the retriever, a blank one too, as `serve` does: each kind answers it as
        // any other query (dense: its nearest passages; bm25: none; hybrid: the fusion of the two)
        let refs: Vec<&str> = queries.iter().map(String::as_str).collect();
        let hits = r.retrieve(&refs, a.k)?;
        for (q, hits) in queries.iter().zip(hits) {
            if a.json {
                #[derive(serde::Serialize)]
                struct Ranked<'a> {
                    rank: usize,
                    #[serde(flatten)]
                    hit: &'a r1s_core::Hit,
                }
                #[derive(serde::Serialize)]
                struct Line<'a> {
                    query: &'a str,
                    hits: Vec<Ranked<'a>>,
                }
                let hits = hits.iter().enumerate().map(|(i, hit)| Ranked { rank: i + 1, hit }).collect();
                writeln!(out, "{}", serde_json::to_string(&Line { query: q, hits })?)?;
            } else {
                writeln!(out, "{q}")?;
                for (i, h) in hits.iter().enumerate() {
                    let (title, body) = title_and_body(h);
                    writeln!(out, "{:>4}  {:>8.4}  {:<28}  {}", i + 1, h.score, clip(title, 28), clip(body, 90))?;
                }
                writeln!(out)?;
            }
        }
        out.flush()?;
        Ok(())
    };
    if !a.queries.is_empty() {
        return answer(&a.queries);
    }
    // one query per line from standard input, answered in chunks as they come
    let mut chunk = Vec::new();
    for line in std::io::stdin().lines() {
        let line = line.context("reading queries from standard input")?;
        // JSON lines answer every input line in order (a blank one with no hits); the table skips them
        if line.trim().is_empty() && !a.json {
            continue;
        }
        chunk.push(line);
        if chunk.len() == 64 {
            answer(&chunk)?;
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        answer(&chunk)?;
    }
    Ok(())
}

/// The title to show (the stored title, else the first line of contents) and the rest of the text.
pub(crate) fn title_and_body(h: &r1s_core::Hit) -> (&str, &str) {
    if !h.title.is_empty() {
        let body = h.contents.split_once('\n').map_or(h.contents.as_str(), |(_, b)| b);
        return (h.title.as_str(), body);
    }
    // KILT-style "title   words" rows keep the title before three spaces
    match h.contents.split_once("   ") {
        Some((title, body)) if !title.contains('\n') && title.len() < 200 => (title, body),
        _ => ("", h.contents.as_str()),
    }
}

/// At most `n` characters of `s` on one line, with an ellipsis when cut.
pub(crate) fn clip(s: &str, n: usize) -> String {
    let flat: String = s.chars().map(|c| if c.is_whitespace() { ' ' } else { c }).collect();
    if flat.chars().count() <= n {
        return flat;
    }
    let mut cut: String = flat.chars().take(n.saturating_sub(1)).collect();
    cut.push('…');
    cut
}
