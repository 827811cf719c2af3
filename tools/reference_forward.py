#!/usr/bin/python3
"""Reference forward of a sinkflow model folder, written from Hugging Face's modeling code conventions
(transformers' LlamaForCausalLM: rotate_half RoPE, repeat_kv grouping, RMSNorm in float32, SwiGLU; GPT2LMHeadModel:
Conv1D [in, out] weights, fused c_attn, gelu_new, LayerNorm), independently of the C++ code, in Debian's
python3-torch. transformers itself is not installable on this machine; this is the stand-in golden check.

  /usr/bin/python3 tools/reference_forward.py MODEL_DIR OUT.safetensors
writes the logits of a fixed 64-token input at 8 positions ("logits" F32 [8, vocab]), the input ("tokens" I64
[64]), the positions ("positions" I64 [8]) and, in the metadata, the sha256 of MODEL_DIR/model.safetensors.
tests/test_golden.cpp compares the C++ forward (full and streaming) with these files.
"""
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


def llama_logits(cfg, w, toks):
    t, d = len(toks), cfg["hidden_size"]
    h, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    dh = cfg.get("head_dim") or d // h
    eps = cfg.get("rms_norm_eps", 1e-6)
    inv = 1.0 / (cfg.get("rope_theta", 10000.0) ** (torch.arange(0, dh, 2, dtype=torch.int64).float() / dh))
    freqs = torch.arange(t).float()[:, None] * inv[None]
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos(), emb.sin()

    def rotate_half(v):
        return torch.cat([-v[..., dh // 2:], v[..., :dh // 2]], -1)

    def rms(v, g):
        return g * (v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps))

    x = w["model.embed_tokens.weight"][toks]
    mask = torch.full((t, t), float("-inf")).triu(1)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        hn = rms(x, w[p + "input_layernorm.weight"])

        def proj(name):
            y = hn @ w[p + f"self_attn.{name}.weight"].T
            return y + w[p + f"self_attn.{name}.bias"] if p + f"self_attn.{name}.bias" in w else y

        q = proj("q_proj").view(t, h, dh).transpose(0, 1)
        k = proj("k_proj").view(t, kv, dh).transpose(0, 1)
        v = proj("v_proj").view(t, kv, dh).transpose(0, 1)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(h // kv, 0), v.repeat_interleave(h // kv, 0)  # repeat_kv
        probs = ((q @ k.transpose(1, 2)) / dh ** 0.5 + mask).softmax(-1)
        o = (probs @ v).transpose(0, 1).reshape(t, h * dh) @ w[p + "self_attn.o_proj.weight"].T
        x = x + o
        hn = rms(x, w[p + "post_attention_layernorm.weight"])
        act = torch.nn.functional.silu(hn @ w[p + "mlp.gate_proj.weight"].T) * (hn @ w[p + "mlp.up_proj.weight"].T)
        x = x + act @ w[p + "mlp.down_proj.weight"].T
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return rms(x, w["model.norm.weight"]) @ head.T


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
    with torch.no_grad():
        if cfg["model_type"] in ("llama", "mistral", "qwen2"):
            logits = llama_logits(cfg, w, toks)
        elif cfg["model_type"] == "gpt2":
            logits = gpt2_logits(cfg, w, toks)
        else:
            sys.exit(f"{model}/config.json: model_type '{cfg['model_type']}', expected llama, mistral, qwen2 or gpt2")
    sha = hashlib.sha256(open(weights_path, "rb").read()).hexdigest()
    pos = torch.tensor(POSITIONS, dtype=torch.int64)
    save_safetensors(out, {"tokens": toks, "positions": pos, "logits": logits[pos].float()},
                     {"model_sha256": sha, "model": os.path.basename(os.path.normpath(model))})
    print(f"{out}: logits at positions {POSITIONS} of a 64-token input; model.safetensors sha256 {sha[:16]}...")


if __name__ == "__main__":
    main()
