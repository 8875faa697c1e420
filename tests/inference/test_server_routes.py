"""Our SGLang-compatible server: streaming, pause/continue/abort, SGLang's edge cases, OpenAI routes."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import openai
import pytest

from agentic.core import GenerateRequest, GeneratorError, SamplingParams
from agentic.inference.sglang_client import SGLangClient
from tests.inference.conftest import EOS
from tests.inference.test_server_client import serving

GEN = {"max_new_tokens": 6, "temperature": 0}


async def _post(http, url, body):
    async with http.post(url, json=body) as r:
        return r.status, await r.json(content_type=None)


def test_generate_stream_edge_cases_and_admin_routes(fresh_core, tiny):
    tok = tiny[2]

    async def main():
        async with serving(fresh_core, load_params=lambda path: tiny[1]) as (engine, urls, _):
            url = urls[0]
            async with aiohttp.ClientSession() as http:
                body = {"input_ids": [5, 6, 7], "sampling_params": GEN, "return_logprob": True}
                _, plain = await _post(http, url + "/generate", body)
                # SSE as SGLang frames it: "data: {json}" events, then "data: [DONE]"
                async with http.post(url + "/generate", json={**body, "stream": True}) as r:
                    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
                    raw = (await r.read()).decode()
                events = [e[len("data: "):] for e in raw.split("\n\n") if e]
                assert events[-1] == "[DONE]" and all(e.startswith("data: ") for e in raw.split("\n\n") if e)
                last = json.loads(events[-2])
                assert last["output_ids"] == plain["output_ids"] and last["meta_info"]["finish_reason"]

                # max_new_tokens 0 is allowed (prefill only); text gets the tokenizer's BOS
                status, data = await _post(http, url + "/generate", {"text": "hi", "sampling_params":
                                                                     {"max_new_tokens": 0}})
                assert status == 200 and data["output_ids"] == []
                assert data["meta_info"]["finish_reason"] == {"type": "length", "length": 0}
                assert data["meta_info"]["prompt_tokens"] == len(tok.encode("hi")) + 1

                for path in ("/model_info", "/server_info", "/get_weight_version"):
                    async with http.get(url + path) as r:
                        assert r.status == 200, path
                async with http.get(url + "/server_info") as r:
                    assert (await r.json())["sampling_seed_honored"] is True

                # string weight versions; an absent one leaves the version as it is
                status, data = await _post(http, url + "/update_weights_from_disk",
                                           {"model_path": "same", "weight_version": "rl-step-7"})
                assert status == 200 and data["success"] and "rl-step-7" in data["message"]
                _, data = await _post(http, url + "/generate", body)
                assert data["meta_info"]["weight_version"] == "rl-step-7"
                status, _ = await _post(http, url + "/update_weights_from_disk", {"model_path": "same"})
                _, data = await _post(http, url + "/generate", body)
                assert status == 200 and data["meta_info"]["weight_version"] == "rl-step-7"

                # paused: new requests wait until /continue_generation
                _, data = await _post(http, url + "/pause_generation", {"mode": "in_place"})
                assert data["status"] == "ok"
                waiting = asyncio.ensure_future(_post(http, url + "/generate", body))
                await asyncio.sleep(0.3)
                assert not waiting.done()
                await _post(http, url + "/continue_generation", {})
                status, data = await waiting
                assert status == 200 and data["output_ids"] == plain["output_ids"]

                # abort by rid (prefix, as SGLang's scheduler matches) and pause "abort": HTTP 200, abort
                long = {"input_ids": [9, 8, 7], "sampling_params": {"max_new_tokens": 100, "temperature": 0,
                                                                     "ignore_eos": True}}
                # each engine step slowed to >= 10 ms: a warm engine would otherwise finish the tiny model's
                # 100 tokens before an abort sent after 50 ms arrives
                fast_step = fresh_core.step

                def slow_step():
                    time.sleep(0.01)
                    fast_step()

                fresh_core.step = slow_step
                one = asyncio.ensure_future(_post(http, url + "/generate", {**long, "rid": "episode-1-turn-0"}))
                await asyncio.sleep(0.05)
                async with http.post(url + "/abort_request", json={"rid": "episode-1"}) as r:
                    assert r.status == 200
                status, data = await one
                assert status == 200 and data["meta_info"]["finish_reason"]["type"] == "abort"
                two = asyncio.ensure_future(_post(http, url + "/generate", long))
                await asyncio.sleep(0.05)
                await _post(http, url + "/pause_generation", {"mode": "abort"})
                status, data = await two
                assert data["meta_info"]["finish_reason"] == {"type": "abort",
                                                              "message": "Aborted by pause_generation."}
                del fresh_core.step  # the engine's own step again
                status, data = await _post(http, url + "/pause_generation", {"mode": "later"})
                assert status == 400 and data["error"]["param"] == "mode"
                await _post(http, url + "/continue_generation", {})
            # the client's weight sync against our server: pause, update, continue; then serving again
            client = SGLangClient(urls)
            try:
                await client.update_weights("same", version=3)
                c = await client.generate_one(GenerateRequest(prompt_ids=[5, 6, 7], params=SamplingParams(
                    max_new_tokens=6, temperature=0)))
                assert c.weight_version == 3 and list(c.token_ids) == plain["output_ids"]
            finally:
                await client.close()
            while fresh_core.busy:  # the aborted requests finish in the engine, unobserved
                await asyncio.sleep(0.05)
            engine.update_params(tiny[1], 0)

    asyncio.run(main())


def test_openai_routes_with_the_official_client(fresh_core, reference, tiny):
    tok = tiny[2]

    async def main():
        async with serving(fresh_core) as (_, urls, _):
            client = openai.AsyncOpenAI(base_url=urls[0] + "/v1", api_key="none", max_retries=0)
            try:
                models = await client.models.list()
                assert [m.id for m in models.data] == ["tiny"]

                prompt = "Hello"
                ids = tok.encode(prompt, add_special_tokens=True)
                ref = reference.greedy(ids, 8, stop_ids={EOS})
                c = await client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0,
                                                    logprobs=0)
                ch = c.choices[0]
                assert c.usage.prompt_tokens == len(ids) and c.usage.completion_tokens == len(ref)
                assert ch.finish_reason == ("stop" if ref[-1] == EOS else "length")
                assert ch.text == tok.decode([t for t in ref if t != EOS], skip_special_tokens=True)
                assert len(ch.logprobs.token_logprobs) == len(ref)

                messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
                chat_ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))
                ref = reference.greedy(chat_ids, 30, stop_ids={EOS})
                j = next(j for j in range(2, 30) if 32 <= ref[j] < 127 and chr(ref[j]) not in tok.decode(ref[:j]))
                r = await client.chat.completions.create(model="tiny", messages=messages, max_tokens=30,
                                                         temperature=0, stop=[chr(ref[j])], logprobs=True)
                ch = r.choices[0]
                assert r.usage.prompt_tokens == len(chat_ids) and r.usage.completion_tokens == j + 1
                assert ch.finish_reason == "stop" and ch.message.role == "assistant"
                assert ch.message.content == tok.decode(ref[:j], skip_special_tokens=True)
                assert [t.logprob for t in ch.logprobs.content] == [
                    float(x) for x in [*await _lp(urls[0], chat_ids, j + 1)]]

                for kw, param in (({"n": 99}, "n"), ({"tool_choice": "required"}, "tool_choice"), ({"top_logprobs": 2}, "top_logprobs"),
                                  ({"max_tokens": 500}, "max_tokens")):
                    try:
                        await client.chat.completions.create(model="tiny", messages=messages, **kw)
                    except openai.BadRequestError as e:
                        assert e.status_code == 400 and param in e.message, (kw, e.message)
                    else:
                        raise AssertionError(f"{kw} was accepted")
            finally:
                await client.close()

    asyncio.run(main())


async def _lp(url: str, ids: list[int], n: int) -> list[float]:
    """The same tokens' log-probs from the native API, for comparison."""
    async with aiohttp.ClientSession() as http:
        _, data = await _post(http, url + "/generate", {"input_ids": ids, "return_logprob": True,
                                                         "sampling_params": {"max_new_tokens": n, "temperature": 0}})
    return [t[0] for t in data["meta_info"]["output_token_logprobs"]][:n]


