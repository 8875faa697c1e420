"""The embedded JAX engine against a plain reference decode (tiny Llama, CPU)."""

from __future__ import annotations

import asyncio
import dataclasses

import jax
import numpy as np
import pytest

from agentic.core import GenerateRequest, SamplingParams
from agentic.inference.engine import EngineCore, JaxEngine
from agentic.inference.kv_pages import PagePool
from tests.inference.conftest import ENGINE_CONFIG, EOS, prompt_of, scaled_params

GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)


def _submit(core, req, out, key):
    core.submit(req, lambda c: out.__setitem__(key, c))


def test_greedy_matches_reference_with_staggered_arrivals(fresh_core, reference):
    """Requests join running batches between decode steps; every token equals a one-at-a-time decode."""
    core = fresh_core
    # 6 requests > 4 slots (some wait for a slot); one prompt is longer than prefill_chunk (chunked).
    prompts = [prompt_of(n, seed=i) for i, n in enumerate([5, 17, 40, 9, 3, 26])]
    out: dict[int, object] = {}
    joined_while_running = 0
    steps_before = core.stats["decode_steps"]
    schedule = {0: [0, 1], 2: [2], 3: [3, 4], 6: [5]}  # step -> requests arriving before it
    step = 0
    while step < 200 and (step <= max(schedule) or core.busy):
        for i in schedule.get(step, []):
            joined_while_running += core.num_running > 0
            _submit(core, GenerateRequest(prompt_ids=prompts[i], params=GREEDY), out, i)
        core.step()
        step += 1
    assert joined_while_running >= 3 and len(out) == len(prompts)
    for i, p in enumerate(prompts):
        ref = reference.greedy(p, GREEDY.max_new_tokens, stop_ids={EOS})
        c = out[i]
        assert list(c.token_ids) == ref, f"request {i}"
        lp = reference.logprobs(p, c.token_ids)
        assert np.max(np.abs(np.asarray(c.logprobs) - lp)) <= 1e-4
        assert c.prompt_tokens == len(p) and c.weight_version == 0
    # continuous batching: fewer decode steps than tokens generated one request at a time
    assert core.stats["decode_steps"] - steps_before < sum(len(c.token_ids) for c in out.values())


def test_sampled_logprobs_and_seeds(fresh_core, reference):
    """Sampling (temperature, top-k, top-p): log-probs are log_softmax(logits/T) of the sampled token;
    a seeded request gives the same tokens alone or batched with others."""
    core = fresh_core
    p = prompt_of(11, seed=42)
    params = SamplingParams(max_new_tokens=10, temperature=0.7, top_k=20, top_p=0.9, seed=1234)
    alone = core.generate_sync([GenerateRequest(prompt_ids=p, params=params)])[0]
    others = [GenerateRequest(prompt_ids=prompt_of(7 + i, seed=i), params=SamplingParams(
        max_new_tokens=6, temperature=1.0, seed=i)) for i in range(3)]
    batched = core.generate_sync(others[:2] + [GenerateRequest(prompt_ids=p, params=params)] + others[2:])[2]
    assert alone.token_ids == batched.token_ids
    lp = reference.logprobs(p, alone.token_ids, temperature=0.7)
    assert np.max(np.abs(np.asarray(alone.logprobs) - lp)) <= 1e-4
    other_seed = core.generate_sync([GenerateRequest(prompt_ids=p, params=SamplingParams(
        max_new_tokens=10, temperature=0.7, top_k=20, top_p=0.9, seed=99))])[0]
    assert other_seed.token_ids != alone.token_ids
    # top_k=1 is greedy whatever the temperature
    k1 = core.generate_sync([GenerateRequest(prompt_ids=p, params=SamplingParams(
        max_new_tokens=6, temperature=5.0, top_k=1, seed=3))])[0]
    assert list(k1.token_ids) == reference.greedy(p, 6, stop_ids={EOS})


def _printable_stop(tokens, start=3):
    seen = set()
    for j, t in enumerate(tokens):
        ch = chr(t) if 32 <= t < 127 else None
        if j >= start and ch is not None and ch not in seen:
            return j, ch
        if t < 256:
            seen.update(bytes([t]).decode("latin-1"))
    raise AssertionError("no printable token in the greedy output")


