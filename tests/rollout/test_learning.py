"""RL that learns: the whole loop, with real processes, raises a reward learnable from scratch.

An env host subprocess serves the test env "spaces" (tests/rollout/learnable_env.py); the
embedded engine generates; the actor runs two-turn episodes into the trajectory queue; the
learner trains a tiny random-init model with GRPO advantages and the `reinforce` loss
(no importance ratio, so a wrong loss mask is not damped; see BUILD.md). The train reward
must climb from near its starting level to near its maximum (1.0).

The test must fail when the learning signal is broken. A test-only switch shows it:

    AGENTIC_BREAK_LEARNING=advantage_sign pytest tests/rollout/test_learning.py   # advantages negated
    AGENTIC_BREAK_LEARNING=loss_mask pytest tests/rollout/test_learning.py        # env tokens trained on

(both fail; unset, it passes).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from agentic import launcher
from agentic.core import Experiment
from agentic.learner import batching
from experiments.configs import search_r1
from tools import reversed_reward

BREAK = os.environ.get("AGENTIC_BREAK_LEARNING", "")


def break_learning_signal(monkeypatch, how: str, config) -> None:
    if how == "advantage_sign":  # the control run's estimator: GRPO's advantages negated
        config.learner.algorithm = reversed_reward.register_reversed()
    elif how == "loss_mask":
        make = batching.make_episodes

        def every_token(trajectories, max_len):
            ep = make(trajectories, max_len)
            mask = (np.arange(ep.mask.shape[1])[None] < ep.lengths[:, None]).astype(np.float32)
            return dataclasses.replace(ep, mask=mask)

        monkeypatch.setattr(batching, "make_episodes", every_token)
    elif how:
        raise ValueError(f"AGENTIC_BREAK_LEARNING={how!r}: use advantage_sign or loss_mask")


def learning_config():
    c = search_r1.get_config("test")
    c.env.name = "spaces"
    c.env.imports = "tests.rollout.learnable_env"
    c.env.kwargs = {}
    c.total_steps = 8
    c.eval_tasks = c.eval_quick_tasks = 0
    c.checkpoint_every = 1000
    c.sebulba.dynamic_sampling = False
    c.sebulba.mode = "sync"             # step 1 trains on the initial policy's episodes only
    c.sebulba.learner_devices = 1       # tests see 8 CPU devices; one learner device is enough
    c.actor.group_size = 8
    c.actor.concurrent_groups = 2
    c.actor.max_new_tokens_per_turn = 4
    c.actor.temperature = 1.0
    c.actor.top_k = 4                   # a random init over 49k tokens: sample among its top few
    c.actor.max_total_tokens = 256
    c.generator.num_slots = 32
    c.generator.max_len = 256
    c.learner.batch_groups = 2
    c.queue.capacity_groups = 16
    c.learner.policy_loss = "reinforce"  # the plain policy gradient: nothing but the signal itself
    c.learner.off_policy = "none"
    c.learner.lr = 5e-3
    c.learner.seq_buckets = (128,)
    c.learner.micro_batch_size = 8
    c.learner.min_micro_batches = 2    # one packed shape for the run: a single learner compile
    return c


def test_reward_rises_from_start_to_near_max(tmp_path, monkeypatch):
    config = learning_config()
    break_learning_signal(monkeypatch, BREAK, config)
    workdir = str(tmp_path / "run")
    tasks = [{"id": i} for i in range(64)]  # the env ignores the task: every episode is the same game
    stats = launcher.train(config, workdir, Experiment(train_tasks=tasks))
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    rewards = [r["reward"] for r in rows if r["split"] == "train"]
    assert stats["steps"] == 8 and len(rewards) == 8
    # step 1 trains on episodes sampled from the initial weights only: the random policy's reward
    start, end = rewards[0], np.mean(rewards[-3:])
    print(f"train reward per step: {np.round(rewards, 2).tolist()}")
    assert start < 0.7, f"the random policy already scores {start:.2f}: the env is not a learning test"
    assert end > 0.9, f"reward went from {start:.2f} to {end:.2f} in 8 steps: RL did not learn"
