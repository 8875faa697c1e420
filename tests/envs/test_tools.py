"""ToolEnv: Hermes/Qwen2.5 tool calls, concurrent execution, and error observations a model can learn from."""

import asyncio
import json
import re
import time

from agentic.env.tools import Tool, register_tool
from envs.tools.env import ToolEnv


class SlowEcho(Tool):
    name = "slow_echo"
    description = "Echoes `text` after `delay` seconds."
    parameters = {"type": "object", "properties": {"text": {"type": "string"}, "delay": {"type": "number"}}}

    async def __call__(self, arguments):
        await asyncio.sleep(arguments.get("delay", 0.3))
        if arguments.get("text") == "boom":
            raise RuntimeError("exploded")
        return arguments.get("text", "")


register_tool("slow_echo", SlowEcho)


def call(name, **arguments):
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


def responses(text):
    return [json.loads(b) for b in re.findall(r"<tool_response>\n(.*?)\n</tool_response>", text, re.DOTALL)]


def run_turns(actions, **kwargs):
    async def episode():
        env = ToolEnv(**kwargs)
        obs = await env.reset({"prompt": "What is 17 * 23?", "answer": "391"})
        steps = [await env.step(a) for a in actions]
        await env.close()
        return obs, steps, env.metrics()
    return asyncio.run(episode())


def test_calls_answer_and_reward():
    obs, steps, metrics = run_turns([call("calculator", expression="17 * 23"), "<answer>391</answer>"])
    assert '"name": "calculator"' in obs.info["system"] and obs.info["tools"][0]["function"]["name"] == "calculator"
    assert responses(steps[0].observation) == [{"name": "calculator", "content": "391"}]
    assert steps[1].done and steps[1].reward == 1.0 and metrics["tool_calls"] == 1


def test_calls_in_one_turn_run_concurrently():
    t0 = time.monotonic()
    _, steps, _ = run_turns(["".join(call("slow_echo", text=str(i), delay=0.4) for i in range(5))],
                            tools=["slow_echo"])
    assert time.monotonic() - t0 < 1.5  # 5 x 0.4 s sequentially would be 2 s
    assert [r["content"] for r in responses(steps[0].observation)] == ["0", "1", "2", "3", "4"]


def test_errors_become_observations():
    bad = ["<tool_call>{\"name\": \"calculator\", \"arguments\": {</tool_call>",
           call("search", query="x"), call("calculator", expression="import os"), call("slow_echo", text="boom", delay=0),
           '<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"1+1\\"}"}</tool_call>']
    _, steps, metrics = run_turns(["".join(bad), "I am not sure", "<answer>12</answer>"],
                                  tools=["calculator", "slow_echo"])
    r = responses(steps[0].observation)
    assert "not valid JSON" in r[0]["error"]
    assert "unknown tool 'search'" in r[1]["error"] and "available: ['calculator', 'slow_echo']" in r[1]["error"]
    assert "unsupported in arithmetic" in r[2]["error"] or "not an arithmetic" in r[2]["error"]
    assert r[3]["error"] == "tool 'slow_echo' failed: RuntimeError: exploded"
    assert r[4] == {"name": "calculator", "content": "2"}  # arguments given as a JSON string are accepted
    assert "no <tool_call> or <answer>" in responses(steps[1].observation)[0]["error"]
    assert steps[2].done and steps[2].reward == 0.0 and metrics["tool_errors"] == 5


def test_turn_limit_truncates_and_python_tool_composes():
    _, steps, _ = run_turns([call("python", code="print(sum(range(10)))")] * 2, max_turns=2,
                            tool_kwargs={"python": {"timeout_s": 5}})
    assert responses(steps[0].observation) == [{"name": "python", "content": "45"}]
    assert steps[1].truncated and steps[1].info["reason"] == "max_turns"
