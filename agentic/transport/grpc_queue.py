"""The trajectory queue over gRPC: a server hosting an `InProcessTrajectoryQueue`, and a client.

The learner host runs `TrajectoryQueueServer` (the learner itself uses `server.queue`
in process); actors anywhere use `GrpcTrajectoryQueue(address)`, which implements the
same `TrajectoryQueue` interface, so actor code is identical in one process or many:

    server = TrajectoryQueueServer(InProcessTrajectoryQueue(QueueConfig(max_lag=2))).start()
    actor_queue = GrpcTrajectoryQueue(server.address)       # on an actor host
    await actor_queue.aput(group, timeout=30.0)              # False: still full at timeout
    groups = server.queue.get(num_groups=16, timeout=60.0)   # on the learner

Backpressure crosses the wire as waiting: PutGroup waits on the server while the queue
is full, up to the request's `timeout_s` (bounded by the call's deadline), then answers
`accepted=false`. Messages are protobuf (`proto/trajectory_queue.proto`): per-token arrays
as packed bytes, never pickle. Errors map to typed exceptions: INVALID_ARGUMENT ->
ValueError naming the field, FAILED_PRECONDITION -> QueueClosed, UNAVAILABLE and other
transport failures -> QueueUnavailable. Delivery is at most once: the queue lives in the
server's memory, so a restarted server starts empty, and a GetGroups reply lost with
its connection loses its groups.

Standalone server: `python -m agentic.transport.grpc_queue --port 50060 --capacity-groups 64`.

Trust (`auth.py`): PutGroup and Stats need the run's token when the server has one (it must, to
bind off loopback); GetGroups, SetVersion and Close need the learner's token, which a server
started without `learner_token` makes up and keeps (its learner uses `server.queue` in process).
A pushed group is checked (`validate.py`): finite rewards and log-probs, tokens inside
`vocab_size`, a policy version the learner issued; else INVALID_ARGUMENT naming the field.

Size: past 400 lines because the server, the client and the error mapping between them are one
wire contract, read in one place; the queue itself is `queue.py`, the array codec `codec.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from collections.abc import Sequence

import grpc

from agentic.async_thread import AsyncThread
from agentic.core import Trajectory
from agentic.transport import auth, codec
from agentic.transport.proto import trajectory_queue_pb2 as pb
from agentic.transport.proto import trajectory_queue_pb2_grpc as pb_grpc
from agentic.transport.queue import (
    Group,
    InProcessTrajectoryQueue,
    QueueClosed,
    QueueConfig,
    QueueError,
    QueueUnavailable,
    TrajectoryQueue,
    validate_group,
)
from agentic.transport.validate import validate_pushed_group

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
_UNLIMITED = -1

# Long blocking calls (a learner waiting in GetGroups) see no data for a while: keepalive
# pings detect a dead peer, and the server must accept them without a call in flight.
_CLIENT_KEEPALIVE = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # Reconnect quickly after a server restart.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
_SERVER_KEEPALIVE = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
]


def _wait_bound(request, context) -> float | None:
    """Seconds a blocking RPC may wait: its `timeout_s`, kept inside the call's deadline."""
    timeout = request.timeout_s if request.HasField("timeout_s") else None
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout_s={timeout} must be >= 0")
    remaining = context.time_remaining()
    if remaining is not None:  # answer before the deadline, or the reply is lost
        bound = max(0.0, remaining - min(0.5, 0.1 * remaining))
        timeout = bound if timeout is None else min(timeout, bound)
    return timeout


LEARNER_METHODS = ("GetGroups", "SetVersion", "Close")


