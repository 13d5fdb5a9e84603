//! `r1s`: the command-line tool. A thin layer over the library crates: argument parsing, logging,
//! progress bars and exit codes live here; the work lives in the libraries.

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod progress;
mod train;

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
    /// Build, inspect and evaluate vector indexes.
    #[command(subcommand)]
    Index(IndexCmd),
    /// Look passages up: a table for people, JSON lines for scripts (queries as arguments or one
    /// per line on standard input).
    Retrieve(RetrieveArgs),
    /// Run the policy model (a Llama-family decoder on burn).
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Evaluate a policy with retrieval on a question set (R1-Searcher protocol), or score results.
    Eval(EvalArgs),
    /// Serve an index over HTTP: Search-R1's POST /retrieve, R1-Searcher's POST /queries, GET /health,
    /// GET /metrics. Concurrent requests are micro-batched; a full queue answers 429.
    Serve(ServeArgs),
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Generate a continuation of a prompt, streamed to the terminal.
    Generate(GenerateArgs),
    /// Two-stage RL (R1-Searcher): rollouts through the agent loop with the retriever, rule-based
    /// rewards, REINFORCE++ / GRPO advantages, PPO-clip with retrieved documents masked out, KL.
    Train(train::TrainArgs),
    /// Supervised cold start on trajectories (documents masked out of the loss).
    Sft(train::SftArgs),
    /// Curves of a training run's metrics.jsonl as a PNG.
    Plot(train::PlotArgs),
    /// Build the "which article is described as…" search task (and cold-start trajectories) from a
    /// corpus and its index.
    Task(train::TaskArgs),
}

#[derive(Debug, Args)]
struct GenerateArgs {
    /// The prompt.
    prompt: String,
    /// A .gguf file, a Hugging Face directory (config.json, *.safetensors, tokenizer.json), or
    /// `smollm2` (SmolLM2-135M-Instruct, fetched by tools/setup).
    #[arg(long, default_value = "smollm2", env = "R1S_POLICY")]
    model: PathBuf,
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
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when the continuation contains this text (repeatable; the text is not printed).
    #[arg(long)]
    stop: Vec<String>,
    /// cpu (burn's flex backend) or cuda / cuda:N (built with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Threads (0 = all cores).
    #[arg(long, short = 'j', default_value_t = 0, env = "R1S_THREADS")]
    threads: usize,
    /// Continuations of the prompt, generated as one batch (only the first is streamed).
    #[arg(long, default_value_t = 1)]
    n: usize,
    /// Print timing figures as one JSON line on standard error.
    #[arg(long)]
    stats_json: bool,
    /// Run a 2-token generation first, so that timings exclude first-call set-up (as benchmarks of
    /// other engines do).
    #[arg(long)]
    warmup: bool,
}

#[derive(Debug, Args)]
struct EvalArgs {
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
    /// The `model` name sent to a completions server.
    #[arg(long, default_value = "default")]
    policy_model: String,
    /// Chat template for --prompt chat: auto (the local model's own; ChatML for a server), chatml, llama3.
    #[arg(long, default_value = "auto")]
    chat_template: String,
    /// Use the first N questions.
    #[arg(long)]
    limit: Option<usize>,
    /// Documents per query.
    #[arg(long, default_value_t = 5)]
    topk: usize,
    /// Prompt format: chat (the model's template with R1-Searcher's system message) or base.
    #[arg(long, default_value = "chat")]
    prompt: String,
    /// Most new tokens per turn.
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// Episodes generated together.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Reward recorded per row (stage1, stage1-code, stage2, stage2-llama).
    #[arg(long, default_value = "stage2", value_parser = parse_reward)]
    reward: r1s_agent::Reward,
    /// Results JSONL (R1-Searcher's eval_results shape plus r1s fields).
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Threads (0 = all cores).
    #[arg(long, short = 'j', default_value_t = 0, env = "R1S_THREADS")]
    threads: usize,
}

fn parse_reward(s: &str) -> Result<r1s_agent::Reward, String> {
    s.parse()
}

