//! r1s's own HNSW graph (Malkov & Yashunin) over the memory-mapped embeddings.
//!
//! The graph holds only links: the vectors stay in `embeddings.npy`, mapped once and shared with the
//! flat index, so a Wikipedia-sized index is not loaded twice. The graph file (`hnsw.r1s`) is a flat
//! array of little-endian `u32` words, memory-mapped on load: opening is instant and the pages come in
//! as searches touch them.
//!
//! Layout of `hnsw.r1s` (`u32` words):
//! `[0..16)` header — magic `R1SH`, `NSW1`, rows (lo, hi), dim, M, M0, max level, entry point,
//! upper-layer words (lo, hi), efConstruction, 4 reserved; then `levels[rows]`; `upper_off[rows]`
//! (where a node's upper-layer lists start, `u32::MAX` for level-0 nodes); level-0 lists,
//! `rows × (1 + M0)` (a count, then the links); upper-layer lists, `level × (1 + M)` per node.
//!
//! Build: levels drawn from a seeded generator, node 0 inserted first, then every other node in
//! parallel (rayon). Lists are read without locks (atomic words: a reader may see a list mid-update,
//! which only perturbs a search) and written under striped locks. Neighbours are chosen with the
//! usual diversity heuristic; M links at upper levels, M0 = 2M at level 0, as FAISS's `IndexHNSW`.

use std::borrow::Cow;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use r1s_core::{Cancel, Progress, Scored, Unit, VectorIndex};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::distance::{dot, dot_f16, dot_u8, dot4, dot4_u8, prefetch_slice};
use crate::error::{IndexError, Result};
use crate::flat::{Matrix, Raw};
use crate::sq8::{QuantParams, Sq8};

/// HNSW parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswParams {
    /// Links per node at the upper levels (twice as many at level 0), 2..=256.
    pub m: usize,
    pub ef_construction: usize,
    /// Candidates kept while searching; the default keeps recall@10 ≥ 0.95 on real MiniLM vectors.
    pub ef_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams { m: 32, ef_construction: 200, ef_search: 64 }
    }
}

impl HnswParams {
    pub(crate) fn check(&self) -> Result<()> {
        if !(2..=256).contains(&self.m) {
            return Err(IndexError::Options(format!("M must be in 2..=256, got {}", self.m)));
        }
        if self.ef_construction == 0 || self.ef_search == 0 {
            return Err(IndexError::Options("efConstruction and efSearch must be at least 1".into()));
        }
        Ok(())
    }
}

/// Inner-product distance `1 − ⟨a, b⟩`, clamped at 0, for the `hnsw-rs` kind (hnsw_rs's `DistDot`
/// asserts on the f32 rounding of unit vectors and panics inside rayon; this one never does). It lives
/// here because hnsw_rs records the distance's type path (`r1s_index::hnsw::DistIp`) in its dumps and
/// refuses to load them under another: graphs dumped before r1s had its own HNSW carry this path.
#[derive(Debug, Clone, Copy, Default)]
pub struct DistIp;

impl anndists::dist::Distance<f32> for DistIp {
    #[inline]
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

/// The graph file in an index directory.
pub const GRAPH_FILE: &str = "hnsw.r1s";
const MAGIC: [u32; 2] = [u32::from_le_bytes(*b"R1SH"), u32::from_le_bytes(*b"NSW1")];
const HEADER_WORDS: usize = 16;
const MAX_LEVEL: u32 = 31;
const LEVEL_SEED: u64 = 0x5eed_4a5c_0ffe_e001;
const LOCK_STRIPES: usize = 1 << 16;

/// A candidate: distance (`−⟨q, v⟩`, smaller is nearer) and node.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Near {
    d: f32,
    id: u32,
}

impl Eq for Near {}
impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Near {
    fn cmp(&self, other: &Self) -> Ordering {
        self.d.total_cmp(&other.d).then(self.id.cmp(&other.id))
    }
}

