"""Rule-based math answer checker env (\\boxed{}, <answer>, "the answer is", numeric equivalence)."""

from agentic.env.registry import EnvSpec, register
from envs.math.env import MathEnv

register(EnvSpec(name="math", factory=MathEnv, max_sessions=20_000, step_deadline_s=5.0, memory_mb=256,
                 description="single-step math question; reward 1 when the extracted answer matches",
                 example_task={"question": "What is 2 + 2?", "answer": "4"}))