def test_stop_token_string_length_and_eos(fresh_core, reference, tiny):
    core = fresh_core
    tok = tiny[2]
    p = prompt_of(8, seed=7)
    ref = reference.greedy(p, 30, stop_ids={EOS})
    assert len(ref) == 30
    # stop_token_ids: the token is kept, matched is the id
    j = 5
    c = core.generate_sync([GenerateRequest(prompt_ids=p, params=SamplingParams(
        max_new_tokens=30, temperature=0, stop_token_ids=(ref[j],)))])[0]
    first = ref.index(ref[j])
    assert (c.finish_reason, c.matched, list(c.token_ids)) == ("stop", ref[j], ref[: first + 1])
    # stop string: generation ends on the token that completes it; text is trimmed (SGLang)
    j, ch = _printable_stop(ref)
    c = core.generate_sync([GenerateRequest(prompt_ids=p, params=SamplingParams(
        max_new_tokens=30, temperature=0, stop=("\x00never", ch)))])[0]
    assert (c.finish_reason, c.matched, list(c.token_ids)) == ("stop", ch, ref[: j + 1])
    assert ch not in c.text and c.text == tok.decode(ref[:j], skip_special_tokens=True)
    # max_new_tokens -> length
    c = core.generate_sync([GenerateRequest(prompt_ids=p, params=SamplingParams(
        max_new_tokens=4, temperature=0))])[0]
    assert (c.finish_reason, c.matched, list(c.token_ids)) == ("length", None, ref[:4])
    # length wins over a stop token on the last allowed token (SGLang's check order)
    c = core.generate_sync([GenerateRequest(prompt_ids=p, params=SamplingParams(
        max_new_tokens=4, temperature=0, stop_token_ids=(ref[3],)))])[0]
    assert c.finish_reason == "length" and list(c.token_ids) == ref[:4]
    # EOS stops (unless ignore_eos); pretend the tokenizer's EOS is ref[2]
    saved = core.eos_token_ids
    core.eos_token_ids = (ref[2],)
    try:
        c = core.generate_sync([GenerateRequest(prompt_ids=p, params=SamplingParams(
            max_new_tokens=30, temperature=0))])[0]
        assert (c.finish_reason, c.matched) == ("stop", ref[2]) and list(c.token_ids) == ref[:ref.index(ref[2]) + 1]
        c = core.generate_sync([GenerateRequest(prompt_ids=p, params=SamplingParams(
            max_new_tokens=6, temperature=0, ignore_eos=True))])[0]
        assert c.finish_reason == "length" and list(c.token_ids) == ref[:6]
    finally:
        core.eos_token_ids = saved


def test_prefix_reuse_prefills_only_new_tokens(fresh_core, reference):
    """Turn 2 of an episode (history + completion + observation) prefills only the new tokens."""
    core = fresh_core
    p1 = prompt_of(30, seed=5)
    c1 = core.generate_sync([GenerateRequest(prompt_ids=p1, params=GREEDY, session_id="ep-1")])[0]
    assert c1.cached_tokens == 0
    observation = prompt_of(6, seed=6)
    p2 = p1 + list(c1.token_ids) + observation
    before = core.stats["prefill_tokens"]
    c2 = core.generate_sync([GenerateRequest(prompt_ids=p2, params=GREEDY, session_id="ep-1")])[0]
    prefilled = core.stats["prefill_tokens"] - before
    # the slot holds prompt + output[:-1]; the last sampled token and the observation are new
    assert c2.cached_tokens == len(p1) + len(c1.token_ids) - 1
    assert prefilled == len(observation) + 1 == len(p2) - c2.cached_tokens
    assert list(c2.token_ids) == reference.greedy(p2, GREEDY.max_new_tokens, stop_ids={EOS})
    # released sessions are forgotten; other sessions' idle sequences are evicted LRU when the
    # page pool runs out
    core.release("ep-1")
    c3 = core.generate_sync([GenerateRequest(prompt_ids=p2, params=GREEDY, session_id="ep-1")])[0]
    assert c3.cached_tokens == 0 and c3.token_ids == c2.token_ids
    many = [GenerateRequest(prompt_ids=prompt_of(100, seed=100 + i), params=SamplingParams(max_new_tokens=2, temperature=0),
                            session_id=f"s{i}") for i in range(6)]
    core.flush_cache()
    core.step()
    full = core.pool
    core.pool = PagePool(32, full.page_size)  # the cache's first 32 pages: 6 idle sessions of 7 pages do not fit
    try:
        for r in many:
            core.generate_sync([r])
        assert core.stats["evictions"] >= 2 and core.pages_in_use <= 32
    finally:
        core.flush_cache()
        core.step()
        core.pool = full


