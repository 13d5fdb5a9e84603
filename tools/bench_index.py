"""r1s flat/HNSW vs faiss-cpu and hnswlib on the same vectors (see tools/bench-index). Every search is
timed --repeat times (median kept) and the whole comparison runs --runs times: the headline ratios are
printed per run and as the median with the spread, beside the CPU model and its vector extensions."""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import time

from bench_py import cpu_model

import numpy as np

M, EFC, EFS = 32, 200, (16, 24, 32, 48, 64)
FLOOR = 0.95  # the recall@10 at which queries/s are compared
K = 10


def fresh_index_dir(work, name, fixture):
    """A new index directory holding the fixture's embeddings."""
    path = os.path.join(work, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    for f in ("embeddings.npy", "embeddings.json"):
        shutil.copy(os.path.join(fixture, "index", f), path)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--r1s", required=True)
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3, help="whole comparisons (builds included)")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes of each search (median kept)")
    a = ap.parse_args()
    model, flags = cpu_model()
    print(f"CPU: {model} ({', '.join(flags)}), {a.threads} threads; {a.runs} runs, searches timed {a.repeat}x")
    heads = [one_run(a) for _ in range(a.runs)]
    print(f"\nover {a.runs} runs: median (min-max), CPU {model}")
    for key in heads[0]:
        vals = [h[key] for h in heads]
        print(f"  {key}: {statistics.median(vals):.2f} ({min(vals):.2f}-{max(vals):.2f})  runs: "
              + ", ".join(f"{v:.2f}" for v in vals))


