"""The learner's servers as an attacker on the network sees them (issue 31), over real gRPC on loopback.

Before: any client could push NaN rewards or out-of-vocab tokens, take other actors' groups, set
the learner's version to 2**62, close the queue, and fetch the weights.
"""

from __future__ import annotations

import dataclasses
import subprocess

import grpc
import numpy as np
import pytest

from agentic.transport import codec
from agentic.transport.grpc_queue import GrpcTrajectoryQueue, TrajectoryQueueServer
from agentic.transport.proto import trajectory_queue_pb2 as pb
from agentic.transport.proto import trajectory_queue_pb2_grpc as pb_grpc
from agentic.transport.queue import QueueConfig
from agentic.transport.weight_stream import WeightStreamClient, WeightStreamServer
from tests.transport.groups import make_group

TOKEN, LEARNER = "run-token-31", "learner-token-31"


def clean_group(group_id="g", vocab=1000, **changes):
    group = make_group(group_id, n=2, version=0)
    rng = np.random.default_rng(0)
    return [dataclasses.replace(t, tokens=rng.integers(0, vocab, len(t), dtype=np.int32), policy_version=0,
                                **changes) for t in group]


@pytest.fixture
def queue_server():
    server = TrajectoryQueueServer(config=QueueConfig(max_lag=4), token=TOKEN, learner_token=LEARNER,
                                   vocab_size=1000).start()
    yield server
    server.queue.close()
    server.stop(grace=0)


def test_servers_refuse_a_non_loopback_bind_without_a_token(monkeypatch):
    monkeypatch.delenv("AGENTIC_TRANSPORT_TOKEN", raising=False)
    with pytest.raises(ValueError, match="refusing to listen on 0.0.0.0 without a token"):
        TrajectoryQueueServer(host="0.0.0.0")
    with pytest.raises(ValueError, match="refusing to listen on 10.1.2.3 without a token"):
        WeightStreamServer(host="10.1.2.3")
    TrajectoryQueueServer(host="0.0.0.0", token="t")  # constructed (not started): a token is enough


def test_pushes_need_the_run_token(queue_server):
    for token in (None, "wrong"):
        with GrpcTrajectoryQueue(queue_server.address, token=token) as stranger, \
                pytest.raises(PermissionError, match="PutGroup needs the run's token"):
            stranger.put(clean_group(), timeout=1)
    with GrpcTrajectoryQueue(queue_server.address, token=TOKEN) as actor:
        assert actor.put(clean_group(), timeout=1)
    assert queue_server.queue.stats()["put"] == 1


def test_an_actor_cannot_take_groups_set_the_version_or_close_the_queue(queue_server):
    with GrpcTrajectoryQueue(queue_server.address, token=TOKEN) as actor:
        actor.put(clean_group(), timeout=1)
        for call in (lambda: actor.get(1, timeout=0), lambda: actor.set_learner_version(2**62),
                     actor.close_remote):
            with pytest.raises(PermissionError, match="needs the learner's token"):
                call()
    stats = queue_server.queue.stats()
    assert stats["learner_version"] == 0 and stats["closed"] == 0 and stats["size"] == 1
    with GrpcTrajectoryQueue(queue_server.address, learner_token=LEARNER) as learner:
        assert len(learner.get(1, timeout=1)) == 1
        learner.set_learner_version(1)
    assert queue_server.queue.stats()["learner_version"] == 1


@pytest.mark.parametrize("forge, field", [
    (lambda g: [dataclasses.replace(g[0], reward=float("nan")), g[1]], r"group\[0\] \('g'\)\.reward is nan"),
    (lambda g: [g[0], dataclasses.replace(g[1], reward=float("inf"))], r"group\[1\] \('g'\)\.reward is inf"),
    (lambda g: [dataclasses.replace(g[0], behavior_logprobs=np.r_[np.nan, g[0].behavior_logprobs[1:]]), g[1]],
     r"behavior_logprobs\[0\] is nan"),  # a masked position (loss_mask[0] == 0): NaN * 0 is still NaN
    (lambda g: [g[0], dataclasses.replace(g[1], token_rewards=np.full(len(g[1]), np.inf, np.float32))],
     r"token_rewards\[0\] is inf"),
    (lambda g: [dataclasses.replace(g[0], tokens=np.r_[g[0].tokens[:-1], 1000]), g[1]],
     r"tokens has id 1000, outside the vocabulary \[0, 1000\)"),
    (lambda g: [dataclasses.replace(g[0], tokens=np.r_[-5, g[0].tokens[1:]]), g[1]], "tokens has id -5"),
    (lambda g: [g[0], dataclasses.replace(g[1], policy_version=2**62)], "policy_version=4611686018427387904 was "
                                                                          "never issued"),
])
def test_forged_groups_are_refused_naming_the_field(queue_server, forge, field):
    with GrpcTrajectoryQueue(queue_server.address, token=TOKEN) as actor, pytest.raises(ValueError, match=field):
        actor.put(forge(clean_group()), timeout=1)
    assert queue_server.queue.stats()["put"] == 0


def test_a_length_mismatch_on_the_wire_is_refused(queue_server):
    message = codec.group_to_proto(clean_group())
    message.trajectories[1].behavior_logprobs = message.trajectories[1].behavior_logprobs[:-4]
    with grpc.insecure_channel(queue_server.address) as channel, pytest.raises(grpc.RpcError) as err:
        pb_grpc.TrajectoryQueueStub(channel).PutGroup(pb.PutGroupRequest(group=message, timeout_s=1), timeout=5,
                                                      metadata=(("authorization", f"Bearer {TOKEN}"),))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "group[1].behavior_logprobs has" in err.value.details()


def test_the_weight_stream_needs_the_token():
    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    with WeightStreamServer(token=TOKEN) as server:
        server.publish(params, version=3)
        with WeightStreamClient(server.address, timeout_s=5) as stranger, pytest.raises(PermissionError):
            stranger.fetch(params, min_version=0, timeout=5)
        with WeightStreamClient(server.address, token=TOKEN, timeout_s=5) as actor:
            version, got = actor.fetch(params, min_version=0, timeout=5)
    assert version == 3 and np.array_equal(got["w"], params["w"])


def test_tls_on_both_servers(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = TrajectoryQueueServer(host="localhost", token=TOKEN, tls_cert=str(cert), tls_key=str(key)).start()
    try:
        with GrpcTrajectoryQueue(f"localhost:{server.port}", token=TOKEN, tls_ca=str(cert)) as actor:
            assert actor.put(clean_group(), timeout=1)
        with GrpcTrajectoryQueue(f"localhost:{server.port}", token=TOKEN, rpc_timeout_s=2) as plain, \
                pytest.raises(Exception, match="UNAVAILABLE"):
            plain.stats()
    finally:
        server.queue.close()
        server.stop(grace=0)
    params = {"w": np.ones(4, np.float32)}
    with WeightStreamServer(host="localhost", token=TOKEN, tls_cert=str(cert), tls_key=str(key)) as weights:
        weights.publish(params, version=1)
        with WeightStreamClient(f"localhost:{weights.port}", token=TOKEN, tls_ca=str(cert)) as client:
            assert client.fetch(params, min_version=1, timeout=10)[0] == 1
