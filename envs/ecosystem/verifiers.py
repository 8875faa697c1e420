"""Environments written for PrimeIntellect's `verifiers` package (its classic API: `load_environment`,
`MultiTurnEnv` / `SingleTurnEnv` / `ToolEnv`, `Rubric`), hosted as they are: the env's own `rollout`
runs in the worker, and the model it would call is the policy, turn by turn, through a bridge client.

    python -m agentic.env.host --envs verifiers --import envs.ecosystem.verifiers

Pinned release: verifiers 0.3.1, whose classic API lives in `verifiers.legacy` and also answers at the
old names (`import verifiers as vf; vf.MultiTurnEnv`), so env modules written for 0.1.x load unchanged.

Env kwargs: `environment` (required): an installed verifiers env id (`vf.load_environment(id, **env_args)`
imports the module of that name and calls its `load_environment`), or "package.module:attr" for a
`load_environment` function or an `Environment` class outside any package (e.g. "verifiers:ReasoningGymEnv",
one of the integrations the package ships); `env_args` ({}: its keyword arguments); `imports` (modules to
import first); `model` ("policy": the name the env sees in `state["model"]`). An env is built once per
worker for the same `environment` and `env_args` and shared by its sessions, as verifiers shares one env
among concurrent rollouts. Task: `{"index": i, "split": "train" | "eval"}` (a row of the env's dataset;
split "train" by default), or a row given whole: `{"prompt": messages or str, "answer": ..., "info": {...}}`.

What the policy sees: the row's prompt as the env would send it to a model. A system message goes to
`Observation.info["system"]` and the user message is the observation; a prompt with more turns (few-shot)
is written as one text, "[role]\\ncontent" per message (every message is in `info["prompt_messages"]`). The
env's tool definitions go to `info["tools"]` (OpenAI function schemas). Each step, the model's text is the
assistant message; Hermes-style `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks in it
become the message's tool calls, as a vLLM tool parser would make them (a block that is not such JSON
stays text). The env's reply (`env_response`, or its `final_env_response`) comes back as
`Step.info["messages"]` (user / tool messages) and as the observation text (their contents, one per line).
When the rollout ends (an `@vf.stop` condition, `max_turns`, a timeout) the env's rubric scores it
(`rubric.score_rollout`, as `Environment.run_rollout` does): that reward comes on the last step, with the
rubric's metrics in `Step.info["metrics"]` and `metrics()`. Rubrics with group-level reward functions
cannot score one rollout and fail the session; so does an env whose next prompt is not the conversation
so far plus the policy's turn (one that drops or rewrites history: an episode is one growing text). An
env's `timeout_seconds` counts the policy's time too, as it counts the model's in verifiers.

Errors: an exception raised by the env (`setup_state`, `env_response`, a stop condition, a cleanup), and a
`vf.Error` the rollout recorded in `state["error"]`, fail the session with EnvStepError naming it. Reward
functions that raise are verifiers' own business: its rubric logs them and scores 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from agentic.core import Env, Observation, Step, Task
from agentic.env.registry import EnvSpec, register
from envs.ecosystem._common import as_float, jsonable, load_object

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
MAX_CACHED_ENVS = 8  # verifiers envs built per worker (each may hold a dataset)
_ENVS: OrderedDict[str, Any] = OrderedDict()


def load_env(environment: str, env_args: Mapping[str, Any]) -> Any:
    """The verifiers Environment `environment` names (see the module docstring), cached per worker."""
    key = json.dumps([environment, jsonable(env_args)], sort_keys=True)
    if key in _ENVS:
        _ENVS.move_to_end(key)
        return _ENVS[key]
    import verifiers as vf

    if ":" in environment:
        env = load_object(environment)(**env_args)
    else:
        env = vf.load_environment(environment, **env_args)
    if not isinstance(env, vf.Environment):
        raise TypeError(f"verifiers environment {environment!r} gave {type(env).__name__}, not a vf.Environment")
    _ENVS[key] = env
    while len(_ENVS) > MAX_CACHED_ENVS:
        _ENVS.popitem(last=False)
    return env


def message_text(message: Any) -> str:
    """A verifiers message's content as text (text parts joined); ValueError for images and audio."""
    content = message.get("content") if isinstance(message, Mapping) else getattr(message, "content", None)
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else getattr(part, "type", None)
        if kind != "text":
            raise ValueError(f"verifiers message has a {kind!r} content part; only text is supported")
        texts.append(part["text"] if isinstance(part, Mapping) else part.text)
    return "".join(texts)


