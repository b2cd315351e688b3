#!/usr/bin/python3
"""Reference log-probabilities and gradients of tiny Llama-family decoders,
computed with PyTorch the way Hugging Face's modeling_llama / mistral / qwen2 /
qwen3 compute them (eager attention, float32), for tests/spec/llama_ref_spec.lua.

    /usr/bin/python3 tests/ref/llama_torch.py OUT.json

writes one case per variant (GQA, MQA, head_dim given, biases, Qwen2, Qwen3,
tied and untied, linear and llama3 rope scaling, Mistral). The committed copy
is tests/fixtures/llama/reference.json; the spec regenerates and compares it
when PyTorch is installed (Debian: python3-torch).

Parameters are not stored: both sides draw them from the same exact integer
generator (param_values below, mirrored in the spec), so the fixture holds only
the inputs and the results. For each case it holds the config, ids [N, T],
mask [N, T], loss weights w [N], logps [N] and counts [N] (sums of log
p(ids[n][t] | ids[n][<t]) over t >= 1 with mask[n][t] != 0), and for every
parameter of the loss sum(w * logps): the gradient's projection on an exact
pseudo-random vector, its absolute sum, and a sample of elements.
"""
import json
import math
import sys

import torch

MOD = 2147483647  # Park-Miller's generator: exact in Lua's integers and Python's


def name_seed(name):
    h = 7
    for b in name.encode():
        h = (h * 31 + b) % 1000003
    return h + 1


def lcg(seed, n):
    """n values in (-1, 1) from the generator started at seed."""
    s, out = seed, []
    for _ in range(n):
        s = s * 48271 % MOD
        out.append(s / MOD * 2 - 1)
    return out


def param_values(name, numel):
    v = lcg(name_seed(name), numel)
    if name.endswith("norm.weight"):
        return [1 + 0.2 * x for x in v]
    if name.endswith(".bias"):
        return [0.2 * x for x in v]
    return [0.5 * x for x in v]


# The config classes' defaults that differ by model type (LlamaConfig,
# MistralConfig, Qwen2Config, Qwen3Config), and the bias keys each modeling
# file reads.
KV_DEFAULT = {"mistral": 8, "qwen2": 32, "qwen3": 32}


def dims(cfg):
    C, H = cfg["hidden_size"], cfg["num_attention_heads"]
    mt = cfg.get("model_type", "llama")
    KV = cfg.get("num_key_value_heads") or KV_DEFAULT.get(mt, H)
    D = cfg.get("head_dim") or (128 if mt == "qwen3" else C // H)
    return mt, C, H, KV, D


def shapes(cfg):
    mt, C, H, KV, D = dims(cfg)
    I = cfg["intermediate_size"]
    ab = mt in ("llama", "qwen3") and cfg.get("attention_bias", False)
    qkv_bias = mt == "qwen2" or ab
    o_bias = ab
    out = {"model.embed_tokens.weight": [cfg["vocab_size"], C], "model.norm.weight": [C]}
    if not cfg.get("tie_word_embeddings", False):
        out["lm_head.weight"] = [cfg["vocab_size"], C]
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        out[p + "input_layernorm.weight"] = [C]
        out[p + "post_attention_layernorm.weight"] = [C]
        for n, s in (("q", [H * D, C]), ("k", [KV * D, C]), ("v", [KV * D, C]), ("o", [C, H * D])):
            out[p + "self_attn.%s_proj.weight" % n] = s
            if (n != "o" and qkv_bias) or (n == "o" and o_bias):
                out[p + "self_attn.%s_proj.bias" % n] = [s[0]]
        if mt == "qwen3":
            out[p + "self_attn.q_norm.weight"] = [D]
            out[p + "self_attn.k_norm.weight"] = [D]
        for n, s in (("gate", [I, C]), ("up", [I, C]), ("down", [C, I])):
            out[p + "mlp.%s_proj.weight" % n] = s
            if mt == "llama" and cfg.get("mlp_bias", False):
                out[p + "mlp.%s_proj.bias" % n] = [s[0]]
    return out


def inv_freq(cfg, D):
    """Hugging Face's ROPE_INIT_FUNCTIONS: default, linear, llama3 (float32)."""
    base = cfg.get("rope_theta", 10000.0)
    inv = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    rs = cfg.get("rope_scaling")
    if rs is None:
        return inv
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "linear":
        return inv / rs["factor"]
    if kind == "llama3":
        factor = rs["factor"]
        low, high = rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old / low, old / high
        wavelen = 2 * math.pi / inv
        inv_l = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, inv_l)
    raise ValueError("rope_type %s" % kind)


