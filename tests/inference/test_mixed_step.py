"""Prefill and decode in one ragged step (`EngineConfig.mixed_prefill`): the step that admits
new requests while others decode runs both in one forward pass; tokens and log-probs are the
same as prefilling and decoding apart (tiny Llama, CPU)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from agentic.core import GenerateRequest, SamplingParams
from agentic.inference.engine import EngineCore
from agentic.inference.kv_pages import PagePool
from tests.inference.conftest import ENGINE_CONFIG, EOS, prompt_of

GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)


@pytest.fixture(scope="module")
def apart(tiny):
    """An engine that prefills and decodes in separate calls (mixed_prefill="off")."""
    config, params, tok = tiny
    return EngineCore(config, params, tok, dataclasses.replace(ENGINE_CONFIG, mixed_prefill="off"))


def _staggered(core, prompts, schedule, params):
    """Submits prompts[i] before the steps `schedule` names; returns completions by index."""
    out, step = {}, 0
    while step < 300 and (step <= max(schedule) or core.busy):
        for i in schedule.get(step, []):
            core.submit(GenerateRequest(prompt_ids=prompts[i], params=params[i], session_id=f"m{i}"),
                        lambda c, i=i: out.__setitem__(i, c))
        core.step()
        step += 1
    for i in range(len(prompts)):
        core.release(f"m{i}")
    core.step()
    return out


def test_mixed_steps_give_the_tokens_and_logprobs_of_separate_prefill_and_decode(fresh_core, apart, reference):
    """Requests arriving while others decode (one longer than the prefill chunk, some sharing a
    prefix with a running one, sampled and greedy) are prefilled in the same forward pass as the
    decode step; every greedy token equals the reference decode, and tokens (greedy and seeded)
    and log-probs equal those of an engine that prefills and decodes apart."""
    core = fresh_core
    shared = prompt_of(30, seed=7)
    prompts = [prompt_of(n, seed=i) for i, n in enumerate([5, 17, 40, 9])] + [shared, shared + [3, 4], shared[:20]]
    params = [GREEDY] * 5 + [SamplingParams(max_new_tokens=10, temperature=0.8, top_p=0.9, seed=s) for s in (1, 2)]
    schedule = {0: [0], 2: [1, 4], 3: [2, 5], 5: [3, 6]}
    before = core.stats["mixed_steps"]
    mixed = _staggered(core, prompts, schedule, params)
    assert core.stats["mixed_steps"] - before >= 3  # each later arrival joined a decoding batch
    assert apart.stats["mixed_steps"] == 0
    separate = _staggered(apart, prompts, schedule, params)
    assert apart.stats["mixed_steps"] == 0
    for i, p in enumerate(prompts):
        assert mixed[i].token_ids == separate[i].token_ids, f"request {i}"
        np.testing.assert_allclose(mixed[i].logprobs, separate[i].logprobs, atol=1e-5)
        if params[i].temperature == 0:
            assert list(mixed[i].token_ids) == reference.greedy(p, GREEDY.max_new_tokens, stop_ids={EOS})
        t = params[i].temperature or 1.0
        np.testing.assert_allclose(mixed[i].logprobs, reference.logprobs(p, mixed[i].token_ids, temperature=t),
                                   atol=2e-4)


def test_admissions_while_decoding_stop_at_the_token_budget(fresh_core, reference):
    """While a request decodes, a burst of prompts larger than max_prefill_batch x prefill_chunk
    is admitted over several steps, and the running request gains a token in every one of them."""
    core, ec = fresh_core, fresh_core.ec  # budget 4 x 32 = 128 tokens a step
    long_run = SamplingParams(max_new_tokens=40, temperature=0.0, ignore_eos=True)
    first = prompt_of(6, seed=50)
    out = {}
    core.submit(GenerateRequest(prompt_ids=first, params=long_run), lambda c: out.__setitem__("first", c))
    core.step()
    core.step()
    burst = [prompt_of(70, seed=60 + i) for i in range(3)]  # 210 tokens > 128
    for i, p in enumerate(burst):
        core.submit(GenerateRequest(prompt_ids=p, params=GREEDY), lambda c, i=i: out.__setitem__(i, c))
    running = next(r for r in core.rows if r is not None)
    counts, admitted = [], []
    for _ in range(3):
        core.step()
        counts.append(len(running.out))
        admitted.append(core.num_running)
    assert counts == [counts[0], counts[0] + 1, counts[0] + 2]  # one token per step
    assert admitted[0] < 4 and admitted[-1] == 4  # not all at once
    assert ec.max_prefill_batch * ec.prefill_chunk < sum(map(len, burst))
    core.run_until_idle()
    assert list(out["first"].token_ids) == reference.greedy(first, 40)
    for i, p in enumerate(burst):
        assert list(out[i].token_ids) == reference.greedy(p, GREEDY.max_new_tokens, stop_ids={EOS})


def test_preemption_during_mixed_steps_keeps_greedy_tokens(fresh_core, reference):
    """Requests arriving while others decode in a pool too small for all: preemptions happen,
    mixed steps run, and every token equals the reference decode."""
    core = fresh_core
    full, core.pool = core.pool, PagePool(10, core.ec.page_size)
    try:
        prompts = [prompt_of(20 + i, seed=300 + i) for i in range(4)]
        greedy = SamplingParams(max_new_tokens=36, temperature=0.0, ignore_eos=True)
        before = core.stats["preemptions"], core.stats["mixed_steps"]
        out = _staggered(core, prompts, {0: [0], 1: [1], 3: [2], 4: [3]}, [greedy] * 4)
        assert core.stats["preemptions"] > before[0] and core.stats["mixed_steps"] > before[1]
        for i, p in enumerate(prompts):
            assert list(out[i].token_ids) == reference.greedy(p, 36)
    finally:
        core.flush_cache()
        core.step()
        core.pool = full


def test_pallas_ragged_call_over_decode_and_prefill_rows_matches_xla():
    """The TPU path's one ragged kernel call over two segments (decode rows with one query,
    prefill rows with a chunk) gives the XLA path's per-segment attention at every valid token
    (JAX's reference of the kernel; the kernel itself runs on TPU only)."""
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention import kernel as rpa

    from agentic.inference import decode_model as dm

    rng = np.random.default_rng(1)
    H, KVH, Dh, ps, num_pages = 4, 2, 16, 4, 40
    kv = jnp.asarray(rng.standard_normal((num_pages, ps, 2 * KVH, Dh)), jnp.float32)
    pages = rng.permutation(num_pages)
    segs = [  # (positions [B, T], page-table width)
        (np.array([[13], [2], [-1]], np.int32), 4),  # decode: 2 rows and a padding row
        (np.array([[0, 1, 2, 3, 4, 5], [9, 10, 11, -1, -1, -1]], np.int32), 5),  # prefill chunks
    ]
    qs, tables, xla, used = [], [], [], 0
    for pos, W in segs:
        B, T = pos.shape
        table = jnp.asarray(pages[used: used + B * W].reshape(B, W), jnp.int32)
        used += B * W
        q = jnp.asarray(rng.standard_normal((B, T, H, Dh)), jnp.float32)
        mask = jnp.arange(W * ps)[None, None, :] <= jnp.asarray(pos)[:, :, None]
        g = kv[table].reshape(B, W * ps, KVH, 2, Dh)
        xla.append(dm._xla_attention(q, g[..., 0, :], g[..., 1, :], mask, reduce_attention=False))
        qs.append(q.reshape(B * T, H, Dh))
        tables.append(table)

    def reference(q, kvp, kv_lens, table, cu, num, *, sm_scale):
        return rpa.ref_ragged_paged_attention(q, kvp, kv_lens, table, cu, num, sm_scale=sm_scale)

    out = dm._pallas_ragged(qs, kv, [jnp.asarray(p) for p, _ in segs], tables, None, reference)
    start = 0
    for (pos, _), ref in zip(segs, xla, strict=True):
        B, T = pos.shape
        got = np.asarray(out[start: start + B * T]).reshape(B, T, H, Dh)
        start += B * T
        for b in range(B):
            n = int((pos[b] >= 0).sum())
            np.testing.assert_allclose(got[b, :n], np.asarray(ref[b, :n]), atol=1e-5)
