//! `r1s._r1s`: the extension module of the `r1s` wheel (see `python/r1s/__init__.py` for the
//! Python-facing package and `python/r1s/_r1s.pyi` for the signatures).
//!
//! - [`Retriever`]: any index directory `r1s index build` wrote (dense, bm25, hybrid, milvus),
//!   searched batch-first with the GIL released; hits carry the same bytes `r1s serve` returns.
//! - [`Corpus`]: a corpus directory's passages by row, indexing and slicing like a list.
//! - Rewards and metrics: every reward `r1s reward` computes (R1-Searcher's stages, Search-R1's,
//!   R1-Searcher++'s with its group reward) and EM / cover-EM / F1 with R1-Searcher's normalisation.
//!
//! Errors are Python exceptions carrying the CLI's messages: `R1sError` and its subclasses
//! `OptionsError` (bad arguments), `MismatchError` (index, corpus and embedder that do not belong
//! together), `UnavailableError` (a remote index that does not answer now); a missing path is
//! `FileNotFoundError`. Nothing here panics on bad input: the readers below check sizes first.

use std::path::{Path, PathBuf};

use numpy::{PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyIndexError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PySlice, PySliceMethods};
use r1s_core::{Retriever as _, VectorIndex as _};
use r1s_retrieve::{AnyRetriever, RetrieveError};

create_exception!(_r1s, R1sError, PyException, "An error of r1s (the message is the CLI's).");
create_exception!(
    _r1s,
    OptionsError,
    R1sError,
    "Arguments r1s cannot use (a value out of range, a setting of another kind)."
);
create_exception!(_r1s, MismatchError, R1sError, "An index, corpus or embedder that do not belong together.");
create_exception!(_r1s, UnavailableError, R1sError, "A remote index (Milvus) that does not answer now; retry later.");

/// The Python exception of a retrieval error, with its message.
fn retrieve_err(e: RetrieveError) -> PyErr {
    let msg = e.to_string();
    if AnyRetriever::is_unavailable(&e) {
        return UnavailableError::new_err(msg);
    }
    match e {
        RetrieveError::Options(_) => OptionsError::new_err(msg),
        RetrieveError::Mismatch(_) | RetrieveError::CorpusNotFound { .. } => MismatchError::new_err(msg),
        _ => R1sError::new_err(msg),
    }
}

fn must_exist(path: &Path, what: &str) -> PyResult<()> {
    if path.exists() {
        Ok(())
    } else {
        Err(PyFileNotFoundError::new_err(format!("{what} {} does not exist", path.display())))
    }
}

/// One retrieved passage: its corpus row, id, score (inner product or BM25; higher is closer),
/// title and Search-R1 `contents` (`"Title"\ntext`, the stored bytes `r1s serve` returns).
#[pyclass(module = "r1s._r1s", frozen, get_all)]
#[derive(Debug, Clone)]
struct Hit {
    row: u64,
    id: String,
    score: f32,
    title: String,
    contents: String,
}

#[pymethods]
impl Hit {
    /// `{"id", "contents"}`: the document as Search-R1's `/retrieve` returns it.
    fn document(&self) -> (String, String) {
        (self.id.clone(), self.contents.clone())
    }

    fn __repr__(&self) -> String {
        format!("Hit(row={}, id={:?}, score={}, title={:?})", self.row, self.id, self.score, self.title)
    }
}

impl From<r1s_core::Hit> for Hit {
    fn from(h: r1s_core::Hit) -> Hit {
        Hit { row: h.row, id: h.id, score: h.score, title: h.title, contents: h.contents }
    }
}

fn hits(lists: Vec<Vec<r1s_core::Hit>>) -> Vec<Vec<Hit>> {
    lists.into_iter().map(|l| l.into_iter().map(Hit::from).collect()).collect()
}

/// The retriever of an index directory of any kind, as `r1s retrieve` / `r1s serve` open it.
#[pyclass(module = "r1s._r1s", frozen)]
struct Retriever {
    inner: AnyRetriever,
    path: PathBuf,
}

