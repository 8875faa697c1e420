"""Function calling on the OpenAI routes, in the model family's own tool-call format.

Two formats, as the families were trained on them (and as vLLM / SGLang parse them):

  hermes       (Qwen2.5, Hermes, SmolLM2 prompted so)   <tool_call>
                                                        {"name": "add", "arguments": {"a": 2, "b": 3}}
                                                        </tool_call>       (one block per call)
  llama3_json  (Llama-3.1 / 3.2)                        [<|python_tag|>]{"name": "add", "parameters": {"a": 2}}
                                                        (the whole reply; several joined by ";")

`detect_format` picks one from the chat template's source ("<tool_call>" -> hermes; "<|python_tag|>"
or "ipython" -> llama3_json; otherwise hermes). `parse_tool_calls` turns a reply into (content,
OpenAI-shaped tool calls); text that does not parse stays content, as vLLM does. The request side:
`template_messages` turns OpenAI messages (assistant `tool_calls` with JSON-string arguments, `tool`
messages) into what chat templates render, writing the calls into the content in the family's format
when the template does not render `tool_calls` itself; `tools_system_prompt` lists the tools in the
system message, hermes-style, when the template has no tools block.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2

HERMES, LLAMA3_JSON = "hermes", "llama3_json"
FORMATS = (HERMES, LLAMA3_JSON)
_HERMES_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_PYTHON_TAG = "<|python_tag|>"


class ToolCallError(ValueError):
    """A request's tools or tool messages are malformed; `field` names the request field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def detect_format(tokenizer: Any) -> str:
    """The family's tool-call format, read from its chat template's source."""
    source = getattr(tokenizer, "chat_template", None) or ""
    if "<tool_call>" in source:
        return HERMES
    if _PYTHON_TAG in source or "ipython" in source:
        return LLAMA3_JSON
    return HERMES


