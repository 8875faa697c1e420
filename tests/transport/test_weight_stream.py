"""The weight stream (WeightStreamServer / WeightStreamClient / WeightFollower) on real loopback ports."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from agentic.core import GenerateRequest, SamplingParams
from agentic.transport.proto import weight_stream_pb2 as pb
from agentic.transport.proto import weight_stream_pb2_grpc as pb_grpc
from agentic.transport.weight_stream import (
    WeightFollower,
    WeightStreamClient,
    WeightStreamPublisher,
    WeightStreamServer,
    WeightStreamUnavailable,
)


@pytest.fixture
def serve():
    """serve(**server_kwargs) -> (server, client); everything stopped at teardown."""
    started = []

    def start(**kwargs):
        server = WeightStreamServer(**kwargs).start()
        client = WeightStreamClient(server.address, timeout_s=5.0, fetch_timeout_s=10.0)
        started.append((server, client))
        return server, client

    yield start
    for server, client in started:
        client.close()
        server.stop(grace=0)


def make_params(seed: int, n: int = 5) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "embed": rng.standard_normal((n, 3), dtype=np.float32),
        "layers": [{"w": jnp.asarray(rng.standard_normal((4, n)), jnp.bfloat16)},
                   {"w": jnp.asarray(rng.standard_normal((4, n)), jnp.bfloat16)}],
        "ids": rng.integers(-(2**31), 2**31 - 1, size=(n,), dtype=np.int32),
        "step": np.int32(seed),
        "empty": np.zeros((0, 3), np.float32),
    }


def assert_bit_exact(got, want):
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(got_leaves, want_leaves, strict=True):
        w = np.asarray(w)
        assert isinstance(g, np.ndarray) and g.dtype == w.dtype and g.shape == w.shape
        assert g.tobytes() == w.tobytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_round_trip_is_bit_exact_across_dtypes(serve):
    server, client = serve()
    assert server.address.startswith("127.0.0.1:") and client.latest_version() == -1
    params = make_params(0)
    WeightStreamPublisher(server).publish(params, 3)
    info = client.info()
    assert info == {"version": 3, "num_tensors": 6,
                    "total_bytes": sum(np.asarray(x).nbytes for x in jax.tree.leaves(params))}
    version, got = client.fetch(params)
    assert version == 3
    assert_bit_exact(got, params)
    assert got["layers"][0]["w"].dtype == ml_dtypes.bfloat16
    # the template needs only shapes and dtypes
    version, got = client.fetch(jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), params))
    assert_bit_exact(got, params)


def test_publish_copies_numpy_leaves(serve):
    server, client = serve()
    params = {"w": np.arange(6, dtype=np.float32)}
    server.publish(params, 1)
    params["w"][:] = -1  # the caller (a learner reusing buffers) changes its array afterwards
    assert client.fetch(params)[1]["w"].tolist() == list(range(6))


def test_a_tensor_bigger_than_a_chunk_arrives_whole_in_chunks(serve):
    server, client = serve(chunk_bytes=1000)
    params = {"big": np.random.default_rng(1).standard_normal(2_501).astype(np.float32),  # 10,004 bytes
              "small": np.arange(3, dtype=np.int32)}
    server.publish(params, 1)
    chunks = list(pb_grpc.WeightStreamStub(client._channel).Fetch(pb.FetchRequest(min_version=1), timeout=5))
    big = [c for c in chunks if c.name == "['big']"]
    assert [c.offset for c in big] == list(range(0, 10_004, 1000))
    assert all(len(c.data) <= 1000 and c.tensor_bytes == 10_004 for c in big)
    assert list(big[0].shape) == [2_501] and big[0].dtype == "float32"
    assert_bit_exact(client.fetch(params)[1], params)


def test_fetch_waits_for_min_version(serve):
    server, client = serve()
    server.publish(make_params(1), 1)
    timer = threading.Timer(0.3, server.publish, (make_params(2), 2))
    timer.start()
    start = time.monotonic()
    version, got = client.fetch(make_params(0), min_version=2, timeout=5)
    assert version == 2 and time.monotonic() - start >= 0.25
    assert_bit_exact(got, make_params(2))
    with pytest.raises(TimeoutError, match="version >= 5"):
        client.fetch(make_params(0), min_version=5, timeout=0.5)
    # a fetch of an older min_version gets the newest
    assert client.fetch(make_params(0), min_version=0)[0] == 2


def test_a_publish_during_a_fetch_does_not_mix_versions(serve):
    server, client = serve(chunk_bytes=256)
    v1 = {f"t{i}": np.full(2_000, i, np.float32) for i in range(20)}  # 160 KB in 640 chunks
    v2 = {k: x + 100 for k, x in v1.items()}
    server.publish(v1, 1)
    stream = pb_grpc.WeightStreamStub(client._channel).Fetch(pb.FetchRequest(min_version=1), timeout=10)
    chunks = [next(stream)]
    server.publish(v2, 2)  # mid-stream
    chunks += list(stream)
    assert {c.version for c in chunks} == {1} and len(chunks) == 20 * 32
    data = b"".join(c.data for c in chunks if c.name == "['t19']")
    assert np.frombuffer(data, "<f4").tolist() == [19.0] * 2_000
    version, got = client.fetch(v1)
    assert version == 2
    assert_bit_exact(got, v2)


def test_versions_must_increase(serve):
    server, _ = serve()
    server.publish(make_params(0), 3)
    with pytest.raises(ValueError, match="version 3 is not newer than the published version 3"):
        server.publish(make_params(0), 3)
    with pytest.raises(ValueError, match="version 2 .* version 3"):
        server.publish(make_params(0), 2)
    assert server.latest_version == 3


def test_a_template_mismatch_names_the_tensor(serve):
    server, client = serve()
    params = make_params(0)
    server.publish(params, 1)
    wrong_shape = make_params(0, n=6)
    with pytest.raises(ValueError, match=r"\['embed'\].*float32\[5, 3\].*float32\[6, 3\]"):
        client.fetch(wrong_shape)
    wrong_dtype = {**params, "ids": params["ids"].astype(np.int64)}
    with pytest.raises(ValueError, match=r"\['ids'\].*int32.*int64"):
        client.fetch(wrong_dtype)
    with pytest.raises(ValueError, match=r"\['step'\] .* not in the template"):
        client.fetch({k: v for k, v in params.items() if k != "step"})
    with pytest.raises(ValueError, match=r"lack .*\['extra'\]"):
        client.fetch({**params, "extra": np.zeros(2, np.float32)})
    assert client.fetch(params)[0] == 1  # the channel is fine afterwards


def test_a_dead_address_raises_clearly_within_the_timeout():
    address = f"127.0.0.1:{free_port()}"
    with WeightStreamClient(address, timeout_s=2.0) as client:
        start = time.monotonic()
        with pytest.raises(WeightStreamUnavailable, match=f"{address}.*UNAVAILABLE"):
            client.latest_version()
        with pytest.raises(WeightStreamUnavailable, match=address):
            client.fetch({"w": np.zeros(2)}, timeout=2.0)
        assert time.monotonic() - start < 4.5


class Holder:
    """The duck-typed engine a follower needs."""

    def __init__(self):
        self.weight_version, self.params = 0, None

    def update_params(self, params, version):
        self.params, self.weight_version = params, version


def test_the_follower_survives_a_learner_restart(serve):
    server, client = serve()
    port = server.port
    holder = Holder()
    follower = WeightFollower(client, holder, make_params(0), poll_s=0.05).start()
    try:
        server.publish(make_params(1), 1)
        assert follower.wait_for(1, timeout=5) and follower.version == 1
        assert_bit_exact(holder.params, make_params(1))
        server.stop(grace=0)
        deadline = time.monotonic() + 5
        while not isinstance(follower.last_error, WeightStreamUnavailable):
            assert time.monotonic() < deadline, "the follower saw no error with the server down"
            time.sleep(0.05)
        assert follower._thread.is_alive()
        restarted, _ = serve(port=port)  # the learner comes back at the same address
        restarted.publish(make_params(2), 2)
        assert follower.wait_for(2, timeout=10), follower.last_error
        assert_bit_exact(holder.params, make_params(2))
        time.sleep(0.2)
        assert follower.last_error is None
    finally:
        follower.stop()
    assert not follower._thread.is_alive()


def test_the_follower_swaps_a_real_engine_to_the_published_weights(serve):
    from agentic import models
    from agentic.inference.engine import JaxEngine
    from tests.inference.conftest import ENGINE_CONFIG, ByteTokenizer, prompt_of, scaled_params

    config = models.get_config("tiny")
    old, new = scaled_params(config, seed=0), scaled_params(config, seed=1)
    engine = JaxEngine(config, old, ByteTokenizer(config.vocab_size), ENGINE_CONFIG)
    request = GenerateRequest(prompt_ids=prompt_of(12, seed=9), params=SamplingParams(max_new_tokens=8,
                                                                                     temperature=0.0))

    def greedy():
        [c] = asyncio.run(engine.generate([request]))
        return c

    server, client = serve()
    follower = None
    try:
        engine.update_params(new, 0)
        expected = greedy().token_ids  # what the new params give, handed over in process
        engine.update_params(old, 0)
        before = greedy()
        assert before.token_ids != expected and before.weight_version == 0
        follower = WeightFollower(client, engine, old, poll_s=0.05).start()
        server.publish(new, 1)
        assert follower.wait_for(1, timeout=20), follower.last_error
        after = greedy()
        assert after.weight_version == 1 and after.token_ids == expected
    finally:
        if follower is not None:
            follower.stop()
        engine.close_sync()