class _Servicer(pb_grpc.TrajectoryQueueServicer):
    def __init__(self, queue: InProcessTrajectoryQueue, vocab_size: int | None):
        self.queue = queue
        self.vocab_size = vocab_size

    async def _abort(self, context, err: Exception, method: str):
        if isinstance(err, QueueClosed):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{method}: {err}")
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method}: {err}")

    async def PutGroup(self, request, context):
        try:
            group = codec.group_from_proto(request.group)
            validate_pushed_group(group, learner_version=int(self.queue.stats()["learner_version"]),
                                  vocab_size=self.vocab_size)
            accepted = await self.queue.aput(group, _wait_bound(request, context))
        except (ValueError, QueueClosed) as err:
            await self._abort(context, err, "PutGroup")
        return pb.PutGroupResponse(accepted=accepted)

    async def GetGroups(self, request, context):
        try:
            groups = await self.queue.aget(request.num_groups, _wait_bound(request, context))
        except (ValueError, QueueClosed) as err:
            await self._abort(context, err, "GetGroups")
        return pb.GetGroupsResponse(groups=[codec.group_to_proto(g) for g in groups])

    async def SetVersion(self, request, context):
        try:
            self.queue.set_learner_version(request.version)
        except ValueError as err:
            await self._abort(context, err, "SetVersion")
        return pb.SetVersionResponse()

    async def Stats(self, request, context):
        stats = self.queue.stats()
        return pb.StatsResponse(
            counts={k: v for k, v in stats.items() if not k.endswith("_s")},
            seconds={k: v for k, v in stats.items() if k.endswith("_s")},
        )

    async def Close(self, request, context):
        self.queue.close()
        return pb.CloseResponse()


class TrajectoryQueueServer:
    """Serves an `InProcessTrajectoryQueue` over gRPC from a background thread (grpc.aio).

    Blocked PutGroup/GetGroups calls wait on the event loop, not on threads, so hundreds
    of actors waiting on a full queue cost nothing. Stopping the server does not close
    its queue: close `server.queue` first to answer waiting clients with QueueClosed.

    Args:
      queue: the queue to serve; a new `InProcessTrajectoryQueue(config)` if None.
      config: used when `queue` is None.
      host: interface to bind; 127.0.0.1 by default (use 0.0.0.0 for remote actors).
      port: 0 picks a free port (see `.port` after `start()`).
      max_message_bytes: largest PutGroup request accepted (one group). Replies are
        not limited, so a GetGroups reply is never lost to its size.
      token: the run's token actors send (default $AGENTIC_TRANSPORT_TOKEN); required off loopback.
      learner_token: the token for GetGroups/SetVersion/Close (default: a random one nobody knows).
      insecure: allow a non-loopback bind without a token (a closed network only).
      tls_cert, tls_key: PEM files: serve TLS.
      vocab_size: pushed tokens must be in [0, vocab_size) (None: unchecked).
    """

    def __init__(
        self,
        queue: InProcessTrajectoryQueue | None = None,
        *,
        config: QueueConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        token: str | None = None,
        learner_token: str | None = None,
        insecure: bool = False,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        vocab_size: int | None = None,
    ):
        self.token = auth.resolve_token(token)
        auth.check_bind("trajectory queue server", host, self.token, insecure)
        self._auth = auth.BearerAuth(self.token, learner_token, LEARNER_METHODS)
        self.tls = (tls_cert, tls_key)
        self.vocab_size = vocab_size
        if queue is not None and config is not None:
            raise ValueError("pass either a queue or a config for a new queue, not both")
        self.queue = queue if queue is not None else InProcessTrajectoryQueue(config)
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self._loop: AsyncThread | None = None
        self._server: grpc.aio.Server | None = None
        self._stopped = threading.Event()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> TrajectoryQueueServer:
        """Binds and starts serving (on its own event loop thread); returns self. Raises OSError
        when the port cannot be bound."""
        if self._loop is not None:
            raise RuntimeError("TrajectoryQueueServer already started")
        self._loop = AsyncThread("trajectory-queue-server")
        try:
            self._server = self._loop.run(self._start_server())
        except BaseException:
            self._loop.close()
            self._stopped.set()
            raise
        return self

    async def _start_server(self) -> grpc.aio.Server:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", _UNLIMITED),
                ("grpc.so_reuseport", 0),  # a second server on a taken port must fail, not share it
                *_SERVER_KEEPALIVE,
            ],
            interceptors=[self._auth],
        )
        pb_grpc.add_TrajectoryQueueServicer_to_server(_Servicer(self.queue, self.vocab_size), server)
        try:
            port = auth.add_port(server, f"{self.host}:{self.port}", *self.tls)
        except RuntimeError as err:
            port = 0
            cause = err
        else:
            cause = None
        if port == 0:
            raise OSError(f"trajectory queue server cannot bind {self.address} (port in use?)") from cause
        self.port = port
        await server.start()
        return server

    def stop(self, grace: float = 1.0) -> None:
        """Stops serving; calls still running after `grace` seconds are cancelled. Idempotent."""
        if self._loop is None or self._stopped.is_set():
            return
        try:
            self._loop.run(self._server.stop(grace), timeout=grace + 30)
        finally:
            self._loop.close()
            self._stopped.set()

    def wait(self) -> None:
        """Blocks until the server stops."""
        if self._loop is not None:
            self._stopped.wait()

    def __enter__(self) -> TrajectoryQueueServer:
        return self.start() if self._loop is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def _deliver(call: grpc.Future, future: asyncio.Future) -> None:
    if future.done():  # the awaiting task was cancelled
        return
    if call.cancelled():
        future.set_exception(QueueClosed("call cancelled"))
    elif call.exception() is not None:
        future.set_exception(call.exception())
    else:
        future.set_result(call.result())