/// The vectors a graph is walked over, borrowed from their maps: the embedding matrix (f32 or f16)
/// or its SQ8 codes.
#[derive(Clone, Copy)]
enum Vectors<'a> {
    F32(&'a [f32], usize),
    F16(&'a [u16], usize),
    Sq8(&'a Sq8),
}

/// A query prepared for one kind of [`Vectors`]: the f32 query itself (`bias` 0), or for SQ8 the
/// query scaled by the steps and `⟨q, min⟩` (see [`crate::sq8`]).
struct Query<'a> {
    q: Cow<'a, [f32]>,
    bias: f32,
}

impl<'a> Vectors<'a> {
    fn of(m: &'a Matrix, codes: Option<&'a Sq8>) -> Vectors<'a> {
        if let Some(c) = codes {
            return Vectors::Sq8(c);
        }
        match m.raw() {
            Raw::F32(v) => Vectors::F32(v, m.dim()),
            Raw::F16(v) => Vectors::F16(v, m.dim()),
        }
    }

    fn prepare<'q>(&self, q: &'q [f32]) -> Query<'q> {
        match *self {
            Vectors::Sq8(c) => {
                let mut scaled = Vec::with_capacity(q.len());
                let bias = c.prepare(q, &mut scaled);
                Query { q: Cow::Owned(scaled), bias }
            }
            _ => Query { q: Cow::Borrowed(q), bias: 0.0 },
        }
    }

    /// `−⟨q, row id⟩` (for SQ8, of the decoded row).
    #[inline]
    fn dist(&self, q: &Query<'_>, id: u32) -> f32 {
        let i = id as usize;
        match *self {
            Vectors::F32(v, d) => -dot(&q.q, &v[i * d..(i + 1) * d]),
            Vectors::F16(v, d) => -dot_f16(&q.q, &v[i * d..(i + 1) * d]),
            Vectors::Sq8(c) => -(q.bias + dot_u8(&q.q, c.row(u64::from(id)))),
        }
    }

    /// `−⟨q, row⟩` for four rows.
    #[inline]
    fn dist4(&self, q: &Query<'_>, ids: [u32; 4]) -> [f32; 4] {
        match *self {
            Vectors::F32(v, d) => dot4(&q.q, ids.map(|i| &v[i as usize * d..(i as usize + 1) * d])).map(|x| -x),
            Vectors::Sq8(c) => dot4_u8(&q.q, ids.map(|i| c.row(u64::from(i)))).map(|x| -(q.bias + x)),
            Vectors::F16(..) => ids.map(|i| self.dist(q, i)),
        }
    }

    /// Starts loading row `id` (all its cache lines).
    #[inline]
    fn prefetch(&self, id: u32) {
        let i = id as usize;
        match *self {
            Vectors::F32(v, d) => prefetch_slice(v.get(i * d..).unwrap_or_default(), d),
            Vectors::F16(v, d) => prefetch_slice(v.get(i * d..).unwrap_or_default(), d),
            Vectors::Sq8(c) => prefetch_slice(c.codes().get(i * c.dim()..).unwrap_or_default(), c.dim()),
        }
    }

    /// Row `id` as a prepared query (while building: the node being linked).
    fn query_of(&self, id: u32) -> Query<'a> {
        let i = id as usize;
        match *self {
            Vectors::F32(v, d) => Query { q: Cow::Borrowed(&v[i * d..(i + 1) * d]), bias: 0.0 },
            Vectors::F16(v, d) => Query {
                q: Cow::Owned(v[i * d..(i + 1) * d].iter().map(|&b| half::f16::from_bits(b).to_f32()).collect()),
                bias: 0.0,
            },
            Vectors::Sq8(c) => {
                let (scaled, bias) = c.prepared_row(u64::from(id));
                Query { q: Cow::Owned(scaled), bias }
            }
        }
    }
}

/// Read access to adjacency lists, during the build (atomic words) or after (plain words).
trait Links: Sync {
    fn nodes(&self) -> usize;
    /// The links of `id` at `level` into `out` (cleared first); nothing for an absent list.
    fn read(&self, id: u32, level: usize, out: &mut Vec<u32>);
    /// Starts loading the level-0 list of `id` into the cache.
    fn prefetch0(&self, id: u32);
}

/// A little-endian word of the graph file: plain (finished graph) or atomic (while building).
trait Word: Sync {
    fn get(&self) -> u32;
}
impl Word for u32 {
    #[inline]
    fn get(&self) -> u32 {
        u32::from_le(*self)
    }
}
impl Word for AtomicU32 {
    #[inline]
    fn get(&self) -> u32 {
        u32::from_le(self.load(Relaxed))
    }
}

/// The sizes of a graph and where its sections start in the file's words.
#[derive(Debug, Clone, Copy)]
struct Layout {
    n: usize,
    m: usize,
    m0: usize,
    upper_len: usize,
    levels_at: usize,
    upper_off_at: usize,
    level0_at: usize,
    upper_at: usize,
    end: usize,
}

impl Layout {
    fn new(n: usize, m: usize, upper_len: usize) -> Layout {
        let m0 = 2 * m;
        let levels_at = HEADER_WORDS;
        let upper_off_at = levels_at + n;
        let level0_at = upper_off_at + n;
        let upper_at = level0_at + n * (m0 + 1);
        Layout { n, m, m0, upper_len, levels_at, upper_off_at, level0_at, upper_at, end: upper_at + upper_len }
    }

    fn cap(&self, level: usize) -> usize {
        if level == 0 { self.m0 } else { self.m }
    }

    /// The words of `id`'s list at `level` (its count, then `cap` slots); `None` if it has none.
    #[inline]
    fn list<'w, W: Word>(&self, w: &'w [W], id: u32, level: usize) -> Option<&'w [W]> {
        let start = if level == 0 {
            self.level0_at + id as usize * (self.m0 + 1)
        } else {
            let off = w.get(self.upper_off_at + id as usize)?.get();
            if off == u32::MAX {
                return None;
            }
            self.upper_at + off as usize + (level - 1) * (self.m + 1)
        };
        w.get(start..start + 1 + self.cap(level))
    }

    #[inline]
    fn read<W: Word>(&self, w: &[W], id: u32, level: usize, out: &mut Vec<u32>) {
        out.clear();
        if let Some(list) = self.list(w, id, level) {
            let n = (list[0].get() as usize).min(list.len() - 1);
            out.extend(list[1..=n].iter().map(Word::get));
        }
    }

    #[inline]
    fn prefetch0<W: Word>(&self, w: &[W], id: u32) {
        prefetch_slice(w.get(self.level0_at + id as usize * (self.m0 + 1)..).unwrap_or_default(), self.m0 + 1);
    }
}

/// The graph while it is built: the file's words, atomic.
struct Building {
    at: Layout,
    words: Vec<AtomicU32>,
    locks: Vec<Mutex<()>>,
}

impl Building {
    fn level(&self, id: u32) -> usize {
        self.words[self.at.levels_at + id as usize].get() as usize
    }

