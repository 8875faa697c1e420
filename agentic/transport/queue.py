"""The trajectory queue between actors and learner, in process (the interface is `agentic.core.TrajectoryQueue`).

Actors `put` whole GRPO groups (the n trajectories of one task, delivered together);
the learner `get`s a number of groups per step. The queue is:

- **bounded** (`QueueConfig.capacity_groups` fresh groups): a full queue makes `put`
  wait, which is the backpressure that keeps actors at most a few steps ahead;
- **staleness-filtered**: once the learner announces its weight version with
  `set_learner_version(v)`, a group whose oldest `policy_version` is below
  `v - max_lag` is dropped (when the version advances, at `put` and at `get`) and
  counted in `stats()["dropped_stale"]`;
- **optionally replaying**: with `reuse=k` a group may be returned by `get` up to k
  times while it stays inside the staleness bound. Fresh groups always come first.

`InProcessTrajectoryQueue` is thread-safe and asyncio-friendly: blocking `put`/`get`
for threads (the learner), `aput`/`aget` that wait without blocking the event loop
and without borrowing executor threads (the actor's loop). `GrpcTrajectoryQueue`
(`agentic.transport.grpc_queue`) implements the same interface over the network.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
import time
from collections.abc import Sequence

from agentic.core import Group, Trajectory, TrajectoryQueue


class QueueError(RuntimeError):
    """Base class of trajectory queue errors."""


class QueueClosed(QueueError):
    """The queue was closed: no more puts or gets; waiters are woken with this error."""


class QueueUnavailable(QueueError):
    """A remote queue could not be reached (server down, restarting, or no answer in time)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class QueueConfig:
    """Trajectory queue settings.

    Attributes:
      capacity_groups: fresh (never consumed) groups the queue holds before `put` waits.
      max_lag: maximum policy lag, in weight versions: a group whose oldest
        `policy_version` is below `learner_version - max_lag` is dropped as stale.
      reuse: how many times `get` may return the same group (1 = no replay).
    """

    capacity_groups: int = 64
    max_lag: int = 2
    reuse: int = 1

    def __post_init__(self):
        for name, low, why in (
            ("capacity_groups", 1, "the queue must hold at least one group"),
            ("max_lag", 0, "0 means on-policy only; a negative lag would drop everything"),
            ("reuse", 1, "1 means each group is consumed once"),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"QueueConfig.{name} must be an int, got {type(value).__name__} {value!r}")
            if value < low:
                raise ValueError(f"QueueConfig.{name}={value} must be >= {low}: {why}")


def validate_group(group: Sequence[Trajectory]) -> None:
    """Checks that `group` can travel as one GRPO group (each Trajectory checked its own
    arrays when it was built, and cannot change since); raises ValueError naming the field."""
    if len(group) == 0:
        raise ValueError("group is empty: put whole GRPO groups (the n samples of one task)")
    group_id = group[0].group_id
    for i, traj in enumerate(group):
        if not isinstance(traj, Trajectory):
            raise ValueError(f"group[{i}] is a {type(traj).__name__}, not a Trajectory")
        if traj.group_id != group_id:
            raise ValueError(
                f"group[{i}].group_id={traj.group_id!r} differs from group[0].group_id={group_id!r}: "
                "a group holds the samples of one task"
            )


def group_version(group: Sequence[Trajectory]) -> int:
    """The policy version of a group: the oldest version that produced any of its tokens."""
    return min(t.oldest_version for t in group)


