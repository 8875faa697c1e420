"""Sampler/learner mismatch: measured every step, gated by a test, optionally corrected.

The engine samples a token and reports log pi_sampler(token); the learner recomputes
log pi_learner(token) on the same weights and tokens. With one model definition in both
they differ only by rounding in the engine's cached, chunked, batched paths (see
tests/inference/test_mismatch_gate.py, which bounds the difference per dtype). Every train
step logs (learner/*):

  mismatch_kl          KL(pi_sampler || pi_learner) on the sampled tokens, Schulman's k3
                       estimate r - 1 - log r with r = pi_learner / pi_sampler (token mean;
                       also logged as approx_kl_behavior)
  mismatch_max_abs     max |log pi_learner - log pi_sampler| over the batch's model tokens
  mismatch_masked_frac model tokens whose loss the correction below zeroed

"pi_learner" is the learner's policy before the update (the proximal log-probs when scored,
else the current ones: equal on the first optimizer step of an update), so on an off-policy
batch the numbers include the policy lag as well as the numerical mismatch.

Correction (`LearnerConfig.mismatch_correction`), on top of the token-level off-policy
weight of `off_policy`; r_t = pi_learner / pi_sampler per model token of a sequence:
  "none"      nothing.
  "icepop"    IcePop (Ling team, 2025): a token with r_t outside [low, high] is masked.
  "seq_mask"  sequence-level rejection: a sequence with prod_t r_t outside [low, high] is masked.
  "geo_mask"  geometric-mean rejection: a sequence with (prod_t r_t)^(1/n) outside [low, high]
              is masked (length-independent; verl's rollout_rs="geometric").
  "seq_is"    sequence-level importance sampling: every token of a sequence is weighted by
              min(prod_t r_t, high) (truncated seq-IS); replaces the token-level weight.
`low`, `high` are `mismatch_low`, `mismatch_high`. Weights carry no gradient.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from agentic.learner import batching
from agentic.learner.policy import policy_outputs

MISMATCH_CORRECTIONS = ("none", "icepop", "seq_mask", "geo_mask", "seq_is")


def check_config(mode: str, low: float, high: float, off_policy: str) -> str | None:
    """The problem with these LearnerConfig fields, or None."""
    if mode not in MISMATCH_CORRECTIONS:
        return f"mismatch_correction {mode!r} unknown; choose from {MISMATCH_CORRECTIONS}"
    if not 0 <= low < 1 < high:
        return f"mismatch_low, mismatch_high must satisfy 0 <= low < 1 < high, got {low}, {high}"
    if mode == "seq_is" and off_policy == "none":
        return "mismatch_correction 'seq_is' replaces the token-level weight: it needs off_policy 'tis' or 'decoupled'"
    return None


def sequence_sum(x, segment_ids):
    """Per-token sum of `x` over the token's packed sequence: [B, T] -> [B, T].

    A sequence is the positions of one row with one segment id (see batching.plan_packing);
    callers zero `x` off the positions they want summed.
    """
    B, T = x.shape
    ids = (jnp.arange(B, dtype=jnp.int32)[:, None] * (T + 1) + segment_ids).reshape(-1)
    sums = jax.ops.segment_sum(x.reshape(-1), ids, num_segments=B * (T + 1))
    return sums[ids].reshape(B, T)


def correction_weights(learner_logp, behavior_logp, mask, segment_ids, *, mode: str, low: float, high: float):
    """(weights, masked) [B, T]: the per-token loss weight of `mode` and where it zeroed a token.

    Args:
      learner_logp, behavior_logp: float32 [B, T] log-probs of the sampled tokens.
      mask: float32 [B, T], 1 on model tokens.
      segment_ids: int32 [B, T] packed sequence ids (0: padding).
    """
    mask = mask.astype(jnp.float32)
    log_r = jax.lax.stop_gradient(learner_logp - behavior_logp) * mask
    ones = jnp.ones_like(log_r)
    if mode == "none":
        return ones, jnp.zeros_like(log_r)
    lo = jnp.log(jnp.maximum(low, 1e-30))  # low = 0: nothing is too unlikely
    hi = jnp.log(high)
    if mode == "icepop":
        keep = (log_r >= lo) & (log_r <= hi)
        w = keep.astype(jnp.float32)
    else:
        seq_log_r = sequence_sum(log_r, segment_ids)
        if mode == "seq_is":
            w = jnp.exp(jnp.minimum(seq_log_r, hi))
            return jax.lax.stop_gradient(w), jnp.zeros_like(w)
        if mode == "geo_mask":
            seq_log_r = seq_log_r / jnp.maximum(sequence_sum(mask, segment_ids), 1.0)
        elif mode != "seq_mask":
            raise ValueError(f"unknown mismatch_correction {mode!r}; choose from {MISMATCH_CORRECTIONS}")
        w = ((seq_log_r >= lo) & (seq_log_r <= hi)).astype(jnp.float32)
    return w, (1.0 - w) * mask


def max_abs_diff(learner_logp, behavior_logp, mask):
    """max |learner - behavior| over model tokens (0 when there are none)."""
    return jnp.max(jnp.where(mask > 0, jnp.abs(learner_logp - behavior_logp), 0.0))


# ----------------------------------------------------------------------------- recomputation


@functools.lru_cache(maxsize=8)
def _score_fn(model_config, temperature: float, chunk_size: int):
    return jax.jit(lambda p, mb: policy_outputs(model_config, {"policy": p}, mb, temperature=temperature,
                                                chunk_size=chunk_size)[0])


@dataclasses.dataclass(frozen=True)
class MismatchReport:
    """The learner's recomputed log-probs of trajectories' model tokens against their behavior ones.

    Attributes:
      learner, behavior: per trajectory, float32 log-probs of its model tokens (in order).
      max_abs: max |learner - behavior| over every model token.
      kl: KL(pi_sampler || pi_learner), the k3 estimate averaged over model tokens.
      tokens: model tokens compared.
    """

    learner: list[np.ndarray]
    behavior: list[np.ndarray]
    max_abs: float
    kl: float
    tokens: int


def recompute(model_config, params, trajectories: Sequence, *, temperature: float, seq_buckets: Sequence[int],
              micro_batch: int = 8, chunk_size: int = 512, pack: bool = True) -> MismatchReport:
    """Scores `trajectories` the way the learner does (shift, pack, `policy_outputs`) and compares.

    Runs the learner's own code path: `batching.make_episodes` and `plan_packing`, then
    `policy.policy_outputs` under jit on each packed micro-batch, on one device.
    """

    lengths = np.array([len(t) - 1 for t in trajectories])
    L = batching.seq_bucket(int(lengths.max()), seq_buckets)
    ep = batching.make_episodes(trajectories, L)
    plan = batching.plan_packing(ep.lengths, seq_buckets=seq_buckets, micro_batch=micro_batch, pack=pack)
    batch = {"inputs": plan.pack(ep.inputs), "targets": plan.pack(ep.targets), "positions": plan.positions,
             "segment_ids": plan.segment_ids}
    score = _score_fn(model_config, float(temperature), int(chunk_size))
    packed = np.stack([np.asarray(score(params, {k: v[i] for k, v in batch.items()})) for i in range(plan.num_micro)])
    lp = plan.unpack(packed, ep.mask.shape)
    mask = ep.mask > 0
    learner = [lp[i][mask[i]] for i in range(len(trajectories))]
    behavior = [ep.behavior_logprobs[i][mask[i]] for i in range(len(trajectories))]
    d = lp[mask].astype(np.float64) - ep.behavior_logprobs[mask]
    kl = float(np.mean(np.exp(d) - d - 1.0)) if d.size else 0.0
    return MismatchReport(learner=learner, behavior=behavior, max_abs=float(np.max(np.abs(d), initial=0.0)), kl=kl,
                          tokens=int(mask.sum()))
