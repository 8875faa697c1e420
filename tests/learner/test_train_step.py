"""The sharded train step: mesh equivalence, loss masking, few compilations, config errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic import models
from agentic.learner import Learner, LearnerConfig
from agentic.learner.testing import synthetic_trajectories
from agentic.learner.train_step import micro_loss
from agentic.sharding import make_mesh, spec_for

TINY = models.get_config("tiny")
CFG = LearnerConfig(algorithm="grpo", lr=1e-2, adam_eps=1e-4, micro_batch_size=8, seq_buckets=(32, 64, 128),
                    entropy_coef=0.01, mesh_shape=(1, 1, 1))


@pytest.fixture(scope="module")
def init_params():
    return jax.device_get(models.init_params(TINY, jax.random.key(0)))


@pytest.fixture(scope="module")
def trajectories():
    # 24 trajectories of 8..60 tokens: packed into rows of 64 they fill two micro-batches of 8 rows
    return synthetic_trajectories(1, groups=6, group_size=4, vocab=TINY.vocab_size, max_len=60)


@pytest.fixture(scope="module")
def single(init_params):
    """A one-device learner (shared: its train step compiles once per shape)."""
    return Learner(CFG, TINY, init_params, mesh=make_mesh((1, 1, 1)))


def _update(learner, trajectories):
    m = learner.update(trajectories)
    return m, jax.device_get(learner.params)


@pytest.fixture(scope="module")
def single_result(single, trajectories):
    return _update(single, trajectories)


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 4, 1), (1, 4, 2)])
def test_sharded_step_matches_one_device(mesh_shape, init_params, trajectories, single_result):
    ref_metrics, ref_params = single_result
    assert ref_metrics["batch/num_micro"] == 2  # gradient accumulation is exercised
    learner = Learner(CFG.replace(mesh_shape=mesh_shape), TINY, init_params)
    # parameters really are sharded: the q projection [L, D, H, Dh] splits embed over fsdp, heads over tensor
    spec = learner.params["layers"]["self_attn"]["q_proj"]["kernel"].sharding.spec
    assert tuple(spec) == tuple(spec_for(("layers", "embed", "heads", "head_dim"), (2, 64, 4, 16), learner.mesh))
    metrics, params = _update(learner, trajectories)
    for k in ("learner/loss", "learner/pg_loss", "learner/entropy", "learner/grad_norm"):
        np.testing.assert_allclose(metrics[k], ref_metrics[k], rtol=1e-5, atol=1e-7, err_msg=k)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(ref_params),
                            strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    assert not np.allclose(ref_params["norm"]["scale"], init_params["norm"]["scale"])  # the step moved them


def test_padding_micro_batches_are_skipped_and_change_nothing(init_params, trajectories, single_result):
    """min_micro_batches pads the packed shape with empty micro-batches: same update, same metrics."""
    ref_metrics, ref_params = single_result
    learner = Learner(CFG.replace(min_micro_batches=8), TINY, init_params, mesh=make_mesh((1, 1, 1)))
    metrics, params = _update(learner, trajectories)
    assert metrics["batch/num_micro"] == 8 and ref_metrics["batch/num_micro"] == 2
    assert metrics["batch/pad_fraction"] == pytest.approx(ref_metrics["batch/pad_fraction"])  # only run rows count
    for k in ("learner/loss", "learner/pg_loss", "learner/entropy", "learner/grad_norm"):
        np.testing.assert_allclose(metrics[k], ref_metrics[k], rtol=1e-5, atol=1e-7, err_msg=k)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_environment_tokens_do_not_reach_loss_or_gradient(single, trajectories):
    cfg = CFG.replace(kl_coef=0.1)  # KL and entropy terms on too: they must respect the mask as well
    batch = single.prepare(trajectories).batches[0]
    mb = jax.tree.map(lambda x: jnp.asarray(x[0]), batch)
    rng = np.random.default_rng(0)
    mb["ref_logprobs"] = jnp.asarray(-3 * rng.random(mb["targets"].shape), jnp.float32)
    trainable = {"policy": single.params}
    loss_grad = jax.jit(jax.value_and_grad(functools.partial(micro_loss, cfg, single.model_config), has_aux=True))
    (loss, _), grad = loss_grad(trainable, mb)

    off = np.asarray(batch["weights"][0] == 0)  # environment, prompt and padding positions
    on = ~off
    assert off.sum() > 0 and on.sum() > 0
    perturbed = dict(mb)
    for k, noise in (("targets", rng.integers(0, TINY.vocab_size, off.shape)), ("advantages", rng.normal(size=off.shape)),
                     ("behavior_logprobs", -rng.random(off.shape)), ("ref_logprobs", -5 * rng.random(off.shape))):
        perturbed[k] = jnp.where(off, jnp.asarray(noise, mb[k].dtype), mb[k])
    (loss2, _), grad2 = loss_grad(trainable, perturbed)
    assert float(loss2) == float(loss)
    jax.tree.map(np.testing.assert_array_equal, grad2, grad)

    # changing the target of one model token does change both
    r, t = np.argwhere(on)[0]
    model_changed = dict(mb, targets=mb["targets"].at[r, t].set((mb["targets"][r, t] + 1) % TINY.vocab_size))
    (loss3, _), grad3 = loss_grad(trainable, model_changed)
    assert float(loss3) != float(loss)
    assert not np.array_equal(grad3["policy"]["embed_tokens"]["embedding"], grad["policy"]["embed_tokens"]["embedding"])


def test_mixed_lengths_compile_few_programs(single, single_result):
    """100 updates of 8..20 trajectories of 4..120 tokens compile one program per packed shape."""
    before = single.compile_count()
    shapes = set()
    rng = np.random.default_rng(0)
    for step in range(100):
        trajs = synthetic_trajectories(2, step, groups=int(rng.integers(2, 6)), group_size=4, vocab=TINY.vocab_size,
                                       min_len=4, max_len=int(rng.integers(40, 120)))
        m = single.update(trajs)
        shapes.add((m["batch/num_micro"], m["batch/seq_len"]))
    # rows of 64 or 128 positions, 1 or 2 micro-batches of 8 rows: at most 4 programs for 100 updates
    assert len(shapes) <= 4, shapes
    assert single.compile_count() - before <= len(shapes)
    assert single.version == 101


def test_config_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="algorithm 'grpoo'"):
        LearnerConfig(algorithm="grpoo")
    with pytest.raises(ValueError, match="loss_agg_mode"):
        LearnerConfig(loss_agg_mode="mean")
    with pytest.raises(ValueError, match="cosine schedule needs total_steps"):
        LearnerConfig(schedule="cosine", warmup_steps=10, total_steps=5)
    with pytest.raises(ValueError, match="multiple of data \\* fsdp = 8"):
        Learner(LearnerConfig(micro_batch_size=4, mesh_shape=(8, 1, 1)), TINY)


def test_ppo_with_value_head_minibatches_and_reference():
    """PPO end to end: GAE on the value head, 2 minibatches (proximal log-probs), KL to the reference."""
    cfg = LearnerConfig(algorithm="ppo", lr=1e-3, value_lr=1e-2, micro_batch_size=4, seq_buckets=(64,),
                        num_minibatches=2, kl_coef=0.05, off_policy="decoupled", mesh_shape=(1, 1, 1))
    learner = Learner(cfg, TINY)
    trajs = synthetic_trajectories(4, groups=4, group_size=2, vocab=TINY.vocab_size, max_len=60)
    first = learner.update(trajs)
    for _ in range(3):
        last = learner.update(trajs)
    assert (learner.version, learner.step) == (4, 8)  # one version per update, one step per minibatch
    assert 0 < first["learner/kl"] < last["learner/kl"]  # the policy drifts from the frozen reference
    assert last["learner/value_loss"] < first["learner/value_loss"]  # the value head learns the returns
    assert last["learner/ratio"] != 1.0  # the second minibatch is scored against pre-update (proximal) params
    assert learner.compile_count() == 1
