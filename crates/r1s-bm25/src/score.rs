//! BM25 scoring over tantivy's postings, with MaxScore pruning.
//!
//! tantivy's own BM25 fixes k1 = 1.2 and b = 0.75; r1s reads the postings, the quantized document
//! lengths (fieldnorms) and the collection statistics from tantivy and scores itself, so that k1 and
//! b are parameters (pyserini's defaults, 0.9 / 0.4, are r1s's).
//!
//! Score of document d for query q (Lucene ≥ 8 `BM25Similarity`, bm25s `method="lucene"`):
//!
//! ```text
//! score(d, q) = Σ_{t ∈ q} qtf(t) · idf(t) · tf(t,d) / (tf(t,d) + k1 · (1 − b + b · |d| / avgdl))
//! idf(t)      = ln(1 + (N − df(t) + 0.5) / (df(t) + 0.5))
//! ```
//!
//! `qtf` is how often the term occurs in the query (pyserini's bag-of-words query), `N` the
//! documents, `df` those containing `t`, `avgdl` the mean document length in terms, and `|d|` the
//! document's length as stored in one byte (the same lossy encoding as Lucene's norms).
//!
//! Pruning: MaxScore (Turtle & Flood, 1995). A term contributes at most `qtf · idf` (the tf factor is
//! at most 1); terms whose bounds together cannot lift a document above the current k-th score are
//! only looked up (`seek`) for documents the other terms found. Every score sums its terms in one
//! fixed order, so results equal exhaustive scoring bit for bit, whatever the segment layout.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use tantivy::fieldnorm::FieldNormReader;
use tantivy::postings::{Postings, SegmentPostings};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DocId, DocSet, Searcher, TERMINATED, Term};

use r1s_core::Scored;

/// BM25's free parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bm25Params {
    /// Term-frequency saturation (≥ 0; 0 makes a term count once whatever its frequency).
    #[serde(serialize_with = "short_f32")]
    pub k1: f32,
    /// Length normalisation, in [0, 1] (0: none; 1: full).
    #[serde(serialize_with = "short_f32")]
    pub b: f32,
}

/// Serialises an f32 as the f64 of its shortest decimal (`0.9`, not `0.8999999761581421`), also
/// through `serde_json::Value`.
pub fn short_f32<S: serde::Serializer>(x: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(format!("{x}").parse::<f64>().unwrap_or(f64::from(*x)))
}

impl Default for Bm25Params {
    /// pyserini's (and so Search-R1's BM25 retriever's) defaults: k1 = 0.9, b = 0.4.
    fn default() -> Self {
        Bm25Params { k1: 0.9, b: 0.4 }
    }
}

impl Bm25Params {
    /// Checks the ranges: k1 finite and ≥ 0, b in [0, 1].
    pub fn validate(&self) -> Result<(), String> {
        if !(self.k1.is_finite() && self.k1 >= 0.0) {
            return Err(format!("BM25 k1 must be a finite number >= 0 (got {})", self.k1));
        }
        if !(0.0..=1.0).contains(&self.b) {
            return Err(format!("BM25 b must be in [0, 1] (got {})", self.b));
        }
        Ok(())
    }
}

/// Inverse document frequency, Lucene's variant (always > 0).
pub fn idf(df: u64, n: u64) -> f32 {
    let df = df.min(n) as f64;
    (1.0 + (n as f64 - df + 0.5) / (df + 0.5)).ln() as f32
}

/// A hit under construction: ordered so that the heap's top is the worst (lowest score, then
/// highest row).
#[derive(Debug, Clone, Copy)]
struct Worst(Scored);

