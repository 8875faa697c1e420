"""Boundary checks of the core contracts: bad values get errors naming the field."""

import numpy as np
import pytest

from agentic.core import Trajectory
from agentic.env import EnvSpec
from agentic.inference import SamplingParams


def test_sampling_params_reject_bad_values():
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    assert SamplingParams(stop="</search>").stop == ("</search>",)


def test_env_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="max_sessions"):
        EnvSpec(name="x", factory=object, max_sessions=0)
    with pytest.raises(ValueError, match="name"):
        EnvSpec(name="bad name", factory=object)


def test_trajectory_checks_lengths():
    with pytest.raises(ValueError, match="loss_mask"):
        Trajectory(tokens=[1, 2, 3], loss_mask=[0, 1], behavior_logprobs=[0, 0, 0], reward=0.0,
                   group_id="g", policy_version=0, prompt_len=1)
    t = Trajectory(tokens=[1, 2, 3], loss_mask=[0, 1, 1], behavior_logprobs=[0, -1, -2], reward=1.0,
                   group_id="g", policy_version=0, prompt_len=1)
    assert t.tokens.dtype == np.int32 and len(t) == 3
