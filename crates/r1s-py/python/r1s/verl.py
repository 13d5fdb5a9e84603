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


def golds_of(ground_truth) -> list:
    """The gold answers of a verl ``ground_truth``: ``{"target": [...]}``, a sequence, or one string."""
    if isinstance(ground_truth, dict):
        ground_truth = ground_truth.get("target", ground_truth.get("answer", ground_truth.get("golden_answers", [])))
    if isinstance(ground_truth, (str, bytes)):
        return [ground_truth.decode() if isinstance(ground_truth, bytes) else ground_truth]
    return [str(g) for g in ground_truth]


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """The r1s reward of one rollout, in verl's signature (see the module docstring)."""
    extra = extra_info if isinstance(extra_info, dict) else {}
    kind = extra.get("r1s_reward") or os.environ.get("R1S_REWARD") or DEFAULT_REWARD
    prompt = extra.get("prompt") or ""
    return r1s.reward(kind, solution_str, golds_of(ground_truth), prompt=prompt)