    fn write(&self, id: u32, level: usize, links: &[u32]) {
        if let Some(list) = self.at.list(&self.words, id, level) {
            let n = links.len().min(list.len() - 1);
            for (w, &l) in list[1..].iter().zip(&links[..n]) {
                w.store(l.to_le(), Relaxed);
            }
            list[0].store((n as u32).to_le(), Relaxed);
        }
    }

    fn lock(&self, id: u32) -> std::sync::MutexGuard<'_, ()> {
        self.locks[id as usize % LOCK_STRIPES].lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Links for Building {
    fn nodes(&self) -> usize {
        self.at.n
    }
    fn read(&self, id: u32, level: usize, out: &mut Vec<u32>) {
        self.at.read(&self.words, id, level, out);
    }
    fn prefetch0(&self, id: u32) {
        self.at.prefetch0(&self.words, id);
    }
}

/// The words of a finished graph, owned (just built) or mapped (loaded).
enum Words {
    Owned(Vec<u32>),
    Mapped(memmap2::Mmap),
}

impl Words {
    #[inline]
    fn get(&self) -> &[u32] {
        match self {
            Words::Owned(v) => v,
            // the map is page-aligned and its length a multiple of 4 (checked on load)
            Words::Mapped(m) => bytemuck::cast_slice(m),
        }
    }
}

/// A finished graph.
struct Frozen {
    words: Words,
    at: Layout,
    max_level: usize,
    entry: u32,
}

impl Frozen {
    /// Parses and checks the header of `words` (the whole file).
    fn parse(words: Words, path: &Path, dim: usize, rows: u64) -> Result<Frozen> {
        let w = words.get();
        let bad = |reason: String| IndexError::bad(path, reason);
        if w.len() < HEADER_WORDS || w[0].get() != MAGIC[0] || w[1].get() != MAGIC[1] {
            return Err(bad("not an r1s HNSW graph (bad magic)".into()));
        }
        let h: Vec<u64> = w[..HEADER_WORDS].iter().map(|x| u64::from(x.get())).collect();
        let n = h[2] | (h[3] << 32);
        if n != rows || h[4] as usize != dim {
            return Err(IndexError::Mismatch(format!(
                "{}: the graph is over [{n}, {}], the manifest says [{rows}, {dim}]",
                path.display(),
                h[4]
            )));
        }
        let (m, m0, max_level, entry) = (h[5] as usize, h[6] as usize, h[7] as usize, h[8] as u32);
        if m < 2 || m0 != 2 * m || max_level > MAX_LEVEL as usize || (n > 0 && u64::from(entry) >= n) {
            return Err(bad(format!("corrupt header (M {m}, M0 {m0}, top level {max_level}, entry {entry})")));
        }
        // sizes from the header: the layout's end is computed checked and must be the file's
        let upper_len = h[9] | (h[10] << 32);
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(m0.checked_add(1)?)?.checked_add(HEADER_WORDS + 2 * n))
            .and_then(|e| e.checked_add(usize::try_from(upper_len).ok()?));
        if end != Some(w.len()) {
            return Err(bad(format!(
                "{} bytes, the header (n {n}, M {m}, {upper_len} upper-level words) describes {}: truncated or corrupt",
                w.len() * 4,
                end.map_or_else(|| "more than 2^64".to_owned(), |e| (e as u128 * 4).to_string())
            )));
        }
        let at = Layout::new(n as usize, m, upper_len as usize);
        Ok(Frozen { words, at, max_level, entry })
    }
}

impl Links for Frozen {
    fn nodes(&self) -> usize {
        self.at.n
    }
    fn read(&self, id: u32, level: usize, out: &mut Vec<u32>) {
        self.at.read(self.words.get(), id, level, out);
    }
    fn prefetch0(&self, id: u32) {
        self.at.prefetch0(self.words.get(), id);
    }
}

/// Per-search scratch: visited tags, both heaps, a list buffer.
struct Scratch {
    tags: Vec<u16>,
    tag: u16,
    cand: BinaryHeap<Reverse<Near>>,
    res: BinaryHeap<Near>,
    links: Vec<u32>,
    fresh: Vec<u32>,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            tags: Vec::new(),
            tag: 0,
            cand: BinaryHeap::new(),
            res: BinaryHeap::new(),
            links: Vec::new(),
            fresh: Vec::new(),
        }
    }

    /// Starts a new visit over `n` nodes.
    fn visit(&mut self, n: usize) {
        if self.tags.len() != n {
            self.tags = vec![0; n];
            self.tag = 0;
        }
        self.tag = self.tag.wrapping_add(1);
        if self.tag == 0 {
            self.tags.fill(0);
            self.tag = 1;
        }
    }
}

/// A pool of scratch spaces, one per concurrent search.
#[derive(Default)]
struct Pool(Mutex<Vec<Scratch>>);

impl Pool {
    fn with<T>(&self, f: impl FnOnce(&mut Scratch) -> T) -> T {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_else(Scratch::new);
        let out = f(&mut s);
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(s);
        out
    }
}

/// Greedy descent at `level`: moves to a nearer neighbour until none is nearer.
fn greedy<L: Links>(g: &L, v: Vectors<'_>, q: &Query<'_>, mut cur: Near, level: usize, buf: &mut Vec<u32>) -> Near {
    loop {
        let mut moved = false;
        g.read(cur.id, level, buf);
        for &nb in buf.iter() {
            if nb as usize >= g.nodes() {
                continue;
            }
            let d = v.dist(q, nb);
            if d < cur.d {
                cur = Near { d, id: nb };
                moved = true;
            }
        }
        if !moved {
            return cur;
        }
    }
}

