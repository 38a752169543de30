#!/usr/bin/env python3
"""Evaluate the exported SmartKV reference model and write its reference logits.

  /usr/bin/python3 training/evaluate.py --model models/smartkv-ref --data training/out

Everything is computed in float32 from the float16 weights as saved in
model.safetensors (reloaded from disk, not from the training checkpoint):
  * held-out bits per byte over the whole heldout.txt, in non-overlapping
    1024-token windows (BOS + 1023 bytes; every byte is predicted once);
  * pass-key accuracy on training/out/passkey-eval.jsonl (context bytes x depth grid,
    seeds from EVAL_SEED_BASE, never used in training, held-out filler text),
    greedy decode of the 5 digits after the prompt;
  * reference-logits.json + reference-logits.bin (little-endian float32) for 3 fixed
    prompts, and a 48-token greedy continuation of "The jury said".
Results go to <model>/eval-results.json.
"""
import argparse
import json
import os
import subprocess
import sys
import time

_WANT = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
if __name__ == "__main__" and (any(os.environ.get(k) != v for k, v in _WANT.items())
                               or "OPENBLAS_CORETYPE" in os.environ or "OPENBLAS_L2_SIZE" in os.environ):
    _env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    _env.update(_WANT)
    os.execve(sys.executable, [sys.executable] + sys.argv, _env)

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from model import BOS, EOS, load_model_from_dir  # noqa: E402
from train import heldout_bpb  # noqa: E402

JURY = "The jury said"
SENTENCE = ("The committee reported on Friday that the new bridge across the river would open to traffic next spring.")
PASSKEY_REF_SEED = 999_999_999  # outside both the training and the evaluation seed ranges
PASSKEY_REF_BYTES = 306         # prompt = 300 bytes (the 6 answer bytes 'NNNNN.' excluded)


