"""Data-parallel engine replicas behind one Generator (tiny Llama on 2 of the 8 fake CPU devices)."""

from __future__ import annotations

import asyncio
import dataclasses

import jax
import pytest

from agentic.core import GenerateRequest, SamplingParams
from agentic.inference.engine import JaxEngine
from agentic.inference.replicas import EngineReplicas, build_engine, replica_plan
from tests.inference.conftest import ENGINE_CONFIG, EOS, prompt_of, scaled_params

GREEDY = SamplingParams(max_new_tokens=8, temperature=0.0)


def test_replica_plan_splits_devices_rows_and_pages():
    devs = list(range(8))  # the plan only groups them
    ec = dataclasses.replace(ENGINE_CONFIG, tp_size=2)  # 4 rows, 256 pages
    per, groups = replica_plan(ec, devs)
    assert groups == [[0, 1], [2, 3], [4, 5], [6, 7]] and (per.num_slots, per.num_pages, per.replicas) == (1, 64, 1)
    per, groups = replica_plan(dataclasses.replace(ec, replicas=2), devs)
    assert groups == [[0, 1, 2, 3], [4, 5, 6, 7]] and (per.num_slots, per.num_pages) == (2, 128)
    assert replica_plan(dataclasses.replace(ec, replicas=1), devs) == (dataclasses.replace(ec, replicas=1), [devs])
    with pytest.raises(ValueError, match="replicas=3 must divide the 4 groups"):
        replica_plan(dataclasses.replace(ec, replicas=3), devs)
    with pytest.raises(ValueError, match="tp_size 3 does not divide"):
        replica_plan(dataclasses.replace(ec, tp_size=3), devs)
    with pytest.raises(ValueError, match="fewer than one sequence"):
        replica_plan(dataclasses.replace(ec, num_pages=24), devs)  # 6 each < 8
    with pytest.raises(ValueError, match="no row"):
        replica_plan(dataclasses.replace(ec, num_slots=2, tp_size=1), devs)
    with pytest.raises(ValueError, match="replicas must be >= 0"):
        dataclasses.replace(ec, replicas=-1)


def test_two_replicas_route_groups_and_sessions_and_take_weight_updates(tiny, reference):
    """Same-prompt samples go to one replica (their prefix shared there), a session's next turn to
    the replica caching it, the rest by load: both replicas work, every greedy token is the
    reference's, an update reaches both, and abort finds the request's replica."""
    config, params, tok = tiny
    if len(jax.devices()) < 2:
        pytest.skip("needs 2 devices")
    gen = build_engine(config, params, tok, ENGINE_CONFIG, devices=jax.devices()[:2])
    assert isinstance(gen, EngineReplicas) and len(gen.engines) == 2
    assert {d for e in gen.engines for d in e.core.devices} == set(jax.devices()[:2])
    assert gen.engines[0].core.ec.seed != gen.engines[1].core.ec.seed  # unseeded draws differ

    async def main():
        group = prompt_of(40, seed=1)
        others = [prompt_of(n, seed=n) for n in (9, 23)]
        reqs = [GenerateRequest(prompt_ids=group, params=GREEDY, session_id=f"g{i}") for i in range(3)]
        reqs += [GenerateRequest(prompt_ids=p, params=GREEDY, session_id=f"o{i}") for i, p in enumerate(others)]
        first = await gen.generate(reqs)
        where = {r.session_id: gen._sessions[r.session_id] for r in reqs}
        assert where["g0"] == where["g1"] == where["g2"] and len(set(where.values())) == 2
        assert all(e.core.stats["completed"] > 0 for e in gen.engines)
        assert sum(e.core.stats["shared_copies"] for e in gen.engines) >= 2  # the group's prefix, shared
        for r, c in zip(reqs, first, strict=True):
            assert list(c.token_ids) == reference.greedy(r.prompt_ids, GREEDY.max_new_tokens, stop_ids={EOS})
        # the next turn of "o1" goes where its KV is cached
        turn2 = list(reqs[4].prompt_ids) + list(first[4].token_ids) + [65, 66]
        [c2] = await gen.generate([GenerateRequest(prompt_ids=turn2, params=GREEDY, session_id="o1")])
        assert gen._sessions["o1"] == where["o1"] and c2.cached_tokens >= len(reqs[4].prompt_ids)
        for s in where:
            await gen.release(s)
        # a weight update reaches both replicas
        new = scaled_params(config, 4)
        await asyncio.to_thread(gen.update_params, new, 3)
        assert gen.weight_version == 3 and all(e.weight_version == 3 for e in gen.engines)
        outs = await gen.generate([GenerateRequest(prompt_ids=p, params=GREEDY) for p in others])
        for p, c in zip(others, outs, strict=True):
            assert c.weight_version == 3
            assert list(c.token_ids) == reference.greedy(p, GREEDY.max_new_tokens, params=new, stop_ids={EOS})
        # abort by key reaches the replica running it
        long = SamplingParams(max_new_tokens=100, temperature=0.0, ignore_eos=True)
        task = asyncio.create_task(gen.generate([GenerateRequest(prompt_ids=others[0], params=long)], keys=["k"]))
        while "k" not in gen._key_owner:
            await asyncio.sleep(0.01)
        gen.abort("k")
        [aborted] = await task
        assert aborted.finish_reason == "abort" and len(aborted.token_ids) < 100
        await gen.close()

    asyncio.run(main())


def test_one_tp_group_builds_one_engine(tiny):
    config, params, tok = tiny
    gen = build_engine(config, params, tok, ENGINE_CONFIG, devices=jax.devices()[:1])
    assert isinstance(gen, JaxEngine)
    gen.close_sync()
