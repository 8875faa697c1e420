"""InProcessTrajectoryQueue: whole groups, backpressure, staleness, replay, close, asyncio."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import numpy as np
import pytest

from agentic.transport.queue import InProcessTrajectoryQueue, QueueClosed, QueueConfig
from tests.transport.groups import assert_groups_equal, make_group


def _in_thread(fn, *args, **kwargs):
    """Runs fn in a thread; returns (thread, box) where box gets 'result' or 'error'."""
    box = {}

    def run():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(capacity_groups=0), "capacity_groups=0 must be >= 1"),
        (dict(max_lag=-1), "max_lag=-1 must be >= 0"),
        (dict(reuse=0), "reuse=0 must be >= 1"),
    ],
)
def test_config_rejects_bad_values_with_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QueueConfig(**kwargs)
    with pytest.raises(TypeError, match="capacity_groups must be an int"):
        QueueConfig(capacity_groups=2.5)


def test_groups_come_out_whole_and_in_order():
    queue = InProcessTrajectoryQueue()
    groups = [make_group(f"g{i}", seed=i) for i in range(3)]
    for g in groups:
        assert queue.put(g)
    got = queue.get(2)
    assert_groups_equal(got, groups[:2])
    assert_groups_equal(queue.get(1), groups[2:])
    stats = queue.stats()
    assert (stats["put"], stats["consumed"], stats["size"]) == (3, 3, 0)


def test_get_waits_for_enough_groups_then_returns_what_it_has_at_timeout():
    queue = InProcessTrajectoryQueue()
    thread, box = _in_thread(queue.get, 2, 5.0)
    queue.put(make_group("a"))
    time.sleep(0.05)
    assert thread.is_alive()  # one group is not enough
    queue.put(make_group("b"))
    thread.join(2.0)
    assert [g[0].group_id for g in box["result"]] == ["a", "b"]

    queue.put(make_group("c"))
    start = time.monotonic()
    got = queue.get(3, timeout=0.2)
    assert time.monotonic() - start >= 0.2
    assert [g[0].group_id for g in got] == ["c"]
    assert queue.get(1, timeout=0) == []
    assert queue.stats()["get_wait_s"] >= 0.2


def test_full_queue_makes_put_wait_and_time_out_without_losing_accepted_groups():
    queue = InProcessTrajectoryQueue(QueueConfig(capacity_groups=2))
    assert queue.put(make_group("a")) and queue.put(make_group("b"))
    start = time.monotonic()
    assert queue.put(make_group("late"), timeout=0.2) is False
    assert time.monotonic() - start >= 0.2
    thread, box = _in_thread(queue.put, make_group("c"), None)
    time.sleep(0.05)
    assert thread.is_alive()  # still blocked: backpressure
    assert [g[0].group_id for g in queue.get(1)] == ["a"]
    thread.join(2.0)
    assert box["result"] is True
    assert [g[0].group_id for g in queue.get(2)] == ["b", "c"]
    stats = queue.stats()
    assert stats["put"] == 3 and stats["put_timeouts"] == 1 and stats["put_wait_s"] >= 0.2


def test_stale_groups_are_dropped_and_counted():
    queue = InProcessTrajectoryQueue(QueueConfig(max_lag=1))
    for version in (0, 1, 2):
        queue.put(make_group(f"v{version}", version=version, n=1))  # n=1: version is exact
    queue.set_learner_version(2)  # v0 has lag 2 > 1: dropped
    assert queue.stats()["dropped_stale"] == 1
    got = queue.get(2)
    assert [g[0].group_id for g in got] == ["v1", "v2"]
    assert queue.stats()["max_lag_observed"] == 1
    assert queue.put(make_group("old", version=0, n=1))  # accepted, dropped at once
    stats = queue.stats()
    assert (stats["dropped_stale"], stats["size"], stats["put"]) == (2, 0, 4)
    with pytest.raises(ValueError, match="went back from 2 to 1"):
        queue.set_learner_version(1)


def test_group_version_is_its_oldest_trajectory():
    queue = InProcessTrajectoryQueue(QueueConfig(max_lag=0))
    queue.put(make_group("mixed", version=4, n=2))  # versions 4 and 5
    queue.set_learner_version(5)
    assert queue.stats()["dropped_stale"] == 1


def test_dropping_stale_groups_unblocks_producers():
    queue = InProcessTrajectoryQueue(QueueConfig(capacity_groups=1, max_lag=0))
    queue.put(make_group("old", version=0, n=1))
    thread, box = _in_thread(queue.put, make_group("new", version=1, n=1), 5.0)
    time.sleep(0.05)
    queue.set_learner_version(1)
    thread.join(2.0)
    assert box["result"] is True
    assert [g[0].group_id for g in queue.get(1)] == ["new"]


def test_reuse_returns_a_group_up_to_k_times_fresh_first_within_the_staleness_bound():
    queue = InProcessTrajectoryQueue(QueueConfig(reuse=2, max_lag=1))
    queue.put(make_group("a", n=1))
    assert [g[0].group_id for g in queue.get(1)] == ["a"]
    queue.put(make_group("b", n=1))
    assert [g[0].group_id for g in queue.get(2)] == ["b", "a"]  # fresh first, then replay
    assert [g[0].group_id for g in queue.get(1, timeout=0)] == ["b"]
    assert queue.get(1, timeout=0) == []  # each used twice
    stats = queue.stats()
    assert (stats["consumed"], stats["reused"]) == (4, 2)

    queue.put(make_group("c", n=1, version=0))
    queue.get(1)
    queue.set_learner_version(2)  # c (version 0) leaves the staleness bound: no replay
    assert queue.get(1, timeout=0) == []
    assert queue.stats()["dropped_stale"] == 1


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda g: g.clear(), "group is empty"),
        (lambda g: g.__setitem__(1, dataclasses.replace(g[1], group_id="other")), r"group\[1\].group_id='other' differs"),
        (lambda g: g.__setitem__(2, "not a trajectory"), r"group\[2\] is a str, not a Trajectory"),
    ],
)
def test_malformed_groups_are_rejected_naming_the_field(mutate, message):
    queue = InProcessTrajectoryQueue()
    group = make_group()
    mutate(group)
    with pytest.raises(ValueError, match=message):
        queue.put(group)
    assert queue.stats()["put"] == 0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"loss_mask": np.ones(3, np.int8)}, r"trajectory loss_mask has length 3, tokens \d+"),
        ({"prompt_len": 10**6}, r"trajectory prompt_len=1000000 is outside"),
        ({"turn_starts": (-1,)}, r"turn_starts has \[-1\] outside"),
    ],
)
def test_a_trajectory_checks_its_fields_once_and_cannot_change(change, message):
    traj = make_group()[0]
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(traj, **change)
    with pytest.raises(dataclasses.FrozenInstanceError):
        traj.prompt_len = 0
    with pytest.raises(ValueError, match="read-only"):
        traj.tokens[0] = 1


def test_impossible_get_is_an_error_not_a_hang():
    queue = InProcessTrajectoryQueue(QueueConfig(capacity_groups=4))
    with pytest.raises(ValueError, match="num_groups=5 exceeds capacity_groups=4"):
        queue.get(5)
    with pytest.raises(ValueError, match="num_groups=0"):
        queue.get(0)


def test_close_wakes_every_waiter():
    full = InProcessTrajectoryQueue(QueueConfig(capacity_groups=1))
    full.put(make_group("a"))
    empty = InProcessTrajectoryQueue()
    waiters = [_in_thread(full.put, make_group("b"), None), _in_thread(empty.get, 1, None)]

    async def main():
        tasks = [asyncio.create_task(full.aput(make_group("c"))), asyncio.create_task(empty.aget(1))]
        await asyncio.sleep(0.05)
        full.close()
        empty.close()
        for task in tasks:
            with pytest.raises(QueueClosed):
                await task

    asyncio.run(main())
    for thread, box in waiters:
        thread.join(2.0)
        assert isinstance(box["error"], QueueClosed)
    with pytest.raises(QueueClosed):
        full.put(make_group("d"))
    with pytest.raises(QueueClosed):
        full.get(1)
    assert full.stats()["closed"] == 1


def test_async_put_and_get_wait_without_blocking_the_event_loop():
    queue = InProcessTrajectoryQueue(QueueConfig(capacity_groups=2))
    received = []

    def learner():
        while len(received) < 20:
            received.extend(queue.get(2, timeout=5.0))
            time.sleep(0.005)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        tick_task = asyncio.create_task(ticker())
        thread, _ = _in_thread(learner)
        results = await asyncio.gather(
            *(queue.aput(make_group(f"g{i}", n=2), timeout=10.0) for i in range(20))
        )
        await asyncio.to_thread(thread.join, 10.0)
        tick_task.cancel()
        assert all(results)
        assert ticks > 10  # the loop kept running while 18 puts waited on a full queue
        assert await queue.aput(make_group("x"), timeout=0.1) is True
        assert await queue.aput(make_group("y"), timeout=0.1) is True
        assert await queue.aput(make_group("z"), timeout=0.1) is False
        assert len(await queue.aget(2, timeout=0.1)) == 2
        assert await queue.aget(1, timeout=0.05) == []

    asyncio.run(main())
    assert sorted(g[0].group_id for g in received) == sorted(f"g{i}" for i in range(20))
    assert queue.stats()["put_timeouts"] == 1


def test_many_threads_lose_and_duplicate_nothing():
    queue = InProcessTrajectoryQueue(QueueConfig(capacity_groups=3))
    producers = [
        _in_thread(lambda p=p: [queue.put(make_group(f"p{p}-{i}", n=1, length=4)) for i in range(25)])[0]
        for p in range(4)
    ]
    received = []
    while len(received) < 100:
        received.extend(queue.get(3, timeout=0.5))
    for t in producers:
        t.join(2.0)
    ids = [g[0].group_id for g in received]
    assert len(set(ids)) == 100
    for p in range(4):  # each producer's groups arrive in its order
        mine = [int(i.split("-")[1]) for i in ids if i.startswith(f"p{p}-")]
        assert mine == sorted(mine)
    assert np.all([len(g) == 1 for g in received])


def test_replay_buffer_is_bounded_by_capacity():
    queue = InProcessTrajectoryQueue(QueueConfig(capacity_groups=1, reuse=3, max_lag=100))
    queue.put(make_group("a", n=1))
    queue.get(1)
    queue.put(make_group("b", n=1))
    assert [g[0].group_id for g in queue.get(1)] == ["b"]  # fresh first; "a" leaves the replay buffer
    assert [g[0].group_id for g in queue.get(1, timeout=0)] == ["b"]
    stats = queue.stats()
    assert (stats["replay_evicted"], stats["replay_size"]) == (1, 1)


def test_cancelled_async_put_adds_nothing():
    queue = InProcessTrajectoryQueue(QueueConfig(capacity_groups=1))
    queue.put(make_group("a"))

    async def main():
        task = asyncio.create_task(queue.aput(make_group("cancelled")))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert [g[0].group_id for g in queue.get(1)] == ["a"]
    assert queue.get(1, timeout=0.05) == []
    assert queue.stats()["put"] == 1
