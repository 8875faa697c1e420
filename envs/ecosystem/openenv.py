"""OpenEnv environments, hosted as they are: an `openenv` `Environment` class run in the worker, or an
OpenEnv server (`create_app` / `create_fastapi_app` under uvicorn, usually one container per env) driven
over its WebSocket session protocol (`/ws`) with OpenEnv's own `GenericEnvClient`.

    python -m agentic.env.host --envs openenv,openenv_remote --import envs.ecosystem.openenv

Kind "openenv" (in process), env kwargs: `environment` ("package.module:Class", an `Environment`
subclass or factory; required), `action` ("package.module:ActionClass"; default: the action type the
class declares as `Environment[Action, Observation, State]`), `env_kwargs` ({}), `action_field` and
`observation_field` (below), `imports`.
Kind "openenv_remote", env kwargs: `base_url` (e.g. "http://127.0.0.1:8000"; required), `action_field`
(default: read from the server's `/schema`), `observation_field`, `timeout_s` (60).

Text in and out: the model's action text fills `action_field` of the action (default: the one required
string field of the action model); the observation's `observation_field` (default: its one string field
besides OpenEnv's `done` / `reward` / `metadata`, else all its fields as JSON) is the text shown. The
step's reward and `done` are the observation's. Task: `{"seed": s, "episode_id": id}` (both optional),
passed to `reset`. A server error, a refused connection or a closed socket fails the session with
EnvStepError naming it.
"""

from __future__ import annotations

import importlib
import json
import typing
import urllib.request
from typing import Any

from agentic.core import Env, Observation, Step, Task
from agentic.env.registry import EnvSpec, register
from envs.ecosystem._common import as_float, jsonable, load_object

_BASE_FIELDS = {"done", "reward", "metadata"}


def _string_field(schema: dict[str, Any], what: str) -> str:
    """The one required string property of a JSON schema (an OpenEnv action model's)."""
    props = schema.get("properties", {})
    required = [name for name in schema.get("required", []) if props.get(name, {}).get("type") == "string"]
    if len(required) != 1:
        raise ValueError(f"cannot tell which field of the {what} takes the model's text (required string "
                         f"fields: {required}); set env kwarg 'action_field'")
    return required[0]


def observation_text(fields: dict[str, Any], field: str | None) -> str:
    """The text of an OpenEnv observation given as a dict (see the module docstring)."""
    if field:
        if field not in fields:
            raise KeyError(f"observation has no field {field!r}; it has {sorted(fields)}")
        value = fields[field]
        return value if isinstance(value, str) else json.dumps(jsonable(value))
    own = {k: v for k, v in fields.items() if k not in _BASE_FIELDS}
    strings = [v for v in own.values() if isinstance(v, str)]
    if len(strings) == 1 and len(own) == 1:
        return strings[0]
    return json.dumps(jsonable(own), sort_keys=True)


def _declared_action(cls: type) -> type | None:
    for klass in getattr(cls, "__mro__", ()):
        for base in getattr(klass, "__orig_bases__", ()):
            args = typing.get_args(base)
            if args and isinstance(args[0], type):
                return args[0]
    return None


class OpenEnvEnv(Env):
    """An OpenEnv `Environment` in the worker's process (see the module docstring)."""

    def __init__(self, environment: str = "", action: str = "", env_kwargs: dict[str, Any] | None = None,
                 action_field: str = "", observation_field: str = "", imports: list[str] | tuple[str, ...] = ()):
        if not environment:
            raise ValueError("env kwarg 'environment' is required ('package.module:Class' of an OpenEnv Environment)")
        for module in imports:
            importlib.import_module(module)
        factory = load_object(environment)
        self.action_cls = load_object(action) if action else _declared_action(factory)
        if self.action_cls is None:
            raise ValueError(f"{environment} declares no action type; set env kwarg 'action'")
        self.action_field = action_field or _string_field(self.action_cls.model_json_schema(), "action model")
        self.observation_field = observation_field or None
        self.env = factory(**(env_kwargs or {}))
        self.steps = 0
        self.total_reward = 0.0

    async def reset(self, task: Task) -> Observation:
        obs = await self.env.reset_async(seed=task.get("seed"), episode_id=task.get("episode_id"))
        return Observation(text=observation_text(obs.model_dump(), self.observation_field),
                           info={"env_info": jsonable(obs.metadata)})

    async def step(self, action: str) -> Step:
        obs = await self.env.step_async(self.action_cls(**{self.action_field: action}))
        return self._step(obs.model_dump())

    def _step(self, fields: dict[str, Any]) -> Step:
        self.steps += 1
        reward = as_float(fields.get("reward"), "OpenEnv observation reward")
        self.total_reward += reward
        done = bool(fields.get("done"))
        info: dict[str, Any] = {"env_info": jsonable(fields.get("metadata") or {})}
        if done:
            info["metrics"] = self.metrics()
        return Step(observation=observation_text(fields, self.observation_field), reward=reward, done=done,
                    info=info)

    async def close(self) -> None:
        self.env.close()

    def metrics(self) -> dict[str, float]:
        return {"steps": float(self.steps), "return": self.total_reward}


class OpenEnvRemote(OpenEnvEnv):
    """An OpenEnv server's session over its WebSocket (see the module docstring)."""

    def __init__(self, base_url: str = "", action_field: str = "", observation_field: str = "",
                 timeout_s: float = 60.0):
        if not base_url:
            raise ValueError("env kwarg 'base_url' is required (the OpenEnv server, e.g. http://127.0.0.1:8000)")
        self.base_url = base_url.rstrip("/")
        self.action_field, self.observation_field = action_field, observation_field or None
        self.timeout_s = timeout_s
        self.client: Any = None
        self.steps = 0
        self.total_reward = 0.0

    async def reset(self, task: Task) -> Observation:
        from openenv.core.generic_client import GenericEnvClient

        if not self.action_field:
            with urllib.request.urlopen(f"{self.base_url}/schema", timeout=self.timeout_s) as r:  # noqa: S310
                self.action_field = _string_field(json.load(r)["action"], f"action model of {self.base_url}")
        self.client = GenericEnvClient(base_url=self.base_url, connect_timeout_s=self.timeout_s,
                                       message_timeout_s=self.timeout_s)
        await self.client.connect()
        kwargs = {k: task[k] for k in ("seed", "episode_id") if task.get(k) is not None}
        result = await self.client.reset(**kwargs)
        return Observation(text=observation_text(dict(result.observation), self.observation_field),
                           info={"env_info": jsonable(result.metadata or {})})

    async def step(self, action: str) -> Step:
        result = await self.client.step({self.action_field: action})
        return self._step({**dict(result.observation), "reward": result.reward, "done": result.done})

    async def close(self) -> None:
        if self.client is not None:
            await self.client.disconnect()


register(EnvSpec(name="openenv", factory=OpenEnvEnv, max_sessions=20_000, step_deadline_s=30.0, memory_mb=1024,
                 description="an OpenEnv Environment class, run in the env worker",
                 example_task={"seed": 1},
                 example_kwargs={"environment": "envs.ecosystem.examples:ReverseEnvironment"}))
register(EnvSpec(name="openenv_remote", factory=OpenEnvRemote, max_sessions=20_000, step_deadline_s=60.0,
                 memory_mb=1024, description="an OpenEnv server's WebSocket sessions (base_url)"))
