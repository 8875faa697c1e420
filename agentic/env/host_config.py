"""How an env host runs: `HostConfig` and the command line that builds it (`parse_args`)."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import pathlib
from collections.abc import Mapping
from typing import Any


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
        imports: modules that register the served envs; the host and each worker import them first.
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




def _table(text: str | None, cast) -> dict[str, Any]:
    """'4' -> {'*': 4}; 'echo=2,game=1' -> {'echo': 2, 'game': 1}."""
    out: dict[str, Any] = {}
    for part in filter(None, (text or "").split(",")):
        name, _, value = part.rpartition("=")
        out[name.strip() or "*"] = cast(value)
    return out


def parse_args(argv: list[str] | None = None) -> HostConfig:
    p = argparse.ArgumentParser(prog="python -m agentic.env.host", description="The env host: a gRPC server that runs env sessions in worker subprocesses.")
    p.add_argument("--envs", required=True, help="comma-separated registry names, e.g. echo,game,search_r1")
    p.add_argument("--port", type=int, default=50051, help="0 picks a free port")
    p.add_argument("--bind", default="127.0.0.1", help="interface; 0.0.0.0 exposes the host to the network")
    p.add_argument("--workers", default="1", help="worker processes per env kind: N or NAME=N,...")
    p.add_argument("--max-sessions", default="", help="override EnvSpec.max_sessions: N or NAME=N,...")
    p.add_argument("--step-deadline-s", default="", help="override EnvSpec.step_deadline_s: S or NAME=S,...")
    p.add_argument("--worker-memory-mb", default="",
                   help="override EnvSpec.memory_mb (RSS limit per worker; 0 = none): MB or NAME=MB,...")
    p.add_argument("--import", dest="imports", action="append", default=[],
                   help="module that registers the served envs, imported by the host and its workers "
                        "(e.g. envs.search, or envs for every bundled env); repeatable")
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


