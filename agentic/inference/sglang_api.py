"""SGLang native API JSON <-> the Generator protocol, for both sides of the wire.

The field names and shapes are SGLang's (`GenerateReqInput`, `SamplingParams`,
`meta_info` in `tokenizer_manager.py`, `/update_weights_from_disk` in
`http_server.py`):

request   {"input_ids": [..]} or {"text": ".."} (or lists of them: a batch),
          "sampling_params": {max_new_tokens, temperature, top_p, top_k, stop,
          stop_token_ids, ignore_eos, skip_special_tokens, no_stop_trim,
          sampling_seed} (one dict, or one per batch item), "return_logprob",
          "return_text_in_logprobs", "rid", "stream" (server-sent events, see
          `http_server.SGLangServer.generate`).
response  {"text", "output_ids", "meta_info": {"id", "finish_reason":
          {"type": "stop", "matched": str|int} | {"type": "length", "length": n}
          | {"type": "abort", "message": ..}, "prompt_tokens", "completion_tokens",
          "cached_tokens", "weight_version" (a string, as SGLang sends it),
          "e2e_latency", "output_token_logprobs": [[logprob, token_id, text|null], ..]}}
          (a list of those for a batch).

`ApiError` carries the offending field; the server answers it with HTTP 400 in
the shape of SGLang's native routes (`http_server.py:_create_error_response`:
{"error": {"message": ..}}), plus "param" (the field) and "code" inside "error".
Clients read either that or the OpenAI routes' top-level {"message": ..}
(`error_message`).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from typing import Any

from agentic.core import Completion, GenerateRequest, SamplingParams


class ApiError(ValueError):
    """A malformed request: `field` names what is wrong (answered with HTTP 400)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field

    def to_json(self) -> dict:
        return {"error": {"message": str(self), "type": "BadRequestError", "param": self.field, "code": 400}}


def error_message(data: Any) -> str:
    """The message of an error body: SGLang's native {"error": {"message"}}, its OpenAI routes'
    {"message"}, FastAPI's {"detail"}, or the raw text."""
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
        for key in ("message", "detail"):
            if key in data:
                return str(data[key])
    return str(data)[:500]


@dataclasses.dataclass(frozen=True)
class OutputOptions:
    """Per-request options that shape the response, not the sampling."""

    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    return_logprob: bool = False
    return_text_in_logprobs: bool = False
    rid: str | None = None
    prefill_only: bool = False  # max_new_tokens 0: answered without generating


def context_error(prompt_tokens: int, max_new_tokens: int, context_length: int) -> str:
    """SGLang's message (`tokenizer_manager.py:_validate_one_request`) for a request past the context."""
    total = prompt_tokens + max_new_tokens
    return (f"Requested token count exceeds the model's maximum context length of {context_length} tokens. "
            f"You requested a total of {total} tokens: {prompt_tokens} tokens from the input messages and "
            f"{max_new_tokens} tokens for the completion. Please reduce the number of tokens in the input "
            f"messages or the completion to fit within the limit.")


@dataclasses.dataclass(frozen=True)
class ParsedGenerate:
    requests: list[GenerateRequest]
    options: list[OutputOptions]
    batched: bool
    stream: bool = False


# Sampling keys SGLang accepts that this server does not implement: allowed only
# at their neutral value, so a client sending defaults is not refused.
_NEUTRAL = {
    "min_new_tokens": 0, "min_p": 0.0, "frequency_penalty": 0.0, "presence_penalty": 0.0,
    "repetition_penalty": 1.0, "n": 1, "regex": None, "json_schema": None, "ebnf": None,
    "structural_tag": None, "custom_params": None, "logit_bias": None, "stop_regex": None,
}
_IGNORED = {"spaces_between_special_tokens"}
_SAMPLING_KEYS = {"max_new_tokens", "temperature", "top_p", "top_k", "stop", "stop_token_ids",
                  "ignore_eos", "skip_special_tokens", "no_stop_trim", "sampling_seed", "seed"}
# Top-level keys SGLang defines that change nothing here at these values.
_TOP_NEUTRAL = {"top_logprobs_num": 0, "logprob_start_len": -1,
                "return_hidden_states": False, "lora_path": None, "image_data": None,
                "input_embeds": None, "token_ids_logprob": None, "custom_logit_processor": None}
