"""Token-level losses, KL estimators, importance weights and loss aggregation.

Every function is a pure jnp function over [B, T] arrays on prediction positions
(see `batching.py`). Losses return *per-token* values; the scalar loss is
`aggregate(per_token, weights)` = sum(per_token * weights), where `weights` already
holds the loss mask (0 on environment and padding tokens) and the normalization of
the loss aggregation mode over the *whole* batch (`token_weights`). That makes a sum
over micro-batches (gradient accumulation) or over packed rows exactly the
full-batch loss.

Loss aggregation modes (`loss_agg_mode`), for per-token losses l[i, t], mask m[i, t]:
  token-mean                 sum_it l m / sum_it m
  seq-mean-token-mean        (1/N) sum_i (sum_t l m / sum_t m)        (GRPO paper)
  seq-mean-token-sum         (1/N) sum_i sum_t l m
  seq-mean-token-sum-norm    sum_i sum_t l m / norm                  (Dr. GRPO; norm = max length)
with N the number of sequences that have at least one model token. "seq-mean-token-sum-norm"
is verl's agg_loss: the summed sequence losses divided by the constant `norm` (verl's
loss_scale_factor, default the response length) only, not by N as well.

Policy losses are registered by name in `POLICY_LOSSES`:
  "ppo_clip"  -A * clip(ratio), token-level, asymmetric eps (low, high), optional dual clip
  "pg"        -A * ratio (no clip; ratio's gradient is grad log pi)
  "reinforce" -A * log pi (on-policy REINFORCE: no ratio, so no token is damped by a
              behavior log-prob; every token the mask admits gets the full gradient)
  "nll"       -log pi (supervised fine-tuning on demonstrations; advantages ignored)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from agentic.registry import Registry

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3", "low_var_kl", "abs")


# ----------------------------------------------------------------------------- aggregation


def seq_scale(mode: str, seq_tokens, *, num_tokens, num_seqs, norm: float | None = None):
    """Weight of each model token of a sequence with `seq_tokens` model tokens.

    Works on numbers, numpy and jnp arrays alike (the batcher calls it on the host).
    """
    xp = jnp if isinstance(seq_tokens, jax.Array) else np
    num_tokens = xp.maximum(num_tokens, 1)
    num_seqs = xp.maximum(num_seqs, 1)
    if mode == "token-mean":
        return xp.ones_like(seq_tokens, dtype=xp.float32) / num_tokens
    if mode == "seq-mean-token-mean":
        return xp.where(seq_tokens > 0, 1.0 / (xp.maximum(seq_tokens, 1) * num_seqs), 0.0)
    if mode == "seq-mean-token-sum":
        return xp.ones_like(seq_tokens, dtype=xp.float32) / num_seqs
    if mode == "seq-mean-token-sum-norm":
        if not norm:
            raise ValueError("loss_agg_mode 'seq-mean-token-sum-norm' needs a norm (the max response length)")
        return xp.ones_like(seq_tokens, dtype=xp.float32) / norm
    raise ValueError(f"unknown loss_agg_mode {mode!r}; choose from {LOSS_AGG_MODES}")


def token_weights(mask, mode: str, norm: float | None = None):
    """Aggregation weights [B, T] for a batch with one sequence per row."""
    mask = mask.astype(jnp.float32)
    seq_tokens = mask.sum(-1)
    scale = seq_scale(mode, seq_tokens, num_tokens=seq_tokens.sum(),
                      num_seqs=(seq_tokens > 0).sum(), norm=norm)
    return mask * scale[:, None]


def aggregate(per_token, weights):
    """The scalar loss: sum(per_token * weights)."""
    return jnp.sum(per_token * weights)


# ----------------------------------------------------------------------------- policy losses

POLICY_LOSSES: Registry = Registry("policy loss")


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip_loss(logp, old_logp, advantages, *, clip_low: float = 0.2, clip_high: float = 0.2,
                  dual_clip: float | None = None, **_):
    """Clipped surrogate -min(r A, clip(r, 1-clip_low, 1+clip_high) A), r = exp(logp - old_logp).

    Dual clip (Ye et al. 2020): for A < 0 the loss is also capped at -dual_clip * A
    (dual_clip > 1), so a huge ratio on a bad token cannot blow the loss up.

    Returns:
      (per-token loss, per-token "clipped" indicator as float).
    """
    ratio = jnp.exp(logp - old_logp)
    loss1 = -advantages * ratio
    loss2 = -advantages * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = jnp.maximum(loss1, loss2)
    clipped = loss2 > loss1
    if dual_clip is not None:
        capped = jnp.minimum(loss, -dual_clip * advantages)
        clipped = clipped | ((advantages < 0) & (capped < loss))
        loss = jnp.where(advantages < 0, capped, loss)
    return loss, clipped.astype(jnp.float32)


@POLICY_LOSSES.register("pg")
def pg_loss(logp, old_logp, advantages, **_):
    """Importance-weighted policy gradient -r A (no clipping)."""
    ratio = jnp.exp(logp - old_logp)
    return -advantages * ratio, jnp.zeros_like(ratio)


@POLICY_LOSSES.register("reinforce")
def reinforce_loss(logp, old_logp, advantages, **_):
    """REINFORCE -A log pi: the score-function gradient, with no importance ratio."""
    return -advantages * logp, jnp.zeros_like(logp)


def importance_weights(proximal_logp, behavior_logp, cap: float | None):
    """Off-policy weights pi_prox / pi_behavior, truncated at `cap` (TIS), gradient stopped."""
    w = jnp.exp(jax.lax.stop_gradient(proximal_logp) - behavior_logp)
    if cap is not None:
        w = jnp.minimum(w, cap)
    return jax.lax.stop_gradient(w)


# ----------------------------------------------------------------------------- KL, value


def kl_penalty(logp, ref_logp, kind: str):
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1/k2/k3, verl's abs).

    k1 = logp - ref; abs = |logp - ref|; k2 = (logp - ref)^2 / 2;
    k3 = low_var_kl = exp(ref - logp) - (ref - logp) - 1, with the log-ratio clamped to
    [-20, 20] and k3 to [-10, 10] (as verl does).
    """
    d = logp - ref_logp
    if kind == "k1":
        return d
    if kind == "abs":
        return jnp.abs(d)
    if kind == "k2":
        return 0.5 * d * d
    if kind in ("k3", "low_var_kl"):
        r = jnp.clip(-d, -20.0, 20.0)
        return jnp.clip(jnp.exp(r) - r - 1.0, -10.0, 10.0)
    raise ValueError(f"unknown KL estimator {kind!r}; choose from {KL_ESTIMATORS}")


def value_loss(values, old_values, returns, *, clip: float | None):
    """0.5 * max((V - R)^2, (clip(V, V_old +- clip) - R)^2) per token (unclipped if clip is None).

    Returns:
      (per-token loss, per-token "clipped" indicator as float).
    """
    l1 = (values - returns) ** 2
    if clip is None:
        return 0.5 * l1, jnp.zeros_like(l1)
    vc = old_values + jnp.clip(values - old_values, -clip, clip)
    l2 = (vc - returns) ** 2
    return 0.5 * jnp.maximum(l1, l2), (l2 > l1).astype(jnp.float32)


@POLICY_LOSSES.register("nll")
def nll_loss(logp, old_logp, advantages, **_):
    """Supervised fine-tuning: -log pi on model tokens (advantages and behavior ignored).

    For cold-start SFT on demonstrations; use it with off_policy="none" (no importance weights).
    """
    return -logp, jnp.zeros_like(logp)
