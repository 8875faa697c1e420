"""The engine's paged KV cache: page accounting with shared prefixes, preemption, the abstract
(AOT) mode, and weight updates from sharded device arrays (tiny Llama, CPU)."""

from __future__ import annotations

import dataclasses
import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from agentic.core import GenerateRequest, SamplingParams
from agentic.inference.engine import EngineCore
from agentic.inference.kv_pages import PagePool
from tests.inference.conftest import ENGINE_CONFIG, EOS, prompt_of, scaled_params

GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)


def _expected_pages(seqs: list[tuple[list[int], list[int]]], ps: int) -> int:
    """Pages of (prompt, kept tokens) sequences when every full page of a prompt's shareable part
    (all of it but its last token, which is always prefilled) is stored once across sequences:
    distinct full prompt pages + each sequence's pages past them, rounded up per sequence."""
    distinct, own = set(), 0
    for prompt, kept in seqs:
        shared = (len(prompt) - 1) // ps
        distinct |= {tuple(prompt[: (j + 1) * ps]) for j in range(shared)}
        own += -(-len(kept) // ps) - shared
    return len(distinct) + own


def test_pages_equal_distinct_tokens_for_64_sequences_with_shared_prefixes(fresh_core, reference):
    """64 sampled sequences (8 tasks x 8 samples; one instruction for all; mixed prompt and output
    lengths) hold exactly their distinct tokens' pages, far below rows x max_len, and each one's
    log-probs equal a full-sequence forward's (shared pages, copied pages, chunked prefill, decode)."""
    core, ec = fresh_core, fresh_core.ec  # 4 rows, 256 pages of 16 tokens
    assert core.pages_in_use == 0
    ps = ec.page_size
    instruction = prompt_of(40, seed=1)
    lengths = [3, 9, 14, 22, 27, 35, 41, 60]  # instruction + question: never a multiple of 16
    reqs, prompts = [], []
    for g, n in enumerate(lengths):
        prompt = instruction + prompt_of(n, seed=100 + g)
        for s in range(8):
            prompts.append(prompt)
            reqs.append(GenerateRequest(prompt_ids=prompt, session_id=f"t{g}-s{s}", params=SamplingParams(
                max_new_tokens=1 + (g + s) % 6, temperature=1.0, seed=8 * g + s)))
    outs = core.generate_sync(reqs)
    kept = [(p, p + list(c.token_ids)[:-1]) for p, c in zip(prompts, outs, strict=True)]
    assert core.pages_in_use == _expected_pages(kept, ps)
    assert sorted(len(s.tokens) for s in core.seqs) == sorted(len(k) for _, k in kept)
    assert core.pages_in_use < 0.4 * len(reqs) * ec.pages_per_seq  # dense: 64 rows x max_len
    assert core.stats["shared_pages"] > 0
    for p, c in zip(prompts, outs, strict=True):
        np.testing.assert_allclose(c.logprobs, reference.logprobs(p, c.token_ids), atol=2e-4)
    for i in range(len(reqs)):  # ended sessions give their pages back
        core.release(reqs[i].session_id)
    core.step()
    assert core.pages_in_use == 0 and not core.seqs


def test_preemption_when_pages_run_out_keeps_greedy_tokens(fresh_core, reference):
    """4 requests that grow to 4 pages each in a pool of 10: the newest are preempted (pages freed,
    recomputed on re-admission) and every token still equals the reference decode."""
    core = fresh_core
    full, core.pool = core.pool, PagePool(10, fresh_core.ec.page_size)  # the cache's first 10 pages
    try:
        prompts = [prompt_of(20 + i, seed=200 + i) for i in range(4)]
        greedy = SamplingParams(max_new_tokens=36, temperature=0.0, ignore_eos=True)
        before = core.stats["preemptions"]
        outs = core.generate_sync([GenerateRequest(prompt_ids=p, params=greedy) for p in prompts])
        assert core.stats["preemptions"] > before
        for p, c in zip(prompts, outs, strict=True):
            assert c.finish_reason == "length"
            assert list(c.token_ids) == reference.greedy(p, 36)
            np.testing.assert_allclose(c.logprobs, reference.logprobs(p, c.token_ids), atol=2e-4)
        assert core.pages_in_use <= 10
    finally:
        core.flush_cache()
        core.step()
        core.pool = full


def test_abstract_core_lowers_every_program_without_allocating(tiny):
    """abstract=True: ShapeDtypeStruct params, nothing allocated or traced at construction; every
    program lowers at its largest shapes with the core's shardings, and compiles."""
    config, params, tok = tiny
    if len(jax.devices()) < 2:
        pytest.skip("needs 2 devices")
    shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, jnp.bfloat16), params)
    ec = dataclasses.replace(ENGINE_CONFIG, tp_size=2)
    gc.collect()  # earlier tests' garbage must not leave while we count
    live = len(jax.live_arrays())
    core = EngineCore(config, shapes, tok, ec, devices=jax.devices()[:2], abstract=True)
    assert len(jax.live_arrays()) == live and not core.compile_counts
    assert core.cache_shapes["kv"].shape == (config.num_layers, ec.total_pages, ec.page_size,
                                             2 * config.num_kv_heads, config.head_dim)
    assert core.cache_shapes["kv"].sharding.spec[3] == "model" and core.attention == "xla"
    assert "model" in str(core.param_shardings["layers"]["mlp"]["up_proj"]["kernel"].spec)
    lowered = core.lower_programs()
    assert set(lowered) == {"engine_prefill", "engine_decode", "engine_mixed", "engine_copy_page"}
    assert set(core.compile_counts) == {"prefill[4x32xkv128]", "decode[4xkv128]", "mixed[4xkv128+4x32xkv128]",  # the largest
                                        "copy_page"}
    assert len(jax.live_arrays()) == live
    compiled = lowered["engine_prefill"].compile()
    params_in, cache_in = compiled.input_shardings[0][:2]
    up = params_in["layers"]["mlp"]["up_proj"]["kernel"]
    ndim = len(core.params["layers"]["mlp"]["up_proj"]["kernel"].shape)
    assert up.is_equivalent_to(core.param_shardings["layers"]["mlp"]["up_proj"]["kernel"], ndim)
    assert cache_in["kv"].is_equivalent_to(core.cache_sharding, 5)
    with pytest.raises(RuntimeError, match="abstract"):
        core.submit(GenerateRequest(prompt_ids=[1, 2], params=GREEDY), lambda c: None)


