"""Every registered env passes the conformance suite (agentic.env.conformance)."""

import asyncio

import pytest

from agentic.env import get_spec, names
from agentic.env.conformance import check_env


@pytest.mark.parametrize("name", names())
def test_env_conforms(name):
    problems = asyncio.run(check_env(get_spec(name)))
    assert not problems, "\n".join(problems)


def test_suite_catches_an_env_that_raises_on_garbage():
    from agentic.env import Env, EnvSpec, Observation

    class Fragile(Env):
        async def reset(self, task):
            return Observation(text="go")

        async def step(self, action):
            return int(action)  # raises on text, and returns the wrong type on digits

    problems = asyncio.run(check_env(EnvSpec(name="fragile", factory=Fragile, example_task={})))
    assert any("raised ValueError" in p for p in problems)
    assert "no example_task" in asyncio.run(check_env(EnvSpec(name="bare", factory=Fragile)))[0]
