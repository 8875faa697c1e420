"""Sampler/learner mismatch corrections against hand-computed values, and the per-step metrics."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic import models
from agentic.core import Trajectory
from agentic.learner import Learner, LearnerConfig, mismatch
from agentic.learner.testing import synthetic_trajectories
from agentic.sharding import make_mesh

TINY = models.get_config("tiny")

# One packed row of 8 positions holding two sequences (segment 1: positions 0-3, segment 2: 4-6) and
# padding (position 7). Model tokens: 1, 2, 3 of segment 1 and 5, 6 of segment 2.
SEG = jnp.array([[1, 1, 1, 1, 2, 2, 2, 0]], jnp.int32)
MASK = jnp.array([[0, 1, 1, 1, 0, 1, 1, 0]], jnp.float32)
# log r = learner - behavior per token: segment 1: ln 3, ln 1.5, -ln 2 (prod r = 2.25, geo mean 2.25^(1/3));
# segment 2: ln 1.2, ln 1.1 (prod r = 1.32, geo mean sqrt(1.32)). Position 0 / 4 (not model tokens) differ
# wildly: they must count nowhere.
LOG_R = jnp.log(jnp.array([[50.0, 3.0, 1.5, 0.5, 0.01, 1.2, 1.1, 1.0]]))
BEHAVIOR = jnp.full((1, 8), -2.0)
LEARNER = BEHAVIOR + LOG_R


def _weights(mode, low=0.5, high=2.0):
    w, masked = mismatch.correction_weights(LEARNER, BEHAVIOR, MASK, SEG, mode=mode, low=low, high=high)
    return np.asarray(w)[0], np.asarray(masked)[0]


def test_icepop_masks_tokens_whose_ratio_leaves_the_band():
    w, masked = _weights("icepop")
    # r = 3 > 2 is masked; 1.5, 0.5 (the bound itself), 1.2, 1.1 are kept
    np.testing.assert_array_equal(w[MASK[0] > 0], [0, 1, 1, 1, 1])
    np.testing.assert_array_equal(masked, [0, 1, 0, 0, 0, 0, 0, 0])


def test_sequence_mask_uses_the_product_of_ratios():
    w, masked = _weights("seq_mask")
    # segment 1: prod r = 3 * 1.5 * 0.5 = 2.25 > 2: masked; segment 2: 1.32: kept
    np.testing.assert_array_equal(w[MASK[0] > 0], [0, 0, 0, 1, 1])
    assert masked.sum() == 3
    w, _ = _weights("seq_mask", high=2.3)
    np.testing.assert_array_equal(w[MASK[0] > 0], [1, 1, 1, 1, 1])


def test_geometric_mask_uses_the_per_token_geometric_mean():
    # geo means: 2.25^(1/3) = 1.3104, sqrt(1.32) = 1.1489: both kept at high 2, segment 1 alone masked at 1.2
    w, _ = _weights("geo_mask")
    np.testing.assert_array_equal(w[MASK[0] > 0], [1, 1, 1, 1, 1])
    assert 2.25 ** (1 / 3) > 1.2 > math.sqrt(1.32)
    w, masked = _weights("geo_mask", low=0.9, high=1.2)
    np.testing.assert_array_equal(w[MASK[0] > 0], [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(masked, [0, 1, 1, 1, 0, 0, 0, 0])


def test_sequence_importance_weight_is_the_truncated_product():
    w, masked = _weights("seq_is", high=2.0)
    np.testing.assert_allclose(w[[1, 2, 3]], [2.0] * 3, rtol=1e-6)     # min(2.25, 2)
    np.testing.assert_allclose(w[[5, 6]], [1.32] * 2, rtol=1e-5)       # 1.2 * 1.1
    w, _ = _weights("seq_is", high=5.0)
    np.testing.assert_allclose(w[[1, 2, 3]], [2.25] * 3, rtol=1e-5)
    assert masked.sum() == 0


def test_no_correction_and_config_errors():
    w, masked = _weights("none")
    assert (w == 1).all() and masked.sum() == 0
    with pytest.raises(ValueError, match="mismatch_correction 'icepo' unknown"):
        LearnerConfig(mismatch_correction="icepo")
    with pytest.raises(ValueError, match="0 <= low < 1 < high"):
        LearnerConfig(mismatch_correction="icepop", mismatch_high=0.9)
    with pytest.raises(ValueError, match="needs off_policy"):
        LearnerConfig(mismatch_correction="seq_is", off_policy="none")


def _trajectories():
    trajs = synthetic_trajectories(3, groups=2, group_size=4, vocab=TINY.vocab_size, max_len=40)
    return trajs


def test_each_step_logs_the_mismatch_the_recomputation_finds():
    """learner/mismatch_kl and mismatch_max_abs of an update equal the recomputed (mismatch.recompute) values,
    and a band that excludes one sequence's ratio masks exactly its tokens."""
    params = jax.device_get(models.init_params(TINY, jax.random.key(0)))
    trajs = _trajectories()
    # behavior = the model's own log-probs plus a known offset on one sequence's model tokens
    rep = mismatch.recompute(TINY, params, trajs, temperature=1.0, seq_buckets=(64,))
    shifted = []
    for i, t in enumerate(trajs):
        b = np.zeros(len(t), np.float32)
        pos = np.flatnonzero(t.loss_mask[1:]) + 1
        b[pos] = rep.learner[i] + (0.25 if i == 3 else 0.0)
        shifted.append(Trajectory(tokens=t.tokens, loss_mask=t.loss_mask, behavior_logprobs=b, reward=t.reward,
                                  group_id=t.group_id, policy_version=0, prompt_len=t.prompt_len))
    again = mismatch.recompute(TINY, params, shifted, temperature=1.0, seq_buckets=(64,))
    assert abs(again.max_abs - 0.25) < 1e-4
    # k3 with log r = -0.25 on sequence 3's tokens only
    n3 = len(again.learner[3])
    expect_kl = n3 * (math.exp(-0.25) + 0.25 - 1) / again.tokens
    assert abs(again.kl - expect_kl) < 1e-5

    cfg = LearnerConfig(lr=1e-2, micro_batch_size=4, seq_buckets=(64,), mesh_shape=(1, 1, 1), off_policy="tis",
                        mismatch_correction="icepop", mismatch_low=0.5, mismatch_high=2.0)
    learner = Learner(cfg, TINY, params, mesh=make_mesh((1, 1, 1)))
    m = learner.update(shifted)
    assert abs(m["learner/mismatch_max_abs"] - 0.25) < 1e-4
    assert abs(m["learner/mismatch_kl"] - expect_kl) < 1e-5
    assert m["learner/mismatch_masked_frac"] == 0.0  # r = exp(-0.25) = 0.78 is inside [0.5, 2]
    # a band that excludes sequence 3's ratio masks exactly its tokens
    tight = Learner(cfg.replace(mismatch_low=0.9), TINY, params, mesh=make_mesh((1, 1, 1)))
    m = tight.update(shifted)
    assert abs(m["learner/mismatch_masked_frac"] - n3 / again.tokens) < 1e-6