impl PartialEq for Worst {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Worst {
    fn cmp(&self, o: &Self) -> Ordering {
        o.0.1.total_cmp(&self.0.1).then(self.0.0.cmp(&o.0.0))
    }
}

/// The k best (score, row) pairs seen; ties go to the lower row.
struct TopK {
    k: usize,
    heap: BinaryHeap<Worst>,
}

impl TopK {
    fn new(k: usize) -> TopK {
        TopK { k, heap: BinaryHeap::with_capacity(k.saturating_add(1).min(1 << 16)) }
    }
    /// The score a new document must reach to enter (−∞ while fewer than k are held).
    fn threshold(&self) -> f32 {
        if self.heap.len() < self.k { f32::NEG_INFINITY } else { self.heap.peek().map_or(f32::NEG_INFINITY, |w| w.0.1) }
    }
    fn push(&mut self, row: u64, score: f32) {
        let w = Worst((row, score));
        if self.heap.len() < self.k {
            self.heap.push(w);
        } else if self.heap.peek().is_some_and(|top| w < *top) {
            self.heap.pop();
            self.heap.push(w);
        }
    }
    fn into_sorted(self) -> Vec<Scored> {
        let mut v: Vec<Scored> = self.heap.into_iter().map(|w| w.0).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

/// One query term with its weight `qtf · idf`.
#[derive(Debug, Clone)]
pub(crate) struct WeightedTerm {
    pub term: Term,
    pub weight: f32,
}

/// The per-query weights of `terms` (repeats count as qtf), skipping terms no document holds.
pub(crate) fn weigh(searcher: &Searcher, field: Field, terms: &[String]) -> tantivy::Result<Vec<WeightedTerm>> {
    let n = searcher.num_docs();
    let mut counted: Vec<(&str, u32)> = Vec::new();
    for t in terms {
        match counted.iter_mut().find(|(s, _)| *s == t.as_str()) {
            Some((_, c)) => *c += 1,
            None => counted.push((t.as_str(), 1)),
        }
    }
    let mut out = Vec::with_capacity(counted.len());
    for (text, qtf) in counted {
        let term = Term::from_field_text(field, text);
        let df = searcher.doc_freq(&term)?;
        if df > 0 {
            out.push(WeightedTerm { term, weight: qtf as f32 * idf(df, n) });
        }
    }
    Ok(out)
}

/// `k1 · (1 − b + b · |d| / avgdl)` for each of the 256 stored length codes.
pub(crate) fn length_norms(p: Bm25Params, avgdl: f32) -> [f32; 256] {
    let mut out = [0f32; 256];
    let avgdl = if avgdl > 0.0 { avgdl } else { 1.0 };
    for (id, slot) in out.iter_mut().enumerate() {
        let len = FieldNormReader::id_to_fieldnorm(id as u8) as f32;
        *slot = p.k1 * (1.0 - p.b + p.b * len / avgdl);
    }
    out
}

/// The row of each document of a segment (the `row` fast field).
pub(crate) type RowOf<'a> = dyn Fn(DocId) -> Option<u64> + 'a;

struct Cursor {
    postings: SegmentPostings,
    weight: f32,
}

/// The terms in the order every score sums them: ascending weight, then query order. A fixed order
/// makes a document's score the same float whatever the segment layout (a rebuild, a resumed build,
/// another thread count) and whatever MaxScore skipped.
fn ordered(terms: &[WeightedTerm]) -> Vec<&WeightedTerm> {
    let mut v: Vec<&WeightedTerm> = terms.iter().collect();
    v.sort_by(|a, b| a.weight.total_cmp(&b.weight));
    v
}

/// Room left for float rounding when pruning: a document is skipped only when its bound is below
/// the threshold by more than this share of it.
const SLACK: f32 = 1e-5;

/// Scores one segment into `top` (MaxScore over the weighted terms).
pub(crate) fn score_segment(
    segment: &tantivy::SegmentReader,
    field: Field,
    terms: &[WeightedTerm],
    norms: &[f32; 256],
    row_of: &RowOf<'_>,
    top: &mut TopKHandle,
) -> tantivy::Result<()> {
    let inverted = segment.inverted_index(field)?;
    let fieldnorms = segment.get_fieldnorms_reader(field)?;
    let alive = segment.alive_bitset();
    let mut cursors = Vec::with_capacity(terms.len());
    for t in ordered(terms) {
        if let Some(postings) = inverted.read_postings(&t.term, IndexRecordOption::WithFreqs)? {
            cursors.push(Cursor { postings, weight: t.weight });
        }
    }
    if cursors.is_empty() {
        return Ok(());
    }
    // bound_sum[i] = Σ_{j ≤ i} weight_j: what terms 0..=i can add at most
    let bound_sum: Vec<f32> = cursors
        .iter()
        .scan(0f32, |acc, c| {
            *acc += c.weight;
            Some(*acc)
        })
        .collect();
    let top = &mut top.0;
    let below = |x: f32, threshold: f32| x < threshold - threshold.abs() * SLACK;
    // terms [0, first_essential) cannot make a document enter on their own
    let mut first_essential = 0;
    let advance_essential = |first: &mut usize, threshold: f32| {
        while *first < bound_sum.len() && below(bound_sum[*first], threshold) {
            *first += 1;
        }
    };
    advance_essential(&mut first_essential, top.threshold());
    let mut contrib = vec![0f32; cursors.len()];
    while first_essential < cursors.len() {
        let doc = cursors[first_essential..].iter().map(|c| c.postings.doc()).min().unwrap_or(TERMINATED);
        if doc == TERMINATED {
            break;
        }
        let norm = norms[fieldnorms.fieldnorm_id(doc) as usize];
        contrib.fill(0.0);
        let mut partial = 0f32;
        for (i, c) in cursors.iter_mut().enumerate().skip(first_essential) {
            if c.postings.doc() == doc {
                let tf = c.postings.term_freq() as f32;
                contrib[i] = c.weight * tf / (tf + norm);
                partial += contrib[i];
                c.postings.advance();
            }
        }
        let threshold = top.threshold();
        let mut pruned = false;
        for i in (0..first_essential).rev() {
            if below(partial + bound_sum[i], threshold) {
                pruned = true;
                break;
            }
            let c = &mut cursors[i];
            let at = if c.postings.doc() < doc { c.postings.seek(doc) } else { c.postings.doc() };
            if at == doc {
                let tf = c.postings.term_freq() as f32;
                contrib[i] = c.weight * tf / (tf + norm);
                partial += contrib[i];
            }
        }
        if pruned || !alive.is_none_or(|a| a.is_alive(doc)) {
            continue;
        }
        let score: f32 = contrib.iter().sum();
        if score >= threshold {
            let row = row_of(doc)
                .ok_or_else(|| tantivy::TantivyError::InternalError(format!("document {doc} has no row value")))?;
            top.push(row, score);
            advance_essential(&mut first_essential, top.threshold());
        }
    }
    Ok(())
}

/// The k best hits of one query, across segments.
pub(crate) struct TopKHandle(TopK);

impl TopKHandle {
    pub(crate) fn new(k: usize) -> TopKHandle {
        TopKHandle(TopK::new(k))
    }
    pub(crate) fn into_sorted(self) -> Vec<Scored> {
        self.0.into_sorted()
    }
}

/// Exhaustive scoring of one query (no pruning): the reference the tests hold MaxScore to.
pub(crate) fn score_all(
    segment: &tantivy::SegmentReader,
    field: Field,
    terms: &[WeightedTerm],
    norms: &[f32; 256],
    row_of: &RowOf<'_>,
) -> tantivy::Result<Vec<Scored>> {
    let inverted = segment.inverted_index(field)?;
    let fieldnorms = segment.get_fieldnorms_reader(field)?;
    let mut scores = std::collections::HashMap::<DocId, f32>::new();
    for t in ordered(terms) {
        if let Some(mut p) = inverted.read_postings(&t.term, IndexRecordOption::WithFreqs)? {
            while p.doc() != TERMINATED {
                let tf = p.term_freq() as f32;
                let norm = norms[fieldnorms.fieldnorm_id(p.doc()) as usize];
                *scores.entry(p.doc()).or_default() += t.weight * tf / (tf + norm);
                p.advance();
            }
        }
    }
    scores
        .into_iter()
        .map(|(doc, s)| {
            row_of(doc)
                .map(|r| (r, s))
                .ok_or_else(|| tantivy::TantivyError::InternalError(format!("document {doc} has no row value")))
        })
        .collect()
}
