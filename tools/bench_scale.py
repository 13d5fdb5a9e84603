"""r1s hnsw (unquantised) / sq8 vs faiss-cpu and hnswlib at 100k-21M rows of *proxy* MiniLM vectors (see
tools/bench-scale)."""
import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

import numpy as np

M, K, FLOOR = 32, 10, 0.95  # HNSW M for all; recall@K; the recall@10 at which queries/s are compared
MEM_EF = 64  # the ef of the search run whose resident memory r1s reports (recall@10 >= 0.95 at 1M rows)
EXTERNAL = ("faiss IndexHNSWFlat", "faiss IndexHNSWSQ", "hnswlib")
R1S = ("r1s hnsw", "r1s hnsw sq8")  # the first searches the stored vectors (f32 or f16, --dtype)
R1S_FLAG = {"plain": R1S[0], "sq8": R1S[1]}
EXT_FLAG = {"faiss-flat": EXTERNAL[0], "faiss-sq8": EXTERNAL[1], "hnswlib": EXTERNAL[2]}
SLUG = {"r1s hnsw": "r1s-plain", "r1s hnsw sq8": "r1s-sq8", "faiss IndexHNSWFlat": "faiss-flat",
        "faiss IndexHNSWSQ": "faiss-sq8", "hnswlib": "hnswlib"}
BLOCK = 65536  # rows per block when writing proxies and scanning exactly
DROP = "os.posix_fadvise(POSIX_FADV_DONTNEED) on each index file after an fsync, just before the process opens it"


def mib(b):
    return b / 2**20


def vm(field, pid="self"):
    """VmHWM / VmRSS of a process in MiB, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field + ":"))


def drop_cache(paths):
    """Drops files from the page cache (fsync, then POSIX_FADV_DONTNEED); False where that is not possible."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def link(src, dst):
    """Hard-links src at dst (a symlink across file systems): one copy of the vectors for all variants."""
    if os.path.lexists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:
        os.symlink(os.path.abspath(src), dst)


def embeddings_json(n, d, corpus_id, dtype="f32"):
    return {"format": "r1s-embeddings", "format_version": 1, "r1s_version": "bench", "model": "proxy",
            "model_sha256": "", "preset": None, "max_len": 0, "dim": d, "dtype": dtype, "rows": n,
            "chunk_rows": 1024, "corpus": "", "corpus_id": corpus_id, "text": "", "device": "cpu", "seconds": 0}


def pct(v):
    return {p: float(np.percentile(v, int(p[1:]))) for p in ("p10", "p50", "p90")}


# ------------------------------------------------------------------------------------------------ data

def stand_ins(work, seed):
    """Synthetic clustered unit vectors in place of the real fixtures (code paths only, not MiniLM)."""
    rng = np.random.default_rng(seed + 1)
    d, centres = 384, rng.standard_normal((600, 384)).astype(np.float32)

    def draw(n):
        v = centres[rng.integers(0, len(centres), n)] + 1.2 * rng.standard_normal((n, d), dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)
    out = os.path.join(work, "stand-in")
    os.makedirs(out, exist_ok=True)
    paths = {}
    for name, n in (("r1", 14372), ("sample", 10033), ("queries", 1000)):
        paths[name] = os.path.join(out, name + ".npy")
        np.save(paths[name], draw(n))
    return paths


def write_proxy(pool, n, seed, p, path, dtype):
    """The first n proxy rows: normalise(w a + (1 - w) b + noise) for random pairs (a, b) of real rows,
    w ~ U[w_lo, w_hi], Gaussian noise of expected norm p['noise']. Drawn in whole blocks, so that the rows of a
    seed are one sequence and a smaller size is the first rows of a larger one. Stored as `dtype` (f32 or
f16: each row normalised in f32, then rounded)."""
    rng = np.random.default_rng(seed)
    d = pool.shape[1]
    tmp = path + ".part"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=NP[dtype], shape=(n, d))
    for s in range(0, n, BLOCK):
        a = rng.integers(0, len(pool), BLOCK)
        b = (a + rng.integers(1, len(pool), BLOCK)) % len(pool)  # b != a
        w = rng.uniform(p["w_lo"], p["w_hi"], (BLOCK, 1)).astype(np.float32)
        v = w * pool[a] + (1 - w) * pool[b]
        v += np.float32(p["noise"] / np.sqrt(d)) * rng.standard_normal((BLOCK, d), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out[s:min(n, s + BLOCK)] = v[:min(n, s + BLOCK) - s]
    out.flush()
    del out
    os.replace(tmp, path)


NP = {"f32": np.float32, "f16": np.float16}


def proxy_path(work, n, seed, dtype):
    return os.path.join(work, "proxy", f"proxy-{n}-seed{seed}-{dtype}.npy")


def proxy(pool, n, seed, p, work, sources, dtype):
    """The .npy of the proxy's first n rows, reusing a file made with the same parameters."""
    path = proxy_path(work, n, seed, dtype)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    stamp, spec = path[:-4] + ".json", dict(p, seed=seed, rows=n, pool_rows=len(pool), sources=sources, dtype=dtype)
    if not (os.path.exists(path) and os.path.exists(stamp) and json.load(open(stamp)) == spec):
        say(f"writing the {n:,}-row proxy ({dtype})")
        write_proxy(pool, n, seed, p, path, dtype)
        json.dump(spec, open(stamp, "w"))
    return path


def prefix(src, n, dst):
    """dst = the first n rows of the .npy src (the same rows write_proxy would draw, copied, not redrawn)."""
    x = np.load(src, mmap_mode="r")
    tmp = dst + ".part"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=x.dtype, shape=(n, x.shape[1]))
    for s in range(0, n, BLOCK * 4):
        out[s:min(n, s + BLOCK * 4)] = x[s:min(n, s + BLOCK * 4)]
    out.flush()
    del out
    os.replace(tmp, dst)
    return dst