/// Best-first search at `level` from `entry`, keeping `ef` candidates; nearest first.
fn search_layer<L: Links>(
    g: &L,
    v: Vectors<'_>,
    q: &Query<'_>,
    entry: &[Near],
    ef: usize,
    level: usize,
    s: &mut Scratch,
) -> Vec<Near> {
    let n = g.nodes();
    s.visit(n);
    let Scratch { tags, tag, cand, res, links, fresh } = s;
    cand.clear();
    res.clear();
    for &e in entry {
        if (e.id as usize) < n && tags[e.id as usize] != *tag {
            tags[e.id as usize] = *tag;
            cand.push(Reverse(e));
            res.push(e);
        }
    }
    while res.len() > ef {
        res.pop();
    }
    while let Some(Reverse(c)) = cand.pop() {
        if res.len() >= ef && res.peek().is_some_and(|w| c.d > w.d) {
            break;
        }
        if level == 0
            && let Some(Reverse(next)) = cand.peek()
        {
            g.prefetch0(next.id);
        }
        g.read(c.id, level, links);
        fresh.clear();
        for &nb in links.iter() {
            if let Some(t) = tags.get_mut(nb as usize)
                && *t != *tag
            {
                *t = *tag;
                fresh.push(nb);
            }
        }
        for &nb in fresh.iter().take(4) {
            v.prefetch(nb);
        }
        let mut offer = |d: f32, id: u32| {
            if res.len() < ef || res.peek().is_some_and(|w| d < w.d) {
                cand.push(Reverse(Near { d, id }));
                res.push(Near { d, id });
                if res.len() > ef {
                    res.pop();
                }
            }
        };
        let mut four = fresh.chunks_exact(4);
        let mut ahead = fresh.iter().skip(4);
        for ids in &mut four {
            for &nb in ahead.by_ref().take(4) {
                v.prefetch(nb);
            }
            let ids = [ids[0], ids[1], ids[2], ids[3]];
            for (d, id) in v.dist4(q, ids).into_iter().zip(ids) {
                offer(d, id);
            }
        }
        for &id in four.remainder() {
            offer(v.dist(q, id), id);
        }
    }
    let mut out: Vec<Near> = res.drain().collect();
    out.sort_unstable();
    out
}

/// The diversity heuristic: walking the candidates nearest first, keep one unless it is nearer to a
/// neighbour already kept than to the base; at most `max`.
fn select(v: Vectors<'_>, sorted: &[Near], max: usize) -> Vec<Near> {
    let mut kept: Vec<Near> = Vec::with_capacity(max);
    let mut ids: Vec<u32> = Vec::with_capacity(max);
    for (i, &c) in sorted.iter().enumerate() {
        if kept.len() >= max {
            break;
        }
        if let Some(next) = sorted.get(i + 1) {
            v.prefetch(next.id);
        }
        if all_farther(v, &v.query_of(c.id), &ids, c.d) {
            kept.push(c);
            ids.push(c.id);
        }
    }
    kept
}

/// Whether every row of `ids` is farther from `q` than `d` (four rows at a time).
fn all_farther(v: Vectors<'_>, q: &Query<'_>, ids: &[u32], d: f32) -> bool {
    let mut four = ids.chunks_exact(4);
    for c in &mut four {
        if v.dist4(q, [c[0], c[1], c[2], c[3]]).iter().any(|&x| x <= d) {
            return false;
        }
    }
    four.remainder().iter().all(|&id| v.dist(q, id) > d)
}

/// The distances of `ids` to `q` (four rows at a time, the next four prefetched), appended to `out`.
fn distances(v: Vectors<'_>, q: &Query<'_>, ids: &[u32], out: &mut Vec<Near>) {
    for &id in ids.iter().take(4) {
        v.prefetch(id);
    }
    let mut ahead = ids.iter().skip(4);
    let mut four = ids.chunks_exact(4);
    for c in &mut four {
        for &id in ahead.by_ref().take(4) {
            v.prefetch(id);
        }
        let c = [c[0], c[1], c[2], c[3]];
        out.extend(v.dist4(q, c).into_iter().zip(c).map(|(d, id)| Near { d, id }));
    }
    out.extend(four.remainder().iter().map(|&id| Near { d: v.dist(q, id), id }));
}

/// splitmix64: the level generator (deterministic, no dependency).
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Top of the graph while building: entry point and its level.
struct Top {
    entry: u32,
    level: usize,
}

struct Builder<'a> {
    g: &'a Building,
    v: Vectors<'a>,
    top: Mutex<Top>,
    pool: Pool,
    ef_construction: usize,
}

