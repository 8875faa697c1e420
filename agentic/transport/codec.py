"""Trajectory <-> protobuf conversion for the trajectory queue's wire format.

Per-token arrays travel as packed little-endian bytes (int32 tokens, int8 loss mask,
float32 log-probs and token rewards), so a round trip is bit-exact; scalars use
int64/double. Decoding checks every length and names the offending field in its
ValueError, which the server turns into INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agentic.core import Trajectory
from agentic.transport.proto import trajectory_queue_pb2 as pb
from agentic.transport.queue import Group, validate_group

_INT32, _INT8, _FLOAT32 = np.dtype("<i4"), np.dtype("i1"), np.dtype("<f4")


def trajectory_to_proto(traj: Trajectory) -> pb.Trajectory:
    msg = pb.Trajectory(
        tokens=np.asarray(traj.tokens, _INT32).tobytes(),
        loss_mask=np.asarray(traj.loss_mask, _INT8).tobytes(),
        behavior_logprobs=np.asarray(traj.behavior_logprobs, _FLOAT32).tobytes(),
        reward=float(traj.reward),
        group_id=traj.group_id,
        policy_version=int(traj.policy_version),
        prompt_len=int(traj.prompt_len),
        turn_starts=[int(s) for s in traj.turn_starts],
        truncated=bool(traj.truncated),
        metrics={str(k): float(v) for k, v in traj.metrics.items()},
        task_id=traj.task_id,
    )
    if traj.token_rewards is not None:
        msg.token_rewards = np.asarray(traj.token_rewards, _FLOAT32).tobytes()
    if traj.token_versions is not None:
        msg.token_versions = np.asarray(traj.token_versions, _INT32).tobytes()
    return msg


def _unpack(msg: pb.Trajectory, name: str, dtype: np.dtype, where: str, n: int | None) -> np.ndarray:
    data = getattr(msg, name)
    if len(data) % dtype.itemsize:
        raise ValueError(
            f"{where}.{name} has {len(data)} bytes, not a multiple of {dtype.itemsize} ({dtype})"
        )
    values = np.frombuffer(data, dtype).astype(dtype.newbyteorder("="))
    if n is not None and len(values) != n:
        raise ValueError(f"{where}.{name} has {len(values)} values, tokens has {n}")
    return values


def trajectory_from_proto(msg: pb.Trajectory, where: str = "trajectory") -> Trajectory:
    """Decodes one trajectory; `where` prefixes the field name in error messages."""
    tokens = _unpack(msg, "tokens", _INT32, where, None)
    n = len(tokens)
    return Trajectory(
        tokens=tokens,
        loss_mask=_unpack(msg, "loss_mask", _INT8, where, n),
        behavior_logprobs=_unpack(msg, "behavior_logprobs", _FLOAT32, where, n),
        reward=msg.reward,
        group_id=msg.group_id,
        policy_version=msg.policy_version,
        prompt_len=msg.prompt_len,
        turn_starts=tuple(msg.turn_starts),
        token_rewards=(
            _unpack(msg, "token_rewards", _FLOAT32, where, n) if msg.HasField("token_rewards") else None
        ),
        truncated=msg.truncated,
        metrics=dict(msg.metrics),
        task_id=msg.task_id,
        token_versions=(
            _unpack(msg, "token_versions", _INT32, where, n) if msg.HasField("token_versions") else None
        ),
    )


def group_to_proto(group: Sequence[Trajectory]) -> pb.Group:
    return pb.Group(trajectories=[trajectory_to_proto(t) for t in group])


def group_from_proto(msg: pb.Group) -> Group:
    """Decodes and validates one group (ValueError names the field, e.g. `group[1].loss_mask`)."""
    group = [trajectory_from_proto(t, f"group[{i}]") for i, t in enumerate(msg.trajectories)]
    validate_group(group)
    return group
