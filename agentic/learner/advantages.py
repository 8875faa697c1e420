"""Advantage estimators, registered by name: "grpo", "dr_grpo", "rloo", "ppo" (GAE).

All estimators are pure jnp functions over the *episode layout*: one trajectory per
row, [N, L] arrays aligned on **prediction positions** (position t holds what is
needed to score token t+1 of the trajectory: see `batching.py`). Padding rows have
`valid == False`; padding and environment positions have `mask == 0` and get
advantage 0.

    adv, returns = ESTIMATORS.get("grpo")(inputs, eps=1e-6)

Outcome estimators (grpo, dr_grpo, rloo) read `inputs.rewards` [N] and `inputs.group`
[N] (the GRPO group index of each row) and broadcast one advantage per trajectory
over its model tokens; `returns` is None. "ppo" runs GAE over `inputs.token_rewards`
and `inputs.values` [N, L] and returns (advantages, returns = advantages + values).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from agentic.registry import Registry


class AdvantageInputs(NamedTuple):
    """Episode-layout inputs of an estimator (a pytree, so estimators jit).

    Attributes:
      mask: float32 [N, L], 1 where the target is a model token.
      rewards: float32 [N], outcome reward of each trajectory.
      group: int32 [N], group index in [0, N) (rows of one GRPO group share it).
      valid: bool [N], False on padding rows.
      token_rewards: float32 [N, L], per-position rewards (GAE only).
      values: float32 [N, L], value estimates before the update (GAE only).
    """

    mask: jax.Array
    rewards: jax.Array
    group: jax.Array
    valid: jax.Array
    token_rewards: jax.Array | None = None
    values: jax.Array | None = None


ESTIMATORS: Registry = Registry("advantage estimator")
# Estimators that need a value head (their config trains one).
NEEDS_VALUES = {"ppo"}


def group_stats(rewards, group, valid):
    """Per-row group mean, unbiased group std and group size.

    Returns (mean [N], std [N], count [N]) looked up at each row's group. The std
    uses n - 1 (torch.std, as verl and TRL). A group of one gets mean 0 and std 1, as in
    verl's compute_grpo_outcome_advantage / compute_rloo_outcome_advantage: its
    advantage is then its own reward (no baseline to compare it with).
    """
    n = rewards.shape[0]
    v = valid.astype(jnp.float32)
    count = jax.ops.segment_sum(v, group, num_segments=n)
    total = jax.ops.segment_sum(rewards * v, group, num_segments=n)
    mean = total / jnp.maximum(count, 1.0)
    dev = (rewards - mean[group]) * v
    var = jax.ops.segment_sum(dev * dev, group, num_segments=n) / jnp.maximum(count - 1.0, 1.0)
    alone = count == 1
    return jnp.where(alone, 0.0, mean)[group], jnp.where(alone, 1.0, jnp.sqrt(var))[group], count[group]


def _broadcast(seq_adv, inputs: AdvantageInputs):
    return (seq_adv * inputs.valid)[:, None] * inputs.mask


@ESTIMATORS.register("grpo")
def grpo(inputs: AdvantageInputs, *, eps: float = 1e-6, **_):
    """GRPO (Shao et al. 2024): A_i = (r_i - mean_g) / (std_g + eps) on every model token.

    A group of one has mean 0 and std 1 (verl): A = r / (1 + eps).
    """
    mean, std, _ = group_stats(inputs.rewards, inputs.group, inputs.valid)
    den = std + eps
    return _broadcast(jnp.where(den > 0, (inputs.rewards - mean) / jnp.where(den > 0, den, 1.0), 0.0), inputs), None


@ESTIMATORS.register("dr_grpo")
def dr_grpo(inputs: AdvantageInputs, **_):
    """Dr. GRPO (Liu et al. 2025): A_i = r_i - mean_g, no std normalization.

    Pair it with loss_agg_mode "seq-mean-token-sum-norm" (no length normalization).
    """
    mean, _, _ = group_stats(inputs.rewards, inputs.group, inputs.valid)
    return _broadcast(inputs.rewards - mean, inputs), None


@ESTIMATORS.register("rloo")
def rloo(inputs: AdvantageInputs, **_):
    """RLOO (Ahmadian et al. 2024): A_i = r_i - mean_{j != i} r_j = n/(n-1) (r_i - mean_g).

    A group of one has no baseline: its advantage is its reward (as verl's).
    """
    mean, _, count = group_stats(inputs.rewards, inputs.group, inputs.valid)
    scale = jnp.where(count > 1, count / jnp.maximum(count - 1.0, 1.0), 1.0)
    return _broadcast((inputs.rewards - mean) * scale, inputs), None


def gae(token_rewards, values, mask, *, gamma: float, lam: float):
    """Generalized advantage estimation over model tokens only.

    Environment positions (mask 0) are not steps: their rewards are credited to the
    preceding model token (undiscounted), and the next model token's value and
    advantage are carried across them. The end of a row is terminal (value 0).

    Args:
      token_rewards, values, mask: float32 [N, L].
    Returns:
      (advantages, returns) [N, L], zero where mask is 0.
    """
    m = mask > 0

    def step(carry, x):
        next_v, next_a, pending = carry
        r, v, mt = x
        delta = r + pending + gamma * next_v - v
        a = delta + gamma * lam * next_a
        carry = (jnp.where(mt, v, next_v), jnp.where(mt, a, next_a), jnp.where(mt, 0.0, pending + r))
        return carry, jnp.where(mt, a, 0.0)

    zeros = jnp.zeros(token_rewards.shape[0], jnp.float32)
    xs = (token_rewards.T, values.T, m.T)  # scan over time, vectorized over rows
    _, adv = jax.lax.scan(step, (zeros, zeros, zeros), xs, reverse=True)
    adv = adv.T
    return adv, jnp.where(m, adv + values, 0.0)


def masked_whiten(x, mask, eps: float = 1e-8):
    """(x - mean) / sqrt(var + eps) over masked entries; zero where mask is 0.

    var is the unbiased (Bessel-corrected, n - 1) variance, as verl's masked_whiten /
    masked_var(unbiased=True). A single masked entry (where verl raises) whitens to 0.
    """
    n = mask.sum()
    mean = (x * mask).sum() / jnp.maximum(n, 1.0)
    var = (((x - mean) * mask) ** 2).sum() / jnp.maximum(n - 1.0, 1.0)
    return (x - mean) * jax.lax.rsqrt(var + eps) * mask


@ESTIMATORS.register("ppo")
def ppo_gae(inputs: AdvantageInputs, *, gamma: float = 1.0, lam: float = 1.0, whiten: bool = True, **_):
    """PPO advantages: GAE(gamma, lambda) against the value head; optionally whitened.

    Returns are computed from the raw (un-whitened) advantages.
    """
    mask = inputs.mask * inputs.valid[:, None]
    adv, returns = gae(inputs.token_rewards, inputs.values, mask, gamma=gamma, lam=lam)
    if whiten:
        adv = masked_whiten(adv, mask)
    return adv, returns
