"""Tensor parallelism beyond the KV heads: each KV head repeated so every device holds one
(tiny Llama: 4 heads, 2 KV heads, served on 4 CPU devices)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic import models
from agentic.core import GenerateRequest, SamplingParams
from agentic.inference.engine import EngineCore
from agentic.inference.engine_step import kv_repeat, repeat_kv_heads, served_config
from tests.inference.conftest import ENGINE_CONFIG, EOS, prompt_of, scaled_params

GREEDY = SamplingParams(max_new_tokens=8, temperature=0.0)


def test_repeated_kv_heads_compute_the_same_function():
    """The served model (KV heads repeated, with qkv biases) gives the original model's logits."""
    config = dataclasses.replace(models.get_config("tiny"), qkv_bias=True)
    params = scaled_params(config, 1)
    params["layers"]["self_attn"]["k_proj"]["bias"] = jnp.ones_like(params["layers"]["self_attn"]["k_proj"]["bias"])
    assert kv_repeat(config, 4) == 2 and kv_repeat(config, 2) == 1 and kv_repeat(config, 3) == 1
    served = served_config(config, 4)
    assert served.num_kv_heads == 4 and served_config(config, 2) is config
    wide = repeat_kv_heads(params, 2)
    assert wide["layers"]["self_attn"]["v_proj"]["kernel"].shape[-2] == 4
    tokens = jnp.asarray([prompt_of(12, seed=5)])
    pos = jnp.arange(12)[None]
    want, _ = models.forward(config, params, tokens, pos)
    got, _ = models.forward(served, wide, tokens, pos)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4)


def test_tp4_engine_splits_repeated_kv_heads_and_matches_the_reference(tiny, reference):
    """tp_size 4 > 2 KV heads: the cache and the k/v projections hold one KV head per device (not
    all of them on each), greedy tokens and log-probs equal the reference, and a weight update in
    the model's own shapes is repeated on device."""
    config, params, tok = tiny
    if len(jax.devices()) < 4:
        pytest.skip("needs 4 devices")
    ec = dataclasses.replace(ENGINE_CONFIG, tp_size=4, num_pages=64)
    core = EngineCore(config, params, tok, ec, devices=jax.devices()[:4])
    assert core.kv_repeat == 2 and core.cache_sharding.spec[3] == "model"
    kv = core.cache["kv"]
    assert kv.shape[3] == 2 * 4 and kv.addressable_shards[0].data.shape[3] == 2  # k and v of one head
    k = core.params["layers"]["self_attn"]["k_proj"]["kernel"]
    assert k.shape[-2] == 4 and k.addressable_shards[0].data.shape[-2] == 1
    prompts = [prompt_of(n, seed=20 + n) for n in (7, 19, 33)]
    outs = core.generate_sync([GenerateRequest(prompt_ids=p, params=GREEDY) for p in prompts])
    for p, c in zip(prompts, outs, strict=True):
        assert list(c.token_ids) == reference.greedy(p, GREEDY.max_new_tokens, stop_ids={EOS})
        np.testing.assert_allclose(c.logprobs, reference.logprobs(p, c.token_ids), atol=2e-4)
    new = scaled_params(config, 3)
    with pytest.raises(ValueError, match="k_proj"):
        core.update_params(repeat_kv_heads(new, 2), 1)  # the served shapes are not the model's
    core.update_params(new, 1)
    c = core.generate_sync([GenerateRequest(prompt_ids=prompts[0], params=GREEDY)])[0]
    assert c.weight_version == 1
    assert list(c.token_ids) == reference.greedy(prompts[0], GREEDY.max_new_tokens, params=new, stop_ids={EOS})
