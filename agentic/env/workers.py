"""The env host's worker subprocesses: one `WorkerProcess` per worker (JSON frames over pipes,
restarts, kill and memory reasons), grouped per env kind in an `EnvKind`."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import pathlib
import signal
import sys
import time
from typing import Any, Protocol

from agentic.env.errors import (
    EnvStepError,
)
from agentic.env.host_config import HostConfig
from agentic.env.registry import EnvSpec
from agentic.env.wire import FrameError, FrameWriter, read_frame

REPO_ROOT = str(pathlib.Path(__file__).resolve().parents[2])
_HOST_SECRETS = frozenset({"AGENTIC_ENV_TOKEN", "AGENTIC_TRANSPORT_TOKEN", "SGLANG_API_KEY"})


class HostHooks(Protocol):
    """What an `EnvKind` needs of its host (`host.EnvHost`); this module does not import that one
    (the import goes one way: host -> workers)."""

    stopping: bool

    def worker_died(self, worker: WorkerProcess, cause: str) -> None:
        """Fails the sessions of a worker that died."""


class WorkerDied(Exception):
    """The worker process holding a session ended; the message names the cause."""


class WorkerTimeout(Exception):
    """A call to a worker got no answer within its deadline."""


class WorkerProcess:
    """One env worker subprocess and the calls in flight to it."""

    def __init__(self, kind: EnvKind, slot: int):
        self.kind, self.slot = kind, slot
        self.sessions: set[str] = set()
        self.pending: dict[int, tuple[asyncio.Future, asyncio.TimerHandle | None]] = {}
        self.alive = False
        self.kill_reason: str | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=8)
        self.started_at = 0.0
        self._ids = itertools.count()
        self.proc: asyncio.subprocess.Process | None = None
        self.pid = 0

    async def start(self, config: HostConfig) -> None:
        cmd = [sys.executable, "-m", "agentic.env.worker", "--env", self.kind.name,
               "--max-observation-bytes", str(config.max_observation_bytes)]
        for module in config.imports:
            cmd += ["--import", module]
        # Env code needs none of the host's own credentials (issue 31: workers copied them all)
        env = {k: v for k, v in os.environ.items() if k not in _HOST_SECRETS}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, os.getcwd(), env.get("PYTHONPATH")) if p)
        self.proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, limit=1 << 20)
        self.pid = self.proc.pid
        self.started_at = time.monotonic()
        self.writer = FrameWriter(self.proc.stdin.write)
        self._stderr_task = asyncio.ensure_future(self._pump_stderr())
        try:
            first = await asyncio.wait_for(read_frame(self.proc.stdout), 120)
        except (TimeoutError, FrameError) as e:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            raise RuntimeError(f"env worker {self.name} did not start: {e!r}") from None
        if not first or first[0].get("op") != "ready":
            rc = await self.proc.wait()
            await asyncio.wait_for(self._stderr_task, 5)
            raise RuntimeError(f"env worker {self.name} failed to start ({_describe_exit(rc)}): "
                               + " | ".join(self.stderr_tail))
        self.alive = True
        self._reader_task = asyncio.ensure_future(self._read_loop())

    @property
    def name(self) -> str:
        return f"{self.kind.name}#{self.slot} (pid {self.pid})"

    def call(self, msg: dict[str, Any], timeout: float | None) -> asyncio.Future:
        """Sends `msg`; the future resolves to the worker's reply, or fails with WorkerDied / WorkerTimeout."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if not self.alive:
            fut.set_exception(WorkerDied(f"env worker {self.name} is not running"))
            return fut
        msg_id = next(self._ids)
        msg["id"] = msg_id
        timer = loop.call_later(timeout, self._time_out, msg_id) if timeout else None
        self.pending[msg_id] = (fut, timer)
        self.writer.send(msg)
        return fut

    def send(self, msg: dict[str, Any]) -> None:
        """Fire and forget (cancel)."""
        if self.alive:
            self.writer.send(msg)

    def _time_out(self, msg_id: int) -> None:
        entry = self.pending.pop(msg_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(WorkerTimeout())

    async def _read_loop(self) -> None:
        """Delivers the worker's replies; when its stream ends or breaks, fails what is pending (`_die`)."""
        problem = None
        try:
            while (messages := await read_frame(self.proc.stdout)) is not None:
                for msg in messages:
                    entry = self.pending.pop(msg.get("id"), None)
                    if entry is None:
                        continue  # answer to a call that already timed out
                    fut, timer = entry
                    if timer is not None:
                        timer.cancel()
                    if not fut.done():
                        fut.set_result(msg)
        except Exception as e:  # a corrupt or torn frame (the worker died mid-write), a broken pipe
            problem = f"wrote a corrupt frame ({e})" if isinstance(e, FrameError) else f"sent an unreadable reply ({e!r})"
            with contextlib.suppress(ProcessLookupError):  # uvloop raises it once the exit was seen
                self.proc.kill()
        rc = None
        try:
            rc = await self.proc.wait()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._stderr_task), 1.0)
        finally:
            cause = self.kill_reason or (f"{problem}; it {_describe_exit(rc)}" if problem else _describe_exit(rc))
            if not self.kill_reason and self.stderr_tail:
                cause += f"; last stderr: {self.stderr_tail[-1]}"
            self._die(f"env worker {self.name} {cause}")

    async def _pump_stderr(self) -> None:
        """Forwards the worker's stderr (and env code's prints) to ours, keeping the last lines for
        error messages. Reads chunks, not lines: a huge line without newline must not stall the worker."""
        prefix = f"[env worker {self.kind.name}#{self.slot}] ".encode()
        while chunk := await self.proc.stderr.read(1 << 16):
            lines = [line.strip() for line in chunk.decode("utf-8", "replace").splitlines()]
            self.stderr_tail.extend(line[:500] for line in lines if line)
            with contextlib.suppress(Exception):
                sys.stderr.buffer.write(prefix + chunk.rstrip(b"\n").replace(b"\n", b"\n" + prefix) + b"\n")
                sys.stderr.flush()

    def _die(self, cause: str) -> None:
        self.alive = False
        self.writer.closed = True
        pending, self.pending = self.pending, {}
        for fut, timer in pending.values():
            if timer is not None:
                timer.cancel()
            if not fut.done():
                fut.set_exception(WorkerDied(cause))
        self.kind.worker_died(self, cause)

    def kill(self, reason: str) -> None:
        if self.alive and self.kill_reason is None:
            self.kill_reason = reason
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def stop(self) -> None:
        """Asks the worker to close its envs and exit; kills it if it does not."""
        if not self.alive:
            return
        self.kill_reason = "stopped by the host"
        try:
            await asyncio.wait_for(self.call({"op": "shutdown"}, None), 5)
            await asyncio.wait_for(self.proc.wait(), 5)
        except (TimeoutError, WorkerDied):
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


