"""Flax causal LMs (Llama / Qwen2 family), loading, export, tokenizers.

The contract other packages code against is .notes/MODEL_API.md. Functional API:

    config = get_config("tiny")
    params = init_params(config, jax.random.key(0))
    logits, _ = forward(config, params, tokens, positions)                    # training path
    cache = init_cache(config, batch, max_len)
    logits, cache = forward(config, params, tokens, positions, cache=cache)   # prefill / decode
    lp = token_logprobs(config, params, tokens, targets, positions)           # chunked, differentiable

Layers are scanned: per-layer params have a leading "layers" axis (see transformer.py).
All functions take the (hashable, frozen) config first so they jit with static_argnums=0.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from agentic.models.config import ModelConfig
from agentic.models.registry import get_config, list_models, register
from agentic.models.transformer import Transformer

__all__ = [
    "ModelConfig", "Transformer", "get_config", "list_models", "register", "init_params",
    "param_logical_axes", "init_cache", "forward", "token_logprobs", "logprobs_from_hidden", "load_model",
    "load_config",
    "export_hf", "load_tokenizer",
]


def _dummy_inputs():
    return jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, 1), jnp.int32)


@functools.partial(jax.jit, static_argnums=0)
def _init(config: ModelConfig, rng):
    # Initializes leaves straight from their shapes (norm scales 1, biases 0, kernels N(0, 0.02)):
    # the same distribution as Transformer.init, without compiling a forward pass.
    shapes = param_shapes(config)
    flat, tree = jax.tree_util.tree_flatten_with_path(shapes)
    dtype = jnp.dtype(config.param_dtype)
    kernels = [s.size for path, s in flat if path[-1].key not in ("scale", "bias")]
    one_draw = sum(kernels) <= (1 << 26)  # small models: one RNG op (compiles fast); big: one per leaf
    noise = 0.02 * jax.random.normal(rng, (sum(kernels),), jnp.float32) if one_draw else None
    keys = jax.random.split(rng, len(flat))
    out, off = [], 0
    for (path, s), k in zip(flat, keys, strict=True):
        leaf = path[-1].key
        if leaf == "scale":
            out.append(jnp.ones(s.shape, dtype))
        elif leaf == "bias":
            out.append(jnp.zeros(s.shape, dtype))
        else:
            if one_draw:
                out.append(noise[off:off + s.size].reshape(s.shape).astype(dtype))
                off += s.size
            else:
                out.append((0.02 * jax.random.normal(k, s.shape, jnp.float32)).astype(dtype))
    return jax.tree.unflatten(tree, out)


def init_params(config: ModelConfig, rng) -> dict:
    """Random-init params: a plain nested dict of arrays (no boxed metadata)."""
    return _init(config, rng)


def _boxed_shapes(config: ModelConfig):
    tokens, positions = _dummy_inputs()
    return jax.eval_shape(lambda: Transformer(config).init(jax.random.key(0), tokens, positions))["params"]


def param_logical_axes(config: ModelConfig) -> dict:
    """Same structure as params; each leaf a tuple of logical axis names (or None) per dim.

    Names: vocab, embed, heads, kv_heads, head_dim, mlp, layers. Tuples are pytree nodes, so
    map over this with `is_leaf=lambda x: isinstance(x, tuple)`.
    """
    boxed = _boxed_shapes(config)
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)  # noqa: E731
    return jax.tree.map(lambda x: tuple(x.names) if is_box(x) else (None,) * len(x.shape), boxed,
                        is_leaf=is_box)


def param_shapes(config: ModelConfig) -> dict:
    """Same structure as params; jax.ShapeDtypeStruct leaves (no allocation)."""
    return nn.meta.unbox(_boxed_shapes(config))


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None) -> dict:
    """Zero KV cache {"k", "v"}: [L, B, S, KVH, Dh] each, in `dtype` (default: compute dtype)."""
    dtype = jnp.dtype(dtype or config.dtype)
    shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def forward(config: ModelConfig, params, tokens, positions, *, segment_ids=None, cache=None,
            return_hidden=False):
    """(logits float32 [B, T, V], new cache or None). See Transformer.__call__ for the semantics."""
    return Transformer(config).apply({"params": params}, tokens, positions, segment_ids=segment_ids,
                                     cache=cache, return_hidden=return_hidden)


def logits_from_hidden(config: ModelConfig, params, hidden):
    return Transformer(config).apply({"params": params}, hidden, method=Transformer.logits_from_hidden)


def token_logprobs(config: ModelConfig, params, tokens, targets, positions, *, segment_ids=None,
                   temperature=1.0, chunk_size=512, return_entropy=False):
    """log_softmax(logits / temperature)[targets] as float32 [B, T] (+ entropy [B, T] if asked).

    The vocab projection + log-softmax run over chunks of `chunk_size` positions under
    jax.checkpoint inside a scan, so neither the forward nor the backward pass holds the full
    [B, T, V] float32 logits. temperature 0 means greedy, scored as temperature 1.
    Targets outside [0, V) are clipped (mask them in the loss).
    """
    hidden, _ = forward(config, params, tokens, positions, segment_ids=segment_ids, return_hidden=True)
    return logprobs_from_hidden(config, params, hidden, targets, temperature=temperature, chunk_size=chunk_size,
                                return_entropy=return_entropy)


def logprobs_from_hidden(config: ModelConfig, params, hidden, targets, *, temperature=1.0, chunk_size=512,
                         return_entropy=False):
    """`token_logprobs` from final-normed hidden states [B, T, D] (the chunked vocab part)."""
    B, T, D = hidden.shape
    c = max(1, min(int(chunk_size), T))
    n = -(-T // c)
    pad = n * c - T
    targets = jnp.clip(jnp.asarray(targets, jnp.int32), 0, config.vocab_size - 1)
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    hs = hidden.reshape(B, n, c, D).swapaxes(0, 1)
    ts = targets.reshape(B, n, c).swapaxes(0, 1)
    temp = jnp.asarray(temperature, jnp.float32)
    temp = jnp.where(temp > 0, temp, 1.0)

    @jax.checkpoint
    def chunk(params, h, t):
        logits = logits_from_hidden(config, params, h).astype(jnp.float32) / temp
        # one exp pass shared by the log-partition and the entropy
        m = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
        e = jnp.exp(logits - m)
        z = jnp.sum(e, axis=-1)
        lse = m[..., 0] + jnp.log(z)
        lp = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0] - lse
        ent = lse - jnp.sum(e * logits, axis=-1) / z if return_entropy else jnp.zeros_like(lp)
        return lp, ent

    def body(carry, xs):
        return carry, chunk(params, *xs)

    _, (lp, ent) = jax.lax.scan(body, None, (hs, ts))
    lp = lp.swapaxes(0, 1).reshape(B, n * c)[:, :T]
    if return_entropy:
        return lp, ent.swapaxes(0, 1).reshape(B, n * c)[:, :T]
    return lp


def load_model(name_or_path: str, *, dtype: str | None = None, shardings=None):
    """(config, params, tokenizer) from a registry name, a HF checkpoint dir or a .gguf path."""
    from agentic.models.loading import load_model as _load

    return _load(name_or_path, dtype=dtype, shardings=shardings)


def load_config(name_or_path: str, *, dtype: str | None = None) -> ModelConfig:
    """The ModelConfig `load_model` would return, without reading weights."""
    from agentic.models.loading import load_config as _load

    return _load(name_or_path, dtype=dtype)


def export_hf(config: ModelConfig, params, out_dir: str, tokenizer=None) -> None:
    """Writes config.json + model.safetensors (+ tokenizer files) in Hugging Face layout."""
    from agentic.models.hf import export_hf as _export

    return _export(config, params, out_dir, tokenizer=tokenizer)


def load_tokenizer(name_or_path: str):
    """Tokenizer for a registry name, HF dir (tokenizer.json) or .gguf path."""
    from agentic.models.loading import load_tokenizer as _load

    return _load(name_or_path)
