"""The rule-based math checker: extraction and equivalence as a grader would judge them."""

import asyncio

import pytest

from envs.math.checker import extract_answer, is_equivalent, safe_eval
from envs.math.env import MathEnv


@pytest.mark.parametrize("response, gold, correct", [
    ("so the total is \\boxed{\\frac{3}{4}}.", "0.75", True),
    ("The answer is 1,000.", "1000", True),
    ("<answer>x = 5</answer>", "5", True),
    ("#### 42", "42", True),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),
    ("\\boxed{2\\pi}", "6.283185307", True),
    ("\\boxed{\\dfrac{1}{3}}", "\\frac13", True),
    ("\\boxed{50\\%}", "50", True),
    ("\\boxed{(1, 2)}", "(1,2)", True),
    ("\\boxed{(1, 3)}", "(1,2)", False),
    ("I think it is 7", "8", False),
    ("no idea", "1", False),
])
def test_checker(response, gold, correct):
    assert is_equivalent(extract_answer(response), gold) is correct


def test_nested_boxed_and_safe_eval_refuses_code():
    assert extract_answer("first \\boxed{1} then \\boxed{\\frac{a}{b+{c}}}") == "\\frac{a}{b+{c}}"
    assert safe_eval("2**10 / 4 + sqrt(16)") == 260
    with pytest.raises(ValueError):
        safe_eval("__import__('os').system('true')")


def test_math_env_single_step_reward():
    async def episode(answer):
        env = MathEnv()
        await env.reset({"question": "2+2?", "answer": ["4", "four"]})
        return await env.step(answer)

    right, wrong = asyncio.run(episode("It is \\boxed{4}")), asyncio.run(episode("\\boxed{5}"))
    assert right.done and right.reward == 1.0 and right.info["extracted"] == "4"
    assert wrong.reward == 0.0 and wrong.info["correct"] is False


def test_hostile_answers_are_refused_quickly_and_never_raise():
    """Issue 31: answers the checker evaluates cannot crash the env (OverflowError) or stall it (huge ints)."""
    import time

    start = time.monotonic()
    assert not is_equivalent("10**400", "1")  # float(10**400) overflowed out of the checker
    assert not is_equivalent("*".join(["999**999"] * 300), "1")  # a 900,000-digit product took seconds
    assert not is_equivalent("1" + "+1" * 5000, "5001")  # too long to evaluate: text only
    assert time.monotonic() - start < 1.0
    assert is_equivalent("2**10", "1024") and is_equivalent("\\frac{3}{4}", "0.75")  # ordinary answers still match
