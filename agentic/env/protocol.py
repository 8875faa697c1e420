"""The Env protocol: everything the model interacts with is an environment.

Tools, games, reward models and rule-based checkers all implement `Env`. The
protocol is async and text-in/text-out: the actor tokenizes observations and
detokenizes nothing (it keeps its own token ids; see `agentic.rollout`).

A task is a JSON-serializable mapping (e.g. `{"question": ..., "golden_answers":
[...]}`); it crosses the gRPC env host as JSON, never pickle.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any

Task = Mapping[str, Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Observation:
    """What the env shows the model after `reset`.

    Attributes:
        text: the observation text (for most envs, the prompt the episode starts
            from; the actor renders it into its chat template).
        info: JSON-serializable extras (e.g. the system prompt, the stop strings of
            the env's action protocol).
    """

    text: str
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Step:
    """The result of one `Env.step`.

    Attributes:
        observation: text appended to the episode after the action (loss mask 0).
            Empty when the env has nothing to say (e.g. the episode is done).
        reward: reward for this step; rewards may arrive on any step.
        done: the episode ended by the env's own rules (answer given, game won).
        truncated: the episode was cut short (turn limit...); the reason is in `info`.
            An observation the env host cut to its size limit does not end the episode:
            the host flags it in `info["observation_truncated"]` instead.
        info: JSON-serializable extras, including per-episode `metrics` on the last
            step (see `Env.metrics`).
    """

    observation: str
    reward: float = 0.0
    done: bool = False
    truncated: bool = False
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Env(abc.ABC):
    """One episode's worth of environment. Instances are not reused across tasks."""

    @abc.abstractmethod
    async def reset(self, task: Task) -> Observation:
        """Starts the episode for `task` and returns the first observation."""

    @abc.abstractmethod
    async def step(self, action: str) -> Step:
        """Applies the model's action text and returns what follows."""

    async def close(self) -> None:  # noqa: B027  (optional hook)
        """Releases the episode's resources. Called exactly once, also on failure."""

    def metrics(self) -> dict[str, float]:
        """Per-episode metrics (e.g. `search_calls`, `em`), numeric values only."""
        return {}