/// How to open a retriever (shared by `retrieve` and `serve`).
#[derive(Debug, Args)]
struct RetrieverArgs {
    /// Index directory (from `r1s index build`).
    #[arg(long)]
    index: PathBuf,
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
    fn open(&self) -> anyhow::Result<r1s_retrieve::AnyRetriever> {
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

/// The k1 / b recorded in a bm25 index (or a hybrid's bm25 part), else pyserini's defaults: the
/// base that a lone --k1 or --b changes.
fn bm25_defaults(dir: &Path) -> r1s_bm25::Bm25Params {
    let bm25_dir = match r1s_retrieve::index_kind(dir).as_deref() {
        Some("hybrid") => r1s_retrieve::HybridManifest::read(dir)
            .map(|m| r1s_retrieve::HybridManifest::part(dir, &m.bm25))
            .unwrap_or_else(|_| dir.to_path_buf()),
        _ => dir.to_path_buf(),
    };
    std::fs::read(bm25_dir.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<r1s_bm25::Bm25Manifest>(&b).ok())
        .map_or_else(r1s_bm25::Bm25Params::default, |m| m.params)
}

#[derive(Debug, Args)]
struct RetrieveArgs {
    #[command(flatten)]
    retriever: RetrieverArgs,
    /// Queries (none: read one per line from standard input).
    queries: Vec<String>,
    /// Passages per query.
    #[arg(long, short, default_value_t = 5)]
    k: usize,
    /// One JSON object per query: {"query", "hits": [{"rank","row","id","score","title","contents"}]}.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    retriever: RetrieverArgs,
    /// Address to listen on (loopback by default; 0.0.0.0 to accept other machines).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port, printed at start-up).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Passages per query when a request does not say.
    #[arg(long, default_value_t = 3)]
    topk: usize,
    /// Largest topk / k accepted (422 above).
    #[arg(long, default_value_t = 1000)]
    max_topk: usize,
    /// Most queries in one request (422 above).
    #[arg(long, default_value_t = 4096)]
    max_queries: usize,
    /// Largest request body in MiB (422 above).
    #[arg(long, default_value_t = 16)]
    max_body_mib: usize,
    /// Most queries embedded and searched together.
    #[arg(long, default_value_t = 256)]
    max_batch: usize,
    /// Longest wait for more concurrent requests before a batch runs, in milliseconds.
    #[arg(long, default_value_t = 3.0)]
    max_wait_ms: f64,
    /// Run each request on its own (no micro-batching).
    #[arg(long)]
    no_batching: bool,
    /// Most queries waiting; beyond it requests get 429 with Retry-After.
    #[arg(long, default_value_t = 16384)]
    queue: usize,
    /// Batch worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Threads of the HTTP runtime.
    #[arg(long, default_value_t = 2)]
    http_threads: usize,
    /// Seconds between traffic log lines (0: none).
    #[arg(long, default_value_t = 10.0)]
    log_every: f64,
}

#[derive(Debug, Subcommand)]
enum IndexCmd {
    /// Build an index: INPUT is a corpus directory, or a dump / JSONL / TSV to ingest first (omit it
    /// to index the embeddings already in --out). Every stage (ingest, embed, index) is skipped when
    /// already done; embedding and the HNSW graph build resume where an interrupted run stopped.
    Build(IndexBuildArgs),
    /// RAM, disk and build time of an index before building it, and which configurations fit a RAM
    /// budget (sizes from the file layouts, times from tools/bench-scale's measured scaling).
    Plan(IndexPlanArgs),
    /// Print an index's manifest.
    Info {
        /// Index directory.
        dir: PathBuf,
    },
    /// Recall@k of the index against exact search, and queries per second of both.
    Eval {
        /// Index directory.
        #[arg(long)]
        index: PathBuf,
        /// Queries: JSONL with a "question" (or "query"/"text") field, or one query per line.
        #[arg(long, required_unless_present_any = ["query_vectors", "answers"])]
        queries: Option<PathBuf>,
        /// Answer recall instead, for any index kind (dense, bm25, hybrid): the share of questions
        /// with a gold answer in the top-k passages (FlashRAG's normalised containment), at k = 1, 3,
        /// 5, 10 (and --k when larger), plus queries/s. Questions: R1-Searcher {"question","answer"}
        /// or FlashRAG {"question","golden_answers"} JSONL. A hybrid index also reports its dense and
        /// bm25 parts alone and both fusions.
        #[arg(long, conflicts_with_all = ["queries", "query_vectors", "save_queries", "ef"])]
        answers: Option<PathBuf>,
        /// --answers: queries per retrieval call (1: one at a time, as an agent asks).
        #[arg(long, default_value_t = 64, requires = "answers")]
        batch: usize,
        /// --answers: threads (0 = all cores).
        #[arg(long, short = 'j', default_value_t = 0, env = "R1S_THREADS")]
        threads: usize,
        #[command(flatten)]
        lexical: LexicalArgs,
        /// Query vectors instead of texts: a [n, dim] f32 .npy (e.g. from --save-queries).
        #[arg(long, conflicts_with_all = ["queries", "save_queries"])]
        query_vectors: Option<PathBuf>,
        /// Hits per query.
        #[arg(long, short, default_value_t = 10)]
        k: usize,
        /// Use only the first N queries.
        #[arg(long)]
        limit: Option<usize>,
        /// Also measure HNSW at these ef values (comma-separated).
        #[arg(long, value_delimiter = ',')]
        ef: Vec<usize>,
        /// Save the query vectors as a [n, dim] f32 .npy (for side-by-side benchmarks).
        #[arg(long)]
        save_queries: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct IndexBuildArgs {
    /// A corpus directory, or input files for `corpus ingest`; omitted: --out already holds
    /// embeddings.npy + embeddings.json (from `r1s embed`, or written by another tool).
    input: Option<PathBuf>,
    /// Index directory (embeddings.npy, index files, manifest.json).
    #[arg(long, short)]
    out: PathBuf,
    /// flat (exact), hnsw (r1s's graph over the mapped vectors), hnsw-rs (the hnsw_rs crate), faiss
    /// (any FAISS index_factory string, see --factory), milvus (a collection in a Milvus server or
    /// cluster, see --milvus-uri; the directory keeps only the manifest's reference to it), bm25 (a
    /// lexical index on tantivy, see --k1, --b; no embedding) or hybrid (a dense index in OUT/dense,
    /// of --dense-kind, and a bm25 index in OUT/bm25, fused per query: see --fusion).
    #[arg(long, default_value = "hnsw", value_parser = parse_build_kind)]
    kind: BuildKind,
    /// hybrid: the kind of its dense part (flat, hnsw, hnsw-rs, faiss, milvus).
    #[arg(long, default_value = "hnsw", value_parser = parse_kind)]
    dense_kind: r1s_index::Kind,
    /// hybrid: use this finished dense index instead of building OUT/dense.
    #[arg(long, requires = "bm25")]
    dense: Option<PathBuf>,
    /// hybrid: use this finished bm25 index instead of building OUT/bm25.
    #[arg(long, requires = "dense")]
    bm25: Option<PathBuf>,
    #[command(flatten)]
    lexical: LexicalArgs,
    /// FAISS index_factory string for --kind faiss (Flat, HNSW32, IVF4096,PQ64, ...).
    #[arg(long, default_value = "HNSW32")]
    factory: String,
    /// HNSW: links per node (twice as many at level 0).
    #[arg(long, default_value_t = 32)]
    m: usize,
    /// HNSW: candidates while building.
    #[arg(long, default_value_t = 200)]
    ef_construction: usize,
    /// HNSW: default candidates while searching (recall@10 >= 0.95 on MiniLM vectors at 64).
    #[arg(long, default_value_t = 64)]
    ef_search: usize,
    /// flat and hnsw: none, or sq8 (8-bit codes per dimension in codes.sq8, searched instead of the
    /// vectors; the final candidates are re-ranked exactly from embeddings.npy).
    #[arg(long, default_value = "none")]
    quantize: r1s_index::Quantize,
    /// sq8: return the codes' approximate scores, without exact re-ranking.
    #[arg(long)]
    no_rerank: bool,
    /// flat sq8: candidates re-ranked per query, as a multiple of k.
    #[arg(long, default_value_t = 4)]
    rerank_factor: usize,
    /// hnsw: inserts between two durable checkpoints of the graph build (hnsw.r1s.ckpt).
    #[arg(long, default_value_t = 1_000_000)]
    checkpoint_every: u64,
    /// hnsw: start the graph over even when a checkpoint of an interrupted build is there; milvus:
    /// insert every row again.
    #[arg(long)]
    no_resume: bool,
    /// milvus: the gRPC endpoint of the Milvus server or cluster proxy.
    #[arg(long, env = "R1S_MILVUS_URI", default_value = "http://127.0.0.1:19530")]
    milvus_uri: String,
    /// milvus: the collection (default: r1s_ and the name of --out).
    #[arg(long)]
    collection: Option<String>,
    /// milvus: the index Milvus builds: HNSW (--m, --ef-construction, --ef-search), IVF_FLAT or
    /// IVF_SQ8 (--nlist, --nprobe), FLAT (exact).
    #[arg(long, default_value = "HNSW")]
    milvus_index: r1s_index::MilvusIndexType,
    /// milvus IVF: clusters.
    #[arg(long, default_value_t = 1024)]
    nlist: usize,
    /// milvus IVF: clusters searched per query.
    #[arg(long, default_value_t = 16)]
    nprobe: usize,
    /// milvus: drop an existing collection of that name holding other vectors (else refused).
    #[arg(long)]
    replace: bool,
    /// milvus: deadline of one call to the server, retries included, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    milvus_timeout_ms: u64,
    /// Where to ingest a non-corpus INPUT (default: corpora/<name of --out>).
    #[arg(long)]
    corpus_out: Option<PathBuf>,
    /// Format of a non-corpus INPUT (auto: from the file name and first bytes; see `corpus ingest`).
    #[arg(long, default_value = "auto", value_parser = parse_format)]
    format: Format,
    /// Skip malformed JSONL/TSV/JSON records of INPUT (counted in the corpus manifest).
    #[arg(long)]
    skip_bad: bool,
    /// How a non-corpus INPUT's documents are cut into passages (see `corpus ingest --chunking`).
    #[arg(long, default_value = "balanced")]
    chunking: r1s_corpus::Chunking,
    /// Embedding model (see `r1s embed --model`).
    #[arg(long, default_value = "minilm", env = "R1S_MODEL")]
    model: PathBuf,
    /// Embedding preset (see `r1s embed --preset`).
    #[arg(long)]
    preset: Option<String>,
    /// Storage type of embeddings.npy.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    dtype: r1s_embed::Dtype,
    /// Threads in all (0 = all cores).
    #[arg(long, short = 'j', default_value_t = 0, env = "R1S_THREADS")]
    threads: usize,
}

fn parse_kind(s: &str) -> Result<r1s_index::Kind, String> {
    s.parse()
}

/// What `index build --kind` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BuildKind {
    Dense(r1s_index::Kind),
    Bm25,
    Hybrid,
}

fn parse_build_kind(s: &str) -> Result<BuildKind, String> {
    match s {
        "bm25" => Ok(BuildKind::Bm25),
        "hybrid" => Ok(BuildKind::Hybrid),
        _ => s
            .parse()
            .map(BuildKind::Dense)
            .map_err(|_| format!("unknown index kind {s:?} (flat, hnsw, hnsw-rs, faiss, milvus, bm25, hybrid)")),
    }
}

/// A finite number >= 0 (BM25 k1, RRF k).
fn parse_k1(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("{s:?} is not a finite number >= 0")),
    }
}

/// A number in [0, 1] (BM25 b, a fusion weight).
fn parse_unit(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("{s:?} is not a number in [0, 1]")),
    }
}

