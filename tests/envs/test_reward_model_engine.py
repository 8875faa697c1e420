"""The reward-model env against the real embedded JAX engine (a tiny random model, so the verdict is
noise): the plumbing — judge prompt in as token ids, completion text out, score parsed or flagged —
works end to end through the Generator protocol, not only with the fake judge."""

import asyncio

import jax
import pytest

from agentic import models
from agentic.inference.engine import EngineConfig, JaxEngine
from envs.reward_model.backends import ByteCodec
from envs.reward_model.env import RewardModelEnv


class ByteTokenizer(ByteCodec):
    eos_token_id = 256
    pad_token_id = 257

    def encode(self, text, add_special_tokens=False):
        return super().encode(text)

    def decode(self, ids, skip_special_tokens=False):
        return super().decode(ids)


@pytest.mark.slow
def test_reward_model_env_with_the_jax_engine():
    config = models.get_config("tiny")
    params = models.init_params(config, jax.random.key(0))
    engine = JaxEngine(config, params, ByteTokenizer(),
                       EngineConfig(num_slots=2, max_len=1024, prefill_chunk=1024, min_prefill_bucket=1024))

    async def episode():
        env = RewardModelEnv(engine, ByteCodec(), max_new_tokens=8)
        await env.reset({"prompt": "What is 2 + 2?", "reference": "4"})
        step = await env.step("4")
        await engine.close()
        return step

    step = asyncio.run(episode())
    assert step.done and 0.0 <= step.reward <= 1.0
    assert isinstance(step.info["judge"], str)
    assert step.info.get("judge_parse_error", False) == (step.info["metrics"]["judge_parsed"] == 0.0)
