"""verl's custom reward function, computed by r1s.

In the verl config (the file is loaded by path, so it imports ``r1s`` absolutely)::

    custom_reward_function.path=$(python -c 'import r1s; print(r1s.hook_path("verl"))')
    custom_reward_function.name=compute_score

verl calls ``compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=...)``
per rollout. The reward is ``extra_info["r1s_reward"]`` when the dataset sets it, else the
``R1S_REWARD`` environment variable, else ``verl-searchr1-em`` (``r1s.reward_names()`` lists them).
``ground_truth`` is Search-R1's ``{"target": [answers]}``, a list of answers or one answer.
``verl-searchr1-em`` / ``-subem`` are what verl's own ``search_r1_like_qa_em`` computes from the
response. Search-R1's original rewards (``searchr1-*``) score prompt + response as its code does
(the last of at least two ``<answer>`` blocks: the prompt's instruction holds one): verl passes the
response only, so put the prompt text in ``extra_info["prompt"]`` for them. R1-Searcher's and
R1-Searcher++'s rewards read the response alone. R1-Searcher++'s group reward needs a question's
rollouts together: per rollout this returns its ``R_format + R_answer`` part.
"""

from __future__ import annotations

import os

import r1s

DEFAULT_REWARD = "verl-searchr1-em"


KEYS = ("target", "answer", "golden_answers")


def golds_of(ground_truth) -> list:
    """The gold answers of a verl ``ground_truth``: ``{"target": [...]}`` (or ``"answer"``,
    ``"golden_answers"``), a sequence, one string or one number. Raises ValueError when there are none."""
    if isinstance(ground_truth, dict):
        key = next((k for k in KEYS if k in ground_truth), None)
        if key is None:
            raise ValueError(f"ground_truth {ground_truth!r} has none of the keys {', '.join(KEYS)}")
        ground_truth = ground_truth[key]
    if ground_truth is None:
        raise ValueError("ground_truth is None: no gold answer to score against")
    if isinstance(ground_truth, bytes):
        return [ground_truth.decode()]
    if isinstance(ground_truth, (str, int, float)):
        return [str(ground_truth)]
    golds = [g.decode() if isinstance(g, bytes) else str(g) for g in ground_truth]
    if not golds:
        raise ValueError("ground_truth holds no gold answer")
    return golds


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """The r1s reward of one rollout, in verl's signature (see the module docstring)."""
    extra = extra_info if isinstance(extra_info, dict) else {}
    kind = extra.get("r1s_reward") or os.environ.get("R1S_REWARD") or DEFAULT_REWARD
    prompt = extra.get("prompt") or ""
    return r1s.reward(kind, solution_str, golds_of(ground_truth), prompt=prompt)
