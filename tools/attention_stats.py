#!/usr/bin/python3
"""Attention statistics of a Llama-family sinkflow model: why is there (no) attention-sink effect?

For one window of held-out tokens (BOS first, as in training) prints, per layer and head, for the queries at
positions >= 64: the attention mass on BOS (an attention sink puts most of it there), the mean distance attended
to and the mean largest attention probability (near 1/position: uniform; near 1: sharp look-ups).

Runs on Debian's system python3 with python3-torch and numpy (no other package): reads model.safetensors itself.
Usage: /usr/bin/python3 tools/attention_stats.py MODEL_DIR [IDS_FILE] [TOKENS]
  IDS_FILE: int32 token ids (default data/corpus/heldout.ids.bin, from tools/build_corpus.sh); TOKENS default 256.
"""
import json
import os
import sys

import numpy as np
import torch

from reference_forward import load_safetensors


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    model = sys.argv[1]
    ids_file = sys.argv[2] if len(sys.argv) > 2 else "data/corpus/heldout.ids.bin"
    tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    cfg = json.load(open(os.path.join(model, "config.json")))
    if cfg.get("model_type") not in ("llama", "qwen2", "mistral"):
        sys.exit(f"{model}/config.json: model_type '{cfg.get('model_type')}', expected a Llama-family model")
    w = load_safetensors(os.path.join(model, "model.safetensors"))
    ids = np.fromfile(ids_file, dtype=np.int32)[:tokens - 1].astype(np.int64)
    toks = torch.tensor(np.concatenate([[cfg.get("bos_token_id", 1)], ids]))
    t, d = len(toks), cfg["hidden_size"]
    h, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    dh = cfg.get("head_dim") or d // h
    eps = cfg.get("rms_norm_eps", 1e-5)
    inv = 1.0 / (cfg.get("rope_theta", 10000.0) ** (torch.arange(0, dh, 2).float() / dh))
    ang = torch.arange(t).float()[:, None] * inv[None]
    cos, sin = ang.cos(), ang.sin()

    def rope(v):
        a, b = v[..., :dh // 2], v[..., dh // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)

    def rms(v, g):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps) * g

    mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
    first = min(64, t - 1)
    x = w["model.embed_tokens.weight"][toks]
    print(f"{model}: {t} tokens, queries at positions >= {first}; per head:")
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        hn = rms(x, w[p + "input_layernorm.weight"])
        q = rope((hn @ w[p + "self_attn.q_proj.weight"].T).view(t, h, dh).transpose(0, 1))
        k = rope((hn @ w[p + "self_attn.k_proj.weight"].T).view(t, kv, dh).transpose(0, 1))
        v = (hn @ w[p + "self_attn.v_proj.weight"].T).view(t, kv, dh).transpose(0, 1)
        k, v = k.repeat_interleave(h // kv, 0), v.repeat_interleave(h // kv, 0)
        probs = ((q @ k.transpose(1, 2)) / dh ** 0.5).masked_fill(mask, float("-inf")).softmax(-1)
        rows = probs[:, first:, :]
        dist = (torch.arange(first, t)[:, None] - torch.arange(t)[None]).clamp(min=0).float()
        bos = rows[:, :, 0].mean(1)
        mean_dist = (rows * dist[None]).sum(-1).mean(1)
        max_p = rows.max(-1).values.mean(1)
        fmt = lambda xs, f: " ".join(f.format(v) for v in xs.tolist())
        print(f"layer {layer}: BOS mass {fmt(bos, '{:.2f}')} | mean distance {fmt(mean_dist, '{:.0f}')} "
              f"| max p {fmt(max_p, '{:.2f}')}")
        x = x + (probs @ v).transpose(0, 1).reshape(t, h * dh) @ w[p + "self_attn.o_proj.weight"].T
        hn = rms(x, w[p + "post_attention_layernorm.weight"])
        gate, up = hn @ w[p + "mlp.gate_proj.weight"].T, hn @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    # The same forward's loss: checks this re-implementation against `sinkflow ppl`.
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    logits = rms(x, w["model.norm.weight"]) @ head.T
    nll = torch.nn.functional.cross_entropy(logits[:-1], toks[1:])
    print(f"mean NLL of the window {nll.item():.3f} (PPL {nll.exp().item():.1f})")


if __name__ == "__main__":
    main()
