"""The SGLang client against a stand-in that answers as real SGLang (and sglang-jax) do.

No model: the stand-in (tests/inference/sglang_standin.py) follows SGLang's source for
the shapes and semantics our own server does not reproduce.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from agentic.core import GenerateRequest, GeneratorError, SamplingParams
from agentic.inference.sglang_client import GenerationAborted, SGLangClient
from tests.inference.sglang_standin import StandInSGLang, start_standin

PROMPT = [5, 6, 7]


@contextlib.asynccontextmanager
async def standin(client_kw=None, **kw):
    server, runner, url = await start_standin(**kw)
    client = SGLangClient([url], **(client_kw or {}))
    try:
        yield server, client
    finally:
        await client.close()
        await runner.cleanup()


def req(**kw) -> GenerateRequest:
    return GenerateRequest(prompt_ids=PROMPT, params=SamplingParams(**{"max_new_tokens": 8, "temperature": 0, **kw}))


def test_weight_sync_pauses_then_continues():
    async def main():
        async with standin(step_s=0.02) as (server, client):
            running = asyncio.ensure_future(client.generate_one(req(max_new_tokens=20)))
            await asyncio.sleep(0.1)
            assert server.inflight == 1
            await client.update_weights("/ckpt/v5", version=5)
            # retract mode: the in-flight request keeps its work; the update did not wait on it
            assert server.calls[-3:] == ["pause:retract", "update", "continue"]
            assert not server.update_waited_for_requests
            c = await running
            assert c.finish_reason == "length" and len(c.token_ids) == 20
            after = await client.generate_one(req())
            assert after.weight_version == 5 and client.weight_version == 5

        # "abort" mode: the in-flight turn comes back aborted and is sent again after the update
        async with standin({"pause_mode": "abort"}, step_s=0.02) as (server, client):
            running = asyncio.ensure_future(client.generate_one(req(max_new_tokens=20)))
            await asyncio.sleep(0.1)
            await client.update_weights("/ckpt/v6", version=6)
            c = await running
            assert c.finish_reason == "length" and len(c.token_ids) == 20 and c.weight_version == 6
            assert client.stats["retried_aborts"] == 1
            assert server.calls.count("generate") == 2

    asyncio.run(main())


def test_pause_and_continue_generation():
    """The client's own pause / continue: a request sent while paused waits for the continue."""
    async def main():
        async with standin(step_s=0.01) as (server, client):
            assert await client.pause_generation("in_place") == {client.servers[0].url: True}
            waiting = asyncio.ensure_future(client.generate_one(req(max_new_tokens=4)))
            await asyncio.sleep(0.2)
            assert not waiting.done()
            assert await client.continue_generation() == {client.servers[0].url: True}
            c = await asyncio.wait_for(waiting, 5)
            assert c.finish_reason == "length" and server.calls == ["pause:in_place", "generate", "continue"]
            with pytest.raises(ValueError, match="pause mode"):
                await client.pause_generation("later")

    asyncio.run(main())


def test_overload_backs_off_and_retries_within_a_budget():
    async def main():
        async with standin(queue_full=3) as (server, client):
            c = await client.generate_one(req())
            assert c.finish_reason == "length" and client.stats["overloaded"] == 3
            assert client.servers[0].up(time.monotonic())  # overloaded is not down
        async with standin({"overload_budget_s": 0.3}, queue_full=10**6) as (_, client):
            t = time.monotonic()
            with pytest.raises(GeneratorError, match=r"overloaded for .* \(overload_budget_s=0.3\).*queue is full"):
                await client.generate_one(req())
            assert 0.3 <= time.monotonic() - t < 2.0

    asyncio.run(main())


