//! `r1s embed`: a corpus directory → `embeddings.npy` (row i = passage row i), written chunk by chunk
//! and resumable.
//!
//! While running, the output directory holds `embeddings.npy.partial` (header for the full matrix,
//! then the rows done so far) and `embeddings.state.json` (the settings, the number of complete
//! chunks and a sha256 per chunk). A rerun with the same settings checks the last complete chunk
//! against its checksum, truncates anything after it and continues; at the end the file is renamed
//! to `embeddings.npy` and `embeddings.json` describes it. The whole matrix is never in memory.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use r1s_core::npy::{Dtype, NpyHeader};
use r1s_core::{Cancel, Progress, Side, Unit};
use r1s_corpus::Corpus;
use serde::{Deserialize, Serialize};

use crate::error::{EmbedError, IoContext, Result};
use crate::model::OnnxEmbedder;

/// File names in the output directory.
pub const EMBEDDINGS_FILE: &str = "embeddings.npy";
pub const EMBEDDINGS_META: &str = "embeddings.json";
const PARTIAL_FILE: &str = "embeddings.npy.partial";
const STATE_FILE: &str = "embeddings.state.json";

/// What to embed and where.
#[derive(Debug, Clone)]
pub struct EmbedJob {
    /// Corpus directory.
    pub corpus: PathBuf,
    /// Output directory (created if needed).
    pub out: PathBuf,
    /// Storage type of the matrix.
    pub dtype: Dtype,
    /// Rows per resumable chunk.
    pub chunk_rows: usize,
    /// Embed only the first N passages.
    pub limit: Option<u64>,
    /// Discard a partial run with other settings, or a finished one, and start over.
    pub restart: bool,
}

impl EmbedJob {
    /// A job with default chunking and f32 storage.
    pub fn new(corpus: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        EmbedJob {
            corpus: corpus.into(),
            out: out.into(),
            dtype: Dtype::F32,
            chunk_rows: 1024,
            limit: None,
            restart: false,
        }
    }
}

/// Everything that must be equal for a resume to continue a partial file (see
/// [`Settings::differences`]: the model and the corpus are compared by content, not by path).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub model: String,
    pub model_sha256: String,
    pub preset: crate::preset::Preset,
    pub max_len: usize,
    pub dim: usize,
    pub dtype: Dtype,
    pub rows: u64,
    pub chunk_rows: usize,
    /// The corpus directory, relative to the output directory ([`r1s_core::paths::relative_to`]).
    pub corpus: String,
    /// [`r1s_corpus::Manifest::content_id`] of the corpus.
    pub corpus_id: String,
}

