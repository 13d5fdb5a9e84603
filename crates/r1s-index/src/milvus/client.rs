//! The Milvus client side of [`super`]: milvus-sdk-rust over gRPC.

use std::fs::File;
use std::future::Future;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use milvus::client::Client;
use milvus::data::FieldColumn;
use milvus::index::{IndexParams, IndexType, MetricType};
use milvus::options::{CreateCollectionOptions, LoadOptions};
use milvus::proto::common::ConsistencyLevel;
use milvus::query::{QueryOptions, SearchOptions};
use milvus::schema::{CollectionSchemaBuilder, FieldSchema};
use milvus::value::Value;
use r1s_core::{Cancel, Progress, Scored, Unit, VectorIndex};
use serde::{Deserialize, Serialize};

use super::{
    Identity, MAX_NQ, MAX_TOPK, MilvusBuild, MilvusIndexType, MilvusParams, PK_FIELD as PK, STATE_FILE,
    VECTOR_FIELD as VECTOR,
};
use crate::error::{IndexError, Result, query_rows};
use crate::flat::Matrix;

fn sdk_type(t: MilvusIndexType) -> IndexType {
    match t {
        MilvusIndexType::Hnsw => IndexType::HNSW,
        MilvusIndexType::IvfFlat => IndexType::IvfFlat,
        MilvusIndexType::IvfSq8 => IndexType::IvfSQ8,
        MilvusIndexType::Flat => IndexType::Flat,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct InsertState {
    uri: String,
    collection: String,
    identity: Identity,
    /// Rows `0..inserted` are in the collection, each once.
    inserted: u64,
    /// Rows per insert call: rows `inserted..inserted + batch` may have reached the server
    /// unrecorded (the record is written after each call).
    #[serde(default)]
    batch: u64,
}

fn milvus_err(what: &str, p: &MilvusParams, e: milvus::error::Error) -> IndexError {
    if transient(&e) {
        IndexError::Unavailable(format!("Milvus at {} ({what}): {}", p.uri, brief(&e)))
    } else {
        IndexError::Backend(format!("Milvus at {}, collection {:?} ({what}): {}", p.uri, p.collection, brief(&e)))
    }
}

/// The error without the SDK's Debug noise where a message is there.
fn brief(e: &milvus::error::Error) -> String {
    use milvus::error::Error as E;
    match e {
        E::Grpc(s) => format!("gRPC {:?}: {}", s.code(), s.message()),
        E::Server(code, reason) => format!("{code:?}: {reason}"),
        E::Communication(c) => format!("cannot connect: {c}"),
        other => other.to_string(),
    }
}

/// Failures a later attempt may not meet: the server unreachable, restarting or overloaded.
fn transient(e: &milvus::error::Error) -> bool {
    use milvus::error::Error as E;
    use milvus::proto::common::ErrorCode;
    match e {
        E::Communication(_) => true,
        // tonic's codes: CANCELLED 1, UNKNOWN 2 (a dropped connection), DEADLINE_EXCEEDED 4,
        // UNAVAILABLE 14
        E::Grpc(s) => matches!(s.code() as i32, 1 | 2 | 4 | 14),
        E::Server(code, reason) => {
            matches!(code, ErrorCode::NotReadyServe | ErrorCode::RateLimit | ErrorCode::ForceDeny)
                || reason.contains("not ready")
                || reason.contains("service unavailable")
                // a node of the server stopping or not yet up
                || reason.contains("failed to connect")
                || reason.contains("empty grpc client")
        }
        _ => false,
    }
}

/// Runs async SDK calls for synchronous callers.
#[derive(Debug)]
struct Bridge {
    rt: tokio::runtime::Runtime,
}

impl Bridge {
    fn new() -> Result<Bridge> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("r1s-milvus")
            .enable_all()
            .build()
            .map_err(|e| IndexError::Backend(format!("cannot start the Milvus client's runtime: {e}")))?;
        Ok(Bridge { rt })
    }

    /// Runs `f` to completion on the bridge's runtime, from any thread (inside another async
    /// runtime it blocks a scoped helper thread instead of panicking).
    fn run<T: Send>(&self, f: impl Future<Output = T> + Send) -> T {
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(|| self.rt.block_on(f)).join().unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
        } else {
            self.rt.block_on(f)
        }
    }
}

