"""A stand-in SGLang server for client tests: SGLang's routes, shapes and semantics, no model.

Written from SGLang's source (python/sglang/srt/...), to test what our own server
does not do the way SGLang does:

- `entrypoints/http_server.py`: `/generate` errors as `_create_error_response`
  {"error": {"message"}} (HTTP 400); HTTPExceptions (e.g. the 503 "The request queue
  is full." that `TokenizerManager._wait_one_response` raises for an abort carrying a
  status code) as `ErrorResponse` {"object": "error", "message", "type", "code"};
  `/pause_generation` and `/continue_generation` answer {"message", "status": "ok"}.
- `managers/tokenizer_manager.py`: `pause_generation` "abort" aborts every request
  (HTTP 200, finish_reason {"type": "abort"}, partial output), other modes just pause;
  requests arriving while paused wait for `continue_generation`;
  `update_weights_from_disk` takes the model-update writer lock (waits for every
  in-flight request) unless paused; `weight_version` in meta_info is
  `server_args.weight_version` ("default" until an update sets a label).
- `managers/schedule_batch.py` `Req.check_finished`: `ignore_eos` skips every token
  stop (stop_token_ids included); stop strings are not modeled.
- `layers/sampler.py`: `sampling_seed` is used only with
  `--enable-deterministic-inference` (`server_args.enable_deterministic_inference`).
- sglang-jax (`sgl_jax/srt/entrypoints/http_server.py`): no `/update_weights_*`
  route, no `weight_version` in meta_info.

Tokens are a fixed function of the prompt, the position and (when honored) the seed.
"""

from __future__ import annotations

import asyncio
import random

from aiohttp import web


class StandInSGLang:
    def __init__(self, *, jax: bool = False, deterministic: bool = False, queue_full: int = 0,
                 abort_always: bool = False, step_s: float = 0.01):
        self.jax, self.deterministic = jax, deterministic
        self.queue_full, self.abort_always, self.step_s = queue_full, abort_always, step_s
        self.weight_version = "default"
        self.paused = False
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._abort = asyncio.Event()
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.calls: list[str] = []
        self.update_waited_for_requests = False
        app = web.Application()
        r = app.router
        r.add_route("POST", "/generate", self.generate)
        r.add_route("GET", "/get_server_info", self.server_info)
        r.add_route("POST", "/pause_generation", self.pause)
        r.add_route("POST", "/continue_generation", self.resume)
        if not jax:
            r.add_route("POST", "/update_weights_from_disk", self.update_weights)
        self.app = app

    @staticmethod
    def token(prompt: list[int], k: int, seed: int) -> int:
        return (sum(prompt) * 7 + k * 13 + seed * 31) % 250

    async def generate(self, request: web.Request) -> web.Response:
        self.calls.append("generate")
        body = await request.json()
        sp = body.get("sampling_params") or {}
        if not isinstance(sp.get("temperature", 1.0), (int, float)) or sp.get("temperature", 1.0) < 0:
            return web.json_response({"error": {"message": "temperature must be non-negative"}}, status=400)
        if self.queue_full > 0:
            self.queue_full -= 1
            return web.json_response({"object": "error", "message": "The request queue is full.", "type": "503",
                                      "param": None, "code": 503}, status=503)
        await self._resumed.wait()
        self.inflight += 1
        self._idle.clear()
        try:
            return web.json_response(await self._run(body, sp))
        finally:
            self.inflight -= 1
            if not self.inflight:
                self._idle.set()

    async def _run(self, body: dict, sp: dict) -> dict:
        prompt = body["input_ids"]
        seed = sp.get("sampling_seed", 0) if self.deterministic else random.randrange(1000)
        if sp.get("temperature", 1.0) == 0:
            seed = 0
        stop_ids = set(sp.get("stop_token_ids") or ())
        out, finish = [], None
        for k in range(sp.get("max_new_tokens", 128)):
            if self._abort.is_set() or (self.abort_always and k == 2):
                finish = {"type": "abort", "message": "Abort in waiting queue"}
                break
            await asyncio.sleep(self.step_s)
            out.append(self.token(prompt, k, seed))
            if not sp.get("ignore_eos") and out[-1] in stop_ids:
                finish = {"type": "stop", "matched": out[-1]}
                break
        finish = finish or {"type": "length", "length": len(out)}
        meta = {"id": body.get("rid", "x"), "finish_reason": finish, "prompt_tokens": len(prompt),
                "completion_tokens": len(out), "cached_tokens": 0, "e2e_latency": 0.0,
                "output_token_logprobs": [[-1.0, t, None] for t in out]}
        if not self.jax:
            meta["weight_version"] = self.weight_version
        return {"text": "", "output_ids": out, "meta_info": meta}

    async def server_info(self, request: web.Request) -> web.Response:
        return web.json_response({"model_path": "standin", "enable_deterministic_inference": self.deterministic,
                                  "weight_version": self.weight_version})

    async def pause(self, request: web.Request) -> web.Response:
        mode = (await request.json()).get("mode", "abort")
        self.calls.append(f"pause:{mode}")
        self.paused = True
        self._resumed.clear()
        if mode == "abort":
            self._abort.set()
            await self._idle.wait()
            self._abort.clear()
        return web.json_response({"message": "Generation paused successfully.", "status": "ok"})

    async def resume(self, request: web.Request) -> web.Response:
        self.calls.append("continue")
        self.paused = False
        self._resumed.set()
        return web.json_response({"message": "Generation continued successfully.", "status": "ok"})

    async def update_weights(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append("update")
        if not self.paused:  # the model-update writer lock waits for every in-flight request
            self.update_waited_for_requests = self.inflight > 0
            self._resumed.clear()
            await self._idle.wait()
            self._resumed.set()
        if body.get("weight_version") is not None:
            self.weight_version = body["weight_version"]
        return web.json_response({"success": True, "message": "Succeeded to update model weights.",
                                  "num_paused_requests": 0})


async def start_standin(**kw) -> tuple[StandInSGLang, web.AppRunner, str]:
    import portpicker

    standin = StandInSGLang(**kw)
    runner = web.AppRunner(standin.app, access_log=None)
    await runner.setup()
    port = portpicker.pick_unused_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return standin, runner, f"http://127.0.0.1:{port}"
