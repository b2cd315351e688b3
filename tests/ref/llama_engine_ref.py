#!/usr/bin/python3
"""Reference log-probabilities and gradients for the Llama-family engine.

Usage: llama_engine_ref.py DIR [DIR ...]

Each DIR holds config.json and model.safetensors (float32, as dpolua saves
them) and batch.json ({"ids": [[...]], "mask": [[...]], "weights": [...]}).
This script implements Hugging Face's LlamaForCausalLM / MistralForCausalLM /
Qwen2ForCausalLM / Qwen3ForCausalLM forward pass in plain PyTorch (float64),
written from transformers' modeling code: RMSNorm, rotate-half RoPE with
default / linear / llama3 inverse frequencies, repeat_kv for grouped heads,
eager causal attention, SwiGLU, tied or separate LM head. It writes
DIR/ref.json ({"logps": [...]}: per row, sum over t >= 1 with mask[t] of
log p(ids[t] | ids[<t])) and DIR/ref_grads.safetensors: the gradient of
sum_n weights[n] * logps[n] for every parameter, float32, same names. For
the qwen2 variant also DIR/bf16 (see write_bf16).
Needs python3-torch (Debian); not transformers.
"""
import json
import math
import struct
import sys

import torch


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", (name, t["dtype"])
        a, b = t["data_offsets"]
        buf = bytearray(data[base + a:base + b])
        x = torch.frombuffer(buf, dtype=torch.float32).clone() if b > a else torch.zeros(0)
        out[name] = x.reshape(t["shape"]).double()
    return out


def write_safetensors(path, tensors, dtype="F32"):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().float().contiguous()
        if dtype == "BF16":  # round to nearest even, as torch does
            raw = t.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2").tobytes()
        else:
            raw = t.numpy().astype("<f4").tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def inv_freq(cfg, dim):
    # transformers' _compute_default_rope_parameters (float32), then scaling
    base = cfg.get("rope_theta", 10000.0)
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    rs = cfg.get("rope_scaling")
    if rs:
        kind = rs.get("rope_type", rs.get("type"))
        if kind == "linear":
            inv = inv / rs["factor"]
        elif kind == "llama3":
            factor = rs["factor"]
            low, high = rs["low_freq_factor"], rs["high_freq_factor"]
            old = rs["original_max_position_embeddings"]
            low_wl, high_wl = old / low, old / high
            wavelen = 2 * math.pi / inv
            inv_l = torch.where(wavelen > low_wl, inv / factor, inv)
            smooth = (old / wavelen - low) / (high - low)
            smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
            medium = ~(wavelen < high_wl) * ~(wavelen > low_wl)
            inv = torch.where(medium, smoothed, inv_l)
        elif kind != "default":
            raise ValueError(kind)
    return inv


def rms_norm(x, w, eps):
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def forward(cfg, P, ids):
    """log-softmax logits [T, V] for one row of ids (list)."""
    C = cfg["hidden_size"]
    NH = cfg["num_attention_heads"]
    KV = cfg.get("num_key_value_heads") or NH
    D = cfg.get("head_dim") or C // NH
    eps = cfg["rms_norm_eps"]
    T = len(ids)
    x = P["model.embed_tokens.weight"][torch.tensor(ids)]
    inv = inv_freq(cfg, D)
    pos = torch.arange(T).float()
    freqs = pos[:, None] * inv[None, :]  # float32 as transformers
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().double(), emb.sin().double()
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)

    def lin(name, h):
        y = h @ P[name + ".weight"].T
        if name + ".bias" in P:
            y = y + P[name + ".bias"]
        return y

    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        h = rms_norm(x, P[p + "input_layernorm.weight"], eps)
        q = lin(p + "self_attn.q_proj", h).view(T, NH, D).transpose(0, 1)
        k = lin(p + "self_attn.k_proj", h).view(T, KV, D).transpose(0, 1)
        v = lin(p + "self_attn.v_proj", h).view(T, KV, D).transpose(0, 1)
        if p + "self_attn.q_norm.weight" in P:
            q = rms_norm(q, P[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, P[p + "self_attn.k_norm.weight"], eps)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(NH // KV, dim=0)  # repeat_kv
        v = v.repeat_interleave(NH // KV, dim=0)
        att = (q @ k.transpose(1, 2)) / math.sqrt(D) + mask
        y = torch.softmax(att, dim=-1) @ v  # [NH, T, D]
        y = y.transpose(0, 1).reshape(T, NH * D)
        x = x + lin(p + "self_attn.o_proj", y)
        h = rms_norm(x, P[p + "post_attention_layernorm.weight"], eps)
        a = torch.nn.functional.silu(lin(p + "mlp.gate_proj", h)) * lin(p + "mlp.up_proj", h)
        x = x + lin(p + "mlp.down_proj", a)
    x = rms_norm(x, P["model.norm.weight"], eps)
    head = P["lm_head.weight"] if "lm_head.weight" in P else P["model.embed_tokens.weight"]
    return torch.log_softmax(x @ head.T, dim=-1)


def run(d):
    cfg = json.load(open(d + "/config.json"))
    batch = json.load(open(d + "/batch.json"))
    P = read_safetensors(d + "/model.safetensors")
    for t in P.values():
        t.requires_grad_(True)
    logps = []
    for ids, mask in zip(batch["ids"], batch["mask"]):
        last = max([t for t in range(1, len(ids)) if mask[t]], default=0)
        if last == 0:
            logps.append(torch.zeros((), dtype=torch.float64))
            continue
        lp = forward(cfg, P, ids[:last])
        s = sum(lp[t - 1, ids[t]] for t in range(1, last + 1) if mask[t])
        logps.append(s)
    loss = sum(w * lp for w, lp in zip(batch["weights"], logps))
    loss.backward()
    json.dump({"logps": [float(x) for x in logps]}, open(d + "/ref.json", "w"))
    write_safetensors(d + "/ref_grads.safetensors",
                      {n: (t.grad if t.grad is not None else torch.zeros_like(t)) for n, t in P.items()})


def write_bf16(d):
    """DIR/bf16: the model in BF16 (config.json copied) and, as rounded.safetensors,
    the same BF16 values widened to float32: what loading the BF16 file must give."""
    import os
    import shutil
    P = read_safetensors(d + "/model.safetensors")
    os.makedirs(d + "/bf16", exist_ok=True)
    shutil.copy(d + "/config.json", d + "/bf16/config.json")
    write_safetensors(d + "/bf16/model.safetensors", P, "BF16")
    write_safetensors(d + "/bf16/rounded.safetensors",
                      {n: t.float().to(torch.bfloat16).float() for n, t in P.items()})


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    for d in sys.argv[1:]:
        run(d)
        if d.endswith("/qwen2"):
            write_bf16(d)
