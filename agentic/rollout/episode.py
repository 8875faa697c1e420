"""One multi-turn episode, token in / token out.

The episode is kept as token ids from start to end: the prompt and every
observation are tokenized once when they arrive (loss mask 0), and model
tokens are appended exactly as sampled (loss mask 1, with their behavior
log-probs). Nothing is re-tokenized after the fact.

    prompt ──► generate ──► action ──► env.step ──► observation ──► generate ...
                (mask 1)                              (mask 0)

This is the continuation mode: the env's observations are appended as raw text, inside
the model's turn (Search-R1's protocol). `EpisodeConfig(mode="chat")` runs the episode as a
chat in the model's own template instead (`agentic/rollout/chat.py`). Imports run one way:
`transcript.py` (the protocol) <- `chat.py` <- this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from agentic.core import (
    Completion,
    GenerateRequest,
    GenerationAborted,
    Generator,
    Observation,
    SamplingParams,
    Step,
    Task,
    Trajectory,
)
from agentic.rollout.chat import ChatTranscript
from agentic.rollout.transcript import TextCodec, Transcript  # noqa: F401  (TextCodec: re-exported)


class EnvSession(Protocol):
    """What an episode needs from an env: an in-process `Env` or a remote session."""

    async def reset(self, task: Task) -> Observation: ...
    async def step(self, action: str) -> Step: ...
    async def close(self) -> dict[str, float] | None:
        """Ends the episode; may return its metrics (remote sessions do)."""


class _NoClock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


@dataclasses.dataclass(frozen=True)
class EpisodeClock:
    """Context managers the episode enters around its generate calls and its env calls."""

    generate: Any = _NoClock()
    env: Any = _NoClock()


EPISODE_MODES = ("continuation", "chat")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EpisodeConfig:
    """Limits and sampling of one episode.

    Attributes:
      mode: "continuation" (observations appended as raw text, today's Search-R1 protocol)
        or "chat" (observations become chat messages in the model's own chat template,
        see `agentic.rollout.chat`).
      max_turns: model turns before the episode is truncated.
      max_new_tokens_per_turn: generation cap per turn.
      max_total_tokens: cap on prompt + all turns; reaching it truncates.
      temperature, top_p, top_k: sampling (temperature 0 = greedy, for eval).
      use_chat_template: continuation mode: wrap the env's first observation as a user message.
      stop: stop strings used when the env does not announce its own
        (envs put theirs in `Observation.info["stop"]`).

    An env may also announce a turn cut in `Observation.info["turn_cut"]`: an
    ordered list of strings. The first of them that occurs in a model turn's text
    ends the turn there (see `cut_turn`); the tokens after it are dropped, never
    trained on, and the env receives the text up to and including it. An EOS right
    after the cut is kept: the model learns to end its turn where the cut would.
    """

    mode: str = "continuation"
    max_turns: int = 4
    max_new_tokens_per_turn: int = 500
    max_total_tokens: int = 4096
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    use_chat_template: bool = True
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if self.mode not in EPISODE_MODES:
            raise ValueError(f"unknown episode mode {self.mode!r}; choose one of {list(EPISODE_MODES)}")
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        if self.max_new_tokens_per_turn < 1:
            raise ValueError(f"max_new_tokens_per_turn must be >= 1, got {self.max_new_tokens_per_turn}")
        if self.max_total_tokens <= self.max_new_tokens_per_turn // 8:
            raise ValueError(f"max_total_tokens={self.max_total_tokens} leaves no room for a turn")


def cut_turn(ids: list[int], cuts: Sequence[str], tokenizer: TextCodec) -> tuple[int, str]:
    """Where a model turn ends: (how many of its tokens to keep, the action text for the env).

    The first string of `cuts` that occurs anywhere in the turn's decoded text decides
    (priority is the list order, not the position in the text). The turn keeps its tokens up
    to the first one at which the decoded text contains that string, and the action is the
    text up to and including the string's first occurrence. Without one (or `cuts` empty)
    all tokens are kept and the action is the whole text. Tokens are never re-tokenized: if
    the last kept token spells characters past the cut string, the trajectory keeps them
    while the env gets the text cut exactly.
    """
    text = tokenizer.decode(ids, skip_special_tokens=True)
    cut = next((s for s in cuts if s and s in text), None)
    if cut is None:
        return len(ids), text
    lo, hi = 1, len(ids)  # the shortest prefix whose text contains `cut` (prefix texts only grow)
    while lo < hi:
        mid = (lo + hi) // 2
        if cut in tokenizer.decode(ids[:mid], skip_special_tokens=True):
            hi = mid
        else:
            lo = mid + 1
    return lo, text[: text.index(cut) + len(cut)]


@dataclasses.dataclass
class EpisodeRecord:
    """The episode so far, token in / token out: what both episode modes append to."""

    tokens: list[int] = dataclasses.field(default_factory=list)
    mask: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    turn_starts: list[int] = dataclasses.field(default_factory=list)
    versions: list[int] = dataclasses.field(default_factory=list)
    token_versions: list[int] = dataclasses.field(default_factory=list)
    prompt_len: int = 0
    reward: float = 0.0
    done: bool = False
    truncated: bool = False
    empty_turn: bool = False
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def add_context(self, ids: Sequence[int]) -> None:
        """Prompt, observation or template tokens: loss mask 0."""
        self.tokens += ids
        self.mask += [0] * len(ids)
        self.logprobs += [0.0] * len(ids)
        self.token_versions += [-1] * len(ids)

    def add_turn(self, completion: Completion, kept: int) -> None:
        """The first `kept` sampled tokens of a model turn: loss mask 1, their behavior log-probs."""
        self.turn_starts.append(len(self.tokens))
        self.versions.append(completion.weight_version)
        self.tokens += completion.token_ids[:kept]
        self.mask += [1] * kept
        self.logprobs += completion.logprobs[:kept]
        # per token when the generator reports it (weights swapped mid-turn), else the turn's version
        per_token = completion.token_versions
        self.token_versions += (list(per_token[:kept]) if per_token is not None
                                else [completion.weight_version] * kept)

    def take_step(self, step: Step) -> bool:
        """Records the env's step; True when it ended the episode."""
        self.reward += step.reward
        self.info = dict(step.info)
        if step.done or step.truncated:
            self.done, self.truncated = step.done, step.truncated
            return True
        return False

    def trajectory(self, *, task: Task, group_id: str, env_metrics: dict[str, float],
                   extra_metrics: dict[str, float] | None = None) -> Trajectory:
        metrics = {k: float(v) for k, v in {**dict(self.info.get("metrics", {})), **env_metrics}.items()}
        metrics.setdefault("turns", float(len(self.turn_starts)))
        metrics["response_tokens"] = float(sum(self.mask))
        metrics["truncated"] = float(self.truncated)
        metrics["empty_turn"] = float(self.empty_turn)
        metrics.update(extra_metrics or {})
        return Trajectory(
            tokens=np.asarray(self.tokens, np.int32),
            loss_mask=np.asarray(self.mask, np.int8),
            behavior_logprobs=np.asarray(self.logprobs, np.float32),
            reward=self.reward,
            group_id=group_id,
            policy_version=min([v for v, m in zip(self.token_versions, self.mask, strict=True) if m]
                               or self.versions or [0]),
            prompt_len=self.prompt_len,
            turn_starts=tuple(self.turn_starts),
            truncated=self.truncated,
            metrics=metrics,
            task_id=str(task.get("id", "")),
            token_versions=np.asarray(self.token_versions, np.int32),
        )


async def sample_turn(generator: Generator, record: EpisodeRecord, config: EpisodeConfig, *, turn: int,
                      stop: tuple[str, ...], stop_token_ids: tuple[int, ...], seed: int, episode_id: str,
                      clock: EpisodeClock) -> Completion | None:
    """Generates one model turn from the whole episode so far; None when no token budget is left.

    Raises `GenerationAborted` when the generator aborted the turn."""
    budget = min(config.max_new_tokens_per_turn, config.max_total_tokens - len(record.tokens))
    if budget <= 0:
        return None
    params = SamplingParams(
        max_new_tokens=budget,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        stop=stop,
        stop_token_ids=stop_token_ids,
        seed=seed * 1009 + turn,
    )
    with clock.generate:
        completion = await generator.generate_one(
            GenerateRequest(prompt_ids=tuple(record.tokens), params=params, session_id=episode_id))
    if completion.finish_reason == "abort":  # e.g. the engine shut down mid-turn
        raise GenerationAborted(f"turn {turn} of episode {episode_id} was aborted "
                                f"({completion.matched or 'no reason given'})", completion)
    return completion


class ContinuationTranscript:
    """Continuation mode: the first observation as the prompt (as a user message in the chat
    template with `use_chat_template`), later observations appended as raw text inside the
    model's turn (Search-R1's protocol); a turn ends at the tokenizer's EOS."""

    def __init__(self, tokenizer: TextCodec, config: EpisodeConfig):
        self.tokenizer, self.use_chat_template = tokenizer, config.use_chat_template
        self.stop_token_ids = (tokenizer.eos_token_id,)

    def start(self, obs: Observation) -> list[int]:
        prompt = obs.text
        if self.use_chat_template:
            prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": obs.text}],
                                                        add_generation_prompt=True)
        return self.tokenizer.encode(prompt, add_special_tokens=False)

    def keep(self, ids: list[int], kept: int) -> int:
        if ids[kept:kept + 1] == [self.tokenizer.eos_token_id]:
            kept += 1  # the model ended its turn right at the cut: keep (and train) its EOS
        return kept

    def follow(self, kept_ids: list[int], step: Step, turn: int) -> list[int]:
        return self.tokenizer.encode(step.observation, add_special_tokens=False) if step.observation else []

    def metrics(self, tokens: list[int]) -> dict[str, float]:
        return {}


