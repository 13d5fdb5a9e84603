"""OpenRLHF's remote reward function, computed by r1s.

OpenRLHF loads this file when ``--remote_rm_url`` names a ``.py`` file::

    --remote_rm_url $(python -c 'import r1s; print(r1s.hook_path("openrlhf"))') --label_key answer

and calls ``reward_func(queries, prompts, labels)`` with each rollout's full text (prompt +
response), its prompt and its label (the gold answer, or a list of them; a JSON list in a string is
read as one). The reward is the ``R1S_REWARD`` environment variable (default ``stage2``, R1-Searcher's
stage-2 reward; ``r1s.reward_names()`` lists them). Rollouts with the same prompt are one group:
R1-Searcher++'s ``r1searcher-plus`` adds its group reward to the correct rollout(s) that searched
least. Returns ``{"rewards", "scores", "extra_logs"}`` as OpenRLHF expects, tensors when torch is
importable (it is, inside OpenRLHF), lists otherwise.
"""

from __future__ import annotations

import json
import os

import r1s

DEFAULT_REWARD = "stage2"


def _golds(label) -> list:
    if label is None:
        raise ValueError("a label is None: no gold answer to score against (--label_key)")
    if isinstance(label, (int, float)):
        return [str(label)]
    if isinstance(label, str):
        text = label.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
                if isinstance(value, list):
                    return [str(v) for v in value]
            except ValueError:
                pass
        return [label]
    if isinstance(label, dict):
        label = label.get("target", label.get("answer", []))
        return _golds(label) if isinstance(label, str) else [str(v) for v in label]
    return [str(v) for v in label]


def _split(query: str, prompt: str):
    """(prompt, response) of a full text: after the prompt when the text starts with it, else
    where r1s finds the rollout start (R1-Searcher's reward servers' reading)."""
    if prompt and query.startswith(prompt):
        return prompt, query[len(prompt):]
    found = r1s.find_question(query)
    if found is None:
        return prompt, query
    at = found[1]
    return query[:at], query[at:]


def reward_func(queries, prompts, labels, **kwargs):
    """Rewards of a batch of rollouts, in OpenRLHF's signature (see the module docstring)."""
    kind = os.environ.get("R1S_REWARD") or DEFAULT_REWARD
    if not (len(queries) == len(prompts) == len(labels)):
        raise r1s.OptionsError(f"{len(queries)} queries, {len(prompts)} prompts, {len(labels)} labels: one each")
    parts = [_split(q, p) for q, p in zip(queries, prompts)]
    out = [0.0] * len(queries)
    # one group per question: the prompt as found in the text, and the label
    groups: dict = {}
    for i, (prompt, _) in enumerate(parts):
        groups.setdefault((prompt, json.dumps(_golds(labels[i]))), []).append(i)
    for members in groups.values():
        golds = _golds(labels[members[0]])
        values = r1s.reward_group(
            kind, [parts[i][1] for i in members], golds, prompts=[parts[i][0] for i in members]
        )
        for i, v in zip(members, values):
            out[i] = v
    try:
        import torch

        rewards = torch.tensor(out, dtype=torch.float32)
        return {"rewards": rewards, "scores": rewards.clone(), "extra_logs": {"r1s_reward": rewards.clone()}}
    except ImportError:
        return {"rewards": out, "scores": list(out), "extra_logs": {"r1s_reward": list(out)}}
