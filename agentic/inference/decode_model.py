"""The engine's forward pass over a paged KV cache: only the new tokens' k/v are written.

The KV cache is a pool of fixed-size pages shared by every sequence
(`agentic.inference.kv_pages`): {"kv": [L, P, page_size, 2 * KVH, Dh]}, k and v interleaved per
KV head (the layout of JAX's Pallas ragged paged attention kernel). Each row of a call
brings its page table (the pages holding its positions 0, page_size, 2 page_size, ...), and:

* the new tokens' k/v are scattered into their (page, offset) in place, in a `fori_loop`
  carry over layers: nothing else of the cache is read or written by the scatter;
* attention gathers only the row's own pages of a static window (`page_table.shape[1]`
  pages, a bucket >= the longest running sequence), so a call reads at most
  rows x window tokens of the layer's cache, never the whole cache;
* on TPU (`attention="pallas"`), attention is JAX's ragged paged attention kernel instead,
  reading the pages in place (no gather);
* the vocab projection runs only for the one position per row whose logits are wanted.

Decode steps run it with one token per row, prefill calls with a chunk of tokens per row.
It computes exactly the model's function (same params tree, RoPE helpers, f32 softmax; the
engine tests check it token for token against `agentic.models.forward`).
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


def init_paged_cache(config: ModelConfig, num_pages: int, page_size: int, dtype=None) -> dict:
    """Zero KV pages {"kv": [L, num_pages, page_size, 2 * KVH, Dh]}: k and v of each KV head
    interleaved (k0, v0, k1, v1, ...), the layout of JAX's ragged paged attention kernel."""
    dtype = jnp.dtype(dtype or config.dtype)
    shape = (config.num_layers, num_pages, page_size, 2 * config.num_kv_heads, config.head_dim)
    return {"kv": jnp.zeros(shape, dtype)}


def _xla_attention(q, pages, mask, reduce_attention):
    """Attention over gathered pages [B, S, KVH, 2, Dh] with mask [B, T, S]: [B, T, H, Dh] f32."""
    B, T, H, Dh = q.shape
    KVH = pages.shape[2]
    G = H // KVH
    K, V = pages[..., 0, :], pages[..., 1, :]
    if reduce_attention and T == 1:
        # broadcast products reduced over d (then s), in the pages' own layout (no transposes):
        # XLA's CPU backend fuses each into one pass over the gathered rows, where the batched
        # einsums (B x KVH tiny matmuls) run slower; the step is bound by reading the cache
        qg = q.reshape(B, 1, KVH, G, Dh).astype(jnp.float32)
        scores = jnp.sum(qg * K[:, :, :, None].astype(jnp.float32), axis=-1) * (1.0 / math.sqrt(Dh))  # [B,S,KVH,G]
        scores = jnp.where(mask[:, 0, :, None, None], scores, NEG)
        probs = jax.nn.softmax(scores, axis=1)
        o = jnp.sum(probs[..., None] * V[:, :, :, None].astype(jnp.float32), axis=1)  # [B, KVH, G, Dh]
        return o.reshape(B, T, H, Dh)
    # matmul units (TPU, GPU), and prefill chunks
    qg = q.reshape(B, T, KVH, G, Dh)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, K, preferred_element_type=jnp.float32)
    scores = scores * (1.0 / math.sqrt(Dh))
    scores = jnp.where(mask[:, None, None], scores, NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, V, preferred_element_type=jnp.float32).reshape(B, T, H, Dh)


