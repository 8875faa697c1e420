"""The "add an env / add a tool" examples in BUILD.md work as written."""

import asyncio
import pathlib
import re
import types

from agentic.env import get_spec
from agentic.env.conformance import check_env

BUILD_MD = pathlib.Path(__file__).resolve().parents[2] / "BUILD.md"


def load_example(first_line: str) -> types.ModuleType:
    blocks = re.findall(r"```python\n(.*?)```", BUILD_MD.read_text(), re.DOTALL)
    source = next(b for b in blocks if b.startswith(first_line))
    module = types.ModuleType(first_line)
    exec(compile(source, f"BUILD.md:{first_line}", "exec"), module.__dict__)
    return module


def test_env_example_registers_and_conforms():
    load_example("# envs/hilo.py")
    spec = get_spec("hilo")
    assert asyncio.run(check_env(spec)) == []

    async def play():  # bisection wins within 8 turns
        env = spec.factory()
        await env.reset({"seed": 3})
        lo, hi = 1, 100
        while True:
            guess = (lo + hi) // 2
            step = await env.step(f"my guess is {guess}")
            if step.done:
                return step.reward
            lo, hi = (guess + 1, hi) if step.observation == "higher" else (lo, guess - 1)

    assert asyncio.run(play()) == 1.0


def test_tool_example_composes_into_a_tool_env():
    load_example("# envs/tools/word_count.py")
    from envs.tools.env import ToolEnv

    async def episode():
        env = ToolEnv(tools=["word_count"])
        await env.reset({"prompt": "How many words?"})
        ok = await env.step('<tool_call>{"name": "word_count", "arguments": {"text": "a b c"}}</tool_call>')
        bad = await env.step('<tool_call>{"name": "word_count", "arguments": {"text": 3}}</tool_call>')
        return ok.observation, bad.observation

    ok, bad = asyncio.run(episode())
    assert '"content": "3"' in ok and "must be a string" in bad
