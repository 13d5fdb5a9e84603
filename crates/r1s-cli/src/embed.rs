//! `r1s embed`.

use std::path::PathBuf;

use clap::Args;
use r1s_core::Cancel;

use crate::{Globals, progress};

#[derive(Debug, Args)]
pub(crate) struct EmbedArgs {
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

pub(crate) fn parse_device(s: &str) -> Result<r1s_embed::Device, String> {
    s.parse()
}

pub(crate) fn parse_dtype(s: &str) -> Result<r1s_embed::Dtype, String> {
    s.parse()
}

pub(crate) fn embed(a: EmbedArgs, g: &Globals, cancel: &Cancel) -> anyhow::Result<()> {
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
    crate::must_exist(&corpus, "corpus directory")?;
    let job = r1s_embed::EmbedJob {
        corpus,
        out,
        dtype: a.dtype,
        chunk_rows: a.chunk_rows,
        limit: a.limit,
        restart: a.restart,
    };
    let bars = progress::Bars::new(g);
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