/// Calls `op` until it succeeds, fails for good, or `p.timeout_ms` has passed: each attempt gets
/// the time left, transient failures are retried (at most `p.retries` times) after 100, 200, 400,
/// ... ms.
async fn with_retries<T, F, Fut>(what: &str, p: &MilvusParams, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = milvus::error::Result<T>>,
{
    let deadline = Instant::now() + Duration::from_millis(p.timeout_ms.max(1));
    let mut attempt = 0u32;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let outcome = tokio::time::timeout(left, op()).await;
        let err = match outcome {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if transient(&e) => milvus_err(what, p, e),
            Ok(Err(e)) => return Err(milvus_err(what, p, e)),
            Err(_) => {
                IndexError::Unavailable(format!("Milvus at {} ({what}): no answer within {} ms", p.uri, p.timeout_ms))
            }
        };
        let pause = Duration::from_millis(100u64 << attempt.min(6));
        if attempt >= p.retries || Instant::now() + pause >= deadline {
            return Err(err);
        }
        log::debug!("{err}; retrying in {} ms", pause.as_millis());
        tokio::time::sleep(pause).await;
        attempt += 1;
    }
}

async fn connect(p: &MilvusParams) -> Result<Client> {
    let timeout = Duration::from_millis(p.timeout_ms.max(1));
    with_retries("connect", p, || Client::with_timeout(p.uri.clone(), timeout, None, None)).await
}

/// A Milvus collection searched as a [`VectorIndex`].
#[derive(Debug)]
pub struct MilvusIndex {
    bridge: Bridge,
    client: Client,
    pub params: MilvusParams,
    dim: usize,
    rows: u64,
    identity: Option<Identity>,
    /// When the collection's vectors were last checked against `identity`.
    checked: Mutex<Instant>,
}

/// How often a serving index checks that its collection still holds its vectors.
const RECHECK: Duration = Duration::from_secs(10);

/// Fails unless collection `p.collection` holds `dim`-dimensional vectors made as `identity` says.
async fn check_vectors(client: &Client, p: &MilvusParams, dim: usize, identity: Option<&Identity>) -> Result<()> {
    let found = describe(client, p).await?;
    if found.dim != dim {
        return Err(IndexError::Mismatch(format!(
            "Milvus collection {:?} holds {}-dimensional vectors, the manifest says {dim}",
            p.collection, found.dim
        )));
    }
    if let (Some(want), Some(have)) = (identity, &found.identity)
        && want != have
    {
        return Err(IndexError::Mismatch(format!(
            "Milvus collection {:?} holds vectors of corpus {} (embeddings {}), the manifest's are of corpus {} (embeddings {}): rebuild it, or point the manifest at the right collection",
            p.collection,
            short(&have.corpus_id),
            have.embeddings,
            short(&want.corpus_id),
            want.embeddings
        )));
    }
    Ok(())
}

impl MilvusIndex {
    /// Connects to `params.uri` and checks that the collection is there, holds `rows` vectors of
    /// `dim` dimensions made as `identity` says, and is loaded.
    ///
    /// Errors: [`IndexError::Unavailable`] when the server does not answer within
    /// `params.timeout_ms`; [`IndexError::Mismatch`] when the collection is missing or holds other
    /// vectors; [`IndexError::Backend`] for other refusals.
    pub fn open(params: MilvusParams, dim: usize, rows: u64, identity: Option<&Identity>) -> Result<MilvusIndex> {
        let bridge = Bridge::new()?;
        let p = &params;
        let client = bridge.run(async {
            let client = connect(p).await?;
            let exists = with_retries("has_collection", p, || client.has_collection(p.collection.clone())).await?;
            if !exists {
                return Err(IndexError::Mismatch(format!(
                    "Milvus at {} has no collection {:?}: build it with `r1s index build --kind milvus`",
                    p.uri, p.collection
                )));
            }
            check_vectors(&client, p, dim, identity).await?;
            // a collection released since the build (or after a cluster restart) is loaded again
            with_retries("load", p, || client.load_collection(p.collection.clone(), Some(LoadOptions::new()))).await?;
            Ok(client)
        })?;
        let identity = identity.cloned();
        Ok(MilvusIndex { bridge, client, params, dim, rows, identity, checked: Mutex::new(Instant::now()) })
    }

