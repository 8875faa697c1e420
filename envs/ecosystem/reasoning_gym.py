"""reasoning-gym's procedural datasets as single-turn tasks: the question in, one answer out, scored by
the dataset's own `score_answer`.

    python -m agentic.env.host --envs reasoning_gym --import envs.ecosystem.reasoning_gym

Task: `{"dataset": "basic_arithmetic", "index": 3, "seed": 1, "size": 500, "config": {...}}`: entry `index`
of `reasoning_gym.create_dataset(dataset, seed=seed, size=size, **config)` (built once per worker and
cached), or `{"dataset": ..., "entry": {"question", "answer", "metadata"}}` for an entry made elsewhere.
The observation is the question and an instruction to answer in `<answer>...</answer>` (reasoning-gym's
own `extract_answer` reads it back; the "simple" system prompt of `reasoning_gym.utils.SYSTEM_PROMPTS`
goes to `Observation.info["system"]`); the step's reward is `score_answer(answer, entry)` in [0, 1] and
the episode ends. Deterministic: the same task gives the same question and score.

Env kwargs: `imports` (modules to import first, e.g. one that calls `reasoning_gym.register_dataset` for
a dataset of your own), `answer_tag` ("answer"; "" scores the whole reply as the answer).
"""

from __future__ import annotations

import functools
import importlib
import json
from typing import Any

from agentic.core import Env, Observation, Step, Task
from agentic.env.registry import EnvSpec, register
from envs.ecosystem._common import as_float, jsonable

INSTRUCTION = "\n\nGive only your final answer, inside <answer></answer>."


@functools.lru_cache(maxsize=64)
def _dataset(name: str, seed: int | None, size: int, config_json: str) -> Any:
    import reasoning_gym  # imported on first use: a host that serves other kinds never loads it

    return reasoning_gym.create_dataset(name, seed=seed, size=size, **json.loads(config_json))


class ReasoningGymEnv(Env):
    """One reasoning-gym entry as a single-turn episode (see the module docstring)."""

    def __init__(self, imports: list[str] | tuple[str, ...] = (), answer_tag: str = "answer"):
        for module in imports:
            importlib.import_module(module)
        self.answer_tag = answer_tag
        self.dataset: Any = None
        self.entry: dict[str, Any] = {}
        self.score = 0.0
        self.answered = False

    async def reset(self, task: Task) -> Observation:
        name = task.get("dataset")
        if not isinstance(name, str) or not name:
            raise ValueError(f"reasoning_gym task needs 'dataset' (a registered reasoning-gym dataset name), got {name!r}")
        config = task.get("config", {})
        if not isinstance(config, dict):
            raise ValueError(f"reasoning_gym task 'config' must be an object, got {config!r:.100}")
        size = int(task.get("size", 1000))
        self.dataset = _dataset(name, task.get("seed"), size, json.dumps(config, sort_keys=True))
        if "entry" in task:
            self.entry = dict(task["entry"])
        else:
            index = int(task.get("index", 0))
            if not 0 <= index < size:
                raise ValueError(f"reasoning_gym task index {index} is outside [0, {size}) (the dataset's size)")
            self.entry = self.dataset[index]
        from reasoning_gym.utils import SYSTEM_PROMPTS

        text = str(self.entry["question"]) + (INSTRUCTION.replace("answer", self.answer_tag) if self.answer_tag else "")
        info = {"system": SYSTEM_PROMPTS["simple"], "max_turns": 1}
        if self.answer_tag:
            info["stop"] = [f"</{self.answer_tag}>"]
        return Observation(text=text, info=info)

    async def step(self, action: str) -> Step:
        from reasoning_gym.utils import extract_answer

        answer = extract_answer(action, tag_name=self.answer_tag) if self.answer_tag else action.strip()
        self.score = as_float(self.dataset.score_answer(answer, self.entry), "reasoning-gym score_answer")
        self.answered = answer is not None
        return Step(observation="", reward=self.score, done=True,
                    info={"answer": answer, "expected": jsonable(self.entry.get("answer")),
                          "metrics": self.metrics()})

    def metrics(self) -> dict[str, float]:
        return {"score": self.score, "answered": float(self.answered)}


register(EnvSpec(name="reasoning_gym", factory=ReasoningGymEnv, max_sessions=20_000, step_deadline_s=30.0,
                 memory_mb=1024, deterministic=True,
                 description="reasoning-gym datasets as single-turn tasks, scored by the dataset's score_answer",
                 example_task={"dataset": "basic_arithmetic", "index": 0, "seed": 1, "size": 10}))
