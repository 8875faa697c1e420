"""The actor's episodes, token in / token out, against the real embedded engine (tiny model)."""

import asyncio
import re

import jax
import numpy as np
import pytest

from agentic import models
from agentic.core import Step
from agentic.inference.engine import EngineConfig, JaxEngine
from agentic.rollout.actor import Actor, ActorConfig
from agentic.rollout.episode import EpisodeConfig
from envs.echo.env import EchoEnv


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def engine(tokenizer):
    cfg = models.get_config("tiny").replace(vocab_size=tokenizer.vocab_size)
    eng = JaxEngine(cfg, models.init_params(cfg, jax.random.key(0)), tokenizer,
                    EngineConfig(num_slots=8, max_len=384))
    yield eng
    eng.close_sync()


class FlakyEnv(EchoEnv):
    """Echo whose step fails: the episode's whole group must be dropped."""

    async def step(self, action: str) -> Step:
        raise ConnectionError("sandbox died")


def run_actor(engine, tokenizer, make_env, tasks, **kw):
    groups = []

    async def sink(group):
        groups.append(group)

    cfg = ActorConfig(group_size=2, concurrent_groups=2, episode_timeout_s=120,
                      episode=EpisodeConfig(max_turns=3, max_new_tokens_per_turn=6, max_total_tokens=300,
                                            stop=("</x>",)), **kw)
    actor = Actor(config=cfg, generator=engine, tokenizer=tokenizer, make_env=make_env, tasks=iter(tasks),
                  sink=sink)
    error = None
    try:
        asyncio.run(asyncio.wait_for(actor.run(), 120))
    except RuntimeError as e:
        error = e
    return actor, groups, error


def test_episodes_are_token_exact_and_grouped(engine, tokenizer):
    async def make_env():
        return EchoEnv()

    actor, groups, error = run_actor(engine, tokenizer, make_env, [{"prompt": "say hi", "turns": 2, "id": "t0"},
                                                                    {"prompt": "say yo", "turns": 2, "id": "t1"}])
    assert error is None and len(groups) == 2 and actor.stats()["env_failures"] == 0
    for group in groups:
        assert len(group) == 2 and len({t.group_id for t in group}) == 1
        for traj in group:
            assert traj.reward == 1.0 and traj.metrics["steps"] == 2.0 and len(traj.turn_starts) == 2
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": "say " + ("hi" if traj.task_id == "t0" else "yo")}])
            assert traj.tokens[: traj.prompt_len].tolist() == tokenizer.encode(prompt)
            # Model tokens carry mask 1 and a log-prob; the echoed observation is mask 0, tokenized once.
            first, second = traj.turn_starts
            model1 = traj.tokens[first:][traj.loss_mask[first:] == 1][: 6]
            assert traj.loss_mask[: traj.prompt_len].sum() == 0
            assert np.all(traj.behavior_logprobs[traj.loss_mask == 0] == 0)
            assert np.all(traj.behavior_logprobs[traj.loss_mask == 1] <= 0)
            n1 = int(traj.loss_mask[first:second].sum())
            obs = traj.tokens[first + n1: second].tolist()
            assert traj.loss_mask[first + n1: second].sum() == 0
            assert obs == tokenizer.encode(tokenizer.decode(model1[:n1].tolist(), skip_special_tokens=True))
            assert traj.policy_version == engine.weight_version


def test_env_failure_drops_the_whole_group_and_counts_it(engine, tokenizer):
    made = []

    async def make_env():
        made.append(1)
        return FlakyEnv() if len(made) == 2 else EchoEnv()  # one episode of the first group fails

    actor, groups, error = run_actor(engine, tokenizer, make_env, [{"prompt": "a"}, {"prompt": "b"}])
    assert error is None
    assert len(groups) == 1 and actor.stats()["failures/ConnectionError"] == 1


def test_dead_backend_stops_the_actor_with_the_cause(engine, tokenizer):
    async def make_env():
        return FlakyEnv()

    actor, groups, error = run_actor(engine, tokenizer, make_env, [{"prompt": "a"}] * 50,
                                     max_consecutive_failures=3)
    assert groups == [] and error is not None
    # Groups in flight when the limit is reached may add to the count.
    assert re.search(r"\b([3-9]|\d\d+) groups in a row failed", str(error)) and "sandbox died" in str(error)
