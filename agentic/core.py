"""The contracts everything plugs into: env, generator, trajectory, queue, weights, learner.

    Env ──Observation/Step──► episode ──► Trajectory ─┐ (a Group: n samples of one task)
          ▲ (actor)  │                                 ▼
          │          └─ Generator: token in, token out  TrajectoryQueue ──► Learner.update
          │                     ▲                                                │
          └─────────────────────┴──────────── WeightPublisher ◄── params, version ┘

Implementations import this module and it imports none of them: envs (`envs/`), the
episode and actor (`agentic.rollout`), generators (`agentic.inference`: the embedded
engine, the SGLang client), queues (`agentic.transport`), the learner
(`agentic.learner`) and the loop (`agentic.launcher`). Everything here is plain data
or an abstract interface; nothing crosses a process boundary as pickle.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np

# ----------------------------------------------------------------------------- environments

Task = Mapping[str, Any]  # JSON-serializable, e.g. {"question": ..., "golden_answers": [...]}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Observation:
    """What `Env.reset` shows the model: the prompt text and JSON extras (system prompt, the
    stop strings and turn cut of the env's action protocol, its turn budget)."""

    text: str
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Step:
    """The result of one `Env.step`.

    observation: appended to the episode after the action (loss mask 0); may be empty.
    reward: this step's reward. done: ended by the env's rules (answered, won).
    truncated: cut short (turn limit...), the reason in `info`; an observation the env
      host cut to its size limit is flagged in `info["observation_truncated"]` instead.
    info: JSON extras, with the episode's `metrics` on the last step.
    """

    observation: str
    reward: float = 0.0
    done: bool = False
    truncated: bool = False
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)


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


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How to sample one completion.

    temperature 0 is greedy; top_p in (0, 1]; top_k -1 (or 0) disables. `stop` strings are
    matched on the detokenized output and kept in it; `stop_token_ids` end it too (the
    backend adds the tokenizer's EOS unless `ignore_eos`). `seed`: per-request sampling
    seed (None draws one; real SGLang honours it only with `--enable-deterministic-inference`).
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if int(self.top_k) != self.top_k:
            raise ValueError(f"top_k must be an integer, got {self.top_k}")
        object.__setattr__(self, "stop", (self.stop,) if isinstance(self.stop, str) else tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerateRequest:
    """One prompt to complete: the episode's whole token history so far. `session_id` (the
    episode) lets backends reuse its prefix KV and pin its turns to one server / slot."""

    prompt_ids: Sequence[int]
    params: SamplingParams = SamplingParams()
    session_id: str | None = None


FinishType = Literal["stop", "length", "abort"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Completion:
    """What a Generator returns for one request.

    logprobs[i] = log p(token_ids[i] | prompt, token_ids[:i]) under log_softmax(logits /
    temperature), before top-k / top-p truncation (temperature 0: log_softmax(logits)); the
    learner recomputes it with the same temperature for importance ratios.
    finish_reason: "stop" (stop string / token / EOS), "length" or "abort" (partial: never
    trained on as a normal turn). weight_version: the weights served when it finished
    (swapped between decode steps, so earlier tokens may come from the version before;
    their logprobs are still those they were sampled from). cached_tokens: prompt tokens
    served from the prefix cache, not prefilled again.
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: FinishType
    matched: str | int | None = None
    weight_version: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    text: str | None = None


class GeneratorError(RuntimeError):
    """A request could not be served (no server reachable, engine shut down)."""


class GenerationAborted(GeneratorError):
    """The generator aborted the request; `completion` is the partial one (drop the episode)."""

    def __init__(self, message: str, completion: Completion):
        super().__init__(message)
        self.completion = completion


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
        set_ = object.__setattr__
        set_(self, "tokens", _frozen_array(self.tokens, np.int32))
        set_(self, "loss_mask", _frozen_array(self.loss_mask, np.int8))
        set_(self, "behavior_logprobs", _frozen_array(self.behavior_logprobs, np.float32))
        if self.token_rewards is not None:
            set_(self, "token_rewards", _frozen_array(self.token_rewards, np.float32))
        set_(self, "turn_starts", tuple(int(s) for s in self.turn_starts))
        n = len(self.tokens)
        for name in ("loss_mask", "behavior_logprobs", "token_rewards"):
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


Group = Sequence[Trajectory]  # the n samples of one task, delivered together


# ----------------------------------------------------------------------------- queue, weights, experiment, learner


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
