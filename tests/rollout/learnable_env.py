"""A test-only env whose reward a tiny random model can learn from scratch in about a minute.

Env hosts load it with `--import tests.rollout.learnable_env` (the launcher: `config.env.imports`).

"spaces": two model turns. Each turn scores the share of its tokens that start a new word
(spaces in the decoded text over `tokens_per_turn`, capped at 1). A random policy over
SmolLM2's vocabulary starts near the share of space-led tokens in the vocabulary; the
maximum is 1. Between the turns the env answers with a run of space-free text whose
length grows with the first turn's score: an observation correlated with the reward, so
a learner that wrongly trains on environment tokens is pulled away from the target.
The reward of an episode is the mean of its two turn scores.
"""

from __future__ import annotations

from agentic.env.protocol import Env, Observation, Step, Task
from agentic.env.registry import EnvSpec, register

_NO_SPACE = "qzxvkjwfbhgmpdtcnlrsy"


class SpacesEnv(Env):
    def __init__(self, tokens_per_turn: int = 8, **_):
        self.tokens_per_turn = tokens_per_turn
        self.scores: list[float] = []

    async def reset(self, task: Task) -> Observation:
        self.scores = []
        return Observation(text="Write some words:")

    def _score(self, action: str) -> float:
        return min(action.count(" ") / self.tokens_per_turn, 1.0)

    async def step(self, action: str) -> Step:
        self.scores.append(self._score(action))
        if len(self.scores) == 1:
            n = round(4 * self.tokens_per_turn * self.scores[0])
            return Step(observation="\n" + (_NO_SPACE * 8)[:n] + "\n", reward=self.scores[0] / 2)
        return Step(observation="", reward=self.scores[1] / 2, done=True,
                    info={"metrics": {"score": sum(self.scores) / 2}})

    def metrics(self) -> dict[str, float]:
        return {"score": sum(self.scores) / max(len(self.scores), 1)}


register(EnvSpec(name="spaces", factory=SpacesEnv, max_sessions=1024, step_deadline_s=10.0,
                 description="learnable from scratch: share of word-starting tokens", example_task={"id": "0"}))
