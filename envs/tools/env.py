"""ToolEnv: any set of registered tools behind the Hermes / Qwen2.5 tool-call format.

The model calls tools with one or more blocks in its turn:

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "17 * 23"}}
    </tool_call>

and each call is answered, in order, with

    <tool_response>
    {"name": "calculator", "content": "391"}
    </tool_response>

(`{"name": ..., "error": "..."}` for malformed JSON, unknown tools, bad arguments, tool failures and
timeouts, so the model can learn from its mistakes). Calls of one turn run concurrently. The
episode ends when the model answers with <answer>...</answer> (and no tool call), or after
`max_turns`. With a gold `answer` in the task the final answer is checked by `envs.math.checker`.

For chat episodes (`agentic.rollout.chat`) each step also gives its reply as chat messages,
`Step.info["messages"]`: one `tool` message per call (its JSON body; the model's chat template
wraps it, e.g. Qwen2.5's in <tool_response>), or a `user` message when the turn held neither a
call nor an answer; and the reset gives the tool schemas (`info["tools"]`, for templates with a
tools block) and the system prompt with and without the tool list.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from agentic.core import Env, Observation, Step, Task
from agentic.env.tools import Tool, ToolError, make_tool
from envs.math.checker import is_equivalent

_TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

INSTRUCTIONS = ("You are a helpful assistant that can call tools. "
                "When you know the final answer, reply with <answer>your answer</answer>.")
SYSTEM_TEMPLATE = """You are a helpful assistant that can call tools.

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>

When you know the final answer, reply with <answer>your answer</answer>."""


class ToolEnv(Env):
    """Composes registered tools (see `agentic.env.tools`) into a multi-turn tool-use episode.

    Env kwargs: `tools` (names, default ["calculator", "python"]), `tool_kwargs` ({name: kwargs}),
    `max_turns` (8), `max_calls_per_turn` (8), `call_timeout_s` (30), `instructions_in_prompt`
    (False): put the tool instructions (the system prompt) in front of the task's prompt and end
    each model turn at its first `</tool_call>` or `</answer>` (`Observation.info["stop"]`), the
    continuation-style episode (as Search-R1's) for models run without a tools chat template;
    leave it False for chat episodes (the instructions go in the system message, one turn may
    hold several calls).
    Task: `{"prompt": str, "answer": str | list[str] (optional)}`.
    """

    def __init__(self, tools: Sequence[str] = ("calculator", "python"),
                 tool_kwargs: Mapping[str, Mapping[str, Any]] | None = None, max_turns: int = 8,
                 max_calls_per_turn: int = 8, call_timeout_s: float = 30.0, instructions_in_prompt: bool = False):
        tool_kwargs = dict(tool_kwargs or {})
        unknown = set(tool_kwargs) - set(tools)
        if unknown:
            raise ValueError(f"tool_kwargs for tools not in `tools`: {sorted(unknown)}")
        self.tools: dict[str, Tool] = {name: make_tool(name, **tool_kwargs.get(name, {})) for name in tools}
        self.max_turns, self.max_calls_per_turn, self.call_timeout_s = max_turns, max_calls_per_turn, call_timeout_s
        self.instructions_in_prompt = instructions_in_prompt
        self.golds: list[str] = []
        self.turns = self.calls = self.errors = 0
        self.correct = False

    def system_prompt(self) -> str:
        return SYSTEM_TEMPLATE.format(tools="\n".join(json.dumps(t.schema()) for t in self.tools.values()))

    async def reset(self, task: Task) -> Observation:
        gold = task.get("answer")
        self.golds = [] if gold is None else [str(g) for g in gold] if isinstance(gold, (list, tuple)) else [str(gold)]
        prompt = str(task.get("prompt") or task.get("question") or "")
        if not prompt:
            raise ValueError("tools task needs 'prompt'")
        info: dict[str, Any] = {"system": self.system_prompt(), "system_without_tools": INSTRUCTIONS,
                                "tools": [t.schema() for t in self.tools.values()]}
        if self.instructions_in_prompt:
            prompt = f"{info['system']}\n\n{prompt}"
            info["stop"] = ["</tool_call>", "</answer>"]
        return Observation(text=prompt, info=info)

    async def step(self, action: str) -> Step:
        self.turns += 1
        blocks = _TOOL_CALL.findall(action)
        answer = _ANSWER.findall(action)
        if answer and not blocks:
            self.correct = any(is_equivalent(answer[-1], g) for g in self.golds)
            return Step(observation="", reward=float(self.correct), done=True,
                        info={"answer": answer[-1].strip(), "metrics": self.metrics()})
        if not blocks:
            error = ("no <tool_call> or <answer> found in your reply; call a tool with "
                     "<tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call> or answer with <answer>...</answer>")
            bodies = [_body(None, error=error)]
            messages = [{"role": "user", "content": error}]
            self.errors += 1
        else:
            bodies = await asyncio.gather(*(self._call(b, i) for i, b in enumerate(blocks)))
            messages = [{"role": "tool", "content": body} for body in bodies]
        text = "\n".join(f"<tool_response>\n{body}\n</tool_response>" for body in bodies)
        if self.turns >= self.max_turns:
            return Step(observation=text, truncated=True,
                        info={"reason": "max_turns", "metrics": self.metrics(), "messages": messages})
        return Step(observation=text, info={"messages": messages})

    async def _call(self, block: str, index: int) -> str:
        """Runs one call; returns its response body (JSON)."""
        self.calls += 1
        name = None
        try:
            if index >= self.max_calls_per_turn:
                raise ToolError(f"more than {self.max_calls_per_turn} tool calls in one turn; this one was skipped")
            try:
                call = json.loads(block.strip())
            except ValueError as e:
                raise ToolError(f"tool_call {index + 1} is not valid JSON: {e}") from None
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                raise ToolError(f'tool_call {index + 1} must be a JSON object {{"name": ..., "arguments": {{...}}}}')
            name = call["name"]
            tool = self.tools.get(name)
            if tool is None:
                raise ToolError(f"unknown tool {name!r}; available: {sorted(self.tools)}")
            arguments = call.get("arguments", {})
            if isinstance(arguments, str):  # some models emit the arguments as a JSON string
                try:
                    arguments = json.loads(arguments)
                except ValueError as e:
                    raise ToolError(f"arguments of {name!r} are not valid JSON: {e}") from None
            if not isinstance(arguments, dict):
                raise ToolError(f"arguments of {name!r} must be a JSON object")
            try:
                content = await asyncio.wait_for(tool(arguments), self.call_timeout_s)
            except TimeoutError:
                raise ToolError(f"tool {name!r} timed out after {self.call_timeout_s:g}s") from None
            except ToolError:
                raise
            except Exception as e:
                raise ToolError(f"tool {name!r} failed: {type(e).__name__}: {e}") from None
            return _body(name, content=str(content))
        except ToolError as e:
            self.errors += 1
            return _body(name, error=str(e))

    async def close(self) -> None:
        await asyncio.gather(*(t.close() for t in self.tools.values()), return_exceptions=True)

    def metrics(self) -> dict[str, float]:
        return {"turns": float(self.turns), "tool_calls": float(self.calls), "tool_errors": float(self.errors),
                "correct": float(self.correct)}


def _body(name: str | None, *, content: str | None = None, error: str | None = None) -> str:
    body: dict[str, Any] = {"name": name}
    if error is not None:
        body["error"] = error
    else:
        body["content"] = content
    return json.dumps(body, ensure_ascii=False)
