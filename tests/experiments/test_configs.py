"""Every Search-R1 variant loads; the TPU recipes build their mesh and shard a full-size model
on 8 fake CPU devices (tests/conftest.py)."""

import jax
import numpy as np
import pytest

from agentic import launcher, models
from agentic.learner import learner as learner_lib
from agentic.learner import sharding
from experiments.configs import search_r1


@pytest.mark.parametrize("variant", sorted(v for v in search_r1.VARIANTS if v))
def test_variant_builds_learner_and_actor_configs(variant, tmp_path):
    config = search_r1.get_config(variant)
    lc = launcher.learner_config(config, str(tmp_path))
    ac = launcher.actor_config(config)
    assert lc.total_steps == config.total_steps and ac.group_size == config.actor.group_size
    assert config.queue.capacity_groups >= config.learner.batch_groups
    # The config documents the command that runs each variant.
    assert f"search_r1.py:{variant} " in search_r1.__doc__ or variant == "default"


def test_paper_recipe_numbers():
    c = search_r1.get_config("qwen2_5_7b_tpu")
    assert (c.actor.group_size, c.learner.lr, c.learner.kl_coef, c.learner.kl_estimator) == (5, 1e-6, 0.001, "low_var_kl")
    assert (c.env.kwargs.max_turns, c.env.kwargs.topk, c.actor.max_new_tokens_per_turn) == (4, 3, 500)
    assert (c.learner.batch_groups, c.total_steps) == (512, 1005)
    assert search_r1.get_config("qwen2_5_7b_tpu_ppo").learner.algorithm == "ppo"


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="unknown variant 'nope'.*qwen2_5_7b_tpu"):
        search_r1.get_config("nope")


@pytest.mark.parametrize("variant", ["qwen2_5_3b_tpu", "qwen2_5_7b_tpu", "qwen2_5_7b_tpu_ppo"])
def test_tpu_config_builds_its_mesh_on_8_devices(variant):
    assert len(jax.devices()) == 8
    config = search_r1.get_config(variant)
    mesh = sharding.make_mesh(config.learner.mesh_shape)
    assert mesh.devices.size == 8 and mesh.axis_names == ("data", "fsdp", "tensor")
    model_cfg = models.get_config(config.model.name)
    shardings = learner_lib.param_shardings(model_cfg, mesh)
    shapes = jax.eval_shape(lambda: models.init_params(model_cfg, jax.random.key(0)))
    sharded = 0
    for shape, sh in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings), strict=True):
        for dim, axes in zip(shape.shape, sh.spec, strict=False):
            if axes is None:
                continue
            n = int(np.prod([mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,))]))
            assert dim % n == 0, (variant, shape.shape, sh.spec)
            sharded += n > 1
    assert sharded > 0  # FSDP actually splits the weights