fn parse_fusion(s: &str) -> Result<String, String> {
    match s {
        "rrf" | "linear" => Ok(s.to_owned()),
        _ => Err(format!("unknown fusion {s:?} (rrf, linear)")),
    }
}

/// BM25 and fusion settings: recorded as defaults by `index build`, overridden at query time by
/// `retrieve`, `serve` and `index eval`.
#[derive(Debug, Args, Clone, Default)]
struct LexicalArgs {
    /// bm25: term-frequency saturation, >= 0 (pyserini's default 0.9; BM25's textbook 1.2).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_k1)]
    k1: Option<f32>,
    /// bm25: length normalisation in [0, 1] (pyserini's default 0.4; textbook 0.75).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_unit)]
    b: Option<f32>,
    /// hybrid: rrf (reciprocal rank fusion, default) or linear (weighted sum of min-max normalised
    /// scores).
    #[arg(long, value_parser = parse_fusion)]
    fusion: Option<String>,
    /// hybrid rrf: the k in 1 / (k + rank), >= 0 (default 60).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_k1)]
    rrf_k: Option<f32>,
    /// hybrid linear: the dense side's weight in [0, 1]; BM25 gets 1 - weight (default 0.5).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_unit)]
    weight: Option<f32>,
    /// hybrid: candidates each side fetches before fusing, as a multiple of k (default 4; recall
    /// at a given k can change with it, and so with --k in `index eval`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1000))]
    depth: Option<u64>,
}

impl LexicalArgs {
    /// k1 / b when either is given (the other from `base`).
    fn bm25(&self, base: r1s_bm25::Bm25Params) -> Option<r1s_bm25::Bm25Params> {
        (self.k1.is_some() || self.b.is_some())
            .then(|| r1s_bm25::Bm25Params { k1: self.k1.unwrap_or(base.k1), b: self.b.unwrap_or(base.b) })
    }

    /// The fusion when any fusion flag is given; a parameter of the other method is an error.
    fn fusion(&self) -> anyhow::Result<Option<r1s_retrieve::Fusion>> {
        use r1s_retrieve::Fusion;
        let method = match (&self.fusion, self.rrf_k, self.weight) {
            (Some(m), _, _) => m.as_str(),
            (None, Some(_), None) => "rrf",
            (None, None, Some(_)) => "linear",
            (None, None, None) => return Ok(None),
            (None, Some(_), Some(_)) => anyhow::bail!("--rrf-k is for --fusion rrf, --weight for --fusion linear"),
        };
        Ok(Some(match method {
            "rrf" => {
                anyhow::ensure!(self.weight.is_none(), "--weight is a setting of --fusion linear");
                Fusion::Rrf { k: self.rrf_k.unwrap_or(60.0) }
            }
            _ => {
                anyhow::ensure!(self.rrf_k.is_none(), "--rrf-k is a setting of --fusion rrf");
                Fusion::Linear { weight: self.weight.unwrap_or(0.5) }
            }
        }))
    }

    fn hybrid(&self) -> anyhow::Result<r1s_retrieve::HybridOptions> {
        Ok(r1s_retrieve::HybridOptions { fusion: self.fusion()?, depth: self.depth.map(|d| d as usize), bm25: None })
    }
}

#[derive(Debug, Args)]
struct IndexPlanArgs {
    /// Passages (vectors).
    #[arg(long)]
    rows: u64,
    /// Dimensions (MiniLM 384, e5-base/bge-base 768, bge-large 1024).
    #[arg(long)]
    dim: usize,
    /// Show one configuration only: flat or hnsw (default: flat and hnsw over f32, f16 and sq8).
    #[arg(long, value_parser = parse_kind)]
    kind: Option<r1s_index::Kind>,
    /// With --kind: none or sq8.
    #[arg(long, default_value = "none")]
    quantize: r1s_index::Quantize,
    /// With --kind: storage of embeddings.npy.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    dtype: r1s_embed::Dtype,
    /// HNSW links per node.
    #[arg(long, default_value_t = 32)]
    m: usize,
    /// HNSW candidates while building (index build's default).
    #[arg(long, default_value_t = 200)]
    ef_construction: usize,
    /// Mean bytes of a passage's text and title (100-word Wikipedia passages: about 600).
    #[arg(long, default_value_t = 600)]
    passage_bytes: u64,
    /// Threads of the build.
    #[arg(long, short = 'j', default_value_t = 16)]
    threads: usize,
    /// RAM budget (e.g. 64G, 512M): marks the configurations whose serving and build fit.
    #[arg(long, value_parser = parse_bytes)]
    ram: Option<u64>,
}

/// `64G`, `512M`, `1.5T`, `1000000` (bytes; K/M/G/T are powers of 1024).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches(['b', 'B']).trim_end_matches(['i']);
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s:?}: unknown unit {c:?} (K, M, G, T)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("{s:?} is not a size such as 64G"))?;
    if mult == 1 && v < 1048576.0 {
        return Err(format!("{s:?} bytes is less than 1 MiB: give a unit, as in 64G"));
    }
    if !(v.is_finite() && v >= 0.0) || v * mult as f64 >= u64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok((v * mult as f64) as u64)
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

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve(_));
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
    {
        let c = cancel.clone();
        let _ = ctrlc::set_handler(move || c.cancel());
    }
    match run(cli, &cancel) {
        Ok(()) => ExitCode::SUCCESS,
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
    for cause in e.chain() {
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
            return match c {
                r1s_agent::eval::DataError::Io { .. } => exit::IO,
                r1s_agent::eval::DataError::Bad { .. } => exit::DATA,
            };
        }
        if let Some(c) = cause.downcast_ref::<r1s_train::TrainError>() {
            use r1s_train::TrainError as E;
            match c {
                E::Io { .. } => return exit::IO,
                E::Config { .. } | E::BadLine { .. } | E::Checkpoint { .. } => return exit::DATA,
                E::Cancelled => return exit::CANCELLED,
                _ => {}
            }
        }
        if let Some(c) = cause.downcast_ref::<r1s_policy::PolicyError>() {
            use r1s_policy::PolicyError as E;
            return match c {
                E::Io { .. } => exit::IO,
                E::BadFile { .. } | E::Shape { .. } | E::Config { .. } | E::Tokenizer(_) => exit::DATA,
                E::Device { .. } => exit::UNAVAILABLE,
                E::Cancelled => exit::CANCELLED,
                E::Options(_) => exit::FAILURE,
            };
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
        CorpusError::Io { .. } => exit::IO,
        c if c.is_bad_input() => exit::DATA,
        _ => exit::FAILURE,
    }
}

fn run(cli: Cli, cancel: &Cancel) -> anyhow::Result<()> {
    match cli.command {
        Command::Corpus(cmd) => corpus(cmd, &cli.globals, cancel),
        Command::Embed(args) => embed(args, &cli.globals, cancel),
        Command::Index(cmd) => index(cmd, &cli.globals, cancel),
        Command::Retrieve(args) => retrieve(args),
        Command::Eval(args) => eval(args, &cli.globals, cancel),
        Command::Policy(PolicyCmd::Generate(args)) => generate(args, &cli.globals),
        Command::Policy(PolicyCmd::Train(args)) => train::train(args, &cli.globals, cancel),
        Command::Policy(PolicyCmd::Sft(args)) => train::sft(args, &cli.globals, cancel),
        Command::Policy(PolicyCmd::Plot(args)) => train::plot(args),
        Command::Policy(PolicyCmd::Task(args)) => train::task(args, &cli.globals),
        Command::Serve(args) => serve(args, &cli.globals, cancel),
    }
}

