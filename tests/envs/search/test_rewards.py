"""Exact match and answer extraction on the cases that trip up RL reward code."""

import pytest

from envs.search import rewards
from envs.search.env import PROMPT_TEMPLATE


@pytest.mark.parametrize("pred, gold, match", [
    ("The Beatles", ["Beatles"], True),                      # article dropped
    ("  beatles!!", ["The Beatles."], True),                 # punctuation and spacing
    ("a   Paris,  France", ["paris france"], True),
    ("Théâtre", ["théâtre"], True),                          # non-ASCII lowercased, kept
    ("Theatre", ["Théâtre"], False),                         # ...but not transliterated
    ("São Paulo", ["sao paulo"], False),
    ("1,000", ["1000"], True),                               # commas are punctuation
    ("U.S.A.", ["USA"], True),
    ("New York City", ["New York"], False),                  # no partial credit
    ("anthem", ["them"], False),                             # articles only as whole words
    ("Barack Obama", ["Obama", "barack obama"], True),       # any of several gold answers
    ("", ["x"], False),
    ("Bob", "bob", True),                                     # a bare string is one answer
])
def test_em_check(pred, gold, match):
    assert rewards.em_check(pred, gold) is match


def test_normalize_answer():
    assert rewards.normalize_answer("  The  Quick, Brown fox!  ") == "quick brown fox"
    assert rewards.normalize_answer("An apple a day") == "apple day"
    assert rewards.em_check(None, ["x"]) is False


@pytest.mark.parametrize("action, parsed", [
    ("<think>x</think><search> who is X </search>", ("search", "who is X")),
    ("<think>x</think>\n<answer> Paris </answer>", ("answer", "Paris")),
    ("<answer>\nmulti\nline\n</answer>", ("answer", "multi\nline")),
    # cut after the first </search>: what follows never counts
    ("<search>q1</search> then <answer>a</answer>", ("search", "q1")),
    # ...but an answer before the search does (Search-R1's first-match rule)
    ("<answer>a</answer><search>q1</search>", ("answer", "a")),
    ("<answer>a1</answer> <answer>a2</answer>", ("answer", "a1")),
    ("<think>I will answer now.</think> Paris", (None, "")),
    ("<search>unclosed", (None, "")),
    ("<search>q</answer>", (None, "")),
    ("", (None, "")),
])
def test_parse_action(action, parsed):
    assert rewards.parse_action(action) == parsed


def test_extract_answer_takes_last_and_never_the_prompt_example():
    assert rewards.extract_answer("<answer> a </answer> x <answer> b </answer>") == "b"
    assert rewards.extract_answer("<think>no answer here</think>") is None
    assert rewards.extract_answer("<answer></answer>") == ""
    # The prompt's example answer is never part of what is extracted from.
    prompt = PROMPT_TEMPLATE.format(question="What is the capital of China?")
    assert "<answer> Beijing </answer>" in prompt
    assert rewards.extract_answer("<think>I don't know</think>") is None


GOLD = ["Paris"]
VALID = ("<think>t</think><search>q</search><information>Doc 1 Paris is nice</information>"
         "<think>t</think><answer>Paris</answer>")


@pytest.mark.parametrize("response, answer, expected", [
    (VALID, "Paris", 1.0),                                           # correct, well formed
    ("<answer>Paris</answer>", "Paris", 0.8),                        # correct, no think: 1 - 0.2
    (VALID.replace("<answer>Paris", "<answer>Rome"), "Rome", 0.3),   # wrong, valid, gold was retrieved
    ("<think>t</think><answer>Rome</answer>", "Rome", 0.2),           # wrong, valid, nothing retrieved
    ("Rome <answer>Rome</answer>", "Rome", 0.1),                      # wrong, malformed
    ("<think>t</think> no answer", None, 0.0),                        # no answer, malformed
])
def test_format_reward_matches_search_r1_v03(response, answer, expected):
    assert rewards.format_reward(response, answer, GOLD) == pytest.approx(expected)


def test_is_valid_sequence():
    assert rewards.is_valid_sequence(VALID)
    assert rewards.is_valid_sequence("<think>a</think>\n<answer>b</answer>")
    assert not rewards.is_valid_sequence("<think>a</think><answer>b</answer> trailing")
    assert not rewards.is_valid_sequence("<think>a<think></think><answer>b</answer>")
    assert not rewards.is_valid_sequence("<think>a</think><search>q</search><think>b</think><answer>c</answer>")
