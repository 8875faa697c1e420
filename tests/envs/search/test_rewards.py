"""Exact match and answer extraction on the cases that trip up RL reward code."""

import asyncio
import re

import pytest

from envs.search import rewards
from envs.search.batching import MicroBatcher
from envs.search.env import INVALID_ACTION, PROMPT_TEMPLATE, SearchR1Config, SearchR1Env


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


class _Retriever:
    corpus = []

    def batch_search(self, queries, topk):
        return [[{"document": {"id": "0", "contents": '"T"\nThe capital is somewhere.'}, "score": 1.0}]
                for _ in queries]


def _search_r1_extract(text):
    # Search-R1's extract_solution (qa_em.py, qa_em_format.py): last <answer>(.*?)</answer> match of
    # prompt + response, None when there are fewer than two matches.
    matches = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    return matches[-1].strip() if len(matches) >= 2 else None


@pytest.mark.parametrize("reward", ["em", "em_format"])
@pytest.mark.parametrize("actions, search_r1_answer, search_r1_em, search_r1_v03", [
    # search, then a final turn that only thinks: the last pair is the prompt's example
    (["<think>look it up</think><search> capital of China </search>", "<think>Beijing, like the example</think>"],
     "Beijing", 1.0, 0.8),
    # an invalid action first: the last pair is the invalid-action message's "<answer> and </answer>"
    (["I guess.", "<think>no idea</think>"], "and", 0.0, 0.1),
])
def test_episode_whose_only_answer_tags_are_the_prompts_scores_zero(reward, actions, search_r1_answer,
                                                                   search_r1_em, search_r1_v03):
    """The gold answer is the prompt's own example; the model never writes an <answer> pair."""
    env = SearchR1Env(SearchR1Config(max_turns=1, reward=reward),
                      batcher=MicroBatcher(_Retriever(), max_wait_ms=0))
    task = {"question": "What is the capital of China?", "golden_answers": ["Beijing"]}

    async def play():
        obs = await env.reset(task)
        return obs.text, [await env.step(a) for a in actions]

    prompt, steps = asyncio.run(play())
    # Two pairs in Search-R1's prompt ("inside <answer> and </answer>", the example), one in its message.
    assert re.findall(r"<answer>(.*?)</answer>", prompt) == [" and ", " Beijing "]
    assert re.findall(r"<answer>(.*?)</answer>", INVALID_ACTION) == [" and "]
    last = steps[-1]
    assert last.done and last.truncated
    # Ours: no answer of the model's -> EM 0, and format reward 0 (no answer, malformed sequence).
    assert (last.reward, last.info["answer"], env.metrics()["em"]) == (0.0, None, 0.0)
    # Search-R1 scores the decoded prompt + response (model turns and observations):
    response = "".join(a + s.observation for a, s in zip(actions, steps, strict=True))
    assert _search_r1_extract(prompt + response) == search_r1_answer
    # ...so qa_em gives EM("Beijing") = 1 or EM("and") = 0, and qa_em_format with the v0.3 scores
    # (structure 0.2, final 0.1) gives 1 - 0.2 = 0.8 (EM hit, malformed) or final_format_score 0.1.
    # (format_reward is qa_em_format's compute_score_em on a given answer: tested above)
    assert rewards.em_check(search_r1_answer, task["golden_answers"]) == bool(search_r1_em)
    assert not rewards.is_valid_sequence(response)
    v03 = rewards.format_reward(response, search_r1_answer, task["golden_answers"], structure_format_score=0.2,
                                final_format_score=0.1, retrieval_score=0.0)
    assert v03 == pytest.approx(search_r1_v03)
