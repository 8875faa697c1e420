"""Arithmetic word problems for tool-use experiments: seeded, with the gold answer and the
expression that computes it (which a scripted calculator policy uses for demonstrations).

Each template is one or two operations over 2- to 3-digit numbers, beyond what a small
model computes reliably in its head, so calling the calculator pays.
"""

from __future__ import annotations

import random
from typing import Any

_TEMPLATES = (
    ("A shop has {a} boxes with {b} apples in each box. How many apples does the shop have?", "{a} * {b}"),
    ("A train travels {a} kilometres on each of {b} days. How many kilometres does it travel in total?",
     "{a} * {b}"),
    ("A library had {a} books and received {b} more, then lent out {c}. How many books are left?",
     "{a} + {b} - {c}"),
    ("A farmer packs {a} eggs into cartons of {b}. How many full cartons does he get?", "{a} // {b}"),
    ("Tickets cost {b} dollars each. How much do {a} tickets cost, in dollars?", "{a} * {b}"),
    ("A tank holds {a} litres. {b} litres are used on each of {c} days. How many litres remain?",
     "{a} - {b} * {c}"),
)


def _numbers(rng: random.Random, expression: str) -> dict[str, int]:
    while True:
        a, b, c = rng.randint(12, 999), rng.randint(12, 99), rng.randint(2, 9)
        if "//" in expression:
            a = b * rng.randint(11, 99) + rng.randint(0, b - 1)
        values = {"a": a, "b": b, "c": c}
        if _evaluate(expression.format(**values)) >= 0:
            return values


def _evaluate(expression: str) -> int:
    from envs.math.checker import safe_eval

    return int(safe_eval(expression))


def word_problems(count: int, seed: int) -> list[dict[str, Any]]:
    """`count` distinct problems: {"id", "prompt", "answer", "expression"} (the calculator's input)."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < count:
        template, expression = rng.choice(_TEMPLATES)
        values = _numbers(rng, expression)
        prompt = template.format(**values)
        if prompt in seen:
            continue
        seen.add(prompt)
        expr = expression.format(**values)
        out.append({"id": f"p{seed}-{len(out)}", "prompt": prompt, "answer": str(_evaluate(expr)), "expression": expr})
    return out
