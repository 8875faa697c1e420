"""The engine's compiled programs: prefill, decode, mixed (decode rows + prefill chunks in one
pass) and page copy, and their shardings.

`EnginePrograms` jits each program once with the engine's shardings (the cache donated, so
every call updates it in place) and can lower each at its largest shapes from abstract
arguments (`lower`), the AOT check's entry point: nothing is allocated or executed.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from agentic import models, sharding
from agentic.inference.decode_model import Segment, cached_forward, ragged_forward
from agentic.inference.engine_config import EngineConfig
from agentic.inference.sampling import sample


def engine_mesh(devices, tp_size: int) -> Mesh:
    """The engine's (data, model) mesh: `tp_size` devices per model replica, the rest split the rows."""
    devices = list(devices)
    if len(devices) % tp_size:
        raise ValueError(f"tp_size {tp_size} does not divide the {len(devices)} devices")
    return Mesh(np.array(devices).reshape(len(devices) // tp_size, tp_size), ("data", "model"))


def param_shardings(config: models.ModelConfig, params: Any, mesh: Mesh) -> Any:
    """NamedShardings for params: heads, MLP and vocab split over "model" where divisible."""
    return sharding.tree_shardings(params, models.param_logical_axes(config), mesh, sharding.ENGINE_RULES)


def kv_repeat(config: models.ModelConfig, tp_size: int) -> int:
    """How many copies of each KV head the engine serves: tp_size / KV heads when tensor
    parallelism exceeds the KV heads (and is a multiple of them), so each device holds one KV
    head's cache and projections instead of all of them; 1 otherwise (KV heads split evenly, or
    left replicated over "model" when neither divides the other)."""
    kvh = config.num_kv_heads
    return tp_size // kvh if tp_size > kvh and tp_size % kvh == 0 else 1


def served_config(config: models.ModelConfig, tp_size: int) -> models.ModelConfig:
    """The model as served: `kv_repeat` copies of each KV head (the same function: query head h
    still reads a copy of KV head h // (heads / KV heads))."""
    r = kv_repeat(config, tp_size)
    return config if r == 1 else dataclasses.replace(config, num_kv_heads=config.num_kv_heads * r)


def repeat_kv_heads(params: Any, r: int) -> Any:
    """Params with each KV head's k / v projection (kernel [L, D, KVH, Dh], bias [L, KVH, Dh])
    repeated r times, consecutively (`served_config`'s layout)."""
    if r == 1:
        return params
    attn = dict(params["layers"]["self_attn"])
    for name in ("k_proj", "v_proj"):
        attn[name] = {k: jnp.repeat(v, r, axis=-2) for k, v in attn[name].items()}
    return {**params, "layers": {**params["layers"], "self_attn": attn}}


def cache_shape(config: models.ModelConfig, ec: EngineConfig) -> tuple[int, ...]:
    """[L, pages, page_size, 2 * KVH, Dh]: the cache's "kv" (k and v interleaved per KV head)."""
    return (config.num_layers, ec.total_pages, ec.page_size, 2 * config.num_kv_heads, config.head_dim)


def cache_sharding(config: models.ModelConfig, ec: EngineConfig, mesh: Mesh) -> NamedSharding:
    """Pages over "data" (when it divides them), KV heads over "model" (when it divides them)."""
    n_data, n_model = mesh.shape["data"], mesh.shape["model"]
    return NamedSharding(mesh, P(None, "data" if n_data > 1 and ec.total_pages % n_data == 0 else None, None,
                                 "model" if config.num_kv_heads % n_model == 0 else None, None))


def attention_impl(config: models.ModelConfig, ec: EngineConfig, mesh: Mesh, platform: str) -> str:
    """"pallas" (JAX's ragged paged attention kernel) on TPU when the KV heads split evenly over
    "model", pages are not split over "data" and head_dim is a multiple of 128 (the kernel's
    lanes); otherwise "xla". `ec.attention` forces one."""
    fits = (mesh.shape["data"] == 1 and config.num_kv_heads % mesh.shape["model"] == 0
            and config.head_dim % 128 == 0)
    if ec.attention == "pallas" and not (platform == "tpu" and fits):
        raise ValueError(f"attention='pallas' needs TPU devices (got {platform}), one data shard, KV heads "
                         f"({config.num_kv_heads}) divisible by tp_size ({mesh.shape['model']}) and head_dim "
                         f"({config.head_dim}) a multiple of 128")
    if ec.attention == "auto":
        return "pallas" if platform == "tpu" and fits else "xla"
    return ec.attention


def sampling_shapes(rows: int) -> tuple:
    """(temperature, top_k, top_p, seeds, steps) dtypes and shapes for `rows` rows."""
    return ((rows,), np.float32), ((rows,), np.int32), ((rows,), np.float32), ((rows,), np.int32), \
        ((rows,), np.int32)


class EnginePrograms:
    """The jitted prefill / decode / mixed / page-copy programs of one engine.

    `mixed` runs one forward pass over decode rows (one token each, a window of pages) and
    prefill rows (a chunk each, a max_len page table): the weights are read once for both,
    the new tokens' KV written in one scatter, and on TPU attention is one ragged kernel call;
    its sampling arrays are the decode rows' followed by the prefill rows'.

    Args:
      config: the model config.
      ec: the engine config.
      mesh: the engine's ("data", "model") mesh.
      cache_sharding: the KV cache's sharding.
      reduce_attention: decode attention as multiply-reduce (CPU).
      attention: "xla" or "pallas" (`attention_impl`).
      counts: incremented with each program's name and shape every time one is traced.
    """

    def __init__(self, config: models.ModelConfig, ec: EngineConfig, mesh: Mesh, cache_sharding: NamedSharding,
                 reduce_attention: bool, counts: collections.Counter, attention: str = "xla"):
        self.config, self.ec, self.mesh = config, ec, mesh
        rep = NamedSharding(mesh, P())
        self.replicated = rep
        cs = {"kv": cache_sharding}
        self.attention = attention
        ps = ec.page_size

        def prefill(params, cache, page_table, tokens, positions, last, temp, top_k, top_p, seeds, steps):
            counts[f"prefill[{tokens.shape[0]}x{tokens.shape[1]}xkv{page_table.shape[1] * ps}]"] += 1
            logits, cache = cached_forward(config, params, cache, tokens, positions, page_table, last=last,
                                           attention=attention, mesh=mesh)
            tok, lp = sample(logits, temp, top_k, top_p, seeds, steps)
            return cache, tok, lp

        def decode(params, cache, page_table, tokens, positions, temp, top_k, top_p, seeds, steps):
            counts[f"decode[{tokens.shape[0]}xkv{page_table.shape[1] * ps}]"] += 1
            logits, cache = cached_forward(config, params, cache, tokens[:, None], positions[:, None], page_table,
                                           reduce_attention=reduce_attention, attention=attention, mesh=mesh)
            tok, lp = sample(logits, temp, top_k, top_p, seeds, steps)
            return cache, tok, lp

        def mixed(params, cache, d_table, d_tokens, d_positions, p_table, p_tokens, p_positions, p_last,
                  temp, top_k, top_p, seeds, steps):
            counts[f"mixed[{d_tokens.shape[0]}xkv{d_table.shape[1] * ps}+{p_tokens.shape[0]}x{p_tokens.shape[1]}"
                   f"xkv{p_table.shape[1] * ps}]"] += 1
            segments = [Segment(d_tokens[:, None], d_positions[:, None], d_table, None, reduce_attention),
                        Segment(p_tokens, p_positions, p_table, p_last)]
            logits, cache = ragged_forward(config, params, cache, segments, attention=attention, mesh=mesh)
            tok, lp = sample(logits, temp, top_k, top_p, seeds, steps)
            return cache, tok, lp

        def copy_page(cache, src, dst):
            counts["copy_page"] += 1
            return jax.tree.map(lambda c: c.at[:, dst].set(c[:, src]), cache)

        self.prefill = jax.jit(prefill, donate_argnums=(1,), out_shardings=(cs, rep, rep))
        self.decode = jax.jit(decode, donate_argnums=(1,), out_shardings=(cs, rep, rep))
        self.mixed = jax.jit(mixed, donate_argnums=(1,), out_shardings=(cs, rep, rep))
        self.copy_page = jax.jit(copy_page, donate_argnums=(0,), out_shardings=cs)

    def lower(self, params: Any, cache: Any, prefill_rows: int, prefill_tokens: int, decode_rows: int,
              decode_pages: int, mixed: bool = True) -> dict[str, jax.stages.Lowered]:
        """Every program lowered from abstract arguments at the given (largest) shapes.

        Args:
          params, cache: pytrees of ShapeDtypeStructs carrying their NamedShardings.
          prefill_rows, prefill_tokens: the prefill shape (rows x tokens).
          decode_rows, decode_pages: the decode shape (rows x page-table width).
          mixed: also the mixed program (both shapes in one pass).
        """
        rep = self.replicated

        def sds(shape, dtype=np.int32):
            return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=rep)

        def samp(rows):
            return tuple(sds(s, d) for s, d in sampling_shapes(rows))

        R, T, B, W = prefill_rows, prefill_tokens, decode_rows, decode_pages
        out = {
            "engine_prefill": self.prefill.lower(params, cache, sds((R, W)), sds((R, T)), sds((R, T)), sds((R,)),
                                          *samp(R)),
            "engine_decode": self.decode.lower(params, cache, sds((B, W)), sds((B,)), sds((B,)), *samp(B)),
            "engine_copy_page": self.copy_page.lower(cache, sds(()), sds(())),
        }
        if mixed:
            out["engine_mixed"] = self.mixed.lower(params, cache, sds((B, W)), sds((B,)), sds((B,)), sds((R, W)),
                                                   sds((R, T)), sds((R, T)), sds((R,)), *samp(B + R))
        return out
