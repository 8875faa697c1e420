"""The reward-model env against the real embedded JAX engine (a tiny random model, so the verdict is
noise): the plumbing — judge prompt in as token ids, completion text out, score parsed or flagged —
works end to end through the Generator protocol, not only with the fake judge."""

import asyncio

import jax
import pytest

from agentic import models
from agentic.core import GenerateRequest, SamplingParams
from agentic.inference.engine import EngineConfig, JaxEngine
from envs.reward_model.backends import ByteCodec
from envs.reward_model.env import RewardModelEnv
from envs.reward_model.judge import judge_prompt, parse_score


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
    # The reward is what the engine's own reply determines: its greedy completion of the judge
    # prompt, decoded and parsed (0 and a flag when it holds no score).
    want = JaxEngine(config, params, ByteTokenizer(), EngineConfig(num_slots=1, max_len=1024, prefill_chunk=1024,
                                                                   min_prefill_bucket=1024))
    prompt = judge_prompt("What is 2 + 2?", "4", "4", 10)
    reply = asyncio.run(want.generate_one(GenerateRequest(
        prompt_ids=ByteCodec().encode(prompt), params=SamplingParams(max_new_tokens=8, temperature=0.0))))
    want.close_sync()
    text = reply.text if reply.text is not None else ByteCodec().decode(reply.token_ids)
    assert step.done and step.info["judge"] == text[-2000:]
    score = parse_score(text)
    assert step.reward == (score or 0.0)
    assert step.info.get("judge_parse_error", False) == (score is None)
