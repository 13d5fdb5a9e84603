//! `r1s index build | plan | info | eval`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use r1s_core::Cancel;
use r1s_corpus::{Format, IngestOptions};

use crate::corpus::{is_corpus_dir, parse_format};
use crate::embed::parse_dtype;
use crate::{Globals, must_exist, progress, rayon_pool, use_threads};

#[derive(Debug, Subcommand)]
pub(crate) enum IndexCmd {
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
        #[arg(long, conflicts_with_all = ["queries", "query_vectors", "save_queries", "ef", "rerank_top", "truth"])]
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
        /// HNSW SQ8: re-rank only the N best of the ef candidates for this run (default: the
        /// index's setting, see `index build --rerank-top`).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        rerank_top: Option<u64>,
        /// The exact top-k instead of r1s's own exact scan (which reads every row for the queries:
        /// minutes at Wikipedia scale): JSONL, one JSON array of row ids per query, best first, at
        /// least k each (e.g. faiss IndexFlatIP's ids). The flat row then shows no queries/s.
        #[arg(long)]
        truth: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct IndexBuildArgs {
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
    /// hnsw sq8: re-rank only the N best of the ef candidates by code score (raised to k when
    /// smaller; default: all of them). Fewer re-ranked rows read fewer pages of embeddings.npy per
    /// query, at some recall (measured in the project's docs/scale.md). Search-time settings
    /// (--ef-search, --no-rerank, --rerank-factor, --rerank-top) changed alone on a finished index
    /// rewrite only its manifest.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rerank_top: Option<u64>,
    /// hnsw: inserts between two durable checkpoints of the graph build (hnsw.r1s.ckpt; default: one
    /// every 10 minutes of build, as each writes the whole graph: 5.3 GiB at 21M rows, M 32); bm25:
    /// passages between two commits (default 1,000,000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: Option<u64>,
    /// hnsw: start the graph over even when a checkpoint of an interrupted build is there; milvus:
    /// insert every row again; bm25: index every passage again.
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
    /// Replace what --out holds when it is another r1s index (another kind, or built from another
    /// corpus): its files are removed before the build. milvus: also drop an existing collection of
    /// that name holding other vectors. Without it both are refused. A directory holding a corpus
    /// or files no index build wrote is refused either way.
    #[arg(long)]
    replace: bool,
    /// milvus: deadline of one call to the server, retries included, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    milvus_timeout_ms: u64,
    /// Where to ingest a non-corpus INPUT (default: corpora/<name of --out> under the current
    /// directory, not beside --out).
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

pub(crate) fn parse_kind(s: &str) -> Result<r1s_index::Kind, String> {
    s.parse()
}

/// What `index build --kind` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BuildKind {
    Dense(r1s_index::Kind),
    Bm25,
    Hybrid,
}

pub(crate) fn parse_build_kind(s: &str) -> Result<BuildKind, String> {
    match s {
        "bm25" => Ok(BuildKind::Bm25),
        "hybrid" => Ok(BuildKind::Hybrid),
        _ => s
            .parse()
            .map(BuildKind::Dense)
            .map_err(|_| format!("unknown index kind {s:?} (flat, hnsw, hnsw-rs, faiss, milvus, bm25, hybrid)")),
    }
}

/// A finite number >= 0 (BM25 k1, RRF k, a sampling temperature).
pub(crate) fn parse_nonneg(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("{s:?} is not a finite number >= 0")),
    }
}

/// A number in [0, 1] (BM25 b, a fusion weight).
pub(crate) fn parse_unit(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("{s:?} is not a number in [0, 1]")),
    }
}

pub(crate) fn parse_fusion(s: &str) -> Result<String, String> {
    match s {
        "rrf" | "linear" => Ok(s.to_owned()),
        _ => Err(format!("unknown fusion {s:?} (rrf, linear)")),
    }
}

/// BM25 and fusion settings: recorded as defaults by `index build`, overridden at query time by
/// `retrieve`, `serve` and `index eval`.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct LexicalArgs {
    /// bm25: term-frequency saturation, >= 0 (pyserini's default 0.9; BM25's textbook 1.2).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_nonneg)]
    k1: Option<f32>,
    /// bm25: length normalisation in [0, 1] (pyserini's default 0.4; textbook 0.75).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_unit)]
    b: Option<f32>,
    /// hybrid: rrf (reciprocal rank fusion, default) or linear (weighted sum of min-max normalised
    /// scores).
    #[arg(long, value_parser = parse_fusion)]
    fusion: Option<String>,
    /// hybrid rrf: the k in 1 / (k + rank), >= 0 (default 60).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_nonneg)]
    rrf_k: Option<f32>,
    /// hybrid linear: the dense side's weight in [0, 1]; BM25 gets 1 - weight (default 0.5).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_unit)]
    weight: Option<f32>,
    /// hybrid: candidates each side fetches before fusing, as a multiple of k (default 4; recall
    /// at a given k can change with it, and so with --k in `index eval`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1000))]
    depth: Option<u64>,
}

