"""Env service benchmark: a concurrency sweep against our gRPC env host and a FastAPI baseline.

    .venv/bin/python bench/env_service.py                       # full sweep (a few minutes on 2 cores)
    .venv/bin/python bench/env_service.py --concurrency 100,1000 --envs echo --episodes 1000   # quicker

For each env (`echo`: 8 steps per episode; `game`: Wordle, replaying the scripted player's games,
about 3.5 steps per episode) and each concurrency N, N client tasks run episodes back to back
(open, step until done, close) until `--episodes` episodes (at least N) have been played. Measured
from the client: episodes/s, steps/s, step latency p50/p99, failed episodes (any error) and lost
episodes (failed or unfinished at the time limit), and CPU time per step summed over the client
and the server processes (less sensitive to other load on a shared machine than the rates). The
same sweep runs against
`bench/fastapi_baseline.py` (FastAPI + uvicorn, one HTTP request per step, envs in the server
process, the way peers build env servers) through an aiohttp client with a connection pool of
min(N, --baseline-connections). Both servers run on this machine as separate processes; the
client shares the CPU with them. Each point runs against ours and then at once against the
baseline, so both see the same machine load; ratios (ours / baseline) come from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from agentic.env.client import EnvClient  # noqa: E402
from agentic.env.local_hosts import (
    HostProcess,  # noqa: E402
    free_port,  # noqa: E402
)
from envs.game.player import play_transcript  # noqa: E402
from envs.game.words import word_list  # noqa: E402

ECHO_STEPS = 8
GAMES = 64


def game_scripts() -> list[tuple[dict, list[str]]]:
    words = word_list()
    return [({"index": i * 31}, play_transcript(words[(i * 31) % len(words)], words)) for i in range(GAMES)]


def episode_plan(env: str, k: int, scripts) -> tuple[dict, list[str]]:
    if env == "echo":
        return {"turns": ECHO_STEPS}, [f"action {k} {t}" for t in range(ECHO_STEPS)]
    return scripts[k % len(scripts)]


class Tally:
    def __init__(self):
        self.latencies: list[float] = []
        self.episodes = self.failed = 0
        self.errors: dict[str, int] = {}

    def fail(self, e: BaseException) -> None:
        self.failed += 1
        name = type(e).__name__
        self.errors[name] = self.errors.get(name, 0) + 1


def cpu_seconds(pids: list[int]) -> float:
    """CPU time used so far by this process (client) and the server processes `pids` (+ children)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    total = me.ru_utime + me.ru_stime
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


