"""Trajectory: one finished episode, as the learner consumes it.

Token in, token out: `tokens` is the exact sequence the model saw and produced;
nothing is re-tokenized after the fact. Model tokens have loss mask 1 and a
behavior log-prob; environment tokens (prompt, observations, errors) have loss
mask 0 and log-prob 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np


@dataclasses.dataclass(kw_only=True)
class Trajectory:
    """One episode.

    Attributes:
      tokens: int32 [T], prompt + every turn.
      loss_mask: int8/bool [T], 1 on model-generated tokens.
      behavior_logprobs: float32 [T], log-prob of each model token under the
        policy that sampled it (0 where loss_mask is 0).
      reward: the episode's scalar outcome reward (sum of env step rewards).
      token_rewards: optional float32 [T] per-token rewards (e.g. shaped).
      group_id: GRPO group (same task, n samples); trajectories of one group are
        delivered together.
      policy_version: oldest weight version that produced any model token.
      turn_starts: token index where each model turn starts.
      prompt_len: number of tokens in the initial prompt.
      truncated: episode cut short (max turns, token limit).
      metrics: env and actor metrics (em, turns, search calls...).
      task_id: identifies the task (for eval grouping).
    """

    tokens: np.ndarray
    loss_mask: np.ndarray
    behavior_logprobs: np.ndarray
    reward: float
    group_id: str
    policy_version: int
    prompt_len: int
    turn_starts: tuple[int, ...] = ()
    token_rewards: np.ndarray | None = None
    truncated: bool = False
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    task_id: str = ""

    def __post_init__(self):
        self.tokens = np.asarray(self.tokens, np.int32)
        self.loss_mask = np.asarray(self.loss_mask, np.int8)
        self.behavior_logprobs = np.asarray(self.behavior_logprobs, np.float32)
        n = len(self.tokens)
        for name in ("loss_mask", "behavior_logprobs"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"trajectory {name} has length {len(getattr(self, name))}, tokens {n}")
        if self.token_rewards is not None:
            self.token_rewards = np.asarray(self.token_rewards, np.float32)
            if len(self.token_rewards) != n:
                raise ValueError(f"trajectory token_rewards has length {len(self.token_rewards)}, tokens {n}")

    def __len__(self) -> int:
        return len(self.tokens)
