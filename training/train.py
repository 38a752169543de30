#!/usr/bin/env python3
"""Train the SmartKV byte-level reference model (Llama architecture) on CPU.

  node training/prepare-data.mjs --out training/out
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3 training/train.py \
      --data training/out --out models/smartkv-ref --steps 1200 --max-minutes 58

Each training sequence is T+1 = 1025 tokens starting with BOS (256):
  * plain text:  BOS + 1024 bytes of train.txt from a random offset;
  * pass-key (probability --passkey-frac): BOS + sample + EOS + BOS + train.txt
    bytes filling the rest. The 5 answer digits get loss weight --answer-weight.
The LR schedule (linear warm-up, cosine to --min-lr-frac) runs on
progress = max(step / steps, elapsed / max_minutes), so the run always anneals
fully and stops within the time budget.
"""
import argparse
import json
import math
import os
import signal
import sys
import time

# Environment for this machine: the OPENBLAS_CORETYPE/L2_SIZE overrides make OpenBLAS ~30x
# slower, and glibc returning large buffers to the OS (mmap/munmap) makes every big tensor
# allocation page-fault again (~30x slower elementwise ops here). Re-exec once with a fixed env.
_WANT = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
if __name__ == "__main__" and (any(os.environ.get(k) != v for k, v in _WANT.items())
                               or "OPENBLAS_CORETYPE" in os.environ or "OPENBLAS_L2_SIZE" in os.environ):
    _env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    _env.update(_WANT)
    os.execve(sys.executable, [sys.executable] + sys.argv, _env)

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import (BOS, EOS, Config, LlamaForCausalLM, export_state_f16, load_safetensors,  # noqa: E402
                   save_safetensors)


def log(msg, fh=None):
    line = time.strftime("%H:%M:%S ") + msg
    print(line, flush=True)
    if fh:
        fh.write(line + "\n")
        fh.flush()


