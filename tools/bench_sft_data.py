"""Writes the SFT benchmark's data (tools/bench-train, tools/bench-tch): 48 real passages of the
R1-Searcher sample (at least 90 words, each doubled so that it fills 256 tokens) as solutions of one
fixed prompt, for 3 steps of 16 sequences (the first warms up).
usage: python3 tools/bench_sft_data.py OUT.jsonl"""
import json
import sys
from pathlib import Path

shared = Path(__file__).resolve().parent.parent.parent / "shared/data/r1searcher/passages.jsonl"
rows = [json.loads(line) for line in open(shared)][:400]
rows = [r for r in rows if len(r["contents"].split()) >= 90][:48]
with open(sys.argv[1], "w") as f:
    for r in rows:
        text = r["contents"] + " " + r["contents"]
        f.write(json.dumps({"prompt": "Write the passage.\n", "sol": text}) + "\n")
