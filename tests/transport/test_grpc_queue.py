"""GrpcTrajectoryQueue against a TrajectoryQueueServer on real loopback ports."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time

import grpc
import numpy as np
import pytest

from agentic.transport import codec
from agentic.transport.grpc_queue import GrpcTrajectoryQueue, TrajectoryQueueServer
from agentic.transport.proto import trajectory_queue_pb2 as pb
from agentic.transport.proto import trajectory_queue_pb2_grpc as pb_grpc
from agentic.transport.queue import QueueClosed, QueueConfig, QueueError, QueueUnavailable
from tests.transport.groups import assert_groups_equal, make_group

LEARNER = "learner-token-for-tests"  # the learner's credential: GetGroups, SetVersion and Close need it


@pytest.fixture
def serve():
    """serve(config=..., **server_kwargs) -> (server, client); everything stopped at teardown."""
    started = []

    def start(config=None, **kwargs):
        server = TrajectoryQueueServer(config=config or QueueConfig(), learner_token=LEARNER, **kwargs).start()
        client = GrpcTrajectoryQueue(server.address, deadline_margin_s=2.0, rpc_timeout_s=5.0, learner_token=LEARNER)
        started.append((server, client))
        return server, client

    yield start
    for server, client in started:
        client.close()
        server.queue.close()
        server.stop(grace=0)


def _in_thread(fn, *args):
    box = {}

    def run():
        try:
            box["result"] = fn(*args)
        except BaseException as err:  # noqa: BLE001
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def test_round_trip_preserves_every_field_exactly(serve):
    server, client = serve()
    groups = [make_group(f"g{i}", n=4, version=7, seed=i) for i in range(3)]
    server.queue.set_learner_version(7)  # versions 7 and 8 (7 + i % 2) were issued
    def with_logprob(tr, index, value):
        logprobs = tr.behavior_logprobs.copy()
        logprobs[index] = value
        return dataclasses.replace(tr, behavior_logprobs=logprobs)

    groups[0][0] = with_logprob(groups[0][0], -1, np.finfo(np.float32).min)
    groups[0][1] = with_logprob(groups[0][1], -2, np.float32(-1e-45))  # subnormal
    groups[1][0] = dataclasses.replace(groups[1][0], metrics={})
    for g in groups[:2]:
        assert client.put(g, timeout=5.0)
    assert server.queue.put(groups[2])
    assert_groups_equal(client.get(2, timeout=5.0), groups[:2])
    assert_groups_equal(client.get(1, timeout=5.0), groups[2:])
    assert client.put(groups[0])
    assert_groups_equal(server.queue.get(1, timeout=5.0), groups[:1])  # learner side, in process


def test_wire_format_is_packed_bytes_not_pickle():
    group = make_group(n=1, length=10)
    msg = codec.group_to_proto(group).trajectories[0]
    assert len(msg.tokens) == 40 and len(msg.loss_mask) == 10 and len(msg.behavior_logprobs) == 40
    assert not msg.HasField("token_rewards")  # make_group: trajectory 0 has none


def test_backpressure_put_times_out_when_full_and_never_loses_an_accepted_group(serve):
    server, client = serve(QueueConfig(capacity_groups=2))
    assert client.put(make_group("a"), timeout=1.0) and client.put(make_group("b"), timeout=1.0)
    start = time.monotonic()
    assert client.put(make_group("rejected"), timeout=0.3) is False
    assert 0.3 <= time.monotonic() - start < 5.0
    thread, box = _in_thread(client.put, make_group("c"), None)  # waits on the server
    time.sleep(0.2)
    assert thread.is_alive()
    got = [g[0].group_id for g in server.queue.get(2, timeout=5.0)]
    thread.join(5.0)
    assert box["result"] is True
    got += [g[0].group_id for g in client.get(1, timeout=5.0)]
    assert got == ["a", "b", "c"]
    stats = client.stats()
    assert (stats["put"], stats["put_timeouts"], stats["consumed"]) == (3, 1, 3)
    assert isinstance(stats["put"], int) and stats["put_wait_s"] >= 0.3


def test_get_returns_what_it_has_at_timeout(serve):
    _, client = serve()
    client.put(make_group("only"))
    start = time.monotonic()
    got = client.get(3, timeout=0.3)
    assert time.monotonic() - start >= 0.3
    assert [g[0].group_id for g in got] == ["only"]


def test_staleness_filter_and_reuse_over_grpc(serve):
    server, client = serve(QueueConfig(max_lag=1, reuse=2))
    for version in (0, 1, 2):
        client.set_learner_version(max(0, version - 1))  # a group's version is one the learner issued
        client.put(make_group(f"v{version}", n=1, version=version))
    client.set_learner_version(2)
    assert [g[0].group_id for g in client.get(2, timeout=1.0)] == ["v1", "v2"]
    assert [g[0].group_id for g in client.get(2, timeout=1.0)] == ["v1", "v2"]  # replayed once
    assert client.get(1, timeout=0) == []
    client.put(make_group("v2b", n=1, version=2))
    client.get(1, timeout=1.0)
    client.set_learner_version(4)  # v2b (lag 2) may not be replayed
    assert client.get(1, timeout=0) == []
    stats = client.stats()
    assert (stats["dropped_stale"], stats["reused"], stats["max_lag_observed"]) == (2, 2, 1)
    assert stats["learner_version"] == 4
    with pytest.raises(ValueError, match="went back from 4 to 3"):
        client.set_learner_version(3)


def test_close_wakes_remote_waiters(serve):
    server, client = serve(QueueConfig(capacity_groups=1))
    other_server, other = serve()  # a second server: its client waits in get
    client.put(make_group("full"))
    waiters = [_in_thread(client.put, make_group("blocked"), None), _in_thread(other.get, 1, None)]

    async def async_get():
        return await client.aget(1, timeout=None)

    time.sleep(0.2)
    server.queue.close()  # the learner shuts the queue: remote waiters learn it
    other.close()  # closing a client wakes its own calls
    for thread, box in waiters:
        thread.join(5.0)
        assert isinstance(box.get("error"), QueueClosed), box
    with pytest.raises(QueueClosed, match="is closed"):
        asyncio.run(async_get())
    with pytest.raises(QueueClosed):
        other.stats()
    # The server cancelled the abandoned GetGroups: a later group is not taken by it.
    time.sleep(0.2)
    other_server.queue.put(make_group("after"))
    time.sleep(0.2)
    assert other_server.queue.stats()["size"] == 1


def test_close_remote_closes_the_server_queue(serve):
    server, client = serve()
    client.close_remote()
    assert server.queue.closed
    with pytest.raises(QueueClosed):
        client.put(make_group())


def _raw_stub(server):
    channel = grpc.insecure_channel(server.address)
    return channel, pb_grpc.TrajectoryQueueStub(channel)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (
            lambda m: m.trajectories[1].ClearField("loss_mask"),
            "group[1].loss_mask has 0 values, tokens has 13",
        ),
        (lambda m: setattr(m.trajectories[0], "tokens", b"\x00" * 7), "group[0].tokens has 7 bytes"),
        (lambda m: setattr(m.trajectories[2], "group_id", "x"), "group[2].group_id='x' differs"),
        (lambda m: m.ClearField("trajectories"), "group is empty"),
    ],
)
def test_bad_input_is_invalid_argument_naming_the_field_and_server_keeps_serving(serve, mutate, field):
    server, client = serve()
    msg = codec.group_to_proto(make_group(n=3))
    mutate(msg)
    channel, stub = _raw_stub(server)
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            stub.PutGroup(pb.PutGroupRequest(group=msg, timeout_s=1.0), timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.PutGroup(
                pb.PutGroupRequest(group=codec.group_to_proto(make_group()), timeout_s=-1), timeout=5
            )
        assert "timeout_s=-1" in info.value.details()
    with pytest.raises(ValueError, match="num_groups=0"):
        client.get(0, timeout=1.0)
    assert client.put(make_group("fine"), timeout=1.0)  # still serving
    assert server.queue.stats()["put"] == 1


def test_message_size_limit_is_configurable_and_clear(serve):
    server, client = serve(max_message_bytes=4096)
    big = make_group(n=2, length=1000)
    channel, stub = _raw_stub(server)
    with channel, pytest.raises(grpc.RpcError) as info:
        stub.PutGroup(pb.PutGroupRequest(group=codec.group_to_proto(big)), timeout=5)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(QueueError, match="raise max_message_bytes"):
        client.put(big, timeout=1.0)
    small_client = GrpcTrajectoryQueue(server.address, max_message_bytes=4096)
    with small_client, pytest.raises(ValueError, match="over max_message_bytes=4096"):
        small_client.put(big)
    assert client.put(make_group(n=1, length=10), timeout=1.0)


def test_server_restart_gives_a_typed_error_then_the_client_recovers(serve):
    server, client = serve()
    client.put(make_group("before"))
    port = server.port
    server.stop(grace=0)
    with pytest.raises(QueueUnavailable, match=f"127.0.0.1:{port}.*UNAVAILABLE.*Is the server running"):
        client.put(make_group("while-down"), timeout=1.0)

    async def async_put():
        return await client.aput(make_group("while-down"), timeout=1.0)

    with pytest.raises(QueueUnavailable):
        asyncio.run(async_put())

    restarted, _ = serve(port=port)
    deadline = time.monotonic() + 10.0
    while True:  # the channel reconnects with a short backoff
        try:
            assert client.put(make_group("after"), timeout=1.0)
            break
        except QueueUnavailable:
            assert time.monotonic() < deadline, "client did not reconnect to the restarted server"
            time.sleep(0.1)
    assert [g[0].group_id for g in restarted.queue.get(1, timeout=1.0)] == ["after"]  # starts empty


def test_port_in_use_is_a_clear_error(serve):
    server, _ = serve()
    with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{server.port}"):
        TrajectoryQueueServer(port=server.port).start()
    with socket.socket() as s:  # the port really is held by the first server
        assert s.connect_ex(("127.0.0.1", server.port)) == 0


def test_many_async_actors_through_grpc_with_backpressure(serve):
    server, client = serve(QueueConfig(capacity_groups=4))
    received = []

    def learner():
        while len(received) < 40:
            received.extend(server.queue.get(4, timeout=5.0))

    async def actors():
        thread, _ = _in_thread(learner)
        results = await asyncio.gather(
            *(client.aput(make_group(f"g{i}", n=5, length=64, seed=i), timeout=20.0) for i in range(40))
        )
        await asyncio.to_thread(thread.join, 10.0)
        return results

    assert all(asyncio.run(actors()))
    assert sorted(g[0].group_id for g in received) == sorted(f"g{i}" for i in range(40))
    assert all(len(g) == 5 for g in received)
    with pytest.raises(ValueError, match="group is empty"):  # checked before sending
        client.put([])
