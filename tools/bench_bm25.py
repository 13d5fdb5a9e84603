"""r1s BM25 (tantivy postings, r1s scoring) vs bm25s (Lucene variant, PyStemmer) on the same passages.

See tools/bench-bm25. Both engines index each JSONL line's `contents` string; the row of line i is i.
bm25s is timed in this process (build = tokenize the corpus + index; queries/s = tokenize + retrieve),
r1s as subprocesses (build: wall time around `r1s index build`; queries/s: what `r1s index eval`
reports). `--only-bm25s` skips everything that needs the r1s binary.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

import bm25s
import numpy as np
import Stemmer

K = 10
BATCH = 32
EVAL_SETS = ("hotpotqa_500", "2wiki_500", "musique_500", "bamboogle")
TARGETS = {"qps": 2.0, "build": 1.0, "overlap": 0.8}  # r1s/bm25s q/s, bm25s/r1s build s, mean top-10 overlap


# ---------------------------------------------------------------- inputs

def read_passages(path):
    """The `contents` of every line, in line order (line i is corpus row i)."""
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)["contents"])
    return texts


def write_queries(eval_dir, out_path):
    """Collects the questions of the four eval sets into out_path; returns [(set, question)]."""
    queries = []
    with open(out_path, "w", encoding="utf-8") as out:
        for name in EVAL_SETS:
            with open(os.path.join(eval_dir, name + ".jsonl"), encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    rec = json.loads(line)
                    out.write(json.dumps({"question": rec["question"], "answer": rec.get("answer")},
                                         ensure_ascii=False) + "\n")
                    queries.append((name, rec["question"]))
    return queries


# ---------------------------------------------------------------- bm25s

def bm25s_tokens(texts, stemmer, as_ids=True):
    """bm25s's own tokenizer with its English stop words and the Snowball English stemmer."""
    return bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, return_ids=as_ids, show_progress=False)


def run_bm25s(passages, questions, k1, b, threads, repeat):
    """Build seconds, queries/s (single and batches), top-10 rows and scores, and token statistics."""
    build = float("inf")
    for _ in range(repeat):  # each pass is a cold build from the raw strings; the fastest counts
        t = time.perf_counter()
        stemmer = Stemmer.Stemmer("english")
        corpus_tokens = bm25s_tokens(passages, stemmer)
        retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
        retriever.index(corpus_tokens, show_progress=False)
        build = min(build, time.perf_counter() - t)

    doc_lens = np.array([len(ids) for ids in corpus_tokens.ids])
    # one warm-up call, so that first-call costs (imports, allocations) are not timed
    retriever.retrieve(bm25s_tokens(questions[:1], stemmer), k=K, n_threads=threads, show_progress=False)

    def single(n_threads):
        def run():
            for q in questions:
                retriever.retrieve(bm25s_tokens(q, stemmer), k=K, n_threads=n_threads, show_progress=False)
        return run

    rows, scores = [], []

    def batched():
        rows.clear(); scores.clear()
        for i in range(0, len(questions), BATCH):
            docs, sc = retriever.retrieve(bm25s_tokens(questions[i:i + BATCH], stemmer), k=K,
                                          n_threads=threads, show_progress=False)
            rows.extend(docs.tolist()); scores.extend(sc.tolist())

    def best_qps(fn):
        best = 0.0
        for _ in range(repeat):
            t = time.perf_counter(); fn(); best = max(best, len(questions) / (time.perf_counter() - t))
        return best

    qps_single = best_qps(single(threads))
    qps_batch = best_qps(batched)
    # n_threads > 0 starts a thread pool in every retrieve call, which costs more than it gains on one
    # query: the sequential path (n_threads=0) is measured too, and the ratios are also given against it
    qps_single_seq = best_qps(single(0)) if threads > 0 else qps_single
    # bm25s always returns k documents, also those scoring 0 (no query term in them); a lexical engine
    # that only returns matching documents would not, so the zero-score tail is dropped before comparing
    top = [[r for r, s in zip(rr, ss) if s > 0] for rr, ss in zip(rows, scores)]
    return {
        "build_s": build,
        "qps_single": qps_single,
        "qps_batch32": qps_batch,
        "qps_single_n_threads_0": qps_single_seq,
        "avg_doc_len": float(doc_lens.mean()),
        "empty_docs": int((doc_lens == 0).sum()),
        "vocab": sum(1 for t in corpus_tokens.vocab if t),  # bm25s adds "" to this dict at index time
        "top": top,
        "top_scores": [[s for s in ss if s > 0] for ss in scores],
    }


# ---------------------------------------------------------------- r1s

