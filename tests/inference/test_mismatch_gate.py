"""The mismatch gate: the engine's sampled-token log-probs equal the learner's, per dtype.

Real multi-turn episodes (the actor, the embedded engine, the echo env, SmolLM2's tokenizer
and chat template on a tiny random model), in continuation and chat mode, float32 and
bfloat16: the engine samples with its KV cache, prefix sharing across a group's episodes,
session prefix reuse between turns, prompts prefilled in chunks, batched decode. The
learner recomputes every model token's log-prob from the whole sequence the way it trains
(`mismatch.recompute`: shift, pack, `policy_outputs`) with the same weights and dtype.

Tolerance, from the dtype: both sides round the same ops to the same precision but group
them differently (KV cache vs full sequence, chunk and batch shapes), so each logit may be
off by a few units of the dtype's rounding. A log-prob is a logit minus the log-partition,
so |d logp| <= 2 max |d logit|, and we allow 16 ulp of the largest logit magnitude:

    tol(dtype) = 2 * 16 * eps(dtype) * max|logit|     eps: 2^-23 (f32), 2^-7 (bf16)

Numbers (BUILD.md, "Sampler/learner agreement") are printed with -s.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from agentic import models
from agentic.inference.engine import EngineConfig, JaxEngine
from agentic.learner import mismatch
from agentic.rollout.episode import EpisodeConfig
from tests.inference.echo_episodes import run_echo_episodes

# a long instruction shared by every task: group samples and tasks share its prefix (copied slot to
# slot), and at 16 tokens per prefill chunk every first turn is prefilled in several chunks
INSTRUCTION = ("You are a careful assistant. Answer in one short line, then stop. Repeat the user's words "
               "back when asked, and keep your answer brief: ")
ENGINE = EngineConfig(num_slots=8, max_len=256, prefill_chunk=16, max_prefill_batch=4, min_prefill_bucket=16,
                      min_decode_kv=256,  # one prefill token bucket and one decode window: few compilations
                      share_prefix_min=8, seed=0)
TEMPERATURE = 0.9


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def model(tokenizer):
    config = models.get_config("tiny").replace(vocab_size=tokenizer.vocab_size)
    params = models.init_params(config, jax.random.key(1))
    # scaled so the logits spread like a trained model's (|logit| of a few tens), not near-uniform
    return config, jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, params)


def run_episodes(engine, tokenizer, mode: str):
    episode = EpisodeConfig(mode=mode, max_turns=3, max_new_tokens_per_turn=12, max_total_tokens=240,
                            temperature=TEMPERATURE)
    return [t for g in run_echo_episodes(engine, tokenizer, episode, INSTRUCTION) for t in g]


def max_logit(config, params, trajectories) -> float:
    t = trajectories[0]
    logits, _ = models.forward(config, params, jnp.asarray(t.tokens)[None], jnp.arange(len(t))[None])
    return float(jnp.max(jnp.abs(logits)))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_engine_and_learner_logprobs_agree(model, tokenizer, dtype):
    config, params = model
    config = config.replace(dtype=dtype)
    engine = JaxEngine(config, params, tokenizer, ENGINE)
    try:
        results = {mode: run_episodes(engine, tokenizer, mode) for mode in ("continuation", "chat")}
        stats = dict(engine.core.stats)
    finally:
        engine.close_sync()
    # every engine path ran: chunked prefill, prefix copies across sessions, session reuse, decode
    assert stats["shared_copies"] > 0 and stats["cached_tokens"] > 0 and stats["decode_steps"] > 0
    assert stats["completed"] == 2 * 2 * 4 * 3  # 2 modes x 2 tasks x 4 samples x 3 turns
    # the first prompt (nothing cached yet) is prefilled in chunks of 16
    assert min(t.prompt_len for trajs in results.values() for t in trajs) > 2 * ENGINE.prefill_chunk
    print(f"\nengine paths ({dtype}): {stats}")
    eps = float(jnp.finfo(jnp.dtype(dtype)).eps)
    for mode, trajs in results.items():
        assert len(trajs) == 8 and all(len(t.turn_starts) == 3 for t in trajs)
        rep = mismatch.recompute(config, params, trajs, temperature=TEMPERATURE, seq_buckets=(256,))
        tol = 2 * 16 * eps * max_logit(config, params, trajs)
        print(f"\n{dtype} {mode}: {rep.tokens} model tokens, max |engine - learner| logp {rep.max_abs:.3g} "
              f"(tol {tol:.3g}), KL(sampler||learner) {rep.kl:.3g}")
        assert rep.tokens > 8 * 3 * 4
        assert rep.max_abs <= tol, f"{dtype} {mode}: sampler/learner log-probs differ by {rep.max_abs} > {tol}"
