"""An SGLang-compatible HTTP server (native API) around a `JaxEngine`.

Endpoints (SGLang's names and shapes, see `agentic.inference.sglang_api`):
  POST|PUT /generate                  text or input_ids, single or batched
  POST     /update_weights_from_disk  {"model_path", "weight_version"?, "flush_cache"?}
  GET|POST /flush_cache
  GET      /health, /health_generate, /get_model_info, /get_server_info, /get_weight_version

Malformed requests get HTTP 400 naming the field; the server keeps serving.
Built on aiohttp (already a dependency of the client): no uvicorn/fastapi
process model, one event loop, the engine steps on its own thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from agentic.inference.engine import JaxEngine
from agentic.inference.protocol import GenerateRequest, GeneratorError, SamplingParams
from agentic.inference.sglang_api import ApiError, generate_response, parse_generate
from agentic.inference.stops import Finish, completion_text

log = logging.getLogger(__name__)

# (model_path) -> params pytree with the served structure
ParamsLoader = Callable[[str], Any]


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    body = {"object": "error", "message": message, "type": "Bad Request" if status == 400 else "Error",
            "param": field, "code": status}
    return web.json_response(body, status=status)


def _finish_of(c) -> Finish:
    if c.finish_reason == "length":
        return Finish("length", length=len(c.token_ids))
    return Finish(c.finish_reason, matched=c.matched)


class SGLangServer:
    """Routes SGLang native API calls to a JaxEngine.

    Args:
      engine: the engine (its tokenizer serves `text` inputs and output text).
      model_path: reported by /get_model_info.
      load_params: loads new weights for /update_weights_from_disk.
      context_length: reported, and prompts at least this long get HTTP 400.
    """

    def __init__(self, engine: JaxEngine, *, model_path: str = "", load_params: ParamsLoader | None = None,
                 server_info: dict | None = None):
        self.engine = engine
        self.model_path = model_path
        self.load_params = load_params
        self.server_info = dict(server_info or {})
        self._update_lock = asyncio.Lock()
        self.app = web.Application(client_max_size=256 * 1024 * 1024)
        r = self.app.router
        r.add_route("POST", "/generate", self.generate)
        r.add_route("PUT", "/generate", self.generate)
        r.add_route("POST", "/update_weights_from_disk", self.update_weights_from_disk)
        r.add_route("GET", "/flush_cache", self.flush_cache)
        r.add_route("POST", "/flush_cache", self.flush_cache)
        r.add_route("GET", "/health", self.health)
        r.add_route("GET", "/health_generate", self.health_generate)
        r.add_route("GET", "/get_model_info", self.get_model_info)
        r.add_route("GET", "/get_server_info", self.get_server_info)
        r.add_route("GET", "/get_weight_version", self.get_weight_version)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    async def _json(self, request: web.Request) -> Any:
        try:
            return await request.json(loads=json.loads)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError("body", f"is not valid JSON ({e})") from e

    async def generate(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        core = self.engine.core
        try:
            body = await self._json(request)
            tok = self.tokenizer
            parsed = parse_generate(
                body, tokenize=(lambda t: tok.encode(t, add_special_tokens=False)) if tok is not None else None,
                vocab_size=core.config.vocab_size, context_length=core.ec.max_len)
        except ApiError as e:
            return web.json_response(e.to_json(), status=400)
        try:
            completions = await self.engine.generate(parsed.requests)
        except GeneratorError as e:
            return _error(503, str(e))
        latency = time.perf_counter() - t0
        outs = []
        for c, req, opts in zip(completions, parsed.requests, parsed.options, strict=True):
            text = ""
            if tok is not None:
                text = completion_text(tok, c.token_ids, _finish_of(c),
                                       skip_special_tokens=opts.skip_special_tokens,
                                       no_stop_trim=opts.no_stop_trim)
            token_text = (lambda t: tok.decode([t])) if tok is not None else None
            outs.append(generate_response(c, req, opts, text=text, rid=opts.rid or uuid.uuid4().hex,
                                          e2e_latency=latency, token_text=token_text))
        return web.json_response(outs if parsed.batched else outs[0])

    async def update_weights_from_disk(self, request: web.Request) -> web.Response:
        try:
            body = await self._json(request)
            if not isinstance(body, dict):
                raise ApiError("body", "must be a JSON object")
            path = body.get("model_path")
            if not isinstance(path, str) or not path:
                raise ApiError("model_path", "is required: a model name, HF directory or .gguf path")
            version = body.get("weight_version")
            if version is None:
                version = self.engine.weight_version + 1
            else:
                try:
                    version = int(version)
                except (TypeError, ValueError):
                    raise ApiError("weight_version",
                                   f"must be an integer (or its string) for this server, got {version!r}") from None
            flush = body.get("flush_cache", True)
            if not isinstance(flush, bool):
                raise ApiError("flush_cache", "must be a boolean")
        except ApiError as e:
            return web.json_response(e.to_json(), status=400)
        if self.load_params is None:
            return web.json_response({"success": False, "message": "this server cannot load weights",
                                      "num_paused_requests": 0}, status=400)
        async with self._update_lock:
            loop = asyncio.get_running_loop()
            try:
                params = await loop.run_in_executor(None, self.load_params, path)
                await loop.run_in_executor(
                    None, lambda: self.engine.update_params(params, version, flush_cache=flush))
            except Exception as e:  # bad path, wrong shapes: report, keep serving
                log.warning("update_weights_from_disk(%s) failed: %s", path, e)
                return web.json_response({"success": False, "message": f"Failed to update weights: {e}",
                                          "num_paused_requests": 0}, status=400)
        self.model_path = path
        return web.json_response({
            "success": True, "num_paused_requests": 0,
            "message": f"Succeeded to update model weights. Weight version updated to {version}."})

    async def flush_cache(self, request: web.Request) -> web.Response:
        self.engine.flush_cache()
        return web.Response(text="Cache flushed.\n")

    async def health(self, request: web.Request) -> web.Response:
        if self.engine._error is not None or self.engine._closed:
            return web.Response(status=503)
        return web.Response(status=200)

    async def health_generate(self, request: web.Request) -> web.Response:
        req = GenerateRequest(prompt_ids=[0], params=SamplingParams(max_new_tokens=1, temperature=0.0))
        try:
            await asyncio.wait_for(self.engine.generate([req]), timeout=60)
        except (TimeoutError, GeneratorError):
            return web.Response(status=503)
        return web.Response(status=200)

    async def get_model_info(self, request: web.Request) -> web.Response:
        return web.json_response({
            "model_path": self.model_path, "tokenizer_path": self.model_path, "is_generation": True,
            "preferred_sampling_params": None, "weight_version": str(self.engine.weight_version)})

    async def get_weight_version(self, request: web.Request) -> web.Response:
        return web.json_response({"weight_version": str(self.engine.weight_version)})

    async def get_server_info(self, request: web.Request) -> web.Response:
        core = self.engine.core
        info = {
            **self.server_info, "model_path": self.model_path, "context_length": core.ec.max_len,
            "max_running_requests": core.ec.num_slots, "weight_version": str(core.weight_version),
            "devices": [str(d) for d in core.devices], "num_running_reqs": core.num_running,
            "stats": dict(core.stats), "compile_counts": dict(core.compile_counts),
        }
        return web.json_response(info)


async def start_server(server: SGLangServer, host: str, port: int) -> web.AppRunner:
    """Starts serving in the running event loop; returns the runner (await runner.cleanup())."""
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner
