"""Interruptible generation (issue 33): pause, continue, abort and weight swaps mid-request.

The engine stops running requests at the next step and keeps (or recomputes) their KV;
weights change while they wait; they continue, and every token records the version that
sampled it. The end-to-end test runs 8 real multi-turn episodes (actor, embedded engine,
echo env, SmolLM2's tokenizer, a tiny random model) and lands a learner update in the middle
of their first turn: none is discarded, each finishes, the per-token versions show the
switch, and the learner trains on them with the staleness bound and TIS using those versions.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from agentic import models
from agentic.core import GenerateRequest, SamplingParams
from agentic.inference.engine import EngineConfig, EngineCore, EngineWeights, JaxEngine
from agentic.learner import Learner, LearnerConfig
from agentic.learner.testing import synthetic_trajectories
from agentic.rollout.episode import EpisodeConfig
from agentic.sharding import make_mesh
from tests.inference.echo_episodes import run_echo_episodes

ENGINE = EngineConfig(num_slots=8, max_len=256, prefill_chunk=64, max_prefill_batch=8, min_prefill_bucket=16,
                      min_decode_kv=256, share_prefix_min=8, page_size=16, seed=0)


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def model(tokenizer):
    config = models.get_config("tiny").replace(vocab_size=tokenizer.vocab_size)
    return config, jax.device_get(models.init_params(config, jax.random.key(1)))


def greedy(n: int, prompt=(5, 6, 7, 8)) -> GenerateRequest:
    return GenerateRequest(prompt_ids=list(prompt), params=SamplingParams(max_new_tokens=n, temperature=0.0,
                                                                          ignore_eos=True))


def start(core: EngineCore, requests, keys=None) -> dict:
    out = {}
    for i, req in enumerate(requests):
        core.submit(req, lambda c, i=i: out.__setitem__(i, c), key=None if keys is None else keys[i])
    return out


def steps(core: EngineCore, n: int) -> None:
    for _ in range(n):
        core.step()


def test_pause_in_place_and_retract_keep_every_token_and_match_an_uninterrupted_run(model, tokenizer):
    config, params = model
    prompts = [(5, 6, 7, 8), (9, 10, 11), (12, 13, 14, 15, 16, 17)]
    reference = EngineCore(config, params, tokenizer, ENGINE).generate_sync([greedy(30, p) for p in prompts])
    for mode in ("in_place", "retract"):
        core = EngineCore(config, params, tokenizer, ENGINE)
        out = start(core, [greedy(30, p) for p in prompts])
        steps(core, 5)
        tokens = [len(r.out) for r in core.rows if r is not None]
        assert len(tokens) == 3 and all(0 < n < 30 for n in tokens)
        core.pause(mode)
        steps(core, 4)  # paused: nothing decodes, nothing finishes
        assert not out and not core.busy
        if mode == "in_place":  # the rows and their KV stay
            assert [len(r.out) for r in core.rows if r is not None] == tokens and core.pool.num_used > 0
        else:  # retracted: rows and pages given back, tokens kept, waiting at the queue's front
            assert core.num_running == 0 and core.pool.num_used == 0
            assert [len(r.out) for r in core._waiting] == tokens
        core.continue_generation()
        core.run_until_idle()
        for i, ref in enumerate(reference):
            assert out[i].token_ids == ref.token_ids, (mode, i)  # greedy: the pause changes nothing
            assert np.allclose(out[i].logprobs, ref.logprobs, atol=1e-5)
            assert out[i].finish_reason == "length" and out[i].token_versions == (0,) * 30


def test_abort_ends_one_request_with_its_partial_output_and_frees_its_row(model, tokenizer):
    config, params = model
    core = EngineCore(config, params, tokenizer, ENGINE)
    out = start(core, [greedy(40), greedy(40, (9, 10, 11)), greedy(40, (3, 4))], keys=["a", "b", "c"])
    steps(core, 4)
    pages = core.pool.num_used
    core.abort("b", "the caller went away")
    core.abort("nobody", "unknown keys are ignored")
    core.step()
    assert out[1].finish_reason == "abort" and out[1].matched == "the caller went away"
    assert 0 < len(out[1].token_ids) < 40 and len(out[1].logprobs) == len(out[1].token_ids)
    assert core.num_running == 2 and core.pool.num_used < pages + 2  # its pages went back (only cache is kept)
    core.abort("c")  # a queued request is aborted before it runs
    queued = start(core, [greedy(5)], keys=["d"])
    core.abort("d")
    core.run_until_idle()
    assert queued[0].finish_reason == "abort" and queued[0].token_ids == ()
    assert out[0].finish_reason == "length" and len(out[0].token_ids) == 40

    core.pause("abort")  # every request ends, with its partial output
    more = start(core, [greedy(40)])
    core.step()
    assert not more  # submitted while paused: waits
    core.continue_generation()
    core.run_until_idle()
    assert more[0].finish_reason == "length"


@pytest.mark.parametrize("running", ["keep", "recompute", "finish"])
def test_a_weight_swap_mid_request_records_each_tokens_version(model, tokenizer, running):
    config, params = model
    new = jax.tree.map(lambda x: x * 1.5, params)
    core = EngineCore(config, params, tokenizer, ENGINE)
    out = start(core, [greedy(30), greedy(30, (9, 10, 11))])
    steps(core, 6)
    before = [len(r.out) for r in core.rows if r is not None]
    done = core.update_params(new, 1, running=running)
    if running == "finish":  # the swap waits for the running requests; a new one waits for the swap
        late = start(core, [greedy(10, (21, 22))])
        steps(core, 3)
        assert not done.is_set() and core.weight_version == 0 and not late and core.num_running == 2
    core.run_until_idle()
    assert done.is_set() and core.weight_version == 1
    for i, n in enumerate(before):
        versions = out[i].token_versions
        assert len(versions) == 30 and out[i].weight_version == (0 if running == "finish" else 1)
        if running == "finish":
            assert versions == (0,) * 30  # finished on the weights they started with
        else:
            assert versions == (0,) * n + (1,) * (30 - n), versions  # the switch, at the next decode step
    if running == "recompute":
        assert core.stats["retracted_for_update"] == 1 and core.stats["preemptions"] == 2
    if running == "finish":
        assert late[0].token_versions == (1,) * 10


def test_the_publisher_names_what_running_requests_do(model, tokenizer):
    with pytest.raises(ValueError, match="running must be 'keep', 'recompute' or 'finish'"):
        EngineWeights(None, running="wait")
    core = EngineCore(*model, tokenizer, ENGINE)
    with pytest.raises(ValueError, match="running must be"):
        core.update_params(model[1], 1, running="later")
    with pytest.raises(ValueError, match="pause mode must be"):
        core.pause("soon")


def run_episodes(engine, tokenizer):
    episode = EpisodeConfig(mode="continuation", max_turns=3, max_new_tokens_per_turn=16, max_total_tokens=240,
                            temperature=0.9, stop=())
    return run_echo_episodes(engine, tokenizer, episode, "Repeat the user's words back: ")


def test_a_learner_update_lands_while_8_multi_turn_episodes_are_mid_generation(model, tokenizer):
    config, params = model
    learner = Learner(LearnerConfig(algorithm="grpo", lr=1e-3, micro_batch_size=8, seq_buckets=(256,),
                                    off_policy="tis", mesh_shape=(1, 1, 1)),
                      config, params, mesh=make_mesh((1, 1, 1)))
    engine = JaxEngine(config, params, tokenizer, ENGINE)
    core, fast_step = engine.core, engine.core.step
    swapped = {}

    def step():  # publish the learner's next version once all 8 episodes are decoding their first turn
        fast_step()
        rows = [r for r in core.rows if r is not None]
        if not swapped and len(rows) == 8 and all(2 <= len(r.out) <= 8 for r in rows):
            swapped["tokens"] = sorted(len(r.out) for r in rows)
            learner.update(synthetic_trajectories(4, 0, groups=2, group_size=4, vocab=config.vocab_size,
                                                  max_len=40))
            # what EngineWeights(running="keep").publish does, without waiting: this is the stepping thread
            core.update_params(jax.tree.map(lambda x: x.copy(), learner.params), learner.version, running="keep")

    core.step = step
    try:
        groups = run_episodes(engine, tokenizer)
    finally:
        engine.close_sync()
    assert swapped, "the 8 episodes were never all mid-generation at once"
    assert core.stats["weight_updates"] == 1 and engine.weight_version == learner.version == 1
    trajs = [t for g in groups for t in g]
    assert len(groups) == 2 and len(trajs) == 8  # none discarded
    model_versions = []
    for t in trajs:
        assert len(t.turn_starts) == 3 and not t.truncated and t.metrics.get("aborted", 0) == 0
        v = t.token_versions[t.loss_mask > 0]
        first_turn = t.token_versions[t.turn_starts[0]:t.turn_starts[1]]
        first_turn = first_turn[first_turn >= 0]
        # the switch mid-turn: old tokens first, then the new version for the rest of the episode
        assert first_turn[0] == 0 and first_turn[-1] == 1 and np.all(np.diff(v) >= 0), v
        assert t.oldest_version == 0
        model_versions.append(v)
    old = sum(int((v == 0).sum()) for v in model_versions) / sum(len(v) for v in model_versions)
    assert 0 < old < 0.5
    print(f"\nswap after {swapped['tokens']} tokens of the 8 first turns: {old:.1%} of the model tokens from version 0")

    # the staleness bound reads the oldest token: lag 0 drops both groups, lag 1 trains on them
    strict = Learner(LearnerConfig(algorithm="grpo", lr=1e-3, micro_batch_size=8, seq_buckets=(256,),
                                   off_policy="tis", mesh_shape=(1, 1, 1), max_policy_lag=0),
                     config, jax.device_get(learner.params), mesh=make_mesh((1, 1, 1)))
    strict._state["version"] = learner._state["version"]
    dropped = strict.update(trajs)
    assert dropped["batch/dropped_stale"] > 0 and dropped.get("batch/trajectories", 0) == 0
    before = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(learner.params))]
    metrics = learner.update(trajs)
    assert metrics["batch/trajectories"] == 8
    # TIS weights each token by pi_learner / pi_behavior: the tokens of version 0 carry the
    # correction, and the stale-token fraction is exactly theirs
    assert metrics["batch/stale_token_frac"] == pytest.approx(old, abs=1e-6)
    assert np.isfinite(metrics["learner/loss"]) and metrics["learner/is_weight"] != pytest.approx(1.0, abs=1e-6)
    print(f"learner on them: stale_token_frac {metrics['batch/stale_token_frac']:.3f}, "
          f"is_weight {metrics['learner/is_weight']:.4f}, loss {metrics['learner/loss']:.4f}")
    after = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(learner.params))]
    assert any(not np.array_equal(a, b) for a, b in zip(after, before, strict=True))
