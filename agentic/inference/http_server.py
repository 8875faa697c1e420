"""An SGLang-compatible HTTP server (native API) around a `JaxEngine`.

Endpoints (SGLang's names and shapes, see `agentic.inference.sglang_api`):
  POST|PUT /generate                  text or input_ids, single or batched, "stream" (SSE)
  POST     /update_weights_from_disk  {"model_path", "weight_version"?, "flush_cache"?}
  POST     /pause_generation          {"mode": "abort" | "retract" | "in_place"}
  POST     /continue_generation
  POST     /abort_request             {"rid"?, "abort_all"?}
  GET|POST /flush_cache
  GET      /health, /health_generate, /get_model_info (/model_info), /get_server_info
           (/server_info), /get_weight_version
  OpenAI:  POST /v1/completions; GET /v1/models (`openai_api.py`); POST /v1/chat/completions
           with tools, token streaming and n, and session mode /sessions/{key}/... (`openai_chat.py`)

Malformed requests get HTTP 400 naming the field; the server keeps serving.

Trust (issue 31): with `api_key` (SGLang's `--api-key`) every route but /health* needs
`Authorization: Bearer <key>` (401 otherwise), and `start_server` refuses a non-loopback host
without one. A connection that has not sent a whole request's headers within `header_timeout_s`
(of opening, or of its last response) is closed; a body not read within `body_timeout_s` is a
408; bodies over `max_body_bytes` a 413. Sampling values the engine cannot hold (top_k past
int32, NaN top_p, infinite temperature) are a 400 for that request (`SamplingParams`), never an
engine error. Non-finite floats (a NaN log-prob) are sent as JSON null, never as bare `NaN`.

Pause, abort and weight updates behave as SGLang's (`EngineCore.pause` / `abort`):
- `/abort_request` and `/pause_generation` "abort" end the requests at the engine's next
  step (their rows and pages freed) and answer them with finish_reason abort and the
  tokens generated so far.
- A pause holds new requests at the door and stops the running ones at the next step:
  "in_place" keeps their KV, "retract" frees it (their prompt + output is prefilled again
  after `/continue_generation`). Weights loaded while paused are swapped at once, and the
  paused requests continue on them (a partial rollout: each token's `weight_version` is
  the one that sampled it, in the engine's Completion). Without a pause,
  `/update_weights_from_disk` waits for the running requests to finish and starts no new
  one meanwhile, as SGLang's update lock does.
Where this differs from SGLang (see BUILD.md): `stream: true` on /generate sends SGLang's
SSE framing (`data: {json}` events, then `data: [DONE]`), but one event per request, when
it finishes, not one per token.
Built on aiohttp (already a dependency of the client): no uvicorn/fastapi
process model, one event loop, the engine steps on its own thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from agentic.core import Completion, GenerateRequest, GeneratorError, SamplingParams
from agentic.inference.engine import JaxEngine
from agentic.inference.http_guard import DeadlineSite, HttpGuard, json_dumps
from agentic.inference.openai_api import OpenAIRoutes
from agentic.inference.openai_chat import ChatRoutes
from agentic.inference.sglang_api import ApiError, generate_response, parse_generate
from agentic.inference.stops import Finish, completion_text

log = logging.getLogger(__name__)

# (model_path) -> params pytree with the served structure
ParamsLoader = Callable[[str], Any]


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "BadRequestError" if status == 400 else "InternalServerError",
                      "param": field, "code": status}}
    return web.json_response(body, status=status)


@dataclasses.dataclass(eq=False)
class _InFlight:
    rid: str
    aborted: asyncio.Future  # set to the abort message (the engine's key for the request: this object)


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
      server_info: extra /get_server_info entries.
      weight_version: the initial weight version label (default: the engine's integer).
      api_key: clients must send `Authorization: Bearer <api_key>` (all routes but /health*).
      max_body_bytes: larger request bodies get 413.
      body_timeout_s: a body not received within this gets 408.
      header_timeout_s: a connection idle this long without a request in flight (slow or no
        headers) is closed.
    """

    def __init__(self, engine: JaxEngine, *, model_path: str = "", load_params: ParamsLoader | None = None,
                 server_info: dict | None = None, weight_version: str | None = None, api_key: str | None = None,
                 max_body_bytes: int = 32 << 20, body_timeout_s: float = 30.0, header_timeout_s: float = 30.0):
        self.engine = engine
        self.api_key = api_key or None
        self.guard = HttpGuard(api_key=self.api_key, body_timeout_s=body_timeout_s,
                               header_timeout_s=header_timeout_s)
        self.model_path = model_path
        self.load_params = load_params
        self.server_info = dict(server_info or {})
        self._update_lock = asyncio.Lock()
        self._resumed = asyncio.Event()  # cleared while paused (SGLang's TokenizerManager.is_pause)
        self._resumed.set()
        self._inflight: dict[str, _InFlight] = {}
        self._labels: dict[int, str] = {}  # engine version -> the label /update_weights_from_disk was given
        if weight_version is not None:
            self._labels[engine.weight_version] = str(weight_version)
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=[self.guard.middleware],
                                   handler_args={"keepalive_timeout": header_timeout_s})
        r = self.app.router
        r.add_route("POST", "/generate", self.generate)
        r.add_route("PUT", "/generate", self.generate)
        r.add_route("POST", "/update_weights_from_disk", self.update_weights_from_disk)
        r.add_route("GET", "/flush_cache", self.flush_cache)
        r.add_route("POST", "/flush_cache", self.flush_cache)
        r.add_route("GET", "/health", self.health)
        r.add_route("GET", "/health_generate", self.health_generate)
        r.add_route("GET", "/get_model_info", self.get_model_info)
        r.add_route("GET", "/model_info", self.get_model_info)
        r.add_route("GET", "/get_server_info", self.get_server_info)
        r.add_route("GET", "/server_info", self.get_server_info)
        r.add_route("GET", "/get_weight_version", self.get_weight_version)
        r.add_route("POST", "/pause_generation", self.pause_generation)
        r.add_route("POST", "/continue_generation", self.continue_generation)
        r.add_route("POST", "/abort_request", self.abort_request)
        self.openai = OpenAIRoutes(self)
        self.openai.register(r)
        self.chat = ChatRoutes(self.openai)  # /v1/chat/completions and the harness session routes
        self.chat.register(r)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    async def _json(self, request: web.Request) -> Any:
        try:
            return await request.json(loads=json.loads)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError("body", f"is not valid JSON ({e})") from e

    def version_label(self, version: int) -> str:
        return self._labels.get(version, str(version))

    @property
    def context_length(self) -> int:
        return self.engine.core.ec.max_len

    async def run(self, requests: list[GenerateRequest], rids: list[str]) -> list[Completion]:
        """Runs requests on the engine once not paused; an aborted one ends at the engine's next
        step with its partial output.

        Raises:
          GeneratorError: the engine is closed or refused the request.
        """
        await self._resumed.wait()  # SGLang holds new requests while paused

        async def one(req: GenerateRequest, rid: str) -> Completion:
            entry = _InFlight(rid, asyncio.get_running_loop().create_future())
            self._inflight[rid] = entry
            task = asyncio.ensure_future(self.engine.generate([req], keys=[entry]))
            try:
                await asyncio.wait({task, entry.aborted}, return_when=asyncio.FIRST_COMPLETED)
                if not task.done():  # aborted: the engine ends it at its next step, partial output kept
                    self.engine.abort(entry, entry.aborted.result())
                return (await task)[0]
            finally:
                self._inflight.pop(rid, None)

        return list(await asyncio.gather(*(one(q, r) for q, r in zip(requests, rids, strict=True))))

    def abort(self, rid: str = "", abort_all: bool = False, message: str = "Aborted by AbortReq.") -> int:
        n = 0
        for key, entry in list(self._inflight.items()):
            # SGLang's Scheduler.abort_request matches rid as a prefix
            if (abort_all or (rid and key.startswith(rid))) and not entry.aborted.done():
                entry.aborted.set_result(message)
                n += 1
        return n

    async def generate(self, request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        core = self.engine.core
        try:
            body = await self._json(request)
            tok = self.tokenizer
            parsed = parse_generate(
                # SGLang's TokenizerManager tokenizes text with the tokenizer's special tokens (BOS)
                body, tokenize=(lambda t: tok.encode(t, add_special_tokens=True)) if tok is not None else None,
                vocab_size=core.config.vocab_size, context_length=core.ec.max_len)
        except ApiError as e:
            return web.json_response(e.to_json(), status=400)
        rids = [o.rid or uuid.uuid4().hex for o in parsed.options]
        todo = [i for i, o in enumerate(parsed.options) if not o.prefill_only]
        try:
            done = await self.run([parsed.requests[i] for i in todo], [rids[i] for i in todo])
        except GeneratorError as e:  # engine closed or crashed: 500, so clients route around it
            return _error(500, str(e))  # (a 503 means "overloaded, retry" to SGLang clients)
        completions = {i: c for i, c in zip(todo, done, strict=True)}
        latency = time.perf_counter() - t0
        outs = []
        for i, (req, opts) in enumerate(zip(parsed.requests, parsed.options, strict=True)):
            c = completions.get(i) or Completion(token_ids=(), logprobs=(), finish_reason="length",
                                                 weight_version=self.engine.weight_version,
                                                 prompt_tokens=len(req.prompt_ids))
            text = ""
            if tok is not None and c.token_ids:
                text = completion_text(tok, c.token_ids, _finish_of(c),
                                       skip_special_tokens=opts.skip_special_tokens,
                                       no_stop_trim=opts.no_stop_trim)
            token_text = (lambda t: tok.decode([t])) if tok is not None else None
            outs.append(generate_response(c, req, opts, text=text, rid=rids[i], e2e_latency=latency,
                                          token_text=token_text, weight_version=self.version_label(c.weight_version)))
        if not parsed.stream:
            return web.json_response(outs if parsed.batched else outs[0])
        # SGLang's http_server.generate_request: text/event-stream, "data: <json>\n\n" per
        # chunk (a batch's chunks carry "index"), then "data: [DONE]\n\n".
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for i, out in enumerate(outs):
            if parsed.batched:
                out = {**out, "index": i}
            await resp.write(b"data: " + json_dumps(out).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def pause_generation(self, request: web.Request) -> web.Response:
        try:
            body = await self._json(request) if request.body_exists else {}
            mode = (body or {}).get("mode", "abort") if isinstance(body, dict) else None
            if mode not in ("abort", "retract", "in_place"):
                raise ApiError("mode", f"must be 'abort', 'retract' or 'in_place', got {mode!r}")
        except ApiError as e:
            return web.json_response(e.to_json(), status=400)
        self._resumed.clear()
        self.engine.pause(mode)  # "abort" ends every request in the engine with its partial output
        return web.json_response({"message": "Generation paused successfully.", "status": "ok"})

    async def continue_generation(self, request: web.Request) -> web.Response:
        self.engine.continue_generation()
        self._resumed.set()
        return web.json_response({"message": "Generation continued successfully.", "status": "ok"})

    async def abort_request(self, request: web.Request) -> web.Response:
        try:
            body = await self._json(request)
            if not isinstance(body, dict):
                raise ApiError("body", "must be a JSON object")
            rid, abort_all = body.get("rid", ""), body.get("abort_all", False)
            if not isinstance(rid, str) or not isinstance(abort_all, bool):
                raise ApiError("rid", "rid must be a string and abort_all a boolean")
        except ApiError as e:
            return web.json_response(e.to_json(), status=400)
        self.abort(rid, abort_all)
        return web.Response(status=200)

    async def update_weights_from_disk(self, request: web.Request) -> web.Response:
        try:
            body = await self._json(request)
            if not isinstance(body, dict):
                raise ApiError("body", "must be a JSON object")
            path = body.get("model_path")
            if not isinstance(path, str) or not path:
                raise ApiError("model_path", "is required: a model name, HF directory or .gguf path")
            label = body.get("weight_version")  # SGLang: any string label; absent leaves it as it is
            if isinstance(label, bool) or (label is not None and not isinstance(label, (str, int))):
                raise ApiError("weight_version", f"must be a string, got {label!r}")
            flush = body.get("flush_cache", True)
            if not isinstance(flush, bool):
                raise ApiError("flush_cache", "must be a boolean")
        except ApiError as e:
            return web.json_response(e.to_json(), status=400)
        if self.load_params is None:
            return web.json_response({"success": False, "message": "this server cannot load weights",
                                      "num_paused_requests": 0}, status=400)
        async with self._update_lock:
            if label is None:
                version = self.engine.weight_version
            else:
                label = str(label)
                try:  # integer labels are the engine's versions; others get the next integer
                    version = int(label)
                except ValueError:
                    version = self.engine.weight_version + 1
            loop = asyncio.get_running_loop()
            try:
                params = await loop.run_in_executor(None, self.load_params, path)
                # not paused: wait for the running requests, as SGLang's update lock does
                await loop.run_in_executor(
                    None, lambda: self.engine.update_params(params, version, flush_cache=flush, running="finish"))
            except Exception as e:  # bad path, wrong shapes: report, keep serving
                log.warning("update_weights_from_disk(%s) failed: %s", path, e)
                return web.json_response({"success": False, "message": f"Failed to update weights: {e}",
                                          "num_paused_requests": 0}, status=400)
        self.model_path = path
        if label is not None:
            self._labels[version] = label
        message = "Succeeded to update model weights." + (
            f" Weight version updated to {label}." if label is not None else "")
        return web.json_response({"success": True, "num_paused_requests": 0, "message": message})

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
            "preferred_sampling_params": None, "weight_version": self.version_label(self.engine.weight_version)})

    async def get_weight_version(self, request: web.Request) -> web.Response:
        return web.json_response({"weight_version": self.version_label(self.engine.weight_version)})

    async def get_server_info(self, request: web.Request) -> web.Response:
        core = self.engine.core
        info = {
            **self.server_info, "model_path": self.model_path, "context_length": core.ec.max_len,
            "max_running_requests": core.ec.num_slots, "weight_version": self.version_label(core.weight_version),
            # the engine always samples from fold_in(PRNGKey(seed), k); SGLang only with
            # --enable-deterministic-inference (the client reads either key)
            "sampling_seed_honored": True, "enable_deterministic_inference": False,
            "paused": not self._resumed.is_set(),
            "devices": [str(d) for d in core.devices], "num_running_reqs": core.num_running,
            "stats": dict(core.stats), "compile_counts": dict(core.compile_counts),
        }
        return web.json_response(info)


async def start_server(server: SGLangServer, host: str, port: int, *, insecure: bool = False) -> web.AppRunner:
    """Starts serving in the running event loop; returns the runner (await runner.cleanup()).

    Refuses a non-loopback `host` without `server.api_key` (anyone who can reach the port could
    generate, swap the weights or pause the server) unless `insecure`. Connections idle
    `header_timeout_s` without a request in flight are closed (`http_guard.DeadlineSite`).
    """
    from agentic.transport.auth import is_loopback

    if not server.api_key and not insecure and not is_loopback(host):
        raise ValueError(f"refusing to serve on {host} without an API key: give --api-key (clients send "
                         "'Authorization: Bearer <key>'), or --insecure on a closed network")
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    await DeadlineSite(runner, host, port, server.guard).start()
    return runner
