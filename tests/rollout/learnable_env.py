"""A test-only env whose reward a tiny random model can learn from scratch in about a minute.

Env hosts load it with `--import tests.rollout.learnable_env` (the launcher: `config.env.imports`).

"spaces": two model turns. A turn scores 1 if its text starts a new word (a leading space),
else 0. A random policy (sampled from its top few tokens) starts near the share of
space-led tokens among them; the maximum is 1. Between the turns the env answers with a run
of space-free text, longer after a good first turn: an observation correlated with the
reward, so a learner that wrongly trains on environment tokens is pulled towards
space-free text. The reward of an episode is the mean of its two turn scores.
"""

from __future__ import annotations

from agentic.env.protocol import Env, Observation, Step, Task
from agentic.env.registry import EnvSpec, register

_NO_SPACE = "qzxvkjwfbhgmpdtcnlrsy"


class SpacesEnv(Env):
    def __init__(self, **_):
        self.scores: list[float] = []

    async def reset(self, task: Task) -> Observation:
        self.scores = []
        return Observation(text="Write some words:")

    def _score(self, action: str) -> float:
        return float(action.startswith(" "))

    async def step(self, action: str) -> Step:
        self.scores.append(self._score(action))
        if len(self.scores) == 1:
            n = 8 + round(24 * self.scores[0])
            return Step(observation="\n" + (_NO_SPACE * 8)[:n] + "\n", reward=self.scores[0] / 2)
        return Step(observation="", reward=self.scores[1] / 2, done=True,
                    info={"metrics": {"score": sum(self.scores) / 2}})

    def metrics(self) -> dict[str, float]:
        return {"score": sum(self.scores) / max(len(self.scores), 1)}


register(EnvSpec(name="spaces", factory=SpacesEnv, max_sessions=1024, step_deadline_s=10.0,
                 description="learnable from scratch: share of word-starting tokens", example_task={"id": "0"}))