_TOP_KEYS = {"text", "input_ids", "sampling_params", "return_logprob", "return_text_in_logprobs", "stream",
             "rid", "session_id", "log_metrics", "bootstrap_host", "bootstrap_room", "priority"}


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _bool(x, field: str) -> bool:
    if not isinstance(x, bool):
        raise ApiError(field, f"must be a boolean, got {x!r}")
    return x


def _per_item(value, n: int, field: str, batched: bool) -> list:
    """SGLang lets per-request fields be one value or one per batch item."""
    if batched and isinstance(value, list):
        if len(value) != n:
            raise ApiError(field, f"has {len(value)} entries for a batch of {n}")
        return value
    return [value] * n


def _sampling(sp: Any, field: str) -> tuple[SamplingParams, dict]:
    if sp is None:
        sp = {}
    if not isinstance(sp, dict):
        raise ApiError(field, f"must be an object, got {type(sp).__name__}")
    kw: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for key, val in sp.items():
        f = f"{field}.{key}"
        if key in _IGNORED or (key in _NEUTRAL and val is None):
            continue
        if key in _NEUTRAL:
            if val != _NEUTRAL[key]:
                raise ApiError(f, f"is not supported by this server (only {_NEUTRAL[key]!r})")
            continue
        if key not in _SAMPLING_KEYS:
            raise ApiError(f, "unknown sampling parameter")
        if val is None:
            continue
        if key == "max_new_tokens":
            if not _is_int(val) or val < 0:
                raise ApiError(f, f"must be an integer >= 0, got {val!r}")
            if val == 0:  # SGLang allows it: prefill only, no output tokens
                out["prefill_only"] = True
            else:
                kw[key] = int(val)
        elif key == "temperature":
            if not _is_num(val) or val < 0:
                raise ApiError(f, f"must be a number >= 0, got {val!r}")
            kw[key] = float(val)
        elif key == "top_p":
            if not _is_num(val) or not 0 < val <= 1:
                raise ApiError(f, f"must be a number in (0, 1], got {val!r}")
            kw[key] = float(val)
        elif key == "top_k":
            if not _is_int(val) or (val < 1 and val not in (0, -1)):
                raise ApiError(f, f"must be an integer >= 1, or -1 to disable, got {val!r}")
            kw[key] = int(val)
        elif key == "stop":
            stops = [val] if isinstance(val, str) else val
            if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
                raise ApiError(f, "must be a non-empty string or a list of non-empty strings")
            kw[key] = tuple(stops)
        elif key == "stop_token_ids":
            if not isinstance(val, list) or not all(_is_int(t) and t >= 0 for t in val):
                raise ApiError(f, "must be a list of non-negative integers")
            kw[key] = tuple(int(t) for t in val)
        elif key in ("sampling_seed", "seed"):
            if not _is_int(val):
                raise ApiError(f, f"must be an integer, got {val!r}")
            kw["seed"] = int(val)
        elif key == "ignore_eos":
            kw[key] = _bool(val, f)
        else:  # skip_special_tokens, no_stop_trim
            out[key] = _bool(val, f)
    try:
        return SamplingParams(**kw), out
    except ValueError as e:  # NaN, inf, or past the engine's int32 (SamplingParams checks): 400, this request only
        key = next((k for k in ("top_k", "top_p", "temperature", "max_new_tokens", "stop_token_ids") if k in str(e)), "")
        raise ApiError(f"{field}.{key}" if key else field, str(e)) from e


def _token_list(ids: Any, field: str, vocab_size: int | None) -> list[int]:
    if not isinstance(ids, list) or not ids:
        raise ApiError(field, "must be a non-empty list of token ids")
    for i, t in enumerate(ids):
        if not _is_int(t) or t < 0 or (vocab_size is not None and t >= vocab_size):
            bound = f" in [0, {vocab_size})" if vocab_size is not None else " >= 0"
            raise ApiError(f"{field}[{i}]", f"token id must be an integer{bound}, got {t!r}")
    return [int(t) for t in ids]


