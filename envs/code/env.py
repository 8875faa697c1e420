"""The code env (write a program that passes the task's tests) and the `python` tool."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from agentic.core import Env, Observation, Step, Task
from agentic.env.tools import Tool, ToolError
from envs.code.sandbox import SandboxLimits, run_python

_DEFAULT_LIMITS = SandboxLimits()

_CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)
_CODE_TAG = re.compile(r"<code>(.*?)</code>", re.DOTALL)


def extract_code(action: str) -> str | None:
    """The last ```python fenced block or <code>...</code> in the action."""
    blocks = _CODE_BLOCK.findall(action) or _CODE_TAG.findall(action)
    return blocks[-1] if blocks else None


def _limits(kwargs: Mapping[str, Any], ceiling: SandboxLimits = _DEFAULT_LIMITS) -> SandboxLimits:
    """Limits a client asked for (env kwargs): each may only tighten the env host's `ceiling`.

    The ceiling is the host's (`SandboxLimits()` as registered); a client cannot raise memory, CPU,
    time, disk or process limits, nor turn the network on.
    """
    fields = {f.name for f in dataclasses.fields(SandboxLimits)}
    for name, value in kwargs.items():
        if name not in fields:
            raise ValueError(f"unknown sandbox limit {name!r}; known: {sorted(fields)}")
        if name == "network":
            if value and not ceiling.network:
                raise ValueError("'network' is set by the env host's spec, not by a client: this host runs "
                                 "code without network")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value <= getattr(ceiling, name):
            raise ValueError(f"sandbox limit {name}={value!r} must be a number <= the host's "
                             f"{getattr(ceiling, name)} (a client may only tighten limits)")
        if isinstance(getattr(ceiling, name), int) and not float(value).is_integer():
            raise ValueError(f"sandbox limit {name} must be a whole number, got {value!r}")
    return dataclasses.replace(ceiling, **{name: type(getattr(ceiling, name))(value) for name, value in kwargs.items()})


class CodeEnv(Env):
    """Write Python that passes the task's tests; each attempt runs in the sandbox.

    Task: `{"prompt": str, "tests": str}` where `tests` is Python (e.g. asserts) run after the
    model's code in its namespace; a pass (reward 1, done) needs the sandbox's evidence that the code
    and every test ran (`RunResult.passed`), not an exit status. A failing attempt shows the output
    and the episode goes on, up to `max_turns` attempts. Env kwargs: `max_turns` (3) and any
    `SandboxLimits` field at or below the host's defaults (`timeout_s`, `memory_mb`, `cpu_s`, ...).
    """

    def __init__(self, max_turns: int = 3, **limits: Any):
        self.max_turns = max_turns
        self.limits = _limits(limits)
        self.tests = ""
        self.turns = 0
        self.passed = False
        self.timeouts = 0

    async def reset(self, task: Task) -> Observation:
        self.tests = str(task.get("tests", ""))
        prompt = str(task.get("prompt", "Write a Python program."))
        text = f"{prompt}\n\nAnswer with one ```python code block. Up to {self.max_turns} attempts."
        return Observation(text=text, info={"stop": ["```\n"]})

    async def step(self, action: str) -> Step:
        self.turns += 1
        left = self.max_turns - self.turns
        code = extract_code(action)
        if code is None:
            text = "No ```python code block found in your answer."
        else:
            result = await run_python(code, self.limits, tests=self.tests)
            self.timeouts += result.timed_out
            if result.passed and not result.timed_out:
                self.passed = True
                return Step(observation="All tests passed.", reward=1.0, done=True,
                            info={"metrics": self.metrics()})
            text = "Tests failed:\n" + result.render()
        if left <= 0:
            return Step(observation=text, done=True, info={"metrics": self.metrics()})
        return Step(observation=f"{text}\n({left} attempts left)")

    def metrics(self) -> dict[str, float]:
        return {"attempts": float(self.turns), "passed": float(self.passed), "timeouts": float(self.timeouts)}


class PythonTool(Tool):
    """Runs a Python snippet in the sandbox and returns its output (stdout, stderr, how it ended)."""

    name = "python"
    description = ("Runs a Python 3 program in a sandbox (no network, limited memory and time) and returns "
                   "what it printed. Use print() to see results.")
    parameters = {"type": "object", "properties": {"code": {"type": "string", "description": "Python source"}},
                  "required": ["code"]}

    def __init__(self, **limits: Any):
        self.limits = _limits(limits)

    async def __call__(self, arguments: Mapping[str, Any]) -> str:
        code = arguments.get("code")
        if not isinstance(code, str) or not code.strip():
            raise ToolError("argument 'code' must be a non-empty string of Python source")
        return (await run_python(code, self.limits)).render()
