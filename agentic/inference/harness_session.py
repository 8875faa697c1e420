"""Session mode: an agent program (harness) that talks to our OpenAI routes becomes a trajectory.

The harness points its `openai` client at `{server}/sessions/{key}/v1` and runs as it always does;
every chat request it makes under `key` is recorded token-exactly, and when it reports its reward
(`POST {server}/sessions/{key}/reward {"reward": r}`) the session becomes `Trajectory`s:

- A session is a set of chains, each one growing token sequence with its text: the rendered prompt
  tokens (loss mask 0) and the tokens the engine sampled (loss mask 1, with their log-probs), turn after
  turn. A request renders its messages with the chat template; if the rendering starts with a chain's
  text, the chain is extended: only the new text after it (the template's end of the assistant turn
  when the model did not sample it, the tool / user messages, the next generation prompt) is tokenized,
  with mask 0, and the engine continues from the chain's own tokens. The assistant turns the harness
  sends back are matched to what was sampled (by the tool-call ids and content the server returned) and
  rendered from the sampled text, so the template writes them as the model did.
- A request whose rendering extends no chain (the harness rewrote history, a template that edits
  earlier turns) starts a new chain, flagged: its trajectory carries `metrics["prompt_diverged"] = 1`.
  Nothing is ever re-tokenized to make it fit.
- `n` > 1 (or two requests from the same point) branches: each choice extends its own copy.
- The reward turns every leaf chain (one not extended by another) into a `Trajectory` with that reward;
  `HarnessSessions.take(key)` hands them over (to a `TrajectoryQueue`, to `Learner.update`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from agentic.core import Completion, Trajectory

_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


class SessionError(ValueError):
    """A session request is malformed (bad key, unknown session, bad reward); `field` names what."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclasses.dataclass
class _Chain:
    tokens: list[int]
    mask: list[int]
    logprobs: list[float]
    text: str
    turn_starts: list[int] = dataclasses.field(default_factory=list)
    versions: list[int] = dataclasses.field(default_factory=list)
    tool_calls: int = 0
    diverged: bool = False
    extended: bool = False

    def copy(self) -> _Chain:
        return dataclasses.replace(self, tokens=list(self.tokens), mask=list(self.mask), logprobs=list(self.logprobs),
                                   turn_starts=list(self.turn_starts), versions=list(self.versions), extended=False)


@dataclasses.dataclass
class Turn:
    """A request's prompt, prepared for the engine: the chain it extends (None: a new chain)."""

    prompt_ids: list[int]
    text: str
    parent: _Chain | None
    diverged: bool


class HarnessSession:
    """The recorded requests of one session key (see the module docstring)."""

    def __init__(self, key: str):
        self.key = key
        self.chains: list[_Chain] = []
        self.requests = 0
        self.sampled_text: dict[str, str] = {}  # tool-call id or returned content -> the sampled text
        self.created = time.time()

    def assistant_text(self, message: dict[str, Any]) -> str | None:
        """The sampled text of an assistant turn this session returned, else None."""
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict) and call.get("id") in self.sampled_text:
                return self.sampled_text[call["id"]]
        content = message.get("content")
        if isinstance(content, str) and not message.get("tool_calls"):
            return self.sampled_text.get("content:" + content)
        return None

    def prepare(self, rendered: str, encode: Callable[[str], list[int]]) -> Turn:
        """The prompt ids for a request whose messages render to `rendered`."""
        self.requests += 1
        parent = max((c for c in self.chains if rendered.startswith(c.text)), key=lambda c: len(c.text), default=None)
        if parent is None:
            return Turn(encode(rendered), rendered, None, diverged=bool(self.chains))
        return Turn(parent.tokens + encode(rendered[len(parent.text):]), rendered, parent, diverged=False)

    def record(self, turn: Turn, completions: Sequence[Completion], decode: Callable[[list[int]], str],
               returned: Sequence[tuple[str | None, list[dict[str, Any]]]], end_of_turn: int | None) -> None:
        """Adds each choice's sampled tokens as a chain extending the turn's parent.

        `returned`: per choice, the content and tool calls the server answered with (the harness sends
        them back; `assistant_text` maps them to the sampled text). `end_of_turn`: the template's token
        that closes an assistant turn (its text is rendered after the assistant content)."""
        base = turn.parent
        for c, (content, calls) in zip(completions, returned, strict=True):
            if c.finish_reason == "abort":
                continue
            if base is None:
                chain = _Chain(tokens=list(turn.prompt_ids), mask=[0] * len(turn.prompt_ids),
                               logprobs=[0.0] * len(turn.prompt_ids), text=turn.text, diverged=turn.diverged)
            else:
                chain = base.copy()
                added = turn.prompt_ids[len(base.tokens):]
                chain.tokens += added
                chain.mask += [0] * len(added)
                chain.logprobs += [0.0] * len(added)
                chain.text = turn.text
                base.extended = True
            ids = list(c.token_ids)
            chain.turn_starts.append(len(chain.tokens))
            chain.tokens += ids
            chain.mask += [1] * len(ids)
            chain.logprobs += [float(x) for x in c.logprobs]
            chain.versions.append(c.weight_version)
            chain.tool_calls += len(calls)
            sampled = decode(ids)
            chain.text += sampled
            body = decode(ids[:-1]) if ids and ids[-1] == end_of_turn else sampled
            for call in calls:
                self.sampled_text[call["id"]] = body
            if not calls and content is not None:
                self.sampled_text["content:" + content] = body
            self.chains.append(chain)

    def trajectories(self, reward: float, group_id: str, task_id: str) -> list[Trajectory]:
        """Every leaf chain with a sampled turn, as a Trajectory rewarded `reward`."""
        out = []
        for chain in self.chains:
            if chain.extended or not chain.turn_starts:
                continue
            out.append(Trajectory(
                tokens=chain.tokens, loss_mask=chain.mask, behavior_logprobs=chain.logprobs, reward=reward,
                group_id=group_id, policy_version=min(chain.versions), prompt_len=chain.turn_starts[0],
                turn_starts=tuple(chain.turn_starts), task_id=task_id,
                metrics={"turns": float(len(chain.turn_starts)), "tool_calls": float(chain.tool_calls),
                         "prompt_diverged": float(chain.diverged), "session_requests": float(self.requests)}))
        return out

    def summary(self) -> dict[str, Any]:
        leaves = [c for c in self.chains if not c.extended and c.turn_starts]
        return {"session": self.key, "requests": self.requests, "chains": len(leaves),
                "diverged": sum(c.diverged for c in leaves), "tokens": [len(c.tokens) for c in leaves],
                "sampled_tokens": [sum(c.mask) for c in leaves]}


