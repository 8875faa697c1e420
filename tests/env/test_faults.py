"""Fault injection under load: many concurrent episodes over several env kinds while workers are
SIGKILLed at random, one worker hangs and one dies mid-frame. Counted at the end: no episode lost
(each completed or failed with a typed EnvError), none hung, every worker back, no session open."""

import asyncio
import collections
import os
import random
import signal
import time

from agentic.env.client import EnvClient
from agentic.env.errors import EnvError
from agentic.env.local_hosts import HostProcess
from agentic.env.proto import env_service_pb2 as pb

WORKERS = {"echo": 2, "faulty": 2, "sluggish": 1}
PLAYERS = 240  # concurrent episodes, each played back to back for the length of the fault window
STEPS = 6
FAULT_WINDOW_S = 6.0
EPISODE_BOUND_S = 20.0  # an episode still running after this is counted as hung


async def _host_state(client: EnvClient) -> tuple[dict[str, list[int]], dict[str, int]]:
    """(live worker pids, open sessions) per env kind, from the host's Info."""
    (host,) = client._hosts.values()
    info = await host.stub.Info(pb.InfoRequest(), timeout=5)
    return {k.name: list(k.worker_pids) for k in info.envs}, {k.name: k.open_sessions for k in info.envs}


async def _episode(client: EnvClient, env: str, rng: random.Random, special: str | None, spare: set[int]):
    session, _ = await client.open(env, {"turns": STEPS} if env == "echo" else {})
    try:
        if special == "hang":
            spare.add(int((await client.step(session, "pid")).observation))  # the killer leaves it to hang
            await client.step(session, "block:30")  # blocks the worker's event loop: deadline, recycle
        elif special == "tear":
            await client.step(session, "tear")  # half a frame, then the worker SIGKILLs itself
        for t in range(STEPS):
            action = f"{env}:{t}" if env == "echo" else f"sleep:{rng.uniform(0.01, 0.1):.3f}"
            step = await client.step(session, action)
            assert step.observation == action, (step.observation, action)
            await asyncio.sleep(rng.uniform(0.02, 0.2))
        assert env != "echo" or step.done
        return "completed"
    finally:
        await client.close(session)


async def _play(client, player: int, outcomes: collections.Counter, failures: list, spare: set[int]):
    rng = random.Random(player)
    env = ("echo", "faulty", "sluggish")[player % 3]
    special = {1: "hang", 4: "tear"}.get(player)
    t_end = time.monotonic() + FAULT_WINDOW_S
    while True:
        try:
            outcome = await asyncio.wait_for(_episode(client, env, rng, special, spare), EPISODE_BOUND_S)
        except EnvError as e:  # typed: the episode is accounted for
            outcome = type(e).__name__
        except TimeoutError:
            outcome = "hung"
        except Exception as e:  # untyped: lost
            outcome = "lost"
            failures.append(repr(e))
        outcomes[outcome] += 1
        if special:
            outcomes[f"{special}:{outcome}"] += 1
        special = None
        if time.monotonic() > t_end:
            return


async def _killer(client, spare: set[int], kills: list[int]):
    rng = random.Random(0)
    born: dict[int, float] = {}
    t_end = time.monotonic() + FAULT_WINDOW_S
    while time.monotonic() < t_end:
        await asyncio.sleep(rng.uniform(0.15, 0.4))
        pids, _ = await _host_state(client)
        now = time.monotonic()
        for pid in (p for ps in pids.values() for p in ps):
            born.setdefault(pid, now)
        # Workers a moment old only: killing one that just started is a crash loop, which backs off.
        victims = [p for p, t in born.items() if now - t > 1.0 and p not in spare and p not in kills
                   and any(p in ps for ps in pids.values())]
        if victims:
            victim = rng.choice(victims)
            os.kill(victim, signal.SIGKILL)
            kills.append(victim)


def test_random_worker_kills_and_a_hang_lose_no_episode():
    workers = ",".join(f"{k}={n}" for k, n in WORKERS.items())
    with HostProcess(list(WORKERS), "--import", "envs", "--import", "tests.env.faulty_env", "--workers", workers,
                     "--max-sessions", "1000") as host:
        async def body():
            async with EnvClient(host.address) as client:
                outcomes, failures, spare, kills = collections.Counter(), [], set(), []
                t0 = time.monotonic()
                await asyncio.gather(_killer(client, spare, kills),
                                     *(_play(client, i, outcomes, failures, spare) for i in range(PLAYERS)))
                elapsed = time.monotonic() - t0
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:  # every worker back, no session left open
                    pids, open_sessions = await _host_state(client)
                    if all(len(pids[k]) == n for k, n in WORKERS.items()) and not any(open_sessions.values()):
                        break
                    await asyncio.sleep(0.1)
                after = [await _episode(client, env, random.Random(0), None, set()) for env in WORKERS]
                return outcomes, failures, kills, elapsed, pids, open_sessions, after, dict(client.stats)

        outcomes, failures, kills, elapsed, pids, open_sessions, after, stats = asyncio.run(body())
    summary = f"{dict(outcomes)} kills={len(kills)} elapsed={elapsed:.1f}s stats={stats}"
    print(summary)
    assert outcomes["lost"] == 0, (summary, failures[:5])
    assert outcomes["hung"] == 0, summary
    assert len(kills) >= 5 and outcomes["SessionLost"] >= 5, summary
    assert outcomes["completed"] >= PLAYERS, summary
    assert outcomes["hang:EnvDeadlineExceeded"] == 1 and outcomes["tear:SessionLost"] == 1, summary
    assert {k: len(p) for k, p in pids.items()} == WORKERS, (pids, summary)
    assert not set(kills) & {p for ps in pids.values() for p in ps}
    assert not any(open_sessions.values()), open_sessions
    assert after == ["completed"] * len(WORKERS)
