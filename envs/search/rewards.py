"""Search-R1 answer extraction and rewards: exact match (EM) and the v0.3 format reward.

Normalization is the SQuAD one Search-R1 uses: lowercase, drop ASCII punctuation, drop the
articles a/an/the, collapse whitespace. Non-ASCII characters are kept as they are (so "Zürich"
matches "zürich" but not "Zurich"), exactly as in Search-R1's `normalize_answer`.

Extraction differs from Search-R1's on purpose. Search-R1's `extract_solution` (qa_em.py and
qa_em_format.py) runs `<answer>(.*?)</answer>` over the decoded prompt + response and returns
the last match, or None when there are fewer than two. Its prompt already holds two pairs: the
instruction "the answer inside <answer> and </answer>" and the example "<answer> Beijing
</answer>"; each invalid-action message in the response adds one more ("between <answer> and
</answer>"). So its extraction is never None, and an episode in which the model never answers
is scored on "Beijing" (no invalid action) or on "and" (after an invalid action): qa_em gives 1
if a gold answer normalizes to "beijing" (or "and"), else 0; qa_em_format (v0.3) sees no final
`</answer>` of the model's, so the sequence is malformed, and gives `final_format_score` (0.1 in
the v0.3 scripts), or `score - structure_format_score` (0.8) on that EM hit. Its `answer is None`
branches are never reached.

Here the answer comes from the model's own text only (`parse_action` on each turn; give
`extract_answer` model text only, never the prompt or observations), so one `<answer>` is enough
and neither the prompt's pairs nor the env's messages can count: an episode without a model
answer gets EM 0 and format reward 0 (Search-R1's rule for no answer and a malformed sequence).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ACTION = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)
_TAG = re.compile(r"(</?(?:think|search|information|answer)>)")


def normalize_answer(text: str) -> str:
    """SQuAD-style normalization: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def em_check(prediction: str | None, golden_answers: str | Iterable[str]) -> bool:
    """True if the normalized prediction equals any normalized gold answer."""
    if prediction is None:
        return False
    if isinstance(golden_answers, str):
        golden_answers = [golden_answers]
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(g) for g in golden_answers)


def parse_action(text: str) -> tuple[str | None, str]:
    """Parses one model turn the way Search-R1's generation loop does.

    The turn is cut after the first `</search>` if there is one, else after the first
    `</answer>`; then the first `<search>…</search>` or `<answer>…</answer>` decides.

    Returns:
        ("search", query) / ("answer", answer) with the content stripped, or (None, "") for an
        invalid action.
    """
    if "</search>" in text:
        text = text.split("</search>", 1)[0] + "</search>"
    elif "</answer>" in text:
        text = text.split("</answer>", 1)[0] + "</answer>"
    m = _ACTION.search(text)
    if m is None:
        return None, ""
    return m.group(1), m.group(2).strip()


def extract_answer(response: str) -> str | None:
    """The last `<answer>…</answer>` of the model's own text, stripped (None if there is none).

    Pass model text only: the prompt has two `<answer>` pairs and the invalid-action
    observation one (see the module docstring).
    """
    matches = _ANSWER.findall(response)
    return matches[-1].strip() if matches else None


def is_valid_sequence(response: str) -> bool:
    """Search-R1 v0.3 structure check on a response (everything after the prompt).

    Valid: `<think>…</think>` then either `<search>…</search><information>…</information>` and
    another think, or `<answer>…</answer>` to finish; only whitespace between blocks; every tag
    balanced.
    """
    for tag in ("think", "search", "information", "answer"):
        if response.count(f"<{tag}>") != response.count(f"</{tag}>"):
            return False
    transitions = {
        ("start", "<think>"): "in_think", ("information", "<think>"): "in_think",
        ("in_think", "</think>"): "after_think",
        ("after_think", "<search>"): "in_search", ("in_search", "</search>"): "after_search",
        ("after_search", "<information>"): "in_information",
        ("in_information", "</information>"): "information",
        ("after_think", "<answer>"): "in_answer", ("in_answer", "</answer>"): "end",
    }
    state = "start"
    for part in _TAG.split(response):
        if not part.strip():
            continue
        if _TAG.fullmatch(part):
            state = transitions.get((state, part))
            if state is None:
                return False
        elif state not in ("in_think", "in_search", "in_information", "in_answer"):
            return False
    return state == "end"


def _information_blocks(response: str) -> list[str]:
    return [b.strip() for b in re.findall(r"<information>(.*?)</information>", response, re.DOTALL)]


def retrieval_hit(response: str, golden_answers: Sequence[str]) -> bool:
    """True if some normalized gold answer occurs in a normalized `<information>` block."""
    blocks = [normalize_answer(b) for b in _information_blocks(response)]
    golds = [normalize_answer(g) for g in golden_answers]
    return any(g in b for b in blocks for g in golds)


def format_reward(
    response: str,
    answer: str | None,
    golden_answers: Sequence[str],
    *,
    structure_format_score: float = 0.2,
    final_format_score: float = 0.1,
    retrieval_score: float = 0.1,
    score: float = 1.0,
) -> float:
    """Search-R1 v0.3 `compute_score_em` (qa_em_format.py) on our extracted answer.

    correct & well-formed: score; correct & malformed: score - structure_format_score;
    wrong or missing & well-formed: structure_format_score (+ retrieval_score if a gold answer
    was retrieved); wrong & malformed: final_format_score; missing & malformed: 0.
    """
    valid = is_valid_sequence(response)
    retrieved = valid and retrieval_hit(response, golden_answers)
    if answer is not None and em_check(answer, golden_answers):
        return score if valid else score - structure_format_score
    if valid:
        return structure_format_score + (retrieval_score if retrieved else 0.0)
    return final_format_score if answer is not None else 0.0
