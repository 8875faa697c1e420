"""Starts env hosts as local subprocesses (what the launcher does when no remote
addresses are configured) and stops them with no orphans."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(address: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    """Blocks until the host at `address` reports SERVING; raises with the cause otherwise."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"env host at {address} exited with code {proc.returncode} before serving")
        with grpc.insecure_channel(address) as channel:
            try:
                resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            except grpc.RpcError as e:
                last = e.code().name
        time.sleep(0.2)
    raise TimeoutError(f"env host at {address} not healthy after {timeout_s:.0f}s (last: {last})")


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, even by SIGKILL (Linux), so no host is orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def local_env_hosts(envs: Sequence[str], count: int = 1, *, workers: int = 1, token: str | None = None,
                    extra_args: Sequence[str] = (), startup_timeout_s: float = 120.0) -> Iterator[list[str]]:
    """Runs `count` env hosts serving `envs` on loopback; yields their addresses.

    `token`: the hosts require it (`EnvClient(token=...)`); handed over in the environment, not argv,
    so it stays out of the process list. None: the hosts take $AGENTIC_ENV_TOKEN, if set.
    """
    procs: list[subprocess.Popen] = []
    addresses: list[str] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if token:
        env["AGENTIC_ENV_TOKEN"] = token
    try:
        for _ in range(count):
            port = free_port()
            cmd = [sys.executable, "-m", "agentic.env.host", "--port", str(port), "--envs", ",".join(envs),
                   "--workers", str(workers), *extra_args]
            # Own process group: Ctrl-C in the terminal reaches us, and we stop the host (and its workers) ourselves.
            procs.append(subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent, env=env))
            addresses.append(f"127.0.0.1:{port}")
        for address, proc in zip(addresses, procs, strict=True):
            wait_healthy(address, startup_timeout_s, proc)
        yield addresses
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
