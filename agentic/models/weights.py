"""Mapping between our param tree and Hugging Face tensor names, and streaming assembly.

Every source (HF safetensors, GGUF) yields tensors in **HF layout** ([out, in] matrices) by HF
name; `assemble_params` builds each param leaf from them (stacking layers for the scanned
block), checks shapes, casts, and places the leaf onto its target sharding shard by shard right away,
so host memory holds at most one stacked leaf besides the (memory-mapped) source.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from agentic.models.config import ModelConfig

# (our path, hf name template ({i} = layer), hf shape fn, hf->ours, ours->hf)


def _spec(config: ModelConfig):
    D, F, V = config.hidden_size, config.intermediate_size, config.vocab_size
    H, KVH, Dh = config.num_heads, config.num_kv_heads, config.head_dim

    def lin(out_shape):  # HF [out, in] -> ours [in, *out_shape]
        def to(w):
            return w.T.reshape(w.shape[1], *out_shape)

        def back(p):
            return p.reshape(p.shape[0], -1).T

        return to, back

    def o_to(w):  # [D, H*Dh] -> [H, Dh, D]
        return w.T.reshape(H, Dh, D)

    def o_back(p):
        return p.reshape(H * Dh, D).T

    ident = (lambda w: w, lambda p: p)
    t = (lambda w: w.T, lambda p: p.T)
    L = "model.layers.{i}."
    entries = [
        (("embed_tokens", "embedding"), "model.embed_tokens.weight", (V, D), *ident),
        (("norm", "scale"), "model.norm.weight", (D,), *ident),
        (("layers", "input_layernorm", "scale"), L + "input_layernorm.weight", (D,), *ident),
        (("layers", "post_attention_layernorm", "scale"), L + "post_attention_layernorm.weight", (D,), *ident),
        (("layers", "self_attn", "q_proj", "kernel"), L + "self_attn.q_proj.weight", (H * Dh, D), *lin((H, Dh))),
        (("layers", "self_attn", "k_proj", "kernel"), L + "self_attn.k_proj.weight", (KVH * Dh, D),
         *lin((KVH, Dh))),
        (("layers", "self_attn", "v_proj", "kernel"), L + "self_attn.v_proj.weight", (KVH * Dh, D),
         *lin((KVH, Dh))),
        (("layers", "self_attn", "o_proj", "kernel"), L + "self_attn.o_proj.weight", (D, H * Dh), o_to, o_back),
        (("layers", "mlp", "gate_proj", "kernel"), L + "mlp.gate_proj.weight", (F, D), *t),
        (("layers", "mlp", "up_proj", "kernel"), L + "mlp.up_proj.weight", (F, D), *t),
        (("layers", "mlp", "down_proj", "kernel"), L + "mlp.down_proj.weight", (D, F), *t),
    ]
    if config.qkv_bias:
        for n, heads in (("q", H), ("k", KVH), ("v", KVH)):
            entries.append((("layers", "self_attn", f"{n}_proj", "bias"), L + f"self_attn.{n}_proj.bias",
                            (heads * Dh,), lambda w, h=heads: w.reshape(h, Dh), lambda p: p.reshape(-1)))
    if not config.tie_word_embeddings:
        entries.append((("lm_head", "kernel"), "lm_head.weight", (V, D), *t))
    return entries


def hf_tensor_names(config: ModelConfig) -> list[str]:
    """All HF tensor names the config needs (layers expanded)."""
    out = []
    for path, name, *_ in _spec(config):
        if path[0] == "layers":
            out += [name.format(i=i) for i in range(config.num_layers)]
        else:
            out.append(name)
    return out


def _get_path(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _set_path(tree, path, value):
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def assemble_params(config: ModelConfig, get: Callable[[str], np.ndarray], *, shardings=None,
                    source: str = "checkpoint") -> dict:
    """Builds the param tree from `get(hf_name) -> np.ndarray` (HF layout, any float dtype).

    `get` raises KeyError for a missing tensor; it is reported with the tensor name and source.
    Each leaf is cast to config.param_dtype and placed shard by shard (`place`) as soon as it is
    complete (shardings: same structure as params, or None for the default device).
    """
    dtype = np.dtype(jax.numpy.dtype(config.param_dtype))
    params: dict = {}
    for path, name, hf_shape, to, _ in _spec(config):
        args = (config, get, path, hf_shape, to, dtype, source)
        if path[0] == "layers":
            first = _fetch(name.format(i=0), *args)
            value = np.empty((config.num_layers, *first.shape), dtype)
            value[0] = first
            del first
            for i in range(1, config.num_layers):
                value[i] = _fetch(name.format(i=i), *args)
        else:
            value = _fetch(name, *args)
        sharding = None if shardings is None else _get_path(shardings, path)
        _set_path(params, path, place(value, sharding))
        del value
    return params


def place(value: np.ndarray, sharding=None) -> jax.Array:
    """A host array onto its sharding, shard by shard: each device receives only its own slice (this
    process's devices only, under multi-host), never the whole array unless the sharding replicates
    it. No sharding: the default device."""
    if sharding is None:
        return jax.device_put(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _fetch(n, config, get, path, hf_shape, to, dtype, source):
    try:
        w = get(n)
    except KeyError as e:
        detail = e.args[0] if e.args and e.args[0] != n else repr(n)
        raise KeyError(f"tensor {detail} (for param {'/'.join(path)}) is missing from {source}") from None
    if tuple(w.shape) != tuple(hf_shape):
        raise ValueError(f"tensor {n!r} in {source} has shape {tuple(w.shape)}, expected {tuple(hf_shape)} "
                         f"for the config ({config.arch}, hidden={config.hidden_size}, "
                         f"vocab={config.vocab_size}, layers={config.num_layers})")
    return np.ascontiguousarray(to(np.asarray(w)).astype(dtype, copy=False))


def iter_hf_tensors(config: ModelConfig, params):
    """Yields (hf_name, np.ndarray in HF layout) for export, one layer slice at a time."""
    for path, name, _, _, back in _spec(config):
        p = _get_path(params, path)
        if path[0] == "layers":
            host = np.asarray(jax.device_get(p))
            for i in range(config.num_layers):
                yield name.format(i=i), np.ascontiguousarray(back(host[i]))
        else:
            yield name, np.ascontiguousarray(back(np.asarray(jax.device_get(p))))
