"""r1s from Python: the retriever, the corpus, the rewards and metrics of R1-Searcher,
R1-Searcher++ and Search-R1, in process (the same Rust core as the ``r1s`` command).

    import r1s
    r = r1s.Retriever("indexes/sample")               # any index r1s built: dense, bm25, hybrid, milvus
    hits = r.search(["capital of Australia"], k=3)    # one list of Hit per query
    hits[0][0].contents                               # the bytes `r1s serve` returns
    r1s.reward("searchr1-em", solution, ["Canberra"], prompt=prompt)

Hooks in the trainers' own shapes: ``r1s.verl`` (``compute_score``) and ``r1s.openrlhf``
(``reward_func``); see their docstrings for the config lines.
"""

from __future__ import annotations

from typing import Optional

from r1s._r1s import (  # noqa: F401  (re-exported)
    Corpus,
    Hit,
    MismatchError,
    OptionsError,
    Passage,
    R1sError,
    Retriever,
    UnavailableError,
    __version__,
    cover_em,
    exact_match,
    extract_answer,
    f1,
    find_question,
    normalize,
    reward,
    reward_group,
    reward_names,
    rewards,
    score,
)


def embeddings(index):
    """The ``embeddings.npy`` of ``index`` (a Retriever, or an index directory) as a read-only NumPy
    array mapped from the file (no copy; ``numpy.load(..., mmap_mode="r")``), or ``None`` for bm25
    and Milvus indexes."""
    import os

    import numpy

    if isinstance(index, Retriever):
        path: Optional[str] = index.embeddings_path
    elif isinstance(index, (str, bytes, os.PathLike)):
        candidate = os.path.join(os.fsdecode(index), "embeddings.npy")
        if not os.path.isdir(os.fsdecode(index)):
            raise FileNotFoundError(f"index directory {os.fsdecode(index)} does not exist")
        path = candidate if os.path.isfile(candidate) else None
    else:
        raise TypeError(f"embeddings() takes a Retriever or an index directory, not {type(index).__name__}")
    return None if path is None else numpy.load(path, mmap_mode="r")


def hook_path(trainer: str) -> str:
    """The file to name in a trainer's config: ``hook_path("verl")`` for verl's
    ``custom_reward_function.path``, ``hook_path("openrlhf")`` for OpenRLHF's ``--remote_rm_url``."""
    import importlib

    if trainer not in ("verl", "openrlhf"):
        raise OptionsError(f"hook_path({trainer!r}): 'verl' or 'openrlhf'")
    return importlib.import_module(f"r1s.{trainer}").__file__
