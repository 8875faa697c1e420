"""OpenAI-compatible routes on our SGLang-compatible server: agent harnesses that take a `base_url`.

    POST /v1/completions       {"model", "prompt": str | [token ids], "max_tokens", "temperature", "top_p",
                                "stop", "seed", "logprobs": 0, "n": 1}
    POST /v1/chat/completions  {"model", "messages": [{"role", "content"}], "max_tokens" |
                                "max_completion_tokens", "temperature", "top_p", "stop", "seed",
                                "logprobs": bool, "top_logprobs": 0, "n": 1}
    GET  /v1/models

Shapes follow SGLang's OpenAI serving (`entrypoints/openai/protocol.py`: CompletionResponse,
ChatCompletionResponse, ChoiceLogprobs, UsageInfo, ModelCard, ErrorResponse; `serving_chat.py`
renders `messages` with the tokenizer's chat template and adds the generation prompt).
SGLang's extras `top_k`, `stop_token_ids`, `ignore_eos`, `no_stop_trim`, `skip_special_tokens`
are accepted too. Not implemented (HTTP 400 naming the field): `stream`, `n` > 1, tools,
top-k alternatives (`top_logprobs` / `logprobs` > 0), penalties, `logit_bias`, non-text
`response_format`. Errors use the OpenAI routes' top-level ErrorResponse shape.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Protocol

from aiohttp import web

from agentic.core import Completion, GenerateRequest, GeneratorError, SamplingParams
from agentic.inference.sglang_api import ApiError, _is_int, _is_num, context_error
from agentic.inference.stops import Finish, completion_text


class ServingBackend(Protocol):
    """What these routes use of the server they sit on (`http_server.SGLangServer`); this module
    does not import that one (the import goes one way: http_server -> openai_api)."""

    model_path: str
    engine: Any
    tokenizer: Any
    context_length: int

    async def _json(self, request: web.Request) -> Any: ...

    async def run(self, requests: list[GenerateRequest], rids: list[str]) -> list[Completion]: ...

# Fields an OpenAI client may send that change nothing at these values.
_NEUTRAL = {"n": 1, "stream": False, "frequency_penalty": 0.0, "presence_penalty": 0.0, "logit_bias": None,
            "tools": None, "tool_choice": None, "functions": None, "echo": False, "best_of": 1, "suffix": None,
            "repetition_penalty": 1.0, "min_p": 0.0, "stream_options": None}


def _err(e: ApiError, status: int = 400) -> web.Response:
    return web.json_response({"object": "error", "message": str(e), "type": "BadRequestError",
                              "param": e.field, "code": status}, status=status)


def _sampling(body: dict, *, max_tokens: int | None, prompt_len: int, context: int) -> SamplingParams:
    for key, neutral in _NEUTRAL.items():
        val = body.get(key)
        if val is not None and val != neutral and val != []:
            raise ApiError(key, f"is not supported by this server (only {neutral!r})")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise ApiError("response_format", "only {'type': 'text'} is supported")
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise ApiError("max_tokens", f"must be an integer >= 1, got {max_tokens!r}")
    if prompt_len >= context:
        raise ApiError("prompt", f"The input ({prompt_len} tokens) is longer than the model's context length "
                                 f"({context} tokens).")
    if max_tokens is not None and prompt_len + max_tokens >= context:
        raise ApiError("max_tokens", context_error(prompt_len, max_tokens, context))
    kw: dict[str, Any] = {"max_new_tokens": max_tokens if max_tokens is not None else context - prompt_len - 1}
    for key, lo, hi in (("temperature", 0.0, None), ("top_p", 0.0, 1.0)):
        val = body.get(key)
        if val is None:
            continue
        if not _is_num(val) or val < lo or (hi is not None and val > hi) or (key == "top_p" and val == 0):
            raise ApiError(key, f"out of range: {val!r}")
        kw[key] = float(val)
    top_k = body.get("top_k")
    if top_k is not None:
        if not _is_int(top_k) or (top_k < 1 and top_k not in (0, -1)):
            raise ApiError("top_k", f"must be an integer >= 1, or -1, got {top_k!r}")
        kw["top_k"] = int(top_k)
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(x, str) and x for x in stops):
            raise ApiError("stop", "must be a non-empty string or a list of them")
        kw["stop"] = tuple(stops)
    ids = body.get("stop_token_ids")
    if ids is not None:
        if not isinstance(ids, list) or not all(_is_int(t) and t >= 0 for t in ids):
            raise ApiError("stop_token_ids", "must be a list of non-negative integers")
        kw["stop_token_ids"] = tuple(ids)
    seed = body.get("seed")
    if seed is not None:
        if not _is_int(seed):
            raise ApiError("seed", f"must be an integer, got {seed!r}")
        kw["seed"] = int(seed)
    if body.get("ignore_eos") is not None:
        if not isinstance(body["ignore_eos"], bool):
            raise ApiError("ignore_eos", "must be a boolean")
        kw["ignore_eos"] = body["ignore_eos"]
    try:  # NaN top_p / temperature, top_k past int32: this request fails alone (issue 31)
        return SamplingParams(**kw)
    except ValueError as e:
        raise ApiError(next((k for k in ("top_k", "top_p", "temperature", "stop_token_ids") if k in str(e)),
                            "sampling"), str(e)) from None


def _finish(c: Completion) -> Finish:
    return Finish(c.finish_reason, matched=c.matched, length=len(c.token_ids))


def _usage(c: Completion) -> dict:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": len(c.token_ids),
            "total_tokens": c.prompt_tokens + len(c.token_ids),
            "prompt_tokens_details": {"cached_tokens": c.cached_tokens}}


class OpenAIRoutes:
    def __init__(self, server: ServingBackend):
        self.server = server

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_route("POST", "/v1/completions", self.completions)
        router.add_route("POST", "/v1/chat/completions", self.chat_completions)
        router.add_route("GET", "/v1/models", self.models)

    @property
    def model(self) -> str:
        return self.server.model_path or "default"

    async def _body(self, request: web.Request) -> dict:
        body = await self.server._json(request)
        if not isinstance(body, dict):
            raise ApiError("body", "must be a JSON object")
        return body

    async def _complete(self, prompt: list[int], body: dict, max_tokens: int | None) -> Completion:
        vocab = self.server.engine.core.config.vocab_size
        if not prompt or not all(_is_int(t) and 0 <= t < vocab for t in prompt):
            raise ApiError("prompt", f"must be non-empty text or token ids in [0, {vocab})")
        params = _sampling(body, max_tokens=max_tokens, prompt_len=len(prompt),
                           context=self.server.context_length)
        [c] = await self.server.run([GenerateRequest(prompt_ids=prompt, params=params)], [uuid.uuid4().hex])
        return c

    def _text(self, c: Completion, body: dict) -> str:
        tok = self.server.tokenizer
        if tok is None or not c.token_ids:
            return ""
        return completion_text(tok, c.token_ids, _finish(c), skip_special_tokens=body.get("skip_special_tokens", True),
                               no_stop_trim=bool(body.get("no_stop_trim", False)))

    def _piece(self, t: int) -> str:
        tok = self.server.tokenizer
        return tok.decode([t]) if tok is not None else str(t)

    async def completions(self, request: web.Request) -> web.Response:
        """SGLang's OpenAIServingCompletion: legacy completions, one choice."""
        try:
            body = await self._body(request)
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
                prompt = prompt[0]  # a batch of one
            if isinstance(prompt, str) and prompt:
                if self.server.tokenizer is None:
                    raise ApiError("prompt", "this server has no tokenizer; send token ids")
                ids = list(self.server.tokenizer.encode(prompt, add_special_tokens=True))
            elif isinstance(prompt, list):
                ids = prompt
            else:
                raise ApiError("prompt", "must be a non-empty string or a list of token ids (one prompt)")
            lp = body.get("logprobs")
            if lp is not None and (not _is_int(lp) or lp != 0):
                raise ApiError("logprobs", "only 0 (the sampled tokens' log-probs) is supported, or null")
            c = await self._complete(ids, body, body.get("max_tokens", 16))
        except ApiError as e:
            return _err(e)
        except GeneratorError as e:
            return _err(ApiError("engine", str(e)), 500)
        text = self._text(c, body)
        logprobs = None
        if lp is not None:
            pieces = [self._piece(t) for t in c.token_ids]
            offsets, pos = [], 0
            for p in pieces:
                offsets.append(pos)
                pos += len(p)
            logprobs = {"tokens": pieces, "token_logprobs": list(c.logprobs), "top_logprobs": [None] * len(pieces),
                        "text_offset": offsets}
        return web.json_response({
            "id": uuid.uuid4().hex, "object": "text_completion", "created": int(time.time()), "model": self.model,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": c.finish_reason,
                         "matched_stop": c.matched}],
            "usage": _usage(c)})

    async def chat_completions(self, request: web.Request) -> web.Response:
        """SGLang's OpenAIServingChat: messages through the chat template, one choice."""
        try:
            body = await self._body(request)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise ApiError("messages", "must be a non-empty list of {role, content}")
            msgs = []
            for i, m in enumerate(messages):
                if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                    raise ApiError(f"messages[{i}]", "must be an object with a string role")
                content = m.get("content")
                if isinstance(content, list):  # [{"type": "text", "text": ...}]
                    if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                        raise ApiError(f"messages[{i}].content", "only text parts are supported")
                    content = "".join(str(p.get("text", "")) for p in content)
                if not isinstance(content, str):
                    raise ApiError(f"messages[{i}].content", "must be a string or a list of text parts")
                msgs.append({"role": m["role"], "content": content})
            tok = self.server.tokenizer
            if tok is None or not hasattr(tok, "apply_chat_template"):
                raise ApiError("messages", "this model's tokenizer has no chat template; use /v1/completions")
            try:
                rendered = tok.apply_chat_template(msgs, add_generation_prompt=True)
            except ValueError as e:  # no template
                raise ApiError("messages", str(e)) from e
            ids = list(tok.encode(rendered, add_special_tokens=False))  # the template places BOS itself
            want_lp = body.get("logprobs", False)
            if not isinstance(want_lp, bool):
                raise ApiError("logprobs", "must be a boolean")
            if body.get("top_logprobs") not in (None, 0):
                raise ApiError("top_logprobs", "only 0 is supported (no top-k alternatives)")
            max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
            c = await self._complete(ids, body, max_tokens)
        except ApiError as e:
            return _err(e)
        except GeneratorError as e:
            return _err(ApiError("engine", str(e)), 500)
        logprobs = None
        if want_lp:
            logprobs = {"content": [
                {"token": (p := self._piece(t)), "bytes": list(p.encode("utf-8")), "logprob": lp, "top_logprobs": []}
                for t, lp in zip(c.token_ids, c.logprobs, strict=True)]}
        return web.json_response({
            "id": uuid.uuid4().hex, "object": "chat.completion", "created": int(time.time()), "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self._text(c, body),
                                                 "reasoning_content": None, "tool_calls": None},
                         "logprobs": logprobs, "finish_reason": c.finish_reason, "matched_stop": c.matched}],
            "usage": _usage(c)})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self.model, "object": "model", "created": int(time.time()), "owned_by": "sglang",
            "root": self.model, "max_model_len": self.server.context_length}]})