def run_r1s(a, questions, env):
    """Build seconds (cold), queries/s from `index eval` at batch 1 and 32, top-10 rows, manifest."""
    idx = os.path.join(a.work, "r1s-bm25")
    build = float("inf")
    for _ in range(a.repeat):  # the directory goes first, so that every build is a cold one
        shutil.rmtree(idx, ignore_errors=True)
        t = time.perf_counter()
        subprocess.run([a.r1s, "-q", "index", "build", os.path.join(a.fixture, "corpus"), "--kind", "bm25",
                        "--out", idx, "--k1", str(a.k1), "--b", str(a.b), "-j", str(a.threads)], env=env, check=True)
        build = min(build, time.perf_counter() - t)
    with open(os.path.join(idx, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)

    def eval_row(batch):
        """(recall@1,@3,@5,@10, queries/s) of the `bm25` row of `r1s index eval`, best of --repeat."""
        best = None
        for _ in range(a.repeat):
            p = subprocess.run([a.r1s, "index", "eval", "--index", idx, "--answers",
                                os.path.join(a.work, "queries.jsonl"), "--batch", str(batch), "-j", str(a.threads)],
                               env=env, check=True, capture_output=True, text=True)
            row = parse_eval(p.stdout) or parse_eval(p.stderr)
            if row is None:
                sys.exit(f"no `bm25` row with queries/s in the output of r1s index eval --batch {batch}:\n"
                         f"{p.stdout}\n{p.stderr}")
            if best is None or row[1] > best[1]:
                best = row
        return best

    recall1, qps_single = eval_row(1)
    recall32, qps_batch = eval_row(BATCH)

    # one query per line: a newline inside a question would split it in two
    stdin = "".join(" ".join(q.split()) + "\n" for q in questions)
    p = subprocess.run([a.r1s, "retrieve", "--index", idx, "--json", "-k", str(K), "-j", str(a.threads)],
                       input=stdin, env=env, check=True, capture_output=True, text=True)
    answers = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    if len(answers) != len(questions):
        sys.exit(f"r1s retrieve answered {len(answers)} lines for {len(questions)} queries")
    return {
        "build_s": build,
        "qps_single": qps_single,
        "qps_batch32": qps_batch,
        "answer_recall_batch1": recall1,
        "answer_recall_batch32": recall32,
        "avg_doc_len": manifest["tokens"] / max(manifest["rows"], 1),
        "vocab": manifest.get("terms"),
        "manifest_build_s": manifest.get("build_seconds"),
        "top": [[h["row"] for h in ans["hits"]] for ans in answers],
        "top_scores": [[h["score"] for h in ans["hits"]] for ans in answers],
    }


def parse_eval(text):
    """([recall@1, @3, @5, @10], queries/s) from the table of `r1s index eval`, or None."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "queries/s" in line), None)
    if start is None:
        return None
    for line in lines[start + 1:]:
        words = line.split()
        if words and words[0] == "bm25":
            nums = [float(w) for w in words[1:] if re.fullmatch(r"[0-9]+(\.[0-9]*)?(e[-+]?[0-9]+)?", w)]
            if nums:
                return nums[:-1], nums[-1]
    return None


# ---------------------------------------------------------------- comparison

def overlaps(top_a, top_b):
    """Per query |A ∩ B| / max(|A|, |B|) (None where both are empty), and identical top-1 count."""
    per, same_top1 = [], 0
    for x, y in zip(top_a, top_b):
        n = max(len(x), len(y))
        per.append(None if n == 0 else len(set(x[:K]) & set(y[:K])) / n)
        same_top1 += bool(x and y and x[0] == y[0])
    return per, same_top1


R1S_STOP = frozenset("a an and are as at be but by for if in into is it no not of on or such that the their "
                     "then there these they this to was will with".split())


def r1s_like_terms(text, stemmer):
    """A Python approximation of r1s's analyzer (crates/r1s-bm25/src/analyzer.rs): split on every
    non-alphanumeric char, drop a possessive `s`, drop tokens over 40 bytes, lower-case, Lucene's 33
    stop words, Snowball English. Only for the diagnosis: r1s itself is not asked."""
    out = []
    for m in re.finditer(r"[^\W_]+", text):
        w = m.group()
        if w in ("s", "S") and m.start() > 0 and text[m.start() - 1] in "'\u2019\uff07":
            continue
        if len(w.encode()) > 40:
            continue
        w = w.lower()
        if w not in R1S_STOP:
            out.append(w)
    return stemmer.stemWords(out)


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--r1s", help="the r1s binary (not needed with --only-bm25s)")
    ap.add_argument("--corpus-jsonl", required=True, help="Search-R1 passages JSONL ({id, contents})")
    ap.add_argument("--eval-dir", help="R1-Searcher eval sets (default: eval_set beside --corpus-jsonl)")
    ap.add_argument("--fixture", help="r1s fixture directory holding corpus/ (not needed with --only-bm25s)")
    ap.add_argument("--work", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k1", type=float, default=0.9)
    ap.add_argument("--b", type=float, default=0.4)
    ap.add_argument("--repeat", type=int, default=3, help="timed builds and query passes per setting; the fastest counts")
    ap.add_argument("--diagnose", type=int, default=5, help="lowest-overlap queries to show")
    ap.add_argument("--only-bm25s", action="store_true", help="skip r1s (no binary needed)")
    a = ap.parse_args()
    if not a.only_bm25s and not (a.r1s and a.fixture):
        ap.error("--r1s and --fixture are required unless --only-bm25s")
    a.repeat = max(a.repeat, 1)
    os.makedirs(a.work, exist_ok=True)
    eval_dir = a.eval_dir or os.path.join(os.path.dirname(os.path.abspath(a.corpus_jsonl)), "eval_set")

    passages = read_passages(a.corpus_jsonl)
    queries = write_queries(eval_dir, os.path.join(a.work, "queries.jsonl"))
    questions = [q for _, q in queries]
    print(f"{len(passages)} passages, {len(questions)} questions ({', '.join(EVAL_SETS)}), k={K}, "
          f"k1={a.k1} b={a.b}, {a.threads} threads, bm25s {bm25s.__version__} (lucene, stopwords=en, "
          f"PyStemmer english)", flush=True)

    bm = run_bm25s(passages, questions, a.k1, a.b, a.threads, a.repeat)
    r1 = None
    if not a.only_bm25s:
        env = dict(os.environ, R1S_THREADS=str(a.threads))
        r1 = run_r1s(a, questions, env)

    # ---- the table
    print(f"\n{'engine':<8} {'build s':>8} {'q/s single':>11} {'q/s batch32':>12} {'avg doc len':>12} {'vocab':>8}")
    for name, e in (("r1s", r1), ("bm25s", bm)):
        e = e or {}
        print(f"{name:<8} {fmt(e.get('build_s'), '.2f'):>8} {fmt(e.get('qps_single'), '.0f'):>11} "
              f"{fmt(e.get('qps_batch32'), '.0f'):>12} {fmt(e.get('avg_doc_len'), '.1f'):>12} "
              f"{fmt(e.get('vocab'), 'd'):>8}")
    print(f"(bm25s single queries with n_threads=0, no thread pool: {bm['qps_single_n_threads_0']:.0f} q/s)")

    summary = {
        "passages": len(passages), "queries": len(questions), "k": K, "k1": a.k1, "b": a.b,
        "threads": a.threads, "repeat": a.repeat, "bm25s_version": bm25s.__version__,
        "targets": {"qps_ratio_min": TARGETS["qps"], "build_ratio_min": TARGETS["build"],
                    "overlap_min": TARGETS["overlap"]},
        "bm25s": {k: v for k, v in bm.items() if k not in ("top", "top_scores")},
    }
    if r1 is not None:
        summary["r1s"] = {k: v for k, v in r1.items() if k not in ("top", "top_scores")}
        ratio = {
            "qps_single": r1["qps_single"] / bm["qps_single"],
            "qps_single_vs_n_threads_0": r1["qps_single"] / bm["qps_single_n_threads_0"],
            "qps_batch32": r1["qps_batch32"] / bm["qps_batch32"],
            "build": bm["build_s"] / r1["build_s"],
        }
        per, same_top1 = overlaps(r1["top"], bm["top"])
        scored = [o for o in per if o is not None]
        mean_overlap = sum(scored) / len(scored) if scored else float("nan")
        met = {
            "qps_single": ratio["qps_single"] >= TARGETS["qps"],
            "qps_batch32": ratio["qps_batch32"] >= TARGETS["qps"],
            "build": ratio["build"] >= TARGETS["build"],
            "overlap": mean_overlap >= TARGETS["overlap"],
            "qps_single_vs_n_threads_0": ratio["qps_single_vs_n_threads_0"] >= TARGETS["qps"],
        }
        mark = {True: "met", False: "MISSED"}
        print("\nratios (measured in this run)                      target")
        print(f"  queries/s single   r1s / bm25s  {ratio['qps_single']:>7.2f}x      >= {TARGETS['qps']:.0f}x   "
              f"{mark[met['qps_single']]}")
        print(f"    vs bm25s n_threads=0          {ratio['qps_single_vs_n_threads_0']:>7.2f}x      >= {TARGETS['qps']:.0f}x   "
              f"{mark[ratio['qps_single_vs_n_threads_0'] >= TARGETS['qps']]}")
        print(f"  queries/s batch32  r1s / bm25s  {ratio['qps_batch32']:>7.2f}x      >= {TARGETS['qps']:.0f}x   "
              f"{mark[met['qps_batch32']]}")
        print(f"  build time       bm25s / r1s    {ratio['build']:>7.2f}x      >= 1x   {mark[met['build']]} "
              f"(r1s no slower)")
        print(f"  mean top-10 overlap             {mean_overlap:>7.3f}       >= {TARGETS['overlap']}  "
              f"{mark[met['overlap']]} ({len(scored)} queries with hits on either side)")
        print(f"  identical top-1                 {same_top1:>7d} / {len(questions)}")
        both_empty = sum(o is None for o in per)
        r1_short = sum(len(x) < K for x in r1["top"])
        bm_short = sum(len(y) < K for y in bm["top"])
        print(f"  queries with < {K} hits: r1s {r1_short}, bm25s {bm_short} (zero-score hits dropped); "
              f"both empty {both_empty}")
        summary.update(ratios=ratio, targets_met=met, mean_overlap_at_10=mean_overlap,
                       identical_top1=same_top1, overlap_queries=len(scored), both_empty=both_empty,
                       r1s_answer_recall_note="@1,@3,@5,@10 as printed by r1s index eval")
        worst = sorted((o, i) for i, o in enumerate(per) if o is not None)[:a.diagnose]
    else:
        print("\n(--only-bm25s: no r1s numbers, ratios or overlap)")
        worst = []

    # ---- diagnosis: why the top-10s differ
    stemmer = Stemmer.Stemmer("english")
    r1_like = float(np.mean([len(r1s_like_terms(t, stemmer)) for t in passages]))
    print("\ndiagnosis")
    print(f"  average passage length in index terms: bm25s {bm['avg_doc_len']:.1f}"
          + (f", r1s {r1['avg_doc_len']:.1f} (manifest tokens / rows)" if r1 else "")
          + f", Python approximation of r1s's analyzer {r1_like:.1f}")
    print("  bm25s: lower-case, regex (?u)\\b\\w\\w+\\b (2+ word chars; `_` joins, 1-char tokens vanish), "
          "33 stop words, Snowball English")
    print("  r1s:   split on non-alphanumerics (1-char tokens kept, `_` splits), possessive `s` dropped, "
          "tokens > 40 bytes dropped, same stop words and stemmer")
    q_tokens = [bm25s_tokens(q, stemmer, as_ids=False)[0] for q in questions]
    q_approx = [r1s_like_terms(q, stemmer) for q in questions]
    differ = [i for i in range(len(questions)) if q_tokens[i] != q_approx[i]]
    print(f"  queries whose bm25s tokens differ from the r1s-like approximation: {len(differ)} / {len(questions)}")
    summary["diagnosis"] = {"r1s_like_avg_doc_len": r1_like, "queries_tokens_differ": len(differ), "queries": []}
    if r1 is None:  # no overlap to rank by: show the first queries whose tokens differ
        shown = [(None, i) for i in differ[:a.diagnose]]
    else:
        shown = worst
    for o, i in shown:
        q = questions[i]
        head = "tokens differ" if o is None else f"overlap {o:.2f}"
        print(f"\n  [{queries[i][0]}] {head}: {q}")
        print(f"    bm25s tokens:            {q_tokens[i]}")
        print(f"    r1s-like terms (approx): {q_approx[i]}" + ("   (same)" if q_approx[i] == q_tokens[i] else ""))
        if r1 is not None:
            print(f"    r1s   top-5 rows {r1['top'][i][:5]} scores {[round(s, 2) for s in r1['top_scores'][i][:5]]}")
        print(f"    bm25s top-5 rows {bm['top'][i][:5]} scores {[round(s, 2) for s in bm['top_scores'][i][:5]]}")
        summary["diagnosis"]["queries"].append({
            "query": q, "set": queries[i][0], "overlap": o, "bm25s_tokens": q_tokens[i],
            "r1s_like_terms": q_approx[i], "r1s_top10": r1["top"][i] if r1 else None, "bm25s_top10": bm["top"][i]})

    out = os.path.join(a.work, "summary.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, ensure_ascii=False)
    print(f"\nsummary: {out}")


if __name__ == "__main__":
    main()
