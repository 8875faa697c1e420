"""The conformance suite every registered env must pass (`tests/env/test_conformance.py` runs it).

    problems = asyncio.run(check_env(get_spec("game")))   # [] when the env conforms

What it checks, in process, on `EnvSpec.example_task` / `example_kwargs`:
  1. the factory builds an `Env`; `reset` returns an `Observation` with str text and JSON info;
  2. garbage actions (whitespace, control characters, non-ASCII, 100 kB of text, fake tags) give a
     `Step` (str observation, finite float reward, bool done/truncated, JSON info): an env answers
     a bad action with an observation, it does not raise;
  3. the episode ends on its own (done or truncated) within `max_steps` garbage steps;
  4. `metrics()` is a dict of str -> finite numbers; `close()` returns and is awaited once.
The host adds the process-level guarantees (deadlines, crashes) on top; see `agentic.env.host`.
"""

from __future__ import annotations

import json
import math
from typing import Any

from agentic.core import Env, Observation, Step
from agentic.env.registry import EnvSpec

GARBAGE_ACTIONS = (
    " ",
    "\x00\x01\x1b[31m\ufffd",
    "日本語のテキスト 🤖 ∑∫√",
    "<answer></answer><tool_call>{not json</tool_call><search></search><guess>?</guess>```python\n```",
    "x" * 100_000,
)


def _json_problem(value: Any, what: str) -> str | None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        return f"{what} is not JSON-serializable: {e}"
    return None


def _check_step(step: Any, where: str) -> list[str]:
    if not isinstance(step, Step):
        return [f"{where}: step returned {type(step).__name__}, expected Step"]
    problems = []
    if not isinstance(step.observation, str):
        problems.append(f"{where}: Step.observation is {type(step.observation).__name__}, expected str")
    if not isinstance(step.reward, (int, float)) or not math.isfinite(step.reward):
        problems.append(f"{where}: Step.reward {step.reward!r} is not a finite number")
    if not isinstance(step.done, bool) or not isinstance(step.truncated, bool):
        problems.append(f"{where}: Step.done/truncated must be bool")
    problem = _json_problem(dict(step.info), f"{where}: Step.info")
    return problems + ([problem] if problem else [])


async def check_env(spec: EnvSpec, max_steps: int = 64) -> list[str]:
    """Plays garbage against one episode of `spec`; returns the problems found (empty = conforms)."""
    if spec.example_task is None:
        return [f"env {spec.name!r} has no example_task in its EnvSpec: register one (a small valid task) so "
                "the conformance suite can play it"]
    task = spec.example_task() if callable(spec.example_task) else spec.example_task
    if _json_problem(dict(task), "example_task") or _json_problem(dict(spec.example_kwargs), "example_kwargs"):
        return [f"env {spec.name!r}: example_task and example_kwargs must be JSON objects"]
    env = spec.factory(**dict(spec.example_kwargs))
    if not isinstance(env, Env):
        return [f"env {spec.name!r}: factory returned {type(env).__name__}, expected an Env"]
    problems: list[str] = []
    try:
        obs = await env.reset(task)
        if not isinstance(obs, Observation) or not isinstance(obs.text, str):
            return [f"env {spec.name!r}: reset returned {type(obs).__name__}, expected Observation(text=str)"]
        problem = _json_problem(dict(obs.info), "Observation.info")
        if problem:
            problems.append(problem)
        ended = False
        for i in range(max_steps):
            action = GARBAGE_ACTIONS[i % len(GARBAGE_ACTIONS)]
            try:
                step = await env.step(action)
            except Exception as e:
                problems.append(f"step {i} with garbage action {action[:40]!r} raised {type(e).__name__}: {e} "
                                "(answer bad actions with an observation)")
                break
            problems += _check_step(step, f"step {i}")
            if isinstance(step, Step) and (step.done or step.truncated):
                ended = True
                break
        if not ended and not problems:
            problems.append(f"episode did not end (done or truncated) within {max_steps} steps of garbage: "
                            "envs must end episodes on their own (turn limit)")
        metrics = env.metrics()
        if not isinstance(metrics, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and math.isfinite(v) for k, v in metrics.items()):
            problems.append(f"metrics() must be a dict of str -> finite numbers, got {metrics!r}")
    finally:
        await env.close()
    return [f"env {spec.name!r}: {p}" for p in problems]
