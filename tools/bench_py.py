"""The r1s wheel beside r1s serve over HTTP, FlashRAG-style faiss / bm25s pipelines and verl's Search-R1
reward code, in one process, same threads (see tools/bench-py). Prints medians of --repeat runs with the
spread, ratios measured in this run, and agreement checks (an anchor that answers differently is named)."""
import argparse
import contextlib
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import time

K = 3  # Search-R1's topk
BATCH = 32


def cpu_model():
    flags, model = set(), "unknown CPU"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name") and model == "unknown CPU":
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"]
    return model, [f for f in wanted if f in flags]


class Timer:
    """Runs fn `repeat` times after one warm-up; keeps each run's work per second."""

    def __init__(self, repeat):
        self.repeat = repeat
        self.rows = {}

    def run(self, name, fn, work):
        fn()
        rates = []
        for _ in range(self.repeat):
            t = time.perf_counter()
            fn()
            rates.append(work / (time.perf_counter() - t))
        self.rows[name] = rates
        return statistics.median(rates)

    def median(self, name):
        return statistics.median(self.rows[name])

    def line(self, name, unit):
        r = self.rows[name]
        return f"  {name:<62} {statistics.median(r):>10,.1f} {unit}  (spread {min(r):,.1f}-{max(r):,.1f})"


def batches(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


class OnnxEncoder:
    """FlashRAG's encode step (tokenize, model, mean pooling, L2 norm) on onnxruntime with the int8 ONNX
    MiniLM r1s embeds with: the same model, the faster of Python's CPU paths (docs/benchmarks.md)."""

    def __init__(self, model_dir, threads):
        import onnxruntime as ort
        from tokenizers import Tokenizer
        self.tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.tok.enable_truncation(256)
        self.tok.enable_padding(pad_id=0, pad_token="[PAD]")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), so, providers=["CPUExecutionProvider"])

    def __call__(self, texts):
        import numpy as np
        enc = self.tok.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        h = self.sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask,
                                                  "token_type_ids": np.zeros_like(ids)})[0]
        m = mask[..., None].astype(np.float32)
        v = (h * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
        return np.ascontiguousarray(v / np.linalg.norm(v, axis=1, keepdims=True), dtype=np.float32)


class Server:
    """`r1s serve` on loopback for the HTTP rows, stopped by its PID whatever happens."""

    def __init__(self, r1s, index, port, threads, log):
        self.log = open(log, "w")
        self.proc = subprocess.Popen([r1s, "serve", "--index", index, "--port", str(port), "--threads", str(threads),
                                      "--log-every", "0"], stderr=self.log)
        self.url = f"http://127.0.0.1:{port}/retrieve"

    def __enter__(self):
        import requests
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"r1s serve exited: {open(self.log.name).read()}")
            try:
                requests.get(self.url.replace("/retrieve", "/health"), timeout=1)
                return self
            except requests.ConnectionError:
                time.sleep(0.1)
        sys.exit("r1s serve did not start in 60 s")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def http_search(session, url, queries):
    r = session.post(url, json={"queries": queries, "topk": K, "return_scores": True}, timeout=60)
    r.raise_for_status()
    return r.json()["result"]


