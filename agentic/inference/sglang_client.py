"""An async client for SGLang's native HTTP API: real SGLang servers and ours.

    client = SGLangClient(["http://10.0.0.5:30000", "http://10.0.0.6:30000"])
    [c] = await client.generate([GenerateRequest(prompt_ids=ids, params=..., session_id=episode_id)])
    await client.update_weights("/ckpt/step_100", version=100)   # every server loads it
    await client.release(episode_id)                             # drop the session's affinity
    await client.close()

Routing: a request with a `session_id` goes to the server that served the
session before (its radix / prefix cache holds the episode's history); new
sessions and session-less requests go to the server with the fewest requests
outstanding from this client (ties rotate). A server that cannot be reached
(connection refused, reset, timed out, HTTP 500/502) is marked down for
`retry_down_s` and the request is retried on another one; when every server
has failed the request raises `GeneratorError` naming each server and its
error. A 4xx answer is the request's fault and is raised at once (not
retried); its message is read from SGLang's {"error": {"message"}} bodies.

Overload: SGLang answers HTTP 503 "The request queue is full." when its
waiting queue is at `--max-queued-requests` (and 429 behind some gateways).
That is not a dead server: the server is marked overloaded for `overload_mark_s`
(doubling on each further 503 / 429 in a row, up to 8x; cleared when it serves a
request), and the request is retried at once on a server that is not marked, so the
requests that follow avoid the overloaded server too. When every server is marked, the
client backs off (exponentially, from `backoff_s` to 2 s, with jitter) and retries on the
least loaded, for at most `overload_budget_s` seconds per request, then raises
`GeneratorError` saying so.

Aborts: a request the server aborts (SGLang's `/pause_generation` in "abort"
mode, `/abort_request`, a shutdown) comes back HTTP 200 with finish_reason
"abort" and partial output. It is retried `abort_retries` times (paused servers
hold the retry until `/continue_generation`); then `GenerationAborted` is
raised, carrying the partial completion. A partial turn is never returned as
a normal one.

Weight sync (`update_weights`): `/pause_generation` (mode `pause_mode`,
"retract" by default: running requests go back to the waiting queue, no work
lost, the KV cache can be flushed) -> `/update_weights_from_disk` ->
`/continue_generation`, on every server, as SGLang's
`docs/advanced_features/sglang_for_rl.md` prescribes; without the pause the
update waits on SGLang's writer lock for every in-flight request
(`TokenizerManager.update_weights_from_disk`).

Start-up check (`check_servers`, run once on first use): reads
`/get_server_info` (is `sampling_seed` honored? SGLang uses it only with
`--enable-deterministic-inference`) and probes `GET /update_weights_from_disk`
(405: the POST route exists; 404: it does not, as on sglang-jax). With
`require_weight_updates` (the default) a server without the route fails the
first call with a message saying what to use instead.

Size: past 400 lines because routing, retries, overload back-off, aborts and the weight sync
all act on the same per-server state (sessions, outstanding requests, down marks).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import aiohttp

from agentic.core import (
    Completion,
    GenerateRequest,
    GenerationAborted,
    Generator,
    GeneratorError,
    WeightPublisher,
)
from agentic.inference.sglang_api import error_message, parse_response, parse_weight_version, request_body

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class _Server:
    url: str
    outstanding: int = 0
    down_until: float = 0.0
    last_error: str = ""
    served: int = 0
    overloaded_until: float = 0.0
    overload_streak: int = 0  # 503 / 429 answers in a row
    info: dict | None = None  # /get_server_info, once checked
    has_update_route: bool | None = None
    seeds_honored: bool | None = None
    warned_seeds: bool = False
    context_length: int | None = None

    def up(self, now: float) -> bool:
        return now >= self.down_until


class _Unreachable(Exception):
    pass


NO_UPDATE_ROUTE = (
    "{url} has no /update_weights_from_disk route (HTTP 404), so the learner cannot push weights to it. "
    "sglang-jax (the TPU port of SGLang) serves no weight-update route and reports no weight_version. "
    "For RL on TPU use generator.backend='engine' (the embedded JAX engine on the actor cores, weights "
    "swapped in memory), or our server (python -m agentic.inference.launch_server), or a GPU SGLang server; "
    "for evaluation only, construct SGLangClient(..., require_weight_updates=False). See BUILD.md, "
    "'TPU inference options'.")


class SGLangClient(Generator):
    """Generator over a pool of SGLang-API servers.

    Args:
      urls: server base URLs ("http://host:port").
      timeout_s: limit for one /generate call (the whole response).
      connect_timeout_s: limit for opening a connection.
      retry_down_s: how long a failed server is skipped before it is tried again.
      max_sessions: affinity entries kept (least recently used dropped).
      overload_budget_s: how long one request keeps retrying overloaded servers (HTTP 503/429).
      backoff_s: first backoff when every server is overloaded (doubles up to 2 s, with jitter).
      overload_mark_s: how long a server that answered 503 / 429 is avoided while another one
        is not overloaded (doubles with each overload answer in a row, up to 8x).
      abort_retries: how often an aborted request is sent again before `GenerationAborted`.
      pause_mode: `/pause_generation` mode around weight updates: "retract", "in_place",
        "abort" (in-flight requests come back aborted and are retried), or None (no pause).
      require_weight_updates: fail at the first call if a server has no weight-update route.
      require_seeds: raise instead of warning when a seeded request goes to a server that
        ignores `sampling_seed` (SGLang without --enable-deterministic-inference).
      api_key: sent as `Authorization: Bearer <api_key>` (servers started with --api-key);
        default $SGLANG_API_KEY.
    """

    def __init__(self, urls: Sequence[str], *, timeout_s: float = 600.0, connect_timeout_s: float = 5.0,
                 retry_down_s: float = 5.0, max_sessions: int = 100_000, overload_budget_s: float = 120.0,
                 backoff_s: float = 0.05, overload_mark_s: float = 1.0, abort_retries: int = 2,
                 pause_mode: str | None = "retract",
                 require_weight_updates: bool = True, require_seeds: bool = False, api_key: str | None = None):
        api_key = api_key if api_key is not None else os.environ.get("SGLANG_API_KEY")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        if isinstance(urls, str):
            urls = [urls]
        if not urls:
            raise ValueError("urls: give at least one server URL")
        self.servers = [_Server(u.rstrip("/")) for u in urls]
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s)
        self.retry_down_s = retry_down_s
        self.max_sessions = max_sessions
        self._affinity: collections.OrderedDict[str, _Server] = collections.OrderedDict()
        self._rr = itertools.count()
        self._session: aiohttp.ClientSession | None = None
        self._version = 0
        if pause_mode not in ("retract", "in_place", "abort", None):
            raise ValueError(f"pause_mode must be 'retract', 'in_place', 'abort' or None, got {pause_mode!r}")
        self.overload_budget_s, self.backoff_s = float(overload_budget_s), float(backoff_s)
        self.overload_mark_s = float(overload_mark_s)
        self.abort_retries, self.pause_mode = int(abort_retries), pause_mode
        self.require_weight_updates, self.require_seeds = require_weight_updates, require_seeds
        self.stats: collections.Counter = collections.Counter()  # overloaded, aborted, retried_aborts
        self._check_lock: asyncio.Lock | None = None

    # ------------------------------------------------------------------ plumbing

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout, headers=self._headers, connector=aiohttp.TCPConnector(limit=0, force_close=False))
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    @property
    def weight_version(self) -> int:
        return self._version

    def note_weight_version(self, version: int) -> None:
        """Records that the servers serve `version` now (another process of the run updated them)."""
        self._version = max(self._version, int(version))

    def _pick(self, session_id: str | None, tried: set) -> _Server | None:
        now = time.monotonic()
        if session_id is not None and session_id in self._affinity:
            s = self._affinity[session_id]
            if s not in tried and s.up(now):
                self._affinity.move_to_end(session_id)
                return s
        cands = [s for s in self.servers if s not in tried and s.up(now)]
        if not cands:  # everything is marked down: give the untried ones another chance
            cands = [s for s in self.servers if s not in tried]
        if not cands:
            return None
        calm = [s for s in cands if now >= s.overloaded_until]
        if not calm:  # every candidate is overloaded: the one whose mark ends first
            soonest = min(s.overloaded_until for s in cands)
            calm = [s for s in cands if s.overloaded_until == soonest]
        cands = calm
        low = min(s.outstanding for s in cands)
        best = [s for s in cands if s.outstanding == low]
        return best[next(self._rr) % len(best)]

    def _remember(self, session_id: str | None, server: _Server) -> None:
        if session_id is None:
            return
        self._affinity[session_id] = server
        self._affinity.move_to_end(session_id)
        while len(self._affinity) > self.max_sessions:
            self._affinity.popitem(last=False)

    def _mark_down(self, server: _Server, err: str) -> None:
        server.down_until = time.monotonic() + self.retry_down_s
        server.last_error = err
        log.warning("SGLang server %s unreachable (%s); routing around it for %.0f s",
                    server.url, err, self.retry_down_s)

    async def _post(self, server: _Server, path: str, body: dict) -> tuple[int, Any]:
        try:
            async with self._http().post(server.url + path, json=body) as resp:
                text = await resp.text()
                try:
                    data = await resp.json(content_type=None) if text else None
                except ValueError:
                    data = text
                return resp.status, data
        except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as e:
            raise _Unreachable(f"{type(e).__name__}: {e}") from e

    # ------------------------------------------------------------------ Generator

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        return list(await asyncio.gather(*(self._generate_one(r) for r in requests)))

    async def _generate_one(self, req: GenerateRequest) -> Completion:
        await self.check_servers()
        tried: set[_Server] = set()
        errors: list[str] = []
        aborts = 0
        t0 = time.monotonic()
        backoff = self.backoff_s
        while True:
            server = self._pick(req.session_id, tried)
            if server is None:
                raise GeneratorError("no SGLang server could serve the request: " + "; ".join(errors))
            self._check_seed(server, req)
            body = request_body(self._fit(server, req), rid=uuid.uuid4().hex)
            sent_version = self._version
            server.outstanding += 1
            try:
                status, data = await self._post(server, "/generate", body)
            except _Unreachable as e:
                tried.add(server)
                self._mark_down(server, str(e))
                errors.append(f"{server.url}: {e}")
                continue
            finally:
                server.outstanding -= 1
            if status in (503, 429):  # overloaded (SGLang: "The request queue is full."), not down
                self.stats["overloaded"] += 1
                waited = time.monotonic() - t0
                msg = error_message(data)
                if waited >= self.overload_budget_s:
                    raise GeneratorError(
                        f"SGLang servers stayed overloaded for {waited:.1f} s (overload_budget_s="
                        f"{self.overload_budget_s:g}); last answer from {server.url}: HTTP {status}: {msg}")
                # The mark outlives this request's retry: the requests after it avoid the server too.
                server.overload_streak += 1
                mark = self.overload_mark_s * 2 ** min(server.overload_streak - 1, 3)
                now = time.monotonic()
                server.overloaded_until = now + mark
                if any(now >= s.overloaded_until for s in self.servers if s.up(now) and s not in tried):
                    continue  # a calm server: retry there at once
                delay = min(backoff * (0.5 + random.random()), self.overload_budget_s - waited)
                backoff = min(2 * backoff, 2.0)
                await asyncio.sleep(delay)
                continue
            if status >= 500:
                tried.add(server)
                errors.append(f"{server.url}: HTTP {status}: {error_message(data)[:300]}")
                self._mark_down(server, f"HTTP {status}")
                continue
            if status != 200:
                raise GeneratorError(f"{server.url} rejected the request (HTTP {status}): {error_message(data)}")
            try:
                completion = parse_response(data, req, default_version=self._version)
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
                raise GeneratorError(f"{server.url} sent a malformed /generate response: {e}") from e
            if completion.finish_reason == "abort":
                self.stats["aborted"] += 1
                aborts += 1
                if aborts > self.abort_retries:
                    raise GenerationAborted(
                        f"{server.url} aborted the request {aborts} times (abort_retries={self.abort_retries}): "
                        f"{completion.matched}", completion)
                self.stats["retried_aborts"] += 1
                continue
            server.served += 1
            server.overload_streak, server.overloaded_until = 0, 0.0
            if completion.weight_version > sent_version and completion.token_ids:
                # weights changed while it ran (a partial rollout): SGLang does not say at which
                # token, so every token gets the oldest version that may have sampled it
                completion = dataclasses.replace(completion, token_versions=(sent_version,) * len(completion.token_ids))
            self._version = max(self._version, completion.weight_version)
            self._remember(req.session_id, server)
            return completion

    async def release(self, session_id: str) -> None:
        self._affinity.pop(session_id, None)

    # ------------------------------------------------------------------ admin, broadcast to all

    async def _broadcast(self, path: str, body: dict | None) -> dict[str, tuple[int, Any]]:
        async def one(s: _Server):
            try:
                if body is None:
                    async with self._http().get(s.url + path) as resp:
                        return s.url, (resp.status, await resp.text())
                return s.url, await self._post(s, path, body)
            except (TimeoutError, _Unreachable, aiohttp.ClientError, OSError) as e:
                return s.url, (0, f"unreachable: {e}")

        return dict(await asyncio.gather(*(one(s) for s in self.servers)))

    async def check_servers(self) -> None:
        """Reads every not yet checked server's /get_server_info and probes its weight-update route.

        Runs once per server (on first use; unreachable servers are checked when they
        answer). Raises GeneratorError if `require_weight_updates` and a server has no
        /update_weights_from_disk route (sglang-jax).
        """
        if any(s.info is None for s in self.servers):
            if self._check_lock is None:
                self._check_lock = asyncio.Lock()
            async with self._check_lock:
                now = time.monotonic()
                await asyncio.gather(*(self._check_one(s) for s in self.servers if s.info is None and s.up(now)))
        if self.require_weight_updates:
            self._raise_if_no_update_route()

    def _raise_if_no_update_route(self) -> None:
        missing = [s.url for s in self.servers if s.has_update_route is False]
        if missing:
            also = f" (also: {', '.join(missing[1:])})" if len(missing) > 1 else ""
            raise GeneratorError(NO_UPDATE_ROUTE.format(url=missing[0]) + also)

    async def _check_one(self, s: _Server) -> None:
        http = self._http()
        try:
            async with http.get(s.url + "/get_server_info") as resp:
                info = await resp.json(content_type=None) if resp.status == 200 else {}
            # GET on a POST-only route: 405 if the route exists (FastAPI / aiohttp), 404 if not.
            async with http.get(s.url + "/update_weights_from_disk") as resp:
                s.has_update_route = resp.status != 404
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:
            self._mark_down(s, f"check failed: {type(e).__name__}: {e}")
            return
        s.info = info if isinstance(info, dict) else {}
        # SGLang's sampler uses sampling_seed only with --enable-deterministic-inference;
        # our server always does and says so with "sampling_seed_honored".
        s.seeds_honored = bool(s.info.get("sampling_seed_honored", s.info.get("enable_deterministic_inference")))
        ctx = s.info.get("context_length")
        s.context_length = ctx if isinstance(ctx, int) and not isinstance(ctx, bool) and ctx > 1 else None

    @staticmethod
    def _fit(s: _Server, req: GenerateRequest) -> GenerateRequest:
        """SGLang answers 400 when prompt + max_new_tokens >= its context length
        (`TokenizerManager._validate_one_request`); the embedded engine just stops
        there with "length". Clamp to what fits, so both backends behave alike."""
        room = (s.context_length or 0) - len(req.prompt_ids) - 1
        if s.context_length is None or req.params.max_new_tokens <= room or room < 1:
            return req
        return dataclasses.replace(req, params=dataclasses.replace(req.params, max_new_tokens=room))

    def _check_seed(self, s: _Server, req: GenerateRequest) -> None:
        if req.params.seed is None or s.seeds_honored is not False or req.params.temperature == 0:
            return
        msg = (f"{s.url} ignores sampling_seed (SGLang uses it only when started with "
               f"--enable-deterministic-inference): seeded requests are not reproducible there")
        if self.require_seeds:
            raise GeneratorError(msg)
        if not s.warned_seeds:
            s.warned_seeds = True
            log.warning(msg)

    async def pause_generation(self, mode: str = "retract") -> dict[str, bool]:
        """SGLang's `/pause_generation` on every server; True where it answered 200.

        Modes (SGLang's `PauseGenerationReqInput.mode`): "abort" (running requests come back
        aborted with their partial output), "retract" (they go back to the waiting queue and
        their KV may be flushed: recomputed on continue), "in_place" (they stay in the running
        batch with their KV cache; flush_cache fails meanwhile). Requests sent while paused wait.
        """
        if mode not in ("abort", "retract", "in_place"):
            raise ValueError(f"pause mode must be 'abort', 'retract' or 'in_place', got {mode!r}")
        return {u: r[0] == 200 for u, r in (await self._broadcast("/pause_generation", {"mode": mode})).items()}

    async def continue_generation(self) -> dict[str, bool]:
        """SGLang's `/continue_generation` on every server (resumes what a pause held); True where 200."""
        return {u: r[0] == 200 for u, r in (await self._broadcast("/continue_generation", {})).items()}

    async def update_weights(self, model_path: str, version: int, *, flush_cache: bool = True) -> dict:
        """Every server loads new weights from `model_path` (SGLang's /update_weights_from_disk),
        between /pause_generation and /continue_generation (unless pause_mode is None).

        Raises:
          GeneratorError: a server has no weight-update route (sglang-jax: what to do instead),
            or naming the servers whose update failed (the others did update).
        """
        await self.check_servers()
        self._raise_if_no_update_route()
        paused = {}
        if self.pause_mode is not None:
            paused = await self._broadcast("/pause_generation", {"mode": self.pause_mode})
            for u, r in paused.items():
                if r[0] != 200:
                    log.warning("%s: /pause_generation answered %s (%s); updating without a pause", u, r[0],
                                error_message(r[1])[:200])
        try:
            body = {"model_path": model_path, "weight_version": str(int(version)), "flush_cache": flush_cache}
            results = await self._broadcast("/update_weights_from_disk", body)
        finally:
            if self.pause_mode is not None:
                resumed = await self._broadcast("/continue_generation", {})
                for u, r in resumed.items():
                    if paused.get(u, (0,))[0] == 200 and r[0] != 200:
                        log.error("%s: /continue_generation failed (%s): the server stays paused", u, r[1])
        failed = {u: r for u, r in results.items()
                  if r[0] != 200 or not (isinstance(r[1], dict) and r[1].get("success", False))}
        if failed:
            raise GeneratorError("update_weights failed on " + "; ".join(
                f"{u}: HTTP {r[0]}: {error_message(r[1])}" for u, r in failed.items()))
        self._version = int(version)
        return results

    async def health(self) -> dict[str, bool]:
        """GET /health on every server."""
        return {u: r[0] == 200 for u, r in (await self._broadcast("/health", None)).items()}

    async def flush_cache(self) -> dict[str, bool]:
        return {u: r[0] == 200 for u, r in (await self._broadcast("/flush_cache", {})).items()}

    async def model_info(self) -> dict[str, Any]:
        out = {}
        for s in self.servers:
            try:
                async with self._http().get(s.url + "/get_model_info") as resp:
                    out[s.url] = await resp.json(content_type=None)
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                out[s.url] = {"error": str(e)}
        versions = [parse_weight_version(v.get("weight_version"), -1) for v in out.values() if isinstance(v, dict)]
        if versions and max(versions) >= 0:
            self._version = max(self._version, max(versions))
        return out


