"""Episodes that survive their worker: the env host replays a deterministic env's session onto a fresh
worker after the worker holding it dies.

An env kind declares `EnvSpec(deterministic=True)` when its `reset` and `step` give the same replies for
the same task, env kwargs and actions. For such a session the host keeps a `SessionLog`: the task, the
env kwargs, every action it applied and a digest of every reply (observation, reward, done, truncated).
When the session's worker dies (SIGKILL, OOM, crash, a memory recycle) the session is not failed; at
its next op (at once, for an op that was in flight) the host sends a live worker one "replay" op
(`agentic.env.worker`: reset with the task, then the logged actions, answering each reply's digest),
checks the digests against the log, then goes on with the op.

What ends a session anyway, with a typed error (SESSION_LOST naming why):
- a replayed reply that differs from the logged one (the env was not deterministic after all);
- the env raising during the replay, or the replay's reset failing;
- `MAX_DEATHS_PER_OP` deaths of its worker while the same op was in flight on it (an action that
  kills every worker it runs on is not replayed forever; deaths during a replay do not count).
The replay op has the kind's step deadline, as a normal op does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

MAX_DEATHS_PER_OP = 5


def reply_digest(reply: dict[str, Any]) -> str:
    """What a replayed reset / step must answer again: its observation, info, reward and end flags."""
    ok = reply.get("ok", {})
    key = [ok.get("observation"), ok.get("reward"), ok.get("done"), ok.get("truncated"), ok.get("info")]
    return hashlib.blake2b(json.dumps(key).encode(), digest_size=16).hexdigest()


@dataclasses.dataclass
class SessionLog:
    """A deterministic session's inputs and replies, enough to rebuild it on another worker."""

    task: dict[str, Any]
    kwargs: dict[str, Any]
    reset_digest: str = ""
    actions: list[str] = dataclasses.field(default_factory=list)
    digests: list[str] = dataclasses.field(default_factory=list)
    needs_replay: bool = False
    replays: int = 0
    deaths_this_op: int = 0

    def open_msg(self, sid: str) -> dict[str, Any]:
        return {"op": "open", "sid": sid, "task": self.task, "kwargs": self.kwargs}

    def applied(self, action: str, reply: dict[str, Any]) -> None:
        """Logs a step the env answered (an error ends the session; an invalid action changes nothing)."""
        self.actions.append(action)
        self.digests.append(reply_digest(reply))


class ReplayFailed(Exception):
    """The session could not be rebuilt; the message says why."""


async def replay(log: SessionLog, sid: str, call) -> None:
    """Rebuilds session `sid` through `call(msg) -> reply` (one live worker's call with the deadline): one
    "replay" op, which resets the env with the task and applies the logged actions in the worker.

    Raises:
      ReplayFailed: a reply differs from the log, or the env failed.
      WorkerDied / WorkerTimeout: from `call` (the caller decides).
    """
    reply = await call({"op": "replay", "sid": sid, "task": log.task, "kwargs": log.kwargs, "actions": log.actions})
    if "err" in reply:
        raise ReplayFailed(f"its replay failed: {reply['err'].get('message', '')}")
    got = reply["ok"]["digests"]
    want = [log.reset_digest, *log.digests]
    if got != want:
        at = next(i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b) if got[:1] else 0
        where = "its reset" if at == 0 else f"replayed step {at} of {len(log.actions)}"
        raise ReplayFailed(f"{where} answered differently (the env is not deterministic)")
    log.needs_replay = False
    log.replays += 1
