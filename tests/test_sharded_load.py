"""The run's weights never sit whole on one chip: a checkpoint loads straight into the learner's
shardings (each device receives only its shards), and the engine's weights are filled from the
learner's on device (no host copy). On the 8 fake CPU devices of tests/conftest.py."""

import math

import jax
import numpy as np
import pytest

from agentic import launcher, models
from agentic.inference.engine import EngineConfig, JaxEngine
from experiments.configs import search_r1


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random tiny Qwen2-shaped model exported as a Hugging Face checkpoint (safetensors)."""
    cfg = models.get_config("tiny-qwen2").replace(hidden_size=64, intermediate_size=128, num_heads=8,
                                                  num_kv_heads=8, head_dim=8)
    params = models.init_params(cfg, jax.random.key(3))
    out = tmp_path_factory.mktemp("hf") / "tiny-qwen2"
    tok = models.load_tokenizer("tiny-qwen2")
    models.export_hf(cfg, params, str(out), tokenizer=tok)
    return str(out), cfg, params


def run_config(name: str, mesh_shape=(1, 8, 1)):
    c = search_r1.get_config("test")
    c.model.name = name
    c.learner.mesh_shape = mesh_shape
    c.learner.micro_batch_size = 8
    return c


def test_a_checkpoint_loads_straight_into_the_learners_shardings(hf_dir, monkeypatch):
    path, cfg, want = hf_dir
    config = run_config(path)
    engine_devs, learner_devs = launcher.placement(config, jax.devices())
    mesh = launcher.learner_mesh(config, learner_devs)
    assert mesh.shape["fsdp"] == 8

    placed = []  # every host -> device transfer of the load: (bytes moved to one device)
    real_device_put = jax.device_put

    def spy(x, *a, **k):
        placed.append(np.asarray(x).nbytes if not isinstance(x, jax.Array) else 0)
        return real_device_put(x, *a, **k)

    monkeypatch.setattr(jax, "device_put", spy)
    _, params, _ = launcher.load_policy(config, mesh)
    monkeypatch.setattr(jax, "device_put", real_device_put)

    total = sum(x.nbytes for x in jax.tree.leaves(params))
    per_device = {d: 0 for d in mesh.devices.flat}
    for path_, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        shards = x.addressable_shards
        n_shards = math.prod(x.sharding.shard_shape(x.shape)) and x.size // math.prod(x.sharding.shard_shape(x.shape))
        for s in shards:
            # each device holds only its slice: the param's bytes / its number of distinct shards
            assert s.data.nbytes == x.nbytes // n_shards, (path_, s.data.nbytes, x.nbytes, n_shards)
            per_device[s.device] += s.data.nbytes
        if x.ndim >= 2 and x.size >= 64 * 64:
            assert n_shards == 8, (path_, x.sharding.spec)  # the big weights are split 8 ways
    # no device holds a whole copy: each about an eighth (norm scales and biases are replicated)
    assert max(per_device.values()) < 0.2 * total, (max(per_device.values()), total)
    assert max(placed, default=0) < 0.2 * total  # nothing whole was device_put on the way
    # and the values are the checkpoint's
    got = jax.tree.map(np.asarray, params)
    np.testing.assert_allclose(got["embed_tokens"]["embedding"], np.asarray(want["embed_tokens"]["embedding"]),
                               rtol=0, atol=0)


@pytest.mark.parametrize("learner_order", ["by id", "reversed"])
def test_engine_weights_come_from_the_learners_on_device(hf_dir, monkeypatch, learner_order):
    """The learner's mesh may list its devices in another order than the engine's twin layout (on TPU:
    physical order vs process by process): both paths stay on device."""
    path, cfg, _ = hf_dir
    config = run_config(path, mesh_shape=(1, 4, 1))
    config.sebulba.actor_devices = 4   # engine on devices 0-3, learner on 4-7
    engine_devs, learner_devs = launcher.placement(config, jax.devices())
    assert [d.id for d in engine_devs[0]] == [0, 1, 2, 3] and [d.id for d in learner_devs] == [4, 5, 6, 7]
    if learner_order == "reversed":
        learner_devs = learner_devs[::-1]
    mesh = launcher.learner_mesh(config, learner_devs)
    model_cfg, params, tokenizer = launcher.load_policy(config, mesh)
    engine_devs = engine_devs[0][:2]
    config.generator.tp_size = 2  # the engine splits heads over its 2 devices
    engine_sh = launcher.engine_param_shardings(config, model_cfg, engine_devs)
    engine = JaxEngine(model_cfg, launcher.engine_weights(params, model_cfg, learner_devs, engine_sh), tokenizer,
                       EngineConfig(num_slots=4, max_len=64, prefill_chunk=16, tp_size=2), devices=engine_devs)
    try:
        new = jax.tree.map(lambda x: x * 2, params)  # "trained" weights, on the learner's devices

        def no_host_copy(*a, **k):
            raise AssertionError("the weights went through the host")

        array_type = type(jax.tree.leaves(new)[0])  # jax's concrete Array class
        monkeypatch.setattr(array_type, "__array__", no_host_copy)
        monkeypatch.setattr(array_type, "_value", property(no_host_copy))
        monkeypatch.setattr(jax, "device_get", no_host_copy)
        engine.update_params(launcher.engine_weights(new, model_cfg, learner_devs, engine_sh), 1, wait=True,
                             timeout=120)
        monkeypatch.undo()
        served = engine.core.params
        for a, b in zip(jax.tree.leaves(served), jax.tree.leaves(new), strict=True):
            assert {d.id for d in a.devices()} <= {0, 1}  # on the engine's devices, not the learner's
            np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-6)
    finally:
        monkeypatch.undo()
        engine.close_sync()

