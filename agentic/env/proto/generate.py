"""Regenerates the committed gRPC stubs of `env_service.proto`.

Run from anywhere (paths are resolved from this file):

    .venv/bin/python -m agentic.env.proto.generate

It calls `grpc_tools.protoc` with the repo root as include path, so the stubs import
each other as `agentic.env.proto.env_service_pb2`. `tests/env/test_proto_stubs.py`
regenerates into a temporary directory and fails if the committed files differ.
"""

from __future__ import annotations

import pathlib
import sys

PROTO = "agentic/env/proto/env_service.proto"
OUTPUTS = ("env_service_pb2.py", "env_service_pb2.pyi", "env_service_pb2_grpc.py")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]


def generate(out_dir: pathlib.Path) -> None:
    """Writes the stubs under `out_dir`/agentic/env/proto/."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(REPO_ROOT / PROTO),
    ])
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc failed with exit code {rc} on {PROTO}")


if __name__ == "__main__":
    generate(REPO_ROOT)
    print(f"regenerated {', '.join(OUTPUTS)} from {PROTO}", file=sys.stderr)
