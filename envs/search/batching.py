"""Micro-batching: queries from concurrent episodes that arrive within a few ms share one call.

A `MicroBatcher` owns a few worker threads. Callers (any thread, any asyncio loop) enqueue a
query; a worker takes the first waiting query, keeps collecting until `max_wait_ms` has passed
since that query arrived or `max_batch` queries are waiting, and answers all of them with one
`retriever.batch_search` call, waking each caller's event loop once per batch. While a batch
runs, new queries queue up and form the next batch, so under load batches grow on their own.
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
        workers: batches served at once, each by its own thread (retrievers that release the GIL,
            numpy / faiss / HTTP, use several cores this way).

    Attributes:
        calls / queries: counters of `batch_search` calls and queries served (for benchmarks).
    """

    def __init__(self, retriever: Retriever, *, max_batch: int = 256, max_wait_ms: float = 5.0,
                 workers: int = 2):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.retriever = retriever
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.calls = 0
        self.queries = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._take = threading.Lock()  # one worker at a time gathers a batch
        self._count = threading.Lock()
        self._closed = False
        self._threads = [threading.Thread(target=self._run, name=f"retrieval-microbatcher-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    async def search(self, query: str, topk: int) -> list[Hit]:
        """Top-`topk` hits for one query, batched with whatever else is waiting."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._put(query, topk, (loop, fut))
        return await fut

    async def search_many(self, queries: Sequence[str], topk: int) -> list[list[Hit]]:
        return list(await asyncio.gather(*(self.search(q, topk) for q in queries)))

    def submit(self, query: str, topk: int) -> concurrent.futures.Future:
        """Thread-safe, non-blocking: a future of the hits of `query`."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._put(query, topk, fut)
        return fut

    def _put(self, query: str, topk: int, waiter) -> None:
        if self._closed:
            raise RuntimeError("MicroBatcher is closed")
        self._queue.put((query, int(topk), waiter))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for _ in self._threads:
                self._queue.put(None)
            for t in self._threads:
                t.join(timeout=5)

    def _gather(self) -> list | None:
        with self._take:
            item = self._queue.get()
            if item is None:
                return None
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
                    self._queue.put(None)  # finish this batch; the sentinel stops a worker next
                    break
                batch.append(nxt)
            return batch

    def _run(self) -> None:
        while (batch := self._gather()) is not None:
            self._serve(batch)

    def _serve(self, batch: list[tuple[str, int, Any]]) -> None:
        k = max(b[1] for b in batch)
        try:
            results = self.retriever.batch_search([b[0] for b in batch], k)
            if len(results) != len(batch):
                raise RuntimeError(f"retriever returned {len(results)} results for {len(batch)} queries")
            outcomes = [(waiter, hits[:topk], None) for (_, topk, waiter), hits in zip(batch, results, strict=True)]
            with self._count:
                self.calls += 1
                self.queries += len(batch)
        except Exception as e:  # every waiter learns about the failure
            outcomes = [(waiter, None, e) for _, _, waiter in batch]
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for waiter, hits, error in outcomes:
            if isinstance(waiter, concurrent.futures.Future):
                if waiter.set_running_or_notify_cancel():
                    _settle(waiter, hits, error)
            else:
                by_loop.setdefault(waiter[0], []).append((waiter[1], hits, error))
        for loop, items in by_loop.items():  # one wake-up per event loop per batch
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass


def _settle(fut, hits, error: BaseException | None) -> None:
    if error is None:
        fut.set_result(hits)
    else:
        fut.set_exception(error)


def _resolve(items: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    for fut, hits, error in items:
        if not fut.done():  # the episode may have been cancelled meanwhile
            _settle(fut, hits, error)