fn eval(a: EvalArgs, g: &Globals, cancel: &Cancel) -> anyhow::Result<()> {
    use r1s_core::Progress;
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
    let remote_policy = a.policy.starts_with("http://") || a.policy.starts_with("https://");
    let local = if remote_policy {
        None
    } else {
        Some(r1s_policy::Policy::load(Path::new(&a.policy), &r1s_policy::device("cpu")?)?)
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
    let kind = r1s_train::prompt::PromptKind::parse(&a.prompt, template)?;
    let prompts: Vec<String> = questions.iter().map(|q| kind.render(&q.question)).collect();
    let retriever = open_retriever(a.index.as_deref(), a.retriever_url.as_deref(), a.threads)?;
    let http_policy = remote_policy.then(|| r1s_agent::HttpPolicy::new(&a.policy, &a.policy_model));
    let run = |prompts: &[String], cfg: &r1s_agent::LoopConfig| -> anyhow::Result<Vec<r1s_agent::Trajectory>> {
        Ok(match (&local, &http_policy) {
            (Some(p), _) => r1s_agent::run(p, &retriever, prompts, cfg)?,
            (None, Some(p)) => r1s_agent::run(p, &retriever, prompts, cfg)?,
            (None, None) => anyhow::bail!("no policy"),
        })
    };
    let mut cfg = r1s_agent::LoopConfig::evaluation();
    cfg.topk = a.topk;
    cfg.sampling.max_new_tokens = a.max_new_tokens;
    let bars = progress::Bars::new(g.quiet);
    bars.start("eval", Some(questions.len() as u64), r1s_core::Unit::Items);
    let t = std::time::Instant::now();
    let mut out: Box<dyn Write> = match &a.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p.with_extension("part")).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::sink()),
    };
    let mut rows = Vec::new();
    for (chunk, prompts) in questions.chunks(a.batch.max(1)).zip(prompts.chunks(a.batch.max(1))) {
        if cancel.is_cancelled() {
            anyhow::bail!("cancelled");
        }
        let trajectories = run(prompts, &cfg)?;
        for (q, t) in chunk.iter().zip(trajectories) {
            let reward = r1s_agent::reward::reward(a.reward, &t.sol, &q.answers);
            let row = serde_json::json!({
                "question": q.question, "answer": if q.answers.len() == 1 { serde_json::json!(q.answers[0]) } else { serde_json::json!(q.answers) },
                "pred_ans": t.pred, "stop_reason_final": t.stop_reason_final, "gen_text_store": t.sol,
                "id": q.id, "retrievals": t.queries.len(), "queries": t.queries, "retrieved": t.retrieved,
                "reward": reward, "reward_kind": a.reward, "spans": t.spans,
            });
            writeln!(out, "{row}")?;
            rows.push((t.pred, q.answers.clone(), t.sol, reward));
        }
        bars.advance(chunk.len() as u64);
    }
    out.flush()?;
    drop(out);
    if let Some(p) = &a.out {
        std::fs::rename(p.with_extension("part"), p).with_context(|| format!("writing {}", p.display()))?;
    }
    bars.finish("done");
    let s = r1s_agent::Summary::of(
        rows.iter().map(|(p, g, sol, r)| (p.as_str(), g.as_slice(), Some(sol.as_str()), Some(*r))),
    );
    println!("{}\n{} questions in {:.1} s", s.table(), rows.len(), t.elapsed().as_secs_f64());
    Ok(())
}