/// The k1 / b recorded in a bm25 index (or a hybrid's bm25 part), else pyserini's defaults: the
/// base that a lone --k1 or --b changes.
pub(crate) fn bm25_defaults(dir: &Path) -> r1s_bm25::Bm25Params {
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

impl LexicalArgs {
    /// k1 / b when either is given (the other from `base`).
    pub(crate) fn bm25(&self, base: r1s_bm25::Bm25Params) -> Option<r1s_bm25::Bm25Params> {
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

    pub(crate) fn hybrid(&self) -> anyhow::Result<r1s_retrieve::HybridOptions> {
        Ok(r1s_retrieve::HybridOptions { fusion: self.fusion()?, depth: self.depth.map(|d| d as usize), bm25: None })
    }
}

#[derive(Debug, Args)]
pub(crate) struct IndexPlanArgs {
    /// Passages (vectors); with --corpus, the corpus's by default.
    #[arg(long, required_unless_present = "corpus")]
    rows: Option<u64>,
    /// A corpus directory to size: its passage count (unless --rows) and its measured bytes per
    /// passage (the docstore's records, title and text) instead of --passage-bytes's assumption.
    #[arg(long, conflicts_with = "passage_bytes")]
    corpus: Option<PathBuf>,
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
    /// Mean bytes of a passage's text and title (default 600: 100-word Wikipedia passages).
    #[arg(long)]
    passage_bytes: Option<u64>,
    /// Threads of the build, as `index build` reads them (0 = all cores).
    #[arg(long, short = 'j', default_value_t = 0, env = "R1S_THREADS")]
    threads: usize,
    /// RAM budget (e.g. 64G, 512M): marks the configurations whose serving and build fit.
    #[arg(long, value_parser = parse_bytes)]
    ram: Option<u64>,
}

/// `Ok` when `ok`, else a usage error (exit 2) saying `msg`.
fn usage(ok: bool, msg: &str) -> anyhow::Result<()> {
    if ok { Ok(()) } else { Err(anyhow::Error::new(crate::UsageError(msg.to_owned()))) }
}

/// A corpus directory's passage count and mean bytes per passage as its docstore stores them
/// (the size of `docstore.bin`, which holds each passage's ids, title and text, over the
/// passages), what `index plan` sizes the passage store from.
fn corpus_passage_bytes(dir: &Path) -> anyhow::Result<(u64, u64)> {
    must_exist(dir, "corpus directory")?;
    usage(
        is_corpus_dir(dir),
        &format!("--corpus {}: not a corpus directory (no docstore and manifest.json)", dir.display()),
    )?;
    let rows = r1s_corpus::Manifest::read(dir)?.counts.passages;
    anyhow::ensure!(rows >= 1, "{}: the corpus holds no passages", dir.display());
    let data = dir.join(r1s_corpus::store::DOCSTORE_DATA);
    let len = std::fs::metadata(&data).with_context(|| format!("reading {}", data.display()))?.len();
    Ok((rows, (len / rows).max(1)))
}

/// `64G`, `512M`, `1.5T`, `1000000` (bytes; K/M/G/T are powers of 1024).
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
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

/// `r1s_` and the index directory's name, with every character Milvus does not take as `_`.
pub(crate) fn default_collection(out: &Path) -> String {
    let name = std::path::absolute(out).ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let clean: String =
        name.unwrap_or_default().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("r1s_{clean}")
}

pub(crate) fn index(cmd: IndexCmd, g: &Globals, cancel: &Cancel) -> anyhow::Result<()> {
    match cmd {
        IndexCmd::Build(a) => index_build(a, g, cancel),
        IndexCmd::Plan(a) => index_plan(&a),
        IndexCmd::Info { dir } => {
            must_exist(&dir, "index directory")?;
            if is_corpus_dir(&dir) {
                anyhow::bail!("{} is a corpus directory, not an index: see `r1s corpus stats {0}`", dir.display());
            }
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
        IndexCmd::Eval { index, queries, query_vectors, k, limit, ef, save_queries, rerank_top, truth, .. } => {
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
            let rerank_top = rerank_top.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
            let o = EvalOptions { efs: &ef, rerank_top, truth: truth.as_deref(), save: save_queries.as_deref() };
            index_eval(&index, &queries, k, limit, &o)
        }
    }
}

/// `index build`: ingest when INPUT is not a corpus, then the dense, bm25 or hybrid build.
/// Which `index build` flags apply to which kinds (`--kind`, and a hybrid's `--dense-kind`): one
/// that the kinds being built do not read is refused when given ("refused, not ignored"). --k1,
/// --b, the fusion flags, --dense and --bm25 are checked in [`index_build`]; the ingest and embed
/// flags in [`check_build_flags`], by what INPUT is.
pub(crate) const BUILD_FLAGS: &[(&str, &[&str])] = &[
    ("factory", &["faiss"]),
    ("m", &["hnsw", "hnsw-rs", "milvus"]),
    ("ef_construction", &["hnsw", "hnsw-rs", "milvus"]),
    ("ef_search", &["hnsw", "hnsw-rs", "faiss", "milvus"]),
    ("quantize", &["flat", "hnsw"]),
    ("no_rerank", &["flat", "hnsw"]),
    ("rerank_factor", &["flat"]),
    ("rerank_top", &["hnsw"]),
    ("checkpoint_every", &["hnsw", "bm25"]),
    ("no_resume", &["hnsw", "milvus", "bm25"]),
    ("milvus_uri", &["milvus"]),
    ("collection", &["milvus"]),
    ("milvus_index", &["milvus"]),
    ("nlist", &["milvus"]),
    ("nprobe", &["milvus"]),
    ("milvus_timeout_ms", &["milvus"]),
    ("dense_kind", &["hybrid"]),
];

/// Refuses the flags of [`BUILD_FLAGS`] that none of the kinds being built reads, and the ingest and
/// embedding flags when nothing is ingested or embedded.
fn check_build_flags(a: &IndexBuildArgs) -> anyhow::Result<()> {
    if let Some(input) = &a.input
        && !is_corpus_dir(input)
    {
        crate::corpus::check_chunking_flags(std::slice::from_ref(input), a.format)?;
    }
    let building: Vec<&str> = match a.kind {
        BuildKind::Dense(k) => vec![k.name()],
        BuildKind::Bm25 => vec!["bm25"],
        BuildKind::Hybrid if a.dense.is_some() => vec!["hybrid"],
        BuildKind::Hybrid => vec!["hybrid", a.dense_kind.name(), "bm25"],
    };
    let unused: Vec<&str> = BUILD_FLAGS
        .iter()
        .filter(|(_, kinds)| !kinds.iter().any(|k| building.contains(k)))
        .map(|(id, _)| *id)
        .collect();
    let refused = crate::given_flags(&unused);
    let usage = |msg: String| Err(anyhow::Error::new(crate::UsageError(msg)));
    if !refused.is_empty() {
        return usage(format!(
            "{} {} not apply to --kind {}{}: refused rather than ignored",
            refused.join(", "),
            if refused.len() == 1 { "does" } else { "do" },
            building[0],
            if building.len() > 1 { format!(" (with --dense-kind {})", building[1]) } else { String::new() }
        ));
    }
    let sq8 = a.quantize != r1s_index::Quantize::None;
    let refused = crate::given_flags(&["no_rerank", "rerank_factor", "rerank_top"]);
    if !sq8 && !refused.is_empty() {
        let (verb, what) = if refused.len() == 1 { ("is", "a setting") } else { ("are", "settings") };
        return usage(format!("{} {verb} {what} of --quantize sq8", refused.join(", ")));
    }
    let refused = crate::given_flags(&["rerank_factor", "rerank_top"]);
    if a.no_rerank && !refused.is_empty() {
        return usage(format!("{} choose what is re-ranked: not with --no-rerank", refused.join(", ")));
    }
    if building.contains(&r1s_index::Kind::Faiss.name()) && !a.factory.contains("HNSW") && crate::given("ef_search") {
        return usage(format!(
            "--ef-search sets the efSearch of a FAISS HNSW index; --factory {:?} has none: refused rather than ignored",
            a.factory
        ));
    }
    if a.ef_search == 0 || a.ef_construction == 0 || a.rerank_factor == 0 {
        return usage("--ef-search, --ef-construction and --rerank-factor must be at least 1".into());
    }
    let ingests = a.input.as_deref().is_some_and(|i| !is_corpus_dir(i));
    let refused = crate::given_flags(&["corpus_out", "format", "skip_bad", "chunking"]);
    if !ingests && !refused.is_empty() {
        return usage(format!(
            "{} {} how INPUT is ingested, and {}",
            refused.join(", "),
            if refused.len() == 1 { "sets" } else { "set" },
            if a.input.is_some() { "INPUT is a corpus already" } else { "no INPUT is given" }
        ));
    }
    let embeds = a.input.is_some() && !matches!(a.kind, BuildKind::Bm25) && a.dense.is_none();
    let refused = crate::given_flags(&["model", "preset", "dtype"]);
    if !embeds && !refused.is_empty() {
        return usage(format!(
            "{}: nothing is embedded ({})",
            refused.join(", "),
            if matches!(a.kind, BuildKind::Bm25) {
                "a bm25 index has no vectors"
            } else {
                "no INPUT: --out's embeddings.npy is indexed as it is"
            }
        ));
    }
    Ok(())
}

pub(crate) fn index_build(a: IndexBuildArgs, g: &Globals, cancel: &Cancel) -> anyhow::Result<()> {
    check_build_flags(&a)?;
    let lexical_flags = a.lexical.k1.is_some() || a.lexical.b.is_some();
    let fusion_flags = a.lexical.fusion.is_some()
        || a.lexical.rrf_k.is_some()
        || a.lexical.weight.is_some()
        || a.lexical.depth.is_some();
    let misplaced = match a.kind {
        BuildKind::Dense(_) => (lexical_flags || fusion_flags || a.dense.is_some()).then_some(
            "--k1, --b, --fusion, --rrf-k, --weight, --depth, --dense and --bm25 are settings of --kind bm25 and hybrid",
        ),
        BuildKind::Bm25 => (fusion_flags || a.dense.is_some())
            .then_some("--fusion, --rrf-k, --weight, --depth, --dense and --bm25 are settings of --kind hybrid"),
        BuildKind::Hybrid => (a.dense.is_some() && (a.input.is_some() || lexical_flags))
            .then_some("with --dense and --bm25 nothing is built: INPUT, --k1 and --b do not apply"),
    };
    if let Some(msg) = misplaced {
        return Err(anyhow::Error::new(crate::UsageError(msg.into())));
    }
    if let Some(input) = &a.input {
        must_exist(input, "input")?;
        if r1s_retrieve::index_kind(input).is_some() {
            anyhow::bail!(
                "INPUT {} is an index, not a corpus or a file to ingest (to build another kind from its corpus, give that corpus)",
                input.display()
            );
        }
    }
    for part in [&a.dense, &a.bm25].into_iter().flatten() {
        must_exist(part, "index directory")?;
    }
    let (building, kind_name) = match a.kind {
        BuildKind::Dense(k) => (Family::Dense, k.name()),
        BuildKind::Bm25 => (Family::Bm25, "bm25"),
        BuildKind::Hybrid => (Family::Hybrid, "hybrid"),
    };
    for (flag, part) in [("--dense", &a.dense), ("--bm25", &a.bm25)] {
        if let Some(part) = part
            && crate::same_path(part, &a.out)
        {
            return Err(anyhow::Error::new(crate::UsageError(format!(
                "--out {} is the {flag} index itself: a hybrid index goes in a directory of its own",
                a.out.display()
            ))));
        }
    }
    if let Some(input) = a.input.as_deref().filter(|i| !is_corpus_dir(i))
        && std::path::absolute(ingest_target(&a)).ok() == std::path::absolute(&a.out).ok()
    {
        return Err(anyhow::Error::new(crate::UsageError(format!(
            "{} would be ingested into {} (corpora/<name of --out>), which is --out itself: give --corpus-out or another --out",
            input.display(),
            a.out.display()
        ))));
    }
    // inside another index, the build would be files that index's rebuilds refuse (or a hybrid's
    // part, which its own build owns)
    if let Ok(abs) = std::path::absolute(&a.out)
        && let Some(parent) = abs.ancestors().skip(1).find(|d| r1s_retrieve::index_kind(d).is_some())
    {
        return Err(anyhow::Error::new(crate::UsageError(format!(
            "--out {} is inside the index {}: an index goes in a directory of its own, beside it",
            a.out.display(),
            parent.display()
        ))));
    }
    check_out_dir(&a.out, (building, kind_name), a.input.as_deref(), (a.replace, false))?;
    // the lock first: nothing in --out is removed (--replace) while another build writes there
    let created = !a.out.exists();
    let lock = lock_out(&a.out)?;
    let built = build_locked(&a, (building, kind_name), g, cancel);
    if built.is_err() {
        // a build that failed before writing anything leaves no directory that looks like an index
        let only_lock =
            std::fs::read_dir(&a.out).map(|d| d.flatten().all(|e| e.file_name() == BUILD_LOCK)).unwrap_or(false);
        if created && only_lock {
            drop(lock);
            let _ = std::fs::remove_dir_all(&a.out);
        }
    }
    built
}

/// Where `index build` ingests a non-corpus INPUT: --corpus-out, else corpora/<name of --out> under
/// the current directory.
fn ingest_target(a: &IndexBuildArgs) -> PathBuf {
    let name = a.out.file_name().map(|n| n.to_owned()).unwrap_or_else(|| "corpus".into());
    a.corpus_out.clone().unwrap_or_else(|| PathBuf::from("corpora").join(name))
}

/// [`index_build`] once its output directory is locked. A finished index in --out is rebuilt
/// beside it ([`side_dir`]) and swapped in whole when the new one is complete (or left as it is
/// when the build would make it again: a no-op that says so), so that an interrupted or failed
/// rebuild leaves the previous index answering; an unfinished one (an interrupted first build) goes
/// on in place. Milvus builds stay in place: their vectors live in the server, not in --out.
fn build_locked(
    a: &IndexBuildArgs,
    (building, kind_name): (Family, &str),
    g: &Globals,
    cancel: &Cancel,
) -> anyhow::Result<()> {
    let bars = progress::Bars::new(g);
    let milvus = match a.kind {
        BuildKind::Dense(k) => k == r1s_index::Kind::Milvus,
        BuildKind::Hybrid => a.dense_kind == r1s_index::Kind::Milvus && a.dense.is_none(),
        BuildKind::Bm25 => false,
    };
    let rebuild = a.out.join(r1s_index::MANIFEST_FILE).is_file() && !milvus;
    if !rebuild {
        check_out_dir(&a.out, (building, kind_name), a.input.as_deref(), (a.replace, true))?;
    }
    let corpus = match &a.input {
        None => None,
        Some(input) if is_corpus_dir(input) => Some(input.clone()),
        Some(input) => {
            let corpus = ingest_target(a);
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
    if let Some(c) = &corpus {
        check_out_corpus(&a.out, c, (a.replace, !rebuild))?;
    }
    if !rebuild {
        let at = Target { dir: &a.out, shown: &a.out, previous: None };
        return build_into(a, at, corpus.as_deref(), &bars, g, cancel).map(|_| ());
    }
    let (side, real_out) = side_dir(&a.out)?;
    // the side directory is r1s's own: leftovers of another family or corpus go, those of an
    // interrupted rebuild of this one are continued
    let side_lock = lock_out(&side)?;
    check_out_dir(&side, (building, kind_name), None, (true, true))?;
    if let Some(c) = &corpus {
        check_out_corpus(&side, c, (true, true))?;
    }
    seed_embeddings(&a.out, &side, corpus.as_deref())?;
    let at = Target { dir: &side, shown: &a.out, previous: Some(&a.out) };
    match build_into(a, at, corpus.as_deref(), &bars, g, cancel) {
        Ok(Built::Unchanged) => {
            drop(side_lock);
            std::fs::remove_dir_all(&side).with_context(|| format!("removing {}", side.display()))?;
            Ok(())
        }
        Ok(Built::New) => {
            // the real directory is swapped: `--out .` names the working directory (which cannot be
            // renamed by that name), and a symlink given as --out keeps pointing at the new index
            exchange_dirs(&side, &real_out).with_context(|| {
                format!(
                    "swapping the rebuilt index {} into {} ({} still holds the previous index)",
                    side.display(),
                    real_out.display(),
                    a.out.display()
                )
            })?;
            // the previous index, now at the side path (processes that mapped it keep their pages)
            std::fs::remove_dir_all(&side)
                .with_context(|| format!("removing the previous index at {}", side.display()))?;
            drop(side_lock);
            Ok(())
        }
        Err(e) => {
            eprintln!(
                "{} still holds the previous index, unchanged; the rebuild's progress is kept in {} (rerun the same command to continue it)",
                a.out.display(),
                side.display()
            );
            Err(e)
        }
    }
}

/// Where an `index build` writes: the directory, the name it shows (--out), and the finished index
/// it replaces, if any (compared with what it would build: equal, nothing is built).
#[derive(Clone, Copy)]
struct Target<'a> {
    dir: &'a Path,
    shown: &'a Path,
    previous: Option<&'a Path>,
}

/// What a build did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Built {
    /// Wrote a new index.
    New,
    /// Found the previous index to be what it would build: wrote nothing.
    Unchanged,
}

/// The ingest, embed and index stages of [`build_locked`] into `at`.
fn build_into(
    a: &IndexBuildArgs,
    at: Target<'_>,
    corpus: Option<&Path>,
    bars: &progress::Bars,
    g: &Globals,
    cancel: &Cancel,
) -> anyhow::Result<Built> {
    let needs_corpus = |what: &str| {
        corpus.map(Path::to_path_buf).with_context(|| {
            format!("--kind {what} needs INPUT: a corpus directory, or a dump / JSONL / TSV file to ingest first")
        })
    };
    match a.kind {
        BuildKind::Dense(kind) => build_dense(a, kind, corpus, at, default_collection(&a.out), bars, g, cancel),
        BuildKind::Bm25 => build_bm25(a, &needs_corpus("bm25")?, at, bars, g, cancel),
        BuildKind::Hybrid => {
            let hybrid_manifest = at.dir.join(r1s_index::MANIFEST_FILE);
            let (dense, bm25, parts) = match (&a.dense, &a.bm25) {
                (Some(d), Some(b)) => (d.clone(), b.clone(), Built::New),
                _ => {
                    let corpus = needs_corpus("hybrid")?;
                    std::fs::create_dir_all(at.dir).with_context(|| format!("creating {}", at.dir.display()))?;
                    // not a finished hybrid index until its parts are
                    match std::fs::remove_file(&hybrid_manifest) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(e).with_context(|| format!("removing {}", hybrid_manifest.display()));
                        }
                        _ => {}
                    }
                    let (d, b) = (at.dir.join("dense"), at.dir.join("bm25"));
                    let (shown_d, shown_b) = (at.shown.join("dense"), at.shown.join("bm25"));
                    let (prev_d, prev_b) = (at.previous.map(|p| p.join("dense")), at.previous.map(|p| p.join("bm25")));
                    let collection = format!("{}_dense", default_collection(&a.out));
                    let dense_at = Target { dir: &d, shown: &shown_d, previous: prev_d.as_deref() };
                    let dense_built =
                        build_dense(a, a.dense_kind, Some(&corpus), dense_at, collection, bars, g, cancel)?;
                    let bm25_at = Target { dir: &b, shown: &shown_b, previous: prev_b.as_deref() };
                    let bm25_built = build_bm25(a, &corpus, bm25_at, bars, g, cancel)?;
                    // an unchanged part is the previous one, linked into the new index whole
                    for (built, part, prev) in [(dense_built, &d, &prev_d), (bm25_built, &b, &prev_b)] {
                        if let (Built::Unchanged, Some(prev)) = (built, prev) {
                            link_tree(prev, part)?;
                        }
                    }
                    let parts = if dense_built == Built::Unchanged && bm25_built == Built::Unchanged {
                        Built::Unchanged
                    } else {
                        Built::New
                    };
                    (d, b, parts)
                }
            };
            let fusion = a.lexical.fusion()?.unwrap_or_default();
            let depth = a.lexical.depth.map_or(r1s_retrieve::hybrid::DEFAULT_DEPTH, |d| d as usize);
            let m = r1s_retrieve::hybrid::write_manifest(at.dir, &dense, &bm25, fusion, depth)?;
            if parts == Built::Unchanged
                && let Some(prev) = at.previous
                && r1s_retrieve::HybridManifest::read(prev).is_ok_and(|p| same_hybrid(&p, &m))
            {
                if !g.quiet {
                    println!(
                        "{}: this hybrid index is already built with these settings: nothing to do",
                        at.shown.display()
                    );
                }
                return Ok(Built::Unchanged);
            }
            if !g.quiet {
                // parts built here live in dense/ and bm25/; given ones are named by their paths
                let parts = if a.dense.is_some() {
                    format!("dense index {}, bm25 index {}", m.dense, m.bm25)
                } else {
                    format!("{} dense part, bm25 part", a.dense_kind.name())
                };
                println!(
                    "{}: hybrid index of {} passages ({parts}; {} fusion of {depth} x k candidates per side)",
                    at.shown.display(),
                    m.rows,
                    fusion.name()
                );
            }
            Ok(Built::New)
        }
    }
}

/// Whether two hybrid manifests describe the same index (all but the version that wrote them).
fn same_hybrid(a: &r1s_retrieve::HybridManifest, b: &r1s_retrieve::HybridManifest) -> bool {
    let strip = |m: &r1s_retrieve::HybridManifest| {
        let mut v = serde_json::to_value(m).unwrap_or_default();
        v["r1s_version"] = serde_json::Value::Null;
        v
    };
    strip(a) == strip(b)
}

/// The directory a finished index in `out` is rebuilt in: a hidden sibling (`.NAME.r1s-rebuild`,
/// same filesystem, so that the swap is a rename; same depth, so that the paths recorded relative
/// to the index, e.g. its corpus, hold in both).
/// Returns it with the real directory `out` names (symlinks and `.` resolved), which is what is
/// swapped.
fn side_dir(out: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let real = std::fs::canonicalize(out).with_context(|| format!("reading {}", out.display()))?;
    let (Some(parent), Some(name)) = (real.parent(), real.file_name()) else {
        anyhow::bail!("--out {}: an index directory needs a parent directory to be rebuilt beside", out.display());
    };
    Ok((parent.join(format!(".{}.r1s-rebuild", name.to_string_lossy())), real))
}

/// Hard-links the previous index's embeddings (`embeddings.npy`, `embeddings.json`, also those of a
/// hybrid's `dense/`) into the side directory when they embed the corpus being built (or when there
/// is no INPUT: they are the input), so that a rebuild over the same vectors does not embed again.
/// Never written in place (r1s's writers replace files by rename), so sharing the inode is safe.
fn seed_embeddings(out: &Path, side: &Path, corpus: Option<&Path>) -> anyhow::Result<()> {
    let corpus_id = corpus.map(|c| r1s_corpus::Manifest::read(c).map(|m| m.content_id())).transpose()?;
    for sub in ["", "dense"] {
        let (from, to) = (out.join(sub), side.join(sub));
        let meta = from.join(r1s_index::EMBEDDINGS_META);
        let embedded: Option<String> = std::fs::read(&meta)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            // embeddings written by another tool may not say which corpus they embed: ""
            .map(|m| m["corpus_id"].as_str().unwrap_or_default().to_owned());
        let Some(embedded) = embedded else { continue };
        if corpus_id.as_ref().is_some_and(|id| *id != embedded) || !from.join(r1s_index::EMBEDDINGS_FILE).is_file() {
            continue;
        }
        std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
        for name in [r1s_index::EMBEDDINGS_FILE, r1s_index::EMBEDDINGS_META] {
            relink(&from.join(name), &to.join(name))?;
        }
    }
    Ok(())
}

/// Makes `to` a hard link of `from`, replacing what `to` was.
fn relink(from: &Path, to: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(to) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", to.display()));
        }
        _ => {}
    }
    std::fs::hard_link(from, to).with_context(|| format!("linking {} to {}", to.display(), from.display()))
}