def ragged_kernel(q, kv_pages, kv_lens, page_indices, cu_q_lens, num_seqs, *, sm_scale):
    """JAX's Pallas TPU ragged paged attention (jax.experimental.pallas.ops.tpu), with explicit
    block sizes (its tuned table looks at the local device, a CPU when compiling ahead of time)."""
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention import kernel as rpa

    ps = kv_pages.shape[1]
    return rpa.ragged_paged_attention(q, kv_pages, kv_lens, page_indices, cu_q_lens, num_seqs, sm_scale=sm_scale,
                                      num_kv_pages_per_block=max(1, min(128 // ps, page_indices.shape[1])),
                                      num_queries_per_block=min(32, q.shape[0]))


def _pallas_attention(q, kv_layer, positions, page_table, mesh, kernel):
    """Ragged paged attention over one layer's pages [P, ps, 2 KVH, Dh]: [B, T, H, Dh].

    Row b's T queries sit at positions start_b .. start_b + T - 1 (start_b its first position,
    valid tokens first), so the kernel's causal mask (query j sees kv < kv_len - T + j + 1) is
    exact for valid tokens with kv_len = start_b + T; padded queries read unwritten positions
    of extra page-table columns (page 0) and their outputs are ignored."""
    B, T, H, Dh = q.shape
    ps = kv_layer.shape[1]
    kv_lens = jnp.maximum(positions[:, 0], 0) + T
    table = jnp.pad(page_table, ((0, 0), (0, -(-T // ps))))
    cu = jnp.arange(B + 1, dtype=jnp.int32) * T
    num = jnp.full((1,), B, jnp.int32)

    def call(qf, kvp, kv_lens, table, cu, num):
        return kernel(qf, kvp, kv_lens, table, cu, num, sm_scale=1.0 / math.sqrt(Dh))

    if mesh is not None and mesh.shape["model"] > 1:  # heads and KV heads split over "model"
        P = jax.sharding.PartitionSpec
        call = jax.shard_map(call, mesh=mesh, in_specs=(P(None, "model", None), P(None, None, "model", None),
                                                        P(), P(), P(), P()),
                             out_specs=P(None, "model", None), check_vma=False)
    out = call(q.reshape(B * T, H, Dh).astype(kv_layer.dtype), kv_layer, kv_lens, table, cu, num)
    return out.reshape(B, T, H, Dh)


def cached_forward(config: ModelConfig, params, cache, tokens, positions, page_table, *, last=None,
                   reduce_attention: bool = False, attention: str = "xla", mesh=None, kernel=ragged_kernel):
    """Logits at one position per row, and the cache with every new token's k/v written.

    Args:
      config: the model config.
      params: the model params (scanned layout, as `agentic.models.init_params`).
      cache: {"kv": [L, P, page_size, 2 * KVH, Dh]} (P pages; `init_paged_cache`).
      tokens, positions: int32 [B, T]; entries with position < 0 write nothing (a row
        of them gets garbage logits, to be ignored). A row's valid tokens come first, at
        consecutive positions.
      page_table: int32 [B, W]: row b's position p lives in page page_table[b, p // page_size];
        attention reads the W pages (W * page_size positions). Every valid position must be
        < W * page_size, and its page must belong to the row alone (pages below it may be shared).
      last: int32 [B], the index in T whose logits are returned; None: T - 1.
      reduce_attention: static; for one token per row, attention as fused multiply-reduce
        instead of einsums (faster on CPU; the engine sets it for CPU devices).
      attention: "xla" (gather the rows' pages, einsum attention: any backend) or "pallas"
        (JAX's ragged paged attention kernel: TPU).
      mesh: the engine's mesh ("pallas" with heads split over "model" runs the kernel per shard).
      kernel: the ragged paged attention function ("pallas"; tests pass JAX's reference).

    Returns:
      (logits float32 [B, V], new cache).
    """
    c = config
    dt = jnp.dtype(c.dtype)
    B, T = tokens.shape
    H, KVH, Dh = c.num_heads, c.num_kv_heads, c.head_dim
    num_pages, ps = cache["kv"].shape[1], cache["kv"].shape[2]
    W = page_table.shape[1]
    kv_len = W * ps
    valid = positions >= 0
    pos0 = jnp.maximum(positions, 0)
    page = jnp.take_along_axis(page_table, jnp.minimum(pos0 // ps, W - 1), axis=1)
    w_page = jnp.where(valid, page, num_pages)  # out of range -> dropped by the scatter
    w_off = pos0 % ps
    cos, sin = rope_cos_sin(c, pos0)  # [B, T, Dh]
    mask = jnp.arange(kv_len)[None, None, :] <= positions[:, :, None]  # [B, T, kv_len]
    layers = params["layers"]
    x = jnp.take(params["embed_tokens"]["embedding"], tokens, axis=0, mode="clip").astype(dt)  # [B, T, D]

    def layer(i, carry):
        x, ckv = carry
        lp = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), layers)
        at = lp["self_attn"]
        h = _rms(x, lp["input_layernorm"]["scale"], c.rms_norm_eps, dt)
        q = apply_rope(_proj("btd,dhk->bthk", h, at["q_proj"], dt), cos, sin)
        k = apply_rope(_proj("btd,dhk->bthk", h, at["k_proj"], dt), cos, sin)
        v = _proj("btd,dhk->bthk", h, at["v_proj"], dt)
        new = jnp.stack([k, v], axis=3).reshape(B, T, 2 * KVH, Dh)  # k0, v0, k1, v1, ...
        ckv = ckv.at[i, w_page, w_off].set(new.astype(ckv.dtype), mode="drop")
        if attention == "pallas":
            o = _pallas_attention(q, jax.lax.dynamic_index_in_dim(ckv, i, keepdims=False), positions,
                                  page_table, mesh, kernel)
        else:  # layer i's pages of each row's window, one gather: [B, kv_len, KVH, 2, Dh]
            pages = ckv[i, page_table].reshape(B, kv_len, KVH, 2, Dh)
            o = _xla_attention(q, pages, mask, reduce_attention)
        o = o.reshape(B, T, H, Dh).astype(dt)
        x = x + _proj("bthk,hkd->btd", o, at["o_proj"], dt)
        h = _rms(x, lp["post_attention_layernorm"]["scale"], c.rms_norm_eps, dt)
        m = lp["mlp"]
        g = _proj("btd,df->btf", h, m["gate_proj"], dt)
        u = _proj("btd,df->btf", h, m["up_proj"], dt)
        x = x + _proj("btf,fd->btd", jax.nn.silu(g) * u, m["down_proj"], dt)
        return x, ckv

    x, ckv = jax.lax.fori_loop(0, c.num_layers, layer, (x, cache["kv"]))
    x = x[:, -1] if last is None else jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]  # [B, D]
    x = _rms(x, params["norm"]["scale"], c.rms_norm_eps, dt)
    if c.tie_word_embeddings:
        logits = jnp.einsum("bd,vd->bv", x, params["embed_tokens"]["embedding"].astype(dt),
                            preferred_element_type=jnp.float32)
    else:
        logits = jnp.einsum("bd,dv->bv", x, params["lm_head"]["kernel"].astype(dt),
                            preferred_element_type=jnp.float32)
    return logits, {"kv": ckv}
