"""Episodes that survive their worker: a deterministic env's sessions are replayed onto a fresh worker
after SIGKILL (idle or mid-step), a non-deterministic reply or a poison action fails typed, and a
CI-scale kill storm loses no replayable episode while the undeclared kind's losses are all typed."""

import asyncio
import functools
import os
import random
import signal
import time

import grpc
import pytest

from agentic.env.errors import EnvError, SessionLost
from agentic.env.local_hosts import HostProcess
from agentic.env.proto import env_service_pb2 as pb
from agentic.env.proto import env_service_pb2_grpc as pb_grpc
from tests.env.replayable_env import expected
from tests.env_client import run_with_client


@pytest.fixture(scope="module")
def host():
    with HostProcess(["replayable", "unreplayable"], "--import", "tests.env.replayable_env", "--workers", "3") as h:
        yield h


def worker_pids(address, env):
    with grpc.insecure_channel(address) as ch:
        info = pb_grpc.EnvServiceStub(ch).Info(pb.InfoRequest(), timeout=5)
    return list(next(k.worker_pids for k in info.envs if k.name == env))


def kill_all(address, env):
    for pid in worker_pids(address, env):
        os.kill(pid, signal.SIGKILL)


run = functools.partial(run_with_client, timeout_s=120)


def test_sessions_survive_sigkill_idle_and_mid_step(host):
    actions = ["a", "b", "wait:0.5", "c"]

    async def body(client):
        opened = [await client.open(env, {"seed": i}) for env in ("replayable", "unreplayable") for i in range(6)]
        for s, _ in opened:
            await client.step(s, "a")
            await client.step(s, "b")
        kill_all(host.address, "replayable")  # idle: between steps
        kill_all(host.address, "unreplayable")
        results = await asyncio.gather(*(client.step(s, "wait:0.5") for s, _ in opened), return_exceptions=True)
        await asyncio.sleep(0.15)
        kill_all(host.address, "replayable")  # mid-step: the "c" steps are in flight
        last = await asyncio.gather(*(client.step(s, "c") for s, _ in opened[:6]), return_exceptions=True)
        metrics = [await client.close(s) for s, _ in opened[:6]]
        return results, last, metrics

    results, last, metrics = run(host.address, body)
    for i in range(6):
        want = expected({"seed": i}, actions)
        assert results[i].observation == want[2] and last[i].observation == want[3], (results[i], last[i])
        assert metrics[i] == {"steps": 4.0}
    assert all(isinstance(r, SessionLost) for r in results[6:]), results[6:]


def test_a_replay_that_differs_or_a_poison_action_fails_typed(host):
    async def body(client):
        diverging, _ = await client.open("replayable", {"seed": 100})
        await client.step(diverging, "pid")  # the pid differs on the next worker
        poisoned, _ = await client.open("replayable", {"seed": 101})
        bystander, _ = await client.open("replayable", {"seed": 102})
        await client.step(bystander, "a")
        kill_all(host.address, "replayable")
        with pytest.raises(SessionLost) as diverged:
            await client.step(diverging, "a")
        with pytest.raises(SessionLost) as poison:
            await client.step(poisoned, "exit")
        after = await client.step(bystander, "b")  # its workers died too, it was replayed
        return str(diverged.value), str(poison.value), after

    diverged, poison, after = run(host.address, body)
    assert "answered differently" in diverged
    # typed, naming the poison's exit: after 5 deaths, or when no worker is left alive to replay onto
    assert ("died 5 times" in poison or "no live worker could take its replay" in poison), poison
    assert "exited with code 7" in poison, poison
    assert after.observation == expected({"seed": 102}, ["a", "b"])[1]


def test_kill_storm_at_ci_scale(host):
    episodes, steps = 300, 10

    async def body(client):
        outcome = {"replayable": [0, 0, {}], "unreplayable": [0, 0, {}]}

        async def episode(env, k):
            task = {"seed": 1000 + k}
            acts = [f"wait:{random.uniform(0, 0.3):.3f}" for _ in range(steps)]
            try:
                session, _ = await client.open(env, task)
                got = [(await client.step(session, a)).observation for a in acts]
                await client.close(session)
                assert got == expected(task, acts)
                outcome[env][0] += 1
            except EnvError as e:
                outcome[env][1] += 1
                outcome[env][2][type(e).__name__] = outcome[env][2].get(type(e).__name__, 0) + 1
                outcome[env].append(str(e)[:300]) if len(outcome[env]) < 5 else None

        async def storm():
            rng = random.Random(0)
            kills = 0
            while not done.is_set():  # one SIGKILL every 0.8 s, alternating between the two kinds
                await asyncio.sleep(0.8)
                pids = worker_pids(host.address, ("replayable", "unreplayable")[kills % 2])
                if pids:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    kills += 1
            return kills

        done = asyncio.Event()
        killer = asyncio.ensure_future(storm())
        t0 = time.monotonic()
        await asyncio.gather(*(episode(env, k) for env in ("replayable", "unreplayable") for k in range(episodes)))
        done.set()
        return outcome, await killer, time.monotonic() - t0

    outcome, kills, elapsed = run(host.address, body)
    print(f"kill storm: {kills} SIGKILLs in {elapsed:.1f}s; {outcome}", flush=True)
    completed, failed, errors = outcome["replayable"][:3]
    assert kills >= 3 and completed == episodes and failed == 0, outcome
    done_u, failed_u, errors_u = outcome["unreplayable"][:3]
    assert done_u + failed_u == episodes and set(errors_u) <= {"SessionLost"}, outcome
