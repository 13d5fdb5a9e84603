"""One training step (forward + backward + AdamW) with transformers (PyTorch CPU) on SmolLM2's GGUF
dequantised to f32: the sequences r1s trains on in tools/bench-train (same texts, cut to the same
length), the loss on the solution tokens only. Prints one JSON line per setting: embeddings frozen
(as r1s trains), everything trained, and (--lora-rank R) PEFT LoRA of rank R on every projection."""
import argparse, json, os, time

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--gguf", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--max-len", type=int, default=256)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--steps", type=int, default=2)
ap.add_argument("--lora-rank", type=int, default=0, help="also time PEFT LoRA of this rank on all 7 projections of every block")
a = ap.parse_args()
torch.set_num_threads(a.threads)
d, f = os.path.split(a.gguf)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
rows = [json.loads(l) for l in open(a.data)]
ids, labels = [], []
for r in rows[:16]:
    p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
    s = tok(r["sol"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    x = (p + s)[: a.max_len]
    ids.append(x)
    labels.append(([-100] * len(p) + s)[: a.max_len])
n = max(map(len, ids))
inp = torch.tensor([x + [0] * (n - len(x)) for x in ids])
lab = torch.tensor([x + [-100] * (n - len(x)) for x in labels])
att = torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x in ids])
settings = ["frozen", "all"] + (["lora"] if a.lora_rank else [])
for setting in settings:
    frozen = setting != "all"
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.train()
    if frozen:
        model.get_input_embeddings().weight.requires_grad_(False)
    if setting == "lora":
        from peft import LoraConfig, get_peft_model
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=a.lora_rank, lora_alpha=2 * a.lora_rank, lora_dropout=0.0,
                                                 target_modules=targets))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, betas=(0.9, 0.95))
    times = []
    for step in range(a.steps + 1):
        t = time.perf_counter()
        out = model(input_ids=inp, attention_mask=att, labels=lab)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if step > 0:  # the first step warms up
            times.append(time.perf_counter() - t)
    print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__, "engine": "pytorch", "embeddings_frozen": frozen, "setting": setting, "batch": len(ids), "tokens": int(att.sum()),
                      "seconds": sum(times) / len(times), "loss": float(out.loss)}))
