"""The echo env (trivial; for tests and benchmarks)."""

from agentic.env.registry import EnvSpec, register
from envs.echo.env import EchoEnv

register(EnvSpec(name="echo", factory=EchoEnv, max_sessions=20_000, step_deadline_s=10.0, memory_mb=256,
                 description="repeats the action back; ends after task['turns'] steps with reward 1",
                 example_task={"prompt": "hi", "turns": 2}))
