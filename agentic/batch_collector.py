"""Hands the training loop one batch of groups per step, the Sebulba (async) or the synchronous way."""

from __future__ import annotations

import contextlib
import time

from agentic.async_thread import AsyncThread
from agentic.core import Trajectory
from agentic.rollout.actor import Actor
from agentic.transport.queue import InProcessTrajectoryQueue


class BatchCollector:
    """Hands the loop `learner.batch_groups` groups per step, the Sebulba or the synchronous way.

    async: the actor runs throughout (bounded by the queue and the max policy lag); the loop
    takes groups from the queue. sync: the actor generates only while the loop waits for a
    batch and is paused (its groups in flight drained) before the learner trains, so on a
    small machine generation and training never compete for the same cores.

    With `sebulba.dynamic_sampling`, groups whose rewards are all equal are set aside
    (counted, not trained on: their GRPO advantages are zero, DAPO's dynamic sampling)
    and generation goes on until the batch holds informative groups only, for at most
    `sebulba.max_batch_rounds` batches' worth of generated groups per step (then the step
    trains on what it has). In sync mode the groups still in flight when the batch is full are
    finished and all of their informative ones trained on in the same step: none is left in the
    queue to go stale while the next batch is generated.
    """

    def __init__(self, config, queue: InProcessTrajectoryQueue, actor: Actor | None, actors: AsyncThread, *,
                 batch_groups: int | None = None):
        """`actor` None: the actors are other processes putting groups into `queue` (async only).
        `batch_groups`: this process's share of the batch (default `config.learner.batch_groups`)."""
        self.queue, self.actor, self.actors = queue, actor, actors
        self.B = batch_groups or config.learner.batch_groups
        self.sync = config.sebulba.mode == "sync"
        self.dynamic = config.sebulba.dynamic_sampling
        self.max_rounds = config.sebulba.max_batch_rounds
        self.group_size = config.actor.group_size
        self.uniform, self.trained_groups, self.stale_in_learner = 0, 0.0, 0.0
        self.model_tokens, self.stale_tokens = 0.0, 0.0
        if actor is None:
            if self.sync:
                raise ValueError("sync mode pauses the actor: it needs one in this process")
            self._future = None
            return
        if self.sync:
            actor.paused.clear()
        self._future = actors.submit(actor.run())

    def _uniform(self, group: list[Trajectory]) -> bool:
        """With dynamic sampling: every reward of the group equal (GRPO advantage 0 throughout)."""
        return self.dynamic and len({tr.reward for tr in group}) == 1

    def _set_paused(self, paused: bool):
        """Pauses / resumes the actor; returns once its event loop has done it."""
        async def flip():
            (self.actor.paused.clear if paused else self.actor.paused.set)()

        self.actors.run(flip(), timeout=30)

    def next(self, stopping) -> list[list[Trajectory]] | None:
        """The next batch of groups (None when stopping)."""
        batch, spare = [], []
        if self.sync:
            self._set_paused(False)
        budget = self.B * self.max_rounds
        while len(batch) < self.B:
            if stopping():
                return None
            got = self.queue.get(self.B - len(batch), timeout=1.0)
            if self._future is not None and self._future.done():
                self._future.result()  # re-raises the actor's crash
                raise RuntimeError("actor stopped before the learner finished")
            for g in got:
                budget -= 1
                if self._uniform(g):
                    self.uniform += 1
                    spare.append(g)
                else:
                    batch.append(g)
            if budget <= 0 and len(batch) + len(spare) >= self.B:  # out of rounds: train on what there is
                filler = spare[: self.B - len(batch)]
                self.uniform -= len(filler)  # trained on after all: not set aside
                batch += filler
                break
        if self.sync:
            self._set_paused(True)
            while self.actor.busy._active and not stopping():  # drain: its groups land in the queue
                time.sleep(0.01)
            # The drained groups come from the weights this batch trains. Left in the queue they
            # would wait behind the next step's own groups and go stale (a step drains about
            # `concurrent_groups` of them, more than a batch). Their informative ones join this
            # batch, their uniform ones are set aside now.
            batch += self._take_drained()
        return batch

    def _take_drained(self) -> list[list[Trajectory]]:
        extra: list[list[Trajectory]] = []
        while True:
            got = self.queue.get(1, timeout=0)
            if not got:
                break
            for g in got:
                if self._uniform(g):
                    self.uniform += 1
                else:
                    extra.append(g)
        return extra

    def record(self, learner_metrics: dict[str, float]) -> None:
        """Counts what the learner trained on and dropped as stale in an update."""
        self.trained_groups += learner_metrics.get("batch/trajectories", 0.0) / self.group_size
        self.stale_in_learner += learner_metrics.get("batch/dropped_stale", 0.0) / self.group_size
        # model tokens trained on that an older version sampled (partial rollouts: part of an episode)
        tokens = learner_metrics.get("batch/model_tokens", 0.0)
        self.model_tokens += tokens
        self.stale_tokens += tokens * learner_metrics.get("batch/stale_token_frac", 0.0)

    def stats(self) -> dict[str, float]:
        """Counts over the run so far: groups the actor generated, set aside as uniform, dropped as
        stale (by the queue or the learner), trained on; and their fractions of the generated ones."""
        # groups the actor generated (other processes': the groups put into the queue)
        generated = float(self.actor.groups_done if self.actor else self.queue.stats().get("put", 0))
        stale = self.queue.stats().get("dropped_stale", 0.0) + self.stale_in_learner
        g = max(generated, 1.0)
        return {"groups_generated": generated, "groups_uniform": float(self.uniform),
                "groups_stale": stale, "groups_trained": self.trained_groups,
                "trained_frac": self.trained_groups / g, "uniform_frac": self.uniform / g, "stale_frac": stale / g,
                "stale_token_frac": self.stale_tokens / max(self.model_tokens, 1.0)}

    def close(self) -> None:
        if self.actor is None:
            self.queue.close()  # actor processes' next put raises QueueClosed: they stop
            return
        if self._future is None:
            return
        self.actor.stop()
        self._set_paused(False)
        self.queue.close()
        with contextlib.suppress(Exception):
            self._future.result(timeout=120)
        self._future = None
