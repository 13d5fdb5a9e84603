//! Core types shared by every r1s crate: passages, progress reporting and cancellation.
//!
//! This crate has no heavy dependencies on purpose: every other crate (corpus, embed, index,
//! retrieve, policy, rl) depends on it, and a user embedding one component must not pay for the rest.

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod chat;
pub mod fsutil;
pub mod mem;
pub mod npy;
pub mod paths;
pub mod progress;

pub use progress::{Cancel, NoProgress, Progress, Unit};

use serde::{Deserialize, Serialize};

/// One retrieval unit of a corpus: a window of about `--words` words of one document.
///
/// `row` is dense (0..n) and is the key of every per-passage artifact: Parquet row, docstore record,
/// embedding row, index label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passage {
    /// Dense row number in the corpus, 0-based.
    pub row: u64,
    /// Stable passage id, as given by the source format or derived as `{doc_id}_{chunk}`.
    pub id: String,
    /// Id of the source document (Wikipedia page id, KILT wikipedia_id, ...); empty when unknown.
    pub doc_id: String,
    /// Title of the source document (may be empty).
    pub title: String,
    /// Plain text of the passage.
    pub text: String,
}

impl Passage {
    /// The passage as Search-R1 / FlashRAG retrieval servers present it: `"Title"\ntext`
    /// (just the text when there is no title).
    pub fn contents(&self) -> String {
        search_r1_contents(&self.title, &self.text)
    }
}

/// Search-R1's `contents` field: `"Title"\ntext`, or the bare text when the title is empty.
pub fn search_r1_contents(title: &str, text: &str) -> String {
    if title.is_empty() {
        return text.to_owned();
    }
    let mut s = String::with_capacity(title.len() + text.len() + 3);
    s.push('"');
    s.push_str(title);
    s.push_str("\"\n");
    s.push_str(text);
    s
}

/// Version of r1s, recorded in every manifest.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Which side of retrieval a text is on: some models embed queries and passages differently
/// (instructions such as e5's `query: ` / `passage: `).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// A search query.
    Query,
    /// A corpus passage.
    Passage,
}

/// Turns texts into fixed-size vectors.
///
/// Contract: `embed` returns `texts.len() * dim()` floats, row-major, row `i` for `texts[i]`, whatever
/// batching or reordering the implementation does inside. Implementations are shared across threads
/// (`&self`); they serialise internally where the engine needs it.
pub trait Embedder: Send + Sync {
    /// The error of this embedder.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Dimension of the vectors.
    fn dim(&self) -> usize;
    /// Embeds `texts` as `side`: `[texts.len(), dim]`, row-major.
    fn embed(&self, texts: &[&str], side: Side) -> Result<Vec<f32>, Self::Error>;
}

/// A search hit of a vector index: the passage row and its score (inner product; higher is closer).
pub type Scored = (u64, f32);

/// Read side of a vector index (batch-first).
///
/// Contract: `queries` is row-major `[n, dim()]`; the result has `n` lists, each of at most `k` hits
/// sorted by descending score. Exact indexes return the true top-k; approximate ones say so in
/// their docs and are measured against exact search (`r1s index eval`).
pub trait VectorIndex: Send + Sync {
    /// The error of this index.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Dimension of the vectors.
    fn dim(&self) -> usize;
    /// Number of indexed vectors (rows).
    fn len(&self) -> u64;
    /// Whether the index holds no vector.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The top-`k` rows for each query.
    fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Scored>>, Self::Error>;
}

/// One retrieved passage: its corpus row and id, the score, and its Search-R1 `contents`
/// (`"Title"\ntext`, byte-exact as stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// Dense row number in the corpus.
    pub row: u64,
    /// Passage id.
    pub id: String,
    /// Similarity score (inner product; higher is closer).
    pub score: f32,
    /// Title of the source document (may be empty).
    pub title: String,
    /// Search-R1 `contents` of the passage.
    pub contents: String,
}

