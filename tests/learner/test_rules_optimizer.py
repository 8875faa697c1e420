"""Sharding rules, the learning-rate schedule and the optimizer's decay mask."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from agentic.learner.optimizer import learning_rate_schedule, make_optimizer
from agentic.sharding import make_mesh, spec_for


def test_logical_axes_map_to_mesh_axes_with_fallbacks():
    mesh = make_mesh((1, 2, 4))  # data 1, fsdp 2, tensor 4
    # q kernel [L, D, H, Dh]: embed -> fsdp, heads -> tensor
    assert spec_for(("layers", "embed", "heads", "head_dim"), (2, 64, 8, 16), mesh) == P(None, "fsdp", "tensor", None)
    # 2 KV heads cannot be split 4 ways: replicated on that dim
    assert spec_for(("layers", "embed", "kv_heads", "head_dim"), (2, 64, 2, 16), mesh) == P(None, "fsdp", None, None)
    # a mesh axis is used once per tensor: embedding [V, D] has vocab on tensor, embed on fsdp
    assert spec_for(("vocab", "embed"), (384, 64), mesh) == P("tensor", "fsdp")
    assert spec_for(("mlp", "mlp"), (8, 8), mesh) == P("tensor", None)
    # size-1 mesh axes shard nothing
    assert spec_for(("embed", "heads"), (64, 8), make_mesh((8, 1, 1))) == P(None, None)
    with pytest.raises(KeyError, match="no sharding rule for logical axis 'experts'"):
        spec_for(("experts",), (4,), mesh)
    with pytest.raises(ValueError, match="needs 16 devices; 8 are visible"):
        make_mesh((2, 8, 1))
    assert make_mesh((2, -1, 2)).shape == {"data": 2, "fsdp": 2, "tensor": 2}


def test_warmup_then_cosine():
    s = learning_rate_schedule(1.0, warmup_steps=2, schedule="cosine", total_steps=6)
    # warmup: 0, 1/2, then cosine over the 4 remaining steps: 1, 0.5 (1 + cos(pi/4)), 0.5 (1 + cos(pi/2)), ..., 0
    np.testing.assert_allclose([s(i) for i in (0, 1, 2, 3, 4, 6)],
                               [0.0, 0.5, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.0], atol=1e-6)
    assert learning_rate_schedule(0.1)(1000) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown schedule"):
        learning_rate_schedule(0.1, schedule="linear")


def test_weight_decay_skips_norms_and_biases_and_value_head_has_its_own_lr():
    params = {"policy": {"w": jnp.ones((2, 2)), "norm": {"scale": jnp.ones((3, 2))}, "bias": jnp.ones((2, 2))},
              "value": {"kernel": jnp.ones((2, 1))}}
    zero = jax.tree.map(jnp.zeros_like, params)
    opt = make_optimizer(0.1, weight_decay=0.5, max_grad_norm=None, value_lr=1.0)
    updates, _ = opt.update(zero, opt.init(params), params)
    # zero gradient: only decoupled weight decay moves params: -lr * wd * p = -0.1 * 0.5 * 1 on matrices
    np.testing.assert_allclose(updates["policy"]["w"], -0.05)
    np.testing.assert_allclose(updates["policy"]["norm"]["scale"], 0.0)
    np.testing.assert_allclose(updates["policy"]["bias"], 0.0)
    np.testing.assert_allclose(updates["value"]["kernel"], -0.5)  # value_lr 1.0 * 0.5
