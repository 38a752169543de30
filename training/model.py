"""Byte-level Llama model (exactly the computation of HF LlamaForCausalLM) and
safetensors I/O without the `safetensors` package.

Conventions (Hugging Face Llama):
  * RMSNorm: x * rsqrt(mean(x^2) + eps) * weight, computed in float32.
  * RoPE: theta 10000, rotate_half (non-interleaved): dims i and i + head_dim/2
    form a pair; inv_freq[i] = theta^(-2i/head_dim), i < head_dim/2.
  * GQA: num_key_value_heads kv heads, each shared by n_heads / n_kv_heads
    consecutive query heads (repeat_kv).
  * MLP: down(silu(gate(x)) * up(x)); no biases anywhere.
  * Tied embeddings: logits = final_norm(h) @ embed_tokens.weight^T.
"""
import json
import math
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

BOS = 256
EOS = 257
VOCAB = 258


class Config:
    def __init__(self, **kw):
        self.hidden_size = kw.get("hidden_size", 256)
        self.intermediate_size = kw.get("intermediate_size", 768)
        self.num_hidden_layers = kw.get("num_hidden_layers", 4)
        self.num_attention_heads = kw.get("num_attention_heads", 4)
        self.num_key_value_heads = kw.get("num_key_value_heads", 2)
        self.head_dim = kw.get("head_dim", 64)
        self.max_position_embeddings = kw.get("max_position_embeddings", 1024)
        self.rms_norm_eps = kw.get("rms_norm_eps", 1e-5)
        self.rope_theta = kw.get("rope_theta", 10000.0)
        self.vocab_size = kw.get("vocab_size", VOCAB)
        # None, or HF's {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
        # "original_max_position_embeddings"} (what the SmartKV runtime reads, config.ts)
        self.rope_scaling = kw.get("rope_scaling", None)

    def hf_dict(self):
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "vocab_size": self.vocab_size,
            "bos_token_id": BOS,
            "eos_token_id": EOS,
            "pad_token_id": None,
            "tie_word_embeddings": True,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "hidden_act": "silu",
            "initializer_range": 0.02,
            "pretraining_tp": 1,
            "use_cache": True,
            "torch_dtype": "float16",
            "transformers_version": "4.44.0",
        }

    @staticmethod
    def from_hf(d):
        keys = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
                "rope_theta", "vocab_size", "rope_scaling"]
        return Config(**{k: d[k] for k in keys if k in d})


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dt = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dt)


