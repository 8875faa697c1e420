"""GEM and gymnasium-style text envs, hosted as they are: `reset(seed) -> (obs, info)` and
`step(text) -> (obs, reward, terminated, truncated, info)`.

    python -m agentic.env.host --envs gem,gymnasium --import envs.ecosystem.gym

Kinds: "gem" builds `gem.make(env_id, **make_kwargs)` (e.g. "game:GuessTheNumber-v0-easy",
"rg:basic_arithmetic"); "gymnasium" builds `gymnasium.make(env_id, **make_kwargs)` for any registered
gymnasium env whose observations and actions are text. An `env_id` that reads "package.module:Class"
builds that class directly (an env not in the package's registry). Env kwargs: `env_id` (required),
`make_kwargs` ({}), `imports` (modules to import first, e.g. one that registers your env with
`gymnasium.register`). Task: `{"seed": s}` (passed to `reset(seed=s)`).

The observation is the env's, as text (a non-str observation is written as JSON); the step's reward,
`terminated` (our `done`) and `truncated` are the env's; its info dict goes to `Step.info["env_info"]`
(JSON-safe). Not declared deterministic: GEM seeds the process-wide RNGs in `reset`, which the other
sessions of a worker share, so a replayed step need not draw what the first did.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any

from agentic.core import Env, Observation, Step, Task
from agentic.env.registry import EnvSpec, register
from envs.ecosystem._common import as_float, jsonable, load_object


def _text(obs: Any) -> str:
    return obs if isinstance(obs, str) else json.dumps(jsonable(obs))


class GymTextEnv(Env):
    """One episode of a gymnasium-style text env (see the module docstring).

    Args:
        make: the package's `make(env_id, **kwargs)`, as a "module:attr" path.
        env_id: a registry id, or "package.module:Class".
        make_kwargs: keyword arguments for `make` (or the class).
        imports: modules to import before making the env.
    """

    def __init__(self, make: str, env_id: str = "", make_kwargs: dict[str, Any] | None = None,
                 imports: list[str] | tuple[str, ...] = ()):
        if not env_id:
            raise ValueError("env kwarg 'env_id' is required (a registry id, or 'package.module:Class')")
        for module in imports:
            importlib.import_module(module)
        kwargs = dict(make_kwargs or {})
        factory: Callable[..., Any] = (load_object(env_id) if ":" in env_id and "." in env_id.split(":")[0]
                                      else lambda **kw: load_object(make)(env_id, **kw))
        self.env = factory(**kwargs)
        self.env_id = env_id
        self.turns = 0
        self.total_reward = 0.0

    async def reset(self, task: Task) -> Observation:
        seed = task.get("seed")
        obs, info = self.env.reset(seed=None if seed is None else int(seed))
        return Observation(text=_text(obs), info={"env_info": jsonable(info or {})})

    async def step(self, action: str) -> Step:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.turns += 1
        reward = as_float(reward, f"{self.env_id} step reward")
        self.total_reward += reward
        done, cut = bool(terminated), bool(truncated) and not terminated
        extra = {"env_info": jsonable(info or {})}
        if done or cut:
            extra["metrics"] = self.metrics()
        return Step(observation=_text(obs), reward=reward, done=done or cut, truncated=cut, info=extra)

    async def close(self) -> None:
        close = getattr(self.env, "close", None)
        if callable(close):
            close()

    def metrics(self) -> dict[str, float]:
        return {"turns": float(self.turns), "return": self.total_reward}


def gem_env(**kwargs: Any) -> GymTextEnv:
    return GymTextEnv("gem:make", **kwargs)


def gymnasium_env(**kwargs: Any) -> GymTextEnv:
    return GymTextEnv("gymnasium:make", **kwargs)


register(EnvSpec(name="gem", factory=gem_env, max_sessions=20_000, step_deadline_s=30.0, memory_mb=1024,
                 description="GEM text envs (gem.make(env_id)), multi-turn as GEM defines them",
                 example_task={"seed": 1}, example_kwargs={"env_id": "game:GuessTheNumber-v0-easy"}))
register(EnvSpec(name="gymnasium", factory=gymnasium_env, max_sessions=20_000, step_deadline_s=30.0,
                 memory_mb=1024, description="gymnasium-registered text envs (gymnasium.make(env_id))",
                 example_task={"seed": 1}, example_kwargs={"env_id": "envs.ecosystem.examples:CountdownText"}))
