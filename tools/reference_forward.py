#!/usr/bin/python3
"""Reference forward of a sinkflow model folder, written from Hugging Face's modeling code conventions
(transformers' LlamaForCausalLM: rotate_half RoPE, repeat_kv grouping, RMSNorm in float32, SwiGLU; the RoPE
scalings of modeling_rope_utils.py (linear, dynamic, llama3, yarn, longrope); Qwen3's per-head q/k norms; Mistral's,
Phi-3's and Gemma's sliding windows; Phi-3's fused qkv_proj and gate_up_proj; Gemma2/Gemma3: scaled embeddings, (1 + w) RMSNorm, sandwich norms, GeGLU,
query_pre_attn_scalar, soft-capping, local RoPE base; GPT2LMHeadModel: Conv1D [in, out] weights, fused c_attn,
gelu_new, LayerNorm), independently of the C++ code, in Debian's python3-torch. transformers itself is not
installable on this machine; this is the stand-in golden check.

  /usr/bin/python3 tools/reference_forward.py MODEL_DIR OUT.safetensors
writes the logits of a fixed 64-token input at 8 positions ("logits" F32 [8, vocab]), the input ("tokens" I64
[64]), the positions ("positions" I64 [8]), for RoPE models the frequencies ("inv_freq" F32 and, with a local
base, "inv_freq_local"; for dynamic scaling also "inv_freq_dynamic_4x" at 4 x max_position_embeddings) and, in the
metadata, the sha256 of MODEL_DIR/model.safetensors and the attention factor. tests/test_golden.cpp compares the
C++ forward (full and streaming) and its RoPE frequencies with these files.
"""
import math
import hashlib
import json
import os
import struct
import sys

import numpy as np
import torch

POSITIONS = [0, 1, 2, 5, 13, 31, 47, 63]


def load_safetensors(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    types = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if e["dtype"] not in types:
            sys.exit(f"{path}: tensor '{name}' has dtype {e['dtype']}, expected F32, F16 or I64")
        s, t = e["data_offsets"]
        arr = np.frombuffer(data[8 + n + s:8 + n + t], dtype=types[e["dtype"]]).reshape(e["shape"])
        out[name] = torch.tensor(arr.astype(np.float32 if e["dtype"] != "I64" else np.int64))
    return out


def save_safetensors(path, tensors, metadata):
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, t in tensors.items():
        b = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": {torch.float32: "F32", torch.int64: "I64"}[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def default_inv_freq(base, dim):
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def rope_parameters(cfg, dim, seq_len=None):
    """(inv_freq, attention_factor) as transformers' ROPE_INIT_FUNCTIONS compute them."""
    base, max_pos = cfg.get("rope_theta", 10000.0), cfg["max_position_embeddings"]
    rs = cfg.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    inv = default_inv_freq(base, dim)
    if kind == "default":
        return inv, 1.0
    if kind in ("longrope", "su"):
        # Phi-3: the ratio of the two contexts sets the attention factor; short factors up to the original context,
        # long ones beyond it (the frequency update of a longer sequence).
        factor = rs.get("factor")
        original = cfg.get("original_max_position_embeddings")
        if original:
            factor = max_pos / original
        else:
            original = max_pos
        attention = rs.get("attention_factor")
        if attention is None:
            attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        ext = torch.tensor(rs["long_factor"] if seq_len and seq_len > original else rs["short_factor"],
                           dtype=torch.float32)
        shape = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
        return 1.0 / (ext * base ** shape), attention
    factor = rs["factor"]
    if kind == "linear":
        return inv / factor, 1.0
    if kind == "dynamic":
        max_pos = rs.get("original_max_position_embeddings") or max_pos
        seq_len = seq_len if seq_len is not None and seq_len > max_pos else max_pos
        base = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        return default_inv_freq(base, dim), 1.0
    if kind == "llama3":
        low, high = rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old / low, old / high
        wavelen = 2 * math.pi / inv
        inv_llama = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_llama / factor + smooth * inv_llama
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, inv_llama), 1.0
    if kind == "yarn":
        original = max_pos
        if "original_max_position_embeddings" in rs:
            original = rs["original_max_position_embeddings"]
            factor = max_pos / original

        def get_mscale(scale, m=1):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        attention = rs.get("attention_factor")
        if attention is None:
            m, m_all = rs.get("mscale"), rs.get("mscale_all_dim")
            attention = get_mscale(factor, m) / get_mscale(factor, m_all) if m and m_all else get_mscale(factor)
        beta_fast, beta_slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1

        def correction_dim(rotations):
            return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

        lo, hi = correction_dim(beta_fast), correction_dim(beta_slow)
        if rs.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, dim - 1)
        if lo == hi:
            hi += 0.001
        ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - lo) / (hi - lo), 0, 1)
        pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
        extra, inter = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
        keep = 1 - ramp
        return inter * (1 - keep) + extra * keep, attention
    sys.exit(f"config.json: rope_scaling type '{kind}' is not covered by this reference")


