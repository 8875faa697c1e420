"""The plain data the contracts of `agentic.core` exchange: tasks, observations and steps
(env side), sampling parameters, requests and completions (generator side). Immutable,
importing nothing of the framework (`agentic.core` imports this module, never the reverse) and
re-exported by `agentic.core`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

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
        # Ranges the engine's int32/float32 sampling arrays hold: a request past them fails here, alone,
        # instead of raising in the engine thread (issue 31: top_k 2**40 closed the engine for good).
        if not 0 <= self.temperature < float("inf"):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if int(self.top_k) != self.top_k or not -1 <= self.top_k < 2**31:
            raise ValueError(f"top_k must be an integer in [-1, 2**31), got {self.top_k}")
        if self.max_new_tokens >= 2**31:
            raise ValueError(f"max_new_tokens must be < 2**31, got {self.max_new_tokens}")
        if any(not 0 <= int(t) < 2**31 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be in [0, 2**31), got {self.stop_token_ids}")
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
    their logprobs are still those they were sampled from). token_versions: the version
    that sampled each token, where the generator knows it (None: `weight_version` for all).
    cached_tokens: prompt tokens served from the prefix cache, not prefilled again.
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: FinishType
    matched: str | int | None = None
    weight_version: int = 0
    token_versions: tuple[int, ...] | None = None
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
