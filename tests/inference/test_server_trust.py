"""The HTTP inference server against hostile clients (issue 31), on a real server on loopback.

Before: `top_k: 2**40` killed the engine thread for good (every later request 500), any client could
swap weights or pause the server, slowloris connections stayed open, OpenAI `top_p: NaN` was an
uncaught 500 and NaN log-probs went out as bare `NaN` (not JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import aiohttp
import jax
import jax.numpy as jnp
import portpicker
import pytest

from agentic.core import GenerateRequest, GeneratorError, SamplingParams
from agentic.inference.engine import JaxEngine
from agentic.inference.http_server import SGLangServer, start_server
from agentic.inference.sglang_client import SGLangClient

KEY = "sk-test-31"
GEN = {"max_new_tokens": 4, "temperature": 0}


@contextlib.asynccontextmanager
async def server_on(core, **kwargs):
    engine = JaxEngine(core=core)
    port = portpicker.pick_unused_port()
    server = SGLangServer(engine, model_path="tiny", **kwargs)
    runner = await start_server(server, "127.0.0.1", port)
    try:
        yield engine, f"http://127.0.0.1:{port}", port
    finally:
        await runner.cleanup()
        await engine.close()


async def post(http, url, body, **kw):
    async with http.post(url, data=body if isinstance(body, (str, bytes)) else json.dumps(body),
                         headers={"Content-Type": "application/json", **kw.pop("headers", {})}, **kw) as r:
        return r.status, await r.text()


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def test_a_bad_sampling_request_fails_alone_and_the_next_one_is_served(fresh_core):
    async def main():
        async with server_on(fresh_core) as (_, url, _), aiohttp.ClientSession() as http:
            native = {"input_ids": [5, 6, 7], "sampling_params": {**GEN, "top_k": 2**40}}
            status, text = await post(http, url + "/generate", native)
            assert status == 400 and "top_k" in strict_json(text)["error"]["param"]
            for field, value in (("temperature", "1e400"), ("top_p", "NaN"), ("temperature", "NaN")):
                raw = f'{{"input_ids": [5, 6], "sampling_params": {{"max_new_tokens": 2, "{field}": {value}}}}}'
                status, text = await post(http, url + "/generate", raw)
                assert status == 400 and field in text, (field, value, text)
                raw = f'{{"model": "tiny", "prompt": [5, 6], "max_tokens": 2, "{field}": {value}}}'
                status, text = await post(http, url + "/v1/completions", raw)
                assert status == 400 and strict_json(text)["param"] == field, (field, value, text)
            status, text = await post(http, url + "/v1/completions",
                                      {"model": "tiny", "prompt": [5, 6], "max_tokens": 2, "top_k": 2**40})
            assert status == 400 and strict_json(text)["param"] == "top_k"
            status, text = await post(http, url + "/generate", {"input_ids": [5, 6, 7], "sampling_params": GEN})
            assert status == 200 and len(strict_json(text)["output_ids"]) == 4
            async with http.get(url + "/health") as r:
                assert r.status == 200

    asyncio.run(main())


def test_the_api_key_guards_every_route_but_health(fresh_core):
    async def main():
        async with server_on(fresh_core, api_key=KEY, load_params=lambda path: None) as (_, url, _), \
                aiohttp.ClientSession() as http:
            for path, body in (("/generate", {"input_ids": [5], "sampling_params": GEN}),
                               ("/update_weights_from_disk", {"model_path": "/evil"}),
                               ("/pause_generation", {"mode": "abort"}), ("/abort_request", {"abort_all": True}),
                               ("/v1/completions", {"model": "tiny", "prompt": [5], "max_tokens": 1})):
                for headers in ({}, {"Authorization": "Bearer wrong"}):
                    status, text = await post(http, url + path, body, headers=headers)
                    assert status == 401 and "API key" in text, (path, status, text)
            async with http.get(url + "/get_server_info") as r:
                assert r.status == 401
            async with http.get(url + "/health") as r:
                assert r.status == 200
            status, text = await post(http, url + "/generate", {"input_ids": [5, 6], "sampling_params": GEN},
                                      headers={"Authorization": f"Bearer {KEY}"})
            assert status == 200 and strict_json(text)["output_ids"]
            async with http.get(url + "/get_server_info", headers={"Authorization": f"Bearer {KEY}"}) as r:
                assert (await r.json())["paused"] is False  # the unauthenticated pause did nothing
            request = GenerateRequest(prompt_ids=[5, 6], params=SamplingParams(max_new_tokens=2, temperature=0))
            client = SGLangClient([url], api_key=KEY, require_weight_updates=False)
            stranger = SGLangClient([url], api_key="", require_weight_updates=False)
            try:
                assert len((await client.generate_one(request)).token_ids) == 2  # SGLangClient sends the key
                with pytest.raises(GeneratorError, match="HTTP 401"):
                    await stranger.generate_one(request)
            finally:
                await client.close()
                await stranger.close()

    asyncio.run(main())


def test_serving_off_loopback_needs_an_api_key(fresh_core):
    async def main():
        server = SGLangServer(JaxEngine(core=fresh_core), model_path="tiny")
        try:
            with pytest.raises(ValueError, match="refusing to serve on 0.0.0.0 without an API key"):
                await start_server(server, "0.0.0.0", portpicker.pick_unused_port())
        finally:
            await server.engine.close()

    asyncio.run(main())


def test_slow_headers_slow_bodies_and_huge_bodies(fresh_core):
    async def main():
        async with server_on(fresh_core, header_timeout_s=1.0, body_timeout_s=1.0, max_body_bytes=1 << 20) as \
                (_, url, port):
            loop = asyncio.get_running_loop()

            def slowloris() -> float:
                t = time.monotonic()
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\n")  # and never the rest
                    assert s.recv(100) == b""  # closed by the server
                return time.monotonic() - t

            held = await asyncio.gather(*(loop.run_in_executor(None, slowloris) for _ in range(20)))
            assert max(held) < 4, held

            def slow_body() -> bytes:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 100\r\n\r\n{\"input_ids\"")
                    return s.recv(1000)

            t = time.monotonic()
            reply = await loop.run_in_executor(None, slow_body)
            assert reply.startswith(b"HTTP/1.1 408") and time.monotonic() - t < 4, reply[:200]
            async with aiohttp.ClientSession() as http:
                status, _ = await post(http, url + "/generate", b"[" + b"1," * (1 << 20) + b"1]")
                assert status == 413
                status, _ = await post(http, url + "/generate", {"input_ids": [5, 6], "sampling_params": GEN})
                assert status == 200

    asyncio.run(main())


def test_nan_log_probs_go_out_as_standard_json(fresh_core, tiny):
    params = tiny[1]
    version = fresh_core.weight_version

    async def main():
        async with server_on(fresh_core) as (engine, url, _), aiohttp.ClientSession() as http:
            engine.update_params(jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), params), version + 1)
            try:
                body = {"input_ids": [5, 6], "sampling_params": GEN, "return_logprob": True}
                status, text = await post(http, url + "/generate", body)
                assert status == 200
                logprobs = [t[0] for t in strict_json(text)["meta_info"]["output_token_logprobs"]]
                assert logprobs and all(lp is None for lp in logprobs), logprobs
                status, text = await post(http, url + "/generate", {**body, "stream": True})
                events = [e[len("data: "):] for e in text.split("\n\n") if e and e != "data: [DONE]"]
                assert status == 200 and all(strict_json(e) for e in events)
                status, text = await post(http, url + "/v1/completions", {"model": "tiny", "prompt": [5, 6],
                                                                          "max_tokens": 2, "logprobs": 0})
                assert status == 200 and strict_json(text)["choices"]
            finally:
                engine.update_params(params, version)

    asyncio.run(main())


def test_openai_api_does_not_import_http_server():
    """http_server.py -> openai_api.py, one way: the lower file reads without the upper (issue 31)."""
    import ast
    import pathlib

    import agentic.inference.openai_api as openai_api

    tree = ast.parse(pathlib.Path(openai_api.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "agentic.inference.http_server" not in imported