async def close_episode(env: EnvSession, generator: Generator, episode_id: str, clock: EpisodeClock
                        ) -> dict[str, float]:
    """Closes the env session and frees the generator's state of the episode; returns the env's metrics."""
    with clock.env:
        closed = await env.close()
    await generator.release(episode_id)
    return closed if isinstance(closed, dict) else getattr(env, "metrics", dict)()


async def run_episode(
    *,
    env: EnvSession,
    task: Task,
    generator: Generator,
    tokenizer: TextCodec,
    config: EpisodeConfig,
    episode_id: str,
    group_id: str,
    seed: int,
    clock: EpisodeClock = EpisodeClock(),
) -> Trajectory:
    """Runs one episode to the end and returns its trajectory.

    Env and generator errors propagate (the actor drops the group and counts
    them), and so does a turn the generator aborted (`GenerationAborted`): its
    partial output is never trained on as a normal turn. The env session is
    closed in every case. `clock` times the generate and env calls. The mode's
    `Transcript` turns text into tokens (`config.mode == "chat"`: `agentic.rollout.chat`).
    """
    if config.mode == "chat":
        transcript: Transcript = ChatTranscript(tokenizer)
    else:
        transcript = ContinuationTranscript(tokenizer, config)
    record = EpisodeRecord()
    try:
        with clock.env:
            obs = await env.reset(task)
        record.add_context(transcript.start(obs))
        record.prompt_len = len(record.tokens)
        stop = tuple(obs.info.get("stop", ())) or config.stop
        turn_cut = tuple(obs.info.get("turn_cut", ()))
        for turn in range(config.max_turns):
            completion = await sample_turn(generator, record, config, turn=turn, stop=stop,
                                           stop_token_ids=transcript.stop_token_ids, seed=seed,
                                           episode_id=episode_id, clock=clock)
            if completion is None:
                record.truncated = True
                break
            ids = list(completion.token_ids)
            kept, action = cut_turn(ids, turn_cut, tokenizer)
            kept = transcript.keep(ids, kept)
            record.add_turn(completion, kept)
            if not action:  # e.g. only EOS: nothing to send; the episode ends with what it has earned
                record.empty_turn = True
                break
            with clock.env:
                step = await env.step(action)
            if record.take_step(step):
                break
            follow = transcript.follow(ids[:kept], step, turn)
            if follow and len(follow) >= config.max_total_tokens - len(record.tokens):
                record.truncated = True
                break
            record.add_context(follow)
        else:
            record.truncated = not record.done
    finally:
        env_metrics = await close_episode(env, generator, episode_id, clock)
    return record.trajectory(task=task, group_id=group_id, env_metrics=env_metrics,
                             extra_metrics=transcript.metrics(record.tokens))
