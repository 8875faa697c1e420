"""The reward-model env: a judge model scores the policy's response (LLM-as-judge)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentic.core import (
    Env,
    GenerateRequest,
    Generator,
    GeneratorError,
    Observation,
    SamplingParams,
    Step,
    Task,
)
from envs.reward_model.backends import TextCodec, judge_backend
from envs.reward_model.judge import JUDGE_TEMPLATE, judge_prompt, parse_score


class RewardModelEnv(Env):
    """Single-step: the observation is the task's prompt; the action (the response) is graded by a
    judge reached through the `Generator` protocol, and the parsed score in [0, 1] is the reward.

    Task: `{"prompt": str, "reference": str (optional)}`. A judge reply without a parsable score gives
    reward 0 and `info["judge_parse_error"] = True`; a judge that cannot be reached raises
    (`GeneratorError`), which the host reports as an env error for this episode.

    Args:
        generator, codec: the judge model and its tokenizer (encode/decode).
        max_score: the top of the judge's scale in the prompt.
        max_new_tokens: the judge's budget for its explanation and verdict.
        template: the judge prompt (`judge.JUDGE_TEMPLATE` fields).
    """

    def __init__(self, generator: Generator, codec: TextCodec, *, max_score: int = 10, max_new_tokens: int = 256,
                 template: str = JUDGE_TEMPLATE):
        self.generator, self.codec = generator, codec
        self.max_score, self.max_new_tokens, self.template = max_score, max_new_tokens, template
        self.prompt, self.reference = "", None
        self.score: float | None = None

    async def reset(self, task: Task) -> Observation:
        if "prompt" not in task:
            raise ValueError("reward_model task needs 'prompt'")
        self.prompt, self.reference = str(task["prompt"]), task.get("reference")
        return Observation(text=self.prompt)

    async def step(self, action: str) -> Step:
        text = judge_prompt(self.prompt, action, self.reference, self.max_score, self.template)
        request = GenerateRequest(prompt_ids=self.codec.encode(text),
                                  params=SamplingParams(max_new_tokens=self.max_new_tokens, temperature=0.0))
        completion = await self.generator.generate_one(request)
        if completion.finish_reason == "abort":
            raise GeneratorError("the judge aborted the request")
        verdict = completion.text if completion.text is not None else self.codec.decode(completion.token_ids)
        self.score = parse_score(verdict, self.max_score)
        info: dict[str, Any] = {"judge": verdict[-2000:], "metrics": self.metrics()}
        if self.score is None:
            info["judge_parse_error"] = True
        return Step(observation="", reward=self.score or 0.0, done=True, info=info)

    def metrics(self) -> dict[str, float]:
        return {"judge_score": float(self.score or 0.0), "judge_parsed": float(self.score is not None)}


def make_reward_model_env(backend: str = "fixed", backend_kwargs: Mapping[str, Any] | None = None,
                          **env_kwargs: Any) -> RewardModelEnv:
    """Registry factory: env kwargs are JSON, so the judge is named by backend (see `backends`)."""
    generator, codec = judge_backend(backend, **dict(backend_kwargs or {}))
    return RewardModelEnv(generator, codec, **env_kwargs)
