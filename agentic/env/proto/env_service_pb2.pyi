from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_KIND_UNSPECIFIED: _ClassVar[ErrorKind]
    SESSION_LOST: _ClassVar[ErrorKind]
    SESSION_NOT_FOUND: _ClassVar[ErrorKind]
    DEADLINE_EXCEEDED: _ClassVar[ErrorKind]
    RESOURCE_EXHAUSTED: _ClassVar[ErrorKind]
    INVALID_ACTION: _ClassVar[ErrorKind]
    INVALID_ARGUMENT: _ClassVar[ErrorKind]
    ENV_ERROR: _ClassVar[ErrorKind]
    HOST_DRAINING: _ClassVar[ErrorKind]
    SESSION_BUSY: _ClassVar[ErrorKind]
ERROR_KIND_UNSPECIFIED: ErrorKind
SESSION_LOST: ErrorKind
SESSION_NOT_FOUND: ErrorKind
DEADLINE_EXCEEDED: ErrorKind
RESOURCE_EXHAUSTED: ErrorKind
INVALID_ACTION: ErrorKind
INVALID_ARGUMENT: ErrorKind
ENV_ERROR: ErrorKind
HOST_DRAINING: ErrorKind
SESSION_BUSY: ErrorKind

class Error(_message.Message):
    __slots__ = ("kind", "message")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    kind: ErrorKind
    message: str
    def __init__(self, kind: _Optional[_Union[ErrorKind, str]] = ..., message: _Optional[str] = ...) -> None: ...

class OpenRequest(_message.Message):
    __slots__ = ("env", "task_json", "env_kwargs_json")
    ENV_FIELD_NUMBER: _ClassVar[int]
    TASK_JSON_FIELD_NUMBER: _ClassVar[int]
    ENV_KWARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    env: str
    task_json: str
    env_kwargs_json: str
    def __init__(self, env: _Optional[str] = ..., task_json: _Optional[str] = ..., env_kwargs_json: _Optional[str] = ...) -> None: ...

class OpenResponse(_message.Message):
    __slots__ = ("session_id", "observation", "info_json", "observation_truncated", "host_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    INFO_JSON_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    observation: str
    info_json: str
    observation_truncated: bool
    host_id: str
    def __init__(self, session_id: _Optional[str] = ..., observation: _Optional[str] = ..., info_json: _Optional[str] = ..., observation_truncated: _Optional[bool] = ..., host_id: _Optional[str] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("session_id", "action")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    action: bytes
    def __init__(self, session_id: _Optional[str] = ..., action: _Optional[bytes] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("observation", "reward", "done", "truncated", "info_json", "observation_truncated")
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    INFO_JSON_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    observation: str
    reward: float
    done: bool
    truncated: bool
    info_json: str
    observation_truncated: bool
    def __init__(self, observation: _Optional[str] = ..., reward: _Optional[float] = ..., done: _Optional[bool] = ..., truncated: _Optional[bool] = ..., info_json: _Optional[str] = ..., observation_truncated: _Optional[bool] = ...) -> None: ...

class Op(_message.Message):
    __slots__ = ("open", "step", "close")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    open: OpenRequest
    step: StepRequest
    close: CloseRequest
    def __init__(self, open: _Optional[_Union[OpenRequest, _Mapping]] = ..., step: _Optional[_Union[StepRequest, _Mapping]] = ..., close: _Optional[_Union[CloseRequest, _Mapping]] = ...) -> None: ...

class BatchRequest(_message.Message):
    __slots__ = ("ops",)
    OPS_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[Op]
    def __init__(self, ops: _Optional[_Iterable[_Union[Op, _Mapping]]] = ...) -> None: ...

class OpResult(_message.Message):
    __slots__ = ("index", "open", "step", "close", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    open: OpenResponse
    step: StepResponse
    close: CloseResponse
    error: Error
    def __init__(self, index: _Optional[int] = ..., open: _Optional[_Union[OpenResponse, _Mapping]] = ..., step: _Optional[_Union[StepResponse, _Mapping]] = ..., close: _Optional[_Union[CloseResponse, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class BatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[OpResult]
    def __init__(self, results: _Optional[_Iterable[_Union[OpResult, _Mapping]]] = ...) -> None: ...

class CloseRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseResponse(_message.Message):
    __slots__ = ("metrics_json", "lost")
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    metrics_json: str
    lost: str
    def __init__(self, metrics_json: _Optional[str] = ..., lost: _Optional[str] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EnvKindInfo(_message.Message):
    __slots__ = ("name", "max_sessions", "open_sessions", "step_deadline_s", "workers", "worker_pids", "worker_restarts", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    OPEN_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    STEP_DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    WORKER_PIDS_FIELD_NUMBER: _ClassVar[int]
    WORKER_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    max_sessions: int
    open_sessions: int
    step_deadline_s: float
    workers: int
    worker_pids: _containers.RepeatedScalarFieldContainer[int]
    worker_restarts: int
    description: str
    def __init__(self, name: _Optional[str] = ..., max_sessions: _Optional[int] = ..., open_sessions: _Optional[int] = ..., step_deadline_s: _Optional[float] = ..., workers: _Optional[int] = ..., worker_pids: _Optional[_Iterable[int]] = ..., worker_restarts: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("host_id", "draining", "envs", "max_action_bytes", "max_observation_bytes", "pid")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    ENVS_FIELD_NUMBER: _ClassVar[int]
    MAX_ACTION_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_OBSERVATION_BYTES_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    draining: bool
    envs: _containers.RepeatedCompositeFieldContainer[EnvKindInfo]
    max_action_bytes: int
    max_observation_bytes: int
    pid: int
    def __init__(self, host_id: _Optional[str] = ..., draining: _Optional[bool] = ..., envs: _Optional[_Iterable[_Union[EnvKindInfo, _Mapping]]] = ..., max_action_bytes: _Optional[int] = ..., max_observation_bytes: _Optional[int] = ..., pid: _Optional[int] = ...) -> None: ...
