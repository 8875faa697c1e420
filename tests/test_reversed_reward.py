"""tools/reversed_reward.py, the control run: its estimator is GRPO negated, its command line says what is wrong."""

import math
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np

from agentic.learner import advantages
from tools import reversed_reward

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_grpo_reversed_is_minus_grpo():
    name = reversed_reward.register_reversed()
    assert reversed_reward.register_reversed() == name  # registering twice is harmless
    inputs = advantages.AdvantageInputs(mask=jnp.ones((4, 2)), rewards=jnp.array([1.0, 0.0, 0.0, 1.0]),
                                        group=jnp.zeros(4, jnp.int32), valid=jnp.ones(4, bool))
    adv, returns = advantages.ESTIMATORS.get(name)(inputs, eps=0.0)
    # GRPO: mean 0.5, unbiased std sqrt(1/3): A = +-0.5 / sqrt(1/3); reversed: the opposite sign
    a = 0.5 / math.sqrt(1 / 3)
    np.testing.assert_allclose(adv[:, 0], [-a, a, a, -a], rtol=1e-6)
    assert returns is None


def run_tool(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "reversed_reward.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_command_line_errors_name_the_problem():
    out = run_tool("nope", "--config=experiments/configs/search_r1.py")
    assert out.returncode != 0 and "search_r1,tool_math" in out.stderr and "nope" in out.stderr
    out = run_tool("search_r1", "--config=experiments/configs/search_r1.py", "--config.learner.algorithm=rloo")
    assert out.returncode != 0 and "this control sets it" in out.stderr
