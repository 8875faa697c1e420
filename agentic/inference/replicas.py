"""Data-parallel engine replicas behind one Generator (`EngineReplicas`), and the plan that
splits the engine's devices, rows and KV pages between them (`replica_plan`).

With more devices than `tp_size`, the engine either runs one scheduler whose KV pages are split
over a "data" mesh axis (XLA partitions each step's page gathers across devices), or
`EngineConfig.replicas` independent engines, each on its own `tp_size` devices with its own rows,
page pool and scheduler thread: no step waits for another device group, and no gather crosses
devices. Per device the memory is the same (each replica holds its share of the rows and pages);
what a replica cannot do is share a prefix with another replica, so requests are routed to keep
prefixes together: an episode's next turn goes where its session's KV is cached, the requests of
one `generate` call with the same prompt (a GRPO group's samples) go to one replica, and
everything else to the replica with the fewest requests in flight.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

from agentic.core import Completion, GenerateRequest, Generator, GeneratorError
from agentic.inference.engine import JaxEngine
from agentic.inference.engine_config import EngineConfig


def replica_plan(ec: EngineConfig, devices: Sequence[Any]) -> tuple[EngineConfig, list[list[Any]]]:
    """(each replica's EngineConfig, each replica's devices) for `ec.replicas` over `devices`.

    `replicas=0` (auto) makes one replica per `tp_size` devices; 1 keeps one engine (its pages
    split over the remaining devices). Each replica gets num_slots / replicas rows and
    num_pages / replicas pages (num_pages=0 stays "every row at max_len"), and its own seed.

    Raises:
      ValueError: the devices, rows or pages do not split as asked.
    """
    devices = list(devices)
    if len(devices) % ec.tp_size:
        raise ValueError(f"tp_size {ec.tp_size} does not divide the engine's {len(devices)} devices")
    groups = len(devices) // ec.tp_size
    n = ec.replicas or groups
    if groups % n:
        raise ValueError(f"replicas={n} must divide the {groups} groups of tp_size={ec.tp_size} devices")
    if n == 1:
        return ec, [devices]
    if ec.num_slots < n:
        raise ValueError(f"num_slots={ec.num_slots} gives each of {n} replicas no row")
    pages = ec.num_pages // n if ec.num_pages else 0
    if ec.num_pages and pages < ec.pages_per_seq:
        raise ValueError(f"num_pages={ec.num_pages} over {n} replicas leaves {pages} pages each, fewer than one "
                         f"sequence of max_len={ec.max_len} needs ({ec.pages_per_seq})")
    per = dataclasses.replace(ec, num_slots=ec.num_slots // n, num_pages=pages, replicas=1)
    k = len(devices) // n
    return per, [devices[i * k:(i + 1) * k] for i in range(n)]


class EngineReplicas(Generator):
    """Several `JaxEngine`s (one per device group of `replica_plan`) behind one Generator.

    Routing: a request with a `session_id` seen before goes to that session's replica (its KV
    prefix is cached there); requests of one `generate` call with equal prompts go together; the
    rest go to the replica with the fewest requests in flight. Weight updates, pauses and
    aborts go to every replica; `weight_version` is the oldest replica's.
    """

    def __init__(self, config, params, tokenizer, engine_config: EngineConfig, *, devices: Sequence[Any],
                 weight_version: int = 0):
        per, groups = replica_plan(engine_config, devices)
        self.engines = [JaxEngine(config, params, tokenizer, dataclasses.replace(per, seed=per.seed + 7919 * i),
                                  devices=g, weight_version=weight_version) for i, g in enumerate(groups)]
        self.engine_config = per
        self._in_flight = [0] * len(self.engines)
        self._sessions: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._key_owner: dict[Any, int] = {}

    @property
    def tokenizer(self):
        return self.engines[0].tokenizer

    @property
    def weight_version(self) -> int:
        return min(e.weight_version for e in self.engines)

    def _route(self, requests: Sequence[GenerateRequest]) -> list[int]:
        out, by_prompt = [], {}
        load = list(self._in_flight)
        for r in requests:
            prompt = tuple(r.prompt_ids)
            i = self._sessions.get(r.session_id) if r.session_id is not None else None
            if i is None:
                i = by_prompt.get(prompt)
            if i is None:
                i = min(range(len(load)), key=load.__getitem__)
            by_prompt.setdefault(prompt, i)
            load[i] += 1
            if r.session_id is not None:
                self._sessions[r.session_id] = i
                self._sessions.move_to_end(r.session_id)
            out.append(i)
        while len(self._sessions) > 100_000:  # sessions never released: forget the oldest
            self._sessions.popitem(last=False)
        return out

    async def generate(self, requests: Sequence[GenerateRequest], keys: Sequence[Any] | None = None
                       ) -> list[Completion]:
        if keys is not None and len(keys) != len(requests):
            raise ValueError(f"generate: {len(keys)} keys for {len(requests)} requests")
        where = self._route(requests)
        parts: dict[int, list[int]] = collections.defaultdict(list)
        for j, i in enumerate(where):
            parts[i].append(j)
        for i, idx in parts.items():
            self._in_flight[i] += len(idx)
            for j in idx:
                if keys is not None:
                    self._key_owner[keys[j]] = i

        async def run(i: int, idx: list[int]) -> list[Completion]:
            try:
                return await self.engines[i].generate([requests[j] for j in idx],
                                                      keys=None if keys is None else [keys[j] for j in idx])
            finally:
                self._in_flight[i] -= len(idx)
                if keys is not None:
                    for j in idx:
                        self._key_owner.pop(keys[j], None)

        results = await asyncio.gather(*(run(i, idx) for i, idx in parts.items()))
        out: list[Completion | None] = [None] * len(requests)
        for idx, comps in zip(parts.values(), results, strict=True):
            for j, c in zip(idx, comps, strict=True):
                out[j] = c
        return out  # type: ignore[return-value]

    def abort(self, key: Any, message: str = "aborted") -> None:
        i = self._key_owner.get(key)
        for e in self.engines if i is None else [self.engines[i]]:
            e.abort(key, message)

    def pause(self, mode: str = "in_place") -> None:
        for e in self.engines:
            e.pause(mode)

    def continue_generation(self) -> None:
        for e in self.engines:
            e.continue_generation()

    @property
    def paused(self) -> bool:
        return any(e.paused for e in self.engines)

    async def release(self, session_id: str) -> None:
        i = self._sessions.pop(session_id, None)
        for e in self.engines if i is None else [self.engines[i]]:
            await e.release(session_id)

    def flush_cache(self) -> None:
        for e in self.engines:
            e.flush_cache()

    def update_params(self, params: Any, version: int, *, flush_cache: bool = True, running: str = "keep",
                      wait: bool = True, timeout: float | None = 600.0) -> None:
        """Every replica swaps (each reshards `params` onto its devices, device to device); with
        `wait`, returns once all have."""
        done = [e.update_params(params, version, flush_cache=flush_cache, running=running, wait=False)
                for e in self.engines]
        if wait and not all(d.wait(timeout) for d in done):
            raise GeneratorError(f"weight update to version {version} not applied by every replica within "
                                 f"{timeout} s")

    async def close(self) -> None:
        await asyncio.gather(*(e.close() for e in self.engines))

    def close_sync(self) -> None:
        for e in self.engines:
            e.close_sync()


def build_engine(config, params, tokenizer, engine_config: EngineConfig, *, devices: Sequence[Any],
                 weight_version: int = 0) -> Generator:
    """One `JaxEngine`, or `EngineReplicas` when `replica_plan` makes more than one replica."""
    _, groups = replica_plan(engine_config, devices)
    if len(groups) == 1:
        return JaxEngine(config, params, tokenizer, engine_config, devices=list(devices), weight_version=weight_version)
    return EngineReplicas(config, params, tokenizer, engine_config, devices=devices, weight_version=weight_version)
