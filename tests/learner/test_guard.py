"""Nothing non-finite reaches the weights or the checkpoints (issue 31), through the public Learner.

Before: a NaN behavior log-prob on a masked position stayed NaN (NaN * 0) and flowed through TIS into
the loss, a NaN reward gave NaN advantages, clip_by_global_norm passed NaN through to every weight,
and a NaN state was checkpointed over the good ones.
"""

import dataclasses

import jax
import numpy as np
import pytest

from agentic import models
from agentic.learner import Learner, LearnerConfig
from agentic.learner.testing import synthetic_trajectories
from agentic.sharding import make_mesh

TINY = models.get_config("tiny")
CFG = LearnerConfig(algorithm="grpo", lr=1e-2, adam_eps=1e-4, micro_batch_size=8, seq_buckets=(64,),
                    off_policy="tis", mesh_shape=(1, 1, 1))


@pytest.fixture(scope="module")
def init_params():
    return jax.device_get(models.init_params(TINY, jax.random.key(0)))


def learner(init_params, **kw):
    return Learner(CFG.replace(**kw), TINY, init_params, mesh=make_mesh((1, 1, 1)))


def trajectories(step=0):
    return synthetic_trajectories(3, step, groups=2, group_size=4, vocab=TINY.vocab_size, max_len=40)


def poison(traj, **changes):
    return dataclasses.replace(traj, **changes)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_a_nan_trajectory_leaves_params_finite_and_unchanged(init_params):
    lrn = learner(init_params)
    before = leaves(lrn.params)
    trajs = trajectories()
    lp = trajs[5].behavior_logprobs.copy()
    lp[np.flatnonzero(trajs[5].loss_mask)[0]] = np.nan  # a model token's log-prob
    bad = [poison(trajs[0], reward=float("nan"))] + trajs[1:5] + [poison(trajs[5], behavior_logprobs=lp)] + trajs[6:]
    metrics = lrn.update(bad)
    assert metrics["batch/dropped_nonfinite"] == 8 and metrics["learner/skipped"] == 1.0
    after = leaves(lrn.params)
    assert all(np.isfinite(a).all() and np.array_equal(a, b) for a, b in zip(after, before, strict=True))


def test_nan_off_the_model_tokens_changes_nothing(init_params):
    """NaN behavior log-probs on prompt and observation tokens: the same update as zeros there."""
    trajs = trajectories()
    nan_off = [poison(t, behavior_logprobs=np.where(t.loss_mask != 0, t.behavior_logprobs, np.nan)) for t in trajs]
    clean, dirty = learner(init_params), learner(init_params)
    m_clean, m_dirty = clean.update(trajs), dirty.update(nan_off)
    assert m_dirty["batch/dropped_nonfinite"] == 0 and m_dirty["learner/skipped_nonfinite"] == 0
    assert np.isfinite(m_dirty["learner/loss"]) and m_dirty["learner/loss"] == pytest.approx(m_clean["learner/loss"])
    for a, b in zip(leaves(dirty.params), leaves(clean.params), strict=True):
        assert np.isfinite(a).all() and np.allclose(a, b, atol=1e-6)
    assert not np.array_equal(leaves(dirty.params)[-1], leaves(init_params)[-1])  # it did train


def test_a_non_finite_step_is_skipped_and_counted(init_params):
    lrn = learner(init_params)
    before, step = leaves(lrn.params), lrn.step
    prepared = lrn.prepare(trajectories())
    batch = prepared.batches[0]
    batch["advantages"] = np.where(batch["mean_weights"] != 0, np.float32(np.inf), batch["advantages"])
    metrics = lrn.train(prepared)
    assert metrics["learner/skipped_nonfinite"] == 1.0 and not np.isfinite(metrics["learner/loss"])
    assert lrn.step == step and all(np.array_equal(a, b) for a, b in zip(leaves(lrn.params), before, strict=True))
    good = lrn.update(trajectories(1))  # the next, finite update applies
    assert good["learner/skipped_nonfinite"] == 0 and lrn.step == step + 1


def test_a_non_finite_state_is_never_checkpointed(init_params, tmp_path):
    lrn = learner(init_params, checkpoint_dir=str(tmp_path), checkpoint_every=1)
    lrn.update(trajectories())
    assert lrn.save(force=True)
    lrn.wait_for_checkpoint()
    good = lrn.step
    lrn._state = dict(lrn._state, trainable=jax.tree.map(lambda x: x * np.nan, lrn._state["trainable"]))
    with pytest.raises(FloatingPointError, match="not finite"):
        lrn.save(step=good + 1, force=True)
    lrn.wait_for_checkpoint()
    assert lrn._checkpointer().latest_step() == good
    lrn.close()
