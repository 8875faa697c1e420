"""Token-by-token output of one request on the embedded engine, as it is decoded.

`EngineCore` reports a request only when it finishes (its `callback`); it has no per-token hook. Until
it has one, `TokenStream` watches the request's output while it runs: the scheduler appends each
sampled token and its log-prob to the running request's `out` / `lps` lists on the stepping thread
(`EngineCore._emit`), and the stream reads what is new every `poll_s` from the event loop (list
appends are atomic under the GIL; a read never sees a torn entry). The final `Completion` is the
authority: what was streamed is always a prefix of its tokens, and what was not yet streamed follows.

    stream = TokenStream(server, request, rid)
    async for ids, logprobs in stream:      # new tokens, in order
        ...
    stream.completion                       # the finished Completion
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from agentic.core import Completion, GenerateRequest

if TYPE_CHECKING:
    from agentic.inference.http_server import SGLangServer


def _running(core: Any, request: GenerateRequest) -> Any:
    """The engine's state of `request` once admitted to a row of the paged engine (None while it waits;
    a preempted request keeps its sampled tokens, so what was streamed stays a prefix)."""
    for r in core.rows:
        if r is not None and r.req is request:
            return r
    return None


class TokenStream:
    """The tokens of one request as they are sampled (see the module docstring)."""

    def __init__(self, server: SGLangServer, request: GenerateRequest, rid: str, poll_s: float = 0.005):
        self.server, self.request, self.rid, self.poll_s = server, request, rid, poll_s
        self.completion: Completion | None = None

    async def __aiter__(self) -> AsyncIterator[tuple[list[int], list[float]]]:
        task = asyncio.ensure_future(self.server.run([self.request], [self.rid]))
        core, state, sent = self.server.engine.core, None, 0
        try:
            while not task.done():
                if state is None:
                    state = _running(core, self.request)
                if state is not None:
                    n = min(len(state.out), len(state.lps))
                    if n > sent:
                        yield list(state.out[sent:n]), list(state.lps[sent:n])
                        sent = n
                await asyncio.wait({task}, timeout=self.poll_s)
        finally:
            if not task.done():  # the consumer went away (client disconnected): abort the request
                self.server.abort(self.rid)
        [self.completion] = task.result()
        c = self.completion
        if len(c.token_ids) > sent:
            yield list(c.token_ids[sent:]), list(c.logprobs[sent:])
