"""Small envs written against the packages' own base classes, as a third party would write them (the
packages ship no text env of their own): a gymnasium text env and an OpenEnv `Environment`, with the
OpenEnv server app that serves it (`python -m uvicorn envs.ecosystem.examples:openenv_app`)."""

from __future__ import annotations

import random
from typing import Any

import gymnasium
from openenv.core.env_server import Action, Environment, State, create_fastapi_app
from openenv.core.env_server import Observation as OpenEnvObservation


class CountdownText(gymnasium.Env):
    """gymnasium text env: count down from a seeded start; reward 1 per right number, a wrong one ends it."""

    observation_space = gymnasium.spaces.Text(200)
    action_space = gymnasium.spaces.Text(50)

    def __init__(self, low: int = 3, high: int = 6):
        self.low, self.high, self.n = low, high, 0

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.n = random.Random(seed).randint(self.low, self.high)
        return f"Count down from {self.n} to 0, one number per reply.", {"start": self.n}

    def step(self, action: str):
        if action.strip() != str(self.n - 1):
            return f"{action.strip()!r} is not {self.n - 1}.", 0.0, True, False, {"right": False}
        self.n -= 1
        return (f"{self.n}." if self.n else "0. Done!"), 1.0, self.n == 0, False, {"right": True}


class ReverseAction(Action):
    text: str


class ReverseObservation(OpenEnvObservation):
    text: str = ""


class ReverseEnvironment(Environment[ReverseAction, ReverseObservation, State]):
    """OpenEnv env: reverse the word shown; reward 1 for each right reversal, `rounds` words per episode."""

    SUPPORTS_CONCURRENT_SESSIONS = True
    WORDS = ("alpha", "bravo", "delta", "kilo", "lima", "oscar", "tango", "zulu")

    def __init__(self, rounds: int = 2):
        super().__init__()
        self.rounds, self.word = rounds, ""
        self.rng = random.Random(0)
        self._state = State(step_count=0)

    def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> ReverseObservation:
        self.rng = random.Random(seed)
        self._state = State(episode_id=episode_id, step_count=0)
        self.word = self.rng.choice(self.WORDS)
        return ReverseObservation(text=f"Reverse: {self.word}")

    def step(self, action: ReverseAction, timeout_s: float | None = None, **kwargs: Any) -> ReverseObservation:
        if action.text == "raise":
            raise RuntimeError("ReverseEnvironment was told to raise")
        self._state.step_count += 1
        right = action.text.strip() == self.word[::-1]
        done = self._state.step_count >= self.rounds
        self.word = self.rng.choice(self.WORDS)
        return ReverseObservation(text="" if done else f"Reverse: {self.word}", reward=float(right), done=done,
                                  metadata={"right": right})

    @property
    def state(self) -> State:
        return self._state


openenv_app = create_fastapi_app(ReverseEnvironment, ReverseAction, ReverseObservation, max_concurrent_envs=64)