#[pymethods]
impl Retriever {
    /// Opens index directory `path`. `corpus`: its corpus directory when not where the manifest
    /// says; `ef`: HNSW candidates (or a Milvus IVF index's nprobe); `threads`: the query
    /// embedder's threads (0: all cores); `milvus_uri`: another endpoint of the same Milvus.
    #[new]
    #[pyo3(signature = (path, *, corpus=None, ef=None, threads=0, milvus_uri=None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        corpus: Option<PathBuf>,
        ef: Option<usize>,
        threads: usize,
        milvus_uri: Option<String>,
    ) -> PyResult<Retriever> {
        must_exist(&path, "index directory")?;
        if let Some(c) = &corpus {
            must_exist(c, "corpus directory")?;
        }
        let opts = r1s_retrieve::RetrieverOptions {
            dense: r1s_retrieve::DenseOptions { corpus, threads, ef_search: ef, milvus_uri, ..Default::default() },
            ..Default::default()
        };
        let inner = py.detach(|| AnyRetriever::open(&path, &opts)).map_err(retrieve_err)?;
        Ok(Retriever { inner, path })
    }

    /// The top-`k` passages of each query, one list per query in order (batch-first; the GIL is
    /// released while embedding and searching).
    #[pyo3(signature = (queries, k=3))]
    fn search(&self, py: Python<'_>, queries: Vec<String>, k: usize) -> PyResult<Vec<Vec<Hit>>> {
        if k == 0 {
            return Err(OptionsError::new_err("k must be at least 1"));
        }
        let refs: Vec<&str> = queries.iter().map(String::as_str).collect();
        py.detach(|| self.inner.retrieve(&refs, k)).map(hits).map_err(retrieve_err)
    }

    /// The top-`k` passages of each row of `vectors` (a C-contiguous float32 `[n, dim]` array,
    /// read in place: no copy), for dense indexes; the GIL is released while searching.
    #[pyo3(signature = (vectors, k=3))]
    fn search_vectors(&self, py: Python<'_>, vectors: PyReadonlyArray2<'_, f32>, k: usize) -> PyResult<Vec<Vec<Hit>>> {
        let AnyRetriever::Dense(d) = &self.inner else {
            return Err(OptionsError::new_err(format!(
                "{}: search_vectors needs a dense index; this is a {} index",
                self.path.display(),
                self.inner.kind()
            )));
        };
        if k == 0 {
            return Err(OptionsError::new_err("k must be at least 1"));
        }
        let dim = d.index().manifest.dim;
        if vectors.shape()[1] != dim {
            return Err(OptionsError::new_err(format!(
                "vectors of dimension {}, the index holds {dim}",
                vectors.shape()[1]
            )));
        }
        // (as_slice also takes Fortran order, whose rows are not contiguous: refused here)
        let flat = vectors
            .as_slice()
            .ok()
            .filter(|_| vectors.is_c_contiguous())
            .ok_or_else(|| PyTypeError::new_err("vectors must be C-contiguous (numpy.ascontiguousarray)"))?;
        if let Some(at) = flat.iter().position(|x| !x.is_finite()) {
            return Err(OptionsError::new_err(format!(
                "vectors hold a non-finite value (row {}, column {})",
                at / dim,
                at % dim
            )));
        }
        let found = py.detach(|| {
            let scored = d.index().search(flat, k).map_err(RetrieveError::from)?;
            scored.iter().map(|s| r1s_retrieve::to_hits(d.corpus(), s)).collect::<Result<Vec<_>, _>>()
        });
        found.map(hits).map_err(retrieve_err)
    }

    /// The index kind (`flat`, `hnsw`, `faiss`, `milvus`, `bm25`, `hybrid`, …).
    #[getter]
    fn kind(&self) -> String {
        self.inner.kind()
    }

    /// Passages in the corpus.
    fn __len__(&self) -> usize {
        self.inner.corpus().docstore.len() as usize
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// The corpus directory in use (resolved).
    #[getter]
    fn corpus_path(&self) -> PathBuf {
        let dir = &self.inner.corpus().dir;
        std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone())
    }

    /// A dense index's `embeddings.npy` (or a hybrid's dense part's); `None` for bm25 and Milvus.
    #[getter]
    fn embeddings_path(&self) -> Option<PathBuf> {
        let dense = match &self.inner {
            AnyRetriever::Dense(d) => d.as_ref(),
            AnyRetriever::Hybrid(h) => h.dense(),
            AnyRetriever::Bm25(_) => return None,
        };
        let p = dense.index().dir.join(r1s_index::EMBEDDINGS_FILE);
        p.is_file().then_some(p)
    }

    /// What `r1s serve`'s `/health` shows of the index (kind, rows, model, corpus, …), as JSON text.
    fn describe(&self) -> String {
        self.inner.describe().to_string()
    }

    fn __repr__(&self) -> String {
        format!(
            "Retriever({:?}, kind={:?}, passages={})",
            self.path.display().to_string(),
            self.inner.kind(),
            self.__len__()
        )
    }
}