def test_closed_engine_is_a_failed_server_not_an_overloaded_one(fresh_core):
    """503 means "queue full, retry" to SGLang clients; a closed engine answers 500 and fails fast."""

    async def main():
        async with serving(fresh_core) as (engine, urls, _):
            await engine.close()
            client = SGLangClient(urls, overload_budget_s=60)
            try:
                t = time.monotonic()
                with pytest.raises(GeneratorError, match="HTTP 500.*engine is closed"):
                    await client.generate_one(GenerateRequest(prompt_ids=[1, 2], params=SamplingParams(max_new_tokens=4)))
                assert time.monotonic() - t < 5 and client.stats["overloaded"] == 0
            finally:
                await client.close()

    asyncio.run(main())


def test_client_fits_max_new_tokens_into_the_context(fresh_core):
    """prompt + max_new_tokens == context: SGLang (and our server) answer 400; the client clamps,
    so a turn at the end of the token budget ends with "length", as on the embedded engine."""

    async def main():
        async with serving(fresh_core) as (_, urls, _):
            client = SGLangClient(urls)
            try:
                c = await client.generate_one(GenerateRequest(prompt_ids=[1] * 120, params=SamplingParams(
                    max_new_tokens=8, temperature=0, ignore_eos=True)))
                assert c.finish_reason == "length" and len(c.token_ids) == 7  # context 128
            finally:
                await client.close()

    asyncio.run(main())
