"""The "add an env / add a tool" examples in BUILD.md work as written."""

import asyncio
import pathlib
import re
import shlex
import subprocess
import sys
import types

from agentic.env import get_spec
from agentic.env.client import EnvClient
from agentic.env.conformance import check_env
from agentic.env.local_hosts import HostProcess

BUILD_MD = pathlib.Path(__file__).resolve().parents[2] / "BUILD.md"


def example_source(first_line: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", BUILD_MD.read_text(), re.DOTALL)
    return next(b for b in blocks if b.startswith(first_line))


def load_example(first_line: str) -> types.ModuleType:
    source = example_source(first_line)
    module = types.ModuleType(first_line)
    exec(compile(source, f"BUILD.md:{first_line}", "exec"), module.__dict__)
    return module


def test_env_example_served_by_the_documented_command(tmp_path):
    """hilo.py written as BUILD.md shows it, served by BUILD.md's host command run in its directory."""
    (tmp_path / "hilo.py").write_text(example_source("# hilo.py"))
    command = re.search(r"```bash\n(python -m agentic\.env\.host --envs hilo [^\n]*)\n```", BUILD_MD.read_text())
    argv = shlex.split(command.group(1))
    assert argv[:3] == ["python", "-m", "agentic.env.host"]
    args = argv[3:]
    args[args.index("--port") + 1] = "0"  # any free port
    with HostProcess([], *args, cwd=str(tmp_path)) as host:
        async def play():  # bisection wins within 8 turns
            client = EnvClient(host.address)
            try:
                session, _ = await client.open("hilo", {"seed": 3})
                lo, hi = 1, 100
                while True:
                    guess = (lo + hi) // 2
                    step = await client.step(session, f"my guess is {guess}")
                    if step.done:
                        await client.close(session)
                        return step.reward
                    lo, hi = (guess + 1, hi) if step.observation == "higher" else (lo, guess - 1)
            finally:
                await client.aclose()

        assert asyncio.run(play()) == 1.0


def test_an_env_no_module_registered_is_refused_with_the_registered_names():
    result = subprocess.run([sys.executable, "-m", "agentic.env.host", "--envs", "hilo", "--port", "0"],
                            capture_output=True, text=True, timeout=60, cwd=str(BUILD_MD.parent))
    assert result.returncode != 0
    assert "unknown env 'hilo'; registered: none" in result.stderr and "--import MODULE" in result.stderr


def test_env_example_registers_and_conforms():
    load_example("# hilo.py")
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
    load_example("# word_count.py")
    from envs.tools.env import ToolEnv

    async def episode():
        env = ToolEnv(tools=["word_count"])
        await env.reset({"prompt": "How many words?"})
        ok = await env.step('<tool_call>{"name": "word_count", "arguments": {"text": "a b c"}}</tool_call>')
        bad = await env.step('<tool_call>{"name": "word_count", "arguments": {"text": 3}}</tool_call>')
        return ok.observation, bad.observation

    ok, bad = asyncio.run(episode())
    assert '"content": "3"' in ok and "must be a string" in bad