def passkey_reference_prompt(data_dir):
    """Build the pass-key reference prompt with the shared JS generator (training/corpus.mjs)."""
    js = (
        "import fs from 'node:fs';"
        f"import {{ makePasskeySample }} from {json.dumps(os.path.join(HERE, 'corpus.mjs'))};"
        f"const t = fs.readFileSync({json.dumps(os.path.join(os.path.abspath(data_dir), 'heldout.txt'))}, 'utf8');"
        f"const s = makePasskeySample({{ seed: {PASSKEY_REF_SEED}, totalBytes: {PASSKEY_REF_BYTES}, depth: 0.5, fillerText: t }});"
        "process.stdout.write(JSON.stringify(s));"
    )
    out = subprocess.run(["node", "--input-type=module", "-e", js], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def ids_of(text):
    return [BOS] + list(text.encode("utf-8"))


@torch.no_grad()
def greedy(model, ids, n):
    ids = list(ids)
    out = []
    for _ in range(n):
        logits = model(torch.tensor([ids]))[0, -1]
        t = int(logits.argmax())
        out.append(t)
        ids.append(t)
    return out


def bytes_text(tokens):
    return bytes([t for t in tokens if t < 256]).decode("utf-8", errors="replace")


@torch.no_grad()
def passkey_grid(model, samples, bs=8):
    """Greedy decode of 5 digits. Greedy decoding yields the right key iff the argmax is
    right at each of the 5 positions given the correct preceding digits, so one forward
    pass over prompt + key (teacher forcing) is exactly equivalent and 5x cheaper."""
    res = {}
    order = sorted(range(len(samples)), key=lambda i: len(samples[i]["prompt"].encode("utf-8")))
    for k in range(0, len(order), bs):
        grp = [samples[i] for i in order[k:k + bs]]
        seqs = [ids_of(s["prompt"]) + list(s["passkey"].encode()) for s in grp]
        L = max(len(q) for q in seqs)
        x = torch.tensor([q + [EOS] * (L - len(q)) for q in seqs])
        logits = model(x)
        for j, (q, s) in enumerate(zip(seqs, grp)):
            p0 = len(q) - 5
            pred = logits[j, p0 - 1:p0 + 4].argmax(-1).tolist()
            key = (s["context_bytes"], s["depth"])
            ok, n = res.get(key, (0, 0))
            res[key] = (ok + int(pred == q[p0:p0 + 5]), n + 1)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/smartkv-ref")
    ap.add_argument("--data", default="training/out")
    ap.add_argument("--max-windows", type=int, default=0, help="0 = whole held-out text")
    ap.add_argument("--max-passkey", type=int, default=0, help="0 = all grid samples")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    model, cfg = load_model_from_dir(args.model, torch.float32)

    # Reference logits first (cheap).
    pk = passkey_reference_prompt(args.data)
    prompts = [("jury", JURY), ("passkey", pk["promptText"]), ("sentence", SENTENCE)]
    entries, blobs, off = [], [], 0
    with torch.no_grad():
        for name, text in prompts:
            ids = ids_of(text)
            lg = model(torch.tensor([ids]))[0].float().numpy().astype("<f4")
            entries.append({"name": name, "text": text, "token_ids": ids, "n_tokens": len(ids),
                            "logits_offset_floats": off, "shape": list(lg.shape),
                            "argmax_last": int(lg[-1].argmax())})
            blobs.append(lg.tobytes())
            off += lg.size
    cont = greedy(model, ids_of(JURY), 48)
    ref = {
        "description": "float32 logits from PyTorch (training/model.py, HF Llama math) using the float16 "
                       "weights of model.safetensors upcast to float32. Logits for prompt i are "
                       "reference-logits.bin[offset : offset + n_tokens*258] (little-endian float32, row-major "
                       "[n_tokens, 258]); row t is the next-token distribution after token_ids[:t+1].",
        "vocab_size": cfg.vocab_size, "bos_token_id": BOS, "eos_token_id": EOS,
        "bin_file": "reference-logits.bin", "dtype": "float32", "byte_order": "little",
        "prompts": entries,
        "passkey_prompt": {"seed": PASSKEY_REF_SEED, "totalBytes": PASSKEY_REF_BYTES, "depth": 0.5,
                           "fillerText": "training/out/heldout.txt", "passkey": pk["passkey"]},
        "greedy_continuation": {"prompt": JURY, "prompt_token_ids": ids_of(JURY), "n_new_tokens": 48,
                                "token_ids": cont, "text": bytes_text(cont)},
    }
    with open(os.path.join(args.model, "reference-logits.bin"), "wb") as f:
        for b in blobs:
            f.write(b)
    with open(os.path.join(args.model, "reference-logits.json"), "w") as f:
        json.dump(ref, f)
        f.write("\n")
    print("greedy:", repr(JURY + bytes_text(cont)), flush=True)

    with open(os.path.join(args.data, "heldout.txt"), "rb") as f:
        held = np.frombuffer(f.read(), dtype=np.uint8)
    samples = [json.loads(l) for l in open(os.path.join(args.data, "passkey-eval.jsonl"), encoding="utf-8")]
    if args.max_passkey:
        samples = samples[::max(1, len(samples) // args.max_passkey)]
    t1 = time.time()
    grid = passkey_grid(model, samples)
    lengths = sorted({k[0] for k in grid})
    depths = sorted({k[1] for k in grid})
    table = {str(L): {str(d): {"correct": grid[(L, d)][0], "n": grid[(L, d)][1],
                               "acc": grid[(L, d)][0] / grid[(L, d)][1]} for d in depths if (L, d) in grid}
             for L in lengths}
    by_len = {str(L): sum(grid[(L, d)][0] for d in depths if (L, d) in grid) /
              sum(grid[(L, d)][1] for d in depths if (L, d) in grid) for L in lengths}
    print("passkey by length:", by_len, f"({time.time()-t1:.0f}s)", flush=True)

    t2 = time.time()
    bpb = heldout_bpb(model, held, cfg.max_position_embeddings, max_windows=args.max_windows or None)
    print(f"heldout bits/byte {bpb:.4f} ({time.time()-t2:.0f}s)", flush=True)
    res = {
        "heldout_bits_per_byte": bpb,
        "heldout_bytes": int(len(held)),
        "heldout_windows": "non-overlapping, BOS + 1023 bytes each" + (
            f" (subset of {args.max_windows})" if args.max_windows else " (whole heldout.txt)"),
        "passkey_accuracy": table,
        "passkey_accuracy_by_length": by_len,
        "passkey_total": {"correct": sum(v[0] for v in grid.values()), "n": sum(v[1] for v in grid.values())},
        "greedy_continuation": ref["greedy_continuation"]["text"],
        "eval_seconds": round(time.time() - t0, 1),
    }
    with open(os.path.join(args.model, "eval-results.json"), "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    print(json.dumps({k: v for k, v in res.items() if k != "passkey_accuracy"}, indent=1))
    for L in lengths:
        print(L, " ".join(f"{table[str(L)][str(d)]['acc']:.2f}" for d in depths))


if __name__ == "__main__":
    main()