def one_run(a):
    """One whole comparison: prints its tables and ratios, returns the headline ratios."""
    env = dict(os.environ, R1S_THREADS=str(a.threads))

    def r1s_eval(idx, pattern, save=None):
        """{name: (recall, median queries/s)} of --repeat `r1s index eval` runs of one index."""
        runs = []
        for i in range(a.repeat):
            cmd = [a.r1s, "index", "eval", "--index", idx, "--queries", os.path.join(a.work, "queries.jsonl"),
                   "--ef", ",".join(map(str, EFS))] + (["--save-queries", save] if save and i == 0 else [])
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            runs.append({m.group(1).strip(): (float(m.group(2)), float(m.group(3)))
                         for m in re.finditer(pattern, out, re.M)})
        return {k: (runs[0][k][0], statistics.median(r[k][1] for r in runs)) for k in runs[0]}
    def r1s_hnsw(kind):
        """Build seconds and {ef: (recall, queries/s)} of r1s --kind hnsw | hnsw-rs."""
        idx = fresh_index_dir(a.work, "r1s-" + kind, a.fixture)
        out = subprocess.run([a.r1s, "index", "build", os.path.join(a.fixture, "corpus"), "--out", idx, "--kind", kind,
                              "--m", str(M), "--ef-construction", str(EFC), "--threads", str(a.threads)],
                             env=env, check=True, capture_output=True, text=True).stdout
        build = float(re.search(r"built in ([0-9.]+) s", out).group(1))
        rows = r1s_eval(idx, r"^(flat \(exact\)|hnsw(?:-rs)? ef=\d+)\s+([0-9.]+)\s+([0-9.]+)$", qnpy)
        flat = rows.pop("flat (exact)")
        return build, {int(k.split("=")[1]): v for k, v in rows.items()}, flat

    qnpy = os.path.join(a.work, "queries.npy")
    r1s_build, r1s_rows, r1s_flat = r1s_hnsw("hnsw")
    rs_build, rs_rows, _ = r1s_hnsw("hnsw-rs")

    # r1s through FAISS (HNSW32, FAISS's default efConstruction 40: the C API does not expose it)
    fidx = fresh_index_dir(a.work, "r1s-faiss", a.fixture)
    out = subprocess.run([a.r1s, "index", "build", os.path.join(a.fixture, "corpus"), "--out", fidx, "--kind", "faiss",
                          "--factory", f"HNSW{M}", "--threads", str(a.threads)], env=env, check=True,
                         capture_output=True, text=True).stdout
    r1s_faiss_build = float(re.search(r"built in ([0-9.]+) s", out).group(1))
    r1s_faiss = {int(k): v for k, v in r1s_eval(fidx, r"^faiss HNSW\d+ ef=(\d+)\s+([0-9.]+)\s+([0-9.]+)$").items()}

    import faiss
    import hnswlib
    faiss.omp_set_num_threads(a.threads)
    x = np.load(os.path.join(a.fixture, "index", "embeddings.npy")).astype(np.float32)
    q = np.load(qnpy).astype(np.float32)
    n, d = x.shape
    flat = faiss.IndexFlatIP(d)
    flat.add(x)
    _, truth = flat.search(q, K)

    def timed(search):
        """(the search's result, median queries/s over --repeat passes)."""
        qps = []
        for _ in range(a.repeat):
            t = time.perf_counter(); out = search(); qps.append(len(q) / (time.perf_counter() - t))
        return out, statistics.median(qps)

    _, faiss_flat_qps = timed(lambda: flat.search(q, K))

    def recall(ids):
        return np.mean([len(set(a_) & set(b_)) / K for a_, b_ in zip(ids, truth)])

    def faiss_hnsw(ef_construction):
        """Build time and {ef: (recall, queries/s)} of faiss IndexHNSWFlat (None: FAISS's default efC)."""
        hn = faiss.IndexHNSWFlat(d, M, faiss.METRIC_INNER_PRODUCT)
        if ef_construction is not None:
            hn.hnsw.efConstruction = ef_construction
        t = time.perf_counter(); hn.add(x); build = time.perf_counter() - t
        rows = {}
        for ef in EFS:
            hn.hnsw.efSearch = ef
            (_, ids), qps = timed(lambda: hn.search(q, K))
            rows[ef] = (recall(ids), qps)
        return build, rows

    faiss_build, faiss_rows = faiss_hnsw(EFC)
    faiss40_build, faiss40 = faiss_hnsw(None)
    hl = hnswlib.Index(space="ip", dim=d)
    # hnswlib's M is r1s's and faiss's: links per node above level 0, 2M at level 0 (until 2026-12 this
    # bench gave hnswlib M // 2, half the others' links)
    hl.init_index(max_elements=n, M=M, ef_construction=EFC)
    hl.set_num_threads(a.threads)
    t = time.perf_counter(); hl.add_items(x, np.arange(n)); hl_build = time.perf_counter() - t
    hl_rows = {}
    for ef in EFS:
        hl.set_ef(ef)
        (ids, _), qps = timed(lambda: hl.knn_query(q, k=K))
        hl_rows[ef] = (recall(ids), qps)

    print(f"\n{n} x {d} MiniLM vectors, {len(q)} real questions, k={K}, {a.threads} threads; HNSW M={M} efC={EFC}")
    print(f"{'what':<34} {'build s':>8} {'recall@10':>10} {'queries/s':>10}")
    print(f"{'faiss IndexFlatIP':<34} {'0':>8} {1.0:>10.4f} {faiss_flat_qps:>10.0f}")
    print(f"{'r1s flat':<34} {'0':>8} {r1s_flat[0]:>10.4f} {r1s_flat[1]:>10.0f}")
    for ef in EFS:
        print(f"{'faiss IndexHNSWFlat ef=' + str(ef):<34} {faiss_build:>8.2f} {faiss_rows[ef][0]:>10.4f} {faiss_rows[ef][1]:>10.0f}")
        print(f"{'hnswlib (M=' + str(M) + ') ef=' + str(ef):<34} {hl_build:>8.2f} {hl_rows[ef][0]:>10.4f} {hl_rows[ef][1]:>10.0f}")
        rr = r1s_rows[ef]
        print(f"{'r1s hnsw ef=' + str(ef):<34} {r1s_build:>8.2f} {rr[0]:>10.4f} {rr[1]:>10.0f}")
        print(f"{'r1s hnsw-rs ef=' + str(ef):<34} {rs_build:>8.2f} {rs_rows[ef][0]:>10.4f} {rs_rows[ef][1]:>10.0f}")
        print(f"{'faiss HNSW efC=40 ef=' + str(ef):<34} {faiss40_build:>8.2f} {faiss40[ef][0]:>10.4f} {faiss40[ef][1]:>10.0f}")
        print(f"{'r1s faiss HNSW efC=40 ef=' + str(ef):<34} {r1s_faiss_build:>8.2f} {r1s_faiss[ef][0]:>10.4f} {r1s_faiss[ef][1]:>10.0f}")
    def at_floor(rows):
        """The best queries/s among the ef values whose recall@10 reaches FLOOR."""
        return max((qps for r, qps in rows.values() if r >= FLOOR), default=float("nan"))

    print("ratios (measured in this run):")
    print(f"  r1s flat / faiss IndexFlatIP queries/s: {r1s_flat[1] / faiss_flat_qps:.2f}x")
    for ef in EFS:
        print(f"  r1s hnsw / faiss HNSW queries/s at ef={ef}: {r1s_rows[ef][1] / faiss_rows[ef][1]:.2f}x")
    print(f"  at recall@10 >= {FLOOR}: r1s hnsw {at_floor(r1s_rows):.0f} q/s, faiss {at_floor(faiss_rows):.0f}, "
          f"hnswlib {at_floor(hl_rows):.0f}, hnsw-rs {at_floor(rs_rows):.0f}: r1s / faiss "
          f"{at_floor(r1s_rows) / at_floor(faiss_rows):.2f}x, r1s / hnswlib {at_floor(r1s_rows) / at_floor(hl_rows):.2f}x")
    print(f"  build time r1s hnsw / faiss HNSW: {r1s_build / faiss_build:.2f}x "
          f"(hnswlib {hl_build / faiss_build:.2f}x, hnsw-rs {rs_build / faiss_build:.2f}x)")
    for ef in EFS:
        print(f"  r1s --kind faiss / Python faiss (HNSW efC=40) queries/s at ef={ef}: {r1s_faiss[ef][1] / faiss40[ef][1]:.2f}x")
    print(f"  build time r1s --kind faiss / Python faiss (efC=40): {r1s_faiss_build / faiss40_build:.2f}x")
    return {
        "r1s hnsw / faiss IndexHNSWFlat queries/s at recall@10 >= 0.95": at_floor(r1s_rows) / at_floor(faiss_rows),
        "r1s hnsw / hnswlib queries/s at recall@10 >= 0.95": at_floor(r1s_rows) / at_floor(hl_rows),
        "r1s hnsw / faiss IndexHNSWFlat build time": r1s_build / faiss_build,
        "r1s flat / faiss IndexFlatIP queries/s": r1s_flat[1] / faiss_flat_qps,
    }


if __name__ == "__main__":
    main()