    /// Checks again, at most every [`RECHECK`], that the collection still holds the manifest's
    /// vectors: a collection rebuilt under a running server from other embeddings (`--replace`)
    /// must not go on answering with other passages' rows.
    async fn recheck(&self, force: bool) -> Result<()> {
        {
            let mut last = self.checked.lock().unwrap_or_else(|e| e.into_inner());
            if !force && last.elapsed() < RECHECK {
                return Ok(());
            }
            *last = Instant::now();
        }
        check_vectors(&self.client, &self.params, self.dim, self.identity.as_ref()).await
    }

    /// Sets the search-time `ef` (HNSW) or `nprobe` (IVF kinds).
    pub fn set_ef_search(&mut self, ef: usize) {
        match self.params.index_type {
            MilvusIndexType::Hnsw => self.params.ef_search = ef,
            MilvusIndexType::IvfFlat | MilvusIndexType::IvfSq8 => self.params.nprobe = ef,
            MilvusIndexType::Flat => {}
        }
    }

    /// Asks the server whether the collection is there and loaded, within `timeout`: `Ok` with
    /// the number of vectors Milvus counts, or why not.
    pub fn health(&self, timeout: Duration) -> Result<u64> {
        let p = MilvusParams { timeout_ms: timeout.as_millis().max(1) as u64, retries: 0, ..self.params.clone() };
        self.bridge.run(async {
            let state =
                with_retries("get_load_state", &p, || self.client.get_load_state(p.collection.clone(), None)).await?;
            self.recheck(true).await?;
            if state != milvus::proto::common::LoadState::Loaded {
                // (a restarted server does not always load it again by itself: ask, within the
                // deadline; the load goes on on the server after it)
                if state == milvus::proto::common::LoadState::NotLoad {
                    let _ = with_retries("load", &p, || {
                        self.client.load_collection(p.collection.clone(), Some(LoadOptions::new()))
                    })
                    .await;
                }
                return Err(IndexError::Unavailable(format!(
                    "Milvus collection {:?} is not loaded ({state:?})",
                    p.collection
                )));
            }
            Ok(self.rows)
        })
    }

    /// Loads the collection again; a failure is [`IndexError::Unavailable`] (the server is
    /// not ready to search it yet).
    async fn reload(&self) -> Result<()> {
        let p = &self.params;
        with_retries("load", p, || self.client.load_collection(p.collection.clone(), Some(LoadOptions::new())))
            .await
            .map_err(|e| match e {
                IndexError::Backend(m) => IndexError::Unavailable(m),
                e => e,
            })
    }

    fn search_params(&self, k: usize, ef: Option<usize>) -> SearchOptions {
        let o = SearchOptions::new().limit(k).anns_field(vec![VECTOR.into()]).add_param("metric_type", "IP");
        let p = &self.params;
        match p.index_type {
            MilvusIndexType::Hnsw => o.add_param("ef", ef.unwrap_or(p.ef_search).max(k).to_string()),
            MilvusIndexType::IvfFlat | MilvusIndexType::IvfSq8 => {
                o.add_param("nprobe", ef.unwrap_or(p.nprobe).clamp(1, p.nlist.max(1)).to_string())
            }
            MilvusIndexType::Flat => o,
        }
    }

    /// [`VectorIndex::search`] at `ef` (HNSW) or `nprobe` (IVF) instead of the index's default.
    pub fn search_ef(&self, queries: &[f32], k: usize, ef: usize) -> Result<Vec<Vec<Scored>>> {
        self.search_with(queries, k, Some(ef))
    }
}

impl VectorIndex for MilvusIndex {
    type Error = IndexError;
    fn dim(&self) -> usize {
        self.dim
    }
    fn len(&self) -> u64 {
        self.rows
    }
    /// One `Search` call per [`MAX_NQ`] queries; `k` is capped at the rows and at [`MAX_TOPK`].
    fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Scored>>> {
        self.search_with(queries, k, None)
    }
}

