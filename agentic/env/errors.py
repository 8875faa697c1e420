"""Typed per-episode errors of the env service, shared by host, worker and client.

Every failure an actor can meet while talking to env hosts is one `EnvError`
subclass, so it can count them (`type(e).__name__`) instead of parsing text:

    EnvError
    ├── SessionLost            the session is gone: its worker died or was recycled, it was
    │   │                      reaped idle, or its host went away mid-episode
    │   └── SessionNotFound    the host never had it (wrong id, or the host restarted)
    ├── EnvDeadlineExceeded    a step (or reset) ran past the env kind's deadline; session lost
    ├── EnvResourceExhausted   every host is at max_sessions for this env kind
    ├── EnvHostUnavailable     no healthy host could be reached
    │   └── HostDraining       the host is shutting down and takes no new sessions
    ├── InvalidAction          empty, too large, not UTF-8; the session stays usable
    ├── InvalidEnvRequest      unknown env, malformed task / env kwargs; also a ValueError
    ├── EnvStepError           the env's own code raised; the session is closed
    ├── SessionBusy            a step is already in flight for this session
    └── EnvAuthError           the host rejected the token

The wire carries `ErrorKind` (see `proto/env_service.proto`); `KIND_TO_ERROR`
maps it back to the class.
"""

from __future__ import annotations

import grpc

from agentic.env.proto import env_service_pb2 as pb


def clip(text: str, limit: int = 200) -> str:
    """`text`, cut to `limit` characters (saying how long it was): client-supplied values in error
    messages stay short, so a status never outgrows gRPC's metadata limit."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


class EnvError(RuntimeError):
    """Base of all env-service errors.

    Attributes:
        kind: the wire `ErrorKind` (an int of `env_service_pb2.ErrorKind`).
        session_id: the session concerned, when there is one.
        host: address of the host concerned, when known.
    """

    kind: int = pb.ERROR_KIND_UNSPECIFIED
    grpc_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, session_id: str | None = None, host: str | None = None):
        super().__init__(message)
        self.message = message
        self.session_id = session_id
        self.host = host

    def __str__(self) -> str:
        where = []
        if self.session_id:
            where.append(f"session {clip(self.session_id)}")
        if self.host:
            where.append(f"host {clip(self.host)}")
        return f"{self.message} [{', '.join(where)}]" if where else self.message


class SessionLost(EnvError):
    kind = pb.SESSION_LOST
    grpc_code = grpc.StatusCode.ABORTED


class SessionNotFound(SessionLost):
    kind = pb.SESSION_NOT_FOUND
    grpc_code = grpc.StatusCode.NOT_FOUND


class EnvDeadlineExceeded(EnvError):
    kind = pb.DEADLINE_EXCEEDED
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class EnvResourceExhausted(EnvError):
    kind = pb.RESOURCE_EXHAUSTED
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class EnvHostUnavailable(EnvError):
    grpc_code = grpc.StatusCode.UNAVAILABLE


class HostDraining(EnvHostUnavailable):
    kind = pb.HOST_DRAINING


class InvalidAction(EnvError):
    kind = pb.INVALID_ACTION
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidEnvRequest(EnvError, ValueError):
    kind = pb.INVALID_ARGUMENT
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class EnvStepError(EnvError):
    kind = pb.ENV_ERROR
    grpc_code = grpc.StatusCode.INTERNAL


class SessionBusy(EnvError):
    kind = pb.SESSION_BUSY
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class EnvAuthError(EnvError):
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


KIND_TO_ERROR: dict[int, type[EnvError]] = {
    cls.kind: cls
    for cls in (SessionLost, SessionNotFound, EnvDeadlineExceeded, EnvResourceExhausted, HostDraining,
                InvalidAction, InvalidEnvRequest, EnvStepError, SessionBusy)
}

# Trailing-metadata key carrying the ErrorKind name on failed unary RPCs.
ERROR_KIND_METADATA_KEY = "agentic-env-error-kind"


def error_from_kind(kind: int, message: str, **where) -> EnvError:
    """Builds the typed error for a wire `ErrorKind`."""
    return KIND_TO_ERROR.get(kind, EnvError)(message, **where)
