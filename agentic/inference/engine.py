"""The embedded JAX generation engine behind the async Generator protocol (`JaxEngine`).

The engine's parts, one job per file:

* `engine_config.py`: `EngineConfig`, its capacity and shapes;
* `kv_pages.py`: the KV cache's page pool and the sequences holding pages;
* `engine_step.py`: the compiled prefill / decode / mixed / page-copy programs, their shardings,
  and the served model (KV heads repeated when tensor parallelism exceeds them);
* `scheduler.py`: `EngineCore`, the synchronous scheduler (admission by free pages, prefix
  sharing, chunked prefill, mixed prefill/decode steps, continuous batching, preemption, weight
  swap, AOT lowering);
* `replicas.py`: data-parallel engine replicas behind one Generator, and their plan;
* `decode_model.py`: the forward pass over the paged cache; `sampling.py`, `stops.py`.

This module runs an `EngineCore` on a background thread (`JaxEngine`) and publishes learner
weights to it (`EngineWeights`); it re-exports the names other code imports.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any

import jax

from agentic import models
from agentic.core import Completion, GenerateRequest, Generator, GeneratorError, WeightPublisher
from agentic.inference.engine_config import EngineConfig
from agentic.inference.engine_step import param_shardings
from agentic.inference.scheduler import EngineCore, check_update_running

__all__ = ["EngineConfig", "EngineCore", "EngineWeights", "JaxEngine", "param_shardings"]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- async wrapper


class JaxEngine(Generator):
    """The embedded engine behind the async Generator protocol.

    A daemon thread steps `EngineCore` while requests are in flight; asyncio
    callers await futures that the thread resolves. JAX releases the GIL while
    it computes, so the event loop (env calls, HTTP) keeps running.

    Usage:
        engine = JaxEngine(config, params, tokenizer, EngineConfig(num_slots=32, max_len=4096))
        [c] = await engine.generate([GenerateRequest(prompt_ids=ids, params=SamplingParams(...),
                                                     session_id=episode_id)])
        await engine.release(episode_id)          # episode over: free its cached prefix
        engine.update_params(new_params, version) # from any thread; swapped between decode steps
        engine.pause("in_place"); ...; engine.continue_generation()   # SGLang's pause modes

    A request whose `generate` call is cancelled is aborted in the engine (its row and pages
    freed at the next step); `abort(key)` does the same for a request given a key.
    """

    def __init__(self, config: models.ModelConfig | None = None, params: Any = None, tokenizer: Any = None,
                 engine_config: EngineConfig = EngineConfig(), *, core: EngineCore | None = None, **kw):
        """Builds an EngineCore from (config, params, tokenizer, engine_config, devices=...),
        or steps an existing `core` (then nothing else may step it while this engine is open)."""
        self.core = core if core is not None else EngineCore(config, params, tokenizer, engine_config, **kw)
        self._wake = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="jax-engine", daemon=True)
        self._thread.start()

    @property
    def tokenizer(self):
        return self.core.tokenizer

    @property
    def weight_version(self) -> int:
        return self.core.weight_version

    def _notify(self):
        with self._wake:
            self._wake.notify()

    def _run(self):
        try:
            while True:
                with self._wake:
                    while not self._closed and not self.core.busy:
                        self._wake.wait(0.5)
                if self._closed:
                    break
                self.core.step()
        except BaseException as e:  # surface engine crashes to every waiter
            log.exception("engine loop crashed")
            self._error = e
        finally:
            self.core.abort_all("engine shut down" if self._error is None else f"engine error: {self._error}")

    async def generate(self, requests: Sequence[GenerateRequest], keys: Sequence[Any] | None = None
                       ) -> list[Completion]:
        """Completes every request; `keys` (optional, one per request, unique among requests in
        flight) name them for `abort`. Cancelling the call aborts what has not finished."""
        if self._closed or self._error is not None:
            raise GeneratorError(f"engine is closed{f': {self._error}' if self._error else ''}")
        if keys is not None and len(keys) != len(requests):
            raise ValueError(f"generate: {len(keys)} keys for {len(requests)} requests")
        keys = list(keys) if keys is not None else [object() for _ in requests]
        loop = asyncio.get_running_loop()
        futures = []
        for req, key in zip(requests, keys, strict=True):
            fut = loop.create_future()

            def done(c, fut=fut):
                try:
                    loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(c))
                except RuntimeError:  # the caller's event loop is gone
                    pass

            try:
                self.core.submit(req, done, key=key)
            except ValueError as e:
                for k in keys[:len(futures)]:  # one bad request fails the call: end the ones queued
                    self.core.abort(k, "another request of the call was refused")
                self._notify()
                raise GeneratorError(str(e)) from e
            futures.append(fut)
        self._notify()
        try:
            return list(await asyncio.gather(*futures))
        except asyncio.CancelledError:
            for key, fut in zip(keys, futures, strict=True):
                if not fut.done():
                    self.core.abort(key, "the caller cancelled the request")
            self._notify()
            raise

    def abort(self, key: Any, message: str = "aborted") -> None:
        """Ends the request submitted with `key` at the next step; its caller gets the partial
        output with finish_reason "abort"."""
        self.core.abort(key, message)
        self._notify()

    def pause(self, mode: str = "in_place") -> None:
        """Stops generation at the next step (see `EngineCore.pause` for the modes)."""
        self.core.pause(mode)
        self._notify()

    def continue_generation(self) -> None:
        self.core.continue_generation()
        self._notify()

    @property
    def paused(self) -> bool:
        return self.core.paused is not None

    async def release(self, session_id: str) -> None:
        self.core.release(session_id)
        self._notify()

    def flush_cache(self) -> None:
        self.core.flush_cache()
        self._notify()

    def update_params(self, params: Any, version: int, *, flush_cache: bool = True, running: str = "keep",
                      wait: bool = True, timeout: float | None = 600.0) -> threading.Event:
        """Swaps weights between two decode steps (see `EngineCore.update_params`, also for
        what `running` requests do: "keep", "recompute" or "finish").

        Thread-safe; by default returns once the new weights are live. Returns an Event set
        when they are (for `wait=False`).
        """
        done = self.core.update_params(params, version, flush_cache=flush_cache, running=running, wait=False)
        if not self._thread.is_alive():  # closed or crashed: nothing steps the core, swap here
            self.core._apply_update()
        self._notify()
        if wait and not done.wait(timeout):
            raise GeneratorError(f"weight update to version {version} not applied within {timeout} s")
        return done

    async def close(self) -> None:
        self._closed = True
        self._notify()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 30)

    def close_sync(self) -> None:
        self._closed = True
        self._notify()
        self._thread.join(30)


class EngineWeights(WeightPublisher):
    """Publishes learner params to an embedded engine: resharded onto its devices and swapped
    between decode steps, no recompile. A copy: the learner donates its buffers to its next step.

    `running`: what requests in flight do at the swap (`EngineCore.update_params`): "keep"
    (partial rollouts: they continue on the new weights at the next decode step, each token
    labelled with its version), "recompute" (the same, their KV recomputed under the new
    weights first) or "finish" (the swap, and the learner, wait until they have finished).
    """

    def __init__(self, engine: JaxEngine, running: str = "keep"):
        check_update_running(running, "EngineWeights")
        self.engine = engine
        self.running = running

    def publish(self, params: Any, version: int) -> None:
        self.engine.update_params(jax.tree.map(lambda x: x.copy(), params), version, running=self.running)

