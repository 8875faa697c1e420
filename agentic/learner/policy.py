"""The learner's view of the model: per-token log-probs, entropy and values of a packed micro-batch.

Trainable parameters are `{"policy": <model params>}`, plus `{"value": {"kernel": [D, 1],
"bias": [1]}}` for PPO: a linear value head on the transformer's final-normed hidden
states, in float32. Log-probs are `log_softmax(logits / temperature)[target]`, the
definition the Generator protocol uses for behavior log-probs.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from agentic import models
from agentic.models import ModelConfig


def init_value_head(model_config: ModelConfig) -> dict:
    """Zero-initialized value head (initial values 0)."""
    return {"kernel": jnp.zeros((model_config.hidden_size, 1), jnp.float32), "bias": jnp.zeros((1,), jnp.float32)}


def value_head_logical_axes() -> dict:
    return {"kernel": ("embed", None), "bias": (None,)}


def policy_outputs(config: ModelConfig, trainable: dict, mb: dict, *, temperature: float, chunk_size: int):
    """(logprobs, entropy, values or None), each float32 [B, T], for one packed micro-batch.

    `mb` holds int32 [B, T] "inputs", "targets", "positions", "segment_ids".
    """
    temperature = temperature if temperature > 0 else 1.0  # greedy samples are scored at temperature 1
    args = (mb["inputs"], mb["targets"], mb["positions"])
    if "value" not in trainable:
        lp, ent = models.token_logprobs(config, trainable["policy"], *args, segment_ids=mb["segment_ids"],
                                        temperature=temperature, chunk_size=chunk_size, return_entropy=True)
        return lp, ent, None
    hidden, _ = models.forward(config, trainable["policy"], mb["inputs"], mb["positions"],
                               segment_ids=mb["segment_ids"], return_hidden=True)
    lp, ent = models.logprobs_from_hidden(config, trainable["policy"], hidden, mb["targets"], temperature=temperature,
                                          chunk_size=chunk_size, return_entropy=True)
    v = trainable["value"]
    values = (hidden.astype(jnp.float32) @ v["kernel"])[..., 0] + v["bias"][0]
    return lp, ent, values


def matmul_params(config: ModelConfig) -> int:
    """Parameters used in matmuls per token (attention projections, MLP, vocab projection)."""
    D, H, KVH, Dh, F = (config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim,
                        config.intermediate_size)
    per_layer = D * H * Dh * 2 + D * KVH * Dh * 2 + 3 * D * F
    return config.num_layers * per_layer + D * config.vocab_size


def train_flops(config: ModelConfig, lengths) -> float:
    """Model FLOPs of one forward + backward over sequences of these lengths (no remat recompute).

    6 * matmul params per token, plus causal attention: QK^T and AV cost 2 * 2 * H * Dh
    FLOPs per (query, key) pair forward, n (n + 1) / 2 pairs per sequence, times 3 for
    forward + backward.
    """
    lengths = np.asarray(lengths, np.float64)
    dense = 6.0 * matmul_params(config) * lengths.sum()
    attn = 3.0 * 4.0 * config.num_layers * config.num_heads * config.head_dim * (lengths * (lengths + 1) / 2).sum()
    return float(dense + attn)
