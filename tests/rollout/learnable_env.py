"""A test-only env whose reward a tiny random model can learn from scratch in about a minute.

Env hosts load it with `--import tests.rollout.learnable_env` (the launcher: `config.env.imports`).

"spaces": two model turns. A turn scores 1 if its text starts a new word (a leading space),
else 0. A random policy (sampled from its top few tokens) starts near the share of
space-led tokens among them; the maximum is 1. Between the turns the env answers with text
that teaches the opposite of the reward: space-free text after a good first turn, a run of
space-led words after a bad one. A learner that wrongly trains on environment tokens (with
the episode's advantage) is pushed towards space-free tokens in good episodes and away
from space-led ones in bad episodes, against the reward, by three times as many tokens as
the policy's own. The reward of an episode is the mean of its two turn scores.
"""

from __future__ import annotations

from agentic.core import Env, Observation, Step, Task
from agentic.env.registry import EnvSpec, register

# Each line of a reply starts the way a turn starts (after a newline), so env tokens trained
# on move exactly the choice the reward scores: "x" (space-free) after a good first turn,
# " the" (space-led) after a bad one; 12 lines, about 25 tokens each.
_GOOD_REPLY = "\nx" * 12 + "\n"
_BAD_REPLY = "\n the" * 12 + "\n"


class SpacesEnv(Env):
    def __init__(self, **_):
        self.scores: list[float] = []

    async def reset(self, task: Task) -> Observation:
        self.scores = []
        return Observation(text="Write some words:\n")

    def _score(self, action: str) -> float:
        return float(action.startswith(" "))

    async def step(self, action: str) -> Step:
        self.scores.append(self._score(action))
        if len(self.scores) == 1:
            reply = _GOOD_REPLY if self.scores[0] else _BAD_REPLY
            return Step(observation=reply, reward=self.scores[0] / 2)
        return Step(observation="", reward=self.scores[1] / 2, done=True,
                    info={"metrics": {"score": sum(self.scores) / 2}})

    def metrics(self) -> dict[str, float]:
        return {"score": sum(self.scores) / max(len(self.scores), 1)}


register(EnvSpec(name="spaces", factory=SpacesEnv, max_sessions=1024, step_deadline_s=10.0,
                 description="learnable from scratch: share of word-starting tokens", example_task={"id": "0"}))
