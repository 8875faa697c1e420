"""Nothing non-finite reaches the learner's weights or checkpoints (issue 31).

Three places, each a line or two in `learner.py` / `train_step.py`:

- `drop_nonfinite(trajectories)` (in `Learner.prepare`): a group with a non-finite reward, token
  reward or model-token behavior log-prob is dropped whole and counted
  (`batch/dropped_nonfinite`): GRPO's group statistics would spread one NaN to every sample.
- `masked_inputs(mb)` (in `micro_loss`): behavior log-probs and advantages off the model tokens are
  zeroed, so a NaN there cannot poison the loss (NaN * 0 is NaN, and TIS weights use them).
- `apply_if_finite(...)` (in the train step): when the loss or the gradient norm is not finite the
  optimizer step is skipped (params, optimizer state and step unchanged; `learner/skipped_nonfinite`
  is 1); `clip_by_global_norm` would otherwise pass the NaN through to every weight.
- `check_finite(tree)` (in `Learner.save`): a non-finite state is never checkpointed, so a run that
  went bad cannot replace its good checkpoints (with keep=3 it took 30 NaN steps).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from agentic.core import Trajectory


def drop_nonfinite(trajectories: Sequence[Trajectory]) -> tuple[list[Trajectory], int]:
    """The trajectories of groups whose rewards and model-token log-probs are all finite, and how
    many trajectories were dropped."""
    bad = set()
    for t in trajectories:
        model = t.loss_mask != 0
        if (not np.isfinite(t.reward) or not np.isfinite(t.behavior_logprobs[model]).all()
                or (t.token_rewards is not None and not np.isfinite(t.token_rewards).all())):
            bad.add(t.group_id)
    kept = [t for t in trajectories if t.group_id not in bad]
    return kept, len(trajectories) - len(kept)


def masked_inputs(mb: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """`mb` with behavior log-probs and advantages set to 0 where no loss is taken (mean_weights 0)."""
    on = mb["mean_weights"] != 0
    out = dict(mb)
    for key in ("behavior_logprobs", "advantages"):
        out[key] = jnp.where(on, mb[key], jnp.zeros_like(mb[key]))
    return out


def apply_if_finite(loss: jax.Array, grad_norm: jax.Array, apply: Callable[[], Any], keep: Callable[[], Any]):
    """`apply()` when the loss and gradient norm are finite, else `keep()` (under jit: a `lax.cond`).

    Returns (result, skipped) with skipped a float32 0/1 for the metrics.
    """
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    return jax.lax.cond(ok, apply, keep), 1.0 - ok.astype(jnp.float32)


def check_finite(tree: Any, what: str) -> None:
    """Raises FloatingPointError naming the first leaf of `tree` with a NaN or infinity."""
    flags = jax.device_get(jax.tree.map(lambda x: jnp.isfinite(x).all(), tree))
    for path, ok in jax.tree_util.tree_flatten_with_path(flags)[0]:
        if not ok:
            raise FloatingPointError(f"refusing to {what}: {jax.tree_util.keystr(path)} is not finite "
                                     "(the last good checkpoint stays the latest)")
