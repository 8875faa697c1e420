"""An env session on an env host, with the `Env` surface the episode loop uses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentic.core import Observation, Step, Task
from agentic.env.client import EnvClient, Session


class RemoteEnv:
    """One episode of env `name` on whichever host the client places it."""

    def __init__(self, client: EnvClient, name: str, env_kwargs: Mapping[str, Any] | None = None):
        self.client = client
        self.name = name
        self.env_kwargs = dict(env_kwargs or {})
        self.session: Session | None = None

    async def reset(self, task: Task) -> Observation:
        self.session, obs = await self.client.open(self.name, task=task, env_kwargs=self.env_kwargs)
        return obs

    async def step(self, action: str) -> Step:
        if self.session is None:
            raise RuntimeError("step before reset")
        return await self.client.step(self.session, action)

    async def close(self) -> dict[str, float]:
        if self.session is None:
            return {}
        session, self.session = self.session, None
        return await self.client.close(session)