class Data:
    def __init__(self, d, seed):
        with open(os.path.join(d, "train.txt"), "rb") as f:
            self.train = np.frombuffer(f.read(), dtype=np.uint8)
        with open(os.path.join(d, "heldout.txt"), "rb") as f:
            self.held = np.frombuffer(f.read(), dtype=np.uint8)
        self.pk = []
        self.pk_copy = {}  # id(sample) -> start offsets of the predictable key copies
        with open(os.path.join(d, "passkey-train.jsonl"), encoding="utf-8") as f:
            for line in f:
                o = json.loads(line)
                b = o["text"].encode("utf-8")
                arr = np.frombuffer(b, dtype=np.uint8)
                self.pk.append(arr)
                # key occurrences: needle (unpredictable), 'Remember it. KEY' (copy), answer (copy)
                k = o["passkey"].encode()
                first = b.index(b"The pass key is " + k)
                second = b.index(b"Remember it. " + k, first) + len(b"Remember it. ")
                self.pk_copy[id(arr)] = [second, len(b) - 6]
        self.pk_eval = []
        with open(os.path.join(d, "passkey-eval.jsonl"), encoding="utf-8") as f:
            for line in f:
                self.pk_eval.append(json.loads(line))
        self.rng = np.random.default_rng(seed)
        self._pk_by_T = {}
        self.weight_copy = False
        self.long_docs = False
        # Document boundaries of train.txt (documents are separated by one blank line), so
        # plain-text windows can come from one long document instead of a concatenation.
        seps = np.flatnonzero((self.train[:-1] == 10) & (self.train[1:] == 10))
        starts = np.concatenate([[0], seps + 2])
        ends = np.concatenate([seps, [len(self.train)]])
        self.docs = np.stack([starts, ends], 1)  # [n_docs, 2] byte offsets [start, end)
        self._docs_by_n = {}
        self.tasks = []  # long-context task samples: (bytes, answer spans)
        self._tasks_by_T = {}

    def load_tasks(self, path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                o = json.loads(line)
                self.tasks.append((np.frombuffer(o["text"].encode("utf-8"), dtype=np.uint8), o["spans"]))

    def text_window(self, n):
        if self.long_docs:
            if n not in self._docs_by_n:
                lens = self.docs[:, 1] - self.docs[:, 0]
                ok = np.flatnonzero(lens >= n)
                self._docs_by_n[n] = (ok, lens[ok] / lens[ok].sum()) if len(ok) else None
            pool = self._docs_by_n[n]
            if pool is not None:  # a document long enough, chosen by length, then an offset inside it
                d = self.docs[pool[0][int(self.rng.choice(len(pool[0]), p=pool[1]))]]
                o = int(self.rng.integers(d[0], d[1] - n + 1))
                return self.train[o:o + n].astype(np.int64)
        o = int(self.rng.integers(0, len(self.train) - n))
        return self.train[o:o + n].astype(np.int64)

    def task_sequence(self, T, answer_weight):
        """BOS + a task sample that fills at least half of T + EOS + BOS + text; answer bytes weighted."""
        if T not in self._tasks_by_T:
            lo = T // 2 if any(len(t[0]) > T // 2 and len(t[0]) <= T - 2 for t in self.tasks) else 0
            self._tasks_by_T[T] = [t for t in self.tasks if lo < len(t[0]) <= T - 2]
        pool = self._tasks_by_T[T]
        raw, spans = pool[int(self.rng.integers(0, len(pool)))]
        seq = [np.array([BOS]), raw.astype(np.int64)]
        rest = T + 1 - 1 - len(raw)
        if rest >= 2:
            seq.append(np.array([EOS, BOS]))
            if rest > 2:
                seq.append(self.text_window(rest - 2))
        elif rest == 1:
            seq.append(np.array([EOS]))
        x = np.concatenate(seq)[:T + 1]
        w = np.ones(T, dtype=np.float32)
        for a, b in spans:  # the byte at sample offset o is predicted at target index o
            w[a:b] = answer_weight
        return x, w

    def copy_sequence(self, T, answer_weight):
        """BOS + T bytes of training text with copy exercises written into it, without any
        template: a quarter of the sequences repeat 4..12 spans of 24..64 bytes verbatim further
        on (the copy's bytes after its first 12 weighted); the rest is associative recall:
        6..16 facts KEY+SEP+VALUE, with one separator SEP (8..20 bytes of text) shared by all
        facts of the sequence, so that only the key tells them apart; later half of them or
        more are written again in another order and every byte of their VALUE is weighted. The held-out task phrasings
        are answered by repeating a fact sentence whose key sits well before the answer, which
        is the second exercise with sentences the model never saw."""
        x = np.empty(T + 1, dtype=np.int64)
        x[0] = BOS
        x[1:] = self.text_window(T)
        w = np.ones(T, dtype=np.float32)
        if self.rng.random() < 0.25:
            for _ in range(int(self.rng.integers(4, 13))):
                n = int(self.rng.integers(24, 65))
                if T < 4 * n:
                    break
                src = int(self.rng.integers(1, T // 2 - n))  # x index of the span's first byte
                dst = int(self.rng.integers(src + n + 16, T + 1 - n))  # the copy, after the source
                x[dst:dst + n] = x[src:src + n]
                w[dst - 1 + 12:dst - 1 + n] = answer_weight  # target index i predicts x[i + 1]
            return x, w
        sep = self.text_window(int(self.rng.integers(8, 21)))
        k = int(self.rng.integers(6, 17))
        facts = []
        for _ in range(k):  # distinct keys (bytes of text), values of 5..12 bytes
            key = self.text_window(int(self.rng.integers(4, 11)))
            if any(len(f[0]) == len(key) and (f[0] == key).all() for f in facts):
                continue
            facts.append((key, self.text_window(int(self.rng.integers(5, 13)))))
        width = max(len(a) + len(sep) + len(b) for a, b in facts) + 2
        half = (T + 1) // 2
        room = np.arange(1, half - width, width)  # fact slots in the first half, one width apart
        facts = facts[:len(room)]
        slots = np.sort(self.rng.choice(room, size=len(facts), replace=False))
        for (key, val), at in zip(facts, slots):  # facts in the first half, in random places
            fact = np.concatenate([key, sep, val])
            x[at:at + len(fact)] = fact
        asked = self.rng.permutation(len(facts))[:int(self.rng.integers(len(facts) // 2, len(facts) + 1))]
        qslots = np.sort(self.rng.choice(np.arange(half, T + 1 - width, width), size=len(asked), replace=False))
        for j, at in zip(asked, qslots):  # later, some facts again in another order: VALUE weighted
            key, val = facts[j]
            fact = np.concatenate([key, sep, val])
            x[at:at + len(fact)] = fact
            v0 = at + len(key) + len(sep)
            w[v0 - 1:v0 - 1 + len(val)] = answer_weight
        return x, w

    def task_batch(self, B, T, task_frac, answer_weight, copy_frac=0.0):
        x = np.empty((B, T + 1), dtype=np.int64)
        w = np.ones((B, T), dtype=np.float32)
        n_task = 0
        for b in range(B):
            r = self.rng.random()
            if r < task_frac:
                n_task += 1
                x[b], w[b] = self.task_sequence(T, answer_weight)
            elif r < task_frac + copy_frac:
                x[b], w[b] = self.copy_sequence(T, answer_weight)
            else:
                x[b, 0] = BOS
                x[b, 1:] = self.text_window(T)
        return torch.from_numpy(x), torch.from_numpy(w), n_task

    def batch(self, B, T, pk_frac, answer_weight):
        if T not in self._pk_by_T:
            self._pk_by_T[T] = [s for s in self.pk if len(s) <= T]
        x = np.empty((B, T + 1), dtype=np.int64)
        w = np.ones((B, T), dtype=np.float32)
        n_pk = 0
        for b in range(B):
            if self.rng.random() < pk_frac:
                n_pk += 1
                pool = self._pk_by_T[T]  # samples that fit: BOS + sample <= T + 1 tokens
                raw = pool[int(self.rng.integers(0, len(pool)))]
                s = raw.astype(np.int64)
                seq = [np.array([BOS]), s]
                rest = T + 1 - 1 - len(s)
                if rest >= 2:
                    seq.append(np.array([EOS, BOS]))
                    rest -= 2
                    if rest > 0:
                        seq.append(self.text_window(rest))
                elif rest == 1:
                    seq.append(np.array([EOS]))
                x[b] = np.concatenate(seq)[:T + 1]
                # targets are x[1:]; answer digits are bytes len(s)-6 .. len(s)-2 of the sample
                # at sequence positions 1+len(s)-6 .. 1+len(s)-2 -> target index (pos - 1)
                # the byte at sample offset o is predicted at target index o
                for o in self.pk_copy[id(raw)] if self.weight_copy else [len(s) - 6]:
                    w[b, o:o + 5] = answer_weight
            else:
                x[b, 0] = BOS
                x[b, 1:] = self.text_window(T)
        return torch.from_numpy(x), torch.from_numpy(w), n_pk


def _dev(model):
    return next(model.parameters()).device


@torch.no_grad()
def heldout_bpb(model, held, T=1024, max_windows=None):
    """Bits per byte over held-out text in non-overlapping windows of BOS + (T-1) bytes."""
    model.eval()
    n = T - 1
    starts = list(range(0, len(held), n))
    if max_windows:
        idx = np.linspace(0, len(starts) - 1, max_windows).astype(int)
        starts = [starts[i] for i in idx]
    tot_nll, tot_bytes = 0.0, 0
    bs = 8
    for i in range(0, len(starts), bs):
        chunk = [held[s:s + n].astype(np.int64) for s in starts[i:i + bs]]
        L = max(len(c) for c in chunk)
        same = [c for c in chunk if len(c) == L]
        other = [c for c in chunk if len(c) != L]
        for group in ([same] if same else []) + [[c] for c in other]:
            ids = torch.tensor(np.stack([np.concatenate([[BOS], c]) for c in group]), device=_dev(model))
            logits = model(ids[:, :-1])
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
            tot_nll += nll.item()
            tot_bytes += ids[:, 1:].numel()
    model.train()
    return tot_nll / math.log(2) / tot_bytes


@torch.no_grad()
def passkey_acc(model, samples, bs=8):
    """Greedy 5-digit decode after the prompt. Because greedy decoding of the
    first k digits is correct iff the teacher-forced argmax is correct at every
    step, one forward pass over prompt + answer digits is exactly equivalent."""
    model.eval()
    ok = 0
    for i in range(0, len(samples), bs):
        group = samples[i:i + bs]
        seqs = [[BOS] + list(s["prompt"].encode("utf-8")) + list(s["passkey"].encode()) for s in group]
        L = max(len(q) for q in seqs)
        # lengths can differ by a few bytes; pad at the end (causal: padding never affects earlier positions)
        ids = torch.tensor([q + [EOS] * (L - len(q)) for q in seqs], device=_dev(model))
        logits = model(ids)
        for j, (q, s) in enumerate(zip(seqs, group)):
            p0 = len(q) - 5  # index of first digit
            pred = logits[j, p0 - 1:p0 + 4].argmax(-1).tolist()
            ok += int(pred == q[p0:p0 + 5])
    model.train()
    return ok / max(1, len(samples))


@torch.no_grad()
def task_acc(model, samples):
    """Share of task samples whose every answer byte is the argmax given the text before it
    (teacher forcing = greedy decoding of each answer given the earlier turns' correct answers)."""
    model.eval()
    ok = 0
    for s in samples:
        b = s["text"].encode("utf-8")
        ids = torch.tensor([[BOS] + list(b)], device=_dev(model))
        pred = model(ids[:, :-1])[0].argmax(-1)
        tgt = ids[0, 1:]
        ok += int(all(bool((pred[a:e] == tgt[a:e]).all()) for a, e in s["spans"]))
    model.train()
    return ok / max(1, len(samples))


def parse_mix(spec):
    """'1024:0.1,8192:0.9' -> [(1024, 0.1), (8192, 0.9)] (shares of tokens, normalised)."""
    pairs = [(int(a), float(b)) for a, b in (x.split(":") for x in spec.split(","))]
    tot = sum(b for _, b in pairs)
    return [(a, b / tot) for a, b in pairs]


def save_checkpoint(path, model, opt, step, tokens, train_seconds, data):
    """Atomic: a kill mid-write leaves the previous checkpoint intact."""
    tmp = path + ".tmp"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "tokens": tokens,
                "train_seconds": train_seconds, "data_rng": data.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="training/out")
    ap.add_argument("--out", default="models/smartkv-ref")
    ap.add_argument("--ckpt", default="training/cache/ckpt.pt")
    ap.add_argument("--log", default="training/cache/train.log")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=100000, help="step cap (the time budget usually ends the run)")
    ap.add_argument("--max-minutes", type=float, default=55.0, help="training time budget (evals excluded)")
    ap.add_argument("--batch", type=int, default=4, help="sequences per step at --seq")
    ap.add_argument("--seq", type=int, default=1024, help="longest sequence (the exported max_position_embeddings)")
    ap.add_argument("--short-seq", type=int, default=256, help="sequence length of the first phase")
    ap.add_argument("--short-frac", type=float, default=0.5,
                    help="fraction of progress trained at --short-seq (same tokens per step)")
    ap.add_argument("--seq-mix", default=None,
                    help="long-context mode: 'T:share,...' shares of tokens per sequence length, e.g. "
                         "1024:0.1,2048:0.15,4096:0.3,8192:0.45; each step is --step-tokens tokens of one T")
    ap.add_argument("--step-tokens", type=int, default=8192, help="tokens per step with --seq-mix")
    ap.add_argument("--tasks", default=None, help="task samples, comma-separated files (tasks-train.jsonl, tasks-dense.jsonl from prepare-data.mjs)")
    ap.add_argument("--task-frac", type=float, default=0.5, help="share of sequences that hold a task sample")
    ap.add_argument("--copy-frac", type=float, default=0.0,
                    help="share of sequences (with --seq-mix) that are copy exercises: text with spans written again")
    ap.add_argument("--long-docs", action="store_true",
                    help="plain-text windows from one document long enough for them (else any offset)")
    ap.add_argument("--rope-theta", type=float, default=None, help="RoPE base (default: the init model's, or 10000)")
    ap.add_argument("--rope-scaling", default=None,
                    help="llama3:FACTOR (HF llama3 rule, original length = the init model's context, "
                         "low/high frequency factors 1/4), linear:FACTOR, or none")
    ap.add_argument("--fused-attention", action="store_true",
                    help="BlockCausalAttention (O(T) memory, no scalar softmax) for long sequences")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--passkey-frac", type=float, default=0.3)
    ap.add_argument("--answer-weight", type=float, default=4.0)
    ap.add_argument("--weight-copy", action="store_true",
                    help="also give --answer-weight to the key copy after 'Remember it. '")
    ap.add_argument("--stop-at-step", type=int, default=0,
                    help="stop (without annealing) after this step; used to cut stage 1")
    ap.add_argument("--init", default=None, help="start from the weights of this checkpoint (stage 2)")
    ap.add_argument("--init-hf", default=None, help="start from an exported model folder (config + safetensors)")
    ap.add_argument("--resume", action="store_true",
                    help="continue from --ckpt (weights, optimiser, step, tokens, time, RNG) if it exists")
    ap.add_argument("--ckpt-every", type=int, default=10, help="steps between checkpoints")
    ap.add_argument("--eval-every", type=int, default=150)
    ap.add_argument("--eval-tasks", type=int, default=12, help="dev task samples per eval (tasks-dev.jsonl, longest)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu (the committed run) or e.g. cuda")
    ap.add_argument("--no-export", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(os.path.dirname(args.ckpt), exist_ok=True)
    fh = open(args.log, "a")
    log(f"args {vars(args)}", fh)
    log(f"torch {torch.__version__} OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}", fh)

    data = Data(args.data, args.seed)
    data.weight_copy = args.weight_copy
    data.long_docs = args.long_docs
    for tasks_path in (args.tasks.split(",") if args.tasks else []):
        data.load_tasks(tasks_path)
    theta, scaling, orig_len = args.rope_theta, None, 1024
    if args.init_hf:
        with open(os.path.join(args.init_hf, "config.json")) as f:
            init_cfg = json.load(f)
        theta = theta or init_cfg["rope_theta"]
        scaling = init_cfg.get("rope_scaling")
        # The length the RoPE was first trained at: an already-scaled model keeps its original
        # length (re-deriving it from max_position_embeddings would silently change every
        # frequency between the two lengths and undo what the model learned).
        orig_len = (scaling or {}).get("original_max_position_embeddings", init_cfg["max_position_embeddings"])
    if args.rope_scaling and args.rope_scaling != "none":
        kind, factor = args.rope_scaling.split(":")
        scaling = {"rope_type": kind, "factor": float(factor)}
        if kind == "llama3":
            scaling.update(low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=orig_len)
    cfg = Config(num_hidden_layers=args.layers, max_position_embeddings=args.seq, rope_theta=theta or 10000.0,
                 rope_scaling=scaling)
    model = LlamaForCausalLM(cfg)
    for layer in model.model.layers:
        layer.self_attn.fused = args.fused_attention
    if args.init:
        ck = torch.load(args.init, map_location="cpu")
        model.load_state_dict(ck["model"])
        log(f"init from {args.init} (step {ck['step']}, tokens {ck['tokens']})", fh)
    if args.init_hf:
        tensors, _ = load_safetensors(os.path.join(args.init_hf, "model.safetensors"))
        model.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in tensors.items()})
        log(f"init from {args.init_hf} (rope_theta {cfg.rope_theta}, rope_scaling {cfg.rope_scaling})", fh)
    model.to(args.device)
    nparams = sum(p.numel() for p in model.parameters())
    log(f"params {nparams} train_bytes {len(data.train)} heldout_bytes {len(data.held)} pk_samples {len(data.pk)} "
        f"task_samples {len(data.tasks)} docs {len(data.docs)}", fh)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    step, tokens, done_s = 0, 0, 0.0
    if args.resume and os.path.exists(args.ckpt):
        ck = torch.load(args.ckpt, map_location="cpu")
        model.load_state_dict(ck["model"])
        if "opt" in ck:
            opt.load_state_dict(ck["opt"])
            data.rng.bit_generator.state = ck["data_rng"]
            torch.set_rng_state(ck["torch_rng"])
        step, tokens, done_s = ck["step"], ck["tokens"], ck.get("train_seconds", 0.0)
        log(f"resumed from {args.ckpt}: step {step} tokens {tokens} train {done_s/60:.1f} min", fh)

    mix = parse_mix(args.seq_mix) if args.seq_mix else None
    pk_1024 = [s for s in data.pk_eval if s["context_bytes"] == 1024][::6][:16]
    dev_tasks = []
    dev_path = os.path.join(args.data, "tasks-dev.jsonl")
    if mix and os.path.exists(dev_path):
        with open(dev_path, encoding="utf-8") as f:
            dev = [json.loads(line) for line in f]
        longest = max(s["context_bytes"] for s in dev)
        dev_tasks = [s for s in dev if s["context_bytes"] == longest][::7][:args.eval_tasks]

    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))  # finish the step, checkpoint, exit
    t0 = time.time() - done_s  # training clock, continued across resumes
    t_start = time.time()
    max_s = args.max_minutes * 60
    ema = None
    hist = []
    while True:
        elapsed = time.time() - t0
        prog = max(step / args.steps, elapsed / max_s)
        if prog >= 1.0 or (args.stop_at_step and step >= args.stop_at_step):
            break
        if stop["now"]:
            save_checkpoint(args.ckpt, model, opt, step, tokens, time.time() - t0, data)
            log(f"SIGTERM: checkpoint at step {step}; resume with --resume", fh)
            return
        if step < args.warmup:
            lr = args.lr * (step + 1) / args.warmup
        else:
            lr = args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, prog))))
        for g in opt.param_groups:
            g["lr"] = lr
        if mix:
            T = mix[int(data.rng.choice(len(mix), p=[p for _, p in mix]))][0]
            B = max(1, args.step_tokens // T)
            x, w, npk = data.task_batch(B, T, args.task_frac, args.answer_weight, args.copy_frac)
        else:
            if prog < args.short_frac:
                T = args.short_seq
                B = args.batch * args.seq // args.short_seq
            else:
                T, B = args.seq, args.batch
            x, w, npk = data.batch(B, T, args.passkey_frac, args.answer_weight)
        x, w = x.to(args.device), w.to(args.device)
        logits = model(x[:, :-1])
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
        loss = (nll * w.reshape(-1)).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += x[:, :-1].numel()
        plain = nll.mean().item() / math.log(2)
        ema = plain if ema is None else 0.95 * ema + 0.05 * plain
        if step % 10 == 0 or step == 1 or mix:
            el = time.time() - t0
            tps = tokens / max(el, 1e-9)
            prog = max(step / args.steps, el / max_s)
            eta = el / max(prog, 1e-9) - el
            log(f"step {step} T {T} loss(bits/tok) {plain:.3f} ema {ema:.3f} lr {lr:.2e} gn {gn:.2f} "
                f"tok/s {tps:.0f} tokens {tokens} elapsed {el/60:.1f}m eta {eta/60:.1f}m", fh)
        if step % args.ckpt_every == 0:
            save_checkpoint(args.ckpt, model, opt, step, tokens, time.time() - t0, data)
        if step % args.eval_every == 0:
            te = time.time()
            bpb = heldout_bpb(model, data.held, args.seq, max_windows=2 if mix else 8)
            acc = passkey_acc(model, pk_1024)
            rec = {"step": step, "tokens": tokens, "heldout_bpb": bpb, "passkey_1024_acc": acc}
            if dev_tasks:
                rec["dev_task_acc_longest"] = task_acc(model, dev_tasks)
            hist.append(rec)
            log(f"EVAL {json.dumps(rec)} ({time.time()-te:.0f}s)", fh)
            save_checkpoint(args.ckpt, model, opt, step, tokens, time.time() - t0 - (time.time() - te), data)
            t0 += time.time() - te  # eval time does not count against the training budget

    wall = time.time() - t0
    total_wall = time.time() - t_start
    log(f"done steps {step} tokens {tokens} train_wall_s {wall:.0f} this_run_wall_s_incl_evals {total_wall:.0f}", fh)
    save_checkpoint(args.ckpt, model, opt, step, tokens, wall, data)
    summary = {"steps": step, "tokens_seen": tokens, "train_wall_seconds_excluding_evals": round(wall, 1),
               "this_run_wall_seconds_including_evals": round(total_wall, 1),
               "params": nparams, "args": vars(args), "history": hist}
    with open(os.path.join(os.path.dirname(args.ckpt), "train-summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    if not args.no_export:
        os.makedirs(args.out, exist_ok=True)
        save_safetensors(os.path.join(args.out, "model.safetensors"), export_state_f16(model.cpu()), {"format": "pt"})
        with open(os.path.join(args.out, "config.json"), "w") as f:
            json.dump(cfg.hf_dict(), f, indent=2)
            f.write("\n")
        with open(os.path.join(args.out, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "SmartKVByteTokenizer", "bos_token_id": BOS, "eos_token_id": EOS,
                       "byte_level": True, "vocab_size": 258, "add_bos_token": True,
                       "model_max_length": args.seq}, f, indent=2)
            f.write("\n")
        with open(os.path.join(args.out, "training-summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")
        log(f"exported to {args.out}", fh)


if __name__ == "__main__":
    main()
