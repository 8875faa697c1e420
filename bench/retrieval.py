"""Retrieval benchmark: micro-batching vs one query per call, at 256 concurrent episodes.

    .venv/bin/python bench/retrieval.py                          # bm25, http and dense (a few minutes on 2 cores)
    .venv/bin/python bench/retrieval.py --backends bm25,http     # quicker

N episodes (asyncio tasks, default 256) each issue `--searches` searches one after the other, the
way Search-R1 episodes do, with queries taken from the synthetic world's held-out questions.
Two ways to serve them, on the same retriever, in the same run:

  * micro-batched: every episode awaits `MicroBatcher.search` (max batch 256, 5 ms wait, 2 worker
    threads), which answers the queries that arrive together with one `batch_search` call;
  * one query per call (baseline): every episode calls `retriever.batch_search([query])` itself,
    in asyncio's default thread pool (what an async env must do without a batcher so as not to
    block its event loop).

Both modes run `--repeats` times, alternating, and the best run of each counts (the machine may
be shared). Backends: `bm25` (in process, over the 20k-passage world's bm25s index), `http` (our
`envs.search.retrieval_server` in a subprocess serving the same BM25 index, reached through
`HttpRetriever`: Search-R1's deployment; the server micro-batches across requests in both runs,
so only the client side differs) and `dense` (Flax MiniLM + faiss in process, over a
`--dense-passages` world since encoding 20k passages on CPU takes minutes). Prints, per backend,
queries/s of both modes and their ratio, and the CPU time spent per query (this process, plus the
retrieval server's for `http`): on a shared machine the CPU ratio is the steadier of the two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psutil  # noqa: E402

from envs.search.batching import MicroBatcher  # noqa: E402
from envs.search.build_index import build_index, cached_world  # noqa: E402
from envs.search.retrieval import HttpRetriever, load_retriever  # noqa: E402
from envs.search.world import build_world  # noqa: E402


async def _run(search, queries: list[str], episodes: int, searches: int, topk: int) -> float:
    async def episode(e: int):
        for s in range(searches):
            hits = await search(queries[(e * searches + s) % len(queries)], topk)
            assert hits, "empty result"

    start = time.perf_counter()
    await asyncio.gather(*(episode(e) for e in range(episodes)))
    return episodes * searches / (time.perf_counter() - start)


def _cpu_s(procs) -> float:
    return sum(t.user + t.system for t in (p.cpu_times() for p in procs))


def measure(retriever, queries, episodes, searches, topk, max_wait_ms, procs, repeats) -> dict:
    """Both modes on one retriever, alternated `repeats` times; the best run of each mode counts.

    `procs` (psutil) are the processes whose CPU time is counted.
    """
    retriever.batch_search(queries[:8], topk)  # warm up (compiles, connections)

    def timed(search) -> tuple[float, float]:
        cpu = _cpu_s(procs)
        qps = asyncio.run(_run(search, queries, episodes, searches, topk))
        return qps, (_cpu_s(procs) - cpu) / (episodes * searches) * 1e3

    async def one_per_call(query, k):
        return (await asyncio.to_thread(retriever.batch_search, [query], k))[0]

    batcher = MicroBatcher(retriever, max_batch=256, max_wait_ms=max_wait_ms)
    batched, single = [], []
    for _ in range(repeats):
        batched.append(timed(batcher.search))
        single.append(timed(one_per_call))
    calls, served = batcher.calls, batcher.queries
    batcher.close()
    b_qps, s_qps = max(q for q, _ in batched), max(q for q, _ in single)
    b_cpu, s_cpu = min(c for _, c in batched), min(c for _, c in single)
    return {"batched_qps": b_qps, "single_qps": s_qps, "ratio": b_qps / s_qps, "batched_cpu_ms_per_query": b_cpu,
            "single_cpu_ms_per_query": s_cpu, "cpu_ratio": s_cpu / max(b_cpu, 1e-9),
            "mean_batch": served / max(calls, 1)}


def _start_server(index_dir: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "envs.search.retrieval_server", "--index", index_dir,
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    line = proc.stdout.readline()
    if "retrieval server" not in line:
        proc.kill()
        raise RuntimeError(f"retrieval server did not start: {line}{proc.stdout.read()}")
    url = f"http://127.0.0.1:{port}/retrieve"
    for _ in range(200):  # uvicorn binds after the ready line
        try:
            HttpRetriever(url, timeout_s=2).batch_search(["x"], 1)
            return proc
        except ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("retrieval server did not answer")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="bm25,http,dense")
    p.add_argument("--episodes", type=int, default=256)
    p.add_argument("--searches", type=int, default=4, help="searches per episode")
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--passages", type=int, default=20_000)
    p.add_argument("--dense-passages", type=int, default=1000)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3, help="alternating runs per mode; the best counts")
    p.add_argument("--port", type=int, default=0, help="retrieval server port (0: a free one)")
    args = p.parse_args()

    world = cached_world(args.passages, seed=0)
    queries = [t["question"] for t in world.test_tasks]
    print(f"{args.episodes} concurrent episodes x {args.searches} searches, topk {args.topk}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, best of {args.repeats}")
    results = {}
    for backend in args.backends.split(","):
        proc = None
        procs = [psutil.Process()]
        if backend == "bm25":
            retriever, n = load_retriever("bm25", index_dir=world.index_dir), args.passages
        elif backend == "http":
            import portpicker

            port = args.port or portpicker.pick_unused_port()
            proc = _start_server(world.index_dir, port)
            procs.append(psutil.Process(proc.pid))
            retriever, n = HttpRetriever(f"http://127.0.0.1:{port}/retrieve"), args.passages
        elif backend == "dense":
            small = build_world(args.dense_passages, seed=0)
            out = build_index(small.corpus, tempfile.mkdtemp(prefix="bench_dense_"), bm25=False, dense=True)
            retriever, n = load_retriever("dense", index_dir=out), args.dense_passages
            queries_for = [t["question"] for t in small.test_tasks]
        else:
            raise SystemExit(f"unknown backend {backend!r}")
        try:
            r = measure(retriever, queries_for if backend == "dense" else queries, args.episodes, args.searches,
                        args.topk, args.max_wait_ms, procs, args.repeats)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=10)
        results[backend] = {**r, "passages": n}
        print(f"{backend:6s} {n:6d} passages: micro-batched {r['batched_qps']:9.0f} q/s "
              f"(mean batch {r['mean_batch']:5.1f}) | one query per call {r['single_qps']:8.0f} q/s "
              f"| ratio {r['ratio']:5.1f}x; CPU ms/query {r['batched_cpu_ms_per_query']:.3f} vs "
              f"{r['single_cpu_ms_per_query']:.3f} ({r['cpu_ratio']:.1f}x less)", flush=True)
    print(json.dumps({k: {m: round(v, 2) for m, v in r.items()} for k, r in results.items()}))


if __name__ == "__main__":
    main()