/// Replaces directory `to` by a tree of hard links to the files of `from` (an unchanged index part
/// taken into a rebuilt index whole); r1s's build lock and temporary files are left out.
fn link_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("removing {}", to.display()))?;
    }
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e.with_context(|| format!("reading {}", from.display()))?;
        let name = e.file_name();
        let n = name.to_string_lossy();
        if n == BUILD_LOCK || n.starts_with('.') && n.ends_with(".tmp") {
            continue;
        }
        let (src, dst) = (e.path(), to.join(&name));
        if e.file_type().with_context(|| format!("reading {}", src.display()))?.is_dir() {
            link_tree(&src, &dst)?;
        } else {
            relink(&src, &dst)?;
        }
    }
    Ok(())
}

/// Swaps directories `a` and `b` in one step (Linux `renameat2(RENAME_EXCHANGE)`): there is no
/// moment at which either path is missing, so a server opening `b` finds the old or the new index,
/// never neither. Elsewhere, or where the filesystem cannot exchange, three renames.
fn exchange_dirs(a: &Path, b: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
        let (ca, cb) = (c(a)?, c(b)?);
        // SAFETY: two valid NUL-terminated paths, relative to the working directory
        let r =
            unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)) {
            return Err(e);
        }
    }
    let mut parked = b.as_os_str().to_owned();
    parked.push(".r1s-swap");
    let parked = PathBuf::from(parked);
    std::fs::rename(b, &parked)?;
    std::fs::rename(a, b)?;
    std::fs::rename(&parked, a)
}