def test_an_overloaded_server_is_avoided_while_another_is_calm():
    """Two servers on loopback, the first answering 503 (queue full): of several requests in a row only
    the first touches it; each is served by the calm one without waiting out a backoff."""
    async def main():
        full, full_runner, full_url = await start_standin(queue_full=10**6)
        calm, calm_runner, calm_url = await start_standin()
        client = SGLangClient([full_url, calm_url])
        try:
            t = time.monotonic()
            for _ in range(6):
                c = await client.generate_one(req())
                assert c.finish_reason == "length"
            assert full.calls.count("generate") == 1 and calm.calls.count("generate") == 6
            assert client.stats["overloaded"] == 1 and time.monotonic() - t < client.overload_mark_s
            # once its mark ends it is tried again (ties rotate: by one of the next two), then avoided again
            client.servers[0].overloaded_until = 0.0
            await client.generate([req(), req()])
            assert full.calls.count("generate") == 2 and client.servers[0].overload_streak == 2
        finally:
            await client.close()
            await full_runner.cleanup()
            await calm_runner.cleanup()

    asyncio.run(main())


def test_aborted_turn_is_retried_then_raised_never_returned():
    async def main():
        async with standin({"abort_retries": 2}, abort_always=True) as (server, client):
            with pytest.raises(GenerationAborted) as e:
                await client.generate_one(req())
            assert e.value.completion.finish_reason == "abort" and len(e.value.completion.token_ids) == 2
            assert server.calls.count("generate") == 3 and client.stats["aborted"] == 3
            assert isinstance(e.value, GeneratorError)

    asyncio.run(main())


def test_ignore_eos_keeps_explicit_stop_ids():
    async def main():
        async with standin() as (server, client):
            stop = StandInSGLang.token(PROMPT, 3, 0)
            plain = await client.generate_one(req(stop_token_ids=(stop,)))
            assert (plain.finish_reason, plain.matched, len(plain.token_ids)) == ("stop", stop, 4)
            # SGLang ignores stop_token_ids under ignore_eos and runs to max_new_tokens; the client cuts
            c = await client.generate_one(req(stop_token_ids=(stop,), ignore_eos=True))
            assert (c.finish_reason, c.matched, c.token_ids, c.logprobs) == (
                "stop", stop, plain.token_ids, plain.logprobs)
            c = await client.generate_one(req(ignore_eos=True))
            assert c.finish_reason == "length" and len(c.token_ids) == 8

    asyncio.run(main())


def test_seed_needs_deterministic_inference(caplog):
    async def main():
        async with standin() as (server, client):
            with caplog.at_level(logging.WARNING, logger="agentic.inference.sglang_client"):
                await client.generate_one(req(temperature=1.0, seed=3))
            assert "--enable-deterministic-inference" in caplog.text
        async with standin({"require_seeds": True}) as (_, client):
            with pytest.raises(GeneratorError, match="ignores sampling_seed"):
                await client.generate_one(req(temperature=1.0, seed=3))
        caplog.clear()
        async with standin({"require_seeds": True}, deterministic=True) as (_, client):
            a = await client.generate_one(req(temperature=1.0, seed=3))
            b = await client.generate_one(req(temperature=1.0, seed=3))
            assert a.token_ids == b.token_ids and "deterministic" not in caplog.text

    asyncio.run(main())


def test_sglang_400_message_is_reported():
    async def main():
        async with standin() as (_, client):
            bad = GenerateRequest(prompt_ids=PROMPT, params=SamplingParams(max_new_tokens=4))
            object.__setattr__(bad.params, "temperature", -1.0)  # past our own validation, to reach the server
            with pytest.raises(GeneratorError) as e:
                await client.generate_one(bad)
            assert str(e.value).endswith("(HTTP 400): temperature must be non-negative")

    asyncio.run(main())


def test_sglang_jax_without_weight_update_route():
    async def main():
        async with standin(jax=True) as (_, client):
            with pytest.raises(GeneratorError, match=r"no /update_weights_from_disk route.*sglang-jax.*"
                                                     r"backend='engine'.*BUILD.md"):
                await client.generate_one(req())
        async with standin({"require_weight_updates": False}, jax=True) as (_, client):
            c = await client.generate_one(req())  # evaluation works; no weight_version in meta_info
            assert c.finish_reason == "length" and c.weight_version == client.weight_version == 0
            with pytest.raises(GeneratorError, match="sglang-jax"):
                await client.update_weights("/ckpt/v1", version=1)

    asyncio.run(main())
