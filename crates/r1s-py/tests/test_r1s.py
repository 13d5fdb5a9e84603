"""The r1s wheel against the r1s command on the same inputs (#33).

Run by tools/test after tools/build-wheel installed the wheel into the project's venv:
    R1S_BIN=target/debug/r1s R1S_SHARED=../shared/data python -m pytest crates/r1s-py/tests
"""

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy
import pytest

import r1s

BIN = os.environ.get("R1S_BIN", "r1s")
SHARED = Path(os.environ.get("R1S_SHARED", Path(__file__).resolve().parents[3] / "../shared/data"))
QUESTION = "Who was the first president of the Cleveland Indians?"


def run(*args, **kw):
    out = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"r1s {args}: {out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A corpus of 200 R1-Searcher passages with a flat and a bm25 index, built by the CLI."""
    d = tmp_path_factory.mktemp("r1s")
    src = d / "p.jsonl"
    with open(SHARED / "r1searcher/passages.jsonl") as f:
        src.write_text("".join(next(f) for _ in range(200)))
    run("-q", "corpus", "ingest", src, "--out", d / "corpus")
    run("-q", "index", "build", d / "corpus", "--out", d / "flat", "--kind", "flat", "-j", "2")
    run("-q", "index", "build", d / "corpus", "--out", d / "bm25", "--kind", "bm25")
    return d


def cli_hits(index, queries, k):
    out = run("retrieve", "--json", "-k", k, "-j", "2", "--index", index, *queries)
    return [json.loads(line)["hits"] for line in out.splitlines()]


@pytest.mark.parametrize("kind", ["flat", "bm25"])
def test_search_equals_the_cli(built, kind):
    r = r1s.Retriever(built / kind, threads=2)
    assert r.kind == kind and len(r) == 200
    queries = [QUESTION, "capital of Australia", "Evan Morris"]
    got = r.search(queries, k=4)
    want = cli_hits(built / kind, queries, 4)
    assert len(got) == 3
    for g, w in zip(got, want):
        assert [(h.row, h.id, h.title, h.contents) for h in g] == [
            (x["row"], x["id"], x["title"], x["contents"]) for x in w
        ]
        for h, x in zip(g, w):
            assert abs(h.score - x["score"]) <= 1e-5 * max(1.0, abs(x["score"]))
    # the document bytes are the corpus's: Search-R1's contents of the source line
    source = {json.loads(l)["id"]: json.loads(l)["contents"] for l in open(built / "p.jsonl")}
    assert all(h.contents == source[h.id] for hits in got for h in hits)
    assert json.loads(r.describe())["kind"] == kind


def test_search_vectors_reads_numpy_in_place(built):
    r = r1s.Retriever(built / "flat", threads=2)
    emb = r1s.embeddings(r)
    assert emb.shape == (200, 384) and not emb.flags.writeable
    rows = numpy.ascontiguousarray(emb[[5, 17, 199]], dtype=numpy.float32)
    hits = r.search_vectors(rows, k=2)
    assert [h[0].row for h in hits] == [5, 17, 199]
    with pytest.raises(r1s.OptionsError, match="dimension"):
        r.search_vectors(numpy.zeros((1, 7), dtype=numpy.float32))
    with pytest.raises(TypeError):
        r.search_vectors(numpy.asfortranarray(numpy.zeros((3, 384), dtype=numpy.float32)))
    with pytest.raises(r1s.OptionsError, match="dense index"):
        r1s.Retriever(built / "bm25").search_vectors(rows)
    assert r1s.embeddings(r1s.Retriever(built / "bm25")) is None
    assert r1s.embeddings(str(built / "flat")).shape == (200, 384)
    with pytest.raises(TypeError):
        r1s.embeddings(3)