impl Builder<'_> {
    fn insert(&self, id: u32) {
        let level = self.g.level(id);
        let q = self.v.query_of(id);
        let q = &q;
        // a node above the current top holds the top lock for its whole insertion (rare)
        let mut guard = Some(self.top.lock().unwrap_or_else(|p| p.into_inner()));
        let (entry, top_level) = guard.as_ref().map(|t| (t.entry, t.level)).unwrap_or_default();
        if level <= top_level {
            guard = None;
        }
        self.pool.with(|s| {
            let mut ep = Near { d: self.v.dist(q, entry), id: entry };
            let mut buf = Vec::new();
            for l in (level + 1..=top_level).rev() {
                ep = greedy(self.g, self.v, q, ep, l, &mut buf);
            }
            let mut entries = vec![ep];
            for l in (0..=level.min(top_level)).rev() {
                let mut found = search_layer(self.g, self.v, q, &entries, self.ef_construction, l, s);
                found.retain(|c| c.id != id);
                let chosen = select(self.v, &found, self.g.at.cap(l));
                let ids: Vec<u32> = chosen.iter().map(|c| c.id).collect();
                {
                    let _lock = self.g.lock(id);
                    self.g.write(id, l, &ids);
                }
                for c in &chosen {
                    self.link_back(c.id, Near { d: c.d, id }, l, &mut buf);
                }
                if !found.is_empty() {
                    entries = found;
                }
            }
        });
        if let Some(mut t) = guard {
            t.entry = id;
            t.level = level;
        }
    }

    /// Adds `new` to the list of `node` at `level`; a full list is re-chosen by the heuristic.
    fn link_back(&self, node: u32, new: Near, level: usize, buf: &mut Vec<u32>) {
        let _lock = self.g.lock(node);
        self.g.read(node, level, buf);
        if buf.contains(&new.id) {
            return;
        }
        if buf.len() < self.g.at.cap(level) {
            buf.push(new.id);
        } else {
            let base = self.v.query_of(node);
            let mut cands: Vec<Near> = Vec::with_capacity(buf.len() + 1);
            distances(self.v, &base, buf, &mut cands);
            cands.push(new);
            cands.sort_unstable();
            *buf = select(self.v, &cands, self.g.at.cap(level)).into_iter().map(|c| c.id).collect();
        }
        self.g.write(node, level, buf);
    }
}

/// An HNSW graph over the rows of a matrix, walked over the matrix itself or over its SQ8 codes.
pub struct HnswIndex {
    graph: Frozen,
    matrix: Matrix,
    codes: Option<Sq8>,
    pool: Pool,
    pub params: HnswParams,
    pub quant: QuantParams,
}

impl std::fmt::Debug for HnswIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HnswIndex")
            .field("rows", &self.graph.at.n)
            .field("top_level", &self.graph.max_level)
            .field("params", &self.params)
            .field("quant", &self.quant)
            .finish_non_exhaustive()
    }
}

/// Checkpointing of a graph build: where, and how often.
#[derive(Debug, Clone, Default)]
pub struct Checkpoints {
    /// The checkpoint file (`hnsw.r1s.ckpt` in the index directory); `None`: no checkpoints.
    pub path: Option<PathBuf>,
    /// Inserts between two checkpoints (rounded up to the build's chunk of inserts).
    pub every: u64,
    /// Also a checkpoint once this much time has passed since the last one (or the start), at the
    /// end of a chunk of inserts.
    pub interval: Option<std::time::Duration>,
}

/// The checkpoint file of a graph build in progress.
pub const CHECKPOINT_FILE: &str = "hnsw.r1s.ckpt";
const CKPT_MARK: u32 = u32::from_le_bytes(*b"CKPT");

/// The 16 header words of a graph file (see the module docs), little-endian; `tail` fills the four
/// reserved words (zero in a finished graph; the checkpoint's fields in `hnsw.r1s.ckpt`).
fn header_words(
    at: &Layout,
    dim: usize,
    top: (u32, usize),
    ef_construction: usize,
    tail: [u32; 4],
) -> [u32; HEADER_WORDS] {
    let (n, upper) = (at.n as u64, at.upper_len as u64);
    [
        MAGIC[0],
        MAGIC[1],
        n as u32,
        (n >> 32) as u32,
        dim as u32,
        at.m as u32,
        at.m0 as u32,
        top.1 as u32,
        top.0,
        upper as u32,
        (upper >> 32) as u32,
        ef_construction as u32,
        tail[0],
        tail[1],
        tail[2],
        tail[3],
    ]
    .map(u32::to_le)
}

/// Levels `floor(−ln U / ln M)` of `n` nodes, drawn in row order from a fixed seed, and the words
/// their upper-layer lists take.
fn draw_levels(n: usize, m: usize) -> Result<(Vec<u32>, usize)> {
    let mut rng = LEVEL_SEED;
    let mult = 1.0 / (m as f64).ln();
    let levels: Vec<u32> = (0..n)
        .map(|_| {
            let u = ((splitmix(&mut rng) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            ((-u.ln() * mult) as u32).min(MAX_LEVEL)
        })
        .collect();
    let upper_len: usize = levels.iter().map(|&l| l as usize * (m + 1)).sum();
    if upper_len >= u32::MAX as usize {
        return Err(IndexError::Options(format!("{n} rows at M {m}: the upper levels overflow")));
    }
    Ok((levels, upper_len))
}

/// Where each node's upper-layer lists start in the upper section (`u32::MAX` for a level-0 node):
/// the running sum of `level × (M + 1)`.
fn upper_offsets(levels: &[u32], m: usize) -> impl Iterator<Item = u32> + '_ {
    levels.iter().scan(0u32, move |off, &l| {
        let here = if l == 0 { u32::MAX } else { *off };
        *off += l * (m as u32 + 1);
        Some(here)
    })
}

/// The words of an empty graph of `n` nodes: levels and upper-list offsets filled in, no links.
fn empty_graph(n: usize, m: usize) -> Result<(Layout, Vec<u32>)> {
    let (levels, upper_len) = draw_levels(n, m)?;
    let at = Layout::new(n, m, upper_len);
    let mut words = vec![0u32; at.end];
    words[at.levels_at..at.upper_off_at].copy_from_slice(&levels);
    for (slot, off) in words[at.upper_off_at..at.level0_at].iter_mut().zip(upper_offsets(&levels, m)) {
        *slot = off;
    }
    words.iter_mut().for_each(|x| *x = x.to_le());
    Ok((at, words))
}

/// What a checkpoint must agree with to be resumed.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Resumable {
    n: usize,
    dim: usize,
    m: usize,
    ef_construction: usize,
    sq8: bool,
    source: u64,
}

