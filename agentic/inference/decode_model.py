"""A decode-step forward pass for the engine: one new token per slot, KV cache updated in place.

The model's own cache path (`agentic.models.forward(..., cache=...)`) scans the
layers with the cache as scanned input *and* output, so every call rewrites the
whole cache; fine for prefill, where the cache slice is a few rows, too slow for
decode, which runs once per generated token over every slot. This module
computes exactly the same function (same params tree, same RoPE helpers, f32
softmax; the engine tests check it token for token against the model) with:

* the cache in a `fori_loop` carry over layers, the new k/v scattered in place;
* attention as two batched matmuls over a static prefix `kv_len` of the cache
  (a bucket >= the longest running sequence), so a step reads only the cache
  rows that can be attended;
* the vocab projection only for the one new position.

Layout of the cache is the model contract's: {"k", "v": [L, B, S, KVH, Dh]}.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from agentic.models.attention import NEG
from agentic.models.config import ModelConfig
from agentic.models.transformer import apply_rope, rms_norm, rope_cos_sin


def _rms(x, scale, eps, dtype):
    return rms_norm(x, scale, eps).astype(dtype)


def _proj(eq, x, p, dtype):
    y = jnp.einsum(eq, x.astype(dtype), p["kernel"].astype(dtype))
    if "bias" in p:
        y = y + p["bias"].astype(dtype)
    return y


def decode_forward(config: ModelConfig, params, cache, tokens, positions, kv_len: int):
    """Logits for one new token per row, and the cache with its k/v written.

    Args:
      config: the model config.
      params: the model params (scanned layout, as `agentic.models.init_params`).
      cache: {"k", "v": [L, B, S, KVH, Dh]}.
      tokens, positions: int32 [B]; rows with position < 0 write nothing (their
        logits are garbage and must be ignored).
      kv_len: static; attention reads cache indices [0, kv_len). Every valid
        position must be < kv_len.

    Returns:
      (logits float32 [B, V], new cache).
    """
    c = config
    dt = jnp.dtype(c.dtype)
    B = tokens.shape[0]
    H, KVH, Dh = c.num_heads, c.num_kv_heads, c.head_dim
    G = H // KVH
    S = cache["k"].shape[2]
    valid = positions >= 0
    write = jnp.where(valid, positions, S)  # out of range -> dropped by the scatter
    cos, sin = rope_cos_sin(c, jnp.maximum(positions, 0)[:, None])  # [B, 1, Dh]
    mask = jnp.arange(kv_len)[None, :] <= positions[:, None]  # [B, kv_len]
    rows = jnp.arange(B)
    layers = params["layers"]
    x = jnp.take(params["embed_tokens"]["embedding"], tokens, axis=0, mode="clip").astype(dt)  # [B, D]

    def layer(i, carry):
        x, ck, cv = carry
        lp = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), layers)
        at = lp["self_attn"]
        h = _rms(x, lp["input_layernorm"]["scale"], c.rms_norm_eps, dt)
        q = _proj("bd,dhk->bhk", h, at["q_proj"], dt)
        k = _proj("bd,dhk->bhk", h, at["k_proj"], dt)
        v = _proj("bd,dhk->bhk", h, at["v_proj"], dt)
        q = apply_rope(q[:, None], cos, sin)[:, 0]
        k = apply_rope(k[:, None], cos, sin)[:, 0]
        ck = ck.at[i, rows, write].set(k.astype(ck.dtype), mode="drop")
        cv = cv.at[i, rows, write].set(v.astype(cv.dtype), mode="drop")
        # one slice of layer i's first kv_len rows (not the layer's whole [B, S] cache, then a slice)
        K = jax.lax.dynamic_slice(ck, (i, 0, 0, 0, 0), (1, B, kv_len, KVH, Dh))[0]  # [B, kv_len, KVH, Dh]
        V = jax.lax.dynamic_slice(cv, (i, 0, 0, 0, 0), (1, B, kv_len, KVH, Dh))[0]
        qg = q.reshape(B, KVH, G, Dh)
        scores = jnp.einsum("bkgd,bskd->bkgs", qg, K, preferred_element_type=jnp.float32)
        scores = scores * (1.0 / math.sqrt(Dh))
        scores = jnp.where(mask[:, None, None, :], scores, NEG)
        probs = jax.nn.softmax(scores, axis=-1).astype(dt)
        o = jnp.einsum("bkgs,bskd->bkgd", probs, V, preferred_element_type=jnp.float32)
        o = o.reshape(B, H, Dh).astype(dt)  # [B, KVH, G, Dh] -> [B, H, Dh]
        x = x + _proj("bhk,hkd->bd", o, at["o_proj"], dt)
        h = _rms(x, lp["post_attention_layernorm"]["scale"], c.rms_norm_eps, dt)
        m = lp["mlp"]
        g = _proj("bd,df->bf", h, m["gate_proj"], dt)
        u = _proj("bd,df->bf", h, m["up_proj"], dt)
        x = x + _proj("bf,fd->bd", jax.nn.silu(g) * u, m["down_proj"], dt)
        return x, ck, cv

    x, ck, cv = jax.lax.fori_loop(0, c.num_layers, layer, (x, cache["k"], cache["v"]))
    x = _rms(x, params["norm"]["scale"], c.rms_norm_eps, dt)
    if c.tie_word_embeddings:
        logits = jnp.einsum("bd,vd->bv", x, params["embed_tokens"]["embedding"].astype(dt),
                            preferred_element_type=jnp.float32)
    else:
        logits = jnp.einsum("bd,dv->bv", x, params["lm_head"]["kernel"].astype(dt),
                            preferred_element_type=jnp.float32)
    return logits, {"k": ck, "v": cv}
