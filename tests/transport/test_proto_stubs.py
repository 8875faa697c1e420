"""The committed trajectory queue stubs are what the pinned grpcio-tools generates from the .proto."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO = "agentic/transport/proto/trajectory_queue.proto"
STUBS = ("trajectory_queue_pb2.py", "trajectory_queue_pb2.pyi", "trajectory_queue_pb2_grpc.py")


def test_committed_stubs_are_up_to_date(tmp_path):
    (tmp_path / PROTO).parent.mkdir(parents=True)
    shutil.copy(ROOT / PROTO, tmp_path / PROTO)
    # The command documented in the .proto and in BUILD.md.
    cmd = [sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--pyi_out=.",
           "--grpc_python_out=.", PROTO]  # fmt: skip
    subprocess.run(cmd, cwd=tmp_path, check=True)
    for name in STUBS:
        fresh = (tmp_path / PROTO).with_name(name).read_text()
        committed = (ROOT / PROTO).with_name(name).read_text()
        assert committed == fresh, f"{name} is stale: regenerate with: {' '.join(cmd[1:])}"
