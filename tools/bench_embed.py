"""r1s embed vs onnxruntime-python vs sentence-transformers on the same passages (see tools/bench-embed)."""
import argparse
import json
import os
import shutil
import subprocess
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    for a in ("--r1s", "--work", "--model", "--st-model"):
        ap.add_argument(a, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    # the text each tool embeds: Search-R1 contents, exactly as r1s embeds a passage
    texts = [json.loads(l)["contents"] for l in open(os.path.join(a.work, "passages.jsonl"))]
    n = len(texts)
    results = {}

    out = os.path.join(a.work, "r1s-index")
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run([a.r1s, "-q", "embed", "--corpus", os.path.join(a.work, "corpus"), "--out", out,
                    "--threads", str(a.threads), "--batch", str(a.batch)], check=True)
    results["r1s (int8 ONNX, length-bucketed)"] = n / (time.perf_counter() - t)
    r1s_vecs = np.load(os.path.join(out, "embeddings.npy"))

    import onnxruntime as ort
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    tok.enable_truncation(256)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    sess = ort.InferenceSession(os.path.join(a.model, "model.onnx"), so, providers=["CPUExecutionProvider"])
    t = time.perf_counter()
    py_vecs = []
    for s in range(0, n, a.batch):
        enc = tok.encode_batch(texts[s:s + a.batch])
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        h = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        m = mask[..., None].astype(np.float32)
        v = (h * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
        py_vecs.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    results["onnxruntime-python (int8 ONNX, input order)"] = n / (time.perf_counter() - t)
    py_vecs = np.concatenate(py_vecs)

    import torch
    torch.set_num_threads(a.threads)
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(a.st_model, device="cpu")
    t = time.perf_counter()
    st_vecs = st.encode(texts, batch_size=a.batch, normalize_embeddings=True)
    results["sentence-transformers (fp32 PyTorch)"] = n / (time.perf_counter() - t)

    print(f"\n{n} passages of ../shared/data/r1searcher/passages.jsonl, {a.threads} threads, batch {a.batch}")
    for k, v in results.items():
        print(f"  {k:<46} {v:8.1f} passages/s")
    r = results["r1s (int8 ONNX, length-bucketed)"]
    print("ratios (measured in this run):")
    print(f"  r1s / onnxruntime-python:    {r / results['onnxruntime-python (int8 ONNX, input order)']:.2f}x")
    print(f"  r1s / sentence-transformers: {r / results['sentence-transformers (fp32 PyTorch)']:.2f}x")
    cos_py = (r1s_vecs * py_vecs).sum(1)
    cos_st = (r1s_vecs * st_vecs).sum(1)
    print(f"agreement: cosine to onnxruntime-python min {cos_py.min():.6f}; to sentence-transformers mean {cos_st.mean():.5f}, min {cos_st.min():.5f}")


if __name__ == "__main__":
    main()