def main():
    ap = argparse.ArgumentParser()
    for a in ("--r1s", "--work", "--fixture", "--model", "--shared"):
        ap.add_argument(a, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--port", type=int, default=18766)
    a = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    import faiss
    import numpy as np
    import requests
    import r1s

    faiss.omp_set_num_threads(a.threads)
    model, flags = cpu_model()
    questions = [json.loads(l)["question"] for l in open(os.path.join(a.work, "queries.jsonl"))]
    n = len(questions)
    corpus = r1s.Corpus(os.path.join(a.fixture, "corpus"))
    passages = [p.contents for p in corpus[0:len(corpus)]]  # the anchors' docstore: a Python list
    T = Timer(a.repeat)
    notes = []

    # ------------------------------------------------------------------ dense, text in
    flat = r1s.Retriever(os.path.join(a.work, "flat"), threads=a.threads)
    enc = OnnxEncoder(a.model, a.threads)
    emb = np.load(os.path.join(a.fixture, "index", "embeddings.npy")).astype(np.float32)
    fflat = faiss.IndexFlatIP(emb.shape[1])
    fflat.add(emb)

    def flashrag(qs):
        scores, rows = fflat.search(enc(qs), K)
        return [[(int(r), float(s), passages[r]) for r, s in zip(rr, ss)] for rr, ss in zip(rows, scores)]

    for label, size in (("1 query per call", 1), (f"batches of {BATCH}", BATCH)):
        chunks = batches(questions, size)
        T.run(f"dense {label}: r1s.Retriever.search", lambda: [flat.search(c, K) for c in chunks], n)
        with Server(a.r1s, os.path.join(a.work, "flat"), a.port, a.threads, os.path.join(a.work, "serve-flat.log")) as s, \
                requests.Session() as sess:
            T.run(f"dense {label}: r1s serve, HTTP (requests)", lambda: [http_search(sess, s.url, c) for c in chunks], n)
            if size == BATCH:
                via_http = [h for c in chunks for h in http_search(sess, s.url, c)]
        T.run(f"dense {label}: FlashRAG-style onnxruntime + faiss Flat", lambda: [flashrag(c) for c in chunks], n)
    ours = [h for c in batches(questions, BATCH) for h in flat.search(c, K)]
    theirs = [h for c in batches(questions, BATCH) for h in flashrag(c)]
    same_rows = sum([h.row for h in o] == [t[0] for t in f] for o, f in zip(ours, theirs)) / n
    same_http = sum([h.contents for h in o] == [d["document"]["contents"] for d in w] for o, w in zip(ours, via_http)) / n
    notes.append(f"dense top-{K}: r1s.Retriever = r1s serve (contents) on {same_http:.1%} of queries; "
                 f"same rows as onnxruntime + faiss on {same_rows:.1%} (the encoders' float rounding differs)")

    # ------------------------------------------------------------------ dense, vectors in
    qv = np.concatenate([enc(c) for c in batches(questions, BATCH)])
    hnsw = r1s.Retriever(os.path.join(a.work, "hnsw"), ef=64, threads=a.threads)
    fh = faiss.IndexHNSWFlat(emb.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    fh.hnsw.efConstruction = 200
    fh.add(emb)
    fh.hnsw.efSearch = 64
    for label, size in (("1 query per call", 1), (f"batches of {BATCH}", BATCH)):
        vb = [qv[i:i + size] for i in range(0, n, size)]
        T.run(f"vectors {label}: flat r1s.Retriever.search_vectors", lambda: [flat.search_vectors(v, K) for v in vb], n)
        T.run(f"vectors {label}: flat faiss IndexFlatIP.search", lambda: [fflat.search(v, K) for v in vb], n)
        T.run(f"vectors {label}: hnsw r1s.Retriever.search_vectors (ef 64)", lambda: [hnsw.search_vectors(v, K) for v in vb], n)
        T.run(f"vectors {label}: hnsw faiss IndexHNSWFlat.search (ef 64)", lambda: [fh.search(v, K) for v in vb], n)
    exact = fflat.search(qv, K)[1]
    rec_r1s = np.mean([len(set(h.row for h in hh) & set(e)) / K for hh, e in zip(hnsw.search_vectors(qv, K), exact)])
    rec_faiss = np.mean([len(set(f) & set(e)) / K for f, e in zip(fh.search(qv, K)[1], exact)])
    notes.append(f"hnsw recall@{K} against exact: r1s {rec_r1s:.3f}, faiss {rec_faiss:.3f} (M 32, efConstruction 200, ef 64)")

    # ------------------------------------------------------------------ bm25
    import bm25s
    import Stemmer
    bm = r1s.Retriever(os.path.join(a.work, "bm25"), threads=a.threads)
    stemmer = Stemmer.Stemmer("english")
    ret = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    ret.index(bm25s.tokenize(passages, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)

    def bm25s_search(qs, threads):
        return ret.retrieve(bm25s.tokenize(qs, stopwords="en", stemmer=stemmer, show_progress=False), k=K,
                            n_threads=threads, show_progress=False)

    for label, size in (("1 query per call", 1), (f"batches of {BATCH}", BATCH)):
        chunks = batches(questions, size)
        T.run(f"bm25 {label}: r1s.Retriever.search", lambda: [bm.search(c, K) for c in chunks], n)
        with Server(a.r1s, os.path.join(a.work, "bm25"), a.port, a.threads, os.path.join(a.work, "serve-bm25.log")) as s, \
                requests.Session() as sess:
            T.run(f"bm25 {label}: r1s serve, HTTP (requests)", lambda: [http_search(sess, s.url, c) for c in chunks], n)
        th = 1 if size == 1 else a.threads  # bm25s's threads are processes: one query gains nothing from them
        T.run(f"bm25 {label}: bm25s (tokenize + retrieve)", lambda: [bm25s_search(c, th) for c in chunks], n)
    ours = [set(h.row for h in hh) for hh in bm.search(questions, K)]
    theirs = [set(map(int, r)) for r in bm25s_search(questions, a.threads).documents]
    notes.append(f"bm25 top-{K} overlap r1s / bm25s: {np.mean([len(o & t) / K for o, t in zip(ours, theirs)]):.3f} "
                 "(different tokenisers: tantivy's vs bm25s's stop words + Snowball)")

    # ------------------------------------------------------------------ rewards
    # verl's package imports ray and torch: only its reward module is loaded, by path, as verl's
    # custom_reward_function loader does
    root = importlib.util.find_spec("verl").submodule_search_locations[0]
    path = os.path.join(root, "utils", "reward_score", "search_r1_like_qa_em.py")
    spec = importlib.util.spec_from_file_location("search_r1_like_qa_em", path)
    qa = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qa)
    cases = [json.loads(l) for l in open(os.path.join(a.shared, "searchr1", "reward_cases.jsonl"))]
    sols = [c["solution_str"] for c in cases]
    golds = [c["golden_answers"] for c in cases]
    reps = 25
    calls = reps * len(cases)
    random.seed(0)
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):  # verl prints 1 call in 64
        for kind, fn in (("em", qa.compute_score), ("subem", qa.compute_score_subem)):
            want = [fn(s, {"target": g}) for s, g in zip(sols, golds)]
            got = r1s.rewards(f"verl-searchr1-{kind}", sols, golds)
            bad = sum(abs(x - y) > 1e-9 for x, y in zip(want, got))
            notes.append(f"rewards verl-searchr1-{kind}: r1s = verl's search_r1_like_qa_em on {len(cases) - bad}/{len(cases)} cases")
            T.run(f"reward {kind}: verl search_r1_like_qa_em (Python), per call",
                  lambda: [fn(s, {"target": g}) for _ in range(reps) for s, g in zip(sols, golds)], calls)
            T.run(f"reward {kind}: r1s.reward, per call",
                  lambda: [r1s.reward(f"verl-searchr1-{kind}", s, g) for _ in range(reps) for s, g in zip(sols, golds)], calls)
            T.run(f"reward {kind}: r1s.rewards, one call per 400",
                  lambda: [r1s.rewards(f"verl-searchr1-{kind}", sols, golds) for _ in range(reps)], calls)
        from r1s import verl as hook
        T.run("reward em: r1s.verl.compute_score (the hook), per call",
              lambda: [hook.compute_score("searchR1_nq", s, {"target": g}) for _ in range(reps) for s, g in zip(sols, golds)], calls)

    # ------------------------------------------------------------------ report
    print(f"\n{model} ({', '.join(flags) or 'no AVX2'}), {a.threads} threads; {n} real questions, top-{K}, "
          f"{len(passages):,} passages; median of {a.repeat} runs (spread min-max)")
    section = None
    for name in T.rows:
        head = name.split(":")[0]
        if head != section:
            section = head
            print(f"\n{head}")
        unit = "calls/s" if name.startswith("reward") else "queries/s"
        print(T.line(name, unit))
    m = T.median
    print("\nratios (measured in this run):")
    for label in ("1 query per call", f"batches of {BATCH}"):
        d = f"dense {label}: "
        print(f"  dense {label:<17} r1s.Retriever / HTTP {m(d + 'r1s.Retriever.search') / m(d + 'r1s serve, HTTP (requests)'):5.2f}x"
              f"   / FlashRAG-style {m(d + 'r1s.Retriever.search') / m(d + 'FlashRAG-style onnxruntime + faiss Flat'):5.2f}x")
        v = f"vectors {label}: "
        print(f"  vectors {label:<15} flat r1s / faiss {m(v + 'flat r1s.Retriever.search_vectors') / m(v + 'flat faiss IndexFlatIP.search'):5.2f}x"
              f"   hnsw r1s / faiss {m(v + 'hnsw r1s.Retriever.search_vectors (ef 64)') / m(v + 'hnsw faiss IndexHNSWFlat.search (ef 64)'):5.2f}x")
        b = f"bm25 {label}: "
        print(f"  bm25 {label:<18} r1s.Retriever / HTTP {m(b + 'r1s.Retriever.search') / m(b + 'r1s serve, HTTP (requests)'):5.2f}x"
              f"   / bm25s {m(b + 'r1s.Retriever.search') / m(b + 'bm25s (tokenize + retrieve)'):5.2f}x")
    for kind in ("em", "subem"):
        r = f"reward {kind}: "
        base = m(r + "verl search_r1_like_qa_em (Python), per call")
        print(f"  reward {kind:<6} r1s.reward / verl {m(r + 'r1s.reward, per call') / base:5.2f}x"
              f"   r1s.rewards (batch) / verl {m(r + 'r1s.rewards, one call per 400') / base:5.2f}x")
    print(f"  reward em     the r1s.verl hook / verl {m('reward em: r1s.verl.compute_score (the hook), per call') / m('reward em: verl search_r1_like_qa_em (Python), per call'):5.2f}x")
    print("\nchecks:")
    for line in notes:
        print("  " + line)


if __name__ == "__main__":
    main()
