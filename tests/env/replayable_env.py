"""A test-only deterministic env for the replay tests; hosts load it with `--import tests.env.replayable_env`.

The observation after each action is "<n>:<digest of the task and every action so far>", so a replay
that skipped or reordered an action would show. Actions: "wait:S" (await S seconds, then count it),
"exit" (the worker process exits: a poison action), "pid" (the worker's pid: not deterministic);
anything else is counted. Registered as "replayable" (deterministic) and "unreplayable" (not declared).
"""

import asyncio
import hashlib
import os

from agentic.core import Env, Observation, Step, Task
from agentic.env.registry import EnvSpec, register


class CountingEnv(Env):
    def __init__(self, done_after: int = 1000):
        self.done_after, self.n, self.digest = done_after, 0, ""

    async def reset(self, task: Task) -> Observation:
        self.digest = hashlib.sha1(repr(sorted(task.items())).encode()).hexdigest()[:12]
        return Observation(text=f"0:{self.digest}")

    async def step(self, action: str) -> Step:
        if action.startswith("wait:"):
            await asyncio.sleep(float(action[5:]))
        elif action == "exit":
            os._exit(7)
        elif action == "pid":
            return Step(observation=str(os.getpid()))
        self.n += 1
        self.digest = hashlib.sha1(f"{self.digest}|{action}".encode()).hexdigest()[:12]
        return Step(observation=f"{self.n}:{self.digest}", reward=1.0, done=self.n >= self.done_after)

    def metrics(self) -> dict[str, float]:
        return {"steps": float(self.n)}


def expected(task: dict, actions: list[str]) -> list[str]:
    """The observations an unbroken episode shows (for the tests to compare with)."""
    digest = hashlib.sha1(repr(sorted(task.items())).encode()).hexdigest()[:12]
    out = []
    for n, action in enumerate(actions, 1):
        digest = hashlib.sha1(f"{digest}|{action}".encode()).hexdigest()[:12]
        out.append(f"{n}:{digest}")
    return out


register(EnvSpec(name="replayable", factory=CountingEnv, max_sessions=20_000, step_deadline_s=10.0,
                 deterministic=True, description="test-only deterministic counter (replayed after a worker dies)"))
register(EnvSpec(name="unreplayable", factory=CountingEnv, max_sessions=20_000, step_deadline_s=10.0,
                 description="the same counter, not declared deterministic"))
