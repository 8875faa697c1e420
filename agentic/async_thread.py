"""An asyncio event loop on its own thread: where actors (and their env and
generator clients) live while the learner trains on the main thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any


class AsyncThread:
    """Runs coroutines on a private event loop in a daemon thread."""

    def __init__(self, name: str = "actors"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine, timeout: float | None = None) -> Any:
        """Runs `coro` on the loop and waits for its result."""
        return self.submit(coro).result(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Cancels what is still running, then stops the loop and joins the thread."""
        if not self.loop.is_running():
            return

        async def _cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.submit(_cancel_all()).result(timeout)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