/// An in-process retriever over `index`, or a retrieval server at `url`.
fn open_retriever(index: Option<&Path>, url: Option<&str>, threads: usize) -> anyhow::Result<FnRetriever> {
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

type RetrieveFn = Box<dyn Fn(&[&str], usize) -> anyhow::Result<Vec<Vec<r1s_core::Hit>>> + Send + Sync>;

/// Any retrieval closure as a core `Retriever` (in-process or HTTP, chosen at run time).
struct FnRetriever(RetrieveFn);

#[derive(Debug)]
struct RetrieveFailed(String);

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

fn generate(a: GenerateArgs, g: &Globals) -> anyhow::Result<()> {
    use r1s_policy::chat::{Message, Template};
    use_threads(a.threads);
    let device = r1s_policy::device(&a.device)?;
    let t = std::time::Instant::now();
    let policy = r1s_policy::Policy::load(&a.model, &device)?;
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
            serde_json::json!({"engine": "r1s", "batch": prompts.len(), "prompt_tokens": ids.len(), "new_tokens": n,
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

fn retrieve(a: RetrieveArgs) -> anyhow::Result<()> {
    use r1s_core::Retriever;
    let r = a.retriever.open()?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut answer = |queries: &[String]| -> anyhow::Result<()> {
        // a blank query gets no hits from every kind, without asking the retriever
        let refs: Vec<&str> = queries.iter().map(String::as_str).filter(|q| !q.trim().is_empty()).collect();
        let mut found = r.retrieve(&refs, a.k)?.into_iter();
        let hits: Vec<Vec<r1s_core::Hit>> = queries
            .iter()
            .map(|q| if q.trim().is_empty() { Vec::new() } else { found.next().unwrap_or_default() })
            .collect();
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
fn title_and_body(h: &r1s_core::Hit) -> (&str, &str) {
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
fn clip(s: &str, n: usize) -> String {
    let flat: String = s.chars().map(|c| if c.is_whitespace() { ' ' } else { c }).collect();
    if flat.chars().count() <= n {
        return flat;
    }
    let mut cut: String = flat.chars().take(n.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn serve(a: ServeArgs, g: &Globals, cancel: &Cancel) -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let r = Arc::new(a.retriever.open()?);
    let info = r.describe();
    let rows = r.corpus().docstore.len();
    let cfg = r1s_retrieve::ServeConfig {
        default_topk: a.topk,
        max_topk: a.max_topk,
        max_queries: a.max_queries,
        max_body_bytes: a.max_body_mib << 20,
        batch: r1s_retrieve::BatchConfig {
            coalesce: !a.no_batching,
            max_batch: a.max_batch,
            max_wait: std::time::Duration::from_secs_f64(a.max_wait_ms.max(0.0) / 1e3),
            max_queued: a.queue,
            workers: a.workers,
        },
        log_every: (a.log_every > 0.0).then(|| std::time::Duration::from_secs_f64(a.log_every)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.http_threads.max(1))
        .thread_name("r1s-http")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        if !g.quiet {
            eprintln!(
                "r1s serve: listening on http://{addr} ({} index of {rows} passages, ready in {:.2} s); POST /retrieve, POST /queries, GET /health, GET /metrics",
                r.kind(),
                t.elapsed().as_secs_f64()
            );
        }
        // ctrl-c and SIGTERM set the cancel flag (ctrlc's handler): stop accepting, finish, exit
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(r1s_retrieve::serve(r.clone(), listener, cfg, info, async {
            let _ = stopped.await;
        }));
        while !cancel.is_cancelled() && !server.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let _ = stop.send(());
        server.await.context("the server task")?.context("serving")
    })?;
    if !g.quiet {
        eprintln!("r1s serve: stopped");
    }
    Ok(())
}

/// `r1s_` and the index directory's name, with every character Milvus does not take as `_`.
fn default_collection(out: &Path) -> String {
    let name = std::path::absolute(out).ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let clean: String =
        name.unwrap_or_default().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("r1s_{clean}")
}

fn is_corpus_dir(p: &Path) -> bool {
    p.is_dir() && p.join("manifest.json").is_file() && p.join("docstore.idx").is_file()
}

fn index(cmd: IndexCmd, g: &Globals, cancel: &Cancel) -> anyhow::Result<()> {
    match cmd {
        IndexCmd::Build(a) => index_build(a, g, cancel),
        IndexCmd::Plan(a) => index_plan(&a),
        IndexCmd::Info { dir } => {
            must_exist(&dir, "index directory")?;
            // each kind is opened (its files checked against the manifest) before it is shown
            let manifest = match r1s_retrieve::index_kind(&dir).as_deref() {
                Some(r1s_bm25::KIND) => serde_json::to_value(r1s_bm25::Bm25Index::open(&dir)?.manifest)?,
                Some(r1s_retrieve::hybrid::KIND) => {
                    let m = r1s_retrieve::HybridManifest::read(&dir)?;
                    let dense = r1s_index::OpenIndex::open(&r1s_retrieve::HybridManifest::part(&dir, &m.dense))?;
                    let bm25 = r1s_bm25::Bm25Index::open(&r1s_retrieve::HybridManifest::part(&dir, &m.bm25))?;
                    let mut v = serde_json::to_value(&m)?;
                    v["parts"] = serde_json::json!({"dense": dense.manifest, "bm25": bm25.manifest});
                    v
                }
                _ => serde_json::to_value(r1s_index::OpenIndex::open(&dir)?.manifest)?,
            };
            println!("{}", serde_json::to_string_pretty(&manifest)?);
            Ok(())
        }
        IndexCmd::Eval { index, answers: Some(answers), k, limit, batch, threads, lexical, .. } => {
            answer_recall(&index, &answers, k, limit, batch, threads, &lexical, g)
        }
        IndexCmd::Eval { index, queries, query_vectors, k, limit, ef, save_queries, .. } => {
            if let Some(kind @ ("bm25" | "hybrid")) = r1s_retrieve::index_kind(&index).as_deref() {
                anyhow::bail!(
                    "{}: --queries / --query-vectors measure a dense index against exact search; this is a {kind} index: use --answers QUESTIONS.jsonl",
                    index.display()
                );
            }
            let queries = match (queries, query_vectors) {
                (_, Some(v)) => EvalQueries::Vectors(v),
                (Some(q), None) => EvalQueries::Texts(q),
                (None, None) => anyhow::bail!("--queries or --query-vectors is required"),
            };
            index_eval(&index, &queries, k, limit, &ef, save_queries.as_deref())
        }
    }
}

/// `index build`: ingest when INPUT is not a corpus, then the dense, bm25 or hybrid build.
fn index_build(a: IndexBuildArgs, g: &Globals, cancel: &Cancel) -> anyhow::Result<()> {
    let bars = progress::Bars::new(g.quiet);
    let lexical_flags = a.lexical.k1.is_some() || a.lexical.b.is_some();
    let fusion_flags = a.lexical.fusion.is_some()
        || a.lexical.rrf_k.is_some()
        || a.lexical.weight.is_some()
        || a.lexical.depth.is_some();
    match a.kind {
        BuildKind::Dense(_) => anyhow::ensure!(
            !lexical_flags && !fusion_flags && a.dense.is_none(),
            "--k1, --b, --fusion, --rrf-k, --weight, --depth, --dense and --bm25 are settings of --kind bm25 and hybrid"
        ),
        BuildKind::Bm25 => anyhow::ensure!(
            !fusion_flags && a.dense.is_none(),
            "--fusion, --rrf-k, --weight, --depth, --dense and --bm25 are settings of --kind hybrid"
        ),
        BuildKind::Hybrid => anyhow::ensure!(
            a.dense.is_none() || (a.input.is_none() && !lexical_flags),
            "with --dense and --bm25 nothing is built: INPUT, --k1 and --b do not apply"
        ),
    }
    if let Some(input) = &a.input {
        must_exist(input, "input")?;
    }
    for part in [&a.dense, &a.bm25].into_iter().flatten() {
        must_exist(part, "index directory")?;
    }
    let corpus = match &a.input {
        None => None,
        Some(input) if is_corpus_dir(input) => Some(input.clone()),
        Some(input) => {
            let name = a.out.file_name().map(|n| n.to_owned()).unwrap_or_else(|| "corpus".into());
            let corpus = a.corpus_out.clone().unwrap_or_else(|| PathBuf::from("corpora").join(name));
            if is_corpus_dir(&corpus) {
                same_input(&corpus, input)?;
                eprintln!(
                    "corpus {} exists (ingested from {}): not ingesting again",
                    corpus.display(),
                    input.display()
                );
            } else {
                let opts = IngestOptions {
                    threads: a.threads,
                    format: a.format,
                    skip_bad: a.skip_bad,
                    chunking: a.chunking,
                    ..IngestOptions::default()
                };
                r1s_corpus::ingest(std::slice::from_ref(input), &corpus, &opts, &bars, cancel)?;
            }
            Some(corpus)
        }
    };
    // another kind's index in --out is replaced, but its files are not ours to delete
    let building = match a.kind {
        BuildKind::Dense(k) => k.name(),
        BuildKind::Bm25 => "bm25",
        BuildKind::Hybrid => "hybrid",
    };
    let dense_kinds = ["flat", "hnsw", "hnsw-rs", "faiss", "milvus"];
    if let Some(old) = r1s_retrieve::index_kind(&a.out)
        && old != building
        && !(dense_kinds.contains(&old.as_str()) && dense_kinds.contains(&building))
    {
        eprintln!(
            "warning: {} holds a {old} index; it becomes a {building} index, and the {old} index's files stay beside it (remove them to free the space)",
            a.out.display()
        );
    }
    let needs_corpus = |what: &str| {
        corpus.clone().with_context(|| {
            format!("--kind {what} needs INPUT: a corpus directory, or a dump / JSONL / TSV file to ingest first")
        })
    };
    match a.kind {
        BuildKind::Dense(kind) => {
            build_dense(&a, kind, corpus.as_deref(), &a.out, default_collection(&a.out), &bars, g, cancel)
        }
        BuildKind::Bm25 => build_bm25(&a, &needs_corpus("bm25")?, &a.out, &bars, g, cancel),
        BuildKind::Hybrid => {
            let hybrid_manifest = a.out.join(r1s_index::MANIFEST_FILE);
            let (dense, bm25) = match (&a.dense, &a.bm25) {
                (Some(d), Some(b)) => (d.clone(), b.clone()),
                _ => {
                    let corpus = needs_corpus("hybrid")?;
                    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
                    // not a finished hybrid index until its parts are
                    match std::fs::remove_file(&hybrid_manifest) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(e).with_context(|| format!("removing {}", hybrid_manifest.display()));
                        }
                        _ => {}
                    }
                    let (d, b) = (a.out.join("dense"), a.out.join("bm25"));
                    let collection = format!("{}_dense", default_collection(&a.out));
                    build_dense(&a, a.dense_kind, Some(&corpus), &d, collection, &bars, g, cancel)?;
                    build_bm25(&a, &corpus, &b, &bars, g, cancel)?;
                    (d, b)
                }
            };
            let fusion = a.lexical.fusion()?.unwrap_or_default();
            let depth = a.lexical.depth.map_or(r1s_retrieve::hybrid::DEFAULT_DEPTH, |d| d as usize);
            let m = r1s_retrieve::hybrid::write_manifest(&a.out, &dense, &bm25, fusion, depth)?;
            if !g.quiet {
                println!(
                    "{}: hybrid index of {} passages (dense {}, bm25 {}; {} fusion of {depth} x k candidates per side)",
                    a.out.display(),
                    m.rows,
                    m.dense,
                    m.bm25,
                    fusion.name()
                );
            }
            Ok(())
        }
    }
}

/// Checks that the existing corpus `corpus` was ingested from `input` as it is now (path, size, and
/// sha256 when recorded and the file is under 256 MiB), so that `index build` never indexes a stale
/// corpus in silence.
fn same_input(corpus: &Path, input: &Path) -> anyhow::Result<()> {
    let m = r1s_corpus::store::Manifest::read(corpus)?;
    let meta = std::fs::metadata(input).with_context(|| format!("reading {}", input.display()))?;
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let found = m.inputs.iter().find(|i| canon(Path::new(&i.path)) == canon(input));
    let why = match found {
        None => Some(format!(
            "it was ingested from {}",
            m.inputs.iter().map(|i| i.path.as_str()).collect::<Vec<_>>().join(", ")
        )),
        Some(i) if i.bytes != meta.len() => {
            Some(format!("{} had {} bytes when ingested and has {} now", input.display(), i.bytes, meta.len()))
        }
        Some(i) => match &i.sha256 {
            Some(sha) if meta.len() <= 256 << 20 => {
                let now =
                    r1s_core::fsutil::sha256_file(input).with_context(|| format!("reading {}", input.display()))?;
                (&now != sha).then(|| format!("{} changed since it was ingested (sha256)", input.display()))
            }
            _ => None,
        },
    };
    match why {
        Some(why) => anyhow::bail!(
            "corpus {} exists and does not hold {}: {why}; remove it, or give another directory with --corpus-out",
            corpus.display(),
            input.display()
        ),
        None => Ok(()),
    }
}

/// Builds a bm25 index of `corpus` into `out`.
fn build_bm25(
    a: &IndexBuildArgs,
    corpus: &Path,
    out: &Path,
    bars: &progress::Bars,
    g: &Globals,
    cancel: &Cancel,
) -> anyhow::Result<()> {
    let o = r1s_bm25::BuildOptions {
        params: a.lexical.bm25(r1s_bm25::Bm25Params::default()).unwrap_or_default(),
        threads: a.threads,
        checkpoint_every: a.checkpoint_every.max(1),
        resume: !a.no_resume,
        ..Default::default()
    };
    let built = r1s_bm25::build(corpus, out, &o, bars, cancel);
    if matches!(built, Err(r1s_bm25::Bm25Error::Cancelled)) {
        eprintln!(
            "the BM25 build committed its progress in {}: rerun the same command to resume it",
            out.join(r1s_bm25::PART_DIR).display()
        );
    }
    let m = built?;
    if !g.quiet {
        println!(
            "{}: bm25 index of {} passages, {} terms, {:.1} terms per passage (k1 {}, b {}; corpus {}) built in {:.1} s",
            out.display(),
            m.rows,
            m.terms,
            m.tokens as f64 / m.rows.max(1) as f64,
            m.params.k1,
            m.params.b,
            m.corpus,
            m.build_seconds
        );
    }
    Ok(())
}

/// Embeds `corpus` (when given) into `out` and builds the dense index of `kind` there.
#[allow(clippy::too_many_arguments)]
fn build_dense(
    a: &IndexBuildArgs,
    kind: r1s_index::Kind,
    corpus: Option<&Path>,
    out: &Path,
    collection: String,
    bars: &progress::Bars,
    g: &Globals,
    cancel: &Cancel,
) -> anyhow::Result<()> {
    if let Some(corpus) = corpus {
        let preset = a.preset.as_deref().map(r1s_embed::Preset::named).transpose()?;
        let cfg =
            r1s_embed::EmbedderConfig { model: a.model.clone(), preset, threads: a.threads, ..Default::default() };
        let embedder = r1s_embed::OnnxEmbedder::load(&cfg)?;
        let job = r1s_embed::EmbedJob { dtype: a.dtype, ..r1s_embed::EmbedJob::new(corpus, out) };
        r1s_embed::embed_corpus(&embedder, &job, bars, cancel)?;
    } else if !out.join(r1s_index::EMBEDDINGS_FILE).is_file() {
        anyhow::bail!(
            "{}: no embeddings.npy to index; give INPUT (a corpus, dump or passages file) or run `r1s embed` first",
            out.display()
        );
    }
    let params = r1s_index::BuildParams {
        hnsw: r1s_index::HnswParams { m: a.m, ef_construction: a.ef_construction, ef_search: a.ef_search },
        faiss_factory: a.factory.clone(),
        faiss_ef_search: a.ef_search,
        quant: r1s_index::QuantParams {
            quantize: a.quantize,
            rerank: !a.no_rerank,
            rerank_factor: a.rerank_factor.max(1),
        },
        checkpoint_every: a.checkpoint_every.max(1),
        resume: !a.no_resume,
        milvus: r1s_index::MilvusBuild {
            params: r1s_index::MilvusParams {
                uri: a.milvus_uri.clone(),
                collection: a.collection.clone().unwrap_or(collection),
                index_type: a.milvus_index,
                m: a.m,
                ef_construction: a.ef_construction,
                ef_search: a.ef_search,
                nlist: a.nlist,
                nprobe: a.nprobe,
                timeout_ms: a.milvus_timeout_ms,
                ..Default::default()
            },
            replace: a.replace,
            batch_rows: 0,
            fresh: false,
        },
    };
    let pool = rayon_pool(a.threads)?;
    let built = pool.install(|| r1s_index::build(out, kind, &params, bars, cancel));
    if matches!(built, Err(r1s_index::IndexError::Cancelled)) && out.join(r1s_index::CHECKPOINT_FILE).exists() {
        eprintln!(
            "the graph build was checkpointed in {}: rerun the same command to resume it",
            out.join(r1s_index::CHECKPOINT_FILE).display()
        );
    }
    let m = built?;
    if !g.quiet {
        let q = if a.quantize == r1s_index::Quantize::Sq8 { " sq8" } else { "" };
        println!(
            "{}: {:?}{q} index of {} x {} vectors (corpus {}) built in {:.1} s",
            out.display(),
            m.kind,
            m.rows,
            m.dim,
            if m.corpus.is_empty() { "-" } else { m.corpus.as_str() },
            m.build_seconds
        );
        if m.kind == r1s_index::Kind::Milvus {
            println!(
                "Milvus collection {} at {}: serving nodes need only {} (with the corpus and the model)",
                m.params["collection"].as_str().unwrap_or_default(),
                m.params["uri"].as_str().unwrap_or_default(),
                out.join(r1s_index::MANIFEST_FILE).display()
            );
        }
        if let Some(peak) = r1s_core::mem::peak_rss_bytes() {
            println!("peak RSS {:.0} MiB", peak as f64 / 1048576.0);
        }
    }
    Ok(())
}

/// `index eval --answers`: answer recall@k of the index's retriever (and, for a hybrid index, of
/// its parts and both fusions) on a question set, with queries/s.
#[allow(clippy::too_many_arguments)]
fn answer_recall(
    dir: &Path,
    path: &Path,
    k: usize,
    limit: Option<usize>,
    batch: usize,
    threads: usize,
    lexical: &LexicalArgs,
    g: &Globals,
) -> anyhow::Result<()> {
    use r1s_core::{Hit, Progress, Retriever};
    use r1s_retrieve::{AnyRetriever, Fusion};
    anyhow::ensure!(k >= 1 && batch >= 1, "--k and --batch must be at least 1");
    must_exist(dir, "index directory")?;
    use_threads(threads);
    let questions = r1s_agent::read_questions(path, limit)?;
    anyhow::ensure!(!questions.is_empty(), "{}: no questions", path.display());
    let opts = r1s_retrieve::RetrieverOptions {
        dense: r1s_retrieve::DenseOptions { threads, ..Default::default() },
        bm25: lexical.bm25(bm25_defaults(dir)),
        hybrid: lexical.hybrid()?,
    };
    let r = AnyRetriever::open(dir, &opts)?;
    let mut ks: Vec<usize> = vec![1, 3, 5, 10, k];
    ks.sort_unstable();
    ks.dedup();
    ks.retain(|&x| x <= k.max(10));
    let depth = *ks.last().unwrap_or(&10);
    type Run<'a> = Box<dyn Fn(&[&str], usize) -> Result<Vec<Vec<Hit>>, r1s_retrieve::RetrieveError> + 'a>;
    let mut runs: Vec<(String, Run<'_>)> = Vec::new();
    match &r {
        AnyRetriever::Hybrid(h) => {
            let dense_kind = h.dense().index().manifest.kind.name();
            runs.push((format!("dense ({dense_kind})"), Box::new(|q, k| h.dense().retrieve(q, k))));
            runs.push((
                "bm25".into(),
                Box::new(|q, k| h.bm25().search(q, k)?.iter().map(|s| r1s_retrieve::to_hits(h.corpus(), s)).collect()),
            ));
            let rrf = match h.fusion() {
                f @ Fusion::Rrf { .. } => f,
                _ => Fusion::default(),
            };
            let linear = match h.fusion() {
                f @ Fusion::Linear { .. } => f,
                _ => Fusion::Linear { weight: 0.5 },
            };
            for f in [rrf, linear] {
                let name = match f {
                    Fusion::Rrf { k } => format!("hybrid rrf k={k}"),
                    Fusion::Linear { weight } => format!("hybrid linear w={weight}"),
                };
                runs.push((
                    name,
                    Box::new(move |q, k| {
                        h.search_scored_with(q, k, f)?.iter().map(|s| r1s_retrieve::to_hits(h.corpus(), s)).collect()
                    }),
                ));
            }
        }
        other => runs.push((other.kind(), Box::new(|q, k| other.retrieve(q, k)))),
    }
    let golds: Vec<Vec<String>> = questions
        .iter()
        .map(|q| q.answers.iter().map(|a| r1s_agent::metrics::normalize(a)).filter(|a| !a.is_empty()).collect())
        .collect();
    let texts: Vec<&str> = questions.iter().map(|q| q.question.as_str()).collect();
    let mut normalized: std::collections::HashMap<u64, String> = std::collections::HashMap::new();
    let bars = progress::Bars::new(g.quiet);
    let mut table = Vec::new();
    for (name, run) in &runs {
        run(&texts[..1], depth)?; // first-call set-up (sessions, page faults) is not timed
        bars.start(name, Some(texts.len() as u64), r1s_core::Unit::Items);
        let t = std::time::Instant::now();
        let mut lists = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(batch) {
            lists.extend(run(chunk, depth)?);
            bars.advance(chunk.len() as u64);
        }
        let qps = texts.len() as f64 / t.elapsed().as_secs_f64().max(1e-9);
        bars.finish(&format!("{} questions, {qps:.0} queries/s", texts.len()));
        // the rank of the first passage holding a gold answer, per question
        let first: Vec<Option<usize>> = lists
            .iter()
            .zip(&golds)
            .map(|(hits, gold)| {
                hits.iter().position(|h| {
                    let text = normalized.entry(h.row).or_insert_with(|| r1s_agent::metrics::normalize(&h.contents));
                    gold.iter().any(|a| text.contains(a.as_str()))
                })
            })
            .collect();
        let recall: Vec<f64> = ks
            .iter()
            .map(|&k| first.iter().filter(|f| f.is_some_and(|r| r < k)).count() as f64 / first.len() as f64)
            .collect();
        table.push((name.clone(), recall, qps));
    }
    println!(
        "{} questions from {}; {} index {} ({} passages); batches of {batch}",
        texts.len(),
        path.display(),
        r.kind(),
        dir.display(),
        r.corpus().docstore.len()
    );
    print!("{:<24}", "retriever");
    for k in &ks {
        print!(" {:>7}", format!("R@{k}"));
    }
    println!(" {:>10}", "queries/s");
    for (name, recall, qps) in table {
        print!("{name:<24}");
        for r in recall {
            print!(" {r:>7.4}");
        }
        println!(" {qps:>10.0}");
    }
    Ok(())
}

/// Sizes rayon's global pool (burn's CPU backend and the retriever run on it); 0 keeps all cores.
fn use_threads(threads: usize) {
    if threads > 0 {
        let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    }
}

fn rayon_pool(threads: usize) -> anyhow::Result<rayon::ThreadPool> {
    Ok(rayon::ThreadPoolBuilder::new().num_threads(threads).build()?)
}

/// Reads queries: JSONL objects with "question", "query" or "text", else plain lines.
fn read_queries(path: &Path, limit: Option<usize>) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let q = if line.trim_start().starts_with('{') {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{}: line {}", path.display(), n + 1))?;
            ["question", "query", "text"].iter().find_map(|k| v[k].as_str().map(str::to_owned)).with_context(|| {
                format!("{}: line {}: no \"question\", \"query\" or \"text\"", path.display(), n + 1)
            })?
        } else {
            line.to_owned()
        };
        out.push(q);
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
    }
    Ok(out)
}

/// Where `index eval` takes its queries from.
enum EvalQueries {
    /// Texts, embedded with the index's model.
    Texts(PathBuf),
    /// A [n, dim] f32 .npy of query vectors.
    Vectors(PathBuf),
}

/// Recall@k against the exact scan and queries/s. One query is timed alone first (the first-query
/// latency), then one untimed pass warms the index, then the timed approximate searches run, then the
/// process's resident memory is read (what a search run touched: graph, codes, re-ranked rows), then
/// the exact scan.
fn index_eval(
    dir: &Path,
    queries: &EvalQueries,
    k: usize,
    limit: Option<usize>,
    efs: &[usize],
    save: Option<&Path>,
) -> anyhow::Result<()> {
    use r1s_core::{Embedder, VectorIndex};
    let t = std::time::Instant::now();
    let idx = r1s_index::OpenIndex::open(dir)?;
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let dim = idx.manifest.dim;
    let (qv, nq, embed_note) = match queries {
        EvalQueries::Texts(path) => {
            let embedder = r1s_retrieve::query_embedder(&idx.manifest, &Default::default())?;
            let qs = read_queries(path, limit)?;
            let refs: Vec<&str> = qs.iter().map(String::as_str).collect();
            let t = std::time::Instant::now();
            let qv = embedder.embed(&refs, r1s_core::Side::Query)?;
            let note = format!("{} queries embedded in {:.2} s", qs.len(), t.elapsed().as_secs_f64());
            if let Some(path) = save {
                let h = r1s_core::npy::NpyHeader::new(r1s_core::npy::Dtype::F32, qs.len() as u64, dim as u64);
                let mut bytes = h.to_bytes();
                bytes.extend(qv.iter().flat_map(|x| x.to_le_bytes()));
                std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
            }
            (qv, qs.len(), note)
        }
        EvalQueries::Vectors(path) => {
            let m = r1s_index::Matrix::open(path)?;
            anyhow::ensure!(m.dim() == dim, "{}: {}-dim vectors, the index holds {dim}", path.display(), m.dim());
            let n = limit.map_or(m.rows(), |l| (l as u64).min(m.rows()));
            let mut buf = Vec::new();
            let qv = m.block(0, n, &mut buf).to_vec();
            (qv, n as usize, format!("{n} query vectors from {}", path.display()))
        }
    };
    // one query alone, on whatever the page cache holds now (cold after a drop)
    let t = std::time::Instant::now();
    idx.search(&qv[..dim.min(qv.len())], k)?;
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    // each kind runs one untimed pass of every query at its largest ef first, so that the timed
    // passes measure a warm index (a server that has run a while), not the first pass's page faults
    let timed = |f: &dyn Fn() -> Result<Vec<Vec<r1s_core::Scored>>, r1s_index::IndexError>| -> anyhow::Result<(Vec<Vec<r1s_core::Scored>>, f64)> {
        let t = std::time::Instant::now();
        let r = f()?;
        Ok((r, nq as f64 / t.elapsed().as_secs_f64().max(1e-9)))
    };
    let mut rows: Vec<(String, Vec<Vec<r1s_core::Scored>>, f64)> = Vec::new();
    type Run<'a> = dyn Fn(usize) -> Result<Vec<Vec<r1s_core::Scored>>, r1s_index::IndexError> + 'a;
    // an HNSW graph at each ef (its default without --ef), after one warm-up pass at the largest
    let mut hnsw_rows = |name: &str, default_ef: usize, run: &Run<'_>| -> anyhow::Result<()> {
        let list = if efs.is_empty() { vec![default_ef] } else { efs.to_vec() };
        run(list.iter().copied().max().unwrap_or(default_ef))?;
        for ef in list {
            let (approx, qps) = timed(&|| run(ef))?;
            rows.push((format!("{name} ef={ef}"), approx, qps));
        }
        Ok(())
    };
    match &idx.index {
        r1s_index::Index::Hnsw { graph, .. } => {
            let name = if graph.quant.quantize == r1s_index::Quantize::Sq8 { "hnsw-sq8" } else { "hnsw" };
            hnsw_rows(name, graph.params.ef_search, &|ef| graph.search_ef(&qv, k, ef))?;
        }
        r1s_index::Index::HnswRs { graph, .. } => {
            hnsw_rows("hnsw-rs", graph.params.ef_search, &|ef| graph.search_ef(&qv, k, ef))?;
        }
        r1s_index::Index::FlatSq8 { index, .. } => {
            index.search(&qv, k)?;
            let (approx, qps) = timed(&|| index.search(&qv, k))?;
            rows.push((format!("flat-sq8 x{}", index.quant.rerank_factor), approx, qps));
        }
        r1s_index::Index::Faiss { index, .. } => {
            let factory = idx.manifest.params["factory"].as_str().unwrap_or("?").to_owned();
            let settings: Vec<Option<usize>> = if efs.is_empty() || !factory.contains("HNSW") {
                vec![None]
            } else {
                efs.iter().copied().map(Some).collect()
            };
            if let Some(&ef) = efs.iter().max().filter(|_| factory.contains("HNSW")) {
                index.set_parameter("efSearch", ef as f64)?;
            }
            index.search(&qv, k)?;
            for ef in settings {
                if let Some(ef) = ef {
                    index.set_parameter("efSearch", ef as f64)?;
                }
                let (approx, qps) = timed(&|| index.search(&qv, k))?;
                let name = ef.map_or_else(|| format!("faiss {factory}"), |ef| format!("faiss {factory} ef={ef}"));
                rows.push((name, approx, qps));
            }
        }
        r1s_index::Index::Milvus(index) => {
            let name = format!("milvus {}", index.params.index_type.name());
            let default = match index.params.index_type {
                r1s_index::MilvusIndexType::IvfFlat | r1s_index::MilvusIndexType::IvfSq8 => index.params.nprobe,
                _ => index.params.ef_search,
            };
            if index.params.index_type == r1s_index::MilvusIndexType::Flat {
                index.search(&qv, k)?;
                let (approx, qps) = timed(&|| index.search(&qv, k))?;
                rows.push((name, approx, qps));
            } else {
                hnsw_rows(&name, default, &|ef| index.search_ef(&qv, k, ef))?;
            }
        }
        r1s_index::Index::Flat(_) => {}
    }
    let resident = r1s_core::mem::rss_bytes();
    // a Milvus index's reference is the embeddings.npy it was built from, when it is still there
    let own;
    let flat = match idx.flat() {
        Some(f) => f,
        None => {
            own = r1s_index::FlatIndex::open(&idx.dir.join(r1s_index::EMBEDDINGS_FILE)).with_context(|| {
                format!("{}: recall needs the exact reference, embeddings.npy (kept by index build)", idx.dir.display())
            })?;
            &own
        }
    };
    let (exact, flat_qps) = timed(&|| flat.search(&qv, k))?;
    println!("{embed_note}; {} x {} vectors; k = {k}", idx.manifest.rows, idx.manifest.dim);
    println!("open {open_ms:.1} ms");
    println!("first query {first_ms:.1} ms");
    if let Some(r) = resident.filter(|_| !rows.is_empty()) {
        println!("resident after approximate searches {:.0} MiB", r as f64 / 1048576.0);
    }
    println!("{:<24} {:>10} {:>12}", "index", "recall@k", "queries/s");
    println!("{:<24} {:>10.4} {:>12.0}", "flat (exact)", 1.0, flat_qps);
    for (name, approx, qps) in rows {
        let r = r1s_index::recall_at_k(&exact, &approx, k);
        println!("{name:<24} {r:>10.4} {qps:>12.0}");
    }
    Ok(())
}

/// Prints `index plan`'s table: one configuration, or all of them against the RAM budget.
fn index_plan(a: &IndexPlanArgs) -> anyhow::Result<()> {
    use r1s_index::plan::{PlanInput, candidates, plan};
    use std::io::Write;
    anyhow::ensure!(a.rows >= 1 && a.dim >= 1, "--rows and --dim must be at least 1");
    anyhow::ensure!((2..=256).contains(&a.m), "--m must be in 2..=256 (as for index build)");
    anyhow::ensure!(a.ef_construction >= 1 && a.threads >= 1, "--ef-construction and --threads must be at least 1");
    anyhow::ensure!(
        matches!(a.kind, None | Some(r1s_index::Kind::Flat | r1s_index::Kind::Hnsw)),
        "index plan sizes the flat and hnsw kinds"
    );
    anyhow::ensure!(
        a.kind.is_some() || (a.quantize == r1s_index::Quantize::None && a.dtype == r1s_embed::Dtype::F32),
        "--quantize and --dtype choose one configuration: give --kind too (without it every configuration is shown)"
    );
    anyhow::ensure!(
        a.kind != Some(r1s_index::Kind::Hnsw) || a.rows < u64::from(u32::MAX),
        "an r1s HNSW graph holds fewer than 2^32 rows: shard the corpus"
    );
    let mut out = std::io::stdout().lock();
    let base = PlanInput {
        rows: a.rows,
        dim: a.dim,
        dtype: a.dtype,
        kind: a.kind.unwrap_or(r1s_index::Kind::Hnsw),
        quantize: a.quantize,
        m: a.m,
        ef_construction: a.ef_construction,
        passage_bytes: a.passage_bytes,
        threads: a.threads.max(1),
    };
    let configs = match a.kind {
        Some(kind) => {
            let dt = match (a.quantize, a.dtype) {
                (r1s_index::Quantize::Sq8, r1s_embed::Dtype::F16) => "sq8/f16",
                (r1s_index::Quantize::Sq8, _) => "sq8/f32",
                (_, r1s_embed::Dtype::F16) => "f16",
                _ => "f32",
            };
            vec![(format!("{} {dt}", if kind == r1s_index::Kind::Hnsw { "hnsw" } else { "flat" }), base)]
        }
        None => candidates(&base),
    };
    let gb = |b: u64| format!("{:.1} GB", b as f64 / 1e9);
    writeln!(
        out,
        "{} passages x {} dims, M {}, efConstruction {}, {} build threads, {} bytes a passage{}",
        a.rows,
        a.dim,
        a.m,
        a.ef_construction,
        a.threads,
        a.passage_bytes,
        a.ram.map_or_else(String::new, |r| format!(", RAM budget {}", gb(r)))
    )?;
    writeln!(
        out,
        "{:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9}{}",
        "config",
        "vectors",
        "codes",
        "graph",
        "passages",
        "disk",
        "serve RAM",
        "build RAM",
        "build",
        if a.ram.is_some() { "  fits" } else { "" }
    )?;
    for (name, p) in configs {
        let e = plan(&p);
        let fits = a.ram.map(|ram| if e.serve_ram_bytes <= ram && e.build_ram_bytes <= ram { "  yes" } else { "  no" });
        let build = match e.build_seconds {
            s if s <= 0.0 => "-".into(),
            s if s < 60.0 => format!("{s:.0} s"),
            s if s < 3600.0 => format!("{:.0} min", s / 60.0),
            s => format!("{:.1} h", s / 3600.0),
        };
        writeln!(
            out,
            "{name:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {build:>9}{}",
            gb(e.vectors_bytes),
            gb(e.codes_bytes),
            gb(e.graph_bytes),
            gb(e.docstore_bytes),
            gb(e.disk_bytes),
            gb(e.serve_ram_bytes),
            gb(e.build_ram_bytes),
            fits.unwrap_or("")
        )?;
    }
    writeln!(
        out,
        "serve RAM: what stays resident to search at full speed (graph + vectors or codes); passages and re-ranked rows come from the page cache per hit"
    )?;
    writeln!(
        out,
        "build: the graph alone (embedding not included), from tools/bench-scale's 2-thread builds at 100k-1M rows, assuming linear scaling with threads"
    )?;
    Ok(())
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
            None => r1s_embed::model::preset_for(&a.model)?,
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
        batch: a.batch.unwrap_or(a.device.default_batch()),
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
