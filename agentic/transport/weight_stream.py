"""The weight stream: the learner serves its published weights over gRPC, actors fetch them.

    server = WeightStreamServer(host="0.0.0.0").start()         # learner host
    server.publish(learner.params, version=3)                  # or WeightStreamPublisher(server)
    client = WeightStreamClient(server.address)                 # actor host
    version, params = client.fetch(template, min_version=3)     # pytree of numpy arrays
    WeightFollower(client, engine, template).start()            # or keep an engine current

Protocol (`proto/weight_stream.proto`, service `agentic.weights.WeightStream`):

* `Latest` answers the newest published version (-1 before the first publish), its tensor
  count and total bytes.
* `Fetch(min_version)` waits (up to the call's deadline) until a version >= min_version is
  published, then streams that version: one `WeightChunk` per byte range of at most
  `chunk_bytes` of one tensor, tensors in pytree flatten order, a tensor's chunks in offset
  order. A chunk names its tensor by pytree path (`jax.tree_util.keystr`), dtype (numpy
  name; bfloat16 and friends via ml_dtypes), shape, offset and the tensor's total bytes; the
  data is raw little-endian bytes in C order. No pickle.
* Every chunk of one Fetch comes from one version: a publish replaces an immutable snapshot,
  and a Fetch streams the snapshot it started with (memory: a Fetch in flight keeps its
  version's host copy alive next to the newer one).

The client checks every chunk against a template pytree (names, shapes, dtypes; ValueError
names the tensor), so a learner and actor with different models fail loudly instead of
serving garbage. Transport failures raise `WeightStreamUnavailable` (a ConnectionError
naming the address); a Fetch that saw no such version within its deadline, TimeoutError.

Trust (`auth.py`): with a token (required to bind off loopback; default
$AGENTIC_TRANSPORT_TOKEN) every call needs `authorization: Bearer <token>`: the weights are the
run's, not the network's. TLS with `tls_cert`/`tls_key` (server) and `tls_ca` (client).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
from typing import Any

import grpc
import jax
import ml_dtypes
import numpy as np

from agentic.async_thread import AsyncThread
from agentic.core import WeightPublisher
from agentic.transport import auth
from agentic.transport.grpc_queue import _CLIENT_KEEPALIVE, _SERVER_KEEPALIVE, _UNLIMITED
from agentic.transport.proto import weight_stream_pb2 as pb
from agentic.transport.proto import weight_stream_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 4 << 20
_ML_DTYPES = {n for n in dir(ml_dtypes) if isinstance(getattr(ml_dtypes, n), type)
              and issubclass(getattr(ml_dtypes, n), np.generic)}


class WeightStreamUnavailable(ConnectionError):
    """The weight stream server could not be reached, or the stream broke off."""


def wire_dtype(name: str) -> np.dtype:
    """The little-endian numpy dtype a chunk's dtype name stands for (ValueError if none)."""
    if name in _ML_DTYPES:
        return np.dtype(getattr(ml_dtypes, name))
    try:
        dtype = np.dtype(name)
    except TypeError as err:
        raise ValueError(f"unknown dtype {name!r}") from err
    if dtype.kind not in "biufc":
        raise ValueError(f"dtype {name!r} cannot travel as raw bytes")
    return dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype


@dataclasses.dataclass(frozen=True)
class _Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    data: memoryview  # read-only bytes, little-endian, C order


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    version: int
    tensors: tuple[_Tensor, ...]
    total_bytes: int


def _snapshot(params: Any, version: int) -> _Snapshot:
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
    if not leaves:
        raise ValueError("publish: the params pytree has no leaves")
    tensors = []
    for path, leaf in leaves:
        leaf = np.asarray(leaf)
        # a copy: numpy leaves pass device_get as they are and may be changed (or donated) later
        host = np.array(leaf, dtype=wire_dtype(leaf.dtype.name), order="C", copy=True)
        host.setflags(write=False)
        tensors.append(_Tensor(jax.tree_util.keystr(path), leaf.dtype.name, host.shape,
                               memoryview(host.reshape(-1).view(np.uint8))))
    return _Snapshot(version, tuple(tensors), sum(t.data.nbytes for t in tensors))


