"""Env protocol, registry, gRPC env host and client."""

from agentic.core import Env, Observation, Step, Task
from agentic.env.registry import EnvSpec, get_spec, make, names, register

__all__ = ["Env", "EnvSpec", "Observation", "Step", "Task", "get_spec", "make", "names", "register"]
