"""Synthetic trajectories for tests, benchmarks and the toy training script.

Deterministic in (seed, step): the same call returns the same trajectories, which is
what lets a killed toy run resume bitwise (its data state is just the next step).
"""

from __future__ import annotations

import numpy as np

from agentic.core import Trajectory


def synthetic_trajectories(seed: int, step: int = 0, *, groups: int = 4, group_size: int = 4, vocab: int = 256,
                           min_len: int = 8, max_len: int = 64, policy_version: int = 0) -> list[Trajectory]:
    """`groups` GRPO groups of `group_size` multi-turn trajectories with random tokens.

    Each trajectory: a prompt (loss mask 0), a model turn, an environment observation
    (loss mask 0), a second model turn; behavior log-probs in [-3, 0) on model tokens,
    a 0/1 outcome reward.
    """
    rng = np.random.default_rng([seed, step])
    out = []
    for g in range(groups):
        prompt = rng.integers(0, vocab, int(rng.integers(2, max(3, min_len // 2))))
        for _ in range(group_size):
            n = int(rng.integers(min_len, max_len + 1))
            p = min(len(prompt), n - 2)
            tokens = np.concatenate([prompt[:p], rng.integers(0, vocab, n - p)])
            mask = np.zeros(n, np.int8)
            mask[p:] = 1
            obs = int(rng.integers(p + 1, n))  # an observation span inside the response
            mask[obs : obs + int(rng.integers(0, 4))] = 0
            out.append(Trajectory(
                tokens=tokens, loss_mask=mask, behavior_logprobs=-3.0 * rng.random(n) * mask,
                reward=float(rng.integers(0, 2)), group_id=f"{step}-{g}", policy_version=policy_version,
                prompt_len=p))
    return out
