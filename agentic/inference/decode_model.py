"""The engine's forward pass: new tokens of some slots, KV cache updated in place.

The model's own cache path (`agentic.models.forward(..., cache=...)`) scans the
layers with the cache as scanned input *and* output, so every call rewrites the
cache it is given: the engine would have to gather its rows' slots out of the big
cache and scatter them back around each call. This module computes exactly the
same function (same params tree, same RoPE helpers, f32 softmax; the engine tests
check it token for token against the model) with:

* the whole cache in a `fori_loop` carry over layers, the new k/v scattered in place;
* attention over a static prefix `kv_len` of the rows' slots (a bucket >= the
  longest running sequence), so a call reads only the cache rows that can be attended;
* the vocab projection only for the one position per row whose logits are wanted.

Decode steps run it with one token per slot of the first B slots (a contiguous
slice), prefill calls with a chunk of tokens per row and the rows' slots.

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


def cached_forward(config: ModelConfig, params, cache, tokens, positions, kv_len: int, *, slots=None,
                   last=None, reduce_attention: bool = False):
    """Logits at one position per row, and the cache with every new token's k/v written.

    Args:
      config: the model config.
      params: the model params (scanned layout, as `agentic.models.init_params`).
      cache: {"k", "v": [L, N, S, KVH, Dh]} (N slots).
      tokens, positions: int32 [B, T]; entries with position < 0 write nothing (a row
        of them gets garbage logits, to be ignored).
      kv_len: static; attention reads cache indices [0, kv_len). Every valid
        position must be < kv_len.
      slots: int32 [B], the cache slot of each row (distinct); None: rows are slots 0..B-1
        (the decode step: a contiguous slice, no gather).
      last: int32 [B], the index in T whose logits are returned; None: T - 1.
      reduce_attention: static; for one token per row, attention as fused multiply-reduce
        instead of einsums (faster on CPU; the engine sets it for CPU devices).

    Returns:
      (logits float32 [B, V], new cache).
    """
    c = config
    dt = jnp.dtype(c.dtype)
    B, T = tokens.shape
    H, KVH, Dh = c.num_heads, c.num_kv_heads, c.head_dim
    G = H // KVH
    S = cache["k"].shape[2]
    write = jnp.where(positions >= 0, positions, S)  # out of range -> dropped by the scatter
    cos, sin = rope_cos_sin(c, jnp.maximum(positions, 0))  # [B, T, Dh]
    mask = jnp.arange(kv_len)[None, None, :] <= positions[:, :, None]  # [B, T, kv_len]
    rows = jnp.arange(B) if slots is None else slots
    layers = params["layers"]
    x = jnp.take(params["embed_tokens"]["embedding"], tokens, axis=0, mode="clip").astype(dt)  # [B, T, D]

    def read(c_, i):  # layer i's first kv_len cache rows of this call's slots: [B, kv_len, KVH, Dh]
        if slots is None:  # one slice (not the layer's whole [N, S] cache, then a slice)
            return jax.lax.dynamic_slice(c_, (i, 0, 0, 0, 0), (1, B, kv_len, KVH, Dh))[0]
        return c_[i, slots, :kv_len]

    def layer(i, carry):
        x, ck, cv = carry
        lp = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), layers)
        at = lp["self_attn"]
        h = _rms(x, lp["input_layernorm"]["scale"], c.rms_norm_eps, dt)
        q = apply_rope(_proj("btd,dhk->bthk", h, at["q_proj"], dt), cos, sin)
        k = apply_rope(_proj("btd,dhk->bthk", h, at["k_proj"], dt), cos, sin)
        v = _proj("btd,dhk->bthk", h, at["v_proj"], dt)
        ck = ck.at[i, rows[:, None], write].set(k.astype(ck.dtype), mode="drop")
        cv = cv.at[i, rows[:, None], write].set(v.astype(cv.dtype), mode="drop")
        K, V = read(ck, i), read(cv, i)
        if reduce_attention and T == 1:
            # broadcast products reduced over d (then s): XLA's CPU backend fuses each into one
            # pass over the cache rows, where the batched einsums (B x KVH tiny matmuls) run
            # ~1.4x slower; the step is bound by reading the cache (bench/generation.py)
            qg = q.reshape(B, KVH, G, 1, Dh).astype(jnp.float32)
            Kt = K.transpose(0, 2, 1, 3)[:, :, None].astype(jnp.float32)  # [B, KVH, 1, kv_len, Dh]
            scores = jnp.sum(qg * Kt, axis=-1) * (1.0 / math.sqrt(Dh))  # [B, KVH, G, kv_len]
            scores = jnp.where(mask[:, :, None, :], scores, NEG)
            probs = jax.nn.softmax(scores, axis=-1)
            Vt = V.transpose(0, 2, 1, 3)[:, :, None].astype(jnp.float32)
            o = jnp.sum(probs[..., None] * Vt, axis=-2)[:, None]  # [B, 1, KVH, G, Dh]
        else:  # matmul units (TPU, GPU), and prefill chunks
            qg = q.reshape(B, T, KVH, G, Dh)
            scores = jnp.einsum("btkgd,bskd->bkgts", qg, K, preferred_element_type=jnp.float32)
            scores = scores * (1.0 / math.sqrt(Dh))
            scores = jnp.where(mask[:, None, None], scores, NEG)
            probs = jax.nn.softmax(scores, axis=-1).astype(dt)
            o = jnp.einsum("bkgts,bskd->btkgd", probs, V, preferred_element_type=jnp.float32)
        o = o.reshape(B, T, H, Dh).astype(dt)
        x = x + _proj("bthk,hkd->btd", o, at["o_proj"], dt)
        h = _rms(x, lp["post_attention_layernorm"]["scale"], c.rms_norm_eps, dt)
        m = lp["mlp"]
        g = _proj("btd,df->btf", h, m["gate_proj"], dt)
        u = _proj("btd,df->btf", h, m["up_proj"], dt)
        x = x + _proj("btf,fd->btd", jax.nn.silu(g) * u, m["down_proj"], dt)
        return x, ck, cv

    x, ck, cv = jax.lax.fori_loop(0, c.num_layers, layer, (x, cache["k"], cache["v"]))
    x = x[:, -1] if last is None else jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]  # [B, D]
    x = _rms(x, params["norm"]["scale"], c.rms_norm_eps, dt)
    if c.tie_word_embeddings:
        logits = jnp.einsum("bd,vd->bv", x, params["embed_tokens"]["embedding"].astype(dt),
                            preferred_element_type=jnp.float32)
    else:
        logits = jnp.einsum("bd,dv->bv", x, params["lm_head"]["kernel"].astype(dt),
                            preferred_element_type=jnp.float32)
    return logits, {"k": ck, "v": cv}