class SGLangWeights(WeightPublisher):
    """Publishes learner params to SGLang servers: exported as a Hugging Face checkpoint under
    `weights_dir` (a path every server can read), then loaded by every server
    (`SGLangClient.update_weights`). `run` runs a coroutine on the client's event loop."""

    def __init__(self, client: SGLangClient, weights_dir: str, model_config: Any, tokenizer: Any,
                 run: Callable[[Coroutine], Any]):
        if not weights_dir:
            raise ValueError("publishing weights to SGLang servers needs generator.weights_dir, a path every "
                             "server can read")
        self.client, self.weights_dir, self.model_config, self.tokenizer, self.run = (
            client, weights_dir, model_config, tokenizer, run)

    def publish(self, params: Any, version: int) -> None:
        """Process 0 exports `params` (in the dtype given: the launcher hands the serving dtype, bf16 on
        TPU) once, has every server load it, then deletes the older versions; other processes of a
        multi-host run only record the version (their actors use the same servers)."""
        import shutil

        import jax

        from agentic import models

        if jax.process_index() != 0:
            self.client.note_weight_version(version)
            return
        path = os.path.join(self.weights_dir, f"version_{version:06d}")
        models.export_hf(self.model_config, jax.device_get(params), path, tokenizer=self.tokenizer)
        self.run(self.client.update_weights(path, version))
        for old in os.listdir(self.weights_dir):  # every server now serves `path`
            if old.startswith("version_") and os.path.join(self.weights_dir, old) != path:
                shutil.rmtree(os.path.join(self.weights_dir, old), ignore_errors=True)