/// What an index directory's entries belong to: dense kinds share embeddings.npy (flat, hnsw,
/// hnsw-rs, faiss and milvus over one matrix), bm25 and hybrid have their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Dense,
    Bm25,
    Hybrid,
}

impl Family {
    fn of_kind(kind: &str) -> Family {
        match kind {
            r1s_bm25::KIND => Family::Bm25,
            r1s_retrieve::hybrid::KIND => Family::Hybrid,
            _ => Family::Dense,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::Dense => "dense",
            Family::Bm25 => "bm25",
            Family::Hybrid => "hybrid",
        }
    }
}

/// Every entry an `index build` writes into its output directory (finished or in progress), and the
/// family it belongs to (None: any, the manifest).
const INDEX_ENTRIES: &[(&str, Option<Family>)] = &[
    (r1s_index::MANIFEST_FILE, None),
    (r1s_index::EMBEDDINGS_FILE, Some(Family::Dense)),
    (r1s_index::EMBEDDINGS_META, Some(Family::Dense)),
    ("embeddings.npy.partial", Some(Family::Dense)),
    ("embeddings.state.json", Some(Family::Dense)),
    (r1s_index::CODES_FILE, Some(Family::Dense)),
    ("codes.sq8.part", Some(Family::Dense)),
    (r1s_index::hnsw::GRAPH_FILE, Some(Family::Dense)),
    ("hnsw.r1s.part", Some(Family::Dense)),
    (r1s_index::CHECKPOINT_FILE, Some(Family::Dense)),
    ("hnsw.r1s.ckpt.part", Some(Family::Dense)),
    (r1s_index::hnsw_rs_index::FILES[0], Some(Family::Dense)),
    (r1s_index::hnsw_rs_index::FILES[1], Some(Family::Dense)),
    (r1s_index::faiss_index::FILE, Some(Family::Dense)),
    (r1s_index::milvus::STATE_FILE, Some(Family::Dense)),
    (r1s_bm25::TANTIVY_DIR, Some(Family::Bm25)),
    (r1s_bm25::PART_DIR, Some(Family::Bm25)),
    ("dense", Some(Family::Hybrid)),
    ("bm25", Some(Family::Hybrid)),
];

