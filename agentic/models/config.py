"""ModelConfig: the hyperparameters of a Llama / Qwen2-family decoder-only LM."""

from __future__ import annotations

import dataclasses
from typing import Any

ARCHS = ("llama", "qwen2")
DTYPES = ("float32", "bfloat16", "float16")


def rope_scaling_tuple(scaling: dict | tuple | None) -> tuple | None:
    """Normalizes a HF `rope_scaling` dict into a hashable sorted tuple of (key, value)."""
    if scaling is None:
        return None
    if isinstance(scaling, dict):
        items = scaling.items()
    else:
        items = tuple(scaling)
    out = []
    for k, v in items:
        if isinstance(v, list):
            v = tuple(v)
        out.append((str(k), v))
    return tuple(sorted(out))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Hyperparameters of a Llama / Qwen2 / SmolLM2 causal LM.

    Attributes:
      arch: "llama" or "qwen2" (qwen2 = llama + q/k/v bias).
      vocab_size: rows of the embedding table.
      hidden_size: model width D.
      intermediate_size: SwiGLU hidden width F.
      num_layers: transformer blocks L.
      num_heads: query heads H.
      num_kv_heads: key/value heads (GQA); must divide num_heads.
      head_dim: per-head width Dh (usually hidden_size // num_heads).
      rope_theta: rotary base.
      rope_scaling: None or Llama-3 scaling as a sorted tuple of (key, value)
        pairs with keys rope_type="llama3", factor, low_freq_factor,
        high_freq_factor, original_max_position_embeddings.
      rms_norm_eps: RMSNorm epsilon.
      tie_word_embeddings: output projection shares the embedding table.
      qkv_bias: q/k/v projections have a bias (Qwen2).
      max_position_embeddings: informational (longest context trained on).
      dtype: compute dtype ("float32" or "bfloat16").
      param_dtype: dtype params are created / loaded in.
      remat: rematerialize each block in the backward pass.
      attention_block: query block size of the training path's causal attention
        (`attention.blocked_attention`): a query block attends only keys up to its own
        end, and the backward recomputes probabilities instead of storing [T, T] of
        them. 0 = the plain one-block softmax attention (the reference it is tested on).
    """

    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: tuple | None = None
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    qkv_bias: bool = False
    max_position_embeddings: int = 8192
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    attention_block: int = 128

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"unknown architecture {self.arch!r}; supported: {ARCHS}")
        for f in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                  "num_kv_heads", "head_dim"):
            if int(getattr(self, f)) <= 0:
                raise ValueError(f"{f} must be positive, got {getattr(self, f)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads}) for GQA")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if int(self.attention_block) < 0:
            raise ValueError(f"attention_block must be >= 0, got {self.attention_block}")
        for f in ("dtype", "param_dtype"):
            if getattr(self, f) not in DTYPES:
                raise ValueError(f"{f} must be one of {DTYPES}, got {getattr(self, f)!r}")
        if isinstance(self.rope_scaling, dict) or isinstance(self.rope_scaling, list):
            object.__setattr__(self, "rope_scaling", rope_scaling_tuple(self.rope_scaling))
        if self.rope_scaling is not None:
            d = dict(self.rope_scaling)
            kind = d.get("rope_type", d.get("type"))
            if kind not in ("llama3", "default", None):
                raise ValueError(f"unsupported rope_scaling type {kind!r} (supported: llama3)")

    def replace(self, **kw: Any) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    @property
    def rope_scaling_dict(self) -> dict | None:
        return None if self.rope_scaling is None else dict(self.rope_scaling)

    def num_params(self) -> int:
        """Parameter count (embedding counted once when tied)."""
        D, F, V, L = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_layers
        q = D * self.num_heads * self.head_dim
        kv = 2 * D * self.num_kv_heads * self.head_dim
        o = self.num_heads * self.head_dim * D
        bias = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim if self.qkv_bias else 0
        per_layer = q + kv + o + bias + 3 * D * F + 2 * D
        return V * D * (1 if self.tie_word_embeddings else 2) + L * per_layer + D

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: 2 * matmul params + attention (causal, ~seq_len/2 keys)."""
        D, F, V, L = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_layers
        Hd, KVd = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        matmul = L * (D * Hd + 2 * D * KVd + Hd * D + 3 * D * F) + D * V
        attn = L * 2 * Hd * seq_len / 2  # QK^T and PV, each 2*Hd*keys flops, causal half
        return 2.0 * matmul + 2.0 * attn
