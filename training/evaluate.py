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
  * with --bands (long-context models): held-out bits per byte by position band
    (0-1K, 1K-4K, 4K-8K) over BOS + (context-1)-byte windows;
  * long-context task accuracy on training/out/tasks-dev.jsonl (held-out phrasings and
    documents, DEV seeds; training/tasks.mjs), per task x context x depth;
  * reference-logits.json + reference-logits.bin (little-endian float32) for 4 fixed
    prompts (one longer than 1,024 tokens), and a 48-token greedy continuation of "The jury said".
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
LONG_REF_BYTES = 1306           # the long reference prompt: 1,300 bytes + BOS, needle at depth 0.1
BANDS = [(0, 1024), (1024, 4096), (4096, 8192)]


def passkey_reference_prompt(data_dir, total_bytes=PASSKEY_REF_BYTES, depth=0.5):
    """Build the pass-key reference prompt with the shared JS generator (training/corpus.mjs)."""
    js = (
        "import fs from 'node:fs';"
        f"import {{ makePasskeySample }} from {json.dumps(os.path.join(HERE, 'corpus.mjs'))};"
        f"const t = fs.readFileSync({json.dumps(os.path.join(os.path.abspath(data_dir), 'heldout.txt'))}, 'utf8');"
        f"const s = makePasskeySample({{ seed: {PASSKEY_REF_SEED}, totalBytes: {total_bytes}, depth: {depth}, fillerText: t }});"
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


@torch.no_grad()
def heldout_bands(model, held, T, max_windows=None):
    """Bits per byte by position band over non-overlapping BOS + (T-1)-byte windows."""
    n = T - 1
    starts = list(range(0, len(held) - n + 1, n))
    if max_windows:
        starts = [starts[i] for i in np.linspace(0, len(starts) - 1, max_windows).astype(int)]
    nll = torch.zeros(n, dtype=torch.float64)  # [T-1] summed NLL (nats) of the byte predicted at each position
    for s0 in starts:
        ids = torch.tensor([[BOS] + held[s0:s0 + n].astype(np.int64).tolist()])
        logits = model(ids[:, :-1])[0]
        nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none").double()
    out = {"windows": len(starts), "context": T}
    for a, b in BANDS:
        if a < n:
            out[f"{a}-{min(b, n)}"] = float(nll[a:min(b, n)].sum() / (len(starts) * (min(b, n) - a)) / np.log(2))
    out["all"] = float(nll.sum() / (len(starts) * n) / np.log(2))
    return out


@torch.no_grad()
def task_grid(model, samples):
    """{task: {context_bytes: {depth: [correct, n]}}}: every answer span right under teacher forcing."""
    res = {}
    for s in samples:
        b = s["text"].encode("utf-8")
        ids = torch.tensor([[BOS] + list(b)])
        pred = model(ids[:, :-1])[0].argmax(-1)
        tgt = ids[0, 1:]
        ok = all(bool((pred[a:e] == tgt[a:e]).all()) for a, e in s["spans"])
        cell = res.setdefault(s["task"], {}).setdefault(str(s["context_bytes"]), {}).setdefault(str(s["depth"]), [0, 0])
        cell[0] += int(ok)
        cell[1] += 1
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/smartkv-ref")
    ap.add_argument("--data", default="training/out")
    ap.add_argument("--max-windows", type=int, default=0, help="0 = whole held-out text")
    ap.add_argument("--max-passkey", type=int, default=0, help="0 = all grid samples")
    ap.add_argument("--bands", action="store_true", help="held-out bits/byte by position band at full context")
    ap.add_argument("--band-windows", type=int, default=24, help="full-context windows for --bands (0 = all)")
    ap.add_argument("--tasks-per-cell", type=int, default=0,
                    help="dev task samples per task x context x depth cell (0 = skip the task grid)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    model, cfg = load_model_from_dir(args.model, torch.float32)
    for layer in model.model.layers:  # same function, vectorised exp instead of torch 1.13's scalar softmax
        layer.self_attn.fused = True

    # Reference logits first (cheap).
    pk = passkey_reference_prompt(args.data)
    long_pk = passkey_reference_prompt(args.data, LONG_REF_BYTES, 0.1)
    prompts = [("jury", JURY), ("passkey", pk["promptText"]), ("sentence", SENTENCE), ("long", long_pk["promptText"])]
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
        "long_prompt": {"seed": PASSKEY_REF_SEED, "totalBytes": LONG_REF_BYTES, "depth": 0.1,
                        "fillerText": "training/out/heldout.txt", "passkey": long_pk["passkey"]},
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
    bands = None
    if args.bands:
        t3 = time.time()
        bands = heldout_bands(model, held, cfg.max_position_embeddings, args.band_windows or None)
        print(f"heldout by position band {bands} ({time.time()-t3:.0f}s)", flush=True)
    tasks = None
    if args.tasks_per_cell:
        dev = [json.loads(l) for l in open(os.path.join(args.data, "tasks-dev.jsonl"), encoding="utf-8")]
        seen, chosen = {}, []
        for s in dev:  # the first N seeds of every cell (cells are written in seed order)
            key = (s["task"], s["context_bytes"], s["depth"])
            if seen.get(key, 0) < args.tasks_per_cell:
                seen[key] = seen.get(key, 0) + 1
                chosen.append(s)
        t4 = time.time()
        grid_t = task_grid(model, chosen)
        tasks = {"samples": "training/out/tasks-dev.jsonl (held-out phrasings and documents, dev seeds), "
                            f"first {args.tasks_per_cell} per task x context x depth", "grid": grid_t,
                 "by_task_context": {t: {c: sum(v[0] for v in d.values()) / sum(v[1] for v in d.values())
                                         for c, d in g.items()} for t, g in grid_t.items()}}
        print(f"tasks {json.dumps(tasks['by_task_context'])} ({time.time()-t4:.0f}s)", flush=True)
    res = {
        "heldout_bits_per_byte": bpb,
        "heldout_bits_per_byte_by_band": bands,
        "tasks": tasks,
        "heldout_bytes": int(len(held)),
        "heldout_windows": f"non-overlapping, BOS + {cfg.max_position_embeddings - 1} bytes each" + (
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
