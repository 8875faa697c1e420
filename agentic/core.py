"""The contracts everything plugs into: env, generator, trajectory, queue, weights, learner.

    Env ──Observation/Step──► episode ──► Trajectory ─┐ (a Group: n samples of one task)
          ▲ (actor)  │                                 ▼
          │          └─ Generator: token in, token out  TrajectoryQueue ──► Learner.update
          │                     ▲                                                │
          └─────────────────────┴──────────── WeightPublisher ◄── params, version ┘

Implementations import this module and it imports none of them (only the plain data of
`agentic.types`, re-exported here, and the `Experiment` the loop is given): envs (`envs/`), the
episode and actor (`agentic.rollout`), generators (`agentic.inference`: the embedded
engine, the SGLang client), queues (`agentic.transport`), the learner
(`agentic.learner`) and the loop (`agentic.launcher`). Everything here is plain data
or an abstract interface; nothing crosses a process boundary as pickle.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

# The plain data they exchange (agentic/types.py), re-exported: `from agentic.core import Step` works.
from agentic.types import (  # noqa: F401
    Completion,
    FinishType,
    GenerateRequest,
    GenerationAborted,
    GeneratorError,
    Observation,
    SamplingParams,
    Step,
    Task,
)

# ----------------------------------------------------------------------------- environments


class Env(abc.ABC):
    """One episode of an environment (tool, game, reward model, checker); text in, text out.
    Instances are not reused across tasks."""

    @abc.abstractmethod
    async def reset(self, task: Task) -> Observation:
        """Starts the episode for `task`; returns the first observation."""

    @abc.abstractmethod
    async def step(self, action: str) -> Step:
        """Applies the model's action text; returns what follows."""

    async def close(self) -> None:  # noqa: B027  (optional hook)
        """Releases the episode's resources. Called exactly once, also on failure."""

    def metrics(self) -> dict[str, float]:
        """Per-episode numeric metrics (e.g. `search_calls`, `em`)."""
        return {}


# ----------------------------------------------------------------------------- generators


class Generator(abc.ABC):
    """Async token-in/token-out generation; many requests may be in flight."""

    @abc.abstractmethod
    async def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        """Completes every request; results in the order of `requests`."""

    async def generate_one(self, request: GenerateRequest) -> Completion:
        return (await self.generate([request]))[0]

    @property
    def weight_version(self) -> int:
        """Version of the weights currently served."""
        return 0

    async def release(self, session_id: str) -> None:  # noqa: B027
        """Drops cached state of an ended episode (prefix KV); optional."""

    async def close(self) -> None:  # noqa: B027
        """Stops background work."""


# ----------------------------------------------------------------------------- trajectories


def _frozen_array(value: Any, dtype: Any) -> np.ndarray:
    array = np.asarray(value, dtype).view()
    array.flags.writeable = False
    return array


