"""BatchCollector's dynamic sampling: what a step trains on, and the run's counts adding up."""

from __future__ import annotations

import ml_collections
import numpy as np

from agentic.batch_collector import BatchCollector
from agentic.core import Trajectory
from agentic.transport.queue import InProcessTrajectoryQueue, QueueConfig


def _config(batch_groups: int, max_rounds: int) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.learner = {"batch_groups": batch_groups}
    c.sebulba = {"mode": "async", "dynamic_sampling": True, "max_batch_rounds": max_rounds}
    c.actor = {"group_size": 2}
    return c


def _group(name: str, rewards: tuple[float, float]) -> list[Trajectory]:
    return [Trajectory(tokens=np.array([1, 2]), loss_mask=np.array([0, 1]), behavior_logprobs=np.zeros(2),
                       reward=r, group_id=name, policy_version=0, prompt_len=1) for r in rewards]


def _run_step(groups, batch_groups=2, max_rounds=2):
    queue = InProcessTrajectoryQueue(QueueConfig(capacity_groups=16))
    for g in groups:
        queue.put(g)
    collector = BatchCollector(_config(batch_groups, max_rounds), queue, actor=None, actors=None)
    batch = collector.next(stopping=lambda: False)
    collector.record({"batch/trajectories": float(sum(len(g) for g in batch))})
    return batch, collector.stats()


def test_informative_groups_first_uniform_ones_set_aside():
    groups = [_group("u0", (0, 0)), _group("i0", (0, 1)), _group("u1", (1, 1)), _group("i1", (1, 0))]
    batch, stats = _run_step(groups)
    assert [g[0].group_id for g in batch] == ["i0", "i1"]
    assert stats["groups_generated"] == 4 and stats["groups_uniform"] == 2 and stats["groups_trained"] == 2


def test_out_of_rounds_the_filler_counts_as_trained_not_set_aside():
    # 2 x 2 = 4 groups of budget, one informative: the step trains it and one uniform group, and
    # the shares of the generated groups (trained, set aside) add up to at most 1
    groups = [_group("u0", (0, 0)), _group("u1", (0, 0)), _group("i0", (1, 0)), _group("u2", (1, 1))]
    batch, stats = _run_step(groups)
    assert sorted(g[0].group_id for g in batch) == ["i0", "u0"]
    assert stats["groups_trained"] == 2 and stats["groups_uniform"] == 2
    assert stats["trained_frac"] + stats["uniform_frac"] + stats["stale_frac"] == 1.0
