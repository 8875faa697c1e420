"""LLM-as-judge: a prompt that asks a model to grade a response, and a parser for its verdict."""

from __future__ import annotations

import re

JUDGE_TEMPLATE = """You are grading an answer. Read the question{ref_hint}, then the response.
Judge correctness first, then clarity. Explain briefly, then end with a line "Score: N" where N is an
integer from 0 (wrong or useless) to {max_score} (fully correct and clear).

Question:
{prompt}
{reference}
Response:
{response}

Grade:"""

_SCORE = re.compile(r"score\s*[:=]\s*\**\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?))?", re.IGNORECASE)
_FRACTION = re.compile(r"(-?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)")


def judge_prompt(prompt: str, response: str, reference: str | None = None, max_score: int = 10,
                 template: str = JUDGE_TEMPLATE) -> str:
    ref = f"\nReference answer:\n{reference}\n" if reference else ""
    return template.format(prompt=prompt, response=response, reference=ref, max_score=max_score,
                           ref_hint=" and the reference answer" if reference else "")


def parse_score(text: str, max_score: float = 10.0) -> float | None:
    """The judge's score scaled to [0, 1]: the last "Score: N" (or "Score: N/M"), else the last "N/M";
    None when the text has no verdict."""
    found = _SCORE.findall(text)
    if found:
        value, denominator = found[-1]
        scale = float(denominator) if denominator else max_score
    else:
        fractions = _FRACTION.findall(text)
        if not fractions:
            return None
        value, denominator = fractions[-1]
        scale = float(denominator)
    if scale <= 0:
        return None
    return min(1.0, max(0.0, float(value) / scale))
