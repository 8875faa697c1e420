"""The actor: many episodes in flight, delivered to the learner as GRPO groups.

An actor pulls tasks, runs `group_size` episodes of each concurrently (with
different seeds), and puts the finished group into the trajectory queue. Up to
`concurrent_groups` groups are in flight at once. Any env or generator failure
drops the whole group (GRPO advantages need all of it) and is counted by type;
nothing waits forever: every episode has a wall-clock budget.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from agentic.core import Generator, Task, Trajectory
from agentic.rollout.episode import EnvSession, EpisodeClock, EpisodeConfig, TextCodec, run_episode

log = logging.getLogger(__name__)

EnvFactory = Callable[[], Awaitable[EnvSession]]
GroupSink = Callable[[list[Trajectory]], Awaitable[Any]]


class Occupancy:
    """Wall seconds during which at least one of many concurrent activities was running.

    `with occupancy:` around each activity (a generate call, an env call, a group). Summed
    over concurrent episodes the seconds would exceed the wall clock; occupancy never does,
    so it compares with the learner's wait / train / sync seconds.
    """

    def __init__(self):
        self.seconds = 0.0
        self._active = 0
        self._since = 0.0

    def __enter__(self):
        if self._active == 0:
            self._since = time.monotonic()
        self._active += 1
        return self

    def __exit__(self, *exc):
        self._active -= 1
        if self._active == 0:
            self.seconds += time.monotonic() - self._since

    @property
    def total(self) -> float:
        """Seconds so far, counting a running stretch up to now."""
        return self.seconds + (time.monotonic() - self._since if self._active else 0.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ActorConfig:
    """How an actor schedules episodes.

    Attributes:
      group_size: episodes per task (GRPO n).
      concurrent_groups: groups in flight at once (episodes = this x group_size).
      episode_timeout_s: wall-clock budget of one episode; past it the group is
        dropped and counted as `timeout`.
      max_consecutive_failures: this many failed groups in a row means the
        generator or the env pool is down, not a flaky episode: the actor stops
        with an error naming the last failure instead of spinning.
      episode: per-episode limits and sampling.
    """

    group_size: int = 5
    concurrent_groups: int = 32
    episode_timeout_s: float = 600.0
    max_consecutive_failures: int = 64
    episode: EpisodeConfig = EpisodeConfig()

    def __post_init__(self):
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        if self.concurrent_groups < 1:
            raise ValueError(f"concurrent_groups must be >= 1, got {self.concurrent_groups}")


class Actor:
    """Runs groups of episodes until stopped and hands each finished group on."""

    def __init__(self, *, config: ActorConfig, generator: Generator, tokenizer: TextCodec,
                 make_env: EnvFactory, tasks: Iterator[Task], sink: GroupSink, seed: int = 0,
                 name: str = "actor0"):
        self.config = config
        self.generator = generator
        self.tokenizer = tokenizer
        self.make_env = make_env
        self.tasks = tasks
        self.sink = sink
        self.name = name
        self._seed = itertools.count(seed * 1_000_003)
        self._group_ids = itertools.count()
        self.failures: collections.Counter[str] = collections.Counter()
        self.groups_done = 0
        self.episodes_done = 0
        # wall seconds with at least one group running / one generate call / one env call in flight
        self.busy = Occupancy()
        self.clock = EpisodeClock(generate=Occupancy(), env=Occupancy())
        self.consecutive_failures = 0
        self.last_error: BaseException | None = None
        self.paused = asyncio.Event()
        self.paused.set()  # set = running; cleared = pause before the next group
        self._stop = False

    def stop(self) -> None:
        self._stop = True

    async def run_group(self, task: Task) -> list[Trajectory] | None:
        """Runs one group; returns None (and counts why) if any episode failed."""
        gid = f"{self.name}-g{next(self._group_ids)}"
        episodes = []
        for i in range(self.config.group_size):
            episodes.append(self._one_episode(task, gid, f"{gid}-e{i}", next(self._seed)))
        with self.busy:
            results = await asyncio.gather(*episodes, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            for e in errors:
                kind = "timeout" if isinstance(e, asyncio.TimeoutError) else type(e).__name__
                self.failures[kind] += 1
            log.warning("%s: dropped group %s: %s", self.name, gid, errors[0])
            self.consecutive_failures += 1
            self.last_error = errors[0]
            return None
        self.consecutive_failures = 0
        self.groups_done += 1
        self.episodes_done += len(results)
        return list(results)

    async def _one_episode(self, task: Task, gid: str, eid: str, seed: int) -> Trajectory:
        env = await self.make_env()
        return await asyncio.wait_for(
            run_episode(env=env, task=task, generator=self.generator, tokenizer=self.tokenizer,
                        config=self.config.episode, episode_id=eid, group_id=gid, seed=seed, clock=self.clock),
            timeout=self.config.episode_timeout_s)

    async def run(self, max_groups: int | None = None) -> None:
        """Keeps `concurrent_groups` groups in flight until stopped, out of tasks, or `max_groups` done."""
        in_flight: set[asyncio.Task] = set()
        started = 0

        async def one(task: Task):
            group = await self.run_group(task)
            if group is not None:
                await self.sink(group)

        while True:
            if self.consecutive_failures >= self.config.max_consecutive_failures:
                for t in in_flight:
                    t.cancel()
                raise RuntimeError(
                    f"{self.name}: {self.consecutive_failures} groups in a row failed; the generator or env "
                    f"pool looks down. Last error: {type(self.last_error).__name__}: {self.last_error}")
            while (not self._stop and len(in_flight) < self.config.concurrent_groups
                   and (max_groups is None or started < max_groups) and self.paused.is_set()):
                try:
                    task = next(self.tasks)
                except StopIteration:
                    self._stop = True
                    break
                in_flight.add(asyncio.create_task(one(task)))
                started += 1
            if not in_flight:
                if self._stop or (max_groups is not None and started >= max_groups):
                    return
                await self.paused.wait()
                continue
            done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t.exception() is not None:
                    self.failures[type(t.exception()).__name__] += 1
                    log.error("%s: group sink failed: %r", self.name, t.exception())

    def stats(self) -> dict[str, float]:
        out = {"groups": float(self.groups_done), "episodes": float(self.episodes_done),
               "env_failures": float(sum(self.failures.values()))}
        out.update({f"failures/{k}": float(v) for k, v in self.failures.items()})
        return out