/// One passage of a corpus.
#[pyclass(module = "r1s._r1s", frozen, get_all)]
#[derive(Debug, Clone)]
struct Passage {
    row: u64,
    id: String,
    doc_id: String,
    title: String,
    text: String,
    /// Search-R1 `contents`: `"Title"\ntext`, or the original when it was not of that form.
    contents: String,
}

#[pymethods]
impl Passage {
    fn __repr__(&self) -> String {
        format!("Passage(row={}, id={:?}, title={:?})", self.row, self.id, self.title)
    }
}

/// A corpus directory (`r1s corpus ingest`): passages by row, memory-mapped.
#[pyclass(module = "r1s._r1s", frozen)]
struct Corpus {
    inner: r1s_corpus::Corpus,
}

impl Corpus {
    fn passage(&self, row: u64) -> PyResult<Passage> {
        let p = self.inner.docstore.get(row).map_err(|e| R1sError::new_err(e.to_string()))?;
        Ok(Passage {
            row,
            id: p.id.to_owned(),
            doc_id: p.doc_id.to_owned(),
            title: p.title.to_owned(),
            text: p.text.to_owned(),
            contents: p.contents(),
        })
    }

    fn row(&self, i: isize) -> PyResult<u64> {
        let n = self.inner.docstore.len() as i128;
        let r = if i < 0 { n + i as i128 } else { i as i128 };
        if r < 0 || r >= n {
            return Err(PyIndexError::new_err(format!("row {i} out of range: the corpus holds {n} passages")));
        }
        Ok(r as u64)
    }
}

#[pymethods]
impl Corpus {
    #[new]
    fn new(path: PathBuf) -> PyResult<Corpus> {
        must_exist(&path, "corpus directory")?;
        let inner = r1s_corpus::Corpus::open(&path).map_err(|e| R1sError::new_err(e.to_string()))?;
        Ok(Corpus { inner })
    }

    fn __len__(&self) -> usize {
        self.inner.docstore.len() as usize
    }

    /// `corpus[i]` (negative counts from the end) is a Passage; `corpus[a:b:s]` a list of them.
    fn __getitem__<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if let Ok(slice) = key.cast::<PySlice>() {
            let ix = slice.indices(self.inner.docstore.len() as isize)?;
            let mut out = Vec::with_capacity(ix.slicelength);
            let mut i = ix.start;
            for _ in 0..ix.slicelength {
                out.push(self.passage(i as u64)?);
                i += ix.step;
            }
            return Ok(PyList::new(py, out)?.into_any());
        }
        let i: isize = key.extract().map_err(|_| PyTypeError::new_err("corpus indices are integers or slices"))?;
        Ok(Bound::new(py, self.passage(self.row(i)?)?)?.into_any())
    }

    /// The ids of rows `start..stop` (all by default), in row order.
    #[pyo3(signature = (start=0, stop=None))]
    fn ids(&self, start: u64, stop: Option<u64>) -> PyResult<Vec<String>> {
        let n = self.inner.docstore.len();
        let stop = stop.unwrap_or(n).min(n);
        (start.min(stop)..stop)
            .map(|r| self.inner.docstore.get(r).map(|p| p.id.to_owned()).map_err(|e| R1sError::new_err(e.to_string())))
            .collect()
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.dir.clone()
    }

    /// The corpus's content id (an index records the one it was built from).
    #[getter]
    fn content_id(&self) -> String {
        self.inner.manifest.content_id()
    }

    fn __repr__(&self) -> String {
        format!("Corpus({:?}, passages={})", self.inner.dir.display().to_string(), self.__len__())
    }
}