def _call(name: Any, arguments: Any) -> dict[str, Any] | None:
    if not isinstance(name, str) or not name:
        return None
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return None
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def parse_tool_calls(text: str, fmt: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool calls in OpenAI's shape) of a model reply; no calls leaves the text as content."""
    if fmt == HERMES:
        calls = []
        for block in _HERMES_BLOCK.findall(text):
            try:
                obj = json.loads(block)
            except ValueError:
                return text, []
            call = _call(obj.get("name"), obj.get("arguments", obj.get("parameters"))) if isinstance(obj, dict) else None
            if call is None:
                return text, []
            calls.append(call)
        if not calls:
            return text, []
        content = text[:text.index("<tool_call>")].strip()
        return content or None, calls
    if fmt == LLAMA3_JSON:
        body = text.strip()
        if body.startswith(_PYTHON_TAG):
            body = body[len(_PYTHON_TAG):].strip()
        if not body.startswith("{"):
            return text, []
        calls = []
        for part in body.split(";"):
            try:
                obj = json.loads(part)
            except ValueError:
                return text, []
            call = _call(obj.get("name"), obj.get("parameters", obj.get("arguments"))) if isinstance(obj, dict) else None
            if call is None:
                return text, []
            calls.append(call)
        return None, calls
    raise ValueError(f"unknown tool-call format {fmt!r}; known: {FORMATS}")


def render_tool_calls(calls: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """The calls as the family writes them (the inverse of `parse_tool_calls`)."""
    parsed = [(c["function"]["name"], _arguments(c)) for c in calls]
    if fmt == LLAMA3_JSON:
        return ";".join(json.dumps({"name": n, "parameters": a}, ensure_ascii=False) for n, a in parsed)
    return "\n".join(f'<tool_call>\n{json.dumps({"name": n, "arguments": a}, ensure_ascii=False)}\n</tool_call>'
                     for n, a in parsed)


def _arguments(call: Mapping[str, Any]) -> dict[str, Any]:
    args = call["function"].get("arguments", {})
    return json.loads(args) if isinstance(args, str) else dict(args or {})


def check_tools(tools: Any) -> list[dict[str, Any]]:
    """The request's `tools`, checked: a list of {"type": "function", "function": {"name", ...}}."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ToolCallError("tools", "must be a list of {type: 'function', function: {name, parameters}}")
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ToolCallError(f"tools[{i}]", "must be {type: 'function', function: {name: str, ...}}")
    return tools


def check_tool_choice(choice: Any, tools: list[dict[str, Any]]) -> None:
    """Only "auto" / "none" (or unset) are served: forcing a call needs constrained decoding."""
    if choice in (None, "auto", "none"):
        return
    if choice == "required" or isinstance(choice, dict):
        raise ToolCallError("tool_choice", "only 'auto' and 'none' are supported (forcing a call needs "
                                           "constrained decoding, which this server does not do)")
    raise ToolCallError("tool_choice", f"must be 'auto' or 'none', got {choice!r:.100}")


def _text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, list):  # [{"type": "text", "text": ...}]
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            raise ToolCallError(f"{where}.content", "only text parts are supported")
        return "".join(str(p.get("text", "")) for p in content)
    if not isinstance(content, str):
        raise ToolCallError(f"{where}.content", "must be a string or a list of text parts")
    return content


def template_messages(messages: Any, fmt: str, renders_tool_calls: bool) -> list[dict[str, Any]]:
    """OpenAI chat messages as chat templates render them (see the module docstring)."""
    if not isinstance(messages, list) or not messages:
        raise ToolCallError("messages", "must be a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ToolCallError(where, "must be an object with a string role")
        msg: dict[str, Any] = {"role": m["role"], "content": _text(m.get("content"), where)}
        calls = m.get("tool_calls")
        if calls:
            if m["role"] != "assistant" or not isinstance(calls, list):
                raise ToolCallError(f"{where}.tool_calls", "only an assistant message has tool_calls (a list)")
            try:
                normalized = [{"type": "function", "function": {"name": c["function"]["name"],
                                                               "arguments": _arguments(c)}} for c in calls]
            except (KeyError, TypeError, ValueError) as e:
                raise ToolCallError(f"{where}.tool_calls", f"each needs function.name and JSON arguments ({e})") from None
            if renders_tool_calls:
                msg["tool_calls"] = normalized
            else:
                written = render_tool_calls(normalized, fmt)
                msg["content"] = f"{msg['content']}\n{written}" if msg["content"] else written
        for key in ("name", "tool_call_id"):
            if isinstance(m.get(key), str):
                msg[key] = m[key]
        out.append(msg)
    return out


def tools_system_prompt(tools: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """A tools block for templates without one (the words of Qwen2.5's hermes block)."""
    listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    example = render_tool_calls([{"function": {"name": "<function-name>", "arguments": {}}}], fmt)
    example = example.replace('"<function-name>"', "<function-name>").replace("{}", "<args-json-object>")
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with "
            f"function signatures within <tools></tools> XML tags:\n<tools>\n{listed}\n</tools>\n\nFor each function "
            f"call, return a json object with function name and arguments:\n{example}")


_PROBE_CALL = [{"role": "user", "content": "hi"},
               {"role": "assistant", "content": "", "tool_calls": [
                   {"type": "function", "function": {"name": "probe_fn_7", "arguments": {"x": 1}}}]}]
_PROBE_TOOL = [{"type": "function", "function": {"name": "probe_tool_7", "description": "a probe",
                                                  "parameters": {"type": "object", "properties": {}}}}]


def template_abilities(tokenizer: Any) -> tuple[bool, bool]:
    """(renders tool_calls of assistant messages, renders a tools block), probed on the template."""
    def shows(messages, marker, **kw) -> bool:
        try:
            return marker in tokenizer.apply_chat_template(messages, add_generation_prompt=False, **kw)
        except (jinja2.TemplateError, TypeError, ValueError):
            return False
    return (shows(_PROBE_CALL, "probe_fn_7"),
            shows([{"role": "user", "content": "hi"}], "probe_tool_7", tools=_PROBE_TOOL))
