"""The env host: a gRPC server that runs env sessions in worker subprocesses.

    python -m agentic.env.host --port 50051 --envs echo,game [--workers 2] [--token-file F]

One `EnvHost` serves any registered env kinds (by registry name; env kwargs and
the task arrive as JSON at session open). For each kind it keeps `--workers`
subprocesses (`agentic.env.worker`), each running many sessions concurrently in
its own asyncio loop; a session is pinned to one worker. What the host promises:

- A worker that dies (crash, OOM kill, SIGKILL) fails exactly its own sessions
  with SESSION_LOST naming the cause (signal / exit code / last stderr line);
  the worker is restarted and the other workers' sessions never notice.
- A step (or reset) slower than its kind's `step_deadline_s` returns
  DEADLINE_EXCEEDED within the deadline; the step is cancelled in the worker, and
  if the worker does not answer a ping within `--recycle-grace-s` (its event loop
  is stuck, e.g. in a CPU loop) the worker is recycled (killed and restarted).
- A worker whose memory (RSS) grows past its kind's `memory_mb` (a leak) is
  recycled the same way, before it can starve the machine.
- Past `max_sessions` of a kind, opens fail at once with RESOURCE_EXHAUSTED.
- Garbage never reaches env code: empty, oversized and non-UTF-8 actions and
  unknown session ids get INVALID_ARGUMENT / NOT_FOUND with a message that says why.
- Sessions idle longer than `--idle-timeout-s` are reaped.
- SIGTERM drains: health turns NOT_SERVING and opens are refused (HOST_DRAINING);
  steps are still served until no op is in flight (at most `--drain-timeout-s`),
  then the server and the workers stop.
- Binds 127.0.0.1 unless `--bind` says otherwise, and refuses any other address without a token
  (env hosts run code sandboxes: whoever reaches the port runs code) unless `--insecure` is given;
  `--token`/`--token-file` require `authorization: Bearer <token>` metadata (health checks are exempt);
  `--tls-cert/--tls-key` serve TLS. Observations over `--max-observation-bytes`
  are cut with `observation_truncated` set (and `info["observation_truncated"]`).

Also served: `grpc.health.v1.Health` and server reflection (v1 and v1alpha). Wire format:
`agentic/env/proto/env_service.proto`; the client is `agentic.env.client.EnvClient`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import gc
import hmac
import ipaddress
import itertools
import json
import os
import pathlib
import re
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

# Workers are spawned while gRPC threads run; gRPC's fork handlers only log noise for a fork+exec.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # noqa: E402

from agentic.env.errors import (  # noqa: E402
    ERROR_KIND_METADATA_KEY,
    EnvDeadlineExceeded,
    EnvError,
    EnvResourceExhausted,
    EnvStepError,
    HostDraining,
    InvalidAction,
    InvalidEnvRequest,
    SessionBusy,
    SessionLost,
    SessionNotFound,
    clip,
    error_from_kind,
)
from agentic.env.proto import env_service_pb2 as pb  # noqa: E402
from agentic.env.proto import env_service_pb2_grpc as pb_grpc  # noqa: E402
from agentic.env.reflection import enable_server_reflection  # noqa: E402
from agentic.env.registry import EnvSpec, get_spec  # noqa: E402
from agentic.env.wire import FrameError, FrameWriter, read_frame, run_event_loop  # noqa: E402

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EnvService"].full_name
REPO_ROOT = str(pathlib.Path(__file__).resolve().parents[2])
_SESSION_ID = re.compile(r"([0-9a-f]{8})-[0-9]+")  # "<host_id>-<n>"
_CLOSED = "it was closed"
_TOMBSTONES = 200_000  # remembered ended sessions, so late steps learn *why* a session is gone


@dataclasses.dataclass(frozen=True, kw_only=True)
class HostConfig:
    """How an env host runs.

    Attributes:
        envs: registry names of the env kinds served.
        bind: interface to listen on; loopback unless you mean to expose the host.
        port: TCP port; 0 picks a free one (printed at start).
        workers: worker subprocesses per env kind (name -> count; "*" = default).
        max_sessions: per-kind override of `EnvSpec.max_sessions` (name -> n; "*" = all).
        step_deadline_s: per-kind override of `EnvSpec.step_deadline_s` (name -> s; "*" = all).
        imports: modules each worker imports first (to register envs defined outside `envs`).
        idle_timeout_s: sessions without any call for this long are reaped.
        max_action_bytes: larger actions are rejected with INVALID_ARGUMENT.
        max_observation_bytes: longer observations are truncated (flagged).
        max_message_bytes: gRPC message size limit (both directions).
        worker_memory_mb: per-kind override of `EnvSpec.memory_mb`, the RSS limit of one worker
            process (name -> MB; "*" = all; 0 = no limit); a worker over it is recycled.
        recycle_grace_s: after a deadline, a worker that does not answer a ping this fast is recycled.
        drain_timeout_s: on SIGTERM, how long in-flight ops may take to finish.
        token: shared secret clients must send as `authorization: Bearer <token>`; required to bind a
            non-loopback address (TLS alone does not say who the client is) unless `insecure`.
        insecure: allow a non-loopback `bind` without a token (a trusted, closed network only).
        tls_cert, tls_key: PEM files; both set = serve TLS.
    """

    envs: tuple[str, ...]
    bind: str = "127.0.0.1"
    port: int = 50051
    workers: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"*": 1})
    max_sessions: Mapping[str, int] = dataclasses.field(default_factory=dict)
    step_deadline_s: Mapping[str, float] = dataclasses.field(default_factory=dict)
    worker_memory_mb: Mapping[str, int] = dataclasses.field(default_factory=dict)
    imports: tuple[str, ...] = ()
    idle_timeout_s: float = 600.0
    max_action_bytes: int = 256 << 10
    max_observation_bytes: int = 256 << 10
    max_message_bytes: int = 64 << 20
    recycle_grace_s: float = 1.0
    drain_timeout_s: float = 30.0
    token: str | None = None
    insecure: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self):
        if not self.envs:
            raise ValueError("HostConfig.envs is empty: name at least one env kind to serve (--envs echo,...)")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        for field, table in (("workers", self.workers), ("max_sessions", self.max_sessions)):
            for name, n in table.items():
                if n < 1:
                    raise ValueError(f"HostConfig.{field}[{name!r}] must be >= 1, got {n}")
        if not self.token and not self.insecure and not _is_loopback(self.bind):
            raise ValueError(f"refusing to listen on {self.bind} without a token: env hosts run env code (code "
                             "sandboxes), so anyone who can reach the port could run code. Give --token-file "
                             "(or --token / $AGENTIC_ENV_TOKEN; clients send it), or --insecure on a closed network")
        if self.max_action_bytes < 1 or self.max_observation_bytes < 1:
            raise ValueError("max_action_bytes and max_observation_bytes must be >= 1")

    def per_kind(self, table: Mapping[str, Any], name: str, default: Any) -> Any:
        return table.get(name, table.get("*", default))


def _is_loopback(bind: str) -> bool:
    if bind.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class WorkerDied(Exception):
    """The worker process holding a session ended; the message names the cause."""


class _OpTimeout(Exception):
    pass


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
        env = dict(os.environ)
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
        """Sends `msg`; the future resolves to the worker's reply, or fails with WorkerDied / _OpTimeout."""
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
            entry[0].set_exception(_OpTimeout())

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

    def __init__(self, host: EnvHost, spec: EnvSpec, config: HostConfig):
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


