"""The echo env: repeats the action back. For tests, load tests and benchmarks."""

from __future__ import annotations

import asyncio

from agentic.core import Env, Observation, Step, Task


class EchoEnv(Env):
    """Echoes each action; the episode ends after `turns` steps with reward 1.

    Task keys (all optional): `prompt` (first observation, default "echo"), `turns`
    (steps per episode, default 1). Env kwargs: `delay_s`, a sleep per step that
    stands in for env latency.
    """

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = float(delay_s)
        self.turns = 1
        self.steps = 0

    async def reset(self, task: Task) -> Observation:
        self.turns = int(task.get("turns", 1))
        if self.turns < 1:
            raise ValueError(f"echo task 'turns' must be >= 1, got {self.turns}")
        return Observation(text=str(task.get("prompt", "echo")))

    async def step(self, action: str) -> Step:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.steps += 1
        done = self.steps >= self.turns
        return Step(observation=action, reward=1.0 if done else 0.0, done=done)

    def metrics(self) -> dict[str, float]:
        return {"steps": float(self.steps)}