def test_update_params_reshards_device_arrays_without_host_copies(tiny, reference):
    """Weights sharded over 2 other devices (the learner's) land on the engine's device by a
    device-to-device copy (transfers to or from the host are disallowed) and serve."""
    config, params, tok = tiny
    if len(jax.devices()) < 3:
        pytest.skip("needs 3 devices")
    core = EngineCore(config, params, tok, ENGINE_CONFIG, devices=jax.devices()[:1])
    new = scaled_params(config, seed=3)
    learner = Mesh(np.array(jax.devices()[1:3]), ("fsdp",))
    on_learner = jax.tree.map(lambda x: jax.device_put(
        x, NamedSharding(learner, P("fsdp") if x.shape[0] % 2 == 0 else P())), new)
    with jax.transfer_guard_device_to_host("disallow"), jax.transfer_guard_host_to_device("disallow"):
        core.update_params(on_learner, version=5)
        core._apply_update()
    leaf = core.params["layers"]["mlp"]["up_proj"]["kernel"]
    assert leaf.sharding == core.param_shardings["layers"]["mlp"]["up_proj"]["kernel"]
    p = prompt_of(12, seed=9)
    c = core.generate_sync([GenerateRequest(prompt_ids=p, params=GREEDY)])[0]
    assert c.weight_version == 5
    assert list(c.token_ids) == reference.greedy(p, GREEDY.max_new_tokens, params=new, stop_ids={EOS})


def test_pallas_attention_path_matches_xla_path():
    """The TPU path's adapter (ragged layout, kv lengths, padded page table) around JAX's own
    reference of its ragged paged attention kernel gives the XLA path's attention at every valid
    token: prefill rows at different starts with padding, and a padding row. (The kernel itself
    runs on TPU only; its interpret mode fails in this jax for this kernel.)"""
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention import kernel as rpa

    from agentic.inference import decode_model as dm

    rng = np.random.default_rng(0)
    B, T, H, KVH, Dh, ps, W, num_pages = 3, 8, 4, 2, 16, 4, 6, 24
    q = jnp.asarray(rng.standard_normal((B, T, H, Dh)), jnp.float32)
    kv = jnp.asarray(rng.standard_normal((num_pages, ps, 2 * KVH, Dh)), jnp.float32)
    table = jnp.asarray(rng.permutation(num_pages)[: B * W].reshape(B, W), jnp.int32)
    starts, valid = [0, 9, -1], [8, 5, 0]  # row 2: all padding
    positions = np.full((B, T), -1, np.int32)
    for b, (s, n) in enumerate(zip(starts, valid, strict=True)):
        positions[b, :n] = np.arange(s, s + n)
    positions = jnp.asarray(positions)
    mask = jnp.arange(W * ps)[None, None, :] <= positions[:, :, None]
    g = kv[table].reshape(B, W * ps, KVH, 2, Dh)
    xla = dm._xla_attention(q, g[..., 0, :], g[..., 1, :], mask, reduce_attention=False)

    def reference(q, kvp, kv_lens, table, cu, num, *, sm_scale):
        return rpa.ref_ragged_paged_attention(q, kvp, kv_lens, table, cu, num, sm_scale=sm_scale)

    pallas = dm._pallas_attention(q, kv, positions, table, None, reference)
    for b, n in enumerate(valid):
        np.testing.assert_allclose(np.asarray(pallas[b, :n]), np.asarray(xla[b, :n]), atol=1e-5)