/// Gold answers: one string or a sequence of strings.
fn golds_of(obj: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if let Ok(one) = obj.extract::<String>() {
        return Ok(vec![one]);
    }
    obj.extract::<Vec<String>>().map_err(|_| {
        let ty = obj.get_type().name().map_or_else(|_| "?".to_owned(), |n| n.to_string());
        PyTypeError::new_err(format!("gold answers are a string or a list of strings, not {ty}"))
    })
}

fn reward_kind(kind: &str) -> PyResult<r1s_agent::Reward> {
    kind.parse().map_err(OptionsError::new_err)
}

/// The reward `kind` (see `reward_names()`) of `solution`, the text the policy produced after
/// `prompt`, against the gold answers. Search-R1's rewards score `prompt + solution` as its code
/// scores the decoded sequence; R1-Searcher's score `solution`. For `r1searcher-plus` this is the
/// per-rollout part; its group reward needs the group (`reward_group`).
#[pyfunction]
#[pyo3(signature = (kind, solution, golds, prompt=""))]
fn reward(kind: &str, solution: &str, golds: &Bound<'_, PyAny>, prompt: &str) -> PyResult<f64> {
    Ok(r1s_agent::reward::reward_of(reward_kind(kind)?, prompt, solution, &golds_of(golds)?))
}

/// [`reward`] of many rollouts at once: `solutions[i]` against `golds[i]` (after `prompts[i]`).
#[pyfunction]
#[pyo3(signature = (kind, solutions, golds, prompts=None))]
fn rewards(
    kind: &str,
    solutions: Vec<String>,
    golds: Vec<Bound<'_, PyAny>>,
    prompts: Option<Vec<String>>,
) -> PyResult<Vec<f64>> {
    let kind = reward_kind(kind)?;
    if golds.len() != solutions.len() || prompts.as_ref().is_some_and(|p| p.len() != solutions.len()) {
        return Err(OptionsError::new_err(format!(
            "{} solutions, {} gold lists{}: one each",
            solutions.len(),
            golds.len(),
            prompts.as_ref().map_or(String::new(), |p| format!(", {} prompts", p.len()))
        )));
    }
    solutions
        .iter()
        .zip(&golds)
        .enumerate()
        .map(|(i, (s, g))| {
            let p = prompts.as_ref().map_or("", |p| p[i].as_str());
            Ok(r1s_agent::reward::reward_of(kind, p, s, &golds_of(g)?))
        })
        .collect()
}

/// The rewards of one question's rollouts scored together (R1-Searcher++'s group reward: the
/// correct rollout(s) that searched least earn `min(2σ², eta)` on top; other kinds score each
/// rollout alone). `ddof`: 0 (population variance) or 1; `ties`: `all` or `first`.
#[pyfunction]
#[pyo3(signature = (kind, solutions, golds, prompts=None, eta=2.0, ddof=0, ties="all"))]
fn reward_group(
    kind: &str,
    solutions: Vec<String>,
    golds: &Bound<'_, PyAny>,
    prompts: Option<Vec<String>>,
    eta: f64,
    ddof: u32,
    ties: &str,
) -> PyResult<Vec<f64>> {
    let kind = reward_kind(kind)?;
    if prompts.as_ref().is_some_and(|p| p.len() != solutions.len()) {
        return Err(OptionsError::new_err("one prompt per solution"));
    }
    if !(eta.is_finite() && eta >= 0.0) || ddof > 1 {
        return Err(OptionsError::new_err("eta must be finite and >= 0, ddof 0 or 1"));
    }
    let ties = match ties {
        "all" => r1s_agent::plus::Ties::All,
        "first" => r1s_agent::plus::Ties::First,
        other => return Err(OptionsError::new_err(format!("ties {other:?}: all or first"))),
    };
    let group = r1s_agent::plus::GroupReward { eta, ddof, ties };
    let rollouts: Vec<(&str, &str)> = solutions
        .iter()
        .enumerate()
        .map(|(i, s)| (prompts.as_ref().map_or("", |p| p[i].as_str()), s.as_str()))
        .collect();
    Ok(r1s_agent::reward::score_group(kind, &group, &rollouts, &golds_of(golds)?))
}

