"""Tools: named async functions a `ToolEnv` (envs/tools) exposes to the model.

A tool is one class with a name, a description, a JSON-schema of its arguments
and an async `__call__(arguments) -> str`. Register it by name (one line) and any
ToolEnv can compose it with others:

    class Calculator(Tool):
        name = "calculator"
        description = "Evaluates an arithmetic expression."
        parameters = {"type": "object", "properties": {"expression": {"type": "string"}},
                      "required": ["expression"]}

        async def __call__(self, arguments):
            return str(safe_eval(arguments["expression"]))

    register_tool("calculator", Calculator)   # factory(**tool_kwargs) -> Tool

A tool reports a problem the model caused (bad arguments, no result) by raising
`ToolError(message)`; the ToolEnv answers it as an error observation. Any other
exception is reported the same way, with its type, so the episode goes on.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any

from agentic.registry import Registry


class ToolError(Exception):
    """A tool call failed in a way the model should read about (bad arguments, nothing found)."""


class Tool(abc.ABC):
    """One tool. Instances live for one episode (one ToolEnv)."""

    name: str = ""
    description: str = ""
    parameters: Mapping[str, Any] = {"type": "object", "properties": {}}

    @abc.abstractmethod
    async def __call__(self, arguments: Mapping[str, Any]) -> str:
        """Runs the tool; returns the text the model sees inside <tool_response>."""

    def schema(self) -> dict[str, Any]:
        """The OpenAI/Hermes function schema (what chat templates render in their <tools> block)."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": dict(self.parameters)}}

    async def close(self) -> None:  # noqa: B027  (optional hook)
        """Releases per-episode resources."""


TOOLS: Registry[Callable[..., Tool]] = Registry(
    "tool", hint="A tool registers when its module is imported (e.g. `import envs.tools` for the calculator, "
                "`import envs.code` for python)")


def register_tool(name: str, factory: Callable[..., Tool]) -> None:
    """Registers a tool factory by name; re-registering a different factory is an error."""
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"tool name {name!r} must be non-empty [A-Za-z0-9_]")
    TOOLS.add(name, factory)


def make_tool(name: str, **kwargs: Any) -> Tool:
    """Builds tool `name` (a registered one)."""
    tool = TOOLS.get(name)(**kwargs)
    if not tool.name:
        tool.name = name
    return tool


def tool_names() -> list[str]:
    return TOOLS.names()
