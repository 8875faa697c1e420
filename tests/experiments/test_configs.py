"""Every Search-R1 variant loads; the TPU recipes build their mesh and shard a full-size model
on 8 fake CPU devices (tests/conftest.py)."""

import dataclasses
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from agentic import launcher, models, sharding
from agentic.config import ACTOR_LOOP_FIELDS, ENGINE_LOOP_FIELDS, LEARNER_LOOP_FIELDS
from agentic.inference.engine import EngineConfig
from agentic.learner import learner as learner_lib
from agentic.learner.learner import LearnerConfig
from agentic.rollout.actor import ActorConfig
from agentic.rollout.episode import EpisodeConfig
from agentic.transport.queue import QueueConfig
from experiments.configs import search_r1, tool_math

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("variant", sorted(v for v in search_r1.VARIANTS if v))
def test_variant_builds_learner_and_actor_configs(variant, tmp_path):
    config = search_r1.get_config(variant)
    lc = launcher.learner_config(config, str(tmp_path))
    ac = launcher.actor_config(config)
    assert lc.total_steps == config.total_steps * config.learner.num_minibatches  # updates -> optimizer steps
    assert ac.group_size == config.actor.group_size
    assert config.queue.capacity_groups >= config.learner.batch_groups
    # The config documents the command that runs each variant.
    assert f"search_r1.py:{variant} " in search_r1.__doc__ or variant == "default"


@pytest.mark.parametrize("variant", ["qwen2_5_3b_tpu", "qwen2_5_7b_tpu"])
def test_grpo_recipe_is_search_r1s_script(variant, tmp_path):
    """Field by field against Search-R1's scripts/nq_hotpotqa/v0.2/train_grpo.sh (commit a14dc3a)."""
    c = search_r1.get_config(variant)
    lc = launcher.learner_config(c, str(tmp_path))
    assert c.learner.batch_groups == 512                        # data.train_batch_size=512
    assert c.actor.max_new_tokens_per_turn == 500                # data.max_response_length=500
    assert c.env.kwargs.max_obs_tokens == 500                    # data.max_obs_length=500
    assert lc.algorithm == "grpo"                                # algorithm.adv_estimator=grpo
    assert lc.lr == 1e-6                                         # actor_rollout_ref.actor.optim.lr=1e-6
    # actor.optim.lr_warmup_steps_ratio=0.285 of trainer.total_training_steps=1005 updates, each of
    # two optimizer steps (actor.ppo_mini_batch_size=256 of the 512)
    assert (lc.num_minibatches, lc.warmup_steps) == (2, 2 * 286)
    assert (lc.kl_coef, lc.kl_estimator, lc.kl_mode) == (0.001, "low_var_kl", "loss")  # use_kl_loss=true,
    # kl_loss_coef=0.001, kl_loss_type=low_var_kl
    assert c.actor.group_size == 5                               # actor_rollout_ref.rollout.n_agent=5
    assert c.actor.temperature == 1.0                            # actor_rollout_ref.rollout.temperature=1
    assert c.actor.top_p == 0.95                                 # not set: verl's rollout default top_p 0.95
    assert c.total_steps == 1005                                 # trainer.total_training_steps=1005
    assert c.env.kwargs.max_turns == 4                           # max_turns=4
    assert c.actor.max_turns == 5                                # 4 rounds of generate -> search + the final answer
    assert c.env.kwargs.topk == 3                                # retriever.topk=3
    assert c.env.kwargs.reward == "em"                           # v0.2 scores qa_em (v0.3: the format reward)


@pytest.mark.parametrize("variant", ["qwen2_5_3b_tpu_ppo", "qwen2_5_7b_tpu_ppo"])
def test_ppo_recipe_is_search_r1s_script(variant, tmp_path):
    """Against scripts/nq_hotpotqa/v0.2/train_ppo.sh and verl's ppo_trainer.yaml defaults it relies on."""
    c = search_r1.get_config(variant)
    lc = launcher.learner_config(c, str(tmp_path))
    assert lc.algorithm == "ppo" and c.actor.group_size == 1     # rollout.n_agent=1
    assert c.actor.top_p == 1.0                                  # actor_rollout_ref.rollout.top_p=1.0
    assert lc.value_lr == 1e-5                                   # critic.optim.lr=1e-5
    assert (lc.kl_coef, lc.kl_mode, lc.kl_estimator) == (0.001, "reward", "k1")  # algorithm.kl_ctrl.kl_coef
    assert (lc.gamma, lc.gae_lambda) == (1.0, 1.0)               # ppo_trainer.yaml algorithm.gamma / lam
    assert lc.value_clip == 0.5                                  # ppo_trainer.yaml critic.cliprange_value
    assert (c.env.kwargs.max_turns, c.actor.max_turns) == (4, 5)


