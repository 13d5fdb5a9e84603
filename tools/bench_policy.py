"""Greedy generation with transformers (PyTorch CPU) on SmolLM2's GGUF dequantised to f32, the same
prompt, threads and token budget as `r1s policy generate`; prints one JSON line per batch size and run."""
import argparse, json, os, time

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--gguf", required=True)
ap.add_argument("--prompt", required=True)
ap.add_argument("--new", type=int, default=64)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--batches", default="1,16")
ap.add_argument("--runs", type=int, default=1, help="timed runs per batch size (a JSON line each)")
a = ap.parse_args()
torch.set_num_threads(a.threads)
d, f = os.path.split(a.gguf)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
tok.padding_side = "left"
if tok.pad_token is None:
    tok.pad_token = tok.eos_token
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
for b in [int(x) for x in a.batches.split(",")]:
    enc = tok([a.prompt] * b, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        model.generate(**enc, max_new_tokens=2, do_sample=False)  # warm-up
    for run in range(a.runs):
        with torch.inference_mode():
            t = time.perf_counter()
            out = model.generate(**enc, max_new_tokens=a.new, do_sample=False)
            secs = time.perf_counter() - t
        new = out[:, enc["input_ids"].shape[1]:]
        # tokens up to and including the first EOS, as r1s counts them
        n = sum(r.index(tok.eos_token_id) + 1 if tok.eos_token_id in r else len(r) for r in new.tolist())
        print(json.dumps({"engine": "transformers", "torch": torch.__version__, "transformers": transformers.__version__, "run": run, "batch": b,
                          "prompt_tokens": int(enc["input_ids"].shape[1]), "new_tokens": n, "seconds": secs, "tokens_per_s": n / secs,
                          "text": tok.decode(new[0], skip_special_tokens=False)[:80]}), flush=True)