def remove(*paths):
    for p in paths:
        if os.path.isdir(p):
            shutil.rmtree(p, ignore_errors=True)
        elif os.path.lexists(p):
            os.remove(p)


def disk_needed(sizes, d, dtype, variants_at, keep=False):
    """Bytes the run needs at its peak: the largest proxy, plus at each size its copied prefix (below the
    largest) and the indexes built over it (graph ~ 2M links of 4 bytes, codes 1 byte per dimension, faiss /
    hnswlib their own copy of the vectors): each variant's index is removed once measured, so one at a time
    (all of them with --keep)."""
    big = max(sizes)
    peak = 0
    for n in sizes:
        each = []
        for v in variants_at(n):
            # r1s keeps its last checkpoint of the graph while writing the next one or the graph itself
            b = n * (2 * M * 4 + 16) * (2 if v.startswith("r1s") else 1)
            b += {"r1s hnsw sq8": n * d, "faiss IndexHNSWFlat": n * d * 4, "faiss IndexHNSWSQ": n * d,
                  "hnswlib": n * d * 4}.get(v, 0)
            each.append(b)
        indexes = (sum(each) if keep else max(each, default=0))
        peak = max(peak, (n * d * np.dtype(NP[dtype]).itemsize if n < big else 0) + indexes)
    return big * d * np.dtype(NP[dtype]).itemsize + peak


def exact_cached(path, q, sizes, k, threads):
    """exact() of a proxy, kept beside it (the pass over 21M rows takes about ten minutes): reused while
    the proxy, the queries, the sizes and k are the same, and removed with the proxy."""
    import hashlib
    key = hashlib.sha256(np.ascontiguousarray(q).tobytes() + json.dumps([sorted(sizes), k]).encode()).hexdigest()[:16]
    cache = path[:-4] + f".exact-{key}.npz"
    if os.path.exists(cache) and os.path.getmtime(cache) >= os.path.getmtime(path):
        z = np.load(cache)
        say(f"exact top-{k}: reusing {cache} (its scan ran at {float(z['qps']):.1f} queries/s)")
        return {int(n): (z[f"s{n}"], z[f"i{n}"]) for n in sizes}, float(z["qps"])
    both, qps = exact(path, q, sizes, k, threads)
    tmp = cache + ".part.npz"
    np.savez(tmp, qps=qps, **{f"s{n}": s_ for n, (s_, _) in both.items()}, **{f"i{n}": i_ for n, (_, i_) in both.items()})
    os.replace(tmp, cache)
    return both, qps


def exact(path, q, sizes, k, threads):
    """faiss IndexFlatIP top-k of q over the first n rows of a .npy for each n in sizes (one blockwise pass):
    ({n: (scores, ids)}, queries/s of the exact scan over all rows)."""
    import faiss
    faiss.omp_set_num_threads(threads)
    x = np.load(path, mmap_mode="r")
    cuts = sorted(set(range(0, max(sizes), BLOCK)) | set(sizes))
    D = np.full((len(q), k), -np.inf, np.float32)
    I = np.full((len(q), k), -1, np.int64)
    out, spent = {}, 0.0
    for s, e in zip(cuts, cuts[1:] + [None]):
        if e is None:
            break
        blk = np.ascontiguousarray(x[s:e], dtype=np.float32)
        t = time.perf_counter()
        flat = faiss.IndexFlatIP(x.shape[1])
        flat.add(blk)
        d2, i2 = flat.search(q, min(k, e - s))
        D2, I2 = np.hstack([D, d2]), np.hstack([I, i2 + s])
        top = np.argsort(-D2, axis=1, kind="stable")[:, :k]
        D, I = np.take_along_axis(D2, top, 1), np.take_along_axis(I2, top, 1)
        spent += time.perf_counter() - t
        if e in sizes:
            out[e] = (D.copy(), I.copy())
    return out, len(q) / spent


def nn_scores(x, probes, self_rows=None, threads=2):
    """Top-1 and top-10 (10th best) inner products of probes over x; with self_rows, a probe's own row is skipped."""
    scores, ids = exact_in_memory(x, probes, K + 1, threads)
    if self_rows is not None:
        keep = ids != self_rows[:, None]
        scores = np.stack([s[m][:K] for s, m in zip(scores, keep)])
    return scores[:, 0], scores[:, K - 1]


def exact_in_memory(x, q, k, threads):
    import faiss
    faiss.omp_set_num_threads(threads)
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(np.ascontiguousarray(x, dtype=np.float32))
    return flat.search(np.ascontiguousarray(q, dtype=np.float32), k)