/// Refuses an `index build --out` that would destroy or mix what the directory holds: the input
/// itself, a corpus, a file, files no index build wrote, or (without --replace) an index of another
/// family. With --replace, the other index's entries are removed first.
///
/// Run twice: before the build lock is taken (`remove` false: refusals only, so a refused build
/// writes nothing, not even its lock file, into what it refused), then under the lock (`remove`
/// true: --replace's removal happens only while no other build can be writing there).
fn check_out_dir(
    out: &Path,
    (building, kind_name): (Family, &str),
    input: Option<&Path>,
    (replace, remove): (bool, bool),
) -> anyhow::Result<()> {
    let refuse = |why: String| anyhow::Error::new(crate::UsageError(format!("--out {}: {why}", out.display())));
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        return Err(refuse("a file, not a directory: an index is a directory of its own".into()));
    }
    if input.is_some_and(|i| crate::same_path(i, out)) {
        return Err(refuse("the input itself: an index goes in a directory of its own, e.g. indexes/NAME".into()));
    }
    if is_corpus_dir(out) {
        return Err(refuse(
            "holds a corpus (passages, docstore, manifest.json): an index goes in a directory of its own, \
             e.g. indexes/NAME"
                .into(),
        ));
    }
    let mut ours = Vec::new();
    let mut foreign = Vec::new();
    for e in std::fs::read_dir(out).with_context(|| format!("reading {}", out.display()))? {
        let name = e.with_context(|| format!("reading {}", out.display()))?.file_name().to_string_lossy().into_owned();
        match INDEX_ENTRIES.iter().find(|(n, _)| *n == name) {
            Some(&(_, family)) => ours.push((name, family)),
            // hidden temporary files of r1s's own writers, and the build lock
            None if name.starts_with('.') && name.ends_with(".tmp") || name == BUILD_LOCK => {}
            None => foreign.push(name),
        }
    }
    if !foreign.is_empty() {
        foreign.sort();
        let shown: Vec<&str> = foreign.iter().take(5).map(String::as_str).collect();
        return Err(refuse(format!(
            "holds {} {} that no index build wrote ({}{}): give a new or empty directory",
            foreign.len(),
            if foreign.len() == 1 { "entry" } else { "entries" },
            shown.join(", "),
            if foreign.len() > shown.len() { ", …" } else { "" }
        )));
    }
    // the family there: the manifest's kind, else that of its unfinished files
    let there = r1s_retrieve::index_kind(out)
        .map(|k| Family::of_kind(&k))
        .or_else(|| ours.iter().find_map(|&(_, f)| f))
        .filter(|&f| f != building);
    if let Some(old) = there {
        if !replace {
            return Err(refuse(format!(
                "holds a {} index; building a {kind_name} index there would replace it: pass --replace, or give another directory",
                r1s_retrieve::index_kind(out).unwrap_or_else(|| format!("{} (unfinished)", old.name())),
            )));
        }
        if remove {
            remove_entries(out, &ours)?;
        }
    }
    Ok(())
}

