"""Causal attention for the training path: query blocks, and a backward that recomputes.

`blocked_attention(q, k, v, mask, block)` equals softmax attention under `mask` (the
reference is `transformer._attend`) in values and gradients, and does less work:

- query block [i, e) attends keys [0, e) only, so the masked-out upper triangle of
  score blocks is never computed;
- the forward keeps, per query row, only the softmax max and 1 / sum (not the [T, T]
  probabilities), and the backward recomputes each block's probabilities from them
  (the FlashAttention recipe, written with plain XLA ops);
- heads are laid out [B, KV heads, T, group, Dh] once per call, so each block's
  matmuls read contiguous slices instead of transposing per block.

A fully masked query row (padding) gets the uniform average of the visible-block
values and no gradient through its scores, exactly as `jnp.where` + softmax gives.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

NEG = -1e30  # finite mask value: fully-masked rows give a uniform softmax, never NaN


def blocked_attention(q, k, v, mask, block: int):
    """q [B, T, H, Dh], k/v [B, T, KVH, Dh] (same dtype), mask bool [B, T, T] -> [B, T, H, Dh].

    Scores and softmax in float32; matmul inputs stay in q's dtype.
    """
    B, T, H, Dh = q.shape
    KVH = k.shape[2]
    qh = (q * jnp.asarray(1.0 / math.sqrt(Dh), q.dtype)).reshape(B, T, KVH, H // KVH, Dh).transpose(0, 2, 1, 3, 4)
    o = _attention(qh, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask, max(1, min(int(block), T)))
    return o.transpose(0, 2, 1, 3, 4).reshape(B, T, H, Dh)


def _blocks(T: int, block: int):
    return [(i, min(i + block, T)) for i in range(0, T, block)]


def _scores(q, k, mask, i, e):
    """Masked float32 scores of query rows [i, e) against keys [0, e): [B, KVH, e-i, G, e], and the mask."""
    B, KVH, _, G, Dh = q.shape
    s = jnp.einsum("bkrd,bksd->bkrs", q[:, :, i:e].reshape(B, KVH, (e - i) * G, Dh), k[:, :, :e],
                   preferred_element_type=jnp.float32).reshape(B, KVH, e - i, G, e)
    m = mask[:, None, i:e, None, :e]
    return jnp.where(m, s, NEG), m


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q, k, v, mask, block):
    """q [B, KVH, T, G, Dh] (pre-scaled), k/v [B, KVH, T, Dh] -> [B, KVH, T, G, Dh]."""
    return _attention_fwd(q, k, v, mask, block)[0]


def _attention_fwd(q, k, v, mask, block):
    B, KVH, T, G, Dh = q.shape
    outs, maxes, inv_sums = [], [], []
    for i, e in _blocks(T, block):
        s, _ = _scores(q, k, mask, i, e)
        m = jnp.max(s, axis=-1, keepdims=True)
        p = jnp.exp(s - m)
        inv = 1.0 / jnp.sum(p, axis=-1, keepdims=True)
        o = jnp.einsum("bkrs,bksd->bkrd", p.reshape(B, KVH, (e - i) * G, e).astype(v.dtype), v[:, :, :e],
                       preferred_element_type=jnp.float32).reshape(B, KVH, e - i, G, Dh)
        outs.append((o * inv).astype(q.dtype))
        maxes.append(m)
        inv_sums.append(inv)
    o = jnp.concatenate(outs, axis=2)
    return o, (q, k, v, mask, o, jnp.concatenate(maxes, axis=2), jnp.concatenate(inv_sums, axis=2))


def _attention_bwd(block, res, do):
    q, k, v, mask, o, m, inv = res
    B, KVH, T, G, Dh = q.shape
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)
    dq = []
    dk = jnp.zeros(k.shape, jnp.float32)
    dv = jnp.zeros(v.shape, jnp.float32)
    for i, e in _blocks(T, block):
        r = (e - i) * G
        s, visible = _scores(q, k, mask, i, e)
        p = jnp.exp(s - m[:, :, i:e]) * inv[:, :, i:e]  # the forward's probabilities
        do_b = do[:, :, i:e].reshape(B, KVH, r, Dh)
        dv = dv.at[:, :, :e].add(jnp.einsum("bkrs,bkrd->bksd", p.reshape(B, KVH, r, e).astype(do.dtype), do_b,
                                            preferred_element_type=jnp.float32))
        dp = jnp.einsum("bkrd,bksd->bkrs", do_b, v[:, :, :e], preferred_element_type=jnp.float32)
        ds = jnp.where(visible, p * (dp.reshape(p.shape) - delta[:, :, i:e]), 0.0).reshape(B, KVH, r, e)
        ds = ds.astype(q.dtype)
        dq.append(jnp.einsum("bkrs,bksd->bkrd", ds, k[:, :, :e],
                             preferred_element_type=jnp.float32).reshape(B, KVH, e - i, G, Dh))
        dk = dk.at[:, :, :e].add(jnp.einsum("bkrs,bkrd->bksd", ds, q[:, :, i:e].reshape(B, KVH, r, Dh),
                                            preferred_element_type=jnp.float32))
    dq = jnp.concatenate(dq, axis=2)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_attention.defvjp(_attention_fwd, _attention_bwd)
