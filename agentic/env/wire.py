"""Length-prefixed JSON frames on the pipes between an env host and its workers.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON:
a list of messages. Messages queued during one event-loop iteration leave as one
frame, which amortizes the write and the JSON call when thousands of sessions
step at once. JSON, not pickle: a worker running env code is not trusted to
hand the host arbitrary objects.

Host -> worker messages: `{"op": "open"|"step"|"close"|"cancel"|"ping", "id": int, ...}`.
Worker -> host: `{"id": int, "ok": {...}}` or `{"id": int, "err": {"kind": int, "message": str}}`.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

_HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 512 << 20
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class FrameError(RuntimeError):
    """The peer wrote something that is not a frame (corrupt stream)."""


def encode_frame(messages: list[dict[str, Any]]) -> bytes:
    body = _dumps(messages).encode("utf-8", "surrogatepass")
    return _HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> list[dict[str, Any]] | None:
    """Reads one frame; None at a clean end of stream."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise FrameError(f"stream ended inside a frame header ({len(e.partial)} of 4 bytes)") from None
    (n,) = _HEADER.unpack(header)
    if n > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {n} bytes is over the {MAX_FRAME_BYTES}-byte limit (corrupt stream?)")
    try:
        body = await reader.readexactly(n)
    except asyncio.IncompleteReadError as e:
        raise FrameError(f"stream ended inside a frame ({len(e.partial)} of {n} bytes)") from None
    try:
        messages = json.loads(body.decode("utf-8", "surrogatepass"))
    except ValueError as e:
        raise FrameError(f"frame is not JSON: {e}") from None
    if not isinstance(messages, list):
        raise FrameError(f"frame holds a {type(messages).__name__}, expected a list of messages")
    return messages


class FrameWriter:
    """Queues messages and writes everything queued in one loop iteration as one frame."""

    def __init__(self, write):
        self._write = write
        self._queue: list[dict[str, Any]] = []
        self._scheduled = False
        self.closed = False

    def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        self._queue.append(message)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._queue or self.closed:
            return
        queue, self._queue = self._queue, []
        try:
            self._write(encode_frame(queue))
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            self.closed = True  # the reader side notices the dead peer and fails what is pending


def run_event_loop(main) -> Any:
    """Runs coroutine `main` on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
