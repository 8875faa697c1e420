"""Scripted policies for the synthetic world: sanity baselines for the env and its data.

`SearchThenAnswer` reads like a careful human: it searches the question, finds the passage of
the entity the question names, reads the first fact off it, searches that entity for 2-hop
questions, reads the second fact and answers. It knows which facts a question chains (the
task's `relations`), never the answer. `NoSearch` answers at once with the most frequent gold
answer of training tasks of the same question type: the best a model can do from priors alone.
Both speak the Search-R1 action format and work with any transport (in process or env host).
"""

from __future__ import annotations

import collections
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from envs.search.world import parse_fact

_DOC = re.compile(r'Doc \d+\(Title: (.*?)\) (.*)')


def parse_docs(observation: str) -> list[str]:
    """The wiki-18 `contents` of every `Doc i(Title: ...) ...` line of an observation."""
    return [f"{m.group(1)}\n{m.group(2)}" for m in _DOC.finditer(observation)]


def _title(contents: str) -> str:
    return contents.partition("\n")[0].strip().strip('"')


class SearchThenAnswer:
    """Answers 1-hop and 2-hop synthetic-world questions by searching, one search per hop."""

    def __init__(self, task: Mapping[str, Any]):
        self.question = str(task["question"])
        self.relations = list(task["relations"])
        self.hop = 0
        self.target: str | None = None  # the entity whose passage the next observation should hold

    def act(self, observation: str) -> str:
        if self.hop == 0 and self.target is None:  # first turn: search the question itself
            self.target = ""
            return f"<think>I need facts about the entity in the question.</think><search> {self.question} </search>"
        docs = parse_docs(observation)
        if self.target:
            doc = next((d for d in docs if _title(d) == self.target), None)
        else:  # the passage whose title the question names (longest, to prefer full names)
            named = [d for d in docs if _title(d) and _title(d) in self.question]
            doc = max(named, key=lambda d: len(_title(d)), default=None)
        value = parse_fact(doc, self.relations[self.hop]) if doc else None
        if value is None:
            return "<think>The search did not tell me.</think><answer> unknown </answer>"
        self.hop += 1
        if self.hop == len(self.relations):
            return f"<think>The passage says it.</think><answer> {value} </answer>"
        self.target = value
        return f"<think>Now I need facts about {value}.</think><search> {value} </search>"


def prior_guesses(train_tasks: Sequence[Mapping[str, Any]]) -> dict[tuple[str, ...], str]:
    """The most frequent gold answer of the training tasks, per question type (`relations`)."""
    counts: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
    for t in train_tasks:
        counts[tuple(t.get("relations", ()))][t["golden_answers"][0]] += 1
    return {k: c.most_common(1)[0][0] for k, c in counts.items()}


class NoSearch:
    """Answers at once with the prior guess (`prior_guesses`) for the question's type."""

    def __init__(self, task: Mapping[str, Any], guesses: Mapping[tuple[str, ...], str]):
        self.answer = guesses.get(tuple(task.get("relations", ())), "unknown")

    def act(self, observation: str) -> str:
        return f"<think>I believe I know this.</think><answer> {self.answer} </answer>"


def policy_for_prompt(tasks: Sequence[Mapping[str, Any]], *, no_search_frac: float = 0.0, seed: int = 0):
    """Builds a scripted policy for an episode from its rendered prompt (for demonstrations).

    The prompt's "Question: ..." line names the task; `tasks` must contain it. A seeded
    `no_search_frac` of the questions get `NoSearch` (answer at once from priors), the rest
    `SearchThenAnswer`: a cold start on such a mix leaves RL a behaviour to learn (that
    searching pays), the one Search-R1 is about.
    """
    if not 0.0 <= no_search_frac <= 1.0:
        raise ValueError(f"no_search_frac must be in [0, 1], got {no_search_frac}")
    by_question = {str(t["question"]).strip(): t for t in tasks}
    guesses = prior_guesses(tasks) if no_search_frac else {}

    def make(prompt: str):
        question = prompt.rsplit("Question:", 1)[-1].strip().split("\n", 1)[0].strip()
        if question not in by_question:
            raise KeyError(f"no task with question {question!r} for a scripted demonstration")
        task = by_question[question]
        draw = random.Random(f"{seed}:{question}").random()
        return NoSearch(task, guesses) if draw < no_search_frac else SearchThenAnswer(task)

    return make
