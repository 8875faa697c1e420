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
from collections.abc import Sequence
from typing import Any, NamedTuple

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


def _xla_attention(q, K, V, mask, reduce_attention):
    """Attention over gathered keys / values [B, S, KVH, Dh] with mask [B, T, S]: [B, T, H, Dh] f32."""
    B, T, H, Dh = q.shape
    KVH = K.shape[2]
    G = H // KVH
    if reduce_attention and T == 1:
        # broadcast products reduced over d, then s, in a dense cache's [B, KVH, S, Dh] order: XLA's
        # CPU backend fuses each into one pass over the gathered rows, where the batched einsums
        # (B x KVH tiny matmuls) run slower; reducing over s in the pages' own [B, S, KVH] layout
        # (with one gather of interleaved pages) took 1.3-1.5x as long (bench/decode_attention.py)
        qg = q.reshape(B, KVH, G, 1, Dh).astype(jnp.float32)
        Kt = K.transpose(0, 2, 1, 3)[:, :, None].astype(jnp.float32)  # [B, KVH, 1, S, Dh]
        scores = jnp.sum(qg * Kt, axis=-1) * (1.0 / math.sqrt(Dh))  # [B, KVH, G, S]
        scores = jnp.where(mask[:, 0, None, None, :], scores, NEG)
        probs = jax.nn.softmax(scores, axis=-1)
        Vt = V.transpose(0, 2, 1, 3)[:, :, None].astype(jnp.float32)
        o = jnp.sum(probs[..., None] * Vt, axis=-2)  # [B, KVH, G, Dh]
        return o.reshape(B, T, H, Dh)
    # matmul units (TPU, GPU), and prefill chunks
    qg = q.reshape(B, T, KVH, G, Dh)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, K, preferred_element_type=jnp.float32)
    scores = scores * (1.0 / math.sqrt(Dh))
    scores = jnp.where(mask[:, None, None], scores, NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, V, preferred_element_type=jnp.float32).reshape(B, T, H, Dh)