@dataclasses.dataclass(eq=False)
class _Entry:
    group: Group
    version: int
    uses: int = 0


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class InProcessTrajectoryQueue(TrajectoryQueue):
    """Thread-safe trajectory queue in one process (see the module docstring)."""

    def __init__(self, config: QueueConfig | None = None):
        self.config = config or QueueConfig()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = set()
        self._fresh: collections.deque[_Entry] = collections.deque()
        self._replay: collections.deque[_Entry] = collections.deque()
        self._closed = False
        self._version = 0
        self._counts = dict.fromkeys(
            (
                "put",
                "put_timeouts",
                "consumed",
                "reused",
                "replay_evicted",
                "dropped_stale",
                "max_lag_observed",
            ),
            0,
        )
        self._put_wait_s = 0.0
        self._get_wait_s = 0.0

    # ----- state changes (all under self._lock) -----

    def _notify_locked(self) -> None:
        self._changed.notify_all()
        for loop, future in self._async_waiters:
            try:
                loop.call_soon_threadsafe(_wake, future)
            except RuntimeError:  # that loop is closed; its waiter is gone
                pass
        self._async_waiters.clear()

    def _check_open_locked(self) -> None:
        if self._closed:
            raise QueueClosed("trajectory queue is closed")

    def _is_stale(self, entry: _Entry) -> bool:
        return entry.version < self._version - self.config.max_lag

    def _drop_stale_locked(self) -> int:
        dropped = 0
        for entries in (self._fresh, self._replay):
            keep = [e for e in entries if not self._is_stale(e)]
            dropped += len(entries) - len(keep)
            entries.clear()
            entries.extend(keep)
        self._counts["dropped_stale"] += dropped
        return dropped

    def _try_put_locked(self, group: Group) -> bool:
        self._check_open_locked()
        if len(self._fresh) >= self.config.capacity_groups:
            return False
        entry = _Entry(group, group_version(group))
        self._counts["put"] += 1
        if self._is_stale(entry):
            self._counts["dropped_stale"] += 1
        else:
            self._fresh.append(entry)
            self._notify_locked()
        return True

    def _try_take_locked(self, num_groups: int, take_partial: bool) -> list[Group] | None:
        self._check_open_locked()
        self._drop_stale_locked()
        available = len(self._fresh) + len(self._replay)
        if available < num_groups and not take_partial:
            return None
        taken: list[_Entry] = []
        while len(taken) < num_groups and self._fresh:
            taken.append(self._fresh.popleft())
        while len(taken) < num_groups and self._replay:
            taken.append(self._replay.popleft())
        for entry in taken:
            entry.uses += 1
            self._counts["consumed"] += 1
            self._counts["reused"] += entry.uses > 1
            lag = self._version - entry.version
            self._counts["max_lag_observed"] = max(self._counts["max_lag_observed"], lag)
            if entry.uses < self.config.reuse:
                self._replay.append(entry)
        # A replay buffer bounded by staleness alone could grow without limit when
        # max_lag is large; keep at most `capacity_groups` of them (oldest go first).
        while len(self._replay) > self.config.capacity_groups:
            self._replay.popleft()
            self._counts["replay_evicted"] += 1
        if taken:
            self._notify_locked()  # room for producers
        return [entry.group for entry in taken]

    def _check_num_groups(self, num_groups: int) -> None:
        if num_groups < 1:
            raise ValueError(f"num_groups={num_groups} must be >= 1")
        if num_groups > self.config.capacity_groups:
            raise ValueError(
                f"num_groups={num_groups} exceeds capacity_groups={self.config.capacity_groups}: "
                "the queue could never hold that many fresh groups; raise QueueConfig.capacity_groups"
            )

    # ----- blocking API (threads) -----

    def put(self, group: Sequence[Trajectory], timeout: float | None = None) -> bool:
        group = list(group)
        validate_group(group)
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        with self._changed:
            try:
                while not self._try_put_locked(group):
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        self._counts["put_timeouts"] += 1
                        return False
                    self._changed.wait(remaining)
                return True
            finally:
                self._put_wait_s += time.monotonic() - start

    def get(self, num_groups: int, timeout: float | None = None) -> list[Group]:
        self._check_num_groups(num_groups)
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        with self._changed:
            try:
                while True:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    expired = remaining is not None and remaining <= 0
                    groups = self._try_take_locked(num_groups, take_partial=expired)
                    if groups is not None:
                        return groups
                    self._changed.wait(remaining)
            finally:
                self._get_wait_s += time.monotonic() - start

    # ----- asyncio API -----

    def _must_wait_to_put(self) -> bool:
        return not self._closed and len(self._fresh) >= self.config.capacity_groups

    def _must_wait_to_get(self, num_groups: int) -> bool:
        return not self._closed and len(self._fresh) + len(self._replay) < num_groups

    async def _wait_async(self, must_wait, deadline: float | None) -> bool:
        """Waits for a state change if `must_wait()` (called under the lock) is still true.

        Returns False when the deadline has passed (nothing to wait for).
        """
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        waiter = (loop, future)
        with self._lock:
            if not must_wait():
                return True  # the state changed since the last try: try again at once
            self._async_waiters.add(waiter)
        try:
            await asyncio.wait({future}, timeout=remaining)
        finally:
            with self._lock:
                self._async_waiters.discard(waiter)
        return True

    async def aput(self, group: Sequence[Trajectory], timeout: float | None = None) -> bool:
        group = list(group)
        validate_group(group)
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        try:
            while True:
                with self._lock:
                    if self._try_put_locked(group):
                        return True
                if not await self._wait_async(self._must_wait_to_put, deadline):
                    with self._lock:
                        if self._try_put_locked(group):  # last chance, as the blocking put
                            return True
                        self._counts["put_timeouts"] += 1
                    return False
        finally:
            with self._lock:
                self._put_wait_s += time.monotonic() - start

    async def aget(self, num_groups: int, timeout: float | None = None) -> list[Group]:
        self._check_num_groups(num_groups)
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        try:
            while True:
                with self._lock:
                    groups = self._try_take_locked(num_groups, take_partial=False)
                    if groups is not None:
                        return groups
                if not await self._wait_async(lambda: self._must_wait_to_get(num_groups), deadline):
                    with self._lock:
                        return self._try_take_locked(num_groups, take_partial=True)
        finally:
            with self._lock:
                self._get_wait_s += time.monotonic() - start

    # ----- control -----

    def set_learner_version(self, version: int) -> None:
        with self._lock:
            if version < self._version:
                raise ValueError(
                    f"learner version went back from {self._version} to {version}; versions only grow"
                )
            self._version = int(version)
            if self._drop_stale_locked():
                self._notify_locked()  # room for producers

    def stats(self) -> dict[str, int | float]:
        """Returns the queue's counters.

        Keys: size (fresh groups waiting), replay_size (consumed groups that may be
        returned again), capacity, learner_version, closed (0/1); cumulative counts of
        groups: put (accepted), put_timeouts, consumed (returned by get, each reuse
        included), reused (returns after the first), replay_evicted (groups pushed out of
        a replay buffer over capacity before their last reuse), dropped_stale; max_lag_observed
        (largest learner_version - group version among returned groups);
        put_wait_s / get_wait_s (total seconds spent inside put / get).
        """
        with self._lock:
            return {
                "size": len(self._fresh),
                "replay_size": len(self._replay),
                "capacity": self.config.capacity_groups,
                "learner_version": self._version,
                "closed": int(self._closed),
                **self._counts,
                "put_wait_s": self._put_wait_s,
                "get_wait_s": self._get_wait_s,
            }

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Closes the queue: waiters and later calls raise QueueClosed; queued groups are discarded."""
        with self._lock:
            self._closed = True
            self._notify_locked()
