"""The code sandbox enforces its limits, and the code env / python tool report what happened."""

import asyncio
import time

import pytest

from envs.code.env import CodeEnv, PythonTool
from envs.code.sandbox import SandboxLimits, run_python


def test_memory_limit_is_enforced():
    code = "x = bytearray(512 * 1024 * 1024)\nprint('allocated', len(x))"
    result = asyncio.run(run_python(code, SandboxLimits(memory_mb=128)))
    assert "MemoryError" in result.stderr and "allocated" not in result.stdout and not result.ok


def test_wall_clock_timeout_kills_the_process_group():
    code = "import os, time\nos.fork()\ntime.sleep(60)"  # a child too: the group is killed
    t0 = time.monotonic()
    result = asyncio.run(run_python(code, SandboxLimits(timeout_s=1.0)))
    elapsed = time.monotonic() - t0
    assert result.timed_out and elapsed < 4, elapsed
    assert "wall-clock timeout" in result.render()


def test_cpu_limit_and_file_size_and_output_truncation():
    spin = asyncio.run(run_python("while True: pass", SandboxLimits(cpu_s=1, timeout_s=20)))
    assert spin.signal in ("SIGXCPU", "SIGKILL") and not spin.timed_out, spin
    big_file = asyncio.run(run_python("open('f', 'wb').write(b'0' * (4 << 20))", SandboxLimits(file_size_mb=1)))
    assert "File too large" in big_file.stderr
    chatty = asyncio.run(run_python("print('y' * 100_000)", SandboxLimits(max_output_bytes=1000)))
    assert len(chatty.stdout) == 1000 and chatty.truncated and "[output truncated]" in chatty.render()


def test_no_network_where_the_os_allows():
    result = asyncio.run(run_python(
        "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n    print('connected')\n"
        "except OSError as e:\n    print('blocked', e)"))
    if not result.network_isolated:
        pytest.skip("this OS does not allow a network namespace here")
    assert "blocked" in result.stdout


def test_code_env_rewards_passing_tests_and_shows_failures():
    async def episode():
        env = CodeEnv(max_turns=2, timeout_s=5)
        await env.reset({"prompt": "Define f(x) = 2x.", "tests": "assert f(2) == 4, 'f(2) should be 4'"})
        wrong = await env.step("```python\ndef f(x):\n    return x + 1\n```")
        right = await env.step("```python\ndef f(x):\n    return 2 * x\n```")
        return wrong, right, env.metrics()

    wrong, right, metrics = asyncio.run(episode())
    assert not wrong.done and "f(2) should be 4" in wrong.observation and "1 attempts left" in wrong.observation
    assert right.done and right.reward == 1.0 and metrics["passed"] == 1.0


def test_python_tool_runs_code_and_rejects_bad_arguments():
    tool = PythonTool(timeout_s=5)
    assert asyncio.run(tool({"code": "print(6 * 7)"})) == "42"
    with pytest.raises(Exception, match="non-empty string"):
        asyncio.run(tool({"code": ""}))
