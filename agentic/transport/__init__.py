"""Trajectory queue between actors and learner (gRPC and in-process).

`TrajectoryQueue` is the interface; `InProcessTrajectoryQueue` serves single-process
runs and is what `TrajectoryQueueServer` hosts; `GrpcTrajectoryQueue` is the remote client.
"""

from agentic.transport.grpc_queue import GrpcTrajectoryQueue, TrajectoryQueueServer
from agentic.transport.queue import (
    Group,
    InProcessTrajectoryQueue,
    QueueClosed,
    QueueConfig,
    QueueError,
    QueueUnavailable,
    TrajectoryQueue,
)

__all__ = [
    "Group",
    "GrpcTrajectoryQueue",
    "InProcessTrajectoryQueue",
    "QueueClosed",
    "QueueConfig",
    "QueueError",
    "QueueUnavailable",
    "TrajectoryQueue",
    "TrajectoryQueueServer",
]