def sliding_layers(cfg):
    """Per layer: True when it attends through the sliding window (transformers' layer_types rules)."""
    n, mt, window = cfg["num_hidden_layers"], cfg["model_type"], cfg.get("sliding_window")
    if mt in ("qwen2", "qwen3") and not cfg.get("use_sliding_window", False):
        window = None
    if mt in ("gemma2", "gemma3_text") and "sliding_window" not in cfg:
        window = 4096
    if not window or mt == "llama":
        return [False] * n, None
    if "layer_types" in cfg:
        return [t == "sliding_attention" for t in cfg["layer_types"]], window
    if mt == "gemma2":
        return [i % 2 == 0 for i in range(n)], window
    if mt == "gemma3_text":
        p = cfg.get("sliding_window_pattern", 6)
        return [(i + 1) % p != 0 for i in range(n)], window
    if mt in ("qwen2", "qwen3"):
        return [i >= cfg.get("max_window_layers", n) for i in range(n)], window
    return [True] * n, window


def llama_logits(cfg, w, toks, extra):
    t, d = len(toks), cfg["hidden_size"]
    mt = cfg["model_type"]
    gemma = mt in ("gemma2", "gemma3_text")
    h, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    dh = cfg.get("head_dim") or d // h
    rot = int(dh * cfg.get("partial_rotary_factor", 1.0))
    eps = cfg.get("rms_norm_eps", 1e-6)
    inv, attention = rope_parameters(cfg, rot, seq_len=t)
    extra["inv_freq"] = inv
    extra_meta = {"attention_factor": repr(float(attention))}
    if (cfg.get("rope_scaling") or {}).get("rope_type") == "dynamic":
        extra["inv_freq_dynamic_4x"] = rope_parameters(cfg, rot, seq_len=4 * cfg["max_position_embeddings"])[0]
    local_inv = None
    if mt == "gemma3_text":
        local_inv = default_inv_freq(cfg.get("rope_local_base_freq", 10000.0), rot)
        extra["inv_freq_local"] = local_inv
    sliding, window = sliding_layers(cfg)

    def cos_sin(freqs, factor):
        f = torch.arange(t).float()[:, None] * freqs[None]
        emb = torch.cat([f, f], -1)
        return emb.cos() * factor, emb.sin() * factor

    cos_g, sin_g = cos_sin(inv, attention)
    cos_l, sin_l = cos_sin(local_inv, 1.0) if local_inv is not None else (cos_g, sin_g)

    def rotate_half(v):
        return torch.cat([-v[..., rot // 2:rot], v[..., :rot // 2]], -1)

    def rope(v, cos, sin):  # partial rotary: the last dh - rot dims pass through
        r, p = v[..., :rot], v[..., rot:]
        return torch.cat([r * cos + rotate_half(r) * sin, p], -1)

    def rms(v, g):
        n = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)
        return n * (1.0 + g) if gemma else g * n

    x = w["model.embed_tokens.weight"][toks]
    if gemma:
        x = x * torch.tensor(d ** 0.5, dtype=x.dtype)
    causal = torch.full((t, t), float("-inf")).triu(1)
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    windowed = causal.masked_fill(i - j >= (window or t + 1), float("-inf"))
    scale = cfg.get("query_pre_attn_scalar", dh) ** -0.5 if gemma else dh ** -0.5
    attn_cap, final_cap = cfg.get("attn_logit_softcapping"), cfg.get("final_logit_softcapping")
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        hn = rms(x, w[p + "input_layernorm.weight"])

        def proj(name):
            y = hn @ w[p + f"self_attn.{name}.weight"].T
            return y + w[p + f"self_attn.{name}.bias"] if p + f"self_attn.{name}.bias" in w else y

        if mt == "phi3":  # Phi3Attention: one qkv_proj, sliced q | k | v
            qkv = hn @ w[p + "self_attn.qkv_proj.weight"].T
            q = qkv[:, :h * dh].reshape(t, h, dh)
            k = qkv[:, h * dh:(h + kv) * dh].reshape(t, kv, dh)
            v = qkv[:, (h + kv) * dh:].reshape(t, kv, dh)
        else:
            q, k, v = proj("q_proj").view(t, h, dh), proj("k_proj").view(t, kv, dh), proj("v_proj").view(t, kv, dh)
        if p + "self_attn.q_norm.weight" in w:  # qwen3, gemma3: RMSNorm over each head before RoPE
            q, k = rms(q, w[p + "self_attn.q_norm.weight"]), rms(k, w[p + "self_attn.k_norm.weight"])
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        cos, sin = (cos_l, sin_l) if sliding[layer] else (cos_g, sin_g)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        k, v = k.repeat_interleave(h // kv, 0), v.repeat_interleave(h // kv, 0)  # repeat_kv
        scores = (q @ k.transpose(1, 2)) * scale
        if attn_cap:
            scores = torch.tanh(scores / attn_cap) * attn_cap
        probs = (scores + (windowed if sliding[layer] else causal)).softmax(-1)
        o = (probs @ v).transpose(0, 1).reshape(t, h * dh) @ w[p + "self_attn.o_proj.weight"].T
        if p + "self_attn.o_proj.bias" in w:
            o = o + w[p + "self_attn.o_proj.bias"]
        if gemma:
            x = x + rms(o, w[p + "post_attention_layernorm.weight"])
            hn = rms(x, w[p + "pre_feedforward_layernorm.weight"])
            act = torch.nn.functional.gelu(hn @ w[p + "mlp.gate_proj.weight"].T, approximate="tanh")
            m = (act * (hn @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
            x = x + rms(m, w[p + "post_feedforward_layernorm.weight"])
        else:
            x = x + o
            hn = rms(x, w[p + "post_attention_layernorm.weight"])
            if mt == "phi3":  # Phi3MLP: gate_up_proj, chunked gate | up
                gate, up = (hn @ w[p + "mlp.gate_up_proj.weight"].T).chunk(2, dim=-1)
                act = up * torch.nn.functional.silu(gate)
            else:
                act = torch.nn.functional.silu(hn @ w[p + "mlp.gate_proj.weight"].T) * (hn @ w[p + "mlp.up_proj.weight"].T)
            x = x + act @ w[p + "mlp.down_proj.weight"].T
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    logits = rms(x, w["model.norm.weight"]) @ head.T
    if final_cap:
        logits = torch.tanh(logits / final_cap) * final_cap
    return logits, extra_meta


def gpt2_logits(cfg, w, toks):
    t, d, h = len(toks), cfg["n_embd"], cfg["n_head"]
    dh = d // h
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    pre = "transformer." if "transformer.wte.weight" in w else ""

    def ln(v, name):
        return torch.nn.functional.layer_norm(v, (d,), w[name + ".weight"], w[name + ".bias"], eps)

    def conv1d(v, name):  # transformers' Conv1D: y = x @ W + b with W [in, out]
        return v @ w[name + ".weight"] + w[name + ".bias"]

    def gelu_new(v):
        return 0.5 * v * (1.0 + torch.tanh((2.0 / torch.pi) ** 0.5 * (v + 0.044715 * v.pow(3))))

    x = w[pre + "wte.weight"][toks] + w[pre + "wpe.weight"][torch.arange(t)]
    mask = torch.full((t, t), float("-inf")).triu(1)
    for layer in range(cfg["n_layer"]):
        p = f"{pre}h.{layer}."
        q, k, v = conv1d(ln(x, p + "ln_1"), p + "attn.c_attn").split(d, -1)
        q, k, v = (m.view(t, h, dh).transpose(0, 1) for m in (q, k, v))
        probs = ((q @ k.transpose(1, 2)) / dh ** 0.5 + mask).softmax(-1)
        x = x + conv1d((probs @ v).transpose(0, 1).reshape(t, d), p + "attn.c_proj")
        x = x + conv1d(gelu_new(conv1d(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
    return ln(x, pre + "ln_f") @ w[pre + "wte.weight"].T


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    model, out = sys.argv[1], sys.argv[2]
    cfg = json.load(open(os.path.join(model, "config.json")))
    weights_path = os.path.join(model, "model.safetensors")
    w = load_safetensors(weights_path)
    vocab = cfg["vocab_size"]
    toks = torch.tensor(np.random.default_rng(0).integers(3, vocab, 64), dtype=torch.int64)
    toks[0] = cfg.get("bos_token_id", 1) if cfg["model_type"] == "llama" else toks[0]
    extra, meta = {}, {}
    with torch.no_grad():
        if cfg["model_type"] in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"):
            logits, meta = llama_logits(cfg, w, toks, extra)
        elif cfg["model_type"] == "gpt2":
            logits = gpt2_logits(cfg, w, toks)
        else:
            sys.exit(f"{model}/config.json: model_type '{cfg['model_type']}', expected llama, mistral, qwen2, qwen3, "
                     "gemma2, gemma3_text, phi3 or gpt2")
    sha = hashlib.sha256(open(weights_path, "rb").read()).hexdigest()
    pos = torch.tensor(POSITIONS, dtype=torch.int64)
    tensors = {"tokens": toks, "positions": pos, "logits": logits[pos].float()}
    tensors.update({k: v.float() for k, v in extra.items()})
    weights_sum = repr(sum(float(t.double().sum()) for t in w.values()))  # the C++ test's check of its own checkpoint
    save_safetensors(out, tensors, {"model_sha256": sha, "model": os.path.basename(os.path.normpath(model)),
                                    "weights_sum": weights_sum, **meta})
    print(f"{out}: logits at positions {POSITIONS} of a 64-token input; model.safetensors sha256 {sha[:16]}...")


if __name__ == "__main__":
    main()