def parse_generate(body: Any, *, tokenize: Callable[[str], list[int]] | None = None,
                   vocab_size: int | None = None, context_length: int | None = None) -> ParsedGenerate:
    """Validates a /generate body and turns it into GenerateRequests.

    Raises:
      ApiError: naming the first bad field.
    """
    if not isinstance(body, dict):
        raise ApiError("body", "must be a JSON object")
    for key, val in body.items():
        if key in _TOP_NEUTRAL:
            if val not in (_TOP_NEUTRAL[key], None):
                raise ApiError(key, f"is not supported by this server (only {_TOP_NEUTRAL[key]!r})")
        elif key not in _TOP_KEYS:
            raise ApiError(key, "unknown field")
    has_text, has_ids = body.get("text") is not None, body.get("input_ids") is not None
    if has_text == has_ids:
        raise ApiError("input_ids", "give exactly one of `text` and `input_ids`")
    if has_ids:
        ids = body["input_ids"]
        batched = isinstance(ids, list) and bool(ids) and isinstance(ids[0], list)
        if batched:
            prompts = [_token_list(x, f"input_ids[{i}]", vocab_size) for i, x in enumerate(ids)]
        else:
            prompts = [_token_list(ids, "input_ids", vocab_size)]
    else:
        text = body["text"]
        batched = isinstance(text, list)
        texts = text if batched else [text]
        if batched and not texts:
            raise ApiError("text", "must not be an empty list")
        if tokenize is None:
            raise ApiError("text", "this server has no tokenizer; send input_ids")
        prompts = []
        for i, t in enumerate(texts):
            f = f"text[{i}]" if batched else "text"
            if not isinstance(t, str) or not t:
                raise ApiError(f, "must be a non-empty string")
            prompts.append(list(tokenize(t)))
    n = len(prompts)
    sps = _per_item(body.get("sampling_params"), n, "sampling_params", batched)
    rlp = _per_item(body.get("return_logprob", False), n, "return_logprob", batched)
    rids = _per_item(body.get("rid"), n, "rid", batched)
    sessions = _per_item(body.get("session_id"), n, "session_id", batched)
    rtl = _bool(body.get("return_text_in_logprobs", False) or False, "return_text_in_logprobs")
    requests, options = [], []
    for i in range(n):
        suffix = f"[{i}]" if batched else ""
        params, out = _sampling(sps[i], "sampling_params" + (suffix if isinstance(
            body.get("sampling_params"), list) else ""))
        where = ("input_ids" if has_ids else "text") + suffix
        if context_length is not None and len(prompts[i]) >= context_length:
            raise ApiError(where, f"The input ({len(prompts[i])} tokens) is longer than the model's context "
                                  f"length ({context_length} tokens).")
        asked = sps[i].get("max_new_tokens") if isinstance(sps[i], dict) else None
        if context_length is not None and _is_int(asked) and len(prompts[i]) + asked >= context_length:
            raise ApiError(where, context_error(len(prompts[i]), asked, context_length))
        lp = rlp[i] if rlp[i] is not None else False
        rid = rids[i]
        if rid is not None and not isinstance(rid, str):
            raise ApiError("rid", "must be a string")
        sid = sessions[i]
        if sid is not None and not isinstance(sid, str):
            raise ApiError("session_id", "must be a string")
        requests.append(GenerateRequest(prompt_ids=prompts[i], params=params, session_id=sid))
        options.append(OutputOptions(
            skip_special_tokens=out.get("skip_special_tokens", True),
            no_stop_trim=out.get("no_stop_trim", False),
            return_logprob=_bool(lp, "return_logprob"), return_text_in_logprobs=rtl, rid=rid,
            prefill_only=out.get("prefill_only", False)))
    stream = _bool(body.get("stream", False) or False, "stream")
    return ParsedGenerate(requests=requests, options=options, batched=batched, stream=stream)


def finish_reason_json(c: Completion, max_new_tokens: int) -> dict:
    if c.finish_reason == "length":
        return {"type": "length", "length": max_new_tokens}
    if c.finish_reason == "abort":
        return {"type": "abort", "message": str(c.matched or "aborted")}
    return {"type": "stop", "matched": c.matched}


