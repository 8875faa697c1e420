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
(connection refused, reset, timed out) is marked down for `retry_down_s`
and the request is retried on another one; when every server has failed the
request raises `GeneratorError` naming each server and its error. A 4xx
answer is the request's fault and is raised at once (not retried).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import aiohttp

from agentic.inference.protocol import Completion, GenerateRequest, Generator, GeneratorError
from agentic.inference.sglang_api import parse_response, parse_weight_version, request_body

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class _Server:
    url: str
    outstanding: int = 0
    down_until: float = 0.0
    last_error: str = ""
    served: int = 0

    def up(self, now: float) -> bool:
        return now >= self.down_until


class _Unreachable(Exception):
    pass


class SGLangClient(Generator):
    """Generator over a pool of SGLang-API servers.

    Args:
      urls: server base URLs ("http://host:port").
      timeout_s: limit for one /generate call (the whole response).
      connect_timeout_s: limit for opening a connection.
      retry_down_s: how long a failed server is skipped before it is tried again.
      max_sessions: affinity entries kept (least recently used dropped).
    """

    def __init__(self, urls: Sequence[str], *, timeout_s: float = 600.0, connect_timeout_s: float = 5.0,
                 retry_down_s: float = 5.0, max_sessions: int = 100_000):
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

    # ------------------------------------------------------------------ plumbing

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout, connector=aiohttp.TCPConnector(limit=0, force_close=False))
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    @property
    def weight_version(self) -> int:
        return self._version

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
        body = request_body(req, rid=uuid.uuid4().hex)
        tried: set[_Server] = set()
        errors = []
        while True:
            server = self._pick(req.session_id, tried)
            if server is None:
                raise GeneratorError("no SGLang server could serve the request: " + "; ".join(errors))
            tried.add(server)
            server.outstanding += 1
            try:
                status, data = await self._post(server, "/generate", body)
            except _Unreachable as e:
                self._mark_down(server, str(e))
                errors.append(f"{server.url}: {e}")
                continue
            finally:
                server.outstanding -= 1
            if status >= 500:
                errors.append(f"{server.url}: HTTP {status}: {str(data)[:300]}")
                self._mark_down(server, f"HTTP {status}")
                continue
            if status != 200:
                msg = data.get("message", data) if isinstance(data, dict) else data
                raise GeneratorError(f"{server.url} rejected the request (HTTP {status}): {msg}")
            try:
                completion = parse_response(data, req)
            except (ValueError, KeyError, TypeError, IndexError) as e:
                raise GeneratorError(f"{server.url} sent a malformed /generate response: {e}") from e
            server.served += 1
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

    async def update_weights(self, model_path: str, version: int, *, flush_cache: bool = True) -> dict:
        """Every server loads new weights from `model_path` (SGLang's /update_weights_from_disk).

        Raises:
          GeneratorError: naming the servers that failed (the others did update).
        """
        body = {"model_path": model_path, "weight_version": str(int(version)), "flush_cache": flush_cache}
        results = await self._broadcast("/update_weights_from_disk", body)
        failed = {u: r for u, r in results.items()
                  if r[0] != 200 or not (isinstance(r[1], dict) and r[1].get("success", False))}
        if failed:
            raise GeneratorError("update_weights failed on " + "; ".join(
                f"{u}: {r[1] if not isinstance(r[1], dict) else r[1].get('message')}" for u, r in failed.items()))
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