async def run_point(env: str, n: int, total: int, scripts, open_fn, step_fn, close_fn, limit_s: float,
                    server_pids: list[int]) -> dict:
    tally = Tally()
    cpu0 = cpu_seconds(server_pids)
    counter = iter(range(total))

    async def slot():
        for k in counter:
            task, actions = episode_plan(env, k, scripts)
            try:
                handle = await open_fn(env, task)
                for i, action in enumerate(actions):
                    t0 = time.perf_counter()
                    done = await step_fn(handle, action)
                    tally.latencies.append(time.perf_counter() - t0)
                    if done:
                        break
                    if i == len(actions) - 1:
                        raise RuntimeError("episode did not end")
                await close_fn(handle)
                tally.episodes += 1
            except Exception as e:  # noqa: BLE001 - every failure is counted, none stops the sweep
                tally.fail(e)

    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(slot()) for _ in range(n)]
    _, pending = await asyncio.wait(tasks, timeout=limit_s)
    for t in pending:
        t.cancel()
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(server_pids) - cpu0
    lat = np.array(tally.latencies) * 1000 if tally.latencies else np.zeros(1)
    return {"env": env, "concurrency": n, "episodes": tally.episodes, "wall_s": round(wall, 2),
            "episodes_per_s": round(tally.episodes / wall, 1), "steps_per_s": round(len(tally.latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "cpu_us_per_step": round(cpu / max(1, len(tally.latencies)) * 1e6, 1),
            "failed": tally.failed, "lost": total - tally.episodes, "errors": tally.errors}


async def sweep(address: str, url: str | None, envs, levels, episodes, scripts, limit_s, max_connections,
                ours_pid: int, baseline_pid: int | None):
    """Runs each (env, N) point against ours, then at once against the baseline, so both see the same
    machine load (other processes on a shared machine come and go)."""
    ours, base = [], []
    async with EnvClient(address) as client:
        async def open_ours(env, task):
            return (await client.open(env, task))[0]

        async def step_ours(session, action):
            step = await client.step(session, action)
            return step.done or step.truncated

        for env in envs:
            for n in levels:
                total = max(n, episodes)
                ours.append(await run_point(env, n, total, scripts, open_ours, step_ours, client.close, limit_s,
                                            [ours_pid]))
                print(_fmt("ours", ours[-1]), flush=True)
                if url:
                    base.append(await baseline_point(url, env, n, total, scripts, limit_s, max_connections,
                                                     baseline_pid))
                    print(_fmt("baseline", base[-1]), flush=True)
    return ours, base


async def baseline_point(url: str, env: str, n: int, total: int, scripts, limit_s, max_connections,
                         pid: int) -> dict:
    connector = aiohttp.TCPConnector(limit=min(n, max_connections))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        async def post(path, body):
            async with http.post(url + path, json=body) as r:
                r.raise_for_status()
                return await r.json()

        async def open_fn(env, task):
            return (await post("/open", {"env": env, "task": task}))["session_id"]

        async def step_fn(sid, action):
            s = await post("/step", {"session_id": sid, "action": action})
            return s["done"] or s["truncated"]

        async def close_fn(sid):
            await post("/close", {"session_id": sid})

        return await run_point(env, n, total, scripts, open_fn, step_fn, close_fn, limit_s, [pid])


def _fmt(impl: str, r: dict) -> str:
    return (f"{impl:9s} {r['env']:5s} N={r['concurrency']:<5d} episodes={r['episodes']:<6d} "
            f"ep/s={r['episodes_per_s']:<8.1f} steps/s={r['steps_per_s']:<9.1f} p50={r['p50_ms']:<8.2f}ms "
            f"p99={r['p99_ms']:<8.2f}ms cpu/step={r['cpu_us_per_step']:<7.1f}us failed={r['failed']} "
            f"lost={r['lost']} {r['errors'] or ''}")


def start_baseline(envs) -> tuple[subprocess.Popen, str]:
    port = free_port()
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen([sys.executable, os.path.join(here, "fastapi_baseline.py"), "--port", str(port),
                             "--envs", ",".join(envs)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("FastAPI baseline did not start")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", default="echo,game")
    p.add_argument("--concurrency", default="100,500,1000,2000,5000")
    p.add_argument("--episodes", type=int, default=2000, help="episodes per point (at least N)")
    p.add_argument("--workers", type=int, default=1, help="env host worker processes per env kind")
    p.add_argument("--baseline-connections", type=int, default=1000)
    p.add_argument("--limit-s", type=float, default=300.0, help="time limit per point; unfinished = lost")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--out", default="", help="also write the rows as JSON here")
    a = p.parse_args()
    envs = [e for e in a.envs.split(",") if e]
    levels = [int(x) for x in a.concurrency.split(",") if x]
    scripts = game_scripts()
    print(f"env service bench: envs={envs} concurrency={levels} episodes/point={a.episodes} "
          f"cpus={os.cpu_count()} workers/env={a.workers} load average={os.getloadavg()[0]:.1f}", flush=True)

    proc, url = start_baseline(envs) if not a.skip_baseline else (None, None)
    try:
        with HostProcess(envs, "--import", "envs", "--workers", str(a.workers), "--max-sessions", "20000") as host:
            ours, base = asyncio.run(sweep(host.address, url, envs, levels, a.episodes, scripts, a.limit_s,
                                           a.baseline_connections, host.proc.pid, proc.pid if proc else None))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")

    print("\nours / baseline (same run; steps/s: >1 = ours better; latency and CPU per step: <1 = ours better)")
    print(f"{'env':5s} {'N':>5s} {'steps/s ratio':>14s} {'p50 ratio':>10s} {'p99 ratio':>10s} "
          f"{'cpu/step ratio':>15s} {'ours lost':>10s} {'base lost':>10s}")
    for o in ours:
        b = next((r for r in base if r["env"] == o["env"] and r["concurrency"] == o["concurrency"]), None)
        if b is None:
            continue
        if not b["episodes"]:  # nothing to compare against: say so rather than print an infinite ratio
            print(f"{o['env']:5s} {o['concurrency']:5d}  baseline finished no episode ({b['errors']}): no ratio")
            continue
        ratio = o["steps_per_s"] / b["steps_per_s"]
        print(f"{o['env']:5s} {o['concurrency']:5d} {ratio:14.2f} {o['p50_ms'] / max(b['p50_ms'], 1e-9):10.2f} "
              f"{o['p99_ms'] / max(b['p99_ms'], 1e-9):10.2f} "
              f"{o['cpu_us_per_step'] / max(b['cpu_us_per_step'], 1e-9):15.2f} {o['lost']:10d} {b['lost']:10d}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"ours": ours, "baseline": base}, f, indent=1)


if __name__ == "__main__":
    main()