/// The lock file an `index build` holds in its output directory while it writes there.
const BUILD_LOCK: &str = ".r1s-build.lock";

/// Takes the output directory's build lock (created with the directory), so that two builds into
/// one directory never write the same files at once: the second is refused while the first runs.
/// The lock is the operating system's (`flock`), released when the returned file is dropped or the
/// process ends, however it ends.
fn lock_out(out: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join(BUILD_LOCK);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(anyhow::Error::new(crate::UsageError(format!(
            "another `r1s index build` is writing {}: wait for it to end, or give another --out",
            out.display()
        )))),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

/// Refuses (without --replace) to build over an index of `out` that was built from another corpus
/// than `corpus`; with --replace and `remove`, removes its entries (a rebuild beside it removes
/// nothing: the swap replaces it whole).
fn check_out_corpus(out: &Path, corpus: &Path, (replace, remove): (bool, bool)) -> anyhow::Result<()> {
    let Some(built_from) = std::fs::read(out.join(r1s_index::MANIFEST_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|m| m["corpus_id"].as_str().map(str::to_owned))
        .filter(|id| !id.is_empty())
    else {
        return Ok(());
    };
    let id = r1s_corpus::Manifest::read(corpus)?.content_id();
    if id == built_from {
        return Ok(());
    }
    if !replace {
        return Err(anyhow::Error::new(crate::UsageError(format!(
            "--out {} holds an index of another corpus than {} (corpus id {} vs {}): pass --replace, or give another directory",
            out.display(),
            corpus.display(),
            &built_from[..built_from.len().min(12)],
            &id[..id.len().min(12)]
        ))));
    }
    if !remove {
        return Ok(());
    }
    let ours: Vec<(String, Option<Family>)> =
        INDEX_ENTRIES.iter().filter(|(n, _)| out.join(n).exists()).map(|&(n, f)| (n.to_owned(), f)).collect();
    remove_entries(out, &ours)
}

fn remove_entries(out: &Path, entries: &[(String, Option<Family>)]) -> anyhow::Result<()> {
    for (name, _) in entries {
        let p = out.join(name);
        let removed = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        removed.with_context(|| format!("removing {} (--replace)", p.display()))?;
    }
    Ok(())
}

/// Checks that the existing corpus `corpus` was ingested from `input` as it is now (path, size, and
/// sha256 when recorded and the file is under 256 MiB), so that `index build` never indexes a stale
/// corpus in silence.
pub(crate) fn same_input(corpus: &Path, input: &Path) -> anyhow::Result<()> {
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

/// Builds a bm25 index of `corpus` into `at` (nothing when the previous index is what it would build).
fn build_bm25(
    a: &IndexBuildArgs,
    corpus: &Path,
    at: Target<'_>,
    bars: &progress::Bars,
    g: &Globals,
    cancel: &Cancel,
) -> anyhow::Result<Built> {
    let o = r1s_bm25::BuildOptions {
        params: a.lexical.bm25(r1s_bm25::Bm25Params::default()).unwrap_or_default(),
        threads: a.threads,
        checkpoint_every: a.checkpoint_every.unwrap_or(r1s_bm25::BuildOptions::default().checkpoint_every),
        resume: !a.no_resume,
        ..Default::default()
    };
    if let Some(prev) = at.previous
        && let Some(m) = r1s_bm25::up_to_date(prev, corpus, &o)?
    {
        if !g.quiet {
            println!(
                "{}: this bm25 index of {} passages (k1 {}, b {}) is already built from this corpus: nothing to do",
                at.shown.display(),
                m.rows,
                m.params.k1,
                m.params.b
            );
        }
        return Ok(Built::Unchanged);
    }
    let built = r1s_bm25::build(corpus, at.dir, &o, bars, cancel);
    if matches!(built, Err(r1s_bm25::Bm25Error::Cancelled)) {
        eprintln!(
            "the BM25 build committed its progress in {}: rerun the same command to resume it",
            at.dir.join(r1s_bm25::PART_DIR).display()
        );
    }
    let m = built?;
    if !g.quiet {
        println!(
            "{}: bm25 index of {} passages, {} terms, {:.1} terms per passage (k1 {}, b {}; corpus {}) built in {:.1} s",
            at.shown.display(),
            m.rows,
            m.terms,
            m.tokens as f64 / m.rows.max(1) as f64,
            m.params.k1,
            m.params.b,
            m.corpus,
            m.build_seconds
        );
    }
    Ok(Built::New)
}

/// Embeds `corpus` (when given) into `at` and builds the dense index of `kind` there (nothing when
/// the previous index is what it would build over these embeddings).
#[allow(clippy::too_many_arguments)]
fn build_dense(
    a: &IndexBuildArgs,
    kind: r1s_index::Kind,
    corpus: Option<&Path>,
    at: Target<'_>,
    collection: String,
    bars: &progress::Bars,
    g: &Globals,
    cancel: &Cancel,
) -> anyhow::Result<Built> {
    let out = at.dir;
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
            rerank_top: a.rerank_top.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        },
        checkpoint_every: a.checkpoint_every.unwrap_or(u64::MAX),
        checkpoint_interval: match a.checkpoint_every {
            Some(_) => None,
            None => Some(r1s_index::DEFAULT_CHECKPOINT_INTERVAL),
        },
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
    if let Some(prev) = at.previous
        && let Some(current) =
            pool.install(|| r1s_index::up_to_date(prev, &out.join(r1s_index::EMBEDDINGS_FILE), kind, &params))?
    {
        let m = current.manifest();
        let sq8 = if m.params["quantize"] == "sq8" { " sq8" } else { "" };
        let what = format!("this {}{sq8} index of {} x {} vectors", m.kind.name(), m.rows, m.dim);
        match &current {
            r1s_index::Current::Same(_) => {
                if !g.quiet {
                    println!(
                        "{}: {what} is already built with these settings over these embeddings: nothing to do",
                        at.shown.display()
                    );
                }
            }
            r1s_index::Current::Retuned { to, .. } => {
                // only search-time settings differ: the previous index takes them, nothing is rebuilt
                r1s_index::write_manifest(prev, to)?;
                if !g.quiet {
                    let changes: Vec<String> = current
                        .changes()
                        .iter()
                        .map(|(k, from, to)| format!("{k} {} -> {}", shown(from), shown(to)))
                        .collect();
                    println!(
                        "{}: {what} differs only in search-time settings ({}): its manifest now has them, nothing was rebuilt (a running r1s serve takes them on SIGHUP)",
                        at.shown.display(),
                        changes.join(", ")
                    );
                }
            }
        }
        return Ok(Built::Unchanged);
    }
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
            at.shown.display(),
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
    Ok(Built::New)
}

/// What `index eval` measures besides the index's own setting.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EvalOptions<'a> {
    /// HNSW ef values to sweep (empty: the index's default).
    pub efs: &'a [usize],
    /// HNSW SQ8 re-ranked candidates (None: the index's setting).
    pub rerank_top: Option<usize>,
    /// The exact top-k as JSONL id arrays, instead of the exact scan.
    pub truth: Option<&'a Path>,
    /// Where to save the embedded query vectors.
    pub save: Option<&'a Path>,
}

/// `index eval --truth`: the first `nq` lines of `path` (lines past them are not read: `--limit`
/// takes the first queries), each a JSON array of at least `k` distinct row ids below `rows`, as
/// hits (scores 0: recall reads the ids only).
///
/// Errors: I/O; [`r1s_index::IndexError::BadFile`] naming the line of a malformed record.
fn read_truth(path: &Path, nq: usize, k: usize, rows: u64) -> anyhow::Result<Vec<Vec<r1s_core::Scored>>> {
    use std::io::BufRead;
    let bad = |line: usize, why: String| r1s_index::IndexError::BadFile {
        path: path.to_path_buf(),
        reason: format!("--truth line {line}: {why}"),
    };
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::with_capacity(nq.min(1 << 20));
    let mut reader = std::io::BufReader::new(f);
    let mut buf = Vec::new();
    while out.len() < nq {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).with_context(|| format!("reading {}", path.display()))?;
        let line = out.len() + 1;
        if n == 0 {
            return Err(
                bad(line, format!("the file ends after {} lines, {nq} queries need one each", out.len())).into()
            );
        }
        let text = std::str::from_utf8(&buf).map_err(|e| bad(line, format!("not UTF-8 ({e})")))?;
        let ids: Vec<u64> = serde_json::from_str(text.trim_end())
            .map_err(|e| bad(line, format!("not a JSON array of row ids ({e})")))?;
        let top = &ids[..ids.len().min(k)];
        if top.len() < k {
            return Err(bad(line, format!("{} ids, k is {k}", ids.len())).into());
        }
        if let Some(r) = top.iter().find(|&&r| r >= rows) {
            return Err(bad(line, format!("row {r} is past the index's {rows} rows")).into());
        }
        let distinct: std::collections::HashSet<u64> = top.iter().copied().collect();
        if distinct.len() < top.len() {
            return Err(bad(line, "a row id repeats in the top k".into()).into());
        }
        out.push(top.iter().map(|&r| (r, 0.0)).collect());
    }
    Ok(out)
}

