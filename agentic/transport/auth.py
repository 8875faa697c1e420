"""Who may call the learner's gRPC servers (trajectory queue, weight stream), and over what channel.

Two credentials, sent as `authorization: Bearer <token>` metadata:

- the run's token (`token=`, default $AGENTIC_TRANSPORT_TOKEN): actors push groups, read stats,
  fetch weights;
- the learner's own (`learner_token=`): the calls only a learner makes (take groups, set the
  version, close the queue). A server started without one makes a random one and never shows it:
  the learner in its process uses the queue directly, so nobody on the wire can make those calls.

A server refuses to bind a non-loopback address without a token (anyone who can reach the port
could push rewards or read the weights); `insecure=True` overrides that on a closed network. TLS:
`tls_cert`/`tls_key` (PEM files) on the server, `tls_ca` on the client.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from collections.abc import Collection, Sequence

import grpc

from agentic.env.auth import deny_like

TOKEN_ENV = "AGENTIC_TRANSPORT_TOKEN"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"; a host name may resolve to anything (False)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(token: str | None) -> str | None:
    """`token`, else $AGENTIC_TRANSPORT_TOKEN, else None ("" counts as none)."""
    return (token if token is not None else os.environ.get(TOKEN_ENV)) or None


def check_bind(server: str, host: str, token: str | None, insecure: bool) -> None:
    """Raises ValueError for a non-loopback bind without a token (unless `insecure`)."""
    if not token and not insecure and not is_loopback(host):
        raise ValueError(
            f"{server}: refusing to listen on {host} without a token: anyone who can reach the port could "
            f"{'push groups and take the learner' if 'queue' in server else 'read the weights'}'s data. Give "
            f"token= (or ${TOKEN_ENV}; clients send it), or insecure=True on a closed network")


def metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata carrying `token` (empty without one)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


class BearerAuth(grpc.aio.ServerInterceptor):
    """Checks the bearer token per method: `learner_methods` need the learner's token, the rest the
    run's token (or none when the server has none). Comparisons are constant-time."""

    def __init__(self, token: str | None, learner_token: str | None, learner_methods: Collection[str]):
        self._token = f"Bearer {token}".encode() if token else None
        self._learner = f"Bearer {learner_token or secrets.token_urlsafe(32)}".encode()
        self._learner_methods = frozenset(learner_methods)

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        learner_only = method in self._learner_methods
        expected = self._learner if learner_only else self._token
        if expected is None:
            return handler
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else value
                if hmac.compare_digest(got, expected) or (not learner_only and hmac.compare_digest(got, self._learner)):
                    return handler
        who = "the learner's token (learner_token=)" if learner_only else f"the run's token (token= or ${TOKEN_ENV})"
        return deny_like(handler, f"{method} needs {who} as metadata 'authorization: Bearer <token>'")


def add_port(server: grpc.aio.Server, address: str, tls_cert: str | None, tls_key: str | None) -> int:
    """Binds `address` in the clear, or with TLS when both PEM files are given; returns the port."""
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("TLS needs both tls_cert and tls_key (PEM files)")
    if tls_cert:
        with open(tls_key, "rb") as k, open(tls_cert, "rb") as c:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        return server.add_secure_port(address, creds)
    return server.add_insecure_port(address)


def channel(address: str, options: Sequence[tuple[str, object]], tls_ca: str | None) -> grpc.Channel:
    """A client channel: TLS checked against the `tls_ca` PEM file when given, else in the clear."""
    if tls_ca:
        with open(tls_ca, "rb") as f:
            return grpc.secure_channel(address, grpc.ssl_channel_credentials(f.read()), options=list(options))
    return grpc.insecure_channel(address, options=list(options))
