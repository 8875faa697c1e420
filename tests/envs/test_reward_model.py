"""The reward-model env grades through the Generator protocol (a fake generator stands in for the engine)."""

import asyncio

import pytest

from agentic.core import Completion, Generator
from envs.reward_model.backends import ByteCodec
from envs.reward_model.env import RewardModelEnv, make_reward_model_env
from envs.reward_model.judge import judge_prompt, parse_score


class FakeJudge(Generator):
    """Scores 9 when the response mentions the reference, else 2; remembers the prompts it saw."""

    def __init__(self):
        self.prompts, self.requests = [], []

    async def generate(self, requests):
        out = []
        for r in requests:
            self.requests.append(r)
            prompt = ByteCodec().decode(r.prompt_ids)
            self.prompts.append((prompt, r.params))
            response = prompt.split("Response:\n", 1)[1]
            text = "Correct. Score: 9" if "Paris" in response else "Wrong city.\nScore: 2/10"
            ids = tuple(text.encode())
            out.append(Completion(token_ids=ids, logprobs=(0.0,) * len(ids), finish_reason="stop"))
        return out


def grade(judge, response, task=None):
    async def episode():
        env = RewardModelEnv(judge, ByteCodec())
        obs = await env.reset(task or {"prompt": "Capital of France?", "reference": "Paris"})
        return obs, await env.step(response)
    return asyncio.run(episode())


def test_judge_score_becomes_the_reward():
    judge = FakeJudge()
    obs, good = grade(judge, "It is Paris.")
    _, bad = grade(judge, "Lyon")
    assert obs.text == "Capital of France?"
    assert good.done and good.reward == pytest.approx(0.9) and bad.reward == pytest.approx(0.2)
    prompt, params = judge.prompts[0]
    assert "Reference answer:\nParis" in prompt and "It is Paris." in prompt and params.temperature == 0.0


def test_unparsable_verdict_gives_zero_and_a_flag():
    class Mumbler(FakeJudge):
        async def generate(self, requests):
            ids = tuple(b"hmm, hard to say")
            return [Completion(token_ids=ids, logprobs=(0.0,) * len(ids), finish_reason="stop") for _ in requests]

    _, step = grade(Mumbler(), "Paris")
    assert step.reward == 0.0 and step.info["judge_parse_error"] is True


def test_parse_score_forms_and_registry_backend():
    assert parse_score("Score: 7") == 0.7 and parse_score("**Score:** 3/5") == 0.6
    assert parse_score("I give it 8/10") == 0.8 and parse_score("no verdict") is None
    assert parse_score("Score: 15") == 1.0
    env = make_reward_model_env(backend="fixed", backend_kwargs={"reply": "Score: 5"})
    asyncio.run(env.reset({"prompt": "q"}))
    assert asyncio.run(env.step("a")).reward == 0.5
    with pytest.raises(KeyError, match="unknown judge backend"):
        make_reward_model_env(backend="nope")


def test_generate_request_is_token_in():
    """What the judge was sent: the judge prompt as token ids (the codec's), greedy, with its budget."""
    judge = FakeJudge()
    grade(judge, "Paris")
    (request,) = judge.requests
    expected = judge_prompt("Capital of France?", "Paris", "Paris", 10)
    assert list(request.prompt_ids) == ByteCodec().encode(expected)
    assert all(type(t) is int for t in request.prompt_ids)
    assert request.params.temperature == 0.0 and request.params.max_new_tokens == 256