def distributions(real_sets, proxy_path, q, seed, threads):
    """Neighbour-score percentiles of each real set and of an equal-size random subsample of the proxy."""
    rng = np.random.default_rng(seed + 2)
    big = np.load(proxy_path, mmap_mode="r")
    rows = []
    for name, x in real_sets:
        sub = np.asarray(big[np.sort(rng.choice(len(big), len(x), replace=False))])
        for label, data in ((name, x), (f"proxy subsample ({len(x):,} of {len(big):,} rows)", sub)):
            t1, t10 = nn_scores(data, q, threads=threads)
            probe = np.sort(rng.choice(len(data), min(1000, len(data)), replace=False))
            r1, _ = nn_scores(data, data[probe], self_rows=probe, threads=threads)
            rows.append({"set": label, "rows": len(data), "top1": pct(t1), "top10": pct(t10), "row_nn": pct(r1),
                         "near_copies": float(np.mean(r1 >= 0.95))})
    return rows


def row_probes(path, seed):
    """1,000 random rows of the proxy (sorted row ids and their vectors as f32) for the near-copy check."""
    x = np.load(path, mmap_mode="r")
    probe = np.sort(np.random.default_rng(seed + 3).choice(len(x), 1000, replace=False))
    return probe, np.ascontiguousarray(x[probe], dtype=np.float32)


def proxy_row_nn(n, probe, top):
    """Nearest other row of the probe rows over all n rows (from the exact pass's top-k of the probes,
    searched together with the queries: one read of the vectors): the near-copy check at full size."""
    s, i = top
    r1 = np.where(i[:, 0] == probe, s[:, 1], s[:, 0])
    return {"set": f"proxy, all {n:,} rows (1,000 probe rows)", "rows": n, "row_nn": pct(r1),
            "near_copies": float(np.mean(r1 >= 0.95))}


# ------------------------------------------------------------------------------------------------ children

def child(spec):
    """Runs in a fresh process: build (and save) or load-and-search one faiss / hnswlib index; prints JSON."""
    import faiss
    import hnswlib
    v, path, t = spec["variant"], spec["index"], spec["threads"]
    faiss.omp_set_num_threads(t)
    if spec["op"] == "build":
        x = np.load(spec["data"], mmap_mode="r")
        n, d = x.shape
        t0 = time.perf_counter()
        if v == "hnswlib":
            ix = hnswlib.Index(space="ip", dim=d)
            ix.init_index(max_elements=n, M=M, ef_construction=spec["efc"], random_seed=100)
            ix.set_num_threads(t)
            for s in range(0, n, 100000):
                ids = np.arange(s, min(n, s + 100000))
                ix.add_items(np.ascontiguousarray(x[s:s + 100000], np.float32), ids, num_threads=t)
        else:
            if v == "faiss IndexHNSWFlat":
                ix = faiss.IndexHNSWFlat(d, M, faiss.METRIC_INNER_PRODUCT)
            else:
                ix = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_8bit, M, faiss.METRIC_INNER_PRODUCT)
                ix.train(np.ascontiguousarray(x[:100000], np.float32))  # per-dimension min/max of the first 100k rows
            ix.hnsw.efConstruction = spec["efc"]
            for s in range(0, n, 100000):
                ix.add(np.ascontiguousarray(x[s:s + 100000], np.float32))
        build = time.perf_counter() - t0
        (ix.save_index if v == "hnswlib" else lambda p: faiss.write_index(ix, p))(path)
        return {"build_s": build, "peak_build_rss_mib": vm("VmHWM")}
    q = np.load(spec["queries"])
    truth = np.load(spec["truth"])
    d = q.shape[1]
    t0 = time.perf_counter()
    if v == "hnswlib":
        ix = hnswlib.Index(space="ip", dim=d)
        ix.load_index(path)
        ix.set_num_threads(t)
        def search(ef, qs):
            ix.set_ef(ef)
            return ix.knn_query(qs, k=K, num_threads=t)[0]
    else:
        ix = faiss.read_index(path)
        def search(ef, qs):
            ix.hnsw.efSearch = ef
            return ix.search(qs, K)[1]
    open_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter(); search(spec["efs"][0], q[:1]); first_ms = (time.perf_counter() - t0) * 1e3
    efs = {}
    for ef in spec["efs"]:
        t0 = time.perf_counter(); ids = search(ef, q); qps = len(q) / (time.perf_counter() - t0)
        efs[ef] = (float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, truth)])), qps)
    return {"open_ms": open_ms, "first_query_ms": first_ms, "search_rss_mib": vm("VmRSS"), "efs": efs}


def run_child(spec):
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"bench-scale: {spec['variant']} {spec['op']} failed:\n{p.stderr}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if "efs" in res:
        res["efs"] = {int(ef): tuple(v) for ef, v in res["efs"].items()}
    return res


def run(cmd, env):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"bench-scale: {' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout


def grab(pattern, text, what):
    m = re.search(pattern, text, re.M)
    if not m:
        sys.exit(f"bench-scale: no '{what}' line in r1s output:\n{text}")
    return float(m.group(1))