def test_corpus_rows_slices_and_ids(built):
    c = r1s.Corpus(built / "corpus")
    lines = [json.loads(l) for l in open(built / "p.jsonl")]
    assert len(c) == 200
    assert c[0].id == lines[0]["id"] and c[0].contents == lines[0]["contents"]
    assert c[-1].contents == lines[-1]["contents"]
    assert [p.row for p in c[10:20:3]] == [10, 13, 16, 19]
    assert [p.id for p in c[-2:]] == [lines[-2]["id"], lines[-1]["id"]]
    assert c.ids() == [l["id"] for l in lines]
    assert c.ids(5, 8) == [l["id"] for l in lines[5:8]]
    with pytest.raises(IndexError):
        c[200]
    with pytest.raises(TypeError):
        c["x"]
    assert Path(r1s.Retriever(built / "flat").corpus_path) == Path(c.path).resolve()


def test_bad_paths_and_corrupt_indexes_raise(built, tmp_path):
    with pytest.raises(FileNotFoundError):
        r1s.Retriever(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        r1s.Corpus(tmp_path / "missing")
    with pytest.raises(r1s.R1sError, match="corpus directory, not an index"):
        r1s.Retriever(built / "corpus")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(r1s.R1sError):
        r1s.Retriever(bad)
    # a truncated embeddings.npy: refused at open, the interpreter lives on
    cut = tmp_path / "cut"
    cut.mkdir()
    for f in (built / "flat").iterdir():
        if f.is_file() and not f.name.startswith("."):
            (cut / f.name).write_bytes(f.read_bytes())
    data = (cut / "embeddings.npy").read_bytes()
    (cut / "embeddings.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(r1s.R1sError, match="truncated"):
        r1s.Retriever(cut, corpus=built / "corpus")
    with pytest.raises(r1s.OptionsError):
        r1s.Retriever(built / "flat").search([QUESTION], k=0)
    with pytest.raises(TypeError):
        r1s.Retriever(built / "flat").search(QUESTION)  # batch-first: a list of queries
    # a k far beyond the passages returns every passage it can, never allocating k (it aborted once)
    for kind in ("bm25", "flat"):
        r = r1s.Retriever(built / kind)
        for k in (2**40, 2**63):
            assert 0 < len(r.search(["Barbara"], k=k)[0]) <= 200
    nan = numpy.full((1, 384), numpy.nan, dtype=numpy.float32)
    with pytest.raises(r1s.OptionsError, match="non-finite"):
        r1s.Retriever(built / "flat").search_vectors(nan)


def test_the_gil_is_released_while_searching(built):
    r = r1s.Retriever(built / "flat", threads=1)
    queries = [QUESTION] * 64
    r.search(queries[:2])
    # a Python thread counting while another searches: it makes progress only if the GIL is free
    ticks = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks[0] += 1

    t = threading.Thread(target=count)
    t.start()
    time.sleep(0.05)
    before = ticks[0]
    started = time.perf_counter()
    r.search(queries * 4)
    searched = time.perf_counter() - started
    during = ticks[0] - before
    stop.set()
    t.join()
    # the counter runs about as fast as alone (a held GIL would leave it one switch interval)
    assert during > 20_000, f"{during} ticks in {searched:.2f} s of searching"

    # two threads searching take about the time of one on two cores: each with a retriever whose
    # embedder runs on one thread (one retriever's sessions serve one call at a time each)
    other = r1s.Retriever(built / "flat", threads=1)
    other.search(queries[:2])
    work = [queries] * 3

    def alone():
        started = time.perf_counter()
        for w in work:
            r.search(w)
        return time.perf_counter() - started

    def together():
        started = time.perf_counter()
        ts = [threading.Thread(target=lambda x=x: [x.search(w) for w in work]) for x in (r, other)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        return time.perf_counter() - started

    one, two = min(alone() for _ in range(2)), min(together() for _ in range(2))
    print(f"3 x 64 queries: one thread {one:.3f} s; twice the work on two threads {two:.3f} s ({two / one:.2f}x)")
    if (os.cpu_count() or 1) >= 2:
        assert two < 1.5 * one, f"two threads {two:.3f} s vs one {one:.3f} s: the GIL serialised them"


def cli_rewards(kind, path, tmp_path):
    out = tmp_path / f"{kind}.jsonl"
    run("-q", "reward", "--reward", kind, path, "--out", out)
    return [json.loads(l)["reward"] for l in open(out)]


@pytest.mark.parametrize(
    "kind,field",
    [("searchr1-em", "em"), ("searchr1-subem", "subem"), ("searchr1-format", "format_em"), ("searchr1-format-v03", "format_em_v03")],
)
def test_rewards_equal_search_r1s_code_on_its_cases(kind, field):
    cases = [json.loads(l) for l in open(SHARED / "searchr1/reward_cases.jsonl")]
    got = r1s.rewards(kind, [c["solution_str"] for c in cases], [c["golden_answers"] for c in cases])
    assert got == pytest.approx([c[field] for c in cases], abs=1e-9)
    one = cases[3]
    assert r1s.reward(kind, one["solution_str"], one["golden_answers"]) == pytest.approx(one[field])


@pytest.mark.parametrize("kind", ["stage1", "stage1-code", "stage2", "stage2-llama", "r1searcher-plus"])
def test_rewards_equal_the_cli_on_released_results(kind, tmp_path):
    path = SHARED / "r1searcher/eval_results/bamboogle_qwen.jsonl"
    rows = [json.loads(l) for l in open(path)]
    want = cli_rewards(kind, path, tmp_path)
    if kind == "r1searcher-plus":
        # one question per line: each line its own group
        got = [r1s.reward_group(kind, [r["gen_text_store"]], r["answer"])[0] for r in rows]
    else:
        got = r1s.rewards(kind, [r["gen_text_store"] for r in rows], [r["answer"] for r in rows])
    assert got == pytest.approx(want, abs=1e-12)


def test_metrics_and_the_group_reward():
    assert r1s.exact_match("The Canberra.", "canberra")
    assert r1s.cover_em("it is Canberra, Australia", "Canberra")
    assert r1s.f1("Canberra Australia", "Canberra") == pytest.approx(2 / 3)
    assert r1s.score("Canberra", ["Sydney", "Canberra"]) == {"em": 1.0, "cover_em": 1.0, "f1": 1.0}
    assert r1s.extract_answer("x <answer> a </answer> y <answer>b</answer>") == "b"
    assert "r1searcher-plus" in r1s.reward_names()
    with pytest.raises(r1s.OptionsError, match="unknown reward"):
        r1s.reward("nope", "x", "y")
    with pytest.raises(r1s.OptionsError):
        r1s.rewards("stage2", ["a", "b"], [["x"]])
    with pytest.raises(TypeError, match="a string or a list of strings, not NoneType"):
        r1s.reward("stage2", "x", None)
    with pytest.raises(TypeError, match="not int"):
        r1s.rewards("stage2", ["x"], [1984])
    # R1-Searcher++: two correct rollouts with 0 and 2 searches: σ² = 1, the one without search
    # earns min(2σ², 2) = 2 on top of R_answer 1
    q = "<external> {} </external>\n\n<document>\n(1)d\n</document>\n\n"
    none = "I know it. </think>\n\n<answer> Canberra </answer>"
    two = q.format("a") + q.format("b") + "</think>\n\n<answer> Canberra </answer>"
    got = r1s.reward_group("r1searcher-plus", [none, two], ["Canberra"])
    alone = [r1s.reward("r1searcher-plus", s, ["Canberra"]) for s in (none, two)]
    assert alone == [1.0, 1.0]
    assert got == pytest.approx([3.0, 1.0])


def load_like_verl(path, name):
    """As verl's get_custom_reward_fn loads a custom reward file: importlib from the path."""
    spec = importlib.util.spec_from_file_location("custom_module", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["custom_module"] = module
    spec.loader.exec_module(module)
    return getattr(module, name)


def test_verl_hook_called_as_verl_calls_it(monkeypatch):
    compute_score = load_like_verl(r1s.hook_path("verl"), "compute_score")
    cases = [json.loads(l) for l in open(SHARED / "searchr1/reward_cases.jsonl")][:50]
    for c in cases:
        gt = {"target": numpy.array(c["golden_answers"], dtype=object)}  # as verl reads it from parquet
        # Search-R1's original reward, on prompt + response: the prompt in extra_info
        cut = c["solution_str"].find("<|im_start|>assistant\n")
        if cut < 0:
            continue
        prompt, response = c["solution_str"][:cut], c["solution_str"][cut:]
        extra = {"index": 0, "prompt": prompt, "r1s_reward": "searchr1-em"}
        got = compute_score(data_source="nq", solution_str=response, ground_truth=gt, extra_info=extra)
        assert got == pytest.approx(c["em"])
        # the default: verl's port, on the response alone
        got = compute_score(data_source="nq", solution_str=response, ground_truth=gt, extra_info={"index": 0})
        assert got == pytest.approx(r1s.reward("verl-searchr1-em", response, c["golden_answers"]))
    with pytest.raises(ValueError, match="none of the keys"):
        compute_score(data_source="nq", solution_str="x", ground_truth={})
    with pytest.raises(ValueError, match="None"):
        compute_score(data_source="nq", solution_str="x", ground_truth=None)
    assert compute_score(data_source="gsm", solution_str="<answer>1984</answer>", ground_truth=1984) == 1.0
    monkeypatch.setenv("R1S_REWARD", "searchr1-format")
    c = cases[0]
    assert compute_score(data_source="nq", solution_str=c["solution_str"], ground_truth=c["golden_answers"]) == pytest.approx(c["format_em"])
    # the dataset's own choice wins; a response scored after its prompt
    rows = [json.loads(l) for l in open(SHARED / "r1searcher/eval_results/bamboogle_qwen.jsonl")][:5]
    for r in rows:
        got = compute_score(
            data_source="bamboogle", solution_str=r["gen_text_store"], ground_truth=r["answer"], extra_info={"r1s_reward": "stage2"}
        )
        assert got == pytest.approx(r1s.reward("stage2", r["gen_text_store"], r["answer"]))


def test_openrlhf_hook_called_as_openrlhf_calls_it(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("reward_func", r1s.hook_path("openrlhf"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = [json.loads(l) for l in open(SHARED / "r1searcher/eval_results/bamboogle_qwen.jsonl")][:8]
    prompt = "The User asks a question, and the Assistant solves it.\n\nUser:{}\nAssistant: <think>"
    prompts = [prompt.format(r["question"]) for r in rows]
    queries = [p + r["gen_text_store"] for p, r in zip(prompts, rows)]
    labels = [r["answer"] for r in rows]
    out = module.reward_func(queries=queries, prompts=prompts, labels=labels)
    rewards = [float(x) for x in out["rewards"]]
    assert rewards == pytest.approx([r1s.reward("stage2", r["gen_text_store"], r["answer"]) for r in rows])
    assert set(out) == {"rewards", "scores", "extra_logs"}
    # the full text without its prompt given: the rollout is found as R1-Searcher's servers find it
    out = module.reward_func(queries=queries, prompts=[""] * len(rows), labels=labels)
    assert [float(x) for x in out["rewards"]] == pytest.approx(rewards)
    monkeypatch.setenv("R1S_REWARD", "nope")
    with pytest.raises(r1s.OptionsError):
        module.reward_func(queries=queries, prompts=prompts, labels=labels)


def test_a_fresh_venv_installs_the_wheel_and_searches(built, tmp_path):
    wheel = os.environ.get("R1S_WHEEL")
    if not wheel:
        pytest.skip("R1S_WHEEL is not set (tools/build-wheel sets it)")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    py = venv / "bin/python"
    # numpy is needed only for the NumPy views; search works without it
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], check=True)
    code = f"import r1s; print(r1s.Retriever({str(built / 'bm25')!r}).search([{QUESTION!r}], k=2)[0][0].id)"
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == cli_hits(built / "bm25", [QUESTION], 2)[0][0]["id"]