impl Settings {
    /// The settings that differ between `self` and `other`, each as `name (this vs that)`; empty
    /// when a run with `other` may continue or reuse one with `self`. The model is compared by its
    /// sha256 and the corpus by its content id, so that another spelling of the same path (or the
    /// same files elsewhere) is the same setting.
    pub fn differences(&self, other: &Settings) -> Vec<String> {
        let short = |s: &str| s.chars().take(12).collect::<String>();
        let mut d = Vec::new();
        let mut cmp = |name: &str, a: String, b: String| {
            if a != b {
                d.push(format!("{name} ({a} vs {b})"));
            }
        };
        cmp("model", short(&self.model_sha256), short(&other.model_sha256));
        cmp("preset", format!("{:?}", self.preset), format!("{:?}", other.preset));
        cmp("max_len", self.max_len.to_string(), other.max_len.to_string());
        cmp("dim", self.dim.to_string(), other.dim.to_string());
        cmp("dtype", format!("{:?}", self.dtype), format!("{:?}", other.dtype));
        cmp("rows", self.rows.to_string(), other.rows.to_string());
        cmp("chunk_rows", self.chunk_rows.to_string(), other.chunk_rows.to_string());
        cmp("corpus", short(&self.corpus_id), short(&other.corpus_id));
        d
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    settings: Settings,
    chunk_sha256: Vec<String>,
}

/// `embeddings.json`: what the matrix holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingsMeta {
    pub format: String,
    pub format_version: u32,
    pub r1s_version: String,
    #[serde(flatten)]
    pub settings: Settings,
    /// The text embedded for each passage.
    pub text: String,
    pub device: String,
    pub seconds: f64,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct EmbedReport {
    pub path: PathBuf,
    pub rows: u64,
    /// Rows embedded by this run (less than `rows` after a resume).
    pub embedded: u64,
    /// Rows found complete from an interrupted run.
    pub resumed_from: u64,
    pub seconds: f64,
}

use r1s_core::fsutil::sha256_hex;

fn sha256_file(path: &Path) -> Result<String> {
    r1s_core::fsutil::sha256_file(path).at(path)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    r1s_core::fsutil::write_atomic(path, bytes).at(path)
}

/// Embeds every passage of `job.corpus` (its Search-R1 `contents`, `"title"\ntext`) on the passage side.
pub fn embed_corpus(
    embedder: &OnnxEmbedder,
    job: &EmbedJob,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<EmbedReport> {
    let started = Instant::now();
    let corpus = Corpus::open(&job.corpus)?;
    let rows = job.limit.map_or(corpus.docstore.len(), |l| l.min(corpus.docstore.len()));
    if job.chunk_rows == 0 {
        return Err(EmbedError::Options("chunk rows must be at least 1".into()));
    }
    std::fs::create_dir_all(&job.out).at(&job.out)?;
    let settings = Settings {
        model: embedder.model_path().display().to_string(),
        model_sha256: sha256_file(embedder.model_path())?,
        preset: embedder.preset().clone(),
        max_len: embedder.max_len(),
        dim: r1s_core::Embedder::dim(embedder),
        dtype: job.dtype,
        rows,
        chunk_rows: job.chunk_rows,
        corpus: r1s_core::paths::relative_to(&job.corpus, &job.out).display().to_string(),
        corpus_id: corpus.manifest.content_id(),
    };
    let final_path = job.out.join(EMBEDDINGS_FILE);
    let meta_path = job.out.join(EMBEDDINGS_META);
    if final_path.exists() && !job.restart {
        let differ =
            match std::fs::read(&meta_path).ok().and_then(|b| serde_json::from_slice::<EmbeddingsMeta>(&b).ok()) {
                Some(m) => m.settings.differences(&settings),
                None => vec![format!("{} unreadable", meta_path.display())],
            };
        if differ.is_empty() {
            log::info!("{} is complete for these settings: nothing to do", final_path.display());
            return Ok(EmbedReport { path: final_path, rows, embedded: 0, resumed_from: rows, seconds: 0.0 });
        }
        return Err(EmbedError::Options(format!(
            "{} exists with other settings: {} (pass --restart to replace it)",
            final_path.display(),
            differ.join(", ")
        )));
    }

    let header = NpyHeader::new(job.dtype, rows, settings.dim as u64);
    let partial = job.out.join(PARTIAL_FILE);
    let state_path = job.out.join(STATE_FILE);
    let mut state = resume_state(&partial, &state_path, &settings, &header, job.restart)?;
    let mut file =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&partial).at(&partial)?;
    let chunk_bytes = |k: usize| -> u64 {
        let start = (k * job.chunk_rows) as u64;
        let end = (start + job.chunk_rows as u64).min(rows);
        (end - start) * header.row_bytes()
    };
    let done_bytes: u64 = (0..state.chunk_sha256.len()).map(chunk_bytes).sum();
    if state.chunk_sha256.is_empty() {
        file.set_len(0).at(&partial)?;
        file.write_all(&header.to_bytes()).at(&partial)?;
    }
    file.set_len(header.data_offset + done_bytes).at(&partial)?;
    file.seek(SeekFrom::End(0)).at(&partial)?;

    let resumed_from = (state.chunk_sha256.len() * job.chunk_rows) as u64;
    let resumed_from = resumed_from.min(rows);
    if resumed_from > 0 {
        log::info!("resuming {} at row {resumed_from} of {rows}", partial.display());
    }
    progress.start("embed", Some(rows), Unit::Items);
    progress.advance(resumed_from);
    let mut row = resumed_from;
    let mut bytes = Vec::new();
    while row < rows {
        let end = (row + job.chunk_rows as u64).min(rows);
        let contents: Vec<String> =
            (row..end).map(|r| corpus.docstore.get(r).map(|p| p.contents())).collect::<Result<_, _>>()?;
        let texts: Vec<&str> = contents.iter().map(String::as_str).collect();
        let seqs = embedder.tokenize(&texts, Side::Passage)?;
        let vecs = embedder.embed_tokens_observed(&seqs, &mut |n| {
            progress.advance(n as u64);
            !cancel.is_cancelled()
        })?;
        bytes.clear();
        match job.dtype {
            Dtype::F32 => bytes.extend(vecs.iter().flat_map(|x| x.to_le_bytes())),
            Dtype::F16 => bytes.extend(vecs.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes())),
        }
        file.write_all(&bytes).at(&partial)?;
        file.sync_data().at(&partial)?;
        state.chunk_sha256.push(sha256_hex(&bytes));
        write_atomic(&state_path, &serde_json::to_vec(&state).map_err(|e| EmbedError::io(&state_path, e.into()))?)?;
        row = end;
    }
    drop(file);
    let seconds = started.elapsed().as_secs_f64();
    let meta = EmbeddingsMeta {
        format: "r1s-embeddings".into(),
        format_version: 1,
        r1s_version: r1s_core::VERSION.into(),
        settings,
        text: "passage contents: \"title\"\\ntext (Search-R1 format), with the preset's passage prefix".into(),
        device: embedder.device().to_owned(),
        seconds,
    };
    std::fs::rename(&partial, &final_path).at(&final_path)?;
    write_atomic(&meta_path, &serde_json::to_vec_pretty(&meta).map_err(|e| EmbedError::io(&meta_path, e.into()))?)?;
    let _ = std::fs::remove_file(&state_path);
    progress.finish(&format!("{} passages embedded ({resumed_from} resumed)", rows - resumed_from));
    Ok(EmbedReport { path: final_path, rows, embedded: rows - resumed_from, resumed_from, seconds })
}