@dataclasses.dataclass(eq=False)
class _Session:
    sid: str
    kind: EnvKind
    worker: WorkerProcess
    last_active: float
    busy: bool = False


class EnvHost(pb_grpc.EnvServiceServicer):
    """The servicer plus session bookkeeping. Build with `EnvHost(config)`, then `await host.start()`."""

    def __init__(self, config: HostConfig):
        self.config = config
        self.host_id = secrets.token_hex(4)
        self.kinds: dict[str, EnvKind] = {}
        for name in config.envs:
            self.kinds[name] = EnvKind(self, get_spec(name), config)
        self.sessions: dict[str, _Session] = {}
        self.tombstones: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._sids = itertools.count(1)
        self.inflight = 0
        self.draining = False
        self.stopping = False
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.health = health.aio.HealthServicer()
        self._housekeeper: asyncio.Task | None = None

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> int:
        await asyncio.gather(*(k.start() for k in self.kinds.values()))
        limit = self.config.max_message_bytes
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                   ("grpc.so_reuseport", 0), ("grpc.keepalive_permit_without_calls", 1),
                   ("grpc.http2.min_ping_interval_without_data_ms", 5000)]
        interceptors = [_TokenAuth(self.config.token)] if self.config.token else []
        self.server = grpc.aio.server(options=options, interceptors=interceptors)
        pb_grpc.add_EnvServiceServicer_to_server(self, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        enable_server_reflection((SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name),
                                 self.server)
        address = f"{self.config.bind}:{self.config.port}"
        if self.config.tls_cert:
            creds = grpc.ssl_server_credentials([(pathlib.Path(self.config.tls_key).read_bytes(),
                                                  pathlib.Path(self.config.tls_cert).read_bytes())])
            self.port = self.server.add_secure_port(address, creds)
        else:
            self.port = self.server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"env host could not bind {address} (in use?)")
        await self.server.start()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._housekeeper = asyncio.ensure_future(self._housekeeping())
        return self.port

    async def drain_and_stop(self) -> None:
        """Takes no new sessions, lets in-flight ops finish (bounded), then stops workers and server."""
        if self.draining:
            return
        self.draining = True
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        deadline = time.monotonic() + self.config.drain_timeout_s
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await self.stop()

    async def stop(self) -> None:
        self.stopping = True
        if self._housekeeper:
            self._housekeeper.cancel()
        if self.server:
            await self.server.stop(grace=1.0)
        await asyncio.gather(*(w.stop() for k in self.kinds.values() for w in k.workers))

    # ---------------------------------------------------------------- sessions
    def _drop(self, session: _Session, reason: str) -> None:
        if self.sessions.pop(session.sid, None) is None:
            return
        session.worker.sessions.discard(session.sid)
        session.kind.open_sessions -= 1
        self.tombstones[session.sid] = reason
        if len(self.tombstones) > _TOMBSTONES:
            self.tombstones.popitem(last=False)

    def _get(self, sid: str) -> _Session:
        session = self.sessions.get(sid)
        if session is not None:
            return session
        reason = self.tombstones.get(sid)
        if reason is not None:
            raise SessionLost(f"session is gone: {reason}", session_id=sid)
        m = _SESSION_ID.fullmatch(sid)
        if m and m.group(1) != self.host_id:
            prefix = m.group(1)
            raise SessionNotFound(f"unknown session: it was opened by host instance {prefix}, this is "
                                  f"{self.host_id} (the host restarted; the session is lost)", session_id=sid)
        raise SessionNotFound("unknown session id (never opened on this host)", session_id=sid)

    def worker_died(self, worker: WorkerProcess, cause: str) -> None:
        lost = [self.sessions[sid] for sid in worker.sessions if sid in self.sessions]
        for session in lost:
            self._drop(session, cause)
        print(f"[env host] {cause}; {len(lost)} session(s) lost", file=sys.stderr)

    def _deadline_passed(self, session: _Session, what: str) -> EnvDeadlineExceeded:
        kind, worker = session.kind, session.worker
        reason = f"its {what} ran past the {kind.deadline_s:g}s step deadline of env {kind.name!r}"
        self._drop(session, reason)
        worker.send({"op": "cancel", "sid": session.sid})
        asyncio.ensure_future(self._check_responsive(worker, session.sid))
        return EnvDeadlineExceeded(f"{what} ran past the {kind.deadline_s:g}s step deadline of env "
                                   f"{kind.name!r}; the session is closed", session_id=session.sid)

    async def _check_responsive(self, worker: WorkerProcess, sid: str) -> None:
        try:
            await worker.call({"op": "ping"}, self.config.recycle_grace_s)
        except _OpTimeout:
            worker.kill(f"was recycled: a step of session {sid} hung past its deadline and the worker's "
                        f"event loop did not answer within {self.config.recycle_grace_s:g}s")
        except WorkerDied:
            pass

    async def _housekeeping(self) -> None:
        """Reaps idle sessions and recycles workers over their memory limit."""
        period = max(0.05, min(1.0, self.config.idle_timeout_s / 4))
        while True:
            await asyncio.sleep(period)
            self._check_memory()
            self._reap_idle()

    def _check_memory(self) -> None:
        for kind in self.kinds.values():
            if kind.memory_mb <= 0:
                continue
            for worker in kind.workers:
                rss_mb = _rss_mb(worker.pid) if worker.alive else 0
                if rss_mb > kind.memory_mb:
                    worker.kill(f"was recycled: its memory (RSS {rss_mb} MB) exceeded the {kind.memory_mb} MB "
                                f"limit of env {kind.name!r} (EnvSpec.memory_mb / --worker-memory-mb)")

    def _reap_idle(self) -> None:
        cutoff = time.monotonic() - self.config.idle_timeout_s
        idle = [s for s in self.sessions.values() if not s.busy and s.last_active < cutoff]
        for session in idle:
            self._drop(session, f"reaped after {self.config.idle_timeout_s:g}s without calls")
            session.worker.call({"op": "close", "sid": session.sid}, 30).add_done_callback(_ignore)

    # ---------------------------------------------------------------- ops
    async def open(self, env: str, task_json: str, env_kwargs_json: str) -> pb.OpenResponse:
        if self.draining:
            raise HostDraining("the env host is draining (shutting down) and takes no new sessions")
        kind = self.kinds.get(env)
        if kind is None:
            raise InvalidEnvRequest(f"env {clip(env)!r} is not served by this host; it serves {sorted(self.kinds)}")
        task = _parse_json_object(task_json, "task_json")
        kwargs = _parse_json_object(env_kwargs_json, "env_kwargs_json")
        if kind.open_sessions >= kind.max_sessions:
            raise EnvResourceExhausted(f"env {env!r} is at max_sessions={kind.max_sessions} on this host")
        kind.open_sessions += 1  # reserve the slot before any await, so max_sessions is never overshot
        try:
            worker = await kind.pick_worker()
        except EnvError:
            kind.open_sessions -= 1
            raise
        sid = f"{self.host_id}-{next(self._sids)}"
        session = _Session(sid, kind, worker, time.monotonic())
        self.sessions[sid] = session
        worker.sessions.add(sid)
        reply = await self._session_call(session, {"op": "open", "sid": sid, "task": task, "kwargs": kwargs},
                                         "reset")
        if "err" in reply:
            self._drop(session, "its reset failed")
            raise error_from_kind(reply["err"]["kind"], reply["err"]["message"], session_id=sid)
        ok = reply["ok"]
        return pb.OpenResponse(session_id=sid, observation=ok["observation"], info_json=ok["info"],
                               observation_truncated=ok["cut"], host_id=self.host_id)

    async def _session_call(self, session: _Session, msg: dict[str, Any], what: str) -> dict[str, Any]:
        """Sends a session's open or step to its worker (the session is busy meanwhile); a missed
        deadline and a dead worker become the session's EnvError."""
        session.busy = True
        self.inflight += 1
        try:
            return await session.worker.call(msg, session.kind.deadline_s)
        except _OpTimeout:
            raise self._deadline_passed(session, what) from None
        except WorkerDied as e:
            raise SessionLost(str(e), session_id=session.sid) from None
        finally:
            self.inflight -= 1
            session.busy = False
            session.last_active = time.monotonic()

    def _check_action(self, sid: str, action: bytes) -> str:
        if not action:
            raise InvalidAction("action is empty (0 bytes); send the model's text", session_id=sid)
        if len(action) > self.config.max_action_bytes:
            raise InvalidAction(f"action is {len(action)} bytes, over this host's limit of "
                                f"{self.config.max_action_bytes} (--max-action-bytes)", session_id=sid)
        try:
            return action.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidAction(f"action is not valid UTF-8: byte {e.start} ({action[e.start:e.start + 1]!r}) "
                                f"{e.reason}", session_id=sid) from None

    async def step(self, sid: str, action: bytes) -> pb.StepResponse:
        text = self._check_action(sid, action)
        session = self._get(sid)
        if session.busy:
            raise SessionBusy("a step is already in flight for this session; wait for it", session_id=sid)
        reply = await self._session_call(session, {"op": "step", "sid": sid, "action": text}, "step")
        if "err" in reply:
            err = error_from_kind(reply["err"]["kind"], reply["err"]["message"], session_id=sid)
            if not isinstance(err, InvalidAction):
                self._drop(session, f"its env failed: {err.message}")
            raise err
        ok = reply["ok"]
        return pb.StepResponse(observation=ok["observation"], reward=ok["reward"], done=ok["done"],
                               truncated=ok["truncated"], info_json=ok["info"], observation_truncated=ok["cut"])

    async def close(self, sid: str) -> pb.CloseResponse:
        """Ends the session and returns its metrics; `lost` says why there are none when it had ended."""
        session = self.sessions.get(sid)
        if session is None:
            reason = self.tombstones.get(sid, _CLOSED)
            return pb.CloseResponse(lost="" if reason == _CLOSED else f"session had ended: {reason}")
        self._drop(session, _CLOSED)
        self.inflight += 1
        try:
            reply = await session.worker.call({"op": "close", "sid": sid}, 30)
        except _OpTimeout:
            return pb.CloseResponse(lost=f"its worker {session.worker.name} did not answer the close within 30s")
        except WorkerDied as e:
            return pb.CloseResponse(lost=str(e))
        finally:
            self.inflight -= 1
        return pb.CloseResponse(metrics_json=reply.get("ok", {}).get("metrics", ""))

    def info(self) -> pb.InfoResponse:
        return pb.InfoResponse(
            host_id=self.host_id, draining=self.draining, pid=os.getpid(),
            max_action_bytes=self.config.max_action_bytes,
            max_observation_bytes=self.config.max_observation_bytes,
            envs=[pb.EnvKindInfo(name=k.name, max_sessions=k.max_sessions, open_sessions=k.open_sessions,
                                 step_deadline_s=k.deadline_s, workers=len(k.workers),
                                 worker_pids=[w.pid for w in k.workers if w.alive],
                                 worker_restarts=k.restarts, description=k.spec.description)
                  for k in self.kinds.values()])

    # ---------------------------------------------------------------- gRPC
    async def Open(self, request, context):
        return await _unary(context, self.open(request.env, request.task_json, request.env_kwargs_json))

    async def Step(self, request, context):
        return await _unary(context, self.step(request.session_id, request.action))

    async def Close(self, request, context):
        return await _unary(context, self.close(request.session_id))

    async def Info(self, request, context):
        return self.info()

    async def Batch(self, request: pb.BatchRequest, context) -> AsyncIterator[pb.BatchResponse]:
        ready: list[pb.OpResult] = []
        wake = asyncio.Event()

        async def run(index: int, op: pb.Op) -> None:
            which = op.WhichOneof("op")
            try:
                if which == "step":
                    result = pb.OpResult(index=index, step=await self.step(op.step.session_id, op.step.action))
                elif which == "open":
                    o = op.open
                    result = pb.OpResult(index=index, open=await self.open(o.env, o.task_json, o.env_kwargs_json))
                elif which == "close":
                    result = pb.OpResult(index=index, close=await self.close(op.close.session_id))
                else:
                    raise InvalidEnvRequest("empty op in batch (set open, step or close)")
            except EnvError as e:
                result = pb.OpResult(index=index, error=pb.Error(kind=e.kind, message=clip(e.message, 4000)))
            ready.append(result)
            wake.set()

        tasks = [asyncio.ensure_future(run(i, op)) for i, op in enumerate(request.ops)]
        remaining = len(tasks)
        while remaining:
            await wake.wait()
            wake.clear()
            chunk, ready = ready, []
            remaining -= len(chunk)
            yield pb.BatchResponse(results=chunk)