def chat_message(message: Any) -> dict[str, str]:
    """A verifiers message as {"role", "content"} (a completion-style "text" message is a user's)."""
    role = message.get("role") if isinstance(message, Mapping) else getattr(message, "role", "user")
    return {"role": "user" if role == "text" else str(role), "content": message_text(message)}


def parse_tool_calls(text: str, turn: int) -> tuple[str, list[dict[str, str]]]:
    """Hermes `<tool_call>` JSON blocks in the model's text as verifiers tool calls; (rest of the text, calls)."""
    calls: list[dict[str, str]] = []

    def take(match: re.Match) -> str:
        try:
            call = json.loads(match.group(1))
        except ValueError:
            return match.group(0)
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return match.group(0)
        arguments = call.get("arguments", {})
        calls.append({"id": f"call_{turn}_{len(calls)}", "name": call["name"],
                      "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)})
        return ""

    rest = _TOOL_CALL.sub(take, text)
    return (rest.strip() if calls else text), calls


def _openai_tool(tool: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": tool.name, "description": tool.description,
                                             "parameters": jsonable(tool.parameters)}}


def _bridge_client(outbox: asyncio.Queue, inbox: asyncio.Queue) -> Any:
    """A verifiers `Client` whose "model" is the policy: each call hands the prompt to the adapter and
    waits for the policy's text."""
    import verifiers as vf
    from verifiers.legacy.clients.client import Client

    class PolicyBridge(Client):
        def setup_client(self, config):
            return None

        async def to_native_tool(self, tool):
            return tool

        async def to_native_prompt(self, messages):
            return messages, {}

        async def get_native_response(self, prompt, model, sampling_args, tools=None, **kwargs):
            raise NotImplementedError

        async def raise_from_native_response(self, response):
            return None

        async def from_native_response(self, response):
            return response

        async def close(self):
            return None

        async def get_response(self, prompt, model, sampling_args, tools=None, **kwargs):
            turn = len(kwargs["state"]["trajectory"]) if kwargs.get("state") is not None else 0
            await outbox.put((list(prompt), list(tools or [])))
            text = await inbox.get()
            content, calls = parse_tool_calls(text, turn)
            message = vf.ResponseMessage(content=content or None, tool_calls=[vf.ToolCall(**c) for c in calls] or None,
                                         finish_reason="tool_calls" if calls else "stop", is_truncated=False)
            return vf.Response(id=f"policy-{turn}", created=int(time.time()), model=model, message=message)

    return PolicyBridge(None)


class VerifiersEnv(Env):
    """One rollout of a verifiers environment (see the module docstring)."""

    def __init__(self, environment: str = "", env_args: dict[str, Any] | None = None,
                 imports: list[str] | tuple[str, ...] = (), model: str = "policy"):
        if not environment:
            raise ValueError("env kwarg 'environment' is required (a verifiers env id, or 'package.module:attr' "
                             "of a load_environment function or Environment class)")
        for module in imports:
            importlib.import_module(module)
        self.environment, self.model = environment, model
        self.env = load_env(environment, dict(env_args or {}))
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.rollout: asyncio.Task | None = None
        self.shown: list[dict[str, str]] = []  # the conversation so far, as the policy was shown it
        self.turns = 0
        self.reward = 0.0
        self.rubric_metrics: dict[str, float] = {}

    def _input(self, task: Task) -> dict[str, Any]:
        if "prompt" in task:
            row = {"prompt": task["prompt"], "example_id": int(task.get("example_id", 0))}
            row.update({k: task[k] for k in ("answer", "info", "task") if k in task})
            return row
        split = task.get("split", "train")
        if split not in ("train", "eval"):
            raise ValueError(f"task split must be 'train' or 'eval', got {split!r}")
        dataset = self.env.get_dataset() if split == "train" else self.env.get_eval_dataset()
        index = int(task.get("index", 0))
        if not 0 <= index < len(dataset):
            raise ValueError(f"task index {index} is outside the {split} dataset of {self.environment!r} "
                             f"({len(dataset)} rows)")
        return dict(dataset[index])

    async def _run(self, row: dict[str, Any]) -> Any:
        env = self.env
        state = await env.rollout(row, _bridge_client(self.outbox, self.inbox), self.model, None)
        if state.get("error") is not None:
            raise RuntimeError(f"verifiers rollout of {self.environment!r} ended with "
                               f"{type(state['error']).__name__}: {state['error']}") from state["error"]
        if env.score_rollouts:
            await env.rubric.score_rollout(state)
        else:
            await env.rubric.dummy_score_rollout(state)
        await env.rubric.cleanup(state)
        return state

    async def _next(self) -> tuple[list[Any] | None, list[Any], Any]:
        """Waits for the env's next model call (its prompt, its tools) or the rollout's end (its state)."""
        call = asyncio.ensure_future(self.outbox.get())
        await asyncio.wait({call, self.rollout}, return_when=asyncio.FIRST_COMPLETED)
        if call.done():
            prompt, tools = call.result()
            return prompt, tools, None
        call.cancel()
        return None, [], self.rollout.result()  # raises what the rollout raised

    async def reset(self, task: Task) -> Observation:
        self.rollout = asyncio.ensure_future(self._run(self._input(task)))
        prompt, tools, _ = await self._next()
        if prompt is None:
            raise RuntimeError(f"verifiers environment {self.environment!r} ended its rollout before the first "
                               "model turn")
        messages = [chat_message(m) for m in prompt]
        self.shown = messages
        info: dict[str, Any] = {"prompt_messages": messages}
        rest = messages
        if rest and rest[0]["role"] == "system":
            info["system"], rest = rest[0]["content"], rest[1:]
        if len(rest) == 1 and rest[0]["role"] == "user":
            text = rest[0]["content"]
        else:
            text = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in rest)
        if tools:
            info["tools"] = [_openai_tool(t) for t in tools]
        max_turns = getattr(self.env, "max_turns", -1)
        if isinstance(max_turns, int) and max_turns > 0:
            info["max_turns"] = max_turns
        return Observation(text=text, info=info)

    def _reply(self, conversation: list[Any]) -> list[dict[str, str]]:
        """The messages after the policy's last turn: the env's reply. The conversation must be the one
        shown so far plus the policy's turn (RuntimeError otherwise: the episode is one growing text)."""
        messages = [chat_message(m) for m in conversation]
        n = len(self.shown)
        same = len(messages) > n and messages[n]["role"] == "assistant" and all(
            a["role"] == b["role"] and (a["role"] == "assistant" or a["content"] == b["content"])
            for a, b in zip(self.shown, messages, strict=False))
        if not same:
            raise RuntimeError(f"verifiers environment {self.environment!r} sent a conversation that does not "
                               f"continue the {n} messages shown so far with the policy's turn: only envs whose "
                               "conversation grows turn by turn can be hosted")
        self.shown = messages
        return messages[n + 1:]

    async def step(self, action: str) -> Step:
        if self.rollout is None or self.rollout.done():
            raise RuntimeError(f"the rollout of verifiers environment {self.environment!r} has ended")
        self.turns += 1
        await self.inbox.put(action)
        prompt, _, state = await self._next()
        if prompt is not None:
            messages = self._reply(prompt)
            return Step(observation="\n".join(m["content"] for m in messages), info={"messages": messages})
        messages = self._reply([*state["prompt"], *(state.get("completion") or [])]) if state.get(
            "completion") is not None else []
        self.reward = as_float(state.get("reward"), f"verifiers rubric reward of {self.environment!r}")
        self.rubric_metrics = {str(k): as_float(v, f"verifiers metric {k!r}")
                               for k, v in (state.get("metrics") or {}).items()}
        info = {"stop_condition": str(state.get("stop_condition")), "is_truncated": bool(state.get("is_truncated")),
                "answer": jsonable(state.get("answer")), "metrics": self.metrics()}
        if messages:
            info["messages"] = messages
        return Step(observation="\n".join(m["content"] for m in messages), reward=self.reward, done=True,
                    truncated=bool(state.get("timed_out")), info=info)

    async def close(self) -> None:
        if self.rollout is not None and not self.rollout.done():
            self.rollout.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.rollout

    def metrics(self) -> dict[str, float]:
        return {**self.rubric_metrics, "turns": float(self.turns), "reward": self.reward}


register(EnvSpec(name="verifiers", factory=VerifiersEnv, max_sessions=20_000, step_deadline_s=60.0, memory_mb=2048,
                 description="a verifiers (PrimeIntellect) environment: its own rollout, the policy as its model",
                 example_task={"index": 0},
                 example_kwargs={"environment": "verifiers:ReasoningGymEnv",
                                 "env_args": {"gym": "basic_arithmetic", "num_train_examples": 8,
                                              "num_eval_examples": 2}}))
