"""`/v1/chat/completions` with function calling, token-by-token streaming, `n` choices, and session mode.

    POST /v1/chat/completions                  {"model", "messages", "tools"?, "tool_choice"?: "auto" | "none",
                                                "stream"?, "stream_options"?: {"include_usage"}, "n"?, ...}
    POST /sessions/{key}/v1/chat/completions   the same, recorded under `key` (`harness_session.py`)
    POST /sessions/{key}/reward                {"reward": float, "group_id"?, "task_id"?} -> the session's
                                                trajectories (summary); the server keeps them for `take(key)`
    GET  /sessions/{key}                        what is recorded so far
    DELETE /sessions/{key}                      drops it

Sampling fields are read and checked as on the other OpenAI routes (`openai_api._sampling`).
Tools: the request's `tools` go to the chat template (`apply_chat_template(..., tools=)`) when it renders
a tools block, else into the system message hermes-style; the reply is parsed in the family's format
(`tool_calls.py`: hermes `<tool_call>`, Llama-3 JSON) and returned in OpenAI's shape, with
finish_reason "tool_calls" (with `tool_choice: "none"` the tools stay in the prompt and the reply is
text). Streaming (`stream: true`) sends `chat.completion.chunk` events as the engine
decodes each token (`token_stream.py`), holding back text that may be the start of a stop string or a
tool call; a tool call is sent whole in one delta when the reply ends. `n` > 1 samples n choices from
the same prompt (seeds `seed`, `seed + 1`, ... when `seed` is given). Errors have the OpenAI routes'
shape (HTTP 400 naming the field).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agentic.core import Completion, GenerateRequest, GeneratorError
from agentic.inference import tool_calls as tc
from agentic.inference.harness_session import HarnessSession, HarnessSessions, SessionError, Turn
from agentic.inference.http_guard import json_dumps
from agentic.inference.openai_api import _err, _finish, _sampling, _usage
from agentic.inference.sglang_api import ApiError, _is_int
from agentic.inference.stops import completion_text
from agentic.inference.token_stream import TokenStream

if TYPE_CHECKING:
    from agentic.inference.openai_api import OpenAIRoutes

MAX_CHOICES = 16


def _json_response(obj: Any, **kw) -> web.Response:
    """Standard JSON (a NaN log-prob goes out as null, `http_guard.json_dumps`)."""
    return web.json_response(obj, dumps=json_dumps, **kw)
_OWN = ("n", "stream", "stream_options", "tools", "tool_choice", "parallel_tool_calls")


class ChatRoutes:
    """The chat route and the session routes, on the server of `routes` (`OpenAIRoutes`).

    Args:
      routes: the server's OpenAI routes (its engine, tokenizer, model name, sampling checks).
      sessions: the session store (default: a new one; `sessions.on_finished` can feed a queue).
      tool_call_format: "hermes", "llama3_json", or None (read from the chat template).
    """

    def __init__(self, routes: OpenAIRoutes, sessions: HarnessSessions | None = None,
                 tool_call_format: str | None = None):
        self.routes, self.server = routes, routes.server
        self.sessions = sessions if sessions is not None else HarnessSessions()
        self._format = tool_call_format
        self._abilities: tuple[bool, bool] | None = None

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_route("POST", "/v1/chat/completions", self.chat_completions)
        router.add_route("POST", "/sessions/{key}/v1/chat/completions", self.session_chat_completions)
        router.add_route("POST", "/sessions/{key}/reward", self.session_reward)
        router.add_route("GET", "/sessions/{key}", self.session_info)
        router.add_route("DELETE", "/sessions/{key}", self.session_delete)

    @property
    def tool_call_format(self) -> str:
        if self._format is None:
            self._format = tc.detect_format(self.server.tokenizer)
        return self._format

    @property
    def abilities(self) -> tuple[bool, bool]:
        if self._abilities is None:
            self._abilities = tc.template_abilities(self.server.tokenizer)
        return self._abilities

    # ---------------------------------------------------------------- request -> prompt
    def _render(self, body: dict, session: HarnessSession | None) -> tuple[str, list[dict]]:
        tok = self.server.tokenizer
        if tok is None or not hasattr(tok, "apply_chat_template"):
            raise ApiError("messages", "this model's tokenizer has no chat template; use /v1/completions")
        tools = tc.check_tools(body.get("tools"))
        tc.check_tool_choice(body.get("tool_choice"), tools)
        raw = body.get("messages")
        if session is not None and isinstance(raw, list):  # assistant turns this session sampled: as sampled
            raw = [{"role": "assistant", "content": text} if isinstance(m, dict) and m.get("role") == "assistant"
                   and (text := session.assistant_text(m)) is not None else m for m in raw]
        renders_calls, renders_tools = self.abilities
        messages = tc.template_messages(raw, self.tool_call_format, renders_calls)
        kwargs: dict[str, Any] = {}
        if tools and renders_tools:
            kwargs["tools"] = tools
        elif tools:
            block = tc.tools_system_prompt(tools, self.tool_call_format)
            if messages[0]["role"] == "system":
                messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{block}"}
            else:
                messages.insert(0, {"role": "system", "content": block})
        try:
            rendered = tok.apply_chat_template(messages, add_generation_prompt=True, **kwargs)
        except ValueError as e:  # no template, or it rejects the conversation
            raise ApiError("messages", str(e)) from e
        return rendered, tools

    def _requests(self, body: dict, prompt: list[int]) -> list[GenerateRequest]:
        n = body.get("n", 1)
        if n is None:
            n = 1
        if not _is_int(n) or not 1 <= n <= MAX_CHOICES:
            raise ApiError("n", f"must be an integer in [1, {MAX_CHOICES}], got {n!r}")
        vocab = self.server.engine.core.config.vocab_size
        if not prompt or not all(0 <= t < vocab for t in prompt):
            raise ApiError("messages", f"the rendered prompt must be non-empty token ids in [0, {vocab})")
        own = {k: v for k, v in body.items() if k not in _OWN}
        params = _sampling(own, max_tokens=body.get("max_completion_tokens", body.get("max_tokens")),
                           prompt_len=len(prompt), context=self.server.context_length)
        if params.seed is None:
            return [GenerateRequest(prompt_ids=prompt, params=params) for _ in range(n)]
        return [GenerateRequest(prompt_ids=prompt, params=dataclasses.replace(params, seed=params.seed + i))
                for i in range(n)]

    def _reply(self, c: Completion, body: dict, tools: list) -> tuple[str | None, list[dict], str]:
        """(content, tool calls, finish_reason) of one choice."""
        tok = self.server.tokenizer
        text = completion_text(tok, c.token_ids, _finish(c), skip_special_tokens=body.get("skip_special_tokens", True),
                               no_stop_trim=bool(body.get("no_stop_trim", False))) if c.token_ids else ""
        if tools and body.get("tool_choice") != "none" and c.finish_reason != "abort":
            content, calls = tc.parse_tool_calls(text, self.tool_call_format)
            if calls:
                return content, calls, "tool_calls"
        return text, [], c.finish_reason

    def _logprobs(self, c: Completion) -> dict:
        return {"content": [{"token": (p := self.routes._piece(t)), "bytes": list(p.encode("utf-8")), "logprob": lp,
                             "top_logprobs": []} for t, lp in zip(c.token_ids, c.logprobs, strict=True)]}

    # ---------------------------------------------------------------- routes
    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, None)

    async def session_chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            session = self.sessions.get(request.match_info["key"])
        except SessionError as e:
            return _err(ApiError(e.field, str(e)))
        return await self._serve(request, session)

    async def _serve(self, request: web.Request, session: HarnessSession | None) -> web.StreamResponse:
        tok = self.server.tokenizer
        try:
            body = await self.routes._body(request)
            rendered, tools = self._render(body, session)
            encode = lambda text: list(tok.encode(text, add_special_tokens=False))  # noqa: E731  (BOS: the template's)
            turn = session.prepare(rendered, encode) if session is not None else Turn(encode(rendered), rendered,
                                                                                       None, False)
            requests = self._requests(body, turn.prompt_ids)
            want_lp = body.get("logprobs", False)
            if not isinstance(want_lp, bool):
                raise ApiError("logprobs", "must be a boolean")
            if body.get("top_logprobs") not in (None, 0):
                raise ApiError("top_logprobs", "only 0 is supported (no top-k alternatives)")
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                raise ApiError("stream", "must be a boolean")
            options = body.get("stream_options") or {}
            if not isinstance(options, dict):
                raise ApiError("stream_options", "must be an object")
        except (ApiError, tc.ToolCallError) as e:
            return _err(e if isinstance(e, ApiError) else ApiError(e.field, str(e)))
        rid = uuid.uuid4().hex
        try:
            if stream:
                return await self._stream(request, body, requests, rid, tools, want_lp, bool(options.get("include_usage")),
                                          session, turn)
            completions = await self.server.run(requests, [f"{rid}-{i}" for i in range(len(requests))])
        except GeneratorError as e:
            return _err(ApiError("engine", str(e)), 500)
        replies = [self._reply(c, body, tools) for c in completions]
        self._record(session, turn, completions, replies)
        choices = [{"index": i, "message": {"role": "assistant", "content": content, "reasoning_content": None,
                                            "tool_calls": calls or None},
                    "logprobs": self._logprobs(c) if want_lp else None, "finish_reason": finish,
                    "matched_stop": c.matched}
                   for i, (c, (content, calls, finish)) in enumerate(zip(completions, replies, strict=True))]
        return _json_response({"id": rid, "object": "chat.completion", "created": int(time.time()),
                                  "model": self.routes.model, "choices": choices, "usage": self._usage(completions)})

    def _usage(self, completions: list[Completion]) -> dict:
        usage = _usage(completions[0])
        extra = sum(len(c.token_ids) for c in completions[1:])
        return {**usage, "completion_tokens": usage["completion_tokens"] + extra,
                "total_tokens": usage["total_tokens"] + extra}

    def _record(self, session: HarnessSession | None, turn: Turn, completions: list[Completion],
                replies: list[tuple[str | None, list[dict], str]]) -> None:
        if session is None:
            return
        tok = self.server.tokenizer
        end = getattr(tok, "eos_token_id", None)
        session.record(turn, completions, lambda ids: tok.decode(ids, skip_special_tokens=False),
                       [(content, calls) for content, calls, _ in replies], end)

    async def _stream(self, request: web.Request, body: dict, requests: list[GenerateRequest], rid: str, tools: list,
                      want_lp: bool, include_usage: bool, session: HarnessSession | None, turn: Turn
                      ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        created, model = int(time.time()), self.routes.model

        async def send(choice: dict | None, usage: dict | None = None) -> None:
            chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [choice] if choice else []}
            if usage is not None:
                chunk["usage"] = usage
            await resp.write(b"data: " + json_dumps(chunk).encode() + b"\n\n")

        parse = bool(tools) and body.get("tool_choice") != "none"
        markers = (*requests[0].params.stop, *(("<tool_call>", "<|python_tag|>") if parse else ()))
        tok = self.server.tokenizer
        lock = asyncio.Lock()

        async def one(i: int, req: GenerateRequest) -> Completion:
            stream, ids, emitted = TokenStream(self.server, req, f"{rid}-{i}"), [], ""
            async with lock:
                await send({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None})
            async for new, lps in stream:
                ids += new
                text = tok.decode(ids, skip_special_tokens=True)
                safe = _safe_prefix(text, markers, parse and self.tool_call_format == tc.LLAMA3_JSON)
                if len(safe) > len(emitted):
                    delta = {"index": i, "delta": {"content": safe[len(emitted):]}, "finish_reason": None,
                             "logprobs": ({"content": [{"token": self.routes._piece(t), "logprob": lp, "bytes": None,
                                                        "top_logprobs": []} for t, lp in zip(new, lps, strict=True)]}
                                          if want_lp else None)}
                    emitted = safe
                    async with lock:
                        await send(delta)
            c = stream.completion
            content, calls, finish = self._reply(c, body, tools)
            delta: dict[str, Any] = {}
            if content and content.startswith(emitted) and len(content) > len(emitted):
                delta["content"] = content[len(emitted):]
            if calls:
                delta["tool_calls"] = [{"index": k, **call} for k, call in enumerate(calls)]
            async with lock:
                if delta:
                    await send({"index": i, "delta": delta, "logprobs": None, "finish_reason": None})
                await send({"index": i, "delta": {}, "logprobs": None, "finish_reason": finish,
                            "matched_stop": c.matched})
            replies[i] = (content, calls, finish)
            return c

        replies: list[Any] = [None] * len(requests)
        completions = list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))
        self._record(session, turn, completions, replies)
        if include_usage:
            await send(None, self._usage(completions))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def session_reward(self, request: web.Request) -> web.Response:
        try:
            body = await self.routes._body(request)
            trajectories = self.sessions.report(request.match_info["key"], body.get("reward"), body.get("group_id"),
                                                body.get("task_id"))
        except ApiError as e:
            return _err(e)
        except SessionError as e:
            return _err(ApiError(e.field, str(e)), 404 if "no open session" in str(e) else 400)
        return _json_response({"session": request.match_info["key"], "trajectories": len(trajectories),
                                  "tokens": [len(t) for t in trajectories],
                                  "sampled_tokens": [int(t.loss_mask.sum()) for t in trajectories],
                                  "diverged": sum(int(t.metrics["prompt_diverged"]) for t in trajectories)})

    async def session_info(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        session = self.sessions.open.get(key)
        if session is None:
            return _err(ApiError("session", f"no open session {key!r:.140}"), 404)
        return _json_response(session.summary())

    async def session_delete(self, request: web.Request) -> web.Response:
        return _json_response({"deleted": self.sessions.drop(request.match_info["key"])})


def _safe_prefix(text: str, markers: tuple[str, ...], json_calls: bool) -> str:
    """The part of a streamed reply that can be sent: up to any (start of a) stop string or tool-call
    marker, and never a trailing partial UTF-8 character."""
    if json_calls and text.lstrip().startswith("{"):
        return ""  # may be a Llama-3 JSON tool call: wait for the end
    cut = len(text.rstrip("\ufffd"))
    for marker in markers:
        at = text.find(marker)
        if at >= 0:
            cut = min(cut, at)
        for k in range(min(len(marker) - 1, len(text)), 0, -1):  # a suffix that may grow into the marker
            if text.endswith(marker[:k]):
                cut = min(cut, len(text) - k)
                break
    return text[:cut]