def rms_norm(x, w, eps):
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def forward(cfg, P, ids):
    """Logits [N, T, V] for ids [N, T] (position ids 0..T-1, causal)."""
    N, T = ids.shape
    mt, C, H, KV, D = dims(cfg)
    eps = cfg.get("rms_norm_eps", 1e-6)
    inv = inv_freq(cfg, D)
    pos = torch.arange(T).float()
    freqs = pos[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()  # [T, D]
    mask = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)  # additive causal mask

    def lin(x, name):
        y = x @ P[name + ".weight"].t()
        b = P.get(name + ".bias")
        return y + b if b is not None else y

    x = P["model.embed_tokens.weight"][ids]  # [N, T, C]
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        a = rms_norm(x, P[p + "input_layernorm.weight"], eps)
        q = lin(a, p + "self_attn.q_proj").view(N, T, H, D)
        k = lin(a, p + "self_attn.k_proj").view(N, T, KV, D)
        v = lin(a, p + "self_attn.v_proj").view(N, T, KV, D)
        if mt == "qwen3":
            q = rms_norm(q, P[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, P[p + "self_attn.k_norm.weight"], eps)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [N, *, T, D]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = H // KV  # repeat_kv
        k = k[:, :, None].expand(N, KV, rep, T, D).reshape(N, H, T, D)
        v = v[:, :, None].expand(N, KV, rep, T, D).reshape(N, H, T, D)
        att = q @ k.transpose(2, 3) * D ** -0.5 + mask
        att = torch.softmax(att.float(), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(N, T, H * D)
        x = x + lin(y, p + "self_attn.o_proj")
        b = rms_norm(x, P[p + "post_attention_layernorm.weight"], eps)
        f = torch.nn.functional.silu(lin(b, p + "mlp.gate_proj")) * lin(b, p + "mlp.up_proj")
        x = x + lin(f, p + "mlp.down_proj")
    x = rms_norm(x, P["model.norm.weight"], eps)
    head = P["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else P["lm_head.weight"]
    return x @ head.t()


def run_case(name, cfg, ids, mask, w):
    P = {}
    for pname, s in shapes(cfg).items():
        vals = param_values(pname, math.prod(s))
        P[pname] = torch.tensor(vals, dtype=torch.float32).reshape(s).requires_grad_()
    ids_t = torch.tensor(ids)
    scored = (torch.tensor(mask) != 0)[:, 1:].float()  # position t >= 1 scores ids[t]
    logits = forward(cfg, P, ids_t)
    lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids_t[:, 1:, None])[..., 0]
    logps = (lp * scored).sum(1)
    (logps * torch.tensor(w)).sum().backward()
    grads = []
    for pname in sorted(P):
        g = P[pname].grad.reshape(-1).double()
        n = g.numel()
        r = torch.tensor(lcg(name_seed(pname) + 17, n), dtype=torch.float64)
        picks = sorted({int((x + 1) / 2 * n) % n for x in lcg(name_seed(pname) + 29, 6)})
        grads.append({"name": pname, "dot": float((g * r).sum()), "abs_sum": float(g.abs().sum()),
                      "picks": [[k + 1, float(g[k])] for k in picks]})
    return {"name": name, "config": cfg, "ids": ids, "mask": mask, "w": w,
            "logps": [float(x) for x in logps], "counts": [float(x) for x in scored.sum(1)],
            "grads": grads}


BASE = {"vocab_size": 13, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
        "num_attention_heads": 4, "hidden_act": "silu", "max_position_embeddings": 32}

IDS = [[3, 7, 1, 12, 5, 5, 9, 0, 2],
       [3, 7, 1, 4, 0, 0, 0, 0, 0],
       [11, 2, 6, 8, 10, 1, 3, 4, 7],
       [5, 5, 5, 0, 0, 0, 0, 0, 0]]
MASK = [[0, 0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 0, 0, 0, 0, 0],
        [0, 1, 0, 1, 1, 0, 1, 1, 1],
        [1, 0, 0, 0, 0, 0, 0, 0, 0]]  # position 0 is never scored: nothing here
W = [1.0, -0.75, 0.5, 0.25]


def variant(**kw):
    c = dict(BASE)
    c.update(kw)
    return c


CASES = [
    ("llama GQA untied", variant(model_type="llama", num_key_value_heads=2, rms_norm_eps=1e-5,
                                 rope_theta=10000.0, tie_word_embeddings=False)),
    ("llama MQA tied, linear rope", variant(model_type="llama", num_key_value_heads=1,
                                            tie_word_embeddings=True,
                                            rope_scaling={"rope_type": "linear", "factor": 2.0})),
    ("llama3 rope scaling", variant(model_type="llama", num_attention_heads=2,
                                    num_key_value_heads=1, rope_theta=100.0,
                                    tie_word_embeddings=True,
                                    rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 32})),
    ("llama head_dim given, attention and mlp biases",
     variant(model_type="llama", num_key_value_heads=2, head_dim=6, attention_bias=True,
             mlp_bias=True, tie_word_embeddings=False)),
    ("mistral", variant(model_type="mistral", num_key_value_heads=2, sliding_window=64,
                        rope_theta=1000000.0, tie_word_embeddings=False)),
    ("qwen2 biases", variant(model_type="qwen2", num_key_value_heads=2, rope_theta=1000000.0,
                             use_sliding_window=False, tie_word_embeddings=True)),
    ("qwen3 qk-norm, head_dim given", variant(model_type="qwen3", num_key_value_heads=2,
                                             head_dim=8, rope_theta=1000000.0,
                                             tie_word_embeddings=True)),
    ("qwen3 untied, MHA", variant(model_type="qwen3", num_key_value_heads=4, head_dim=6,
                                  attention_bias=True, tie_word_embeddings=False)),
]


def main():
    torch.set_num_threads(1)
    out = {"generator": "tests/ref/llama_torch.py", "torch": torch.__version__,
           "cases": [run_case(n, c, IDS, MASK, W) for n, c in CASES]}
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