/// The names `reward` takes.
#[pyfunction]
fn reward_names() -> Vec<String> {
    r1s_agent::Reward::NAMES.split(", ").map(str::to_owned).collect()
}

/// The question and where the rollout starts in `text` (prompt + rollout), read as R1-Searcher's
/// reward servers read it (base, Search-R1, Llama 3 and ChatML prompts); `None` when no question is
/// found.
#[pyfunction]
fn find_question(text: &str) -> Option<(String, usize)> {
    r1s_agent::reward_server::find_question(text).map(|(q, at)| {
        // the byte offset as a Python string index
        (q.to_owned(), text[..at].chars().count())
    })
}

/// EM, cover-EM and F1 of `prediction` against the gold answers (the best over them), with
/// R1-Searcher's normalisation: `{"em", "cover_em", "f1"}`.
#[pyfunction]
fn score(prediction: &str, golds: &Bound<'_, PyAny>) -> PyResult<std::collections::HashMap<&'static str, f64>> {
    let s = r1s_agent::metrics::score(prediction, &golds_of(golds)?);
    Ok([("em", s.em), ("cover_em", s.cover_em), ("f1", s.f1)].into_iter().collect())
}

/// Exact match after normalisation (lower-case, no punctuation or articles, single spaces).
#[pyfunction]
fn exact_match(prediction: &str, gold: &str) -> bool {
    r1s_agent::metrics::exact_match(prediction, gold)
}

/// Token F1 after normalisation.
#[pyfunction]
fn f1(prediction: &str, gold: &str) -> f64 {
    r1s_agent::metrics::f1(prediction, gold)
}

/// Whether the normalised gold answer occurs in the normalised prediction.
#[pyfunction]
fn cover_em(prediction: &str, gold: &str) -> bool {
    r1s_agent::metrics::cover_em(prediction, gold)
}

/// The normalisation the metrics apply.
#[pyfunction]
fn normalize(text: &str) -> String {
    r1s_agent::metrics::normalize(text)
}

/// The answer of a rollout: the last `<answer>…</answer>` (R1-Searcher's `extract_answer`).
#[pyfunction]
fn extract_answer(text: &str) -> String {
    r1s_agent::metrics::extract_answer(text)
}

#[pymodule]
fn _r1s(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", r1s_core::VERSION)?;
    m.add("R1sError", py.get_type::<R1sError>())?;
    m.add("OptionsError", py.get_type::<OptionsError>())?;
    m.add("MismatchError", py.get_type::<MismatchError>())?;
    m.add("UnavailableError", py.get_type::<UnavailableError>())?;
    m.add_class::<Retriever>()?;
    m.add_class::<Hit>()?;
    m.add_class::<Corpus>()?;
    m.add_class::<Passage>()?;
    for f in [
        wrap_pyfunction!(reward, m)?,
        wrap_pyfunction!(rewards, m)?,
        wrap_pyfunction!(reward_group, m)?,
        wrap_pyfunction!(reward_names, m)?,
        wrap_pyfunction!(find_question, m)?,
        wrap_pyfunction!(score, m)?,
        wrap_pyfunction!(exact_match, m)?,
        wrap_pyfunction!(f1, m)?,
        wrap_pyfunction!(cover_em, m)?,
        wrap_pyfunction!(normalize, m)?,
        wrap_pyfunction!(extract_answer, m)?,
    ] {
        m.add_function(f)?;
    }
    Ok(())
}
