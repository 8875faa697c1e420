"""The env host: a gRPC server that runs env sessions in worker subprocesses.

    python -m agentic.env.host --port 50051 --envs echo,game --import envs [--workers 2] [--token-file F]

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
`agentic/env/proto/env_service.proto`; the client is `agentic.env.client.EnvClient`. Around
this file: `host_config.py` (settings and the command line), `workers.py` (the worker
subprocesses), `auth.py` (the token check), `worker.py` (what runs inside a worker).

Size: past 400 lines because the promises above (deadlines, drain, session loss, limits) are
kept by the gRPC service and the session table together; what stands alone is split out.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import importlib
import itertools
import json
import os
import pathlib
import re
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

# Workers are spawned while gRPC threads run; gRPC's fork handlers only log noise for a fork+exec.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # noqa: E402

from agentic.env.auth import TokenAuth  # noqa: E402
from agentic.env.errors import (  # noqa: E402
    ERROR_KIND_METADATA_KEY,
    EnvDeadlineExceeded,
    EnvError,
    EnvResourceExhausted,
    HostDraining,
    InvalidAction,
    InvalidEnvRequest,
    SessionBusy,
    SessionLost,
    SessionNotFound,
    clip,
    error_from_kind,
)
from agentic.env.host_config import HostConfig, parse_args  # noqa: E402
from agentic.env.proto import env_service_pb2 as pb  # noqa: E402
from agentic.env.proto import env_service_pb2_grpc as pb_grpc  # noqa: E402
from agentic.env.reflection import enable_server_reflection  # noqa: E402
from agentic.env.registry import get_spec  # noqa: E402
from agentic.env.wire import run_event_loop  # noqa: E402
from agentic.env.workers import EnvKind, WorkerDied, WorkerProcess, WorkerTimeout, worker_rss_mb  # noqa: E402
from agentic.process import tune_gc  # noqa: E402
from agentic.registry import UnknownName  # noqa: E402

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EnvService"].full_name
_SESSION_ID = re.compile(r"([0-9a-f]{8})-[0-9]+")  # "<host_id>-<n>"
_CLOSED = "it was closed"
_TOMBSTONES = 200_000  # remembered ended sessions, so late steps learn *why* a session is gone


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
        interceptors = [TokenAuth(self.config.token)] if self.config.token else []
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
        except WorkerTimeout:
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
                rss_mb = worker_rss_mb(worker.pid) if worker.alive else 0
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
        except WorkerTimeout:
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
        except WorkerTimeout:
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
            except Exception as e:  # noqa: BLE001 - a host bug must end this op, not hang the stream (issue 31)
                result = pb.OpResult(index=index, error=pb.Error(
                    kind=pb.ERROR_KIND_UNSPECIFIED, message=clip(f"the env host failed on this {which} op: "
                                                                 f"{type(e).__name__}: {e}", 4000)))
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
    except RecursionError:
        raise InvalidEnvRequest(f"{field} is nested too deeply ({len(text)} chars)") from None
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


async def serve(config: HostConfig) -> None:
    """Runs a host until SIGTERM/SIGINT, then drains."""
    for module in config.imports:
        importlib.import_module(module)
    try:
        host = EnvHost(config)
    except UnknownName as e:
        raise SystemExit(f"env host: {e}") from None
    port = await host.start()
    tune_gc()
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


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    run_event_loop(serve(config))


if __name__ == "__main__":
    main()
