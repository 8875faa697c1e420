"""Registry of env kinds by name, each with its resource spec.

Adding an env is one file plus one `register(...)` line in its package's
`__init__.py`. An env is registered when the module that defines it is imported:
by the experiment that uses it, by the env host (`--import MODULE`, which the
launcher passes from `config.env.imports`), or by `import envs` (every bundled
env). The framework itself imports no env.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from agentic.core import Env
from agentic.registry import Registry


@dataclasses.dataclass(frozen=True, kw_only=True)
class EnvSpec:
    """How to build an env kind and what it may use.

    Attributes:
        name: registry key, e.g. "search_r1".
        factory: builds one `Env` per episode from keyword arguments (the env
            kind's config, JSON-serializable).
        max_sessions: concurrent episodes one env host admits for this kind.
        step_deadline_s: a step slower than this is failed with DEADLINE_EXCEEDED
            and its worker recycled.
        memory_mb: memory limit of one worker process (RSS); the env host recycles a worker
            that grows past it (a leak), failing its sessions (`--worker-memory-mb` overrides).
        description: one line for `--help` and error messages.
        example_task: a task (or a zero-argument callable returning one, for tasks that need data
            built first) that the conformance suite (`agentic.env.conformance`) plays; every
            registered env needs one.
        example_kwargs: env kwargs for that conformance episode (JSON object).
        deterministic: `reset` and `step` give the same observations, rewards and ends for the same
            task, env kwargs and actions (any randomness seeded from the task). The env host then
            replays a session's recorded actions onto a fresh worker when its worker dies, and the
            episode goes on; for other envs a worker's death fails its sessions with SESSION_LOST.
    """

    name: str
    factory: Callable[..., Env]
    max_sessions: int = 1024
    step_deadline_s: float = 30.0
    memory_mb: int = 1024
    description: str = ""
    example_task: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None
    example_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    deterministic: bool = False

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"env name {self.name!r} must be non-empty [A-Za-z0-9_-]")
        if self.max_sessions < 1:
            raise ValueError(f"env {self.name!r}: max_sessions must be >= 1, got {self.max_sessions}")
        if self.step_deadline_s <= 0:
            raise ValueError(f"env {self.name!r}: step_deadline_s must be > 0, got {self.step_deadline_s}")


ENVS: Registry[EnvSpec] = Registry(
    "env", hint="An env registers when its module is imported: import it in the experiment, pass "
               "`--import MODULE` to the env host (the launcher passes config.env.imports), or "
               "`--import envs` for every bundled env")


def register(spec: EnvSpec) -> EnvSpec:
    """Registers an env kind; another spec under a registered name is an error."""
    existing = ENVS.get(spec.name) if spec.name in ENVS else None
    if existing is not None and existing.factory is spec.factory:
        return existing  # the same module imported twice
    return ENVS.add(spec.name, spec)


def get_spec(name: str) -> EnvSpec:
    """The spec of a registered env; a miss lists the registered ones and how to register more."""
    return ENVS.get(name)


def make(name: str, **kwargs: Any) -> Env:
    """Builds one episode of env `name`."""
    return get_spec(name).factory(**kwargs)


def names() -> list[str]:
    return ENVS.names()
