"""Tool-use math as the training loop sees it (`agentic.core.Experiment`): arithmetic word
problems (`problems.py`) answered through `ToolEnv` with the calculator, rewarded by the math
checker. The cold start's scripted policy calls the calculator with the problem's expression,
then answers with what it returned.
"""

from __future__ import annotations

import json
import re

from agentic.core import Experiment
from envs.tools.problems import word_problems

_CONTENT = re.compile(r'"content":\s*"([^"]*)"')


class CalculateThenAnswer:
    """Turn 1: a calculator call with the task's expression; turn 2: the result as the answer."""

    def __init__(self, task):
        self.expression, self.turn = task["expression"], 0

    def act(self, observation: str) -> str:
        self.turn += 1
        if self.turn == 1:
            call = {"name": "calculator", "arguments": {"expression": self.expression}}
            return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"
        found = _CONTENT.findall(observation)
        return f"<answer>{found[-1] if found else ''}</answer>"


def demo_policy(tasks):
    """Builds an episode's scripted policy from its prompt text (which holds the task's prompt)."""
    by_prompt = {t["prompt"]: t for t in tasks}

    def make(prompt_text: str):
        for text, task in by_prompt.items():
            if text in prompt_text:
                return CalculateThenAnswer(task)
        raise KeyError(f"no task's prompt occurs in {prompt_text[-200:]!r}")

    return make


def experiment(config) -> Experiment:
    d = config.data
    train = word_problems(d.num_train, seed=d.seed)
    held_out = word_problems(d.num_eval, seed=d.seed + 1)
    train_prompts = {t["prompt"] for t in train}
    held_out = [t for t in held_out if t["prompt"] not in train_prompts]
    return Experiment(train_tasks=train, eval_tasks=held_out, demo_policy=demo_policy(train),
                      progress_metrics=("correct", "tool_calls", "tool_errors"))