def gather_window(kv, layer, page_table):
    """Layer `layer`'s keys and values of each row's window of pages (XLA path): two
    [B, W * page_size, KVH, Dh] from the cache's "kv" [L, P, page_size, 2 * KVH, Dh] and page_table
    [B, W]. Keys and values are gathered apart, not as interleaved pages split afterwards (on CPU
    that form, with its reduction over s in the pages' layout, made decode attention 1.3-1.5x
    slower: bench/decode_attention.py)."""
    L, P, ps, two_kvh, Dh = kv.shape
    B, W = page_table.shape
    kv6 = kv.reshape(L, P, ps, two_kvh // 2, 2, Dh)
    return (kv6[layer, page_table, :, :, 0].reshape(B, W * ps, two_kvh // 2, Dh),
            kv6[layer, page_table, :, :, 1].reshape(B, W * ps, two_kvh // 2, Dh))


def ragged_kernel(q, kv_pages, kv_lens, page_indices, cu_q_lens, num_seqs, *, sm_scale):
    """JAX's Pallas TPU ragged paged attention (jax.experimental.pallas.ops.tpu), with explicit
    block sizes (its tuned table looks at the local device, a CPU when compiling ahead of time)."""
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention import kernel as rpa

    ps = kv_pages.shape[1]
    return rpa.ragged_paged_attention(q, kv_pages, kv_lens, page_indices, cu_q_lens, num_seqs, sm_scale=sm_scale,
                                      num_kv_pages_per_block=max(1, min(128 // ps, page_indices.shape[1])),
                                      num_queries_per_block=min(32, q.shape[0]))


class Segment(NamedTuple):
    """Rows of one shape in a forward call: int32 tokens / positions [B, T], page table [B, W],
    the index in T whose logits are wanted (int32 [B], or None: T - 1), and (static) whether
    one-token attention runs as a fused multiply-reduce (CPU decode)."""
    tokens: Any
    positions: Any
    page_table: Any
    last: Any = None
    reduce_attention: bool = False


def _pallas_attention(q, kv_layer, positions, page_table, mesh, kernel):
    """Ragged paged attention over one layer's pages [P, ps, 2 KVH, Dh]: [B, T, H, Dh] (one segment)."""
    B, T, H, Dh = q.shape
    out = _pallas_ragged([q.reshape(B * T, H, Dh)], kv_layer, [positions], [page_table], mesh, kernel)
    return out.reshape(B, T, H, Dh)


def _pallas_ragged(qs, kv_layer, positions, page_tables, mesh, kernel):
    """One call of the ragged kernel for every segment's rows: [sum B_i T_i, H, Dh].

    qs[i] is segment i's queries flattened [B_i * T_i, H, Dh]. Row b's T queries sit at
    positions start_b .. start_b + T - 1 (start_b its first position, valid tokens first), so
    the kernel's causal mask (query j sees kv < kv_len - T + j + 1) is exact for valid tokens
    with kv_len = start_b + T; padded queries read unwritten positions of extra page-table
    columns (page 0) and their outputs are ignored. Page tables are padded to one width."""
    ps = kv_layer.shape[1]
    width = max(t.shape[1] + -(-pos.shape[1] // ps) for t, pos in zip(page_tables, positions, strict=True))
    kv_lens, tables, cu, n = [], [], [jnp.zeros((1,), jnp.int32)], 0
    for pos, table in zip(positions, page_tables, strict=True):
        B, T = pos.shape
        kv_lens.append(jnp.maximum(pos[:, 0], 0) + T)
        tables.append(jnp.pad(table, ((0, 0), (0, width - table.shape[1]))))
        cu.append(n + jnp.arange(1, B + 1, dtype=jnp.int32) * T)
        n += B * T
    kv_lens, table, cu = jnp.concatenate(kv_lens), jnp.concatenate(tables), jnp.concatenate(cu)
    num = jnp.full((1,), kv_lens.shape[0], jnp.int32)
    q = jnp.concatenate(qs) if len(qs) > 1 else qs[0]
    Dh = q.shape[-1]

    def call(qf, kvp, kv_lens, table, cu, num):
        return kernel(qf, kvp, kv_lens, table, cu, num, sm_scale=1.0 / math.sqrt(Dh))

    if mesh is not None and mesh.shape["model"] > 1:  # heads and KV heads split over "model"
        P = jax.sharding.PartitionSpec
        call = jax.shard_map(call, mesh=mesh, in_specs=(P(None, "model", None), P(None, None, "model", None),
                                                        P(), P(), P(), P()),
                             out_specs=P(None, "model", None), check_vma=False)
    return call(q.astype(kv_layer.dtype), kv_layer, kv_lens, table, cu, num)


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
    seg = Segment(tokens, positions, page_table, last, reduce_attention)
    logits, cache = ragged_forward(config, params, cache, [seg], attention=attention, mesh=mesh, kernel=kernel)
    return logits, cache


def ragged_forward(config: ModelConfig, params, cache, segments: Sequence[Segment], *, attention: str = "xla",
                   mesh=None, kernel=ragged_kernel):
    """One forward pass over several segments of rows (e.g. decode rows with one token each and
    prefill rows with a chunk each: a mixed step), weights read once.

    Every segment's tokens are flattened into one token axis for the projections, the MLP and
    the KV write (one scatter per layer); attention runs per segment on the XLA path (each
    with its own page table and window) or as one ragged kernel call over all of them on the
    Pallas path. Each segment is as `cached_forward`'s arguments.

    Returns:
      (logits float32 [sum of rows, V]: segment 0's rows first, new cache).
    """
    c = config
    dt = jnp.dtype(c.dtype)
    H, KVH, Dh = c.num_heads, c.num_kv_heads, c.head_dim
    num_pages, ps = cache["kv"].shape[1], cache["kv"].shape[2]
    shapes = [s.tokens.shape for s in segments]
    sizes = [b * t for b, t in shapes]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    w_page, w_off, cos, sin, masks = [], [], [], [], []
    for s, (B, T) in zip(segments, shapes, strict=True):
        W = s.page_table.shape[1]
        valid = s.positions >= 0
        pos0 = jnp.maximum(s.positions, 0)
        page = jnp.take_along_axis(s.page_table, jnp.minimum(pos0 // ps, W - 1), axis=1)
        w_page.append(jnp.where(valid, page, num_pages).reshape(-1))  # out of range -> dropped by the scatter
        w_off.append((pos0 % ps).reshape(-1))
        cs, sn = rope_cos_sin(c, pos0)  # [B, T, Dh]
        cos.append(cs.reshape(B * T, -1))
        sin.append(sn.reshape(B * T, -1))
        masks.append(jnp.arange(W * ps)[None, None, :] <= s.positions[:, :, None])  # [B, T, W * ps]
    w_page, w_off = jnp.concatenate(w_page), jnp.concatenate(w_off)
    cos, sin = jnp.concatenate(cos)[None], jnp.concatenate(sin)[None]  # [1, N, Dh]
    tokens = jnp.concatenate([s.tokens.reshape(-1) for s in segments])
    layers = params["layers"]
    x = jnp.take(params["embed_tokens"]["embedding"], tokens, axis=0, mode="clip").astype(dt)[None]  # [1, N, D]
    N = x.shape[1]

    def layer(i, carry):
        x, ckv = carry
        lp = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), layers)
        at = lp["self_attn"]
        h = _rms(x, lp["input_layernorm"]["scale"], c.rms_norm_eps, dt)
        q = apply_rope(_proj("btd,dhk->bthk", h, at["q_proj"], dt), cos, sin)[0]  # [N, H, Dh]
        k = apply_rope(_proj("btd,dhk->bthk", h, at["k_proj"], dt), cos, sin)[0]
        v = _proj("btd,dhk->bthk", h, at["v_proj"], dt)[0]
        new = jnp.stack([k, v], axis=2).reshape(N, 2 * KVH, Dh)  # k0, v0, k1, v1, ...
        ckv = ckv.at[i, w_page, w_off].set(new.astype(ckv.dtype), mode="drop")
        qs = [q[o:o + n] for o, n in zip(offsets, sizes, strict=True)]
        if attention == "pallas":
            o = _pallas_ragged(qs, jax.lax.dynamic_index_in_dim(ckv, i, keepdims=False),
                               [s.positions for s in segments], [s.page_table for s in segments], mesh, kernel)
        else:  # per segment, layer i's keys and values of each row's window: [B, W * ps, KVH, Dh] each
            outs = []
            for s, (B, T), qi, mask in zip(segments, shapes, qs, masks, strict=True):
                K, V = gather_window(ckv, i, s.page_table)
                red = s.reduce_attention and T == 1
                outs.append(_xla_attention(qi.reshape(B, T, H, Dh), K, V, mask, red).reshape(B * T, H, Dh))
            o = jnp.concatenate(outs) if len(outs) > 1 else outs[0]
        o = o.reshape(1, N, H, Dh).astype(dt)
        x = x + _proj("bthk,hkd->btd", o, at["o_proj"], dt)
        h = _rms(x, lp["post_attention_layernorm"]["scale"], c.rms_norm_eps, dt)
        m = lp["mlp"]
        g = _proj("btd,df->btf", h, m["gate_proj"], dt)
        u = _proj("btd,df->btf", h, m["up_proj"], dt)
        x = x + _proj("btf,fd->btd", jax.nn.silu(g) * u, m["down_proj"], dt)
        return x, ckv

    x, ckv = jax.lax.fori_loop(0, c.num_layers, layer, (x, cache["kv"]))
    picks = []  # the one position per row whose logits are wanted
    for s, (B, T), o in zip(segments, shapes, offsets, strict=True):
        last = jnp.full((B,), T - 1, jnp.int32) if s.last is None else s.last
        picks.append(o + jnp.arange(B, dtype=jnp.int32) * T + last)
    x = jnp.take(x[0], jnp.concatenate(picks), axis=0)  # [rows, D]
    x = _rms(x, params["norm"]["scale"], c.rms_norm_eps, dt)
    if c.tie_word_embeddings:
        logits = jnp.einsum("bd,vd->bv", x, params["embed_tokens"]["embedding"].astype(dt),
                            preferred_element_type=jnp.float32)
    else:
        logits = jnp.einsum("bd,dv->bv", x, params["lm_head"]["kernel"].astype(dt),
                            preferred_element_type=jnp.float32)
    return logits, {"kv": ckv}