class HarnessSessions:
    """The server's open sessions and the trajectories of the finished ones.

    Args:
      max_sessions: open sessions at once (a new key past it is refused).
      on_finished: called with (key, trajectories) when a session reports its reward (e.g. to put a
        group on a TrajectoryQueue); the trajectories are also kept for `take(key)`.
    """

    def __init__(self, max_sessions: int = 10_000,
                 on_finished: Callable[[str, list[Trajectory]], None] | None = None):
        self.max_sessions = max_sessions
        self.on_finished = on_finished
        self.open: dict[str, HarnessSession] = {}
        self.finished: dict[str, list[Trajectory]] = {}

    @staticmethod
    def check_key(key: str) -> str:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise SessionError("session", f"key must be 1-128 characters of [A-Za-z0-9_.:-], got {key!r:.140}")
        return key

    def get(self, key: str) -> HarnessSession:
        """The open session `key`, opened by its first request."""
        self.check_key(key)
        session = self.open.get(key)
        if session is None:
            if key in self.finished:
                raise SessionError("session", f"session {key!r} already reported its reward; use a new key")
            if len(self.open) >= self.max_sessions:
                raise SessionError("session", f"{self.max_sessions} sessions are open (the server's limit); "
                                              "report rewards or delete sessions first")
            session = self.open[key] = HarnessSession(key)
        return session

    def report(self, key: str, reward: Any, group_id: Any = None, task_id: Any = None) -> list[Trajectory]:
        """Ends session `key` with `reward`; returns (and keeps) its trajectories."""
        self.check_key(key)
        if isinstance(reward, bool) or not isinstance(reward, int | float) or not math.isfinite(reward):
            raise SessionError("reward", f"must be a finite number, got {reward!r:.100}")
        for name, value in (("group_id", group_id), ("task_id", task_id)):
            if value is not None and not isinstance(value, str):
                raise SessionError(name, f"must be a string, got {value!r:.100}")
        session = self.open.pop(key, None)
        if session is None:
            raise SessionError("session", f"no open session {key!r} (it made no request, or already reported)")
        trajectories = session.trajectories(float(reward), group_id or f"session-{uuid.uuid4().hex[:12]}",
                                            task_id or key)
        self.finished[key] = trajectories
        if self.on_finished is not None:
            self.on_finished(key, trajectories)
        return trajectories

    def take(self, key: str) -> list[Trajectory]:
        """The trajectories of a finished session (once; KeyError when it has not reported)."""
        return self.finished.pop(key)

    def drop(self, key: str) -> bool:
        return self.open.pop(key, None) is not None or self.finished.pop(key, None) is not None