/// The state to continue from: the complete, verified chunks of an earlier run with the same settings.
fn resume_state(
    partial: &Path,
    state_path: &Path,
    settings: &Settings,
    header: &NpyHeader,
    restart: bool,
) -> Result<State> {
    let fresh = State { settings: settings.clone(), chunk_sha256: Vec::new() };
    if restart || !partial.exists() || !state_path.exists() {
        return Ok(fresh);
    }
    let old: State = match std::fs::read(state_path).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
        Some(s) => s,
        None => {
            log::warn!("{}: unreadable, starting over", state_path.display());
            return Ok(fresh);
        }
    };
    let differ = old.settings.differences(settings);
    if !differ.is_empty() {
        return Err(EmbedError::Options(format!(
            "{} holds a partial run with other settings: {}; pass --restart to discard it",
            partial.display(),
            differ.join(", ")
        )));
    }
    let on_disk = NpyHeader::read(partial)
        .map_err(|e| EmbedError::BadFile { path: partial.to_path_buf(), reason: e.to_string() })?;
    if on_disk != *header {
        return Err(EmbedError::BadFile {
            path: partial.to_path_buf(),
            reason: "header does not match the state file".into(),
        });
    }
    // verify complete chunks from the last one backwards; keep the verified prefix
    let mut file = std::fs::File::open(partial).at(partial)?;
    let len = file.metadata().at(partial)?.len();
    let mut chunks = old.chunk_sha256;
    let chunk_rows = (settings.chunk_rows as u64).max(1);
    // the state file is input: it cannot claim more chunks than the rows make
    chunks.truncate(usize::try_from(settings.rows.div_ceil(chunk_rows)).unwrap_or(usize::MAX));
    while let Some(expected) = chunks.last() {
        let k = chunks.len() as u64 - 1;
        // k < rows / chunk_rows rounded up, so k * chunk_rows < rows: no underflow; sizes are bounded
        // by the matrix the header describes
        let start = header.data_offset + k * chunk_rows * header.row_bytes();
        let n = (settings.rows - k * chunk_rows).min(chunk_rows) * header.row_bytes();
        if start.checked_add(n).is_some_and(|end| end <= len) {
            let mut buf = vec![0u8; n as usize];
            file.seek(SeekFrom::Start(start)).at(partial)?;
            std::io::Read::read_exact(&mut file, &mut buf).at(partial)?;
            if sha256_hex(&buf) == *expected {
                break;
            }
        }
        log::warn!("{}: chunk {k} is incomplete or corrupt: embedding it again", partial.display());
        chunks.pop();
    }
    Ok(State { settings: settings.clone(), chunk_sha256: chunks })
}