@dataclasses.dataclass(frozen=True, kw_only=True)
class Trajectory:
    """One finished episode, token in / token out, as the learner consumes it. Immutable.

    tokens: int32 [T], the exact sequence the model saw and produced (never re-tokenized).
    loss_mask: int8 [T], 1 on model tokens. behavior_logprobs: float32 [T], the sampling
      policy's log-prob of each model token (0 elsewhere). token_rewards: optional float32 [T].
    reward: the episode's outcome (sum of step rewards). group_id: its GRPO group (the n
      samples of one task). policy_version: the oldest weight version behind any model token.
    prompt_len, turn_starts: where the prompt ends and each model turn starts.
    truncated: cut short (turn or token limit). metrics: env and actor metrics. task_id: the task.
    token_versions: optional int32 [T], the weight version that sampled each model token (-1
      elsewhere): with weights swapped mid-episode (or mid-turn) the tokens of one episode come
      from several versions. `oldest_version` is the oldest of them (else `policy_version`).
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
    token_versions: np.ndarray | None = None

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "tokens", _frozen_array(self.tokens, np.int32))
        set_(self, "loss_mask", _frozen_array(self.loss_mask, np.int8))
        set_(self, "behavior_logprobs", _frozen_array(self.behavior_logprobs, np.float32))
        if self.token_rewards is not None:
            set_(self, "token_rewards", _frozen_array(self.token_rewards, np.float32))
        if self.token_versions is not None:
            set_(self, "token_versions", _frozen_array(self.token_versions, np.int32))
        set_(self, "turn_starts", tuple(int(s) for s in self.turn_starts))
        n = len(self.tokens)
        for name in ("loss_mask", "behavior_logprobs", "token_rewards", "token_versions"):
            array = getattr(self, name)
            if array is not None and len(array) != n:
                raise ValueError(f"trajectory {name} has length {len(array)}, tokens {n}")
        if not 0 <= self.prompt_len <= n:
            raise ValueError(f"trajectory prompt_len={self.prompt_len} is outside [0, {n}] (len(tokens))")
        bad = [s for s in self.turn_starts if not 0 <= s <= n]
        if bad:
            raise ValueError(f"trajectory turn_starts has {bad} outside [0, {n}] (len(tokens))")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def oldest_version(self) -> int:
        """The oldest weight version behind any model token (per token when known)."""
        if self.token_versions is not None:
            model = self.token_versions[self.loss_mask > 0]
            if len(model):
                return int(model.min())
        return int(self.policy_version)


Group = Sequence[Trajectory]  # the n samples of one task, delivered together


# ----------------------------------------------------------------------------- queue, weights, learner


class TrajectoryQueue(abc.ABC):
    """Groups from actors to the learner, in process or over gRPC: bounded (a full queue makes
    `put` wait) and staleness-filtered (groups older than the learner's version minus the
    max lag are dropped and counted). Timeouts in seconds; None waits until closed."""

    @abc.abstractmethod
    def put(self, group: Group, timeout: float | None = None) -> bool:
        """Adds one whole group. True when accepted (a stale one is accepted, dropped and
        counted), False at the timeout. ValueError: malformed group. QueueClosed: closed."""

    @abc.abstractmethod
    def get(self, num_groups: int, timeout: float | None = None) -> list[Group]:
        """Up to `num_groups` groups; at the timeout, what is there (maybe nothing)."""

    @abc.abstractmethod
    async def aput(self, group: Group, timeout: float | None = None) -> bool:
        """`put` for asyncio code: waits without blocking the event loop."""

    @abc.abstractmethod
    async def aget(self, num_groups: int, timeout: float | None = None) -> list[Group]:
        """`get` for asyncio code."""

    @abc.abstractmethod
    def set_learner_version(self, version: int) -> None:
        """Announces the learner's weight version; drops groups that became stale."""

    @abc.abstractmethod
    def stats(self) -> dict[str, int | float]:
        """Counters (groups) and wait times (seconds)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Closes the queue; every waiter raises QueueClosed. Idempotent."""


class WeightPublisher(abc.ABC):
    """Moves the learner's params to the generators: the embedded engine swaps them on device
    (`agentic.inference.engine.EngineWeights`), SGLang servers load an exported checkpoint
    through their update API (`agentic.inference.sglang_client.SGLangWeights`)."""

    @abc.abstractmethod
    def publish(self, params: Any, version: int) -> None:
        """Makes `params` the weights generators serve as `version`; returns once they do."""


class Learner(Protocol):
    """What the loop needs of a learner (`agentic.learner.Learner`)."""

    @property
    def version(self) -> int:
        """Weight version: the number of updates applied."""

    @property
    def params(self) -> Any:
        """The current policy params (a pytree of arrays)."""

    def update(self, trajectories: Sequence[Trajectory]) -> dict[str, float]:
        """One update (all its optimizer steps) on a batch of trajectories; returns metrics."""

    def save(self, step: int | None = None, *, data_state: dict | None = None, force: bool = False) -> bool:
        """Checkpoints params, optimizer and `data_state` (e.g. the task stream's position)."""

    def restore(self, step: int | None = None) -> dict | None:
        """Restores the latest (or `step`'s) checkpoint, if any; returns its data state."""

    def wait_for_checkpoint(self) -> None: ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------------- experiments


def _rewarded(trajectory: Trajectory) -> bool:
    return trajectory.reward > 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Experiment:
    """What the training loop needs of an experiment besides its config; the loop knows no env.

    train_tasks, eval_tasks: the tasks episodes start from (JSON mappings the env's `reset` takes).
    env_kwargs: merged over `config.env.kwargs` for every episode (e.g. the data the tasks come from).
    demo_policy: for the cold start (`config.warm_start`): builds a scripted policy (with
      `act(observation) -> action`) from an episode's prompt text; None skips the cold start.
    keep_demo: which scripted episodes the cold start trains on (default: rewarded ones).
    progress_metrics: env metrics shown on the progress line and reported per eval (e.g. "em").
    """

    train_tasks: Sequence[Task]
    eval_tasks: Sequence[Task] = ()
    env_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    demo_policy: Callable[[str], Any] | None = None
    keep_demo: Callable[[Trajectory], bool] = _rewarded
    progress_metrics: tuple[str, ...] = ()
