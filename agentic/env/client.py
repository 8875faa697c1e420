"""EnvClient: async client for a pool of env hosts (`python -m agentic.env.host`).

Usage (one client per event loop; share it between all episodes of an actor):

    from agentic.env.client import EnvClient
    from agentic.env.errors import EnvError, SessionLost

    async with EnvClient(["10.0.0.5:50051", "10.0.0.6:50051"], token=None) as client:
        session, obs = await client.open("game", task={"seed": 7}, env_kwargs={"max_turns": 6})
        try:
            step = await client.step(session, "<guess>crane</guess>")  # -> agentic.env.Step
            while not (step.done or step.truncated):
                step = await client.step(session, next_action(step.observation))
        except EnvError as e:              # typed, per episode: count type(e).__name__
            drop_episode(e)
        finally:
            metrics = await client.close(session)  # never raises; {"session_lost": 1.0} if it was lost

    # Many sessions at once, one RPC per host (EnvPool style); errors come back in place:
    results = await client.step_many([(s1, "a"), (s2, "b")])   # list[Step | EnvError]

What it does for you:

- Placement: `open` puts the session on the least-loaded healthy host serving
  that env (load = open sessions / max_sessions, from the hosts' `Info`, refreshed
  every `refresh_s`, plus this client's own opens since). A session stays pinned
  to its host (`Session.host`).
- Batching: concurrent `open`/`step`/`close` calls to one host are coalesced into
  streaming `Batch` RPCs (up to `max_batch` ops each; while `max_inflight_batches`
  batches wait for their first results, at most `batch_hold_s`, new ops queue and
  go together); results
  stream back as each op completes, so a slow step does not hold back the others. Per-call code stays one-episode-at-a-time.
- Retries only where safe: `open` moves on to the next host on
  RESOURCE_EXHAUSTED / UNAVAILABLE / draining; `close` is idempotent and retried
  once; `step` is never retried (it is not idempotent).
- Never hangs: every op carries a deadline (the env kind's step deadline from the
  host plus `deadline_margin_s`); the channel reconnects with short backoff.
- Every failure is a typed `agentic.env.errors.EnvError` (see that module):
  `SessionLost` (worker killed, host restarted or unreachable mid-episode — the
  host restart is also detected from the host id in `Info`), `EnvDeadlineExceeded`,
  `EnvResourceExhausted`, `EnvHostUnavailable`/`HostDraining`, `InvalidAction`
  (empty / too large / bad UTF-8; the session stays usable), `InvalidEnvRequest`,
  `EnvStepError`, `SessionBusy`, `EnvAuthError`. `client.stats` counts them.

Env kwargs and tasks are JSON objects (they reach `EnvSpec.factory(**env_kwargs)` and
`Env.reset(task)` in the host's worker). Actions are `str` (sent as UTF-8) or raw
`bytes`. `Step.info` / `Observation.info` are the env's JSON info; when the host cut
an over-long observation, `info["observation_truncated"]` says by how much.
TLS: `EnvClient(hosts, tls_root_cert=open("ca.pem","rb").read())`; auth:
`token=` (or $AGENTIC_ENV_TOKEN) sent as `authorization: Bearer <token>`.

Size: past 400 lines because placement, batching into streaming RPCs, deadlines and the
typed error mapping share the per-host state; the error types are `errors.py`, the wire
conversions `wire.py`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from agentic.core import Observation, Step
from agentic.env.errors import (
    EnvAuthError,
    EnvDeadlineExceeded,
    EnvError,
    EnvHostUnavailable,
    EnvResourceExhausted,
    InvalidAction,
    InvalidEnvRequest,
    SessionLost,
    clip,
    error_from_kind,
)
from agentic.env.proto import env_service_pb2 as pb
from agentic.env.proto import env_service_pb2_grpc as pb_grpc

# The metric `close()` returns for a session that ended without its metrics (its env's are gone).
SESSION_LOST_METRIC = "session_lost"


@dataclasses.dataclass(frozen=True)
class Session:
    """A handle to one open episode, pinned to the host that runs it."""

    session_id: str
    env: str
    host: str
    host_id: str


class _Host:
    """One env host: its channel, what it serves, its load, its batcher."""

    def __init__(self, client: EnvClient, address: str):
        self.client, self.address = client, address
        options = [("grpc.max_receive_message_length", client.max_message_bytes),
                   ("grpc.max_send_message_length", client.max_message_bytes),
                   ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                   ("grpc.max_reconnect_backoff_ms", 2000), ("grpc.keepalive_time_ms", 20_000),
                   ("grpc.keepalive_timeout_ms", 10_000), ("grpc.enable_retries", 0)]
        if client.tls_root_cert is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=client.tls_root_cert)
            self.channel = grpc.aio.secure_channel(address, creds, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(address, options=options)
        self.stub = pb_grpc.EnvServiceStub(self.channel)
        self.healthy = False
        self.host_id = ""
        self.draining = False
        self.kinds: dict[str, pb.EnvKindInfo] = {}
        self.load_delta: collections.Counter[str] = collections.Counter()
        self.error = "not contacted yet"
        self.auth_failed = False
        self.queue: list[tuple[pb.Op, asyncio.Future, float]] = []
        self.inflight = 0
        self.scheduled = False

    def load(self, env: str) -> float:
        kind = self.kinds[env]
        return (kind.open_sessions + self.load_delta[env]) / max(1, kind.max_sessions)

    def deadline(self, env: str) -> float:
        kind = self.kinds.get(env)
        return (kind.step_deadline_s if kind else 60.0) + self.client.deadline_margin_s

    async def refresh(self) -> None:
        try:
            info = await self.stub.Info(pb.InfoRequest(), timeout=self.client.connect_timeout_s,
                                        metadata=self.client.metadata, wait_for_ready=True)
        except grpc.aio.AioRpcError as e:
            self.healthy = False
            self.auth_failed = e.code() == grpc.StatusCode.UNAUTHENTICATED
            self.error = f"{e.code().name}: {e.details()}"
            return
        self.auth_failed = False
        if self.host_id and info.host_id != self.host_id:
            self.client.stats["host_restarts_seen"] += 1
        self.host_id = info.host_id
        self.kinds = {k.name: k for k in info.envs}
        self.draining = info.draining
        self.healthy = not info.draining
        self.error = "draining" if info.draining else ""
        self.load_delta.clear()

    # ---- batching
    def submit(self, op: pb.Op, timeout: float) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.queue.append((op, fut, timeout))
        if not self.scheduled and self.inflight < self.client.max_inflight_batches:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self.scheduled = False
        while self.queue and self.inflight < self.client.max_inflight_batches:
            n, size = 0, 0
            while n < len(self.queue) and n < self.client.max_batch:
                size += self.queue[n][0].ByteSize()
                if n and size > self.client.max_message_bytes // 2:
                    break
                n += 1
            batch, self.queue = self.queue[:n], self.queue[n:]
            self.inflight += 1
            asyncio.ensure_future(self._send(batch))

    def _release_slot(self) -> None:
        self.inflight -= 1
        if self.queue and not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _send(self, batch: list[tuple[pb.Op, asyncio.Future, float]]) -> None:
        # A batch holds one of the `max_inflight_batches` slots only until its first results arrive
        # or `batch_hold_s` passes: the slots make ops queue up (and batch) while the host is busy,
        # yet slow ops (a 20 s code run) never hold back other sessions' ops for long.
        futures = [fut for _, fut, _ in batch]
        slot = [True]

        def release():
            if slot[0]:
                slot[0] = False
                self._release_slot()

        timer = asyncio.get_running_loop().call_later(self.client.batch_hold_s, release)
        try:
            call = self.stub.Batch(pb.BatchRequest(ops=[op for op, _, _ in batch]),
                                   timeout=max(t for _, _, t in batch), metadata=self.client.metadata)
            async for response in call:
                release()
                for result in response.results:
                    fut = futures[result.index]
                    if not fut.done():
                        fut.set_result(result)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                self.healthy = False
                self.error = f"UNAVAILABLE: {e.details()}"
            for (op, fut, _) in batch:
                if not fut.done():
                    fut.set_exception(self._transport_error(op, e))
        except Exception as e:  # e.g. the loop is closing
            for fut in futures:
                if not fut.done():
                    fut.set_exception(EnvHostUnavailable(f"batch to host failed: {e!r}", host=self.address))
        finally:
            timer.cancel()
            release()
            for fut in futures:
                if not fut.done():
                    fut.set_exception(SessionLost("the host ended the batch without answering this op",
                                                  host=self.address))

    def _transport_error(self, op: pb.Op, e: grpc.aio.AioRpcError) -> EnvError:
        which = op.WhichOneof("op")
        sid = op.step.session_id if which == "step" else None
        code, details = e.code(), e.details()
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return EnvAuthError(f"host rejected the credentials: {details}", host=self.address)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return EnvDeadlineExceeded(f"no answer from the host within the {which} deadline "
                                       f"(host hung or overloaded); the session is lost", session_id=sid,
                                       host=self.address)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and which == "step":
            return InvalidAction(f"request refused by gRPC: {details}", session_id=sid, host=self.address)
        if which == "open":
            return EnvHostUnavailable(f"host unreachable: {code.name}: {details}", host=self.address)
        return SessionLost(f"lost contact with the host mid-episode ({code.name}: {details})",
                           session_id=sid, host=self.address)


class EnvClient:
    """Async client of a pool of env hosts. See the module docstring for usage.

    Args:
        hosts: "host:port" addresses (or one string, comma-separated).
        token: shared secret for hosts started with --token (default $AGENTIC_ENV_TOKEN).
        tls_root_cert: PEM bytes of the CA that signed the hosts' certificates; None = plaintext.
        max_batch: most ops in one Batch RPC.
        max_inflight_batches: Batch RPCs per host waiting for their first results (at most
            `batch_hold_s`); while that many wait, new ops queue and leave together in the next batch.
        batch_hold_s: longest a batch keeps new ops waiting (bounds the delay slow ops can cause).
        deadline_margin_s: added to the env kind's step deadline for the client-side RPC deadline.
        connect_timeout_s: deadline of Info calls (health / load refresh).
        refresh_s: how often host load and health are refreshed in the background.
        max_message_bytes: gRPC message size limit.
    """

    def __init__(self, hosts: Sequence[str] | str, *, token: str | None = None,
                 tls_root_cert: bytes | None = None, max_batch: int = 1024, max_inflight_batches: int = 2,
                 batch_hold_s: float = 0.005, deadline_margin_s: float = 5.0, connect_timeout_s: float = 3.0,
                 refresh_s: float = 2.0, max_message_bytes: int = 64 << 20):
        if isinstance(hosts, str):
            hosts = [h.strip() for h in hosts.split(",") if h.strip()]
        if not hosts:
            raise ValueError("EnvClient needs at least one host address ('host:port')")
        if max_batch < 1 or max_inflight_batches < 1:
            raise ValueError("max_batch and max_inflight_batches must be >= 1")
        token = token if token is not None else os.environ.get("AGENTIC_ENV_TOKEN")
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.tls_root_cert = tls_root_cert
        self.max_batch, self.max_inflight_batches = max_batch, max_inflight_batches
        self.batch_hold_s = batch_hold_s
        self.deadline_margin_s, self.connect_timeout_s = deadline_margin_s, connect_timeout_s
        self.refresh_s, self.max_message_bytes = refresh_s, max_message_bytes
        self.stats: collections.Counter[str] = collections.Counter()
        self._addresses = list(dict.fromkeys(hosts))
        self._hosts: dict[str, _Host] = {}
        self._refresher: asyncio.Task | None = None
        self._ready: asyncio.Future | None = None

    async def __aenter__(self) -> EnvClient:
        await self._ensure_ready()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        await asyncio.gather(*(h.channel.close() for h in self._hosts.values()), return_exceptions=True)
        self._hosts.clear()
        self._ready = None

    async def _ensure_ready(self) -> None:
        if self._ready is None:
            self._ready = asyncio.ensure_future(self._connect())
        await asyncio.shield(self._ready)

    async def _connect(self) -> None:
        self._hosts = {a: _Host(self, a) for a in self._addresses}
        await self.refresh()
        self._refresher = asyncio.ensure_future(self._refresh_loop())

    async def refresh(self) -> None:
        """Re-reads every host's health, load and identity now."""
        await asyncio.gather(*(h.refresh() for h in self._hosts.values()))

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.refresh()

    def hosts(self) -> list[dict[str, Any]]:
        """Per host: address, healthy, host_id, last error, per-kind open/max sessions."""
        return [{"address": h.address, "healthy": h.healthy, "host_id": h.host_id, "error": h.error,
                 "envs": {n: (k.open_sessions, k.max_sessions) for n, k in h.kinds.items()}}
                for h in self._hosts.values()]

    # ---------------------------------------------------------------- episodes
    async def open(self, env: str, task: Mapping[str, Any] | None = None,
                   env_kwargs: Mapping[str, Any] | None = None) -> tuple[Session, Observation]:
        """Opens an episode of `env` on the least-loaded healthy host; returns (session, first observation)."""
        await self._ensure_ready()
        try:
            request = pb.OpenRequest(env=env, task_json=json.dumps(dict(task or {})),
                                     env_kwargs_json=json.dumps(dict(env_kwargs or {})))
        except (TypeError, ValueError) as e:
            raise InvalidEnvRequest(f"task and env_kwargs must be JSON-serializable: {e}") from None
        candidates = self._placement(env)
        last: EnvError | None = None
        for host in candidates:
            host.load_delta[env] += 1
            fut = host.submit(pb.Op(open=request), host.deadline(env))
            try:
                result = await fut
            except (EnvHostUnavailable, EnvResourceExhausted) as e:
                host.load_delta[env] -= 1
                last = e
                continue
            except EnvError as e:
                host.load_delta[env] -= 1
                self._count(e)
                raise
            if result.HasField("error"):
                host.load_delta[env] -= 1
                err = error_from_kind(result.error.kind, result.error.message, host=host.address)
                if isinstance(err, (EnvHostUnavailable, EnvResourceExhausted)):
                    if isinstance(err, EnvHostUnavailable):
                        host.healthy = False
                    last = err
                    continue
                self._count(err)
                raise err
            o = result.open
            if host.host_id and o.host_id != host.host_id:
                self.stats["host_restarts_seen"] += 1
            host.host_id = o.host_id
            self.stats["opened"] += 1
            return (Session(o.session_id, env, host.address, o.host_id),
                    Observation(text=o.observation, info=_info(o.info_json, o.observation_truncated)))
        assert last is not None
        self._count(last)
        raise last

    def _placement(self, env: str) -> list[_Host]:
        serving = [h for h in self._hosts.values() if env in h.kinds]
        if not serving:
            down = [f"{h.address} ({h.error})" for h in self._hosts.values() if not h.healthy]
            if down and all(h.auth_failed for h in self._hosts.values()):
                err: EnvError = EnvAuthError("every host rejected this client's token: " + ", ".join(down))
            elif down:
                err = EnvHostUnavailable(f"no reachable host serves env {clip(env)!r}; unreachable: "
                                                   + ", ".join(down))
            else:
                served = sorted({n for h in self._hosts.values() for n in h.kinds})
                err = InvalidEnvRequest(f"no host serves env {clip(env)!r}; the hosts serve {served}")
            self._count(err)
            raise err
        healthy = sorted((h for h in serving if h.healthy), key=lambda h: h.load(env))
        # Hosts that looked down are tried last: they may be back (the refresh will tell).
        return healthy + [h for h in serving if not h.healthy]

    async def step(self, session: Session, action: str | bytes) -> Step:
        """Applies `action` to the session; raises a typed `EnvError` on failure."""
        result = await self._step_future(session, action)
        if isinstance(result, EnvError):
            raise result
        return result

    async def step_many(self, steps: Sequence[tuple[Session, str | bytes]]) -> list[Step | EnvError]:
        """Steps many sessions at once; each result is a `Step` or the `EnvError` of that session."""
        return list(await asyncio.gather(*(self._step_future(s, a) for s, a in steps)))

    async def _step_future(self, session: Session, action: str | bytes) -> Step | EnvError:
        host = self._hosts.get(session.host)
        if host is None:
            await self._ensure_ready()
            host = self._hosts.get(session.host)
            if host is None:
                return self._count(SessionLost("the session's host is not in this client's pool",
                                               session_id=session.session_id, host=session.host))
        if host.host_id and host.host_id != session.host_id:
            return self._count(SessionLost(f"the host restarted (instance {session.host_id} -> {host.host_id}); "
                                           "the session is lost", session_id=session.session_id, host=host.address))
        data = action.encode("utf-8", "surrogateescape") if isinstance(action, str) else bytes(action)
        op = pb.Op(step=pb.StepRequest(session_id=session.session_id, action=data))
        try:
            result = await host.submit(op, host.deadline(session.env))
        except EnvError as e:
            return self._count(e)
        if result.HasField("error"):
            return self._count(error_from_kind(result.error.kind, result.error.message,
                                               session_id=session.session_id, host=host.address))
        s = result.step
        self.stats["steps"] += 1
        return Step(observation=s.observation, reward=s.reward, done=s.done, truncated=s.truncated,
                    info=_info(s.info_json, s.observation_truncated))

    async def close(self, session: Session) -> dict[str, float]:
        """Closes the session and returns its metrics. Never raises: a session that had already ended
        without its metrics (its worker died, it ran past its deadline, its host restarted or cannot
        be reached) returns `{SESSION_LOST_METRIC: 1.0}`; `{}` is an env without metrics (or a second close)."""
        host = self._hosts.get(session.host)
        if host is None or (host.host_id and host.host_id != session.host_id):
            return self._lost_metrics()
        host.load_delta[session.env] -= 1
        for attempt in range(2):  # Close is idempotent on the host: one retry is safe
            try:
                result = await host.submit(pb.Op(close=pb.CloseRequest(session_id=session.session_id)),
                                           host.deadline(session.env))
            except EnvError:
                if attempt == 0:
                    continue
                self.stats["close_failed"] += 1
                return self._lost_metrics()
            if result.HasField("error"):
                self.stats["close_failed"] += 1
                return self._lost_metrics()
            if result.close.lost:
                return self._lost_metrics()
            self.stats["closed"] += 1
            return json.loads(result.close.metrics_json) if result.close.metrics_json else {}
        return self._lost_metrics()

    def _lost_metrics(self) -> dict[str, float]:
        self.stats["closed_lost"] += 1
        return {SESSION_LOST_METRIC: 1.0}

    def _count(self, err: EnvError) -> EnvError:
        self.stats[type(err).__name__] += 1
        return err


def _info(info_json: str, truncated: bool) -> dict[str, Any]:
    info = json.loads(info_json) if info_json else {}
    if truncated and "observation_truncated" not in info:
        info["observation_truncated"] = True
    return info