def test_shared_prefix_is_prefilled_once_across_sessions_and_group_samples(fresh_core, reference):
    """A common instruction, and a GRPO group's identical prompt, are prefilled once, not per episode."""
    core = fresh_core
    instruction = prompt_of(40, seed=11)
    questions = [prompt_of(10, seed=20 + i) for i in range(4)]
    # four sessions whose prompts share the instruction, submitted in one step
    before = core.stats["prefill_tokens"]
    outs = core.generate_sync([GenerateRequest(prompt_ids=instruction + q, params=GREEDY, session_id=f"task-{i}")
                               for i, q in enumerate(questions)])
    assert core.stats["prefill_tokens"] - before == len(instruction) + sum(len(q) for q in questions)
    assert [c.cached_tokens for c in outs] == [0, 40, 40, 40]
    for q, c in zip(questions, outs, strict=True):
        assert list(c.token_ids) == reference.greedy(instruction + q, GREEDY.max_new_tokens, stop_ids={EOS})
    for i in range(4):
        core.release(f"task-{i}")
    core.flush_cache()
    core.step()
    # a group: four samples of one prompt; every sample but the first prefills only its last token
    prompt = instruction + questions[0]
    before = core.stats["prefill_tokens"]
    sampled = SamplingParams(max_new_tokens=6, temperature=1.0)
    outs = core.generate_sync([GenerateRequest(prompt_ids=prompt, params=dataclasses.replace(sampled, seed=s),
                                               session_id=f"g-e{s}") for s in range(4)])
    assert core.stats["prefill_tokens"] - before == len(prompt) + 3
    for c in outs:  # the copied KV rows score the samples exactly like a full-sequence forward
        np.testing.assert_allclose(c.logprobs, reference.logprobs(prompt, c.token_ids), atol=2e-4)
    # a later session reuses what any slot holds, running or idle
    before = core.stats["prefill_tokens"]
    [c] = core.generate_sync([GenerateRequest(prompt_ids=instruction + questions[3], params=GREEDY, session_id="x")])
    assert c.cached_tokens == len(instruction) and core.stats["prefill_tokens"] - before == len(questions[3])


def test_weight_update_changes_outputs_without_recompiling(fresh_core, reference, tiny):
    core = fresh_core
    config, params, _ = tiny
    p = prompt_of(12, seed=9)
    before = core.generate_sync([GenerateRequest(prompt_ids=p, params=GREEDY)])[0]
    compiles = dict(core.compile_counts)
    new = scaled_params(config, seed=1)
    on_other_device = jax.device_put(new, jax.devices()[-1])  # e.g. the learner's device
    core.update_params(on_other_device, version=7)
    try:
        after = core.generate_sync([GenerateRequest(prompt_ids=p, params=GREEDY)])[0]
        assert after.weight_version == 7 and core.weight_version == 7
        assert after.token_ids != before.token_ids
        assert list(after.token_ids) == reference.greedy(p, GREEDY.max_new_tokens, params=new, stop_ids={EOS})
        assert dict(core.compile_counts) == compiles  # same shapes, shardings, dtypes: no recompilation
        with pytest.raises(ValueError, match="shape"):
            core.update_params(jax.tree.map(lambda x: x[..., :1] if x.ndim == 2 else x, new), version=8)
    finally:
        core.update_params(params, version=0)
        core.step()


def test_no_recompilation_at_steady_state(fresh_core):
    core = fresh_core

    def workload():
        reqs = [GenerateRequest(prompt_ids=prompt_of(n, seed=n), params=SamplingParams(
            max_new_tokens=m, temperature=t, seed=n)) for n, m, t in
            [(3, 5, 0.0), (40, 3, 1.0), (17, 9, 0.5), (8, 1, 0.0), (30, 4, 0.0), (2, 7, 1.0)]]
        core.generate_sync(reqs)

    workload()
    seen = dict(core.compile_counts)
    workload()
    core.flush_cache()
    workload()
    assert dict(core.compile_counts) == seen
    # bounded by the bucket grids
    assert 1 <= sum(v for k, v in seen.items() if k.startswith("decode")) <= (
        len(core.decode_row_buckets) * len(core.kv_buckets))
    assert sum(v for k, v in seen.items() if k.startswith("prefill")) <= (
        len(core.row_buckets) * len(core.len_buckets) * len(core.kv_buckets))


