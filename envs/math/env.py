"""The math env: one question, one answer, a rule-based reward."""

from __future__ import annotations

from agentic.core import Env, Observation, Step, Task
from envs.math.checker import extract_answer, is_equivalent


class MathEnv(Env):
    """Single-step: the model answers, the checker compares the extracted answer with the gold one.

    Task: `{"question": str, "answer": str | list[str]}` (several golds = any matches). Reward 1 for
    a correct answer, else 0; `format_reward` (env kwarg) is given instead of 0 when an answer was
    found but is wrong. `info` has the extracted answer.
    """

    def __init__(self, format_reward: float = 0.0):
        self.format_reward = float(format_reward)
        self.golds: list[str] = []
        self.correct = self.answered = False

    async def reset(self, task: Task) -> Observation:
        if "question" not in task or "answer" not in task:
            raise ValueError("math task needs 'question' and 'answer'")
        gold = task["answer"]
        self.golds = [str(g) for g in gold] if isinstance(gold, (list, tuple)) else [str(gold)]
        text = f"{task['question']}\n\nPut your final answer in \\boxed{{}}."
        return Observation(text=text)

    async def step(self, action: str) -> Step:
        predicted = extract_answer(action)
        self.answered = predicted is not None
        self.correct = any(is_equivalent(predicted, g) for g in self.golds)
        reward = 1.0 if self.correct else (self.format_reward if self.answered else 0.0)
        return Step(observation="", reward=reward, done=True,
                    info={"extracted": predicted, "correct": self.correct, "metrics": self.metrics()})

    def metrics(self) -> dict[str, float]:
        return {"correct": float(self.correct), "answered": float(self.answered)}