def generate_response(c: Completion, req: GenerateRequest, opts: OutputOptions, *, text: str,
                      rid: str, e2e_latency: float,
                      token_text: Callable[[int], str] | None = None, weight_version: str | None = None) -> dict:
    """One /generate response object, as SGLang builds it (`TokenizerManager._handle_batch_output`)."""
    meta = {
        "id": rid,
        "finish_reason": finish_reason_json(c, 0 if opts.prefill_only else req.params.max_new_tokens),
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": len(c.token_ids),
        "cached_tokens": c.cached_tokens,
        "weight_version": str(c.weight_version) if weight_version is None else weight_version,
        "e2e_latency": e2e_latency,
    }
    if opts.return_logprob:
        meta["output_token_logprobs"] = [
            [float(lp), int(t), token_text(int(t)) if (opts.return_text_in_logprobs and token_text) else None]
            for lp, t in zip(c.logprobs, c.token_ids, strict=True)]
    return {"text": text, "output_ids": list(c.token_ids), "meta_info": meta}


# ----------------------------------------------------------------------------- client side


def request_body(req: GenerateRequest, *, rid: str | None = None) -> dict:
    """The /generate body for one request (works on real SGLang and on ours)."""
    p = req.params
    sp: dict[str, Any] = {"max_new_tokens": p.max_new_tokens, "temperature": p.temperature,
                          "top_p": p.top_p, "top_k": p.top_k if p.top_k > 0 else -1}
    if p.stop:
        sp["stop"] = list(p.stop)
    if p.stop_token_ids:
        sp["stop_token_ids"] = list(p.stop_token_ids)
    if p.seed is not None:
        sp["sampling_seed"] = p.seed
    if p.ignore_eos:
        sp["ignore_eos"] = True
    body = {"input_ids": list(map(int, req.prompt_ids)), "sampling_params": sp, "return_logprob": True}
    if rid is not None:
        body["rid"] = rid
    return body


def parse_weight_version(v: Any, default: int = 0) -> int:
    """SGLang sends weight_version as a string ("default" until set); ours are integers."""
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def parse_response(obj: dict, req: GenerateRequest, *, default_version: int = 0) -> Completion:
    """A /generate response object -> Completion. Raises ValueError if malformed.

    `default_version` is reported when meta_info has no usable weight_version
    (sglang-jax sends none; SGLang sends "default" until one is set).

    `ignore_eos` with `stop_token_ids`: SGLang's `Req.check_finished`
    (`schedule_batch.py`) skips every token stop when `ignore_eos` is set, while
    our protocol promises that explicit stop ids still stop. The tokens before
    and at the first stop id are exactly what a stopping server would have
    returned (sampling is causal), so the output is cut there: finish "stop",
    `matched` the id, `text` None (the server's text covers the cut tokens).
    """
    if not isinstance(obj, dict) or "meta_info" not in obj:
        raise ValueError(f"not a /generate response: {str(obj)[:200]}")
    meta = obj["meta_info"]
    fr = meta.get("finish_reason") or {}
    kind = fr.get("type", "abort")
    matched = fr.get("matched") if kind == "stop" else (fr.get("message") if kind == "abort" else None)
    if kind not in ("stop", "length", "abort"):
        kind = "abort"
    lps = meta.get("output_token_logprobs") or []
    ids = obj.get("output_ids")
    if ids is None:  # older SGLang: token ids only inside the logprob triples
        ids = [t[1] for t in lps]
    ids = [int(t) for t in ids]
    logprobs = [float(t[0]) for t in lps]
    text = obj.get("text")
    p = req.params
    if p.ignore_eos and p.stop_token_ids and kind != "abort":
        cut = next((i for i, t in enumerate(ids) if t in set(p.stop_token_ids)), None)
        if cut is not None and (cut + 1 < len(ids) or kind != "stop"):
            ids, logprobs, kind, matched, text = ids[: cut + 1], logprobs[: cut + 1], "stop", ids[cut], None
    return Completion(
        token_ids=tuple(ids),
        logprobs=tuple(logprobs),
        finish_reason=kind,
        matched=matched,
        weight_version=parse_weight_version(meta.get("weight_version"), default_version),
        prompt_tokens=int(meta.get("prompt_tokens", len(req.prompt_ids))),
        cached_tokens=int(meta.get("cached_tokens", 0)),
        text=text,
    )


def as_list(obj: Any) -> list:
    return obj if isinstance(obj, list) else [obj]


__all__ = ["ApiError", "error_message", "context_error", "OutputOptions", "ParsedGenerate", "parse_generate", "generate_response",
           "request_body", "parse_response", "parse_weight_version", "finish_reason_json", "as_list"]
