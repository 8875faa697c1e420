"""LoRA RL that learns: the learning test's loop (tests/rollout/test_learning.py) with LoRA adapters on.

Only the adapters train (rank 8 on every attention and MLP projection); the engine serves base +
adapter merged (the learner publishes merged params), and the run's checkpoint holds the adapters and
their optimizer state only, not the base model.
"""

from __future__ import annotations

import ast
import json
import os

import numpy as np

from agentic import launcher
from agentic.core import Experiment
from tests.rollout.test_learning import learning_config


def saved_arrays(workdir: str, step: int) -> list[tuple[str, ...]]:
    """The array paths of a checkpoint's train state (orbax's tree metadata)."""
    meta = json.load(open(os.path.join(workdir, "checkpoints", str(step), "state", "_METADATA")))
    return [tuple(ast.literal_eval(k)) for k in meta["tree_metadata"]]  # keys: tuple reprs of the path's names


def test_lora_reward_rises_and_the_checkpoint_holds_only_adapters(tmp_path):
    config = learning_config()
    config.learner.lora_rank = 8
    config.learner.lora_alpha = 16.0
    config.learner.lr = 5e-3
    workdir = str(tmp_path / "run")
    stats = launcher.train(config, workdir, Experiment(train_tasks=[{"id": i} for i in range(64)]))
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    rewards = [r["reward"] for r in rows if r["split"] == "train"]
    print(f"LoRA train reward per step: {np.round(rewards, 2).tolist()}")
    assert stats["steps"] == 8 and len(rewards) == 8
    start, end = rewards[0], np.mean(rewards[-3:])
    assert start < 0.7 and end > 0.9, f"LoRA: reward went from {start:.2f} to {end:.2f} in 8 steps"
    paths = saved_arrays(workdir, 8)
    trained = [p for p in paths if p[0] == "trainable"]
    assert trained and all(p[1] == "lora" and p[-1] in ("a", "b") for p in trained)
    assert not any("embedding" in p or "kernel" in p or "frozen" in p for p in paths), paths
