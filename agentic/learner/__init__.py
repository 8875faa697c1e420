"""Losses, advantages, train step, sharding rules, checkpoints: the Flax learner.

The API is `Learner` and `LearnerConfig` (see learner.py's docstring).
"""

from agentic.learner.learner import Learner, LearnerConfig, param_shardings

__all__ = ["Learner", "LearnerConfig", "param_shardings"]