def _describe_exit(rc: int | None) -> str:
    if rc is None:
        return "ended"
    if rc < 0:
        try:
            return f"was killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with code {rc}"


class EnvKind:
    """The workers and sessions of one env kind on this host."""

    def __init__(self, host: HostHooks, spec: EnvSpec, config: HostConfig):
        self.host, self.spec, self.name = host, spec, spec.name
        self.max_sessions = int(config.per_kind(config.max_sessions, spec.name, spec.max_sessions))
        self.deadline_s = float(config.per_kind(config.step_deadline_s, spec.name, spec.step_deadline_s))
        self.memory_mb = int(config.per_kind(config.worker_memory_mb, spec.name, spec.memory_mb))
        self.config = config
        self.workers = [WorkerProcess(self, i) for i in range(config.per_kind(config.workers, spec.name, 1))]
        self.open_sessions = 0
        self.restarts = 0
        self.restarted = asyncio.Event()
        self.last_death = ""
        self._quick_deaths: collections.Counter[int] = collections.Counter()
        self._restarting: set[int] = set()

    async def start(self) -> None:
        await asyncio.gather(*(w.start(self.config) for w in self.workers))

    async def pick_worker(self) -> WorkerProcess:
        """The live worker with the fewest sessions; waits (up to the deadline) while all are restarting."""
        deadline = time.monotonic() + self.deadline_s
        while True:
            live = [w for w in self.workers if w.alive]
            if live:
                return min(live, key=lambda w: len(w.sessions))
            if time.monotonic() >= deadline or self.host.stopping:
                raise EnvStepError(f"env {self.name!r} has no live worker (restarting after: "
                                   f"{self.last_death}); retry shortly")
            self.restarted.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.restarted.wait(), max(0.01, deadline - time.monotonic()))

    def worker_died(self, worker: WorkerProcess, cause: str) -> None:
        self.last_death = cause
        self.host.worker_died(worker, cause)
        if self.host.stopping or worker.slot in self._restarting:
            return
        self._restarting.add(worker.slot)
        asyncio.ensure_future(self._restart(worker))

    async def _restart(self, dead: WorkerProcess) -> None:
        # Restart at once; back off only when the worker keeps dying right after starting (crash loop).
        if dead.kill_reason is None and time.monotonic() - dead.started_at < 2:
            self._quick_deaths[dead.slot] += 1
        else:
            self._quick_deaths[dead.slot] = 0
        backoff = 0.0 if self._quick_deaths[dead.slot] < 2 else min(30.0, 2.0 ** self._quick_deaths[dead.slot])
        while not self.host.stopping:
            await asyncio.sleep(backoff)
            fresh = WorkerProcess(self, dead.slot)
            try:
                await fresh.start(self.config)
            except Exception as e:
                print(f"[env host] restarting {dead.name} failed: {e}", file=sys.stderr)
                backoff = min(30.0, max(1.0, backoff * 2))
                continue
            self.workers[dead.slot] = fresh
            self.restarts += 1
            self._restarting.discard(dead.slot)
            self.restarted.set()
            print(f"[env host] restarted env worker {fresh.name}", file=sys.stderr)
            return


PAGE_MB = os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def worker_rss_mb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(int(f.read().split()[1]) * PAGE_MB)
    except (OSError, ValueError, IndexError):
        return 0


