"""Small trajectory groups for the queue tests."""

from __future__ import annotations

import numpy as np

from agentic.core import Trajectory


def make_group(group_id: str = "g0", n: int = 3, version: int = 0, length: int = 12, seed: int = 0):
    """`n` trajectories of one task with every field set to something non-default."""
    rng = np.random.default_rng(seed)
    group = []
    for i in range(n):
        t = length + i  # trajectories of a group have different lengths
        logprobs = -rng.exponential(size=t).astype(np.float32)
        logprobs[:3] = 0.0
        group.append(
            Trajectory(
                tokens=rng.integers(-(2**31), 2**31 - 1, size=t, dtype=np.int32),
                loss_mask=np.r_[np.zeros(3), np.ones(t - 3)].astype(np.int8),
                behavior_logprobs=logprobs,
                reward=float(rng.normal()) / 3.0,
                group_id=group_id,
                policy_version=version + i % 2,
                prompt_len=3,
                turn_starts=(3, t // 2),
                token_rewards=rng.normal(size=t).astype(np.float32) if i % 2 else None,
                truncated=bool(i % 2),
                metrics={"em": 1.0 / 3.0, "turns": 2.0, "search_calls": float(i)},
                task_id=f"task-{group_id}",
                # per-token versions (a weight swap mid-episode) on every other trajectory
                token_versions=(np.r_[np.full(3, -1), np.full(t // 2 - 3, version + i % 2),
                                      np.full(t - t // 2, version + 1 + i % 2)].astype(np.int32) if i % 2 else None),
            )
        )
    return group


def assert_groups_equal(got, want):
    """Every field equal, arrays bit for bit (dtypes included)."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w)
        for a, b in zip(g, w, strict=True):
            for name in ("tokens", "loss_mask", "behavior_logprobs", "token_rewards", "token_versions"):
                x, y = getattr(a, name), getattr(b, name)
                if y is None:
                    assert x is None, name
                    continue
                assert x.dtype == y.dtype, name
                assert x.tobytes() == y.tobytes(), name
            for name in (
                "reward",
                "group_id",
                "policy_version",
                "prompt_len",
                "turn_starts",
                "truncated",
                "metrics",
                "task_id",
            ):
                assert getattr(a, name) == getattr(b, name), name
                assert type(getattr(a, name)) is type(getattr(b, name)), name
