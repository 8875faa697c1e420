"""What the trajectory queue server checks in a pushed group before the learner can see it.

A group comes from an actor over the network, so it is input: every reward, token reward and
behavior log-prob must be finite (a NaN reward gives NaN advantages, a NaN log-prob NaN importance
weights, even on masked positions: NaN * 0 is NaN), every token inside the vocabulary (an
out-of-range id indexes past the embedding), and the policy version one the learner issued.
Lengths are checked when the wire message is decoded (`codec`). Errors name the field.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agentic.core import Trajectory


def validate_pushed_group(group: Sequence[Trajectory], *, learner_version: int, vocab_size: int | None) -> None:
    """Raises ValueError naming the trajectory and field that a learner must not train on.

    Args:
        group: the decoded group.
        learner_version: the learner's current version; a group may carry it or the next one
            (the learner publishes weights just before it announces their version to the queue).
        vocab_size: tokens must be in [0, vocab_size); None skips the check.
    """
    for i, traj in enumerate(group):
        where = f"group[{i}] ({traj.group_id!r})"
        if not np.isfinite(traj.reward):
            raise ValueError(f"{where}.reward is {traj.reward}: rewards must be finite")
        for name in ("behavior_logprobs", "token_rewards"):
            values = getattr(traj, name)
            if values is not None and not np.isfinite(values).all():
                bad = int(np.flatnonzero(~np.isfinite(values))[0])
                raise ValueError(f"{where}.{name}[{bad}] is {values[bad]}: must be finite (masked positions "
                                 "too: NaN * 0 is NaN in the loss)")
        if vocab_size is not None and len(traj.tokens):
            low, high = int(traj.tokens.min()), int(traj.tokens.max())
            if low < 0 or high >= vocab_size:
                raise ValueError(f"{where}.tokens has id {low if low < 0 else high}, outside the vocabulary "
                                 f"[0, {vocab_size})")
        if not 0 <= traj.policy_version <= learner_version + 1:
            raise ValueError(f"{where}.policy_version={traj.policy_version} was never issued: the learner is at "
                             f"version {learner_version}")