impl MilvusIndex {
    fn search_with(&self, queries: &[f32], k: usize, ef: Option<usize>) -> Result<Vec<Vec<Scored>>> {
        let n = query_rows(queries, self.dim)?;
        let k = k.min(MAX_TOPK).min(usize::try_from(self.rows).unwrap_or(usize::MAX));
        if n == 0 || k == 0 {
            return Ok(vec![Vec::new(); n]);
        }
        let p = &self.params;
        self.bridge.run(async {
            self.recheck(false).await?;
            let mut out = Vec::with_capacity(n);
            for chunk in queries.chunks(MAX_NQ * self.dim) {
                let search = || {
                    with_retries("search", p, || {
                        let data: Vec<Value<'_>> =
                            chunk.chunks_exact(self.dim).map(|q| Value::FloatArray(q.into())).collect();
                        self.client.search(p.collection.clone(), data, Some(self.search_params(k, ef)))
                    })
                };
                let results = match search().await {
                    // released, or not yet reloaded after a restart of the server: load it again
                    Err(IndexError::Backend(m)) if m.contains("not loaded") => {
                        log::warn!("{m}: loading the collection again");
                        self.reload().await?;
                        search().await?
                    }
                    r => r?,
                };
                if results.len() != chunk.len() / self.dim {
                    return Err(IndexError::Backend(format!(
                        "Milvus returned {} result lists for {} queries",
                        results.len(),
                        chunk.len() / self.dim
                    )));
                }
                for r in results {
                    let mut hits = Vec::with_capacity(r.id.len());
                    for (id, &score) in r.id.iter().zip(&r.score) {
                        let Value::Long(row) = id else {
                            return Err(IndexError::Backend(format!("Milvus returned a non-integer id {id:?}")));
                        };
                        let row = u64::try_from(*row).ok().filter(|&r| r < self.rows).ok_or_else(|| {
                            IndexError::Backend(format!("Milvus returned row {row}, outside 0..{}", self.rows))
                        })?;
                        hits.push((row, score));
                    }
                    // Milvus sorts by distance; ties come in any order: make it by score, then row
                    hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                    out.push(hits);
                }
            }
            Ok(out)
        })
    }
}

/// Drops `p.collection` from the server at `p.uri`: `Ok(false)` when there was none.
pub fn drop_collection(p: &MilvusParams) -> Result<bool> {
    Bridge::new()?.run(async {
        let client = connect(p).await?;
        if !with_retries("has_collection", p, || client.has_collection(p.collection.clone())).await? {
            return Ok(false);
        }
        with_retries("drop_collection", p, || client.drop_collection(p.collection.clone())).await?;
        Ok(true)
    })
}

struct Described {
    dim: usize,
    identity: Option<Identity>,
}

