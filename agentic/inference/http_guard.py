"""What the HTTP inference server does before a request reaches a route (issue 31).

- `HttpGuard.middleware`: the API key (`Authorization: Bearer <key>`, as SGLang's `--api-key`;
  /health* exempt), the body deadline (408) and standard JSON out (a response holding a NaN or
  Infinity is re-encoded with null there). It also counts the requests in flight per connection.
- `DeadlineSite`: a TCP site whose connections are closed once they have been without a request in
  flight for `header_timeout_s`: aiohttp waits for a request's headers forever, so 200 slowloris
  connections stayed open.
- `json_dumps`: standard JSON for the server's own streams.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
from typing import Any

from aiohttp import web


def _finite(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def json_dumps(obj: Any) -> str:
    """Standard JSON: non-finite floats become null (Python's json writes bare NaN, which strict
    parsers, JavaScript's included, reject)."""
    try:
        return json.dumps(obj, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(obj), allow_nan=False)


def _deny(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "AuthenticationError" if status == 401
                                        else "BadRequestError", "param": None, "code": status}}, status=status)


class HttpGuard:
    """Per-server request checks and connection bookkeeping (see the module docstring).

    Args:
      api_key: required as `Authorization: Bearer <api_key>` on every route but /health*; None: open.
      body_timeout_s: a request body not received within this gets 408.
      header_timeout_s: a connection without a request in flight this long is closed.
    """

    def __init__(self, *, api_key: str | None, body_timeout_s: float, header_timeout_s: float):
        self._expected = f"Bearer {api_key}".encode() if api_key else None
        self.body_timeout_s, self.header_timeout_s = body_timeout_s, header_timeout_s
        self._busy: dict[Any, int] = {}  # transport -> requests in flight on it
        self.last_done: dict[Any, float] = {}  # transport -> loop time its last request finished

    def idle(self, transport) -> bool:
        """No request in flight on this connection."""
        return transport not in self._busy

    @web.middleware
    async def middleware(self, request: web.Request, handler) -> web.StreamResponse:
        transport = request.transport
        self._busy[transport] = self._busy.get(transport, 0) + 1
        try:
            if self._expected is not None and not request.path.startswith("/health"):
                if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), self._expected):
                    return _deny(401, "missing or wrong API key: send 'Authorization: Bearer <api_key>'")
            if request.can_read_body:
                try:
                    await asyncio.wait_for(request.read(), self.body_timeout_s)
                except TimeoutError:
                    return _deny(408, f"request body not received within {self.body_timeout_s} s")
            response = await handler(request)
            if (isinstance(response, web.Response) and response.content_type == "application/json"
                    and response.body is not None and (b"NaN" in response.body or b"Infinity" in response.body)):
                response.text = json_dumps(json.loads(response.body))
            return response
        finally:
            left = self._busy.get(transport, 1) - 1
            self.last_done[transport] = asyncio.get_running_loop().time()
            if left:
                self._busy[transport] = left
            else:
                self._busy.pop(transport, None)


class DeadlineSite(web.TCPSite):
    """A TCP site whose connections go through `_HeaderDeadline`."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, guard: HttpGuard):
        super().__init__(runner, host, port)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        factory, guard = self._runner.server, self._guard
        self._server = await loop.create_server(lambda: _HeaderDeadline(factory(), guard, loop), self._host,
                                                self._port, reuse_address=self._reuse_address,
                                                reuse_port=self._reuse_port, backlog=self._backlog)


class _HeaderDeadline(asyncio.Protocol):
    """Wraps aiohttp's per-connection protocol; closes the connection once it has been without a
    request in flight for `header_timeout_s` (from its opening, or its last request's end)."""

    def __init__(self, inner, guard: HttpGuard, loop: asyncio.AbstractEventLoop):
        self._inner, self._guard, self._loop = inner, guard, loop
        self._transport = None
        self._opened = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def _check(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        wait = self._guard.header_timeout_s
        if self._guard.idle(transport):
            since = max(self._opened, self._guard.last_done.get(transport, 0.0))
            wait = since + self._guard.header_timeout_s - self._loop.time()
            if wait <= 0:
                transport.close()
                return
        self._timer = self._loop.call_later(wait, self._check)

    def connection_made(self, transport) -> None:
        self._transport, self._opened = transport, self._loop.time()
        self._inner.connection_made(transport)
        self._timer = self._loop.call_later(self._guard.header_timeout_s, self._check)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self):
        return self._inner.eof_received()

    def connection_lost(self, exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._guard.last_done.pop(self._transport, None)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()