/// Writes the build's words, the top, the count of nodes inserted and the source fingerprint to
/// `path` (a temporary file, synced, renamed into place, the directory synced): a crash at any
/// moment leaves the previous checkpoint or this one.
fn write_checkpoint(path: &Path, g: &Building, top: (u32, usize), inserted: usize, r: &Resumable) -> Result<()> {
    let tmp = path.with_extension("ckpt.part");
    let at = g.at;
    let write = || -> std::io::Result<()> {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        let ins = inserted as u64;
        let tail = [ins as u32, (ins >> 32) as u32, u32::from(r.sq8), CKPT_MARK];
        let mut buf: Vec<u32> = header_words(&at, r.dim, top, r.ef_construction, tail).to_vec();
        for chunk in g.words[HEADER_WORDS..].chunks(1 << 16) {
            buf.extend(chunk.iter().map(|w| w.load(Relaxed)));
            f.write_all(bytemuck::cast_slice(&buf))?;
            buf.clear();
        }
        f.write_all(&r.source.to_le_bytes())?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()
    };
    write().map_err(|e| IndexError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| IndexError::io(path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // the rename itself is durable once the directory is
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Reads a checkpoint written by [`write_checkpoint`]: `(layout, words, top, inserted)`, or
/// `None` (with the reason) when it is for another build or does not hold together. Every word is
/// checked (levels against the seeded generator, link counts and targets in range) before use.
type Checkpoint = (Layout, Vec<u32>, Top, usize);

fn read_checkpoint(path: &Path, r: &Resumable) -> Result<std::result::Result<Checkpoint, String>> {
    let bytes = std::fs::read(path).map_err(|e| IndexError::io(path, e))?;
    if bytes.len() < HEADER_WORDS * 4 + 8 || bytes.len() % 4 != 0 {
        return Ok(Err(format!("{} bytes: truncated", bytes.len())));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 8);
    let source = u64::from_le_bytes(tail.try_into().unwrap_or_default());
    let mut words: Vec<u32> = body.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    drop(bytes);
    let h = &words[..HEADER_WORDS];
    let n = u64::from(h[2]) | (u64::from(h[3]) << 32);
    let inserted = u64::from(h[12]) | (u64::from(h[13]) << 32);
    if h[0] != MAGIC[0] || h[1] != MAGIC[1] || h[15] != CKPT_MARK {
        return Ok(Err("not an r1s graph checkpoint".into()));
    }
    let found = Resumable {
        n: n as usize,
        dim: h[4] as usize,
        m: h[5] as usize,
        ef_construction: h[11] as usize,
        sq8: h[14] == 1,
        source,
    };
    if found != *r || n != r.n as u64 {
        return Ok(Err(format!(
            "it is for another build: {} rows × {} dims, M {}, efConstruction {}, {}{}; this build: {} rows × {} dims, M {}, efConstruction {}, {} (the rerun must repeat the interrupted command's settings)",
            found.n,
            found.dim,
            found.m,
            found.ef_construction,
            if found.sq8 { "sq8" } else { "unquantized" },
            if found.source != r.source { ", other embeddings" } else { "" },
            r.n,
            r.dim,
            r.m,
            r.ef_construction,
            if r.sq8 { "sq8" } else { "unquantized" },
        )));
    }
    let (levels, upper_len) = draw_levels(r.n, r.m)?;
    let at = Layout::new(r.n, r.m, upper_len);
    let upper = u64::from(h[9]) | (u64::from(h[10]) << 32);
    if upper != upper_len as u64 || words.len() != at.end || inserted > n || inserted == 0 && n > 0 {
        return Ok(Err("its sizes do not match the graph's".into()));
    }
    let (entry, level) = (h[8], h[7] as usize);
    if (n > 0 && u64::from(entry) >= n) || level > MAX_LEVEL as usize {
        return Ok(Err("corrupt top".into()));
    }
    if words[at.levels_at..at.upper_off_at] != levels[..] {
        return Ok(Err("its levels are not this build's".into()));
    }
    if !words[at.upper_off_at..at.level0_at].iter().copied().eq(upper_offsets(&levels, r.m)) {
        return Ok(Err("corrupt upper-list offsets".into()));
    }
    let lists = |from: usize, to: usize, cap: usize| {
        words[from..to]
            .chunks_exact(cap + 1)
            .all(|l| l[0] as usize <= cap && l[1..=l[0] as usize].iter().all(|&x| (x as usize) < r.n))
    };
    if !lists(at.level0_at, at.upper_at, at.m0) || !lists(at.upper_at, at.end, at.m) {
        return Ok(Err("corrupt adjacency lists".into()));
    }
    // checkpoints fall between chunks: nodes from `inserted` on are not linked yet, and no list
    // names them
    let ins = inserted as usize;
    let level0 = &words[at.level0_at..at.upper_at];
    let unlinked = level0.chunks_exact(at.m0 + 1).skip(ins).all(|l| l[0] == 0);
    // (and once two nodes are in, every inserted node has a link)
    let untouched = level0
        .chunks_exact(at.m0 + 1)
        .take(ins)
        .all(|l| (ins < 2 || l[0] > 0) && l[1..=l[0] as usize].iter().all(|&x| (x as usize) < ins));
    if !unlinked || !untouched {
        return Ok(Err(format!("its count of inserted nodes ({ins}) does not match its lists")));
    }
    // the words in memory are little-endian like the file's; the checkpoint fields are cleared
    words[12..HEADER_WORDS].fill(0);
    words.iter_mut().for_each(|x| *x = x.to_le());
    Ok(Ok((at, words, Top { entry, level }, inserted as usize)))
}

impl HnswIndex {
    /// Builds the graph over every row of `matrix` (mapped again from its file), inserting in
    /// parallel on the current rayon pool; no quantization, no checkpoints.
    pub fn build(matrix: &Matrix, params: HnswParams, progress: &dyn Progress, cancel: &Cancel) -> Result<HnswIndex> {
        Self::build_with(matrix, params, None, QuantParams::default(), &Checkpoints::default(), progress, cancel)
    }

    /// Builds the graph over `matrix`, walked over `codes` when given (the f32/f16 rows are then
    /// never read while building: memory is the graph + the codes). With `ckpt.path`, the build
    /// writes a checkpoint every `ckpt.every` inserts and on cancellation, and resumes from one that
    /// matches this build (rows, dim, M, efConstruction, quantization, the embeddings' fingerprint);
    /// one that does not is ignored (logged) and overwritten. Inserts run in chunks in row order, so
    /// a one-thread build resumed at any checkpoint is byte-identical to an uninterrupted one.
    ///
    /// Errors: bad parameters, more than 2^32 − 1 rows, I/O on the checkpoint, [`IndexError::Cancelled`].
    pub fn build_with(
        matrix: &Matrix,
        params: HnswParams,
        codes: Option<Sq8>,
        quant: QuantParams,
        ckpt: &Checkpoints,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<HnswIndex> {
        params.check()?;
        let matrix = matrix.clone();
        let n = usize::try_from(matrix.rows()).ok().filter(|&n| n < u32::MAX as usize).ok_or_else(|| {
            IndexError::Options(format!("{} rows: an r1s HNSW graph holds fewer than 2^32", matrix.rows()))
        })?;
        if let Some(c) = &codes {
            c.check_shape(n as u64, matrix.dim())?;
        }
        let quant = quant.over(codes.as_ref());
        let resumable = match &ckpt.path {
            Some(_) => Some(Resumable {
                n,
                dim: matrix.dim(),
                m: params.m,
                ef_construction: params.ef_construction,
                sq8: codes.is_some(),
                source: crate::sq8::fingerprint(&matrix)?,
            }),
            None => None,
        };
        let mut resumed = None;
        if let (Some(path), Some(r)) = (&ckpt.path, &resumable)
            && path.exists()
        {
            match read_checkpoint(path, r)? {
                Ok(state) => resumed = Some(state),
                Err(why) => log::warn!("{}: not resuming from it: {why}", path.display()),
            }
        }
        // the file's words, built in place: the graph never exists twice in memory
        let (at, words, top, mut start) = match resumed {
            Some((at, words, top, inserted)) => {
                log::info!("resuming the graph build at node {inserted} of {n}");
                (at, words, top, inserted)
            }
            None => {
                let (at, words) = empty_graph(n, params.m)?;
                // node 0 is inserted first: the top starts at its level
                let level = words.get(at.levels_at).map_or(0, |&w| u32::from_le(w) as usize);
                (at, words, Top { entry: 0, level }, 1.min(n))
            }
        };
        let g = Building {
            at,
            words: words.into_iter().map(AtomicU32::new).collect(),
            locks: (0..LOCK_STRIPES.min(n.max(1))).map(|_| Mutex::new(())).collect(),
        };
        progress.start("hnsw build", Some(n as u64), Unit::Items);
        let b = Builder {
            g: &g,
            v: Vectors::of(&matrix, codes.as_ref()),
            top: Mutex::new(top),
            pool: Pool::default(),
            ef_construction: params.ef_construction.max(params.m),
        };
        let chunk = (n / 200).clamp(1024, 65_536);
        progress.advance(start as u64);
        let mut saved = start;
        let mut saved_at = std::time::Instant::now();
        let save = |inserted: usize| -> Result<()> {
            if let (Some(path), Some(r)) = (&ckpt.path, &resumable) {
                let t = b.top.lock().unwrap_or_else(|p| p.into_inner());
                write_checkpoint(path, &g, (t.entry, t.level), inserted, r)?;
            }
            Ok(())
        };
        while start < n {
            if cancel.is_cancelled() {
                if start > saved {
                    save(start)?;
                }
                return Err(IndexError::Cancelled);
            }
            let end = (start + chunk).min(n);
            (start as u32..end as u32).into_par_iter().for_each(|id| b.insert(id));
            progress.advance((end - start) as u64);
            start = end;
            let due =
                (start - saved) as u64 >= ckpt.every.max(1) || ckpt.interval.is_some_and(|d| saved_at.elapsed() >= d);
            if start < n && due {
                save(start)?;
                saved = start;
                saved_at = std::time::Instant::now();
            }
        }
        let top = b.top.into_inner().unwrap_or_else(|p| p.into_inner());
        progress.finish(&format!("{n} vectors linked (M {}, efC {})", params.m, params.ef_construction));
        let words = freeze(g, matrix.dim(), top, params.ef_construction);
        let graph = Frozen::parse(Words::Owned(words), Path::new(GRAPH_FILE), matrix.dim(), n as u64)?;
        Ok(HnswIndex { graph, matrix, codes, pool: Pool::default(), params, quant })
    }

    /// Writes the graph to `dir/hnsw.r1s` (through a temporary file renamed into place).
    pub fn dump(&self, dir: &Path) -> Result<()> {
        let path = dir.join(GRAPH_FILE);
        let tmp = path.with_extension("r1s.part");
        let write = || -> std::io::Result<()> {
            let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
            for chunk in self.graph.words.get().chunks(1 << 16) {
                f.write_all(bytemuck::cast_slice(chunk))?;
            }
            f.into_inner().map_err(|e| e.into_error())?.sync_all()
        };
        write().map_err(|e| IndexError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| IndexError::io(&path, e))
    }

    /// Maps `dir/hnsw.r1s` and the embeddings, checking the graph against the expected size.
    pub fn load(dir: &Path, embeddings: &Path, dim: usize, rows: u64, params: HnswParams) -> Result<HnswIndex> {
        Self::load_with(dir, embeddings, dim, rows, params, None, QuantParams::default())
    }

    /// [`HnswIndex::load`] of a graph walked over SQ8 `codes` when given.
    pub fn load_with(
        dir: &Path,
        embeddings: &Path,
        dim: usize,
        rows: u64,
        params: HnswParams,
        codes: Option<Sq8>,
        quant: QuantParams,
    ) -> Result<HnswIndex> {
        let matrix = Matrix::open(embeddings)?;
        if matrix.dim() != dim {
            return Err(IndexError::Mismatch(format!(
                "{}: dimension {}, the graph was given {dim}",
                embeddings.display(),
                matrix.dim()
            )));
        }
        Self::load_over(dir, matrix, rows, params, codes, quant)
    }

    /// [`HnswIndex::load_with`] over an already mapped matrix (an index and its exact twin share
    /// one mapping of `embeddings.npy`).
    pub fn load_over(
        dir: &Path,
        matrix: Matrix,
        rows: u64,
        params: HnswParams,
        codes: Option<Sq8>,
        quant: QuantParams,
    ) -> Result<HnswIndex> {
        let dim = matrix.dim();
        let path: PathBuf = dir.join(GRAPH_FILE);
        let file = std::fs::File::open(&path).map_err(|e| IndexError::io(&path, e))?;
        let len = file.metadata().map_err(|e| IndexError::io(&path, e))?.len();
        if len % 4 != 0 || len < (HEADER_WORDS * 4) as u64 {
            return Err(IndexError::bad(&path, format!("{len} bytes: truncated or corrupt")));
        }
        // SAFETY: the file is only read, and its length checked above; r1s never rewrites a graph in
        // place (a rebuild writes a new file and renames it).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| IndexError::io(&path, e))?;
        let graph = Frozen::parse(Words::Mapped(map), &path, dim, rows)?;
        if matrix.rows() != rows {
            return Err(IndexError::Mismatch(format!(
                "{}: {} rows, the graph was given {rows}",
                matrix.path().display(),
                matrix.rows()
            )));
        }
        if codes.is_some() {
            // the vectors serve only the re-ranking of a few rows per query
            matrix.advise_random();
        }
        if let Some(c) = &codes {
            c.check_shape(rows, dim)?;
        }
        let quant = quant.over(codes.as_ref());
        Ok(HnswIndex { graph, matrix, codes, pool: Pool::default(), params, quant })
    }

    /// The highest level of the graph.
    pub fn top_level(&self) -> usize {
        self.graph.max_level
    }

    /// The SQ8 codes the graph is walked over, if any.
    pub fn codes(&self) -> Option<&Sq8> {
        self.codes.as_ref()
    }

    fn search_one(&self, q: &[f32], k: usize, ef: usize, s: &mut Scratch) -> Vec<Scored> {
        let g = &self.graph;
        if g.at.n == 0 || k == 0 {
            return Vec::new();
        }
        let v = Vectors::of(&self.matrix, self.codes.as_ref());
        let pq = v.prepare(q);
        let mut ep = Near { d: v.dist(&pq, g.entry), id: g.entry };
        for l in (1..=g.max_level).rev() {
            ep = greedy(g, v, &pq, ep, l, &mut s.links);
        }
        let found = search_layer(g, v, &pq, &[ep], ef.max(k), 0, s);
        if self.codes.is_some() && self.quant.rerank {
            // `found` is best first by code score: the re-ranked rows are its head
            let top = self.quant.rerank_top.map_or(found.len(), |n| n.max(k));
            return crate::sq8::rerank(&self.matrix, q, found.iter().take(top).map(|c| u64::from(c.id)), k);
        }
        found.into_iter().take(k).map(|c| (u64::from(c.id), -c.d)).collect()
    }

    /// Search with an explicit `ef`, queries in parallel.
    pub fn search_ef(&self, queries: &[f32], k: usize, ef: usize) -> Result<Vec<Vec<Scored>>> {
        let d = self.matrix.dim();
        crate::error::query_rows(queries, d)?;
        Ok(queries.par_chunks_exact(d).map(|q| self.pool.with(|s| self.search_one(q, k, ef, s))).collect())
    }
}

/// The file words of a built graph: its header filled in (the reserved words zero), the atomics
/// turned into plain words in place (same size and alignment: no copy).
fn freeze(g: Building, dim: usize, top: Top, ef_construction: usize) -> Vec<u32> {
    let header = header_words(&g.at, dim, (top.entry, top.level), ef_construction, [0; 4]);
    for (w, h) in g.words.iter().zip(header) {
        w.store(h, Relaxed);
    }
    g.words.into_iter().map(AtomicU32::into_inner).collect()
}

impl VectorIndex for HnswIndex {
    type Error = IndexError;
    fn dim(&self) -> usize {
        self.matrix.dim()
    }
    fn len(&self) -> u64 {
        self.graph.at.n as u64
    }
    fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Scored>>> {
        self.search_ef(queries, k, self.params.ef_search)
    }
}
