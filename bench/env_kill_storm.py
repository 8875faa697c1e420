"""Kill storm: many concurrent episodes against one env host while its workers are SIGKILLed.

    .venv/bin/python bench/env_kill_storm.py                                # 16,000 episodes, game + echo
    .venv/bin/python bench/env_kill_storm.py --episodes 2000 --kill-every-s 0.1   # quicker

Every episode is open -> step until done -> close, all `--episodes` of them at once (per env), split
between the envs. `game` (Wordle, replaying the scripted player's games) is declared deterministic, so the
host replays a session whose worker died onto a live worker; `echo` is not declared, so its sessions on a
killed worker fail with SessionLost. A killer SIGKILLs a random worker of a random env every
`--kill-every-s` until all episodes end. Reported per env: completed, failed (by error type), lost (failed
or unfinished at `--limit-s`), wrong (completed but not as an unbroken episode would: Wordle unsolved,
echo's observation not the action), the kills and the wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import grpc  # noqa: E402

from agentic.env.client import EnvClient  # noqa: E402
from agentic.env.local_hosts import HostProcess  # noqa: E402
from agentic.env.proto import env_service_pb2 as pb  # noqa: E402
from agentic.env.proto import env_service_pb2_grpc as pb_grpc  # noqa: E402
from bench.env_service import ECHO_STEPS, game_scripts  # noqa: E402


def worker_pids(address: str) -> dict[str, list[int]]:
    with grpc.insecure_channel(address) as ch:
        info = pb_grpc.EnvServiceStub(ch).Info(pb.InfoRequest(), timeout=30)
    return {k.name: list(k.worker_pids) for k in info.envs}


async def storm(address: str, envs: list[str], episodes: int, kill_every_s: float, limit_s: float) -> dict:
    scripts = game_scripts()
    tally = {env: {"completed": 0, "wrong": 0, "errors": {}} for env in envs}

    async def episode(client: EnvClient, env: str, k: int) -> None:
        if env == "game":
            task, actions = scripts[k % len(scripts)]
        else:
            task, actions = {"turns": ECHO_STEPS}, [f"action {k} {t}" for t in range(ECHO_STEPS)]
        try:
            session, _ = await client.open(env, task)
            right = True
            for action in actions:
                step = await client.step(session, action)
                right &= env != "echo" or step.observation == action
                if step.done:
                    break
            right &= step.done and step.reward == 1.0
            await client.close(session)
            tally[env]["completed"] += 1
            tally[env]["wrong"] += not right
        except Exception as e:  # noqa: BLE001 - every failure is counted by type
            errors = tally[env]["errors"]
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    done = asyncio.Event()

    async def killer() -> int:
        rng, kills = random.Random(0), 0
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), kill_every_s)
            except TimeoutError:
                pids = await asyncio.to_thread(worker_pids, address)
                env = rng.choice(envs)
                if pids.get(env):
                    os.kill(rng.choice(pids[env]), signal.SIGKILL)
                    kills += 1
        return kills

    async with EnvClient(address) as client:
        kill_task = asyncio.ensure_future(killer())
        t0 = time.monotonic()
        jobs = [asyncio.ensure_future(episode(client, envs[k % len(envs)], k // len(envs))) for k in range(episodes)]
        _, pending = await asyncio.wait(jobs, timeout=limit_s)
        for job in pending:
            job.cancel()
        wall = time.monotonic() - t0
        done.set()
        kills = await kill_task
    per_env = episodes // len(envs)
    for env in envs:
        t = tally[env]
        t["failed"] = sum(t["errors"].values())
        t["lost"] = per_env - t["completed"]
    return {"episodes": episodes, "kills": kills, "wall_s": round(wall, 1), "unfinished": len(pending), **tally}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", default="game,echo")
    p.add_argument("--episodes", type=int, default=16_000, help="concurrent episodes, split between the envs")
    p.add_argument("--workers", type=int, default=4, help="worker processes per env kind")
    p.add_argument("--kill-every-s", type=float, default=0.25)
    p.add_argument("--limit-s", type=float, default=900.0)
    a = p.parse_args()
    envs = [e for e in a.envs.split(",") if e]
    print(f"kill storm: {a.episodes} concurrent episodes over {envs}, {a.workers} workers each, a SIGKILL every "
          f"{a.kill_every_s:g}s; cpus={os.cpu_count()} load average={os.getloadavg()[0]:.1f}", flush=True)
    with HostProcess(envs, "--import", "envs", "--workers", str(a.workers), "--max-sessions", "20000") as host:
        result = asyncio.run(storm(host.address, envs, a.episodes, a.kill_every_s, a.limit_s))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print(f"{result['kills']} SIGKILLs, wall {result['wall_s']} s, {result['unfinished']} unfinished at the limit")
    for env in envs:
        t = result[env]
        print(f"{env:5s} completed {t['completed']:6d}  failed {t['failed']:6d} {t['errors']}  lost {t['lost']:6d}  "
              f"wrong {t['wrong']}")


if __name__ == "__main__":
    main()
