"""The Generator protocol: token in, token out, with behavior log-probs.

Backends: the embedded JAX engine (`agentic.inference.engine`) and SGLang
servers over HTTP (`agentic.inference.sglang_client`), which also serves our
own SGLang-compatible server (`agentic.inference.launch_server`).

Log-prob definition (the learner relies on it): `Completion.logprobs[i]` is
log p(token_ids[i] | prompt, token_ids[:i]) under the distribution the token was
sampled from *before* top-k / top-p truncation but *after* temperature scaling,
i.e. `log_softmax(logits / temperature)[token]` (temperature 0 = greedy: the
log-prob under `log_softmax(logits)`). The learner recomputes
`log_softmax(logits / temperature)` with the same temperature for importance
ratios.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Literal


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How to sample one completion.

    Attributes:
      max_new_tokens: hard cap on generated tokens (finish reason `length`).
      temperature: 0 means greedy.
      top_p: nucleus sampling mass in (0, 1].
      top_k: keep the k most likely tokens; -1 (or 0) disables.
      stop: stop strings, matched on the detokenized output; the matched string
        is kept in the output tokens (the env sees its own closing tag).
      stop_token_ids: token ids that end the completion (EOS is added by the
        backend from the tokenizer); the stop token is kept in the output.
      seed: per-request sampling seed; None draws one. The embedded engine and
        our server always use it; real SGLang only when started with
        `--enable-deterministic-inference` (sent as `sampling_seed`; SGLangClient
        warns when a server says it ignores seeds, or raises with require_seeds).
      ignore_eos: do not stop at the tokenizer's EOS (SGLang's `ignore_eos`;
        explicit `stop_token_ids` still stop: real SGLang skips them under
        ignore_eos, so SGLangClient cuts the output at the first one). Benchmarks
        use it to generate exactly max_new_tokens.
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
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerateRequest:
    """One prompt to complete.

    Attributes:
      prompt_ids: the full token history (prompt + all earlier turns).
      params: sampling parameters.
      session_id: optional episode id; backends use it for prefix reuse and
        server affinity (an episode's turns go to the same server / KV slot).
    """

    prompt_ids: Sequence[int]
    params: SamplingParams = SamplingParams()
    session_id: str | None = None


FinishType = Literal["stop", "length", "abort"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Completion:
    """What a Generator returns for one request.

    Attributes:
      token_ids: generated token ids (including a matched stop token).
      logprobs: one behavior log-prob per generated token (see module doc).
      finish_reason: "stop" (a stop string or stop/EOS token matched),
        "length" (max_new_tokens) or "abort" (server shut down, error). An
        aborted completion is partial: never train on it as a normal turn
        (SGLangClient retries aborts, then raises `GenerationAborted`).
      matched: the stop string or stop token id that matched, if any.
      weight_version: version of the weights being served when the completion
        finished (what SGLang's meta_info.weight_version reports). Weights are
        swapped between decode steps, so when an update lands mid-request the
        earlier tokens came from the previous version; their `logprobs` are
        still exactly those of the distribution each token was sampled from.
      prompt_tokens: prompt length; cached_tokens: how many of them were
        served from the prefix cache (not prefilled again).
      text: detokenized output, when the backend provides it.
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
    """The generator aborted the request (finish_reason "abort"; the SGLang client: on every try).

    `completion` is the last partial completion. It must not be trained on as a
    normal turn: drop the episode (or its group) and count it.
    """

    def __init__(self, message: str, completion: Completion):
        super().__init__(message)
        self.completion = completion


class Generator(abc.ABC):
    """Async token-in/token-out generation. Many requests may be in flight."""

    @abc.abstractmethod
    async def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        """Completes every request; order of results matches `requests`."""

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