def rope_inv_freq(head_dim, theta, scaling=None):
    """theta^(-2i/D), then HF's llama3 rule: wavelengths above original/low_freq_factor are
    divided by `factor`, those below original/high_freq_factor kept, a smooth blend between."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind != "llama3":
        raise ValueError(f"unsupported rope_scaling {scaling}")
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    orig = scaling["original_max_position_embeddings"]
    inv = inv_freq.double()
    wavelen = 2 * math.pi / inv
    smooth = ((orig / wavelen - low) / (high - low)).clamp(0, 1)
    scaled = torch.where(wavelen > orig / low, inv / factor, inv)
    mid = (wavelen <= orig / low) & (wavelen >= orig / high)
    scaled = torch.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
    return scaled.float()


def rope_cos_sin(T, head_dim, theta, device=None, offset=0, scaling=None):
    inv_freq = rope_inv_freq(head_dim, theta, scaling)
    pos = torch.arange(offset, offset + T, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq)  # [T, hd/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [T, hd]
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class BlockCausalAttention(torch.autograd.Function):
    """Causal softmax(q k^T) v that never holds the T x T matrix (FlashAttention's
    recomputation, written with batched matrix products): the forward keeps only the
    output and each row's log-sum-exp; the backward recomputes each query block's
    probabilities from them. Torch 1.13's CPU softmax is scalar; exp/max/sum here are
    vectorised, and memory is O(T * block) instead of O(T^2).

    q, k, v: [BH, T, hd] float32, q already scaled by 1/sqrt(hd); k, v repeated per
    query head (GQA). Returns [BH, T, hd].
    """

    BLOCK = 256

    @staticmethod
    def _scores(q_blk, k, s0, s1):
        # [BH, s1-s0, s1]: scores of queries s0..s1 against keys 0..s1, causal inside the block
        att = torch.bmm(q_blk, k[:, :s1].transpose(1, 2))
        n = s1 - s0
        diag = att[:, :, s0:s1]
        diag.masked_fill_(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        return att

    @staticmethod
    def forward(ctx, q, k, v):
        BH, T, hd = q.shape
        out = torch.empty_like(q)
        lse = torch.empty(BH, T, dtype=q.dtype)  # [BH, T] log-sum-exp of every score row
        for s0 in range(0, T, BlockCausalAttention.BLOCK):
            s1 = min(T, s0 + BlockCausalAttention.BLOCK)
            att = BlockCausalAttention._scores(q[:, s0:s1], k, s0, s1)
            m = att.amax(-1, keepdim=True)
            att.sub_(m).exp_()
            l = att.sum(-1, keepdim=True)
            out[:, s0:s1] = torch.bmm(att, v[:, :s1]).div_(l)
            lse[:, s0:s1] = (m + l.log()).squeeze(-1)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        BH, T, hd = q.shape
        dout = dout.contiguous()
        dq = torch.empty_like(q)
        dk = torch.zeros_like(k)
        dv = torch.zeros_like(v)
        delta = (dout * out).sum(-1)  # [BH, T] = rowsum(dP * P) of each row
        for s0 in range(0, T, BlockCausalAttention.BLOCK):
            s1 = min(T, s0 + BlockCausalAttention.BLOCK)
            p = BlockCausalAttention._scores(q[:, s0:s1], k, s0, s1)
            p.sub_(lse[:, s0:s1, None]).exp_()  # [BH, n, s1] probabilities
            do = dout[:, s0:s1]
            dv[:, :s1].baddbmm_(p.transpose(1, 2), do)
            dp = torch.bmm(do, v[:, :s1].transpose(1, 2))
            ds = p.mul_(dp.sub_(delta[:, s0:s1, None]))  # dS = P * (dP - delta), in place
            dq[:, s0:s1] = torch.bmm(ds, k[:, :s1])
            dk[:, :s1].baddbmm_(ds.transpose(1, 2), q[:, s0:s1])
        return dq, dk, dv


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.nh, self.nkv, self.hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        d = c.hidden_size
        self.q_proj = nn.Linear(d, self.nh * self.hd, bias=False)
        self.k_proj = nn.Linear(d, self.nkv * self.hd, bias=False)
        self.v_proj = nn.Linear(d, self.nkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.nh * self.hd, d, bias=False)
        self.block = 256  # query block size for the blockwise causal attention
        self.fused = False  # BlockCausalAttention (training at long context) instead of the eager path

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.nh // self.nkv
        if rep > 1:  # repeat_kv: kv head j serves query heads j*rep .. j*rep+rep-1
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        # softmax(q k^T / sqrt(hd) + causal_mask) v. The scale is folded into q and the
        # mask add into baddbmm (same math as HF's eager attention up to fp32 rounding).
        # Causal attention is computed in query blocks so fully-masked key blocks are skipped.
        q = (q * (1.0 / math.sqrt(self.hd))).reshape(B * self.nh, T, self.hd)
        k = k.reshape(B * self.nh, T, self.hd)
        v = v.reshape(B * self.nh, T, self.hd)
        if self.fused:
            y = BlockCausalAttention.apply(q.contiguous(), k.contiguous(), v.contiguous())
        else:
            blk = self.block if T > self.block else T
            outs = []
            for s0 in range(0, T, blk):
                s1 = min(T, s0 + blk)
                m = mask[s0:s1, :s1]
                att = torch.baddbmm(m, q[:, s0:s1], k[:, :s1].transpose(1, 2))
                att = torch.softmax(att, dim=-1)
                outs.append(torch.bmm(att, v[:, :s1]))
            y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        y = y.view(B, self.nh, T, self.hd).transpose(1, 2).reshape(B, T, self.nh * self.hd)
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x


class Inner(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList([Layer(c) for _ in range(c.num_hidden_layers)])
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.config = c
        self.model = Inner(c)
        self._rope_cache = {}
        self._mask_cache = {}
        self.apply(self._init)
        # GPT-2 style scaled init of residual output projections.
        for n, p in self.named_parameters():
            if n.endswith("o_proj.weight") or n.endswith("down_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.num_hidden_layers))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def _rope(self, T, device):
        key = (T, str(device))
        if key not in self._rope_cache:
            c = self.config
            cos, sin = rope_cos_sin(T, c.head_dim, c.rope_theta, scaling=c.rope_scaling)
            self._rope_cache[key] = (cos.to(device), sin.to(device))
        return self._rope_cache[key]

    def _mask(self, T, device):
        key = (T, str(device))
        if key not in self._mask_cache:
            self._mask_cache[key] = torch.full((T, T), float("-inf")).triu(1).to(device)
        return self._mask_cache[key]

    def forward(self, ids):
        T = ids.shape[1]
        cos, sin = self._rope(T, ids.device)
        mask = self._mask(T, ids.device)
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask)
        x = self.model.norm(x)
        return F.linear(x, self.model.embed_tokens.weight)  # tied lm_head


# ---------------------------------------------------------------------------
# safetensors (written/read by hand: 8-byte LE header length, JSON header, raw LE data)

_DT = {"F16": (np.float16, 2), "F32": (np.float32, 4), "BF16": (None, 2)}


def save_safetensors(path, tensors, metadata=None):
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    blobs = []
    for name in sorted(tensors):
        arr = tensors[name]
        if arr.dtype == np.float16:
            dt = "F16"
        elif arr.dtype == np.float32:
            dt = "F32"
        else:
            raise ValueError(f"unsupported dtype {arr.dtype}")
        b = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((8 - len(hj) % 8) % 8)  # pad header to 8-byte alignment
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        np_dt = {"F16": "<f2", "F32": "<f4"}[info["dtype"]]
        out[name] = np.frombuffer(data[base + s:base + e], dtype=np_dt).reshape(info["shape"]).copy()
    return out, header.get("__metadata__")


def export_state_f16(model):
    """HF-named float16 numpy arrays (no lm_head: tied)."""
    out = {}
    for n, p in model.state_dict().items():
        out[n] = p.detach().float().numpy().astype(np.float16)
    return out


def load_model_from_dir(d, dtype=torch.float32):
    with open(f"{d}/config.json") as f:
        cfg = Config.from_hf(json.load(f))
    m = LlamaForCausalLM(cfg)
    tensors, _ = load_safetensors(f"{d}/model.safetensors")
    sd = {k: torch.from_numpy(v.astype(np.float32)).to(dtype) for k, v in tensors.items()}
    missing, unexpected = m.load_state_dict(sd, strict=True), None
    m.eval()
    return m, cfg