class GrpcTrajectoryQueue(TrajectoryQueue):
    """`TrajectoryQueue` client of a `TrajectoryQueueServer`.

    `close()` closes this client only (its waiters raise QueueClosed); `close_remote()`
    closes the server's queue for every client and the learner.

    Args:
      address: "host:port" of the server.
      max_message_bytes: largest group this client sends (checked before sending).
      deadline_margin_s: added to a put/get `timeout` to form the call's deadline, so the
        server's "timed out" answer arrives before the deadline does.
      rpc_timeout_s: deadline of the quick calls (SetVersion, Stats, Close).
      token: the run's token (default $AGENTIC_TRANSPORT_TOKEN).
      learner_token: the learner's token, for get/set_learner_version/close_remote.
      tls_ca: PEM file of the CA that signed the server's certificate: connect with TLS.
    """

    def __init__(
        self,
        address: str,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        deadline_margin_s: float = 10.0,
        rpc_timeout_s: float = 30.0,
        token: str | None = None,
        learner_token: str | None = None,
        tls_ca: str | None = None,
    ):
        self.address = address
        self._metadata = auth.metadata(learner_token or auth.resolve_token(token))
        self.max_message_bytes = max_message_bytes
        self.deadline_margin_s = deadline_margin_s
        self.rpc_timeout_s = rpc_timeout_s
        self._closed = False
        self._channel = auth.channel(
            address,
            [
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", _UNLIMITED),
                *_CLIENT_KEEPALIVE,
            ],
            tls_ca,
        )
        self._stub = pb_grpc.TrajectoryQueueStub(self._channel)

    # ----- error mapping -----

    def _error(self, err: grpc.RpcError, method: str) -> Exception:
        if self._closed:
            return QueueClosed(f"GrpcTrajectoryQueue({self.address}) was closed")
        code, details = err.code(), err.details()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return ValueError(details)
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return PermissionError(f"{method} to the trajectory queue at {self.address}: {details}")
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            return QueueClosed(f"trajectory queue at {self.address} is closed ({details})")
        if code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.CANCELLED,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ):
            return QueueUnavailable(
                f"{method} to the trajectory queue server at {self.address} failed with {code.name}: "
                f"{details}. Is the server running? (a restarted server starts with an empty queue)"
            )
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return QueueError(
                f"{method} to {self.address}: {details} (raise max_message_bytes on server and client?)"
            )
        return QueueError(f"{method} to {self.address} failed with {code.name}: {details}")

    def _check_open(self) -> None:
        if self._closed:
            raise QueueClosed(f"GrpcTrajectoryQueue({self.address}) was closed")

    def _call(self, method: str, request, timeout: float | None):
        self._check_open()
        try:
            return getattr(self._stub, method)(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise self._error(err, method) from err

    async def _acall(self, method: str, request, timeout: float | None):
        """The call on the same channel, awaited without blocking the loop or a thread."""
        self._check_open()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        call = getattr(self._stub, method).future(request, timeout=timeout, metadata=self._metadata)

        def on_done(c):
            try:
                loop.call_soon_threadsafe(_deliver, c, future)
            except RuntimeError:  # the loop is closed; nobody is waiting
                pass

        call.add_done_callback(on_done)
        try:
            return await future
        except asyncio.CancelledError:
            call.cancel()
            raise
        except grpc.RpcError as err:
            raise self._error(err, method) from err

    # ----- requests -----

    def _deadline(self, timeout: float | None) -> float | None:
        return None if timeout is None else timeout + self.deadline_margin_s

    def _put_request(self, group: Sequence[Trajectory], timeout: float | None) -> pb.PutGroupRequest:
        group = list(group)
        validate_group(group)
        request = pb.PutGroupRequest(group=codec.group_to_proto(group), timeout_s=timeout)
        size = request.ByteSize()
        if size > self.max_message_bytes:
            raise ValueError(
                f"group {group[0].group_id!r} is {size} bytes on the wire, over max_message_bytes="
                f"{self.max_message_bytes}"
            )
        return request

    @staticmethod
    def _get_request(num_groups: int, timeout: float | None) -> pb.GetGroupsRequest:
        return pb.GetGroupsRequest(num_groups=num_groups, timeout_s=timeout)

    @staticmethod
    def _decode_groups(response: pb.GetGroupsResponse) -> list[Group]:
        return [codec.group_from_proto(g) for g in response.groups]

    # ----- TrajectoryQueue -----

    def put(self, group: Sequence[Trajectory], timeout: float | None = None) -> bool:
        request = self._put_request(group, timeout)
        return self._call("PutGroup", request, self._deadline(timeout)).accepted

    def get(self, num_groups: int, timeout: float | None = None) -> list[Group]:
        response = self._call("GetGroups", self._get_request(num_groups, timeout), self._deadline(timeout))
        return self._decode_groups(response)

    async def aput(self, group: Sequence[Trajectory], timeout: float | None = None) -> bool:
        request = self._put_request(group, timeout)
        return (await self._acall("PutGroup", request, self._deadline(timeout))).accepted

    async def aget(self, num_groups: int, timeout: float | None = None) -> list[Group]:
        request = self._get_request(num_groups, timeout)
        return self._decode_groups(await self._acall("GetGroups", request, self._deadline(timeout)))

    def set_learner_version(self, version: int) -> None:
        self._call("SetVersion", pb.SetVersionRequest(version=version), self.rpc_timeout_s)

    def stats(self) -> dict[str, int | float]:
        response = self._call("Stats", pb.StatsRequest(), self.rpc_timeout_s)
        return {**response.counts, **response.seconds}

    def close_remote(self) -> None:
        """Closes the server's queue: every client's waiters and the learner get QueueClosed."""
        self._call("Close", pb.CloseRequest(), self.rpc_timeout_s)

    def close(self) -> None:
        """Closes this client; its calls in flight raise QueueClosed. Idempotent."""
        self._closed = True
        self._channel.close()

    def __enter__(self) -> GrpcTrajectoryQueue:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Standalone trajectory queue server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50060)
    parser.add_argument("--capacity-groups", type=int, default=QueueConfig.capacity_groups)
    parser.add_argument("--max-lag", type=int, default=QueueConfig.max_lag)
    parser.add_argument("--reuse", type=int, default=QueueConfig.reuse)
    parser.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    parser.add_argument("--token-file", help="file holding the run's token (else $AGENTIC_TRANSPORT_TOKEN)")
    parser.add_argument("--learner-token-file", help="file holding the learner's token (GetGroups, SetVersion, Close)")
    parser.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without a token")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--vocab-size", type=int)
    args = parser.parse_args(argv)

    def read(path):
        return open(path).read().strip() if path else None

    config = QueueConfig(capacity_groups=args.capacity_groups, max_lag=args.max_lag, reuse=args.reuse)
    server = TrajectoryQueueServer(
        config=config, host=args.host, port=args.port, max_message_bytes=args.max_message_bytes,
        token=read(args.token_file), learner_token=read(args.learner_token_file), insecure=args.insecure,
        tls_cert=args.tls_cert, tls_key=args.tls_key, vocab_size=args.vocab_size,
    ).start()
    print(f"trajectory queue serving on {server.address} ({config})", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        server.queue.close()
        server.stop()


if __name__ == "__main__":
    main()