def test_warmup_compiles_every_shape_and_writes_nothing(tiny, reference):
    """After warmup, serving compiles nothing new, and greedy outputs still equal the reference."""
    config, params, tok = tiny
    core = EngineCore(config, params, tok, ENGINE_CONFIG)
    n = core.warmup()
    prefill_shapes = len(core.row_buckets) * len(core.len_buckets) * len(core.kv_buckets)  # XLA: windows too
    decode_shapes = len(core.decode_row_buckets) * len(core.kv_buckets)
    assert n == prefill_shapes + decode_shapes * (1 + prefill_shapes) + 1  # mixed: each pair; + the page copy
    compiled = sum(core.compile_counts.values())
    prompts = [prompt_of(k, seed=k) for k in (3, 40, 17, 8, 30)]
    outs = core.generate_sync([GenerateRequest(prompt_ids=p, params=GREEDY) for p in prompts])
    assert sum(core.compile_counts.values()) == compiled
    for p, c in zip(prompts, outs, strict=True):
        assert list(c.token_ids) == reference.greedy(p, GREEDY.max_new_tokens, stop_ids={EOS})


def test_decode_runs_only_the_slots_in_use(tiny, reference):
    """New requests take the lowest free slots, and a decode step runs the fewest slots (a bucket)
    holding every running request: one request on 8 slots decodes 2 rows, three decode 4; the
    tokens are the reference's either way."""
    config, params, tok = tiny
    core = EngineCore(config, params, tok, dataclasses.replace(ENGINE_CONFIG, num_slots=8, min_decode_rows=2))
    assert core.decode_row_buckets == (2, 4, 8)
    prompts = [prompt_of(n, seed=n) for n in (9, 14, 5)]
    alone = core.generate_sync([GenerateRequest(prompt_ids=prompts[0], params=GREEDY, session_id="a")])[0]
    core.release("a")
    assert {k for k in core.compile_counts if k.startswith("decode")} == {"decode[2xkv32]"}
    outs = core.generate_sync([GenerateRequest(prompt_ids=p, params=GREEDY, session_id=f"s{i}")
                               for i, p in enumerate(prompts)])
    assert sorted(s.session for s in core.seqs) == ["s0", "s1", "s2"]  # each session's KV stays cached
    assert {k.split("x")[0] for k in core.compile_counts if k.startswith("decode")} == {"decode[2", "decode[4"}
    assert outs[0].token_ids == alone.token_ids
    for p, c in zip(prompts, outs, strict=True):
        assert list(c.token_ids) == reference.greedy(p, GREEDY.max_new_tokens, stop_ids={EOS})


def test_async_engine_serves_concurrent_callers(core, reference):
    """JaxEngine: many asyncio callers, staggered; same tokens as the reference."""
    prompts = [prompt_of(n, seed=50 + n) for n in (4, 13, 21, 6, 33)]

    async def main():
        engine = JaxEngine(core=core)
        try:
            async def one(i, p):
                await asyncio.sleep(0.01 * i)
                return await engine.generate_one(GenerateRequest(prompt_ids=p, params=GREEDY, session_id=f"a{i}"))

            outs = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
            for i in range(len(prompts)):
                await engine.release(f"a{i}")
            return outs
        finally:
            await engine.close()

    outs = asyncio.run(main())
    for p, c in zip(prompts, outs, strict=True):
        assert list(c.token_ids) == reference.greedy(p, GREEDY.max_new_tokens, stop_ids={EOS})
    assert not core.busy


def test_tensor_parallel_engine_matches_single_device(tiny, reference):
    """Params sharded over 2 devices (heads / mlp / vocab split) give the same greedy tokens."""
    config, params, tok = tiny
    if len(jax.devices()) < 2:
        pytest.skip("needs 2 devices")
    core = EngineCore(config, params, tok, ENGINE_CONFIG.__class__(
        num_slots=2, max_len=64, prefill_chunk=16, max_prefill_batch=2, min_prefill_bucket=16, tp_size=2),
        devices=jax.devices()[:2])
    assert "model" in str(core.params["layers"]["mlp"]["up_proj"]["kernel"].sharding.spec)
    p = prompt_of(10, seed=3)
    c = core.generate_sync([GenerateRequest(prompt_ids=p, params=SamplingParams(max_new_tokens=6, temperature=0))])[0]
    assert list(c.token_ids) == reference.greedy(p, 6, stop_ids={EOS})