async fn describe(client: &Client, p: &MilvusParams) -> Result<Described> {
    let d = with_retries("describe_collection", p, || client.describe_collection(p.collection.clone())).await?;
    let field = d.schema.fields.iter().find(|f| f.name == VECTOR).ok_or_else(|| {
        IndexError::Mismatch(format!(
            "Milvus collection {:?} has no {VECTOR:?} field: it was not made by r1s (use another --collection, or --replace)",
            p.collection
        ))
    })?;
    let dim =
        field.type_params.iter().find(|kv| kv.key == "dim").and_then(|kv| kv.value.parse().ok()).ok_or_else(|| {
            IndexError::Backend(format!("Milvus collection {:?}: no dim on {VECTOR:?}", p.collection))
        })?;
    Ok(Described { dim, identity: serde_json::from_str(&d.schema.description).ok() })
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Builds (or resumes building) the collection `b.params.collection` from `matrix` and returns the
/// manifest's `params`.
///
/// Errors: [`IndexError::Mismatch`] when the collection holds other vectors and `b.replace` is
/// off; [`IndexError::Unavailable`] / [`IndexError::Backend`] from the server;
/// [`IndexError::Cancelled`] (the insert state is kept: rerun to resume).
pub fn build(
    dir: &Path,
    matrix: &Matrix,
    identity: Identity,
    b: &MilvusBuild,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<serde_json::Value> {
    let p = &b.params;
    p.validate()?;
    if p.collection.is_empty()
        || !p.collection.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || p.collection.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(IndexError::Options(format!(
            "Milvus collection name {:?}: letters, digits and _ only, not starting with a digit",
            p.collection
        )));
    }
    if matrix.rows() > i64::MAX as u64 {
        return Err(IndexError::Options("more rows than Milvus's Int64 primary key holds".into()));
    }
    let state_path = dir.join(STATE_FILE);
    let bridge = Bridge::new()?;
    bridge.run(async {
        let client = connect(p).await?;
        let mut start = Resume { next: 0, unrecorded: 0 };
        let exists = with_retries("has_collection", p, || client.has_collection(p.collection.clone())).await?;
        if exists {
            let found = describe(&client, p).await;
            let same = matches!(&found, Ok(d) if d.identity.as_ref() == Some(&identity) && d.dim == identity.dim);
            if !same && !b.replace {
                let what = match &found {
                    Ok(Described { identity: Some(have), dim }) => format!(
                        "{dim}-dimensional vectors of corpus {} (embeddings {}, {} rows)",
                        short(&have.corpus_id),
                        have.embeddings,
                        have.rows
                    ),
                    Ok(Described { identity: None, dim }) => format!("{dim}-dimensional vectors not made by r1s"),
                    Err(e) => e.to_string(),
                };
                return Err(IndexError::Mismatch(format!(
                    "Milvus collection {:?} at {} already holds {what}; these embeddings are {} x {} of corpus {}: pass --replace to drop it, or choose another --collection",
                    p.collection,
                    p.uri,
                    identity.rows,
                    identity.dim,
                    short(&identity.corpus_id)
                )));
            }
            if same && !b.fresh {
                start = resume_point(&client, p, &state_path, &identity).await?;
            } else {
                log::warn!("dropping Milvus collection {:?} ({})", p.collection, if same { "--no-resume" } else { "--replace" });
                with_retries("drop_collection", p, || client.drop_collection(p.collection.clone())).await?;
            }
        }
        if !with_retries("has_collection", p, || client.has_collection(p.collection.clone())).await? {
            create(&client, p, &identity).await?;
            write_state(&state_path, p, &identity, 0, 0)?;
        }
        insert_all(&client, p, matrix, &identity, &state_path, start, b.batch_rows, progress, cancel).await?;
        finish(&client, p, matrix.rows(), progress, cancel).await?;
        let _ = std::fs::remove_file(&state_path);
        let mut params = serde_json::to_value(p).unwrap_or_default();
        if let Some(obj) = params.as_object_mut() {
            obj.insert("identity".into(), serde_json::to_value(&identity).unwrap_or_default());
        }
        Ok(params)
    })
}

/// Where an insert starts.
#[derive(Debug, Clone, Copy)]
struct Resume {
    /// The first row to insert.
    next: u64,
    /// Rows from `next` on that may have reached the server unrecorded (the recording run's
    /// batch; 0 when starting afresh).
    unrecorded: u64,
}

/// Where to continue inserting into an existing collection with our identity.
async fn resume_point(client: &Client, p: &MilvusParams, state_path: &Path, identity: &Identity) -> Result<Resume> {
    match read_state(state_path) {
        Some(s) if s.identity == *identity && s.collection == p.collection && s.inserted <= identity.rows => {
            log::info!("resuming the insert into Milvus collection {:?} at row {}", p.collection, s.inserted);
            Ok(Resume { next: s.inserted, unrecorded: s.batch })
        }
        _ => {
            // no record of ours (built from another machine, or the record is gone): trust the
            // collection only when it holds every row exactly once, else insert it again
            // (counting needs a loaded collection: an interrupted build's is not)
            let count = count(client, p).await.unwrap_or(0);
            if count == identity.rows {
                log::info!("Milvus collection {:?} already holds all {count} rows", p.collection);
                Ok(Resume { next: identity.rows, unrecorded: 0 })
            } else {
                log::warn!(
                    "Milvus collection {:?} holds {count} of {} rows (or is not loaded) and no insert record is here: inserting again",
                    p.collection,
                    identity.rows
                );
                with_retries("drop_collection", p, || client.drop_collection(p.collection.clone())).await?;
                Ok(Resume { next: 0, unrecorded: 0 })
            }
        }
    }
}

async fn create(client: &Client, p: &MilvusParams, identity: &Identity) -> Result<()> {
    let description = serde_json::to_string(identity).unwrap_or_default();
    let schema = CollectionSchemaBuilder::new(&p.collection, &description)
        .add_field(FieldSchema::new_primary_int64(PK, "corpus row", false))
        .add_field(FieldSchema::new_float_vector(VECTOR, "passage embedding", identity.dim as i64))
        .build()
        .map_err(|e| milvus_err("schema", p, e))?;
    let options = CreateCollectionOptions::with_consistency_level(ConsistencyLevel::Bounded);
    with_retries("create_collection", p, || client.create_collection(schema.clone(), Some(options))).await
}

fn read_state(path: &Path) -> Option<InsertState> {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

fn write_state(path: &Path, p: &MilvusParams, identity: &Identity, inserted: u64, batch: u64) -> Result<()> {
    let s = InsertState {
        uri: p.uri.clone(),
        collection: p.collection.clone(),
        identity: identity.clone(),
        inserted,
        batch,
    };
    let json = serde_json::to_vec_pretty(&s).map_err(|e| IndexError::io(path, e.into()))?;
    r1s_core::fsutil::write_atomic(path, &json).map_err(|e| IndexError::io(path, e))
}

#[allow(clippy::too_many_arguments)]
async fn insert_all(
    client: &Client,
    p: &MilvusParams,
    matrix: &Matrix,
    identity: &Identity,
    state_path: &Path,
    start: Resume,
    batch_rows: usize,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<()> {
    let rows = matrix.rows();
    let dim = matrix.dim();
    let batch = if batch_rows > 0 { batch_rows } else { ((16usize << 20) / (dim.max(1) * 4)).max(1) } as u64;
    let file = File::open(matrix.path()).map_err(|e| IndexError::io(matrix.path(), e))?;
    let pk_field = FieldSchema::new_primary_int64(PK, "", false);
    let vec_field = FieldSchema::new_float_vector(VECTOR, "", dim as i64);
    let mut next = start.next;
    if next > 0 && next < rows {
        // a batch that reached the server after the last record: take it out before inserting
        // (by ids: Milvus 2.3 deletes by expression only in loaded collections)
        let span = start.unrecorded.max(batch);
        let ids: Vec<i64> = (next as i64..(next + span).min(rows) as i64).collect();
        let unrecorded = milvus::mutate::DeleteOptions::with_ids(ids.into());
        with_retries("delete", p, || client.delete(p.collection.clone(), &unrecorded)).await?;
    }
    progress.start("inserting into Milvus", Some(rows), Unit::Items);
    progress.advance(next);
    let (mut bytes, mut v) = (Vec::new(), Vec::new());
    while next < rows {
        if cancel.is_cancelled() {
            progress.finish("cancelled");
            return Err(IndexError::Cancelled);
        }
        let end = (next + batch).min(rows);
        crate::sq8::read_rows(matrix, &file, next, end, &mut bytes, &mut v)?;
        let ids: Vec<i64> = (next as i64..end as i64).collect();
        with_retries("insert", p, || {
            let columns = vec![FieldColumn::new(&pk_field, ids.clone()), FieldColumn::new(&vec_field, v.clone())];
            client.insert(p.collection.clone(), columns, None)
        })
        .await?;
        write_state(state_path, p, identity, end, batch)?;
        progress.advance(end - next);
        next = end;
    }
    progress.finish(&format!("{rows} vectors in Milvus collection {:?}", p.collection));
    Ok(())
}

async fn count(client: &Client, p: &MilvusParams) -> Result<u64> {
    let options = QueryOptions::new().consistency_level(ConsistencyLevel::Strong as i32);
    let n = with_retries("count", p, || client.count_with_expr(p.collection.clone(), "", &options)).await?;
    Ok(n.max(0) as u64)
}

/// `fut`, or [`IndexError::Cancelled`] as soon as `cancel` is set (checked every 100 ms; what the
/// server was asked to do goes on there).
async fn or_cancel<T>(cancel: &Cancel, fut: impl Future<Output = Result<T>>) -> Result<T> {
    let cancelled = async {
        while !cancel.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        r = fut => r,
        () = cancelled => Err(IndexError::Cancelled),
    }
}

/// Flush, (re)create the index, load, and check that every row is there once.
async fn finish(client: &Client, p: &MilvusParams, rows: u64, progress: &dyn Progress, cancel: &Cancel) -> Result<()> {
    let slow = MilvusParams { timeout_ms: p.timeout_ms.max(600_000), ..p.clone() };
    progress.start("Milvus: flush, build the index, load", None, Unit::Items);
    or_cancel(cancel, with_retries("flush", &slow, || client.flush(p.collection.clone()))).await?;
    let mut params = std::collections::HashMap::new();
    match p.index_type {
        MilvusIndexType::Hnsw => {
            params.insert("M".to_owned(), p.m.to_string());
            params.insert("efConstruction".to_owned(), p.ef_construction.to_string());
        }
        MilvusIndexType::IvfFlat | MilvusIndexType::IvfSq8 => {
            params.insert("nlist".to_owned(), p.nlist.to_string());
        }
        MilvusIndexType::Flat => {}
    }
    let want = IndexParams::new(VECTOR.into(), sdk_type(p.index_type), MetricType::IP, params);
    let have = with_retries("describe_index", p, || client.describe_index(p.collection.clone(), VECTOR.to_owned()))
        .await
        .unwrap_or_default();
    let same = have.iter().any(|i| {
        i.params().index_type().to_string() == want.index_type().to_string()
            && i.params().metric_type().to_string() == want.metric_type().to_string()
            && want.params().iter().all(|(k, v)| i.params().params().get(k) == Some(v))
    });
    if !same {
        if !have.is_empty() {
            with_retries("release", p, || client.release_collection(p.collection.clone())).await?;
            for i in &have {
                let name = i.params().name().clone();
                with_retries("drop_index", p, || client.drop_index(p.collection.clone(), name.clone())).await?;
            }
        }
        let create =
            with_retries("create_index", &slow, || client.create_index(p.collection.clone(), VECTOR, want.clone()));
        or_cancel(cancel, create).await?;
    }
    let load = with_retries("load", &slow, || client.load_collection(p.collection.clone(), Some(LoadOptions::new())));
    or_cancel(cancel, load).await?;
    // "loaded" comes while new rows are still served from growing segments, searched through
    // Milvus's temporary index (which ignores ef and nprobe: recall@10 0.92 instead of 0.99 on
    // MiniLM vectors): wait until sealed segments hold every row
    let deadline = Instant::now() + Duration::from_millis(slow.timeout_ms);
    loop {
        let segments =
            with_retries("list_loaded_segments", p, || client.list_loaded_segments(p.collection.clone())).await?;
        let sealed: i64 = segments
            .iter()
            .filter(|s| s.state != milvus::proto::common::SegmentState::Growing)
            .map(|s| s.num_rows)
            .sum();
        if sealed.max(0) as u64 >= rows {
            break;
        }
        if cancel.is_cancelled() {
            return Err(IndexError::Cancelled);
        }
        if Instant::now() >= deadline {
            return Err(IndexError::Backend(format!(
                "Milvus collection {:?}: {sealed} of {rows} rows in sealed segments after {} s",
                p.collection,
                slow.timeout_ms / 1000
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    progress.finish(&format!("{} index built and loaded", p.index_type.name()));
    let n = count(client, p).await?;
    if n != rows {
        return Err(IndexError::Backend(format!(
            "Milvus collection {:?} counts {n} rows after the insert, expected {rows} (another build inserting into it at the same time?): rerun with --no-resume to insert every row again",
            p.collection
        )));
    }
    Ok(())
}
