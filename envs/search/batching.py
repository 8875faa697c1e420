"""Micro-batching: queries from concurrent episodes that arrive within a few ms share one call.

A `MicroBatcher` owns one worker thread. Callers (any thread, any asyncio loop) enqueue a query;
the worker takes the first waiting query, keeps collecting until `max_wait_ms` has passed since
that query arrived or `max_batch` queries are waiting, and answers all of them with one
`retriever.batch_search` call. While a batch runs, new queries queue up and form the next batch,
so under load batches grow on their own. `max_batch=1` is the one-query-per-call baseline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

Hit = dict[str, Any]  # {"document": {"id": str, "contents": str}, "score": float}


class Retriever(Protocol):
    def batch_search(self, queries: Sequence[str], topk: int) -> list[list[Hit]]:
        """Top-`topk` hits for every query, best first."""


class MicroBatcher:
    """Batches concurrent `search` calls into `retriever.batch_search` calls.

    Args:
        retriever: anything with `batch_search(queries, topk)`.
        max_batch: most queries per call (1 disables batching).
        max_wait_ms: how long the first query of a batch waits for company.

    Attributes:
        calls / queries: counters of `batch_search` calls and queries served (for benchmarks).
    """

    def __init__(self, retriever: Retriever, *, max_batch: int = 256, max_wait_ms: float = 5.0):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.retriever = retriever
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.calls = 0
        self.queries = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="retrieval-microbatcher", daemon=True)
        self._thread.start()

    async def search(self, query: str, topk: int) -> list[Hit]:
        """Top-`topk` hits for one query, batched with whatever else is waiting."""
        return await asyncio.wrap_future(self.submit(query, topk))

    async def search_many(self, queries: Sequence[str], topk: int) -> list[list[Hit]]:
        return list(await asyncio.gather(*(self.search(q, topk) for q in queries)))

    def submit(self, query: str, topk: int) -> concurrent.futures.Future:
        """Thread-safe, non-blocking: a future of the hits of `query`."""
        if self._closed:
            raise RuntimeError("MicroBatcher is closed")
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((query, int(topk), fut))
        return fut

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        nxt = self._queue.get(timeout=left)
                    except queue.Empty:
                        break
                if nxt is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(nxt)
            self._serve(batch)

    def _serve(self, batch: list[tuple[str, int, concurrent.futures.Future]]) -> None:
        live = [b for b in batch if b[2].set_running_or_notify_cancel()]
        if not live:
            return
        k = max(b[1] for b in live)
        try:
            results = self.retriever.batch_search([b[0] for b in live], k)
            if len(results) != len(live):
                raise RuntimeError(f"retriever returned {len(results)} results for {len(live)} queries")
        except BaseException as e:  # every waiter learns about the failure
            for b in live:
                b[2].set_exception(e)
            return
        self.calls += 1
        self.queries += len(live)
        for (_, topk, fut), hits in zip(live, results, strict=True):
            fut.set_result(hits[:topk])
