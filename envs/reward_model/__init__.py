"""Reward-model env: an LLM judge (any Generator backend) scores the response."""

from agentic.env.registry import EnvSpec, register
from envs.reward_model.env import make_reward_model_env

register(EnvSpec(name="reward_model", factory=make_reward_model_env, max_sessions=4096, step_deadline_s=120.0,
                 memory_mb=512, description="LLM-as-judge reward: a judge model grades the response, 0..1",
                 example_task={"prompt": "What is 2 + 2?", "reference": "4"}, example_kwargs={"backend": "fixed"}))