def say(msg):
    print(f"bench-scale: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ variants

def measure(variant, data, meta, rundir, a, qnpy, truth_npy):
    """Build, cold open, first query, ef sweep and memory of one variant over one .npy (recall against
    the exact top-k in truth_npy, which r1s reads as JSONL instead of scanning every row itself)."""
    n = np.load(data, mmap_mode="r").shape[0]
    truth_jsonl = truth_npy[:-4] + ".jsonl"
    if not os.path.exists(truth_jsonl):
        with open(truth_jsonl, "w") as f:
            f.writelines(json.dumps([int(i) for i in row]) + "\n" for row in np.load(truth_npy))
    if variant in R1S:
        idx = os.path.join(rundir, SLUG[variant])
        shutil.rmtree(idx, ignore_errors=True)
        os.makedirs(idx)
        link(data, os.path.join(idx, "embeddings.npy"))
        json.dump(meta, open(os.path.join(idx, "embeddings.json"), "w"))
        env = dict(os.environ, R1S_THREADS=str(a.threads))
        cmd = [a.r1s, "index", "build", "--out", idx, "--kind", "hnsw", "--m", str(M), "--ef-construction",
               str(a.efc), "--threads", str(a.threads)] + (["--quantize", "sq8"] if variant.endswith("sq8") else [])
        say(f"building {variant} on {n:,} rows")
        out = run(cmd, env)
        res = {"build_s": grab(r"built in ([0-9.]+) s", out, "built in"),
               "peak_build_rss_mib": grab(r"peak RSS ([0-9.]+) MiB", out, "peak RSS")}
        files = [f for f in ("hnsw.r1s", "codes.sq8") if os.path.exists(os.path.join(idx, f))]
        res["files"] = {f: os.path.getsize(os.path.join(idx, f)) for f in sorted(os.listdir(idx))
                        if os.path.isfile(os.path.join(idx, f))}
        res["index_bytes"] = sum(os.path.getsize(os.path.join(idx, f)) for f in files)
        res["vectors_bytes"] = os.path.getsize(data)
        res["cache_dropped"] = drop_cache([os.path.join(idx, f) for f in files + ["embeddings.npy"]])
        out = run([a.r1s, "index", "eval", "--index", idx, "--query-vectors", qnpy, "-k", str(K), "--truth", truth_jsonl,
                   "--ef", ",".join(map(str, a.efs))], env)
        res["efs"] = {int(m.group(2)): (float(m.group(3)), float(m.group(4)))
                      for m in re.finditer(r"^(hnsw(?:-sq8)? ef=(\d+))\s+([0-9.]+)\s+([0-9.]+)$", out, re.M)}
        if not res["efs"]:
            sys.exit(f"bench-scale: no 'hnsw ef=' rows in r1s index eval output:\n{out}")
        flat = re.search(r"^flat \(exact\)\s+([0-9.]+)\s+([0-9.]+)$", out, re.M)
        res["r1s_exact_qps"] = float(flat.group(2)) if flat else None
        res["open_ms"] = grab(r"open ([0-9.]+) ms", out, "open")
        res["first_query_ms"] = grab(r"first query ([0-9.]+) ms", out, "first query")
        # memory of one search run: a cold page cache, then the 1,000 queries at MEM_EF alone (the sweep
        # above touches more rows at every larger ef, and a warm page cache maps whole large folios)
        drop_cache([os.path.join(idx, f) for f in files + ["embeddings.npy"]])
        out = run([a.r1s, "index", "eval", "--index", idx, "--query-vectors", qnpy, "-k", str(K), "--truth", truth_jsonl,
                   "--ef", str(MEM_EF)], env)
        res["search_rss_mib"] = grab(r"resident after approximate searches ([0-9.]+) MiB", out, "resident")
        # the same run again on the page cache the first left warm (a server that has run a while)
        out = run([a.r1s, "index", "eval", "--index", idx, "--query-vectors", qnpy, "-k", str(K), "--truth", truth_jsonl,
                   "--ef", str(MEM_EF)], env)
        res["search_rss_warm_mib"] = grab(r"resident after approximate searches ([0-9.]+) MiB", out, "resident")
        if variant.endswith("sq8"):
            # fewer re-ranked rows, fewer pages of the vectors: recall@10, q/s and resident memory of
            # the search run at MEM_EF, each on a cold page cache
            res["rerank_top"] = {}
            for top in a.rerank_tops:
                drop_cache([os.path.join(idx, f) for f in files + ["embeddings.npy"]])
                out = run([a.r1s, "index", "eval", "--index", idx, "--query-vectors", qnpy, "-k", str(K), "--truth", truth_jsonl,
                           "--ef", str(MEM_EF), "--rerank-top", str(top)], env)
                row = re.search(rf"^hnsw-sq8 ef={MEM_EF}\s+([0-9.]+)\s+([0-9.]+)$", out, re.M)
                res["rerank_top"][top] = {
                    "recall": float(row.group(1)), "qps": float(row.group(2)),
                    "rss_mib": grab(r"resident after approximate searches ([0-9.]+) MiB", out, "resident")}
    else:
        idx = os.path.join(rundir, SLUG[variant] + ".index")
        spec = {"variant": variant, "index": idx, "threads": a.threads, "efc": a.efc}
        say(f"building {variant} on {n:,} rows")
        res = run_child(dict(spec, op="build", data=data))
        res["index_bytes"] = os.path.getsize(idx)
        res["files"] = {os.path.basename(idx): res["index_bytes"]}
        res["vectors_bytes"] = 0  # the vectors (f32 or 8-bit codes) are inside the index file
        res["cache_dropped"] = drop_cache([idx])
        res.update(run_child(dict(spec, op="search", queries=qnpy, truth=truth_npy, efs=a.efs)))
    ok = [(qps, ef, r) for ef, (r, qps) in res["efs"].items() if r >= FLOOR]
    best = max(ok, default=(float("nan"), None, float("nan")))
    res["at_floor"] = {"qps": best[0], "ef": best[1], "recall": best[2]}
    say(f"{variant} on {n:,} rows: built in {res['build_s']:.1f} s, {res['at_floor']['qps']:.0f} q/s at "
        f"recall@10 >= {FLOOR} (ef {best[1]})")
    if not a.keep:  # the next variant / size needs the disk
        remove(idx)
    return res


def bench_set(label, data, meta, variants, a, q, truth_ids, exact_qps):
    rundir = os.path.join(a.work, label)
    shutil.rmtree(rundir, ignore_errors=True)
    os.makedirs(rundir)
    truth_npy = os.path.join(rundir, "truth.npy")
    np.save(truth_npy, truth_ids)
    res = {}
    for v in variants:  # each variant's figures as soon as measured: a later variant may fail (out of memory)
        res[v] = measure(v, data, meta, rundir, a, a.query_vectors, truth_npy)
        print(f"bench-scale: {label} {v}: {json.dumps(clean(res[v]))}", flush=True)
    print(f"\n### {label}: measured\n\n{side_table({'variants': res})}\n", flush=True)
    return {"label": label, "rows": np.load(data, mmap_mode="r").shape[0], "faiss_exact_qps": exact_qps,
            "variants": res}


# ------------------------------------------------------------------------------------------------ report

def f(x, spec=".0f"):
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def ratio(a_, b_):
    return float("nan") if a_ is None or b_ is None or not b_ or np.isnan(a_) or np.isnan(b_) else a_ / b_


def clean(o):
    """JSON-safe: NaN -> null, tuples -> lists, keys -> strings."""
    if isinstance(o, dict):
        return {str(k): clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [clean(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return None if np.isnan(o) else float(o)
    return o


def md(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def dist_table(rows):
    h = ["vectors", "rows", "query top-1 p10/p50/p90", "query 10th p10/p50/p90", "row→row top-1 p10/p50/p90",
         "rows with a ≥0.95 neighbour"]
    def three(d):
        return "—" if d is None else "/".join(f"{d[p]:.3f}" for p in ("p10", "p50", "p90"))
    return md(h, [[r["set"], f"{r['rows']:,}", three(r.get("top1")), three(r.get("top10")), three(r["row_nn"]),
                   f"{100 * r['near_copies']:.1f}%"] for r in rows])


def side_table(run_):
    h = ["variant", "build s", "peak build RSS MiB", "index MiB", "+ vectors MiB", "start-up ms (cold)",
         "first query ms", "search RSS MiB cold / warm", f"q/s at recall@10 ≥ {FLOOR} (ef)"]
    rows = []
    for v, r in run_["variants"].items():
        af = r["at_floor"]
        rows.append([v, f(r["build_s"], ".1f"), f(r["peak_build_rss_mib"]), f(mib(r["index_bytes"]), ".1f"),
                     f(mib(r["vectors_bytes"])) if r["vectors_bytes"] else "in index", f(r["open_ms"], ".1f"),
                     f(r["first_query_ms"], ".2f"),
                     f(r["search_rss_mib"]) + (f" / {f(r['search_rss_warm_mib'])}" if "search_rss_warm_mib" in r else ""), f"{f(af['qps'])} ({f(af['ef'], '')})"])
    return md(h, rows)


def sweep_table(run_, efs):
    vs = list(run_["variants"])
    rows = [[ef] + [("{:.4f} / {:.0f}".format(*run_["variants"][v]["efs"][ef]) if ef in run_["variants"][v]["efs"]
                     else "n/a") for v in vs] for ef in efs]
    return md(["ef"] + [f"{v} recall@10 / q/s" for v in vs], rows)


def rerank_table(runs):
    """sq8 at MEM_EF: every ef candidate re-ranked (the cold search run) vs only the best N."""
    rows = []
    for r in runs:
        x = r["variants"].get(R1S[1])
        if not x or not x.get("rerank_top"):
            continue
        full = x["efs"].get(MEM_EF, (float("nan"), float("nan")))
        rows.append([f"{r['rows']:,}", f"all {MEM_EF}", f"{full[0]:.4f}", f(full[1]), f(x["search_rss_mib"])])
        for top, v in sorted(x["rerank_top"].items()):
            rows.append([f"{r['rows']:,}", top, f"{v['recall']:.4f}", f(v["qps"]), f(v["rss_mib"])])
    return md(["rows", f"re-ranked of ef {MEM_EF}", "recall@10", "q/s", "search RSS MiB (cold)"], rows) if rows else ""


def scale_table(runs):
    rows = []
    for r in runs:
        for v, x in r["variants"].items():
            af = x["at_floor"]
            rows.append([f"{r['rows']:,} (proxy)", v, f(x["build_s"], ".1f"), f(x["peak_build_rss_mib"]),
                         f(af["qps"]), f(af["ef"], ""), f(af["recall"], ".4f")])
    return md(["rows", "variant", "build s", "peak build RSS MiB", f"q/s at recall@10 ≥ {FLOOR}", "ef", "recall@10"],
              rows)


def ratios(run_):
    v = run_["variants"]
    def at(name):
        return v[name]["at_floor"]["qps"] if name in v else None
    def get(name, key):
        return v[name][key] if name in v else None
    out = {
        "r1s hnsw / faiss IndexHNSWFlat q/s at recall>=0.95 (target >= 1.2)": ratio(at(R1S[0]), at(EXTERNAL[0])),
        "r1s hnsw / hnswlib q/s at recall>=0.95 (target >= 1.0)": ratio(at(R1S[0]), at(EXTERNAL[2])),
        "r1s hnsw build / faiss IndexHNSWFlat build (target <= 0.8)": ratio(get(R1S[0], "build_s"),
                                                                            get(EXTERNAL[0], "build_s")),
        "r1s sq8 / unquantised search-run resident (target <= 0.35)": ratio(get(R1S[1], "search_rss_mib"),
                                                                     get(R1S[0], "search_rss_mib")),
        "r1s sq8 / faiss IndexHNSWSQ q/s at recall>=0.95 (target >= 1.0)": ratio(at(R1S[1]), at(EXTERNAL[1])),
        "r1s sq8 / hnswlib q/s at recall>=0.95": ratio(at(R1S[1]), at(EXTERNAL[2])),
        "r1s sq8 / faiss IndexHNSWSQ build": ratio(get(R1S[1], "build_s"), get(EXTERNAL[1], "build_s")),
        "r1s sq8 / hnswlib build": ratio(get(R1S[1], "build_s"), get(EXTERNAL[2], "build_s")),
        "r1s sq8 / faiss IndexHNSWSQ peak build RSS": ratio(get(R1S[1], "peak_build_rss_mib"),
                                                            get(EXTERNAL[1], "peak_build_rss_mib")),
        "r1s sq8 / hnswlib peak build RSS": ratio(get(R1S[1], "peak_build_rss_mib"),
                                                  get(EXTERNAL[2], "peak_build_rss_mib")),
        "r1s hnsw start-up ms, cold (target < 1000)": get(R1S[0], "open_ms"),
        "r1s sq8 start-up ms, cold (target < 1000)": get(R1S[1], "open_ms"),
    }
    deltas = {}
    if all(x in v for x in R1S):
        for ef, (r, _) in v[R1S[1]]["efs"].items():
            if ef in v[R1S[0]]["efs"]:
                deltas[ef] = r - v[R1S[0]]["efs"][ef][0]
    return out, deltas


# ------------------------------------------------------------------------------------------------ main

def main():
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(child(json.loads(sys.argv[2]))))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--r1s", help="the r1s binary (not needed with --skip-r1s)")
    ap.add_argument("--skip-r1s", action="store_true", help="faiss / hnswlib only (r1s rows: n/a)")
    ap.add_argument("--stand-in", action="store_true",
                    help="synthetic vectors where the real ones are missing (tests the code paths only)")
    ap.add_argument("--r1-vectors", help="real MiniLM vectors of the 14,372 R1-Searcher passages (.npy)")
    ap.add_argument("--sample-vectors", help="real MiniLM vectors of the sample corpus (.npy)")
    ap.add_argument("--query-vectors", help="the 1,000 real question vectors (.npy)")
    ap.add_argument("--work", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--efc", type=int, default=100)
    ap.add_argument("--sizes", default="100000,300000,1000000")
    ap.add_argument("--efs", default="16,24,32,48,64,96,128,192,256")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scale-all", action="store_true", help="all five variants at every size, not only the largest")
    ap.add_argument("--no-real", action="store_true", help="skip the variants on the real 14k set")
    ap.add_argument("--w-lo", type=float, default=0.55, help="proxy: least weight of a pair's first vector")
    ap.add_argument("--w-hi", type=float, default=0.85, help="proxy: greatest weight of a pair's first vector")
    ap.add_argument("--noise", type=float, default=0.35, help="proxy: expected norm of the added Gaussian noise")
    ap.add_argument("--dtype", choices=list(NP), default="f16",
                    help="how the proxy vectors are stored (f16: what wiki-18 with `r1s embed --dtype f16` holds)")
    ap.add_argument("--r1s-variants", default="plain,sq8",
                    help="r1s variants at every size: plain (the stored vectors), sq8 (codes + exact re-rank)")
    ap.add_argument("--external", default="faiss-flat,faiss-sq8,hnswlib",
                    help="faiss / hnswlib variants (faiss-flat, faiss-sq8, hnswlib; '' for none)")
    ap.add_argument("--external-at", type=int, default=0,
                    help="the size at which --external run (default: the largest; they hold the whole index in RAM)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the proxies and the indexes (default: each size's are removed once it is measured, the "
                         "largest proxy at the end)")
    ap.add_argument("--no-distributions", action="store_true", help="skip the proxy-vs-real neighbour-score tables")
    ap.add_argument("--rerank-tops", default="10,16,24,32",
                    help=f"sq8: also measure `--rerank-top N` at ef {MEM_EF} for these N (cold cache each; '' for none)")
    a = ap.parse_args()
    if not a.skip_r1s and not a.r1s:
        ap.error("--r1s is required unless --skip-r1s")
    a.sizes = sorted(int(s) for s in a.sizes.split(","))
    a.efs = [int(e) for e in a.efs.split(",")]
    a.rerank_tops = [int(t) for t in a.rerank_tops.split(",") if t]
    try:
        mine = [] if a.skip_r1s else [R1S_FLAG[v] for v in a.r1s_variants.split(",") if v]
        ext = [EXT_FLAG[v] for v in a.external.split(",") if v]
    except KeyError as e:
        ap.error(f"unknown variant {e}")
    ext_at = a.external_at or max(a.sizes)
    os.makedirs(a.work, exist_ok=True)
    import faiss
    import hnswlib  # noqa: F401 (fail early)
    from importlib.metadata import version
    t_all = time.perf_counter()

    kind = "real MiniLM"
    paths = {"r1": a.r1_vectors, "sample": a.sample_vectors, "queries": a.query_vectors}
    missing = [k for k, p in paths.items() if not p or not os.path.exists(p)]
    if missing:
        if not a.stand_in:
            sys.exit(f"bench-scale: missing real vectors ({', '.join(missing)}); pass --stand-in to test with "
                     "synthetic ones")
        say(f"real vectors missing ({', '.join(missing)}): SYNTHETIC STAND-INS, figures are not MiniLM's")
        paths, kind = stand_ins(a.work, a.seed), "SYNTHETIC STAND-IN"
    a.query_vectors = paths["queries"]
    r1 = np.load(paths["r1"]).astype(np.float32)
    sample = np.load(paths["sample"]).astype(np.float32)
    q = np.ascontiguousarray(np.load(paths["queries"]), dtype=np.float32)
    pool = np.vstack([r1, sample])
    d = pool.shape[1]
    pp = {"w_lo": a.w_lo, "w_hi": a.w_hi, "noise": a.noise}
    sources = {k: [os.path.abspath(p), os.path.getsize(p), os.stat(p).st_mtime_ns] for k, p in paths.items()}
    big = max(a.sizes)

    def variants_at(n):
        return mine + (ext if n == ext_at or a.scale_all else [])
    need = disk_needed(a.sizes, d, a.dtype, variants_at, a.keep)
    have = shutil.disk_usage(a.work).free
    say(f"disk: about {need / 1e9:.1f} GB needed at the peak, {have / 1e9:.1f} GB free in {a.work}")
    if need > have and not os.path.exists(proxy_path(a.work, big, a.seed, a.dtype)):
        sys.exit(f"bench-scale: about {need / 1e9:.1f} GB of disk needed, {have / 1e9:.1f} GB free in {a.work}")
    bigfile = proxy(pool, big, a.seed, pp, a.work, sources, a.dtype)

    versions = {"python": platform.python_version(), "numpy": np.__version__, "faiss-cpu": faiss.__version__,
                "hnswlib": version("hnswlib")}
    if not a.skip_r1s:
        versions["r1s"] = run([a.r1s, "--version"], os.environ).strip()

    dist = []
    if not a.no_distributions:
        say("neighbour-score distributions (proxy vs real at equal size)")
        dpath = bigfile if big >= len(pool) else proxy(pool, len(pool), a.seed, pp, a.work, sources, a.dtype)
        dist = distributions([(f"{kind} R1-Searcher passages + sample corpus", pool),
                              (f"{kind} R1-Searcher passages", r1)], dpath, q, a.seed, a.threads)

    say("exact top-10 (faiss IndexFlatIP) of the proxy sizes and the real set, one blockwise pass")
    probe, probe_vecs = row_probes(bigfile, a.seed) if not a.no_distributions else (None, q[:0])
    both, exact_qps = exact_cached(bigfile, np.vstack([q, probe_vecs]), a.sizes, K, a.threads)
    truth = {n: (s_[:len(q)], i_[:len(q)]) for n, (s_, i_) in both.items()}
    if probe is not None:
        s_, i_ = both[big]
        dist.append(proxy_row_nn(big, probe, (s_[len(q):], i_[len(q):])))
    r1_path = paths["r1"]
    rtruth, rexact_qps = exact(r1_path, q, [len(r1)], K, a.threads)

    runs = []
    for n in a.sizes:
        variants = variants_at(n)
        if not variants:
            continue
        meta = embeddings_json(n, d, f"proxy-{n}-seed{a.seed}", a.dtype)
        data = bigfile if n == big else prefix(bigfile, n, proxy_path(a.work, n, a.seed, a.dtype))
        runs.append(bench_set(f"proxy-{n}", data, meta, variants, a, q, truth[n][1],
                              exact_qps if n == big else None))
        if n != big and not a.keep:
            remove(data)
    real = None
    if not a.no_real:
        rmeta_path = os.path.join(os.path.dirname(r1_path), "embeddings.json")
        rmeta = json.load(open(rmeta_path)) if kind == "real MiniLM" and os.path.exists(rmeta_path) \
            else embeddings_json(len(r1), d, "stand-in-r1")
        real = bench_set(f"real-{len(r1)}", r1_path, rmeta, mine + ext, a, q, rtruth[len(r1)][1], rexact_qps)
    if not a.keep:
        import glob
        remove(bigfile, bigfile[:-4] + ".json", *glob.glob(bigfile[:-4] + ".exact-*.npz"))
        if big < len(pool):
            dpath = proxy_path(a.work, len(pool), a.seed, a.dtype)
            remove(dpath, dpath[:-4] + ".json")
    top = next((r for r in runs if r["rows"] == ext_at and len(r["variants"]) > len(mine)), None)
    rat, deltas = ratios(top) if top else ({}, {})

    # -------------------------------------------------------------------- print
    print(f"\nbench-scale: PROXY vectors = normalise(w a + (1 - w) b + noise), (a, b) random pairs of the "
          f"{len(pool):,} {kind} vectors ({len(r1):,} R1-Searcher passages + {len(sample):,} sample corpus), "
          f"w ~ U[{a.w_lo}, {a.w_hi}], noise norm {a.noise}, seed {a.seed}; "
          f"size n = the first n rows of the {big:,}-row proxy; stored as {a.dtype}.")
    print(f"queries: {len(q):,} {kind} question vectors; k={K}; {a.threads} threads; HNSW M={M} efConstruction={a.efc} "
          f"for all (hnswlib's M too: 2M links at layer 0, as in faiss and r1s); recall@10 against faiss "
          f"IndexFlatIP; q/s over one batch of {len(q):,} queries.")
    print(f"cold start-up: page cache dropped with {DROP}; faiss/hnswlib start-up = read_index/load_index of the whole "
          "file, r1s = its 'open' line (memory-mapped). First query: one query, faiss/hnswlib at "
          f"ef={a.efs[0]}. Peak build RSS: r1s's own line; faiss/hnswlib: VmHWM of a fresh Python process that "
          "maps the .npy and adds 100k-row batches (VmHWM counts the mapped pages it touched). Search RSS: r1s's "
          f"'resident' line of a separate run on a cold page cache, 1,000 queries at ef={MEM_EF}; faiss/hnswlib: "
          "VmRSS of a fresh process after load + sweep (the whole index is in its memory either way; both "
          "include the interpreter / binary).")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print("\nNeighbour scores, proxy vs real at equal size (query top-1 / 10th-best inner product over the "
          "1,000 queries; row→row: nearest other row of 1,000 random rows):\n")
    print(dist_table(dist) if dist else "(skipped: --no-distributions)")
    for r in runs + ([real] if real else []):
        what = f"PROXY {r['rows']:,} x {d}" if r["label"].startswith("proxy") \
            else f"{kind} R1-Searcher {r['rows']:,} x {d}"
        print(f"\n### {what}: build, memory, start-up" + (f" (faiss IndexFlatIP exact: {r['faiss_exact_qps']:.0f} q/s)"
                                                        if r["faiss_exact_qps"] else "") + "\n")
        print(side_table(r))
        print(f"\n{what}: recall@10 / queries/s over ef\n")
        print(sweep_table(r, a.efs))
    print(f"\n### Scaling (PROXY vectors)\n")
    print(scale_table(runs))
    rt = rerank_table(runs + ([real] if real else []))
    if rt:
        print(f"\n### sq8: re-ranking fewer rows (--rerank-top), ef {MEM_EF}, cold page cache\n")
        print(rt)
    if top:
        print(f"\nratios at {ext_at:,} PROXY rows (measured in this run):")
        for k_, x in rat.items():
            print(f"  {k_}: {f(x, '.2f')}")
        for ef, dr in deltas.items():
            print(f"  sq8+rerank recall@10 - unquantised recall@10 at ef={ef}: {dr:+.4f} (target >= -0.01)")
    results = {"kind": kind, "proxy": dict(pp, seed=a.seed, dtype=a.dtype, pool_rows=len(pool), r1_rows=len(r1),
                                          sample_rows=len(sample), sources=sources),
               "queries": len(q), "k": K, "m": M, "ef_construction": a.efc, "threads": a.threads, "efs": a.efs,
               "floor": FLOOR, "cache_drop": DROP, "versions": versions, "distributions": dist,
               "runs": runs, "real": real, "ratios": rat, "sq8_minus_f32_recall": deltas,
               "seconds": time.perf_counter() - t_all}
    out = os.path.join(a.work, f"results-{'-'.join(map(str, a.sizes))}-{a.dtype}.json")
    json.dump(clean(results), open(out, "w"), indent=1)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import plot_scale
    plot_scale.write(clean(results), out[:-5] + ".svg")  # recall@10 / q/s over ef, a panel per size
    print(f"\nwritten {out} and its sweeps as {out[:-5]}.svg; {results['seconds']:.0f} s in all")


if __name__ == "__main__":
    main()
