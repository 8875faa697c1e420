"""A Flax (linen) decoder-only LM for the Llama / Qwen2 / SmolLM2 family.

Layers are **scanned** (`nn.scan` over one `Block`): every per-layer parameter has a
leading `layers` axis of size L, e.g. `params["layers"]["self_attn"]["q_proj"]["kernel"]`
is [L, D, H, Dh]. This keeps compile time flat in depth. The KV cache is
{"k": [L, B, S, KVH, Dh], "v": [L, B, S, KVH, Dh]}, scanned alongside the layers.

Parameter tree (names follow Hugging Face so loaders stay a table, not code):

  embed_tokens/embedding           [V, D]            (vocab, embed)
  layers/input_layernorm/scale     [L, D]            (layers, embed)
  layers/self_attn/q_proj/kernel   [L, D, H, Dh]     (layers, embed, heads, head_dim)
  layers/self_attn/q_proj/bias     [L, H, Dh]        (qwen2 only)
  layers/self_attn/k_proj/kernel   [L, D, KVH, Dh]   (layers, embed, kv_heads, head_dim)
  layers/self_attn/v_proj/kernel   [L, D, KVH, Dh]
  layers/self_attn/o_proj/kernel   [L, H, Dh, D]     (layers, heads, head_dim, embed)
  layers/post_attention_layernorm/scale [L, D]
  layers/mlp/{gate,up}_proj/kernel [L, D, F]         (layers, embed, mlp)
  layers/mlp/down_proj/kernel      [L, F, D]         (layers, mlp, embed)
  norm/scale                       [D]
  lm_head/kernel                   [D, V]            (untied only)

Rotary embeddings use the Hugging Face "rotate half" convention (GGUF loaders undo
llama.cpp's interleaved permutation of q/k rows).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from agentic.models.attention import NEG, blocked_attention
from agentic.models.config import ModelConfig


def _dt(name: str):
    return jnp.dtype(name)


def _param(mod: nn.Module, name: str, shape, names, init, dtype):
    return mod.param(name, nn.with_logical_partitioning(init, names), shape, dtype)


_KERNEL_INIT = nn.initializers.normal(stddev=0.02)


# ----------------------------------------------------------------------------- rotary


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """Inverse frequencies [Dh/2] (float32), with optional Llama-3 scaling (as in HF)."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    inv_freq = inv_freq.astype(np.float32)
    sc = config.rope_scaling_dict
    if sc and sc.get("rope_type", sc.get("type")) == "llama3":
        factor = float(sc["factor"])
        low = float(sc.get("low_freq_factor", 1.0))
        high = float(sc.get("high_freq_factor", 4.0))
        old_ctx = float(sc.get("original_max_position_embeddings", 8192))
        low_wl, high_wl = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        inv_l = np.where(wavelen > low_wl, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
        medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
        inv_freq = np.where(medium, smoothed, inv_l).astype(np.float32)
    return inv_freq


def rope_cos_sin(config: ModelConfig, positions):
    """cos, sin [B, T, Dh] float32 for integer positions [B, T]."""
    inv = jnp.asarray(rope_inv_freq(config))
    freqs = positions.astype(jnp.float32)[..., None] * inv  # [B, T, Dh/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin):
    """x [B, T, N, Dh]; cos/sin [B, T, Dh]. HF rotate-half convention, computed in f32."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[:, :, None, :] + rot * sin[:, :, None, :]
    return out.astype(x.dtype)


# ----------------------------------------------------------------------------- modules


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_norm(x, scale, eps: float):
    """x / rms(x) * scale over the last axis, in float32 (returns float32).

    A hand-written backward: the autodiff one reduces the scale gradient inside a
    fused graph that XLA's CPU backend runs slowly (YNNPACK); this formulation avoids it.
    """
    return _rms_norm_fwd(x, scale, eps)[0]


def _rms_norm_fwd(x, scale, eps):
    x32 = x.astype(jnp.float32)
    r = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return x32 * r * scale.astype(jnp.float32), (x, scale, r)


def _rms_norm_bwd(eps, res, g):
    x, scale, r = res
    xhat = x.astype(jnp.float32) * r
    gs = g * scale.astype(jnp.float32)
    dx = r * (gs - xhat * jnp.mean(gs * xhat, axis=-1, keepdims=True))
    dscale = (g * xhat).reshape(-1, x.shape[-1]).sum(0)
    return dx.astype(x.dtype), dscale.astype(scale.dtype)


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


@jax.custom_vjp
def swiglu(x, w_gate, w_up, w_down):
    """(silu(x @ w_gate) * (x @ w_up)) @ w_down for x [N, D], in x's dtype.

    A hand-written backward: the same matmuls as autodiff, with the gate's elementwise
    derivative in one float32 pass (XLA's CPU backend ran the autodiff version slower).
    """
    return _swiglu_fwd(x, w_gate, w_up, w_down)[0]


def _swiglu_fwd(x, w_gate, w_up, w_down):
    g, u = x @ w_gate, x @ w_up
    return (jax.nn.silu(g) * u) @ w_down, (x, w_gate, w_up, w_down, g, u)


def _swiglu_bwd(res, dy):
    x, w_gate, w_up, w_down, g, u = res
    g32, u32 = g.astype(jnp.float32), u.astype(jnp.float32)
    sig = jax.nn.sigmoid(g32)
    h = (g32 * sig * u32).astype(x.dtype)
    dh = (dy.astype(x.dtype) @ w_down.T).astype(jnp.float32)
    du = (dh * g32 * sig).astype(x.dtype)
    dg = (dh * u32 * sig * (1.0 + g32 * (1.0 - sig))).astype(x.dtype)
    dx = dg @ w_gate.T + du @ w_up.T
    return dx, x.T @ dg, x.T @ du, h.T @ dy.astype(x.dtype)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


class RMSNorm(nn.Module):
    eps: float
    dtype: str
    param_dtype: str

    @nn.compact
    def __call__(self, x):
        scale = _param(self, "scale", (x.shape[-1],), ("embed",), nn.initializers.ones, _dt(self.param_dtype))
        return rms_norm(x, scale, self.eps).astype(_dt(self.dtype))


class Proj(nn.Module):
    """A projection given by an einsum; kernel shape/axis names are explicit."""

    eq: str
    shape: tuple
    names: tuple
    dtype: str
    param_dtype: str
    bias_shape: tuple | None = None
    bias_names: tuple | None = None

    @nn.compact
    def __call__(self, x):
        dt = _dt(self.dtype)
        kernel = _param(self, "kernel", self.shape, self.names, _KERNEL_INIT, _dt(self.param_dtype))
        # The einsum contracts x's trailing dims with the kernel's leading ones: run it as one
        # 2-D matmul. Same result; XLA's CPU backward of the 3-D einsum adds transposing copies.
        xs, ks = self.eq.split("->")[0].split(",")
        n = sum(ch in xs for ch in ks)
        assert xs[-n:] == ks[:n], f"Proj needs x's trailing dims == kernel's leading dims, got {self.eq!r}"
        lead, k = x.shape[:-n], math.prod(self.shape[:n])
        y = jnp.dot(x.reshape(-1, k).astype(dt), kernel.reshape(k, -1).astype(dt))
        y = y.reshape(*lead, *self.shape[n:])
        if self.bias_shape is not None:
            b = _param(self, "bias", self.bias_shape, self.bias_names, nn.initializers.zeros,
                       _dt(self.param_dtype))
            y = y + b.astype(dt)
        return y


def _attend(qg, k, v, mask, dtype):
    """Softmax attention of grouped queries qg [B, T, KVH, G, Dh] over k, v [B, S, KVH, Dh].

    mask: bool [B, T, S]. Scores and softmax in float32; returns [B, T, KVH, G, Dh].
    """
    dt = _dt(dtype)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg.astype(dt), k.astype(dt), preferred_element_type=jnp.float32)
    scores = scores * (1.0 / math.sqrt(qg.shape[-1]))
    scores = jnp.where(mask[:, None, None, :, :], scores, NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(dt))


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, cos, sin, mask, layer_cache, write_idx):
        c = self.config
        D, H, KVH, Dh = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
        kw = dict(dtype=c.dtype, param_dtype=c.param_dtype)
        bias = c.qkv_bias
        q = Proj("btd,dhk->bthk", (D, H, Dh), ("embed", "heads", "head_dim"),
                 bias_shape=(H, Dh) if bias else None, bias_names=("heads", "head_dim"), name="q_proj", **kw)(x)
        k = Proj("btd,dhk->bthk", (D, KVH, Dh), ("embed", "kv_heads", "head_dim"),
                 bias_shape=(KVH, Dh) if bias else None, bias_names=("kv_heads", "head_dim"), name="k_proj",
                 **kw)(x)
        v = Proj("btd,dhk->bthk", (D, KVH, Dh), ("embed", "kv_heads", "head_dim"),
                 bias_shape=(KVH, Dh) if bias else None, bias_names=("kv_heads", "head_dim"), name="v_proj",
                 **kw)(x)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)

        new_cache = None
        if layer_cache is not None:
            ck, cv = layer_cache
            B, T = write_idx.shape
            bidx = jnp.broadcast_to(jnp.arange(B)[:, None], (B, T))
            ck = ck.at[bidx, write_idx].set(k.astype(ck.dtype), mode="drop")
            cv = cv.at[bidx, write_idx].set(v.astype(cv.dtype), mode="drop")
            new_cache = (ck, cv)
            k, v = ck, cv

        B, T = q.shape[:2]
        if layer_cache is None and c.attention_block:  # causal training path (see attention.py)
            dt = _dt(c.dtype)
            out = blocked_attention(q.astype(dt), k.astype(dt), v.astype(dt), mask, c.attention_block)
        else:
            out = _attend(q.reshape(B, T, KVH, H // KVH, Dh), k, v, mask, c.dtype).reshape(B, T, H, Dh)
        out = Proj("bthk,hkd->btd", (H, Dh, D), ("heads", "head_dim", "embed"), name="o_proj", **kw)(out)
        return out, new_cache


class Kernel(nn.Module):
    """Just a `kernel` parameter (for layers that do their own math, like `swiglu`)."""

    shape: tuple
    names: tuple
    param_dtype: str

    @nn.compact
    def __call__(self):
        return _param(self, "kernel", self.shape, self.names, _KERNEL_INIT, _dt(self.param_dtype))


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        D, F = c.hidden_size, c.intermediate_size
        dt = _dt(c.dtype)
        w_gate, w_up, w_down = (Kernel(shape, names, c.param_dtype, name=name)().astype(dt) for name, shape, names in (
            ("gate_proj", (D, F), ("embed", "mlp")), ("up_proj", (D, F), ("embed", "mlp")),
            ("down_proj", (F, D), ("mlp", "embed"))))
        return swiglu(x.reshape(-1, D).astype(dt), w_gate, w_up, w_down).reshape(*x.shape[:-1], D)


class Block(nn.Module):
    """One pre-norm decoder block; the scan body (carry = hidden state)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, h, layer_cache, cos, sin, mask, write_idx):
        c = self.config
        norm = dict(eps=c.rms_norm_eps, dtype=c.dtype, param_dtype=c.param_dtype)
        a, new_cache = Attention(c, name="self_attn")(
            RMSNorm(name="input_layernorm", **norm)(h), cos, sin, mask, layer_cache, write_idx)
        h = h + a
        h = h + MLP(c, name="mlp")(RMSNorm(name="post_attention_layernorm", **norm)(h))
        return h, new_cache


class Embed(nn.Module):
    vocab_size: int
    hidden_size: int
    dtype: str
    param_dtype: str

    def setup(self):
        self.embedding = _param(self, "embedding", (self.vocab_size, self.hidden_size), ("vocab", "embed"),
                                _KERNEL_INIT, _dt(self.param_dtype))

    def __call__(self, tokens):
        return jnp.take(self.embedding, tokens, axis=0, mode="clip").astype(_dt(self.dtype))

    def attend(self, h):
        dt = _dt(self.dtype)
        return jnp.einsum("btd,vd->btv", h.astype(dt), self.embedding.astype(dt),
                          preferred_element_type=jnp.float32)


class LMHead(nn.Module):
    vocab_size: int
    hidden_size: int
    dtype: str
    param_dtype: str

    @nn.compact
    def __call__(self, h):
        dt = _dt(self.dtype)
        kernel = _param(self, "kernel", (self.hidden_size, self.vocab_size), ("embed", "vocab"),
                        _KERNEL_INIT, _dt(self.param_dtype))
        return jnp.einsum("btd,dv->btv", h.astype(dt), kernel.astype(dt), preferred_element_type=jnp.float32)


class Transformer(nn.Module):
    config: ModelConfig

    def setup(self):
        c = self.config
        self.embed_tokens = Embed(c.vocab_size, c.hidden_size, c.dtype, c.param_dtype)
        block = Block
        if c.remat:
            block = nn.remat(Block, prevent_cse=False)
        self.layers = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
            length=c.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(c)
        self.norm = RMSNorm(c.rms_norm_eps, c.dtype, c.param_dtype)
        if not c.tie_word_embeddings:
            self.lm_head = LMHead(c.vocab_size, c.hidden_size, c.dtype, c.param_dtype)

    def __call__(self, tokens, positions, *, segment_ids=None, cache=None, return_hidden=False):
        """tokens, positions: int32 [B, T]. See agentic/models/__init__.py and MODEL_API.md.

        Training path (cache None): causal attention within equal nonzero segment_ids.
        Cache path: new k/v written at cache index positions[b, t] (skipped where position < 0
        or segment_ids == 0); a query at position p attends cache indices <= p.
        Returns (logits float32 [B, T, V] or final-normed hidden [B, T, D], new_cache or None).
        """
        tokens = jnp.asarray(tokens, jnp.int32)
        positions = jnp.asarray(positions, jnp.int32)
        B, T = tokens.shape
        cos, sin = rope_cos_sin(self.config, jnp.maximum(positions, 0))
        h = self.embed_tokens(tokens)
        if cache is None:
            seg = jnp.ones((B, T), jnp.int32) if segment_ids is None else jnp.asarray(segment_ids, jnp.int32)
            idx = jnp.arange(T)
            causal = idx[None, :] <= idx[:, None]  # [T(q), T(k)]
            same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
            mask = causal[None] & same
            h, _ = self.layers(h, None, cos, sin, mask, None)
            new_cache = None
        else:
            S = cache["k"].shape[2]
            valid = positions >= 0
            if segment_ids is not None:
                valid = valid & (jnp.asarray(segment_ids) != 0)
            write_idx = jnp.where(valid, positions, S)  # out of range -> dropped
            mask = jnp.arange(S)[None, None, :] <= positions[:, :, None]  # [B, T, S]
            h, (nk, nv) = self.layers(h, (cache["k"], cache["v"]), cos, sin, mask, write_idx)
            new_cache = {"k": nk, "v": nv}
        h = self.norm(h)
        if return_hidden:
            return h, new_cache
        return self.logits_from_hidden(h), new_cache

    def logits_from_hidden(self, hidden):
        """Final-normed hidden [B, T, D] -> float32 logits [B, T, V]."""
        if self.config.tie_word_embeddings:
            return self.embed_tokens.attend(hidden)
        return self.lm_head(hidden)
