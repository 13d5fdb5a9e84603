"""Loads an r1s LoRA checkpoint the two ways Python users would and compares them: transformers on
the checkpoint directory (the merged model.safetensors) and PEFT's PeftModel on the base GGUF with
the checkpoint's adapter/ directory. Prints the largest logit difference (and how far the adapters
moved the model, so that a zero-effect adapter cannot pass); exits 1 when they disagree."""
import argparse
import os

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--gguf", required=True, help="the base model r1s started from")
ap.add_argument("--checkpoint", required=True, help="an r1s checkpoint trained with LoRA")
ap.add_argument("--tolerance", type=float, default=1e-3)
a = ap.parse_args()
torch.set_num_threads(2)
d, f = os.path.split(a.gguf)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
ids = tok("Which Wikipedia article is described as: \"___ is the study of the lands, features, "
          "inhabitants, and phenomena of planet Earth\"?", return_tensors="pt").input_ids
base = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
with torch.no_grad():
    l_base = base(ids).logits
merged = AutoModelForCausalLM.from_pretrained(a.checkpoint, dtype=torch.float32)
if any("lora" in k for k in merged.state_dict()):
    raise SystemExit("transformers attached adapters to the merged checkpoint")
with torch.no_grad():
    l_merged = merged(ids).logits
peft = PeftModel.from_pretrained(base, os.path.join(a.checkpoint, "adapter"))
with torch.no_grad():
    l_peft = peft(ids).logits
diff = (l_peft - l_merged).abs().max().item()
moved = (l_base - l_merged).abs().max().item()
print(f"PEFT (base GGUF + adapter/) vs the checkpoint's merged model: max |logit diff| {diff:.2e}")
print(f"base vs merged (what the adapters changed):                  max |logit diff| {moved:.2e}")
if diff > a.tolerance or moved <= 10 * diff:
    raise SystemExit(f"disagree: {diff:.2e} (tolerance {a.tolerance}), adapters moved the logits by {moved:.2e}")