/// A manifest value as a user gave it (`null`: not set, the default).
fn shown(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "default".into(),
        other => other.to_string(),
    }
}

/// `index eval --answers`: answer recall@k of the index's retriever (and, for a hybrid index, of
/// its parts and both fusions) on a question set, with queries/s.
#[allow(clippy::too_many_arguments)]
pub(crate) fn answer_recall(
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
    let bars = progress::Bars::new(g);
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

/// Reads queries: JSONL objects with "question", "query" or "text", else plain lines.
pub(crate) fn read_queries(path: &Path, limit: Option<usize>) -> anyhow::Result<Vec<String>> {
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
pub(crate) enum EvalQueries {
    /// Texts, embedded with the index's model.
    Texts(PathBuf),
    /// A [n, dim] f32 .npy of query vectors.
    Vectors(PathBuf),
}

/// Recall@k against the exact scan and queries/s. One query is timed alone first (the first-query
/// latency), then one untimed pass warms the index, then the timed approximate searches run, then the
/// process's resident memory is read (what a search run touched: graph, codes, re-ranked rows), then
/// the exact scan.
pub(crate) fn index_eval(
    dir: &Path,
    queries: &EvalQueries,
    k: usize,
    limit: Option<usize>,
    o: &EvalOptions<'_>,
) -> anyhow::Result<()> {
    let EvalOptions { efs, rerank_top, truth, save } = *o;
    use r1s_core::{Embedder, VectorIndex};
    let t = std::time::Instant::now();
    usage(k >= 1, "-k must be at least 1")?;
    usage(!efs.contains(&0), "--ef values must be at least 1")?;
    let mut idx = r1s_index::OpenIndex::open(dir)?;
    // --ef is efSearch (nprobe for Milvus IVF): an index without one refuses it rather than ignore it
    let has_ef = match &idx.index {
        r1s_index::Index::Hnsw { .. } | r1s_index::Index::HnswRs { .. } => true,
        r1s_index::Index::Faiss { .. } => idx.manifest.params["factory"].as_str().is_some_and(|f| f.contains("HNSW")),
        r1s_index::Index::Milvus(m) => m.params.index_type != r1s_index::MilvusIndexType::Flat,
        r1s_index::Index::Flat(_) | r1s_index::Index::FlatSq8 { .. } => false,
    };
    usage(
        efs.is_empty() || has_ef,
        "--ef sets an HNSW search's efSearch (a Milvus IVF's nprobe): this index has none",
    )?;
    if rerank_top.is_some() {
        let sq8_graph = matches!(&idx.index, r1s_index::Index::Hnsw { graph, .. } if graph.codes().is_some());
        usage(sq8_graph, "--rerank-top is a setting of hnsw indexes built with --quantize sq8")?;
        let reranks = matches!(&idx.index, r1s_index::Index::Hnsw { graph, .. } if graph.quant.rerank);
        usage(reranks, "--rerank-top: this index was built with --no-rerank, it re-ranks nothing")?;
        idx.set_rerank_top(rerank_top);
    }
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
    // a bad --truth fails before minutes of searching
    let index_rows = idx.manifest.rows;
    let given_truth = truth
        .map(|path| read_truth(path, nq, k.min(usize::try_from(index_rows).unwrap_or(usize::MAX)), index_rows))
        .transpose()?;
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
            // (--ef on a factory without HNSW was refused above)
            let settings: Vec<Option<usize>> =
                if efs.is_empty() { vec![None] } else { efs.iter().copied().map(Some).collect() };
            if let Some(&ef) = efs.iter().max() {
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
    let (exact, flat_qps) = match given_truth {
        Some(t) => (t, None),
        None => {
            // without --truth only: a Milvus index's reference is the embeddings.npy it was built
            // from, when it is still there
            let own;
            let flat = match idx.flat() {
                Some(f) => f,
                None => {
                    own = r1s_index::FlatIndex::open(&idx.dir.join(r1s_index::EMBEDDINGS_FILE)).with_context(|| {
                        format!(
                            "{}: recall needs the exact reference, embeddings.npy (kept by index build)",
                            idx.dir.display()
                        )
                    })?;
                    &own
                }
            };
            let (e, qps) = timed(&|| flat.search(&qv, k))?;
            (e, Some(qps))
        }
    };
    println!("{embed_note}; {} x {} vectors; k = {k}", idx.manifest.rows, idx.manifest.dim);
    println!("open {open_ms:.1} ms");
    println!("first query {first_ms:.1} ms");
    if let Some(r) = resident.filter(|_| !rows.is_empty()) {
        println!("resident after approximate searches {:.0} MiB", r as f64 / 1048576.0);
    }
    println!("{:<24} {:>10} {:>12}", "index", "recall@k", "queries/s");
    match flat_qps {
        Some(qps) => println!("{:<24} {:>10.4} {:>12.0}", "flat (exact)", 1.0, qps),
        None => println!("{:<24} {:>10.4} {:>12}", "flat (exact)", 1.0, "--truth"),
    }
    for (name, approx, qps) in rows {
        let r = r1s_index::recall_at_k(&exact, &approx, k);
        println!("{name:<24} {r:>10.4} {qps:>12.0}");
    }
    Ok(())
}

/// Prints `index plan`'s table: one configuration, or all of them against the RAM budget.
pub(crate) fn index_plan(a: &IndexPlanArgs) -> anyhow::Result<()> {
    use r1s_index::plan::{PlanInput, candidates, plan};
    use std::io::Write;
    let (rows, passage_bytes, measured) = match &a.corpus {
        Some(dir) => {
            let (rows, bytes) = corpus_passage_bytes(dir)?;
            (a.rows.unwrap_or(rows), bytes, format!(" (measured in {})", dir.display()))
        }
        None => (a.rows.unwrap_or(0), a.passage_bytes.unwrap_or(600), String::new()),
    };
    usage(rows >= 1 && a.dim >= 1, "--rows and --dim must be at least 1")?;
    usage((2..=256).contains(&a.m), "--m must be in 2..=256 (as for index build)")?;
    usage(a.ef_construction >= 1, "--ef-construction must be at least 1")?;
    let threads = match a.threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    usage(
        matches!(a.kind, None | Some(r1s_index::Kind::Flat | r1s_index::Kind::Hnsw)),
        "index plan sizes the flat and hnsw kinds",
    )?;
    usage(
        a.kind.is_some() || (a.quantize == r1s_index::Quantize::None && a.dtype == r1s_embed::Dtype::F32),
        "--quantize and --dtype choose one configuration: give --kind too (without it every configuration is shown)",
    )?;
    usage(
        a.kind != Some(r1s_index::Kind::Hnsw) || rows < u64::from(u32::MAX),
        "an r1s HNSW graph holds fewer than 2^32 rows: shard the corpus",
    )?;
    let mut out = std::io::stdout().lock();
    let base = PlanInput {
        rows,
        dim: a.dim,
        dtype: a.dtype,
        kind: a.kind.unwrap_or(r1s_index::Kind::Hnsw),
        quantize: a.quantize,
        m: a.m,
        ef_construction: a.ef_construction,
        passage_bytes,
        threads,
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
    let gb = r1s_core::mem::binary_size;
    writeln!(
        out,
        "{} passages x {} dims, M {}, efConstruction {}, {} build thread{}, {} bytes a passage{} (sizes in binary units: 1 GiB = 2^30 bytes, as --ram reads G)",
        rows,
        a.dim,
        a.m,
        a.ef_construction,
        threads,
        if threads == 1 { "" } else { "s" },
        passage_bytes,
        measured + &a.ram.map_or_else(String::new, |r| format!(", RAM budget {}", gb(r)))
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
        "disk: the finished index; an hnsw build needs one graph more while it runs (its last checkpoint stays until the next one, or the graph, is complete)"
    )?;
    writeln!(
        out,
        "build: the graph alone (embedding not included), fitted to tools/bench-scale's 2-thread builds at M 32 (f32 100k-1M rows, f16 1M-3M, sq8 1M-21M: 21 min for 10M x 384 and 52 min for 21M at efConstruction 100 on 2 cores), assuming linear scaling with threads and efConstruction; --m changes the sizes, not this estimate"
    )?;
    Ok(())
}