class _Servicer(pb_grpc.WeightStreamServicer):
    def __init__(self, server: WeightStreamServer):
        self.server = server

    async def Latest(self, request, context):
        snap = self.server._latest
        if snap is None:
            return pb.WeightsInfo(version=-1)
        return pb.WeightsInfo(version=snap.version, num_tensors=len(snap.tensors), total_bytes=snap.total_bytes)

    async def Fetch(self, request, context):
        snap = self.server._latest
        while snap is None or snap.version < request.min_version:
            try:
                await asyncio.wait_for(self.server._changed.wait(), context.time_remaining())
            except TimeoutError:
                latest = -1 if snap is None else snap.version
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"no version >= {request.min_version} published (latest: {latest})")
            snap = self.server._latest
        step = self.server.chunk_bytes
        for t in snap.tensors:
            size = t.data.nbytes
            for offset in range(0, max(size, 1), step):
                yield pb.WeightChunk(version=snap.version, name=t.name, dtype=t.dtype, shape=t.shape,
                                     offset=offset, tensor_bytes=size, data=bytes(t.data[offset:offset + step]))


class WeightStreamServer:
    """Serves the last published weights over gRPC from a background thread (grpc.aio).

    Args:
      host: interface to bind; 127.0.0.1 by default (0.0.0.0 for actors on other hosts).
      port: 0 picks a free port (see `.port` / `.address` after `start()`).
      chunk_bytes: the most data bytes in one chunk; bigger tensors are split.
      token: clients must send it (default $AGENTIC_TRANSPORT_TOKEN); required off loopback.
      insecure: allow a non-loopback bind without a token (a closed network only).
      tls_cert, tls_key: PEM files: serve TLS.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, chunk_bytes: int = DEFAULT_CHUNK_BYTES, *,
                 token: str | None = None, insecure: bool = False, tls_cert: str | None = None,
                 tls_key: str | None = None):
        self.token = auth.resolve_token(token)
        auth.check_bind("weight stream server", host, self.token, insecure)
        self._auth = auth.BearerAuth(self.token, None, ())
        self.tls = (tls_cert, tls_key)
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes={chunk_bytes} must be > 0")
        self.host, self.port, self.chunk_bytes = host, port, chunk_bytes
        self._latest: _Snapshot | None = None
        self._publish_lock = threading.Lock()
        self._loop: AsyncThread | None = None
        self._server: grpc.aio.Server | None = None
        self._changed: asyncio.Event | None = None  # set (and replaced) on the loop after each publish

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def latest_version(self) -> int:
        return -1 if self._latest is None else self._latest.version

    def start(self) -> WeightStreamServer:
        """Binds and starts serving; returns self. Raises OSError when the port cannot be bound."""
        if self._loop is not None:
            raise RuntimeError("WeightStreamServer already started")
        self._loop = AsyncThread("weight-stream-server")
        try:
            self._server = self._loop.run(self._start_server())
        except BaseException:
            self._loop.close()
            raise
        return self

    async def _start_server(self) -> grpc.aio.Server:
        self._changed = asyncio.Event()
        server = grpc.aio.server(options=[("grpc.max_send_message_length", _UNLIMITED),
                                          ("grpc.so_reuseport", 0), *_SERVER_KEEPALIVE],
                                 interceptors=[self._auth])
        pb_grpc.add_WeightStreamServicer_to_server(_Servicer(self), server)
        try:
            port = auth.add_port(server, f"{self.host}:{self.port}", *self.tls)
        except RuntimeError as err:
            raise OSError(f"weight stream server cannot bind {self.address} (port in use?)") from err
        if port == 0:
            raise OSError(f"weight stream server cannot bind {self.address} (port in use?)")
        self.port = port
        await server.start()
        return server

    def publish(self, params: Any, version: int) -> None:
        """Copies `params` to host memory once and serves them as `version` (which must be newer
        than the last published one); Fetch calls waiting for it are answered."""
        version = int(version)
        with self._publish_lock:
            if version <= self.latest_version:
                raise ValueError(f"publish: version {version} is not newer than the published "
                                 f"version {self.latest_version}")
            self._latest = _snapshot(params, version)
        if self._loop is not None:
            try:
                self._loop.loop.call_soon_threadsafe(self._notify)
            except RuntimeError:  # stopped: nobody is waiting
                pass

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def stop(self, grace: float = 1.0) -> None:
        """Stops serving; streams still running after `grace` seconds are cancelled. Idempotent."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            loop.run(self._server.stop(grace), timeout=grace + 30)
        finally:
            loop.close()

    def __enter__(self) -> WeightStreamServer:
        return self.start() if self._loop is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