/// Text in, passages out (batch-first).
///
/// Contract: the result has one list per query, in order, each of at most `k` hits sorted by
/// descending score. Implementations are shared across threads.
pub trait Retriever: Send + Sync {
    /// The error of this retriever.
    type Error: std::error::Error + Send + Sync + 'static;
    /// The top-`k` passages for each query.
    fn retrieve(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Hit>>, Self::Error>;
    /// Whether `err` means that a backend the retriever depends on (a remote index) is unavailable
    /// for now, so that the same request may succeed later: servers answer it with 503 and
    /// `Retry-After` instead of 500. Default: never.
    fn is_unavailable(_err: &Self::Error) -> bool {
        false
    }
    /// The state of the remote backend, asked now (may block up to about `timeout`); `None` when
    /// the retriever has no remote part.
    fn backend(&self, _timeout: std::time::Duration) -> Option<BackendHealth> {
        None
    }
}

/// What a health check of a retriever's remote backend (e.g. a Milvus cluster) found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendHealth {
    /// Which backend (`milvus`).
    pub kind: String,
    /// Where it is (its URI and collection).
    pub target: String,
    /// Whether it answered and is ready to search.
    pub up: bool,
    /// Why not, when it is not.
    pub error: Option<String>,
}

/// Sampling settings of one [`Policy::complete`] call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateSettings {
    pub max_new_tokens: usize,
    /// 0: greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    /// Generation stops at the first of these; the returned text ends before it.
    pub stop: Vec<String>,
}

impl Default for GenerateSettings {
    /// Greedy, 256 new tokens, no stop string.
    fn default() -> Self {
        GenerateSettings { max_new_tokens: 256, temperature: 0.0, top_p: 1.0, seed: 0, stop: Vec::new() }
    }
}

/// Why a completion ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// End of sequence.
    Eos,
    /// This stop string (not part of the text).
    Stop(String),
    /// The token budget or the context ran out.
    Length,
}

/// One continuation of a context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    pub finish: Finish,
    /// Sampled token ids and their log-probs, when the policy exposes them (empty otherwise).
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
}

/// One piece of work for [`Policy::complete_continuous`]: continue `context` with `settings`.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The caller's name for the sequence (an episode). A policy may reuse what it computed for the
    /// last job of the same key (its cache) when this job's context extends that one's.
    pub key: usize,
    pub context: String,
    pub settings: GenerateSettings,
}

/// What [`Policy::complete_continuous`] hands back as jobs end: their keys and completions.
pub type Finished = Vec<(usize, Completion)>;

/// Continues text contexts (batch-first): what the agent loop needs of a language model.
pub trait Policy: Send + Sync {
    /// The error of this policy.
    type Error: std::error::Error + Send + Sync + 'static;
    /// One completion per context, in order.
    fn complete(&self, contexts: &[String], settings: &GenerateSettings) -> Result<Vec<Completion>, Self::Error>;

    /// Runs `jobs` and the jobs `done` hands back until none is left or `done` breaks. `done` hears
    /// of jobs as they end, with their keys and completions, and returns the jobs to add (the next
    /// turn of an episode, the next prompt). The default runs in rounds
    /// ([`complete_in_rounds`]); a policy that batches continuously calls `done` whenever
    /// sequences end and lets the added jobs join the sequences still generating.
    fn complete_continuous(
        &self,
        jobs: Vec<Job>,
        done: &mut dyn FnMut(Finished) -> std::ops::ControlFlow<(), Vec<Job>>,
    ) -> Result<(), Self::Error> {
        complete_in_rounds(self, jobs, done)
    }
}

/// [`Policy::complete_continuous`] in rounds: each round completes all its jobs, one
/// [`Policy::complete`] call per distinct settings (in order of first appearance), then hands all
/// of them to `done`, whose jobs form the next round.
pub fn complete_in_rounds<P: Policy + ?Sized>(
    policy: &P,
    mut jobs: Vec<Job>,
    done: &mut dyn FnMut(Finished) -> std::ops::ControlFlow<(), Vec<Job>>,
) -> Result<(), P::Error> {
    while !jobs.is_empty() {
        let mut groups: Vec<(GenerateSettings, Vec<usize>, Vec<String>)> = Vec::new();
        for j in jobs.drain(..) {
            match groups.iter_mut().find(|g| g.0 == j.settings) {
                Some(g) => {
                    g.1.push(j.key);
                    g.2.push(j.context);
                }
                None => groups.push((j.settings, vec![j.key], vec![j.context])),
            }
        }
        let mut finished = Vec::new();
        for (settings, keys, contexts) in groups {
            finished.extend(keys.into_iter().zip(policy.complete(&contexts, &settings)?));
        }
        match done(finished) {
            std::ops::ControlFlow::Continue(next) => jobs = next,
            std::ops::ControlFlow::Break(()) => break,
        }
    }
    Ok(())
}
