"""reasoning-gym arithmetic as the training loop sees it (`agentic.core.Experiment`): entries of
reasoning-gym's `basic_arithmetic` dataset (two terms, + and -), each a single-turn episode of the
`reasoning_gym` adapter kind, scored by the dataset's own `score_answer`. Nobody here wrote the task,
its prompt or its scorer; the cold start's scripted policy answers with the dataset's answer.
"""

from __future__ import annotations

from typing import Any

from agentic.core import Experiment

DATASET = "basic_arithmetic"


def arithmetic_tasks(n: int, seed: int, config: dict[str, Any]) -> list[dict[str, Any]]:
    """`n` tasks of the adapter (dataset, seed, size, index, config), with each entry's question and
    answer (for the cold start's policy; the env reads the entry from reasoning-gym itself)."""
    import reasoning_gym

    dataset = reasoning_gym.create_dataset(DATASET, seed=seed, size=n, **config)
    return [{"dataset": DATASET, "seed": seed, "size": n, "index": i, "config": dict(config),
             "question": dataset[i]["question"], "answer": dataset[i]["answer"]} for i in range(n)]


class AnswerDirectly:
    """The cold start's demonstration: the dataset's answer, in reasoning-gym's answer tags."""

    def __init__(self, task):
        self.answer = task["answer"]

    def act(self, observation: str) -> str:
        return f"<answer>{self.answer}</answer>"


def demo_policy(tasks):
    by_question = {t["question"]: t for t in tasks}

    def make(prompt_text: str):
        for question, task in by_question.items():
            if question in prompt_text:
                return AnswerDirectly(task)
        raise KeyError(f"no task's question occurs in {prompt_text[-200:]!r}")

    return make


def experiment(config) -> Experiment:
    d = config.data
    dataset_config = dict(d.dataset_config)
    train = arithmetic_tasks(d.num_train, d.seed, dataset_config)
    seen = {t["question"] for t in train}
    # reasoning-gym draws entry i from seed + i: the held-out seed starts past every train entry
    held_out = [t for t in arithmetic_tasks(d.num_eval, d.seed + d.num_train + 1_000_003, dataset_config)
                if t["question"] not in seen]
    return Experiment(train_tasks=train, eval_tasks=held_out, demo_policy=demo_policy(train),
                      progress_metrics=("score", "answered"))
