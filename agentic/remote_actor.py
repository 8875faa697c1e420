"""An actor process (`--role=actor`): episodes against its own generator, groups pushed to a
learner process's trajectory queue over gRPC, new weights followed from its weight stream.

    learner process (--role=learner) ── TrajectoryQueueServer ◄── groups ── actor process(es)
                                     └─ WeightStreamServer ──── weights ──►  (this module)

Any number of actor processes can join or leave while the learner trains: an actor starts
from the learner's current weights (it waits for them), its groups carry the weight version
they were sampled with (the learner's queue drops the stale ones), and it follows every new
version between decode steps. With SGLang servers as the generator, the learner updates the
servers itself (their update API) and the actor follows nothing.

When the learner finishes it closes its queue: the actor sees it (it polls the queue's state
every second, and a push raises `QueueClosed`) and stops (exit 0). When the learner is unreachable (killed, restarting), the
actor retries for `config.remote.wait_s` seconds; a learner back by then (rerun with the same
workdir: it resumes) gets the actor's groups again, else the actor stops with a message.
Each actor draws its own seeded shuffle of the tasks (`actor_id`); actors keep no state worth
checkpointing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import jax
import ml_collections

from agentic import launcher
from agentic.core import Experiment
from agentic.rollout.actor import Actor
from agentic.tasks import TaskStream
from agentic.transport.queue import QueueClosed, QueueUnavailable


def run_actor(config: ml_collections.ConfigDict, experiment: Experiment, actor_id: int = 0) -> dict[str, Any]:
    """Runs actor `actor_id` until the learner closes its queue or stays unreachable; returns its stats."""
    from agentic.transport.grpc_queue import GrpcTrajectoryQueue

    r = config.remote
    if not r.queue:
        raise ValueError("--role=actor needs config.remote.queue, the learner's trajectory queue (host:port)")
    engine = config.generator.backend == "engine"
    if engine and not r.weights:
        raise ValueError("--role=actor with the embedded engine needs config.remote.weights, the learner's "
                         "weight stream (host:port)")
    start = time.monotonic()
    name = f"actor{actor_id}"
    with contextlib.ExitStack() as stack:
        addresses = launcher.env_hosts(config, stack)
        model_cfg, params, tokenizer = launcher.build_model(config.model.name, config.model.dtype)
        actors, env_client = launcher.actor_thread(addresses, stack, token=config.env.token or None)
        make_env = launcher.env_factory(config.env.name, {**config.env.kwargs.to_dict(), **experiment.env_kwargs},
                                        env_client)
        generator = launcher.build_generator(config, model_cfg, params, tokenizer, jax.local_devices()[:1])
        stack.callback(lambda: actors.run(generator.close(), timeout=60))
        if engine:
            from agentic.transport.weight_stream import WeightFollower, WeightStreamClient

            client = WeightStreamClient(r.weights)
            stack.callback(client.close)
            version, weights = first_weights(client, params, r.wait_s, name)
            generator.update_params(weights, version)
            print(f"{name}: weights version {version} from {r.weights}", flush=True)
            follower = WeightFollower(client, generator, params,
                                      update_kwargs={"running": launcher.update_running(config)})
            follower.start()
            stack.callback(follower.stop)
        queue = GrpcTrajectoryQueue(r.queue)
        stack.callback(queue.close)
        pushed, stopping = [0], []

        def stop(reason: str, message: str) -> None:
            if not stopping:
                print(f"{name}: {message}: stopping", flush=True)
            stopping.append(reason)
            actor.stop()

        async def sink(group):
            unreachable_since = None
            while True:
                try:
                    if await queue.aput(group, timeout=5.0):
                        break
                    unreachable_since = None  # reachable, only full
                except QueueClosed:
                    return stop("closed", "the learner closed its queue")
                except QueueUnavailable as e:
                    unreachable_since = unreachable_since or time.monotonic()
                    if stopping or time.monotonic() - unreachable_since > r.wait_s:
                        return stop("unreachable", f"the learner at {r.queue} was unreachable for {r.wait_s:.0f}s ({e})")
                    await asyncio.sleep(1.0)
            pushed[0] += 1
            print(f"{name}: {pushed[0]} groups pushed (weights version {generator.weight_version}, "
                  f"{time.monotonic() - start:.0f}s)", flush=True)

        actor = Actor(config=launcher.actor_config(config), generator=generator, tokenizer=tokenizer,
                      make_env=make_env, tasks=TaskStream(experiment.train_tasks, config.seed + 1000 * (actor_id + 1)),
                      sink=sink, seed=config.seed + 1000 * (actor_id + 1), name=name)

        async def watch():  # the learner closes its queue when it finishes: stop then, not at the next push
            while True:
                await asyncio.sleep(1.0)
                try:
                    closed = (await asyncio.to_thread(queue.stats)).get("closed")
                except QueueUnavailable:
                    continue  # the sink waits for the learner (config.remote.wait_s)
                except QueueClosed:
                    closed = 1
                if closed:
                    return stop("closed", "the learner closed its queue")

        async def run():
            watcher = asyncio.create_task(watch())
            try:
                await actor.run()
            finally:
                watcher.cancel()

        actors.run(run())
        return {"groups_pushed": pushed[0], "stopped": stopping[0] if stopping else "", **actor.stats(),
                "total_s": time.monotonic() - start}


def first_weights(client, template, wait_s: float, name: str):
    """The learner's current weights (version, params), waiting up to `wait_s` for its weight stream."""
    from agentic.transport.weight_stream import WeightStreamUnavailable

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.fetch(template, min_version=0, timeout=max(deadline - time.monotonic(), 1.0))
        except (WeightStreamUnavailable, TimeoutError) as e:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: no weights from the learner's weight stream at {client.address} "
                                   f"within {wait_s:.0f}s (config.remote.wait_s): is the learner running?") from e
            time.sleep(1.0)
