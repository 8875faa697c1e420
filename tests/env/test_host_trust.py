"""The env host against hostile ops (issue 31), on a real host on loopback.

Before: an op raising anything but EnvError inside a Batch stream (a 100k-deep task_json:
RecursionError) left the stream hanging until the client's deadline; workers inherited the host's
token in their environment.
"""

import json
import time

import grpc
import pytest

from agentic.env.local_hosts import HostProcess
from agentic.env.proto import env_service_pb2 as pb
from agentic.env.proto import env_service_pb2_grpc as pb_grpc


def test_a_deep_json_op_ends_its_batch_with_a_typed_error_and_the_host_keeps_serving(monkeypatch):
    monkeypatch.setenv("AGENTIC_ENV_TOKEN", "host-token-31")
    deep = "[" * 100_000 + "]" * 100_000
    with HostProcess(["echo"], "--import", "envs") as host, grpc.insecure_channel(host.address) as channel:
        stub = pb_grpc.EnvServiceStub(channel)
        auth = (("authorization", "Bearer host-token-31"),)
        ops = [pb.Op(open=pb.OpenRequest(env="echo", task_json=json.dumps({"a": json.loads("[" * 50 + "]" * 50)}))),
               pb.Op(open=pb.OpenRequest(env="echo", task_json='{"x": ' + deep + "}")),
               pb.Op(open=pb.OpenRequest(env="echo", task_json="{}", env_kwargs_json=deep))]
        t = time.monotonic()
        results = [r for reply in stub.Batch(pb.BatchRequest(ops=ops), timeout=30, metadata=auth)
                   for r in reply.results]
        assert time.monotonic() - t < 10
        by_index = {r.index: r for r in results}
        assert sorted(by_index) == [0, 1, 2] and by_index[0].WhichOneof("result") == "open"
        for i, field in ((1, "task_json"), (2, "env_kwargs_json")):
            assert by_index[i].error.kind == pb.INVALID_ARGUMENT, by_index[i]
            assert f"{field} is nested too deeply" in by_index[i].error.message
        with grpc.insecure_channel(host.address) as again:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.EnvServiceStub(again).Open(pb.OpenRequest(env="echo", task_json=deep), timeout=10,
                                                   metadata=auth)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            session = stub.Open(pb.OpenRequest(env="echo", task_json="{}"), timeout=10, metadata=auth)
            assert session.session_id


def test_workers_does_not_import_host():
    """host.py -> workers.py, one way: the lower file reads without the upper (issue 31)."""
    import ast
    import pathlib

    import agentic.env.workers as workers

    tree = ast.parse(pathlib.Path(workers.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "agentic.env.host" not in imported