def test_cpu_default_samples_and_budgets_turns_as_search_r1():
    """The 2-core default is scaled down (1 search, 40 tokens a turn) but samples and ends episodes
    as Search-R1's GRPO script does; the built episode config is what the actor runs."""
    ep = launcher.actor_config(search_r1.get_config("default")).episode
    assert ep.temperature == 1.0                                 # actor_rollout_ref.rollout.temperature=1
    assert ep.top_p == 0.95                                      # not set: verl's rollout default top_p 0.95
    assert ep.max_turns == 2                                     # max_turns=1 round + the final answer turn
    # tool_math is not a Search-R1 run: it keeps the sampling its README numbers were measured at
    tm = launcher.actor_config(tool_math.get_config("default")).episode
    assert (tm.temperature, tm.top_p) == (0.7, 1.0)


def test_turn_budget_has_one_owner():
    c = search_r1.get_config("default")
    c.env.kwargs.max_turns = 3
    assert c.actor.max_turns == 4


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


EXPERIMENTS = {"search_r1": search_r1, "tool_math": tool_math}
VARIANTS = [(name, v) for name, mod in EXPERIMENTS.items() for v in mod.VARIANTS if v]


@pytest.mark.parametrize(("experiment", "variant"), VARIANTS)
def test_every_learner_field_is_in_the_config_under_its_own_name(experiment, variant, tmp_path):
    c = EXPERIMENTS[experiment].get_config(variant)
    fields = {f.name for f in dataclasses.fields(LearnerConfig)}
    assert set(c.learner) == (fields - set(LEARNER_LOOP_FIELDS)) | {"batch_groups"}
    lc = launcher.learner_config(c, str(tmp_path))  # every key consumed: none left over, none renamed
    for name in set(c.learner) - {"batch_groups"}:
        want = c.learner[name]
        assert getattr(lc, name) == (tuple(want) if isinstance(want, (list, tuple)) else want), name
    assert lc.total_steps == c.total_steps * c.learner.num_minibatches  # learner updates -> optimizer steps


def same(got, want):
    return got == (tuple(want) if isinstance(want, (list, tuple)) else want)


@pytest.mark.parametrize(("experiment", "variant"), VARIANTS)
def test_every_actor_engine_and_queue_field_is_in_the_config_under_its_own_name(experiment, variant):
    c = EXPERIMENTS[experiment].get_config(variant)
    names = lambda *classes: {f.name for cls in classes for f in dataclasses.fields(cls)}  # noqa: E731
    assert set(c.actor) == names(ActorConfig, EpisodeConfig) - set(ACTOR_LOOP_FIELDS)
    assert set(c.generator) == names(EngineConfig) - set(ENGINE_LOOP_FIELDS) | set(launcher.BACKEND_KEYS)
    assert set(c.queue) == names(QueueConfig) | {"grpc", "port"}
    ac, ec, qc = launcher.actor_config(c), launcher.engine_config(c), launcher.queue_config(c)
    for name in c.actor:
        assert same(getattr(ac, name) if hasattr(ac, name) else getattr(ac.episode, name), c.actor[name]), name
    for name in set(c.generator) - set(launcher.BACKEND_KEYS):
        assert same(getattr(ec, name), c.generator[name]), name
    for name in set(c.queue) - {"grpc", "port"}:
        assert same(getattr(qc, name), c.queue[name]), name
    assert ec.seed == c.seed


def test_a_key_no_dataclass_takes_is_an_error():
    c = search_r1.get_config("test")
    c.generator.min_decode_rowz = 4  # a hand-written config (an override would fail at the flag, below)
    with pytest.raises(ValueError, match=r"'min_decode_rowz' is read by nothing here; the section takes \[.*'min_decode_rows'"):
        launcher.engine_config(c)


def test_optional_learner_fields_take_an_override():
    c = search_r1.get_config("test")
    c.learner.dual_clip = 3.0             # None by default, typed: settable from the command line
    c.learner.off_policy = "none"
    lc = launcher.learner_config(c, "/tmp/unused")
    assert (lc.dual_clip, lc.off_policy) == (3.0, "none")


def test_a_misspelled_override_fails_naming_the_valid_fields():
    out = subprocess.run([sys.executable, "experiments/search_r1.py", "--config=experiments/configs/search_r1.py:test",
                          "--workdir=/tmp/never_written", "--config.learner.off_policy=none", "--config.learner.lrr=1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "unknown config field 'learner.lrr': config.learner has [" in out.stderr
    assert "'lr'" in out.stderr and "'off_policy'" in out.stderr and "Traceback" not in out.stderr
