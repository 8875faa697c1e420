"""Our SGLang-compatible server and the SGLang client, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import numpy as np
import portpicker
import pytest

from agentic.core import GenerateRequest, GeneratorError, SamplingParams
from agentic.inference.engine import JaxEngine
from agentic.inference.http_server import SGLangServer, start_server
from agentic.inference.sglang_client import SGLangClient
from tests.inference.conftest import EOS, prompt_of, scaled_params

GREEDY = SamplingParams(max_new_tokens=10, temperature=0.0)


@contextlib.asynccontextmanager
async def serving(core, n_servers=1, load_params=None):
    """n HTTP servers (distinct ports) in front of one JaxEngine stepping the shared core."""
    engine = JaxEngine(core=core)
    runners, urls = [], []
    try:
        for _ in range(n_servers):
            port = portpicker.pick_unused_port()
            server = SGLangServer(engine, model_path="tiny", load_params=load_params)
            runners.append(await start_server(server, "127.0.0.1", port))
            urls.append(f"http://127.0.0.1:{port}")
        yield engine, urls, runners
    finally:
        for r in runners:
            await r.cleanup()
        await engine.close()
        core.flush_cache()
        core.step()


def test_client_against_our_server(fresh_core, reference, tiny):
    """Greedy tokens, log-probs, stop handling and prefix reuse, all through HTTP."""
    tok = tiny[2]

    async def main():
        async with serving(fresh_core) as (_, urls, _):
            client = SGLangClient(urls)
            try:
                prompts = [prompt_of(n, seed=200 + n) for n in (6, 19, 35, 4)]

                async def one(i, p):
                    await asyncio.sleep(0.02 * i)  # staggered arrivals
                    return await client.generate_one(GenerateRequest(prompt_ids=p, params=GREEDY))

                outs = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
                for p, c in zip(prompts, outs, strict=True):
                    assert list(c.token_ids) == reference.greedy(p, GREEDY.max_new_tokens, stop_ids={EOS})
                    assert np.max(np.abs(np.asarray(c.logprobs) - reference.logprobs(p, c.token_ids))) <= 1e-4
                    assert c.finish_reason == "length" and c.prompt_tokens == len(p)

                p = prompt_of(8, seed=7)
                ref = reference.greedy(p, 30, stop_ids={EOS})
                c = await client.generate_one(GenerateRequest(prompt_ids=p, params=SamplingParams(
                    max_new_tokens=30, temperature=0, stop_token_ids=(ref[5],))))
                assert (c.finish_reason, c.matched) == ("stop", ref[5]) and c.token_ids[-1] == ref[5]
                j = next(j for j in range(3, 30) if 32 <= ref[j] < 127 and chr(ref[j]) not in
                         tok.decode(ref[:j]))
                c = await client.generate_one(GenerateRequest(prompt_ids=p, params=SamplingParams(
                    max_new_tokens=30, temperature=0, stop=(chr(ref[j]),))))
                assert (c.finish_reason, c.matched, list(c.token_ids)) == ("stop", chr(ref[j]), ref[: j + 1])
                assert c.text == tok.decode(ref[:j], skip_special_tokens=True)

                # prefix reuse over HTTP: the next turn extends the cached sequence
                turn1 = await client.generate_one(GenerateRequest(prompt_ids=p, params=GREEDY, session_id="e"))
                p2 = p + list(turn1.token_ids) + prompt_of(5, seed=1)
                turn2 = await client.generate_one(GenerateRequest(prompt_ids=p2, params=GREEDY, session_id="e"))
                assert turn2.cached_tokens == len(p) + len(turn1.token_ids) - 1
            finally:
                await client.close()

    asyncio.run(main())


def test_server_validates_requests_and_keeps_serving(fresh_core):
    async def main():
        async with serving(fresh_core) as (_, urls, _):
            url = urls[0]
            async with aiohttp.ClientSession() as http:
                async def post(body, raw=None):
                    kw = {"data": raw, "headers": {"Content-Type": "application/json"}} if raw else {"json": body}
                    async with http.post(url + "/generate", **kw) as r:
                        return r.status, await r.json(content_type=None)

                bad = [
                    ({"sampling_params": {"max_new_tokens": 3}}, "input_ids"),
                    ({"input_ids": [1, 2], "text": "hi"}, "input_ids"),
                    ({"input_ids": [1, 99999]}, "input_ids[1]"),
                    ({"input_ids": []}, "input_ids"),
                    ({"input_ids": [1, 2], "sampling_params": {"temperature": -1}}, "sampling_params.temperature"),
                    ({"input_ids": [1, 2], "sampling_params": {"top_p": 0}}, "sampling_params.top_p"),
                    ({"input_ids": [1, 2], "sampling_params": {"max_new_tokens": "x"}},
                     "sampling_params.max_new_tokens"),
                    ({"input_ids": [1, 2], "sampling_params": {"stop": [""]}}, "sampling_params.stop"),
                    ({"input_ids": [1, 2], "sampling_params": {"bogus": 1}}, "sampling_params.bogus"),
                    ({"input_ids": [1, 2], "sampling_params": {"frequency_penalty": 0.5}},
                     "sampling_params.frequency_penalty"),
                    ({"input_ids": [1, 2], "stream": "yes"}, "stream"),
                    ({"input_ids": [1, 2], "sampling_params": {"max_new_tokens": -1}},
                     "sampling_params.max_new_tokens"),
                    ({"input_ids": list(range(1, 100)), "sampling_params": {"max_new_tokens": 29}},
                     "input_ids"),  # prompt + max_new_tokens past the context (128): SGLang's 400
                    ({"input_ids": [1, 2], "return_logprob": "yes"}, "return_logprob"),
                    ({"input_ids": [[1, 2], [3]], "sampling_params": [{}]}, "sampling_params"),
                    ({"input_ids": list(range(1, 200))}, "input_ids"),  # longer than the context
                    ([1, 2], "body"),
                ]
                for body, field in bad:
                    status, data = await post(body)
                    assert status == 400, (body, data)
                    err = data["error"]  # SGLang's native error shape {"error": {"message": ...}}
                    assert err["param"] == field and field in err["message"], (body, data)
                status, data = await post(None, raw=b"{not json")
                assert status == 400 and data["error"]["param"] == "body"

                # still serving; SGLang's response shapes
                status, data = await post({"input_ids": [5, 6, 7], "return_logprob": True,
                                           "sampling_params": {"max_new_tokens": 3, "temperature": 0,
                                                               "frequency_penalty": 0.0}})
                assert status == 200
                meta = data["meta_info"]
                assert meta["finish_reason"] == {"type": "length", "length": 3}
                assert meta["completion_tokens"] == 3 and meta["prompt_tokens"] == 3
                assert isinstance(meta["weight_version"], str)
                assert [t[1] for t in meta["output_token_logprobs"]] == data["output_ids"]
                assert all(len(t) == 3 and t[2] is None and t[0] <= 0 for t in meta["output_token_logprobs"])
                status, data = await post({"text": ["ab", "cde"], "sampling_params": {"max_new_tokens": 2}})
                assert status == 200 and isinstance(data, list) and len(data) == 2
                assert "output_token_logprobs" not in data[0]["meta_info"]
                for path in ("/health", "/health_generate", "/get_model_info", "/flush_cache", "/get_server_info"):
                    async with http.get(url + path) as r:
                        assert r.status == 200, path

    asyncio.run(main())


def test_update_weights_broadcast(fresh_core, reference, tiny):
    config, params, _ = tiny
    new = scaled_params(config, seed=1)
    loads = []

    def load(path):
        loads.append(path)
        if path != "ckpt/v5":
            raise FileNotFoundError(path)
        return new

    async def main():
        async with serving(fresh_core, n_servers=2, load_params=load) as (engine, urls, _):
            client = SGLangClient(urls)
            try:
                p = prompt_of(9, seed=3)
                before = await client.generate_one(GenerateRequest(prompt_ids=p, params=GREEDY))
                assert before.weight_version == 0
                await client.update_weights("ckpt/v5", version=5)
                assert loads == ["ckpt/v5", "ckpt/v5"] and client.weight_version == 5
                after = await client.generate_one(GenerateRequest(prompt_ids=p, params=GREEDY))
                assert after.weight_version == 5 and after.token_ids != before.token_ids
                assert list(after.token_ids) == reference.greedy(p, GREEDY.max_new_tokens, params=new,
                                                                 stop_ids={EOS})
                info = await client.model_info()
                assert all(v["weight_version"] == "5" for v in info.values())
                with pytest.raises(GeneratorError, match="update_weights failed"):
                    await client.update_weights("ckpt/missing", version=6)
                assert engine.weight_version == 5
            finally:
                await client.close()
                engine.update_params(params, 0)

    asyncio.run(main())


def test_client_routes_around_killed_server(fresh_core, reference):
    async def main():
        async with serving(fresh_core, n_servers=2) as (_, urls, runners):
            dead = f"http://127.0.0.1:{portpicker.pick_unused_port()}"  # nothing listens there
            client = SGLangClient(urls + [dead], retry_down_s=60)
            try:
                reqs = [GenerateRequest(prompt_ids=prompt_of(5 + i, seed=i), params=GREEDY, session_id=f"ep{i}")
                        for i in range(6)]
                first = await client.generate(reqs)
                served = {s.url: s.served for s in client.servers}
                assert served[urls[0]] > 0 and served[urls[1]] > 0 and served[dead] == 0
                assert all(client._affinity[f"ep{i}"].url != dead for i in range(6))
                # episodes stick to their server
                pinned = {f"ep{i}": client._affinity[f"ep{i}"].url for i in range(6)}
                await client.generate(reqs)
                assert {k: client._affinity[k].url for k in pinned} == pinned

                await runners[1].cleanup()  # kill server 2: its episodes move to server 1
                again = await client.generate(reqs)
                assert [c.token_ids for c in again] == [c.token_ids for c in first]
                assert all(client._affinity[f"ep{i}"].url == urls[0] for i in range(6))

                await runners[0].cleanup()  # nothing left: a clear error naming every server
                with pytest.raises(GeneratorError) as e:
                    await client.generate_one(reqs[0])
                for u in urls + [dead]:
                    assert u in str(e.value)
            finally:
                await client.close()

    asyncio.run(main())