class WeightStreamPublisher(WeightPublisher):
    """Publishes learner params to a `WeightStreamServer`. Returns once they can be fetched
    (not once actors serve them: their `WeightFollower`s pick them up at their next poll)."""

    def __init__(self, server: WeightStreamServer):
        self.server = server

    def publish(self, params: Any, version: int) -> None:
        self.server.publish(params, version)


class WeightStreamClient:
    """Client of a `WeightStreamServer`.

    Args:
      address: "host:port" of the server.
      timeout_s: deadline of `latest_version` / `info`.
      fetch_timeout_s: default deadline of `fetch` (waiting for the version plus the transfer).
      token: the run's token (default $AGENTIC_TRANSPORT_TOKEN).
      tls_ca: PEM file of the CA that signed the server's certificate: connect with TLS.
    """

    def __init__(self, address: str, *, timeout_s: float = 10.0, fetch_timeout_s: float = 600.0,
                 token: str | None = None, tls_ca: str | None = None):
        self.address, self.timeout_s, self.fetch_timeout_s = address, timeout_s, fetch_timeout_s
        self._metadata = auth.metadata(auth.resolve_token(token))
        self._channel = auth.channel(
            address, [("grpc.max_receive_message_length", _UNLIMITED), *_CLIENT_KEEPALIVE], tls_ca)
        self._stub = pb_grpc.WeightStreamStub(self._channel)

    def _error(self, err: grpc.RpcError, method: str) -> Exception:
        code = err.code()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
            return WeightStreamUnavailable(
                f"{method} to the weight stream server at {self.address} failed with {code.name}: "
                f"{err.details()}. Is the learner's WeightStreamServer running?")
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return PermissionError(f"{method} to the weight stream at {self.address}: {err.details()}")
        return RuntimeError(f"{method} to {self.address} failed with {code.name}: {err.details()}")

    def info(self) -> dict[str, int]:
        """{"version", "num_tensors", "total_bytes"} of the newest published weights (version -1: none)."""
        try:
            reply = self._stub.Latest(pb.LatestRequest(), timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as err:
            raise self._error(err, "Latest") from err
        return {"version": reply.version, "num_tensors": reply.num_tensors, "total_bytes": reply.total_bytes}

    def latest_version(self) -> int:
        return self.info()["version"]

    def fetch(self, template: Any, min_version: int = 0, timeout: float | None = None) -> tuple[int, Any]:
        """The newest weights once their version is >= `min_version`: (version, pytree of numpy
        arrays shaped like `template`, whose leaves need only `.shape` and `.dtype`)."""
        timeout = self.fetch_timeout_s if timeout is None else timeout
        paths, treedef = jax.tree_util.tree_flatten_with_path(template)
        specs = {jax.tree_util.keystr(p): (tuple(leaf.shape), np.dtype(leaf.dtype)) for p, leaf in paths}
        bufs: dict[str, bytearray] = {}
        version = None
        call = self._stub.Fetch(pb.FetchRequest(min_version=min_version), timeout=timeout,
                                 metadata=self._metadata)
        try:
            for chunk in call:
                if version is None:
                    version = chunk.version
                elif chunk.version != version:  # a server bug, never a race
                    raise RuntimeError(f"Fetch from {self.address} mixed versions {version} and {chunk.version}")
                self._add(chunk, specs, bufs)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise TimeoutError(f"no weights of version >= {min_version} arrived from {self.address} "
                                   f"within {timeout} s ({err.details()})") from err
            raise self._error(err, "Fetch") from err
        finally:
            call.cancel()  # a no-op once the stream ended; stops the server when we raise
        missing = [name for name, (shape, dtype) in specs.items()
                   if name not in bufs or len(bufs[name]) != math.prod(shape) * dtype.itemsize]
        if missing:
            raise ValueError(f"weights version {version} from {self.address} lack (or cut short) "
                             f"template tensor(s) {', '.join(missing[:5])}")
        leaves = [np.frombuffer(bufs[name], wire_dtype(dtype.name)).astype(dtype, copy=False).reshape(shape)
                  for name, (shape, dtype) in specs.items()]
        return version, jax.tree_util.tree_unflatten(treedef, leaves)

    def _add(self, chunk: pb.WeightChunk, specs: dict, bufs: dict[str, bytearray]) -> None:
        name, shape = chunk.name, tuple(chunk.shape)
        if name not in specs:
            raise ValueError(f"tensor {name} from {self.address} is not in the template")
        want_shape, want_dtype = specs[name]
        if shape != want_shape or chunk.dtype != want_dtype.name:
            raise ValueError(f"tensor {name}: the server sends {chunk.dtype}{list(shape)}, the template "
                             f"expects {want_dtype.name}{list(want_shape)}")
        buf = bufs.setdefault(name, bytearray())
        if chunk.offset != len(buf) or len(buf) + len(chunk.data) > chunk.tensor_bytes:
            raise RuntimeError(f"tensor {name}: chunk at offset {chunk.offset} out of order (have {len(buf)} "
                               f"of {chunk.tensor_bytes} bytes)")
        buf += chunk.data

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> WeightStreamClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class WeightFollower:
    """Keeps an engine on the newest published weights: a daemon thread polls `latest_version()`
    every `poll_s` and, when it differs from `engine.weight_version` (newer, or older after the
    learner was restarted from its last checkpoint), fetches the weights and
    calls `engine.update_params(params, version, **update_kwargs)` (any object with those two
    works; e.g. `running="finish"` for a JaxEngine without partial rollouts).

    Failures (learner unreachable or restarting) are logged and retried at the next poll;
    `.last_error` holds the latest one (None after a success), `.version` the engine's version.
    """

    def __init__(self, client: WeightStreamClient, engine: Any, template: Any, *, poll_s: float = 1.0,
                 update_kwargs: dict | None = None):
        self.client, self.engine, self.template, self.poll_s = client, engine, template, poll_s
        self.update_kwargs = dict(update_kwargs or {})
        self.last_error: Exception | None = None
        self._stop = threading.Event()
        self._updated = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="weight-follower", daemon=True)

    @property
    def version(self) -> int:
        return int(self.engine.weight_version)

    def start(self) -> WeightFollower:
        self._thread.start()
        return self

    def _poll_once(self) -> None:
        latest = self.client.latest_version()
        if latest >= 0 and latest != self.version:  # older too: a learner resumed from an earlier checkpoint
            version, params = self.client.fetch(self.template, min_version=latest)
            self.engine.update_params(params, version, **self.update_kwargs)
            log.info("weights: now serving version %d from %s", version, self.client.address)
            with self._updated:
                self._updated.notify_all()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll_once()
            except Exception as err:  # retry at the next poll, whatever it was
                if repr(err) != repr(self.last_error):
                    log.warning("weights: update from %s failed, retrying every %.1f s: %s",
                                self.client.address, self.poll_s, err)
                self.last_error = err
            else:
                self.last_error = None
            self._stop.wait(self.poll_s)

    def wait_for(self, version: int, timeout: float | None = None) -> bool:
        """Blocks until the engine serves `version` or newer; False at timeout."""
        with self._updated:
            return self._updated.wait_for(lambda: self.version >= version, timeout)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