_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def _rss_mb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(int(f.read().split()[1]) * _PAGE_MB)
    except (OSError, ValueError, IndexError):
        return 0


def _ignore(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


def _parse_json_object(text: str, field: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise InvalidEnvRequest(f"{field} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise InvalidEnvRequest(f"{field} must be a JSON object, got {type(value).__name__}")
    return value


_MAX_STATUS_BYTES = 1000  # the status message travels in HTTP/2 trailers: gRPC caps them near 8 kB


async def _unary(context, coro):
    try:
        return await coro
    except EnvError as e:
        details = str(e).encode()[:_MAX_STATUS_BYTES].decode("utf-8", "ignore")
        await context.abort(e.grpc_code, details, trailing_metadata=((ERROR_KIND_METADATA_KEY, str(e.kind)),))


class _TokenAuth(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <token>` on every call except health checks."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith("/grpc.health.v1.Health/"):
            return handler
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else value
                if hmac.compare_digest(got, self._expected):
                    return handler
        return _deny_like(handler)


_DENY = "missing or wrong token: send metadata 'authorization: Bearer <token>' (EnvClient(token=...))"


def _deny_like(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def deny(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _DENY)

    async def deny_stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _DENY)
        yield  # pragma: no cover

    kw = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(deny, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny, **kw)
    return grpc.stream_stream_rpc_method_handler(deny_stream, **kw)


# -------------------------------------------------------------------- CLI
def _table(text: str | None, cast) -> dict[str, Any]:
    """'4' -> {'*': 4}; 'echo=2,game=1' -> {'echo': 2, 'game': 1}."""
    out: dict[str, Any] = {}
    for part in filter(None, (text or "").split(",")):
        name, _, value = part.rpartition("=")
        out[name.strip() or "*"] = cast(value)
    return out


def parse_args(argv: list[str] | None = None) -> HostConfig:
    p = argparse.ArgumentParser(prog="python -m agentic.env.host", description=__doc__.splitlines()[0])
    p.add_argument("--envs", required=True, help="comma-separated registry names, e.g. echo,game,search_r1")
    p.add_argument("--port", type=int, default=50051, help="0 picks a free port")
    p.add_argument("--bind", default="127.0.0.1", help="interface; 0.0.0.0 exposes the host to the network")
    p.add_argument("--workers", default="1", help="worker processes per env kind: N or NAME=N,...")
    p.add_argument("--max-sessions", default="", help="override EnvSpec.max_sessions: N or NAME=N,...")
    p.add_argument("--step-deadline-s", default="", help="override EnvSpec.step_deadline_s: S or NAME=S,...")
    p.add_argument("--worker-memory-mb", default="",
                   help="override EnvSpec.memory_mb (RSS limit per worker; 0 = none): MB or NAME=MB,...")
    p.add_argument("--import", dest="imports", action="append", default=[],
                   help="module the workers import first (registers envs outside `envs`); repeatable")
    p.add_argument("--idle-timeout-s", type=float, default=600.0)
    p.add_argument("--max-action-bytes", type=int, default=256 << 10)
    p.add_argument("--max-observation-bytes", type=int, default=256 << 10)
    p.add_argument("--max-message-bytes", type=int, default=64 << 20)
    p.add_argument("--recycle-grace-s", type=float, default=1.0)
    p.add_argument("--drain-timeout-s", type=float, default=30.0)
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--token", default=os.environ.get("AGENTIC_ENV_TOKEN"),
                      help="shared secret for 'authorization: Bearer' metadata (default $AGENTIC_ENV_TOKEN)")
    auth.add_argument("--token-file", default=None,
                      help="file holding the token (keeps it out of the process list)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --bind without a token (only on a closed, trusted network)")
    p.add_argument("--tls-cert", default=None)
    p.add_argument("--tls-key", default=None)
    a = p.parse_args(argv)
    token = a.token
    if a.token_file:
        try:
            token = pathlib.Path(a.token_file).read_text().strip()
        except OSError as e:
            p.error(f"--token-file: {e}")
        if not token:
            p.error(f"--token-file {a.token_file} is empty")
    try:
        return HostConfig(
            envs=tuple(n.strip() for n in a.envs.split(",") if n.strip()), bind=a.bind, port=a.port,
            workers=_table(a.workers, int) or {"*": 1}, max_sessions=_table(a.max_sessions, int),
            step_deadline_s=_table(a.step_deadline_s, float), worker_memory_mb=_table(a.worker_memory_mb, int),
            imports=tuple(a.imports),
            idle_timeout_s=a.idle_timeout_s, max_action_bytes=a.max_action_bytes,
            max_observation_bytes=a.max_observation_bytes, max_message_bytes=a.max_message_bytes,
            recycle_grace_s=a.recycle_grace_s, drain_timeout_s=a.drain_timeout_s, token=token or None,
            insecure=a.insecure, tls_cert=a.tls_cert, tls_key=a.tls_key)
    except ValueError as e:
        p.error(str(e))


async def serve(config: HostConfig) -> None:
    """Runs a host until SIGTERM/SIGINT, then drains."""
    for module in config.imports:
        __import__(module)
    host = EnvHost(config)
    port = await host.start()
    _tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    kinds = ", ".join(f"{k.name}(max {k.max_sessions}, {len(k.workers)} worker)" for k in host.kinds.values())
    print(f"env host {host.host_id} ready on {config.bind}:{port} serving {kinds}", flush=True)
    await stop.wait()
    print(f"env host {host.host_id} draining ({host.inflight} ops in flight)", flush=True)
    await host.drain_and_stop()
    print(f"env host {host.host_id} stopped", flush=True)


def _tune_gc() -> None:
    """Thousands of live sessions make Python's full collections slow and frequent; freeze what
    start-up allocated and collect young objects less often (requests make little cyclic garbage)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    run_event_loop(serve(config))


if __name__ == "__main__":
    main()
